"""What a run's own division says about each pair: the one module of the audit that reaches into the division
(solver/).  It builds the run's training method (its Engine, with its models at a checkpoint and the audited pairs
in the run's loaders) and asks it what an epoch of that run asks: every division signal's values, each signal's
clean probability (its mixture posterior), the votes, the weights the run's rule would train with, and the
positive-pair cosine.  The run's own `division_read`, mixture settings, weighting rule and method are used as they
are, and twins' signals come from both models.  When the division's code moves, this module is what changes.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import torch

from datasets import DATASETS, DatasetError
from datasets.noise import load_or_create_permutation
from evaluation.evaluator import extract_features
from solver.build import build_models
from solver.data import TrainData, default_noisy_file
from pretraining import ensure_for_run
from solver.division import model_prefix
from solver.methods import METHODS

from .pairs import AuditError, PairSource, split_pairs


@dataclass
class Verdict:
    """The division's answer for N pairs at one epoch."""
    epoch: int                       # the epoch whose division this is (its seeds: mixture, coin, read order)
    signals: list[str]               # 'bge', 'tse'; twins 'model1/bge', ..., 'model2/tse'
    owners: list[str]                # the model each signal is of: '' (one model), 'model1', 'model2'
    values: np.ndarray               # [signals, N] what each mixture is fitted to: the primary loss of each pair
    clean_probabilities: np.ndarray  # [signals, N] each signal's posterior that the pair is clean
    votes: np.ndarray                # [signals, N] bool: the signal calls the pair clean
    weights: np.ndarray              # [rows, N]: what the run would train with (one row, or one per model)
    weight_names: list[str]          # 'weight', or 'model1 weight', 'model2 weight'
    positive_similarity: np.ndarray  # [N] the pair's cosine, averaged over the signals (ALR's s)


@dataclass
class PairSet:
    """The pairs being audited, as the run's data holds them."""
    data: TrainData                  # .records: the pairs (captions as the run saw them); .dataset; the loaders
    sources: list[PairSource]        # where each pair stands in the annotation file
    split: str
    is_clean: np.ndarray | None      # the truth under simulated noise, else None
    permutation: np.ndarray | None   # the noise file's permutation (pair i took the caption of pair perm[i])
    noisy_file: str | None

    @property
    def records(self):
        return self.data.records


def pair_set(cfg, split: str = "train", anno_path: str | None = None, noisy_file: str | None = None) -> PairSet:
    """One split of the run's annotation file (or of `anno_path`, another file in its dataset's format) as the run's
    data reads it: the training pairs with the run's simulated noise; another file's with the noise of
    `noisy_file` (a permutation of its training pairs, as --write_clean writes) or none; val / test pairs as
    they are.  The loaders are built as the run built them (one augmented view per model)."""
    data_cfg = copy.deepcopy(cfg)
    if anno_path:
        data_cfg.anno_path = anno_path
        # > 0 makes TrainData read the file; the rate only matters when a permutation is made, never here
        data_cfg.noisy_rate, data_cfg.noisy_file = (cfg.noisy_rate or 1.0, noisy_file) if noisy_file else (0.0, "")
    if split != "train":
        data_cfg.noisy_rate = 0.0
    if data_cfg.noisy_rate > 0:
        data_cfg.noisy_file = data_cfg.noisy_file or default_noisy_file(data_cfg)
        if anno_path and not os.path.isfile(data_cfg.noisy_file):
            raise AuditError(f"--noisy_file {data_cfg.noisy_file}: no such file (expected the permutation .npy that "
                             "--write_clean writes beside its annotation file); leave it out to audit the file's "
                             "pairs as they are")
    try:
        data = TrainData(data_cfg)
    except DatasetError as e:
        raise AuditError(f"{e}\n(audit.py reads {'--anno_path' if anno_path else 'the run'}'s file as "
                         f"{cfg.dataset_name}, the run's dataset: a JSON list of records with id, "
                         f"{DATASETS[cfg.dataset_name].path_key}, captions, split; `python -m datasets.check --dataset_name "
                         f"{cfg.dataset_name} --root_dir {cfg.root_dir}{' --anno_path ' + anno_path if anno_path else ''}`"
                         " lists every problem)") from None
    records, sources = split_pairs(data.dataset, split)
    permutation = None
    if split != "train":
        data.records, data.is_clean = records, None
    elif data_cfg.noisy_rate > 0:
        # read back: TrainData has just loaded (or made) it
        permutation = load_or_create_permutation(data_cfg.noisy_file, len(records), data_cfg.noisy_rate,
                                                 data_cfg.seed)
    data.build_loaders(num_views=2 if cfg.twin else 1)
    return PairSet(data, sources, split, data.is_clean, permutation,
                   data_cfg.noisy_file if permutation is not None else None)


def method_engine(cfg, models: list, device, dtype, pairs: PairSet):
    """The run's training method around `models` (a checkpoint's weights), reading `pairs`: what divides."""
    return METHODS[cfg.method](cfg, models, device, dtype, data=pairs.data)


@torch.no_grad()
def verdict(engine, epoch: int) -> Verdict:
    """The division of `epoch` as the run makes it: its read, its mixtures (seeded by the epoch), its rule."""
    division = engine.division(epoch)
    weights = engine.weigh(division)
    weights = weights[None] if weights.dim() == 1 else weights
    names = ["weight"] if len(weights) == 1 else [f"{model_prefix(k, len(weights)).rstrip('/')} weight"
                                                  for k in range(len(weights))]
    return Verdict(epoch, list(division.signals), [model_prefix(k, division.models).rstrip("/") for k in division.owners],
                   np.stack(list(division.signals.values())), division.clean, division.votes,
                   weights.cpu().numpy(), names, np.asarray(division.positive_sim))


@torch.no_grad()
def pair_features(models: list, pairs: PairSet, device, dtype) -> list[tuple[dict, dict]]:
    """Per model ({embedding: [images, D]}, {embedding: [pairs, D]}), unaugmented, as a test set is read;
    pair i's image is row records[i].image_id."""
    loaders = pairs.data.unaugmented_loaders()
    return [extract_features(m, *loaders, device, dtype) for m in models]


def starting_models(cfg, num_classes: int, device) -> list:
    """The run's models as its training started them (its pretrained CLIP, fresh heads): the zero-shot baseline."""
    ensure_for_run(cfg, device)
    models = build_models(cfg, num_classes, device)
    for m in models:
        m.eval()
    return models
