"""Soft clean: each pair weighs the mean clean probability its division signals give it (every signal's
two-component mixture posterior), instead of 0/1 votes and a coin.  A pair the signals disagree on trains at
their average belief rather than all or nothing; `soft_clean_floor` zeroes the pairs they all but reject."""
import torch

from utils.options import Option, Range

from ..division import Division
from . import register_weighting


@register_weighting("soft_clean")
class SoftClean:
    options = {"soft_clean_floor": Option(0.1, "soft_clean: pairs whose mean clean probability is below this "
                                               "weigh 0", Range(lo=0, hi=1))}

    def __init__(self, soft_clean_floor: float):
        self.floor = soft_clean_floor

    def __call__(self, division: Division) -> torch.Tensor:
        weights = torch.as_tensor(division.clean.mean(0), dtype=torch.float32)
        return torch.where(weights < self.floor, torch.zeros_like(weights), weights)
