"""Soft clean: each pair weighs the mean clean probability its division signals give it (every signal's
two-component mixture posterior), instead of 0/1 votes and a coin.  A pair the signals disagree on trains at
their average belief rather than all or nothing; `soft_clean_floor` zeroes the pairs they all but reject."""
import torch

from utils.options import Option, Range

from ..engine import Engine
from . import register_method


@register_method("soft_clean")
class SoftClean(Engine):
    options = {"soft_clean_floor": Option(0.1, "soft_clean: pairs whose mean clean probability is below this "
                                               "weigh 0", Range(lo=0, hi=1))}

    def sample_weights(self, signals, positive_sim, epoch):
        weights = torch.as_tensor(self.clean_probabilities(signals, epoch).mean(0), dtype=torch.float32)
        return torch.where(weights < self.cfg.soft_clean_floor, torch.zeros_like(weights), weights)
