"""The training engine: one RDE model, or reciprocal twins that share the per-epoch division.

A new method usually overrides one method: `train_step` (what a batch costs), `division_pass` (what the
clean/noisy division listens to) or `sample_weights` (how the division becomes per-sample weights).
"""
from __future__ import annotations

import glob
import logging
import math
import os
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from datasets import EvalSplit, build_dataset
from datasets.loaders import EpochDraws, build_eval_loaders, build_train_loader
from datasets.transforms import training_view
from datasets.noise import apply_noise, load_or_create_permutation
from model import build_model
from utils.checkpoint import atomic_save, load_model_states
from utils import distributed as dist
from utils.device import autocast, resolve_device, resolve_precision
from utils.evaluator import Evaluator, extract_features
from utils.logger import append_jsonl
from utils.progress import progress
from utils.run_folder import LAST, METRICS, PREVIOUS, crash_point, settle_metrics
from utils.metrics import metrics_table
from utils.seed import rng_state, set_rng_state, set_seed

from .division import alr_weights, clean_votes, consensus, division_quality, gmm_settings
from .optimizer import build_optimizer
from .scheduler import build_scheduler

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


def weighted_loss(model, per_sample: dict, weights: torch.Tensor, loss_weights: dict,
                  rda: dict | None = None, rda_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum over embeddings and losses of loss_weight * reduce(w_i * loss_i); RDA pairs add the first loss
    (TAL) times rda_weight.  Returns the total and its detached parts named 'embedding_loss'."""
    terms = [(name, emb, v, 1.0) for (emb, name), v in per_sample.items()]
    if rda is not None and rda_weight:  # ICL: the first loss on (image, RDA caption), every embedding
        terms += [(f"rda_{name}", emb, v, rda_weight) for (emb, name), v in rda.items() if name == model.loss_names[0]]
    total, parts = 0.0, {}
    for name, emb, values, factor in terms:
        weighted = (weights * values.float()).sum()
        if model.losses[emb][name.removeprefix("rda_")].reduction == "mean":
            weighted = weighted / len(values)
        total = total + factor * loss_weights.get(name, 1.0) * weighted
        parts[f"{emb}_{name}"] = weighted.detach()
    return total, parts


@torch.no_grad()
def division_losses(model, image_feats: dict, text_feats: dict, pids: torch.Tensor, order: torch.Tensor,
                    batch_size: int) -> dict[str, torch.Tensor]:
    """{embedding: [N]} per-pair value of the model's first loss, with in-batch negatives as in training:
    pairs are taken in `order`, batch_size at a time (features are per pair: image_feats[e][i] is pair i's)."""
    first = model.loss_names[0]
    losses = {emb: torch.zeros(len(pids), device=pids.device) for emb in image_feats}
    for chunk in order.split(batch_size):
        per = model.per_sample_losses({e: f[chunk] for e, f in image_feats.items()},
                                      {e: f[chunk] for e, f in text_feats.items()}, pids[chunk])
        for emb in losses:
            losses[emb][chunk] = per[(emb, first)].float()
    return losses


@torch.no_grad()
def division_signals(models, features, image_ids, pids, order, batch_size: int):
    """Per-sample loss of every training pair under each embedding of each model (the first training loss,
    in-batch negatives as in training) and the positive-pair cosine averaged over all of them.

    features[k] = ({emb: [images, D]}, {emb: [pairs, D]}) of model k; image_ids[i] is pair i's image.
    """
    signals, positive_sim = {}, torch.zeros(len(pids), device=pids.device)
    for k, (model, (image_feats, text_feats)) in enumerate(zip(models, features), 1):
        image_feats = {e: f[image_ids] for e, f in image_feats.items()}     # pair i's image
        losses = division_losses(model, image_feats, text_feats, pids, order, batch_size)
        for emb in image_feats:
            positive_sim += F.cosine_similarity(image_feats[emb], text_feats[emb], dim=-1)
        prefix = f"model{k}/" if len(models) > 1 else ""
        signals.update({prefix + emb: v.cpu().numpy() for emb, v in losses.items()})
    return signals, (positive_sim / len(signals)).cpu().numpy()


class Trainer:
    def __init__(self, cfg, run_dir: str, resume_from: tuple[dict, str] | None = None):
        """resume_from: (checkpoint, its path) to continue from, as utils.checkpoint.load_latest reads it."""
        self._setup(cfg, run_dir)
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
        self._build_models(self.dataset.num_train_pids)
        self._build_data()
        self.start_epoch, self.best = 1, {}     # best: {"epoch", "results"} of the best evaluation so far
        self.resumed_record = None              # the metrics row of the checkpoint's epoch
        if resume_from is not None:
            self.resume(*resume_from)

    @classmethod
    def without_data(cls, cfg, num_classes: int) -> "Trainer":
        """The models, optimisers and training step, no dataset and no run folder: what the benchmarks time."""
        trainer = cls.__new__(cls)
        trainer._setup(cfg, None)
        trainer._build_models(num_classes)
        return trainer

    def _setup(self, cfg, run_dir: str | None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.device = dist.init_distributed(cfg.device) or resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.dtype = resolve_precision(cfg.precision, self.device)
        set_seed(cfg.seed)

    def _build_models(self, num_classes: int) -> None:
        cfg = self.cfg
        self.models = []
        for k in range(2 if cfg.twin else 1):
            torch.manual_seed(cfg.seed + k)  # twins: independently initialised heads
            self.models.append(build_model(cfg, num_classes).to(self.device))
        # what the training step calls: the model itself, or its DDP wrapper under torchrun (whose forward
        # gathers features across processes so the in-batch losses see the global batch), maybe compiled
        self.runners = [self.wrap(m) for m in self.models]
        self.optimizers = [build_optimizer(m, cfg, self.device) for m in self.models]
        self.schedulers = [build_scheduler(o, cfg) for o in self.optimizers]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def _epoch_sampler(self, stream: int) -> EpochDraws:
        """One shuffle for any number of processes (each takes every world_size-th sample of it), so N processes
        x batch B see exactly the batches of one process with batch N x B (cfg.batch_size is per process); the
        order and the augmentation draws are functions of (seed, epoch, stream)."""
        return EpochDraws(torch.utils.data.DistributedSampler(
            range(len(self.records)), num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True,
            seed=self.cfg.seed + stream), stream=stream)

    def _build_data(self) -> None:
        cfg, num_models = self.cfg, len(self.models)
        loader_kw = dict(image_size=tuple(cfg.img_size), text_length=cfg.text_length, num_workers=cfg.num_workers)
        train_kw = dict(batch_size=cfg.batch_size, img_aug=cfg.img_aug, txt_aug=cfg.txt_aug, num_views=num_models,
                        seed=cfg.seed, **loader_kw)
        self.sampler = self._epoch_sampler(stream=0)
        self.train_loader = build_train_loader(self.records, use_rda=self.dataset.has_rda and cfg.use_rda,
                                               sampler=self.sampler, **train_kw)
        if cfg.division_read == "augmented":
            # as published: the training pipeline once more (its own shuffle and augmentation draws)
            self.division_sampler = self._epoch_sampler(stream=1)
            self.division_loader = build_train_loader(self.records, sampler=self.division_sampler, **train_kw)
        else:  # clean (utils/options.py allows no other value): each image once, no augmentation, like a test set
            paths, pids = unique_images(self.records)
            self.train_as_eval = EvalSplit(paths, pids, [r.caption for r in self.records],
                                           [r.pid for r in self.records])
            self.division_loaders = build_eval_loaders(self.train_as_eval, batch_size=cfg.test_batch_size,
                                                       **loader_kw)
        split = self.dataset.val if cfg.val_dataset == "val" and self.dataset.val is not None else self.dataset.test
        self.evaluator = Evaluator(split, *build_eval_loaders(split, batch_size=cfg.test_batch_size, **loader_kw),
                                   device=self.device, dtype=self.dtype)

        self.weights = torch.ones(len(self.records))

    def wrap(self, model):
        if dist.world_size() > 1:
            if self.device.type == "cuda":  # BatchNorm statistics over the global batch, as on one GPU
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(model) if self.cfg.compile else model

    @property
    def best_r1(self) -> float:
        """R1 of the headline row (the last: fusion / ensemble) at the best evaluation so far."""
        return list(self.best["results"].values())[-1]["R1"] if self.best else -1.0

    # ---------------------------------------------------------------- division
    def division_pass(self, epoch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Division signals of every model on the (noisy) training pairs and their mean positive cosine."""
        if self.cfg.division_read == "augmented":
            return self.division_pass_augmented(epoch)
        image_ids = torch.tensor([r.image_id for r in self.records], device=self.device)
        pids = torch.tensor([r.pid for r in self.records], device=self.device)
        order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        features = [extract_features(m, *self.division_loaders, self.device, self.dtype) for m in self.models]
        return division_signals(self.models, features, image_ids, pids, order.to(self.device), self.cfg.batch_size)

    @torch.no_grad()
    def division_pass_augmented(self, epoch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The published read (RDE's get_loss): per-pair loss on augmented training batches, in eval mode, with
        those batches' in-batch negatives; twins score each model on the other model's view (3RTPR)."""
        n, first, num_models = len(self.records), self.models[0].loss_names[0], len(self.models)
        losses, positive_sim = {}, torch.zeros(n, device=self.device)
        for model in self.models:
            model.eval()
        self.division_sampler.set_epoch(epoch)
        for batch in progress(self.division_loader, dist.is_main(), desc=f"division {epoch}", leave=False):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            index, pids = dist.gather_batch(batch["index"]), dist.gather_batch(batch["pid"])
            for k, model in enumerate(self.models):
                view = (k + 1) % num_models
                with autocast(self.device, self.dtype):
                    image_feats = model.encode_image(self.view_images(model, batch, view))
                    text_feats = model.encode_text(batch["caption_ids"][:, view])
                image_feats = {e: dist.gather_batch(f) for e, f in image_feats.items()}
                text_feats = {e: dist.gather_batch(f) for e, f in text_feats.items()}
                per = model.per_sample_losses(image_feats, text_feats, pids)
                for emb in image_feats:
                    name = f"model{k + 1}/{emb}" if num_models > 1 else emb
                    losses.setdefault(name, torch.zeros(n, device=self.device))[index] = per[(emb, first)].float()
                    positive_sim[index] += F.cosine_similarity(image_feats[emb].float(), text_feats[emb].float(), dim=-1)
        signals = {name: v.cpu().numpy() for name, v in losses.items()}
        return signals, (positive_sim / len(signals)).cpu().numpy()

    def view_images(self, model, batch: dict, view: int) -> torch.Tensor:
        """One augmented view of a batch's images as `model` takes them (datasets.transforms.training_view)."""
        return training_view(batch, view, model.backbone.visual.normalize)

    def sample_weights(self, signals: dict[str, np.ndarray], positive_sim: np.ndarray, epoch: int) -> torch.Tensor:
        """Every signal votes clean/noisy (a Gaussian mixture each); CCD or ALR turns the votes into weights."""
        cfg = self.cfg
        settings = gmm_settings(cfg.noisy_rate, cfg.dataset_name, cfg.gmm)
        votes = np.stack([clean_votes(v, settings, seed=cfg.seed + epoch) for v in signals.values()])
        if cfg.weighting == "ccd":
            return consensus(votes, torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        if cfg.weighting == "alr":
            return alr_weights(votes, positive_sim, cfg.alr_k, cfg.alr_mu)
        raise ValueError(f"weighting {cfg.weighting!r}: choose ccd or alr")

    def divide(self, epoch: int) -> dict:
        start = time.time()
        self.weights = self.sample_weights(*self.division_pass(epoch), epoch)
        stats = {**division_quality(self.weights, self.is_clean), "time": time.time() - start}
        log.info("epoch %d division: kept %d of %d pairs%s (%.1fs)", epoch, stats["kept"], stats["total"],
                 "" if self.is_clean is None else
                 f", noise precision {stats['noise_precision']:.1f}% recall {stats['noise_recall']:.1f}%",
                 stats["time"])
        return {f"division/{k}": v for k, v in stats.items()}

    # ---------------------------------------------------------------- training
    def train_step(self, batch: dict, weights: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch for every model (twins: each on its own augmented view) and its parts.

        `weights` are the division's per-sample weights of the global batch (all processes, rank order).
        """
        rda_weight = max(0.1, 1 - 0.03 * epoch) if "rda_ids" in batch else 0.0   # ICL's schedule
        total, parts = 0.0, {}
        for k, (model, runner) in enumerate(zip(self.models, self.runners)):
            prefix = f"model{k + 1}/" if len(self.models) > 1 else ""
            with autocast(self.device, self.dtype):
                per_sample, rda = runner(self.view_images(model, batch, k), batch["caption_ids"][:, k], batch["pid"],
                                         batch["rda_ids"][:, k] if rda_weight else None)
            loss, model_parts = weighted_loss(model, per_sample, weights, self.cfg.loss_weights, rda, rda_weight)
            total = total + loss
            parts.update({prefix + name: v for name, v in model_parts.items()})
        return total, parts

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """One backward for all models (twins share no parameters) and a step of each optimiser."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()

    def train_epoch(self, epoch: int) -> dict:
        for model in self.models:
            # published RDE / ICL left the models in eval mode after the division pass (see METHOD.md 4)
            model.train(not (self.cfg.published_eval_mode and self.cfg.division))
        self.sampler.set_epoch(epoch)  # the data order depends on (seed, epoch) only: resumable
        sums, steps = {}, 0
        weights_on_device = self.weights.to(self.device)
        bar = progress(self.train_loader, dist.is_main(), desc=f"epoch {epoch}/{self.cfg.num_epoch}", leave=False)
        for batch in bar:
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss, parts = self.train_step(batch, weights_on_device[dist.gather_batch(batch["index"])], epoch)
            self.optimizer_step(loss)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            if steps == len(self.train_loader) // 2:
                crash_point(f"epoch{epoch}:mid")
            if steps % self.cfg.log_period == 0:  # the only host sync of the loop
                bar.set_postfix(loss=f"{float(loss):.3f}")
        return {f"loss/{k}": float(v) / max(steps, 1) for k, v in sums.items()}

    # ---------------------------------------------------------------- loop
    def run(self) -> dict:
        cfg, results = self.cfg, {}
        metrics_file = os.path.join(self.run_dir, METRICS)
        tensorboard = None
        if dist.is_main():
            # every finished epoch once, in the log and in one events file rebuilt from it (TensorBoard cannot
            # take back the points of an epoch that a kill cut short)
            rows = settle_metrics(metrics_file, self.start_epoch - 1, self.resumed_record)
            tensorboard = self.tensorboard(rows)
        for epoch in range(self.start_epoch, cfg.num_epoch + 1):
            start = time.time()
            record = {"epoch": epoch, "lr": self.backbone_lr()}
            if cfg.division:
                record.update(self.divide(epoch))
            record.update(self.train_epoch(epoch))
            for scheduler in self.schedulers:
                scheduler.step()
            record["train_time"] = time.time() - start
            if epoch % cfg.eval_period == 0 or epoch == cfg.num_epoch:
                results, table = self.evaluator.evaluate(self.models, title=f"epoch {epoch}")
                log.info("\n%s", table)
                headline = list(results)[-1]
                record.update({k: v for k, v in results[headline].items()})
                record["eval_row"] = headline
                if results[headline]["R1"] > self.best_r1:
                    self.best = {"epoch": epoch, "results": results}
                    self.save("best.pth", epoch, results)
            log.info("epoch %d: %s", epoch, ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and math.isfinite(v)))
            self.save(LAST, epoch, results, record)
            crash_point(f"epoch{epoch}:logging")
            if dist.is_main():
                append_jsonl(metrics_file, record)
                self.add_scalars(tensorboard, record)
                tensorboard.flush()
            dist.barrier()
        if tensorboard is not None:
            tensorboard.close()
        if self.best:
            log.info("\n%s", metrics_table(self.best["results"], f"{cfg.dataset_name}: best.pth, epoch {self.best['epoch']}"))
        log.info("best R1 %.2f; checkpoints in %s", self.best_r1, self.run_dir)
        return results

    def backbone_lr(self) -> float:
        groups = self.optimizers[0].param_groups
        return next((g["lr"] for g in groups if g["initial_lr"] == self.cfg.lr), groups[0]["lr"])

    def tensorboard(self, rows: list[dict]):
        """A fresh events file holding the metrics rows so far (one events file per run folder)."""
        from torch.utils.tensorboard import SummaryWriter
        for old in glob.glob(os.path.join(self.run_dir, "events.out.tfevents.*")):
            os.remove(old)
        writer = SummaryWriter(self.run_dir)
        for row in rows:
            self.add_scalars(writer, row)
        return writer

    @staticmethod
    def add_scalars(writer, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                writer.add_scalar(key, value, record["epoch"])

    # ---------------------------------------------------------------- checkpoints
    def save(self, name: str, epoch: int, results: dict, record: dict | None = None) -> None:
        """best.pth (weights) or, with the epoch's metrics record, last.pth: all that --resume needs to continue
        the same schedule, the previous one kept as last.prev.pth."""
        if not dist.is_main():
            return
        state = {"epoch": epoch, "models": [m.state_dict() for m in self.models], "results": results,
                 "config": dict(self.cfg), "best": self.best,
                 "clip_config": asdict(self.models[0].backbone.config)}  # test.py rebuilds without the CLIP file
        if record is not None:
            state.update(optimizers=[o.state_dict() for o in self.optimizers],
                         schedulers=[s.state_dict() for s in self.schedulers],
                         scaler=self.scaler.state_dict(), rng=rng_state(), record=record)
        atomic_save(state, os.path.join(self.run_dir, name), crash_name=f"epoch{epoch}:{name}",
                    previous=os.path.join(self.run_dir, PREVIOUS) if name == LAST else None)

    def resume(self, ckpt: dict, path: str) -> None:
        load_model_states(self.models, ckpt["models"], path)
        for opt, s in zip(self.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, ckpt["schedulers"]):
            sched.load_state_dict(s)
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.start_epoch, self.best = ckpt["epoch"] + 1, ckpt["best"]
        self.resumed_record = ckpt.get("record")
        log.info("resumed from %s at epoch %d (best R1 so far %.2f)", path, self.start_epoch, self.best_r1)
