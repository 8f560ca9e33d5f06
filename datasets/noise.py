"""Noisy image-text correspondence, RDE's convention (docs/METHOD.md §1.4).

A fraction `rate` of training captions is permuted among themselves; image, pid and image_id
stay put. The permutation is saved as .npy (RDE names them `<DATASET>_<rate>.npy`) so that
runs with the same file see the same noise. Ground truth: `is_clean = perm == np.arange(n)`
(a caption that the shuffle happens to leave in place counts as clean).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from utils.files import atomic_open

from .bases import DatasetError, TrainRecord


def make_noisy_permutation(n: int, rate: float, seed: int) -> np.ndarray:
    """int64 [n]: int(rate*n) indices chosen at random have their captions shuffled among them."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noisy rate must be in [0, 1], got {rate}")
    rs = np.random.RandomState(seed)  # legacy generator: the same algorithm as RDE's np.random.seed
    perm = np.arange(n, dtype=np.int64)
    chosen = rs.permutation(n)[: int(rate * n)]
    perm[chosen] = rs.permutation(chosen)
    return perm


def load_or_create_permutation(noisy_file: str, n: int, rate: float, seed: int) -> np.ndarray:
    """Load the permutation from `noisy_file`, or create it from the seed and save it there."""
    if os.path.exists(noisy_file):
        try:
            perm = np.load(noisy_file, allow_pickle=False)   # a pickled .npy would run code
        except (OSError, ValueError) as e:
            raise DatasetError(f"{noisy_file}: cannot read the noise permutation ({e}); delete it to "
                               f"regenerate it from the seed.") from e
        if not isinstance(perm, np.ndarray):   # a zip (.npz, torch.save) read lazily: not a permutation
            raise DatasetError(f"{noisy_file}: cannot read the noise permutation (not a .npy array); delete it to "
                               "regenerate it from the seed.")
        ok = (perm.ndim == 1 and len(perm) == n and np.issubdtype(perm.dtype, np.integer)
              and np.array_equal(np.sort(perm), np.arange(n)))
        if not ok:
            raise DatasetError(
                f"{noisy_file}: expected a permutation of 0..{n - 1} (length {n}, the number of training "
                f"captions), got shape {perm.shape} dtype {perm.dtype}. It was made for another dataset or "
                f"annotation file; point --noisy_file elsewhere or delete it to regenerate.")
        return perm.astype(np.int64)
    perm = make_noisy_permutation(n, rate, seed)
    parent = os.path.dirname(os.path.abspath(noisy_file))
    try:
        os.makedirs(parent, exist_ok=True)
        # Atomic: a concurrent run never reads a half-written file. np.save on a file object keeps the name.
        with atomic_open(noisy_file, "wb") as f:
            np.save(f, perm)
    except OSError as e:
        # a read-only dataset folder: the permutation is a function of the seed, so the run is the same unsaved
        logging.getLogger("reid").warning("cannot save the noise permutation to %s (%s); using it unsaved (the "
                                          "same seed makes the same one; --noisy_file puts it elsewhere)",
                                          noisy_file, e.strerror)
    return perm


def apply_noise(records: list[TrainRecord], perm: np.ndarray) -> list[TrainRecord]:
    """Record i keeps its image, pid and image_id and takes the caption (and RDA entry) of record perm[i]."""
    if len(perm) != len(records):
        raise DatasetError(f"noise permutation has length {len(perm)} but there are {len(records)} training captions")
    return [dataclasses.replace(rec, caption=records[j].caption, diversity=records[j].diversity)
            for rec, j in zip(records, perm.tolist())]
