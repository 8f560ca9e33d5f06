"""Training methods, one file each, chosen by name with ``method:`` (default rde); every module of this folder is
imported and registers its method.

A method is an Engine subclass (solver/engine.py) registered here: whether it trains twins and which weighting
rule and losses it picks (``defaults``, option values under the config file and the command line), and the points
of the training loop it changes (train_step, division_signals, division_notes, train_mode, evaluates).  How the
division becomes weights is a weighting rule's (solver/weighting/), never a method's.  A method may declare options
of its own (``options = {name: Option}``, listed by ``python main.py --help``).  solver/build.py's `build_engine`
gives it its parts.
"""
from __future__ import annotations

from utils.registry import Registry, import_folder

from ..engine import Engine


def _method_problems(cls) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        return ["a method is a solver.engine.Engine subclass"]
    if not isinstance(cls.defaults, dict):
        return ["defaults must be {option: value}"]
    return []


METHODS = Registry("training method", "solver/methods/", _method_problems)
register_method = METHODS.register


import_folder(__name__, __path__)      # every file here: a new method is one new file
