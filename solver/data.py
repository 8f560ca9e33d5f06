"""The data a training run reads: the (noisy) training pairs, their loaders, and the split it is evaluated on."""
from __future__ import annotations

import itertools
import logging
import os

import numpy as np
import torch

from datasets import EvalSplit, build_dataset
from datasets.loaders import EpochDraws, build_eval_loaders, build_train_loader, captions_cut
from datasets.noise import apply_noise, load_or_create_permutation
from utils import distributed as dist

log = logging.getLogger("reid")


def default_noisy_file(cfg) -> str:
    """RDE's naming, so its published permutation files drop in: ROOT/noiseindex/DATASET_RATE.npy."""
    return os.path.join(cfg.root_dir, "noiseindex", f"{cfg.dataset_name}_{cfg.noisy_rate}.npy")


def unique_images(records) -> tuple[list[str], list[int]]:
    """Image paths and pids indexed by image_id (training pairs share images: encode each once)."""
    num = max(r.image_id for r in records) + 1
    paths, pids = [""] * num, [0] * num
    for r in records:
        paths[r.image_id], pids[r.image_id] = r.img_path, r.pid
    return paths, pids


class ResumableDraws(EpochDraws):
    """EpochDraws that can start an epoch part-way: `skip` samples (this process's share) are left out of the
    next epoch's order, once.  A run stopped mid-epoch (a SIGTERM) so trains that epoch's remaining batches,
    the very batches and augmentation draws the uninterrupted run had."""

    skip = 0

    def __iter__(self):
        keys, self.skip = itertools.islice(super().__iter__(), self.skip, None), 0
        return keys


class TrainData:
    """The dataset with cfg.noisy_rate of its captions permuted (is_clean: the truth, None without noise).
    `build_loaders(num_views)` then makes the training loader (one augmented view per model), the division
    pass's reader (cfg.division_read) and the evaluation split's loaders."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.dataset = build_dataset(cfg.dataset_name, cfg.root_dir, cfg.anno_path or None)
        log.info("dataset %s from %s\n%s", cfg.dataset_name, self.dataset.anno_file, self.dataset.summary())
        self.records, self.is_clean = self.dataset.train, None
        if cfg.noisy_rate > 0:
            noisy_file = cfg.noisy_file or default_noisy_file(cfg)
            perm = load_or_create_permutation(noisy_file, len(self.records), cfg.noisy_rate, cfg.seed)
            self.records = apply_noise(self.records, perm)
            self.is_clean = perm == np.arange(len(perm))
            log.info("noisy correspondence: %d of %d captions permuted (%s)",
                     int((~self.is_clean).sum()), len(perm), noisy_file)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_train_pids

    def epoch_sampler(self, stream: int) -> ResumableDraws:
        """One shuffle for any number of processes (each takes every world_size-th sample of it), so N processes
        x batch B see exactly the batches of one process with batch N x B (cfg.batch_size is per process); the
        order and the augmentation draws are functions of (seed, epoch, stream)."""
        return ResumableDraws(torch.utils.data.DistributedSampler(
            range(len(self.records)), num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True,
            seed=self.cfg.seed + stream), stream=stream)

    def loader_options(self) -> dict:
        cfg = self.cfg
        return dict(image_size=tuple(cfg.img_size), text_length=cfg.text_length, num_workers=cfg.num_workers,
                    image_cache=cfg.image_cache, cache_dir=cfg.image_cache_dir or None)

    def unaugmented_loaders(self):
        """(image loader, caption loader) of the pairs read like a test set: each image once, no augmentation;
        pair i's image is the records' image_id."""
        paths, pids = unique_images(self.records)
        train_as_eval = EvalSplit(paths, pids, [r.caption for r in self.records], [r.pid for r in self.records])
        return build_eval_loaders(train_as_eval, batch_size=self.cfg.test_batch_size, **self.loader_options())

    def build_loaders(self, num_views: int) -> None:
        cfg = self.cfg
        loader_kw = self.loader_options()
        train_kw = dict(batch_size=cfg.batch_size, img_aug=cfg.img_aug, txt_aug=cfg.txt_aug, num_views=num_views,
                        txt_aug_rates=cfg.txt_aug_rates, seed=cfg.seed, **loader_kw)
        self.sampler = self.epoch_sampler(stream=0)
        self.train_loader = build_train_loader(self.records, use_rda=self.dataset.has_rda and cfg.use_rda,
                                               sampler=self.sampler, **train_kw)
        if cfg.division_read == "augmented":
            # as published: the training pipeline once more (its own shuffle and augmentation draws)
            self.division_sampler = self.epoch_sampler(stream=1)
            self.division_loader = build_train_loader(self.records, sampler=self.division_sampler, **train_kw)
        else:  # clean: each image once, no augmentation, like a test set
            self.division_loaders = self.unaugmented_loaders()
        ds = self.dataset
        self.eval_split = ds.val if cfg.val_dataset == "val" and ds.val is not None else ds.test
        self.eval_loaders = build_eval_loaders(self.eval_split, batch_size=cfg.test_batch_size, **loader_kw)
        log.info("captions cut by --text_length %d: %s, %s", cfg.text_length,
                 cut_summary([r.caption for r in self.records], cfg.text_length, "training"),
                 cut_summary(self.eval_split.captions, cfg.text_length, "val" if self.eval_split is ds.val else "test"))


def cut_summary(captions: list[str], text_length: int, split: str) -> str:
    """How many captions of a split lose their end to the text length, e.g. "4 of 24 training captions (at worst 5
    tokens lost)"."""
    cut, worst = captions_cut(captions, text_length)
    return f"{cut} of {len(captions)} {split} captions" + (f" (at worst {worst} tokens lost)" if cut else "")
