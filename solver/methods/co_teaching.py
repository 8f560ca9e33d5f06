"""Co-teaching (Han et al., NeurIPS 2018) in DivideMix's co-divide form (Li et al., ICLR 2020): each twin divides
the pairs by its own signals alone, and trains on the division of the other, so that the noisy pairs a model has
fitted are not fed back to it as clean.  With one model (twin: false) it is RDE."""
import torch

from ..division_reads import signals_by_model
from ..engine import Engine
from . import register_method


@register_method("co_teaching")
class CoTeaching(Engine):
    defaults = {"twin": True}

    def sample_weights(self, signals, positive_sim, epoch):
        own = [Engine.sample_weights(self, s, positive_sim, epoch) for s in signals_by_model(signals, len(self.models))]
        return torch.stack(own[::-1])          # [models, N]: row k, what model k trains on, is its peer's division
