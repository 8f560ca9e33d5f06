"""Co-teaching (Han et al., NeurIPS 2018) in DivideMix's co-divide form (Li et al., ICLR 2020): each twin divides
the pairs by its own signals alone (RDE's consensus over them), and trains on the division of the other, so that
the noisy pairs a model has fitted are not fed back to it as clean.  With one model (twin: false) it is ccd."""
import torch

from ..division import Division
from . import register_weighting
from .ccd import ConsensusCleanDivision


@register_weighting("co_teaching")
class CoTeaching:
    def __call__(self, division: Division) -> torch.Tensor:
        own = [ConsensusCleanDivision()(d) for d in division.by_model()]
        return torch.stack(own[::-1])          # [models, N]: row k, what model k trains on, is its peer's division
