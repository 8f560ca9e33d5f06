"""Weighting rules: how an epoch's division becomes the weights the models train with (docs/METHOD.md §4.3-§4.4),
one file each, chosen by name with ``weighting:`` (default ccd).  Every module of this folder is imported and
registers its rule: a new rule is one new file.

A rule is a class built as ``cls(**its options)`` (``options = {name: Option}``, their values as arguments) and
called once per epoch as ``rule(division) -> weights``: `division` is a solver.division.Division (each signal's
values, clean probabilities and votes, whose model each signal is, the positive-pair cosines, the epoch and the
run's seed), and `weights` a float32 torch tensor in [0, 1], either [N] (every model trains with it) or
[models, N] (row k: what model k trains with).  The engine checks the result (solver/engine.py `Engine.weigh`)
and names the rule in any error.
"""
from __future__ import annotations

from utils.registry import Registry, accepts, import_folder, option_defaults


def _rule_problems(cls) -> list[str]:
    if not isinstance(cls, type):
        return ["a weighting rule is a class"]
    problems = []
    if not accepts(cls.__init__, None, **option_defaults(cls)):
        problems.append("__init__(self, <its options>) is how rules are built")
    if not accepts(getattr(cls, "__call__", None), None, "division"):
        problems.append("__call__(self, division) must return weights [N] or [models, N]")
    return problems


WEIGHTINGS = Registry("weighting", "solver/weighting/", _rule_problems)
register_weighting = WEIGHTINGS.register


def build_weighting(cfg):
    """The rule `cfg.weighting` with the values of the options it declares."""
    return WEIGHTINGS.build(cfg.weighting, cfg=cfg)


import_folder(__name__, __path__)      # every file here: a new rule is one new file
