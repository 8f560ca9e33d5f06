"""RDE's consensus clean division (docs/METHOD.md §4.3): 1 where every signal votes clean, 0 where all vote noisy,
a fair coin where they disagree, drawn from (seed, epoch)."""
import torch

from ..division import Division, consensus
from . import register_weighting


@register_weighting("ccd")
class ConsensusCleanDivision:
    def __call__(self, division: Division) -> torch.Tensor:
        return consensus(division.votes, torch.Generator().manual_seed(division.seed * 1000 + division.epoch))
