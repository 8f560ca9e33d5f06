"""How the division's verdicts become per-sample loss weights (docs/METHOD.md §4.3-§4.4), chosen with ``weighting``.

A rule is a class registered here: built with the run's seed and the options it declares, called once per epoch
with every signal's clean / noisy votes and the positive-pair cosine of every training pair.
"""
from __future__ import annotations

import numpy as np
import torch

from utils.options import Option, Pattern
from utils.registry import Registry, accepts, option_defaults

from .division import alr_mu, alr_weights, consensus


def _rule_problems(cls) -> list[str]:
    if not isinstance(cls, type):
        return ["a weighting rule is a class"]
    problems = []
    if not accepts(cls.__init__, None, seed=0, **option_defaults(cls)):
        problems.append("__init__(self, seed, <its options>) is how rules are built")
    if not accepts(getattr(cls, "__call__", None), None, "votes", "positive_sim", "epoch"):
        problems.append("__call__(self, votes, positive_sim, epoch) must return weights [N]")
    return problems


WEIGHTINGS = Registry("weighting", "solver/weighting.py", _rule_problems)


@WEIGHTINGS.register("ccd")
class ConsensusCleanDivision:
    """RDE: 1 where every signal says clean, 0 where all say noisy, a fair coin where they disagree."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, votes: np.ndarray, positive_sim: np.ndarray, epoch: int) -> torch.Tensor:
        return consensus(votes, torch.Generator().manual_seed(self.seed * 1000 + epoch))


# the ALR rules' options, declared once (both read them)
ALR_OPTIONS = {
    "alr_k": Option(5.0, "ALR: w = sigmoid(k s / mu) below mu (3RTPR: 5, 8 under synthetic noise)"),
    "alr_mu": Option("min", "ALR: mu statistic over the consensus-clean set (3RTPR: min; its rebuild also offers "
                            "mean, p25, p30, p75)",
                     Pattern(r"min|mean|p(100(\.0*)?|\d{1,2}(\.\d*)?)",
                             "min, mean or pNN (a percentile 0-100, e.g. p5)")),
}


@WEIGHTINGS.register("alr")
class AdaptiveLossRefinement:
    """3RTPR as its paper reads: nothing dropped; pairs less similar than the consensus-clean ones (every signal
    votes clean) weigh sigmoid(k s / mu)."""
    options = ALR_OPTIONS
    form = "paper"

    def __init__(self, seed: int, alr_k: float, alr_mu: str):
        self.k, self.mu = alr_k, alr_mu

    def reference(self, votes: np.ndarray) -> np.ndarray:
        """The pairs mu is taken over: those every signal votes clean."""
        return votes.all(axis=0)

    def __call__(self, votes: np.ndarray, positive_sim: np.ndarray, epoch: int) -> torch.Tensor:
        self.last_mu = alr_mu(positive_sim, self.reference(votes), self.mu)
        return alr_weights(positive_sim, self.last_mu, self.k, self.form)


@WEIGHTINGS.register("alr_release")
class ReleasedAdaptiveLossRefinement(AdaptiveLossRefinement):
    """3RTPR as its rebuilt code does it (processor.py, "base + ALR"): mu over the pairs with the most clean
    votes (its "super-clean set": every signal's where one pair has them all, else the pairs with the most), and
    the rebuild's sigmoid (solver/division.py alr_weights, form release).  Its consensus coin decides nothing:
    the rebuild then sets every pair's label to 1, so only these weights reach the loss."""
    form = "release"

    def reference(self, votes: np.ndarray) -> np.ndarray:
        count = votes.sum(axis=0)
        return count == count.max()


def build_weighting(cfg):
    return WEIGHTINGS.build(cfg.weighting, seed=cfg.seed, cfg=cfg)
