"""The project's parts that option values are checked against: the datasets, losses, heads, optimisers, weighting
rules and methods registered, CLIP's architecture fields and the mixture's settings.

configs/ sits above the packages that hold them (datasets/, model/, solver/) and imports them itself, the first
time a value is checked (they import torch and scikit-learn; `import configs` alone does not), so a config reads
from any command or test with nothing imported first.  Nothing under configs/ may be imported by those packages
(tests/test_layers.py).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Parts:
    datasets: Mapping                 # dataset_name (datasets.DATASETS)
    losses: Mapping                   # loss_names, loss_weights' keys, the losses' options (model.losses.LOSSES)
    parse_loss_names: Callable        # loss_names -> the losses it trains, labels skipped (ValueError: not one)
    label_rule: str                   # what a label in loss_names may be, for --help
    drop_old_labels: Callable         # loss_names -> (it without the parts earlier versions took for labels, them)
    embeddings: Mapping               # embeddings and the heads' options (model.embeddings.EMBEDDINGS)
    clip_config: type                 # clip_arch's keys and a random CLIP's shape check (model.clip.CLIPConfig)
    gmm_settings: Callable            # gmm's keys: gmm_settings(noisy_rate, dataset_name) (solver/division.py)
    optimizers: Mapping               # optimizer (solver/optimizer.py)
    weightings: Mapping               # weighting and the rules' options (solver/weighting/)
    methods: Mapping                  # method, the methods' options and defaults (solver/methods/)


@cache
def parts() -> Parts:
    from datasets import DATASETS
    from model.clip import CLIPConfig
    from model.embeddings import EMBEDDINGS
    from model.losses import LABEL_RULE, LOSSES, drop_old_labels, parse_loss_names
    from solver.division import gmm_settings
    from solver.methods import METHODS
    from solver.optimizer import OPTIMIZERS
    from solver.weighting import WEIGHTINGS

    return Parts(datasets=DATASETS, losses=LOSSES, parse_loss_names=parse_loss_names, label_rule=LABEL_RULE,
                 drop_old_labels=drop_old_labels, embeddings=EMBEDDINGS, clip_config=CLIPConfig,
                 gmm_settings=gmm_settings, optimizers=OPTIMIZERS, weightings=WEIGHTINGS, methods=METHODS)
