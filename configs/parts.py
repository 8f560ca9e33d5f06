"""The project's parts that option values are checked against (the datasets, losses, heads, optimisers, weighting
rules and methods registered, CLIP's architecture fields, the mixture's settings), given to configs/ by the code
that assembles a run: solver/build.py gives them when it is imported.

configs/ imports only utils/: it sits under evaluation/ (which reads runs' configs) and solver/ (which trains
them), so it cannot import the packages that hold the registries without an import running back up.  Every
command that reads a config (main.py, test.py, retrieve.py, app.py, python -m thi / thi.sft_data / rda, bench/)
therefore imports solver.build first; reading a config before that is an error that says so.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


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
    weightings: Mapping               # weighting and the rules' options (solver/weighting.py)
    methods: Mapping                  # method, the methods' options and defaults (solver/methods/)


_given: list[Parts] = []


def give(parts: Parts) -> None:
    """What solver/build.py calls when imported."""
    _given[:] = [parts]


def parts() -> Parts:
    if not _given:
        raise RuntimeError("configs/ has not been given the project's registries, which it checks option values "
                           "against: import solver.build first (it assembles runs and gives them; every command "
                           "that reads a config does)")
    return _given[0]
