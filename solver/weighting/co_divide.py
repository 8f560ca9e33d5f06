"""Co-divide (DivideMix, Li et al., ICLR 2020), with soft weights: each twin fits its own mixtures on its own
signals alone, and its partner trains on them, each pair weighing the mean clean probability the twin gives it.  A
twin so never weighs the pairs by its own belief, which the noisy pairs it has fitted would bias.  Co-teaching
(co_teaching.py) is the same exchange with RDE's 0/1 consensus; with one model (twin: false) this is soft_clean
with no floor."""
import torch

from ..division import Division
from . import register_weighting


@register_weighting("co_divide")
class CoDivide:
    def __call__(self, division: Division) -> torch.Tensor:
        own = torch.stack([torch.as_tensor(d.clean.mean(0), dtype=torch.float32) for d in division.by_model()])
        return own.roll(1, dims=0)     # [models, N]: row k, what model k trains on, is its partner's (k - 1) belief
