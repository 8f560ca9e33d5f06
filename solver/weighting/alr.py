"""3RTPR's adaptive loss refinement (docs/METHOD.md §4.4): nothing is dropped; a pair whose positive cosine s is
below mu, a statistic of s over a reference set of clean pairs, weighs sigmoid(k s / mu) (solver/division.py
alr_weights, alr_mu: plain functions).  Two readings: the paper's (alr) and its authors' rebuilt code's
(alr_release, configs/3rtpr_release)."""
import numpy as np
import torch

from utils.options import Option, Pattern

from ..division import Division, alr_mu, alr_weights
from . import register_weighting

# the ALR rules' options, declared once (both read them)
ALR_OPTIONS = {
    "alr_k": Option(5.0, "ALR: w = sigmoid(k s / mu) below mu (3RTPR: 5, 8 under synthetic noise)"),
    "alr_mu": Option("min", "ALR: mu statistic over the consensus-clean set (3RTPR: min; its rebuild also offers "
                            "mean, p25, p30, p75)",
                     Pattern(r"min|mean|p(100(\.0*)?|\d{1,2}(\.\d*)?)",
                             "min, mean or pNN (a percentile 0-100, e.g. p5)")),
}


@register_weighting("alr")
class AdaptiveLossRefinement:
    """3RTPR as its paper reads: pairs less similar than the consensus-clean ones (every signal votes clean) weigh
    sigmoid(k s / mu)."""
    options = ALR_OPTIONS
    form = "paper"

    def __init__(self, alr_k: float, alr_mu: str):
        self.k, self.statistic = alr_k, alr_mu

    def reference(self, votes: np.ndarray) -> np.ndarray:
        """The pairs mu is taken over: those every signal votes clean."""
        return votes.all(axis=0)

    def mu(self, division: Division) -> torch.Tensor:
        return alr_mu(division.positive_sim, self.reference(division.votes), self.statistic)

    def __call__(self, division: Division) -> torch.Tensor:
        return alr_weights(division.positive_sim, self.mu(division), self.k, self.form)


@register_weighting("alr_release")
class ReleasedAdaptiveLossRefinement(AdaptiveLossRefinement):
    """3RTPR as its rebuilt code does it (processor.py, "base + ALR"): mu over the pairs with the most clean
    votes (its "super-clean set": every signal's where one pair has them all, else the pairs with the most), and
    the rebuild's sigmoid (solver/division.py alr_weights, form release).  Its consensus coin decides nothing:
    the rebuild then sets every pair's label to 1, so only these weights reach the loss."""
    form = "release"

    def reference(self, votes: np.ndarray) -> np.ndarray:
        count = votes.sum(axis=0)
        return count == count.max()
