"""The training engine: epochs of division and training over the parts it is given, hooks around them.

The engine is given its models (one, or reciprocal twins), its data (solver/data.py), the division's reader
(``division_read``, solver/division_reads.py) and weighting rule (``weighting``, solver/weighting/), and hooks
(solver/hooks.py: evaluation, checkpoints, the metrics log, the tests' faults).  Each epoch it reads the training
pairs, fits the division (`division`: a solver.division.Division), asks the rule for the weights (`weigh`, which
checks them) and trains with them.  A training method (solver/methods/) is an Engine subclass that overrides one of
these points:

    train_step(batch, weights, epoch)               what a batch costs
    division_signals(epoch)                         what the clean/noisy division listens to
    divide(epoch)                                   whether the epoch divides at all (a warm-up that weighs
                                                    every pair 1: dividemix, twins_release), around the rule
    division_notes(division)                        what the epoch's division line and metrics add
    train_mode()                                    whether the models train in train or eval mode
    evaluates(epoch)                                whether the epoch is evaluated (the best checkpoint is
                                                    chosen among those)

How the division becomes weights is the rule's alone (solver/weighting/), never a method's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict

import numpy as np
import torch

from datasets.transforms import training_view
from utils import distributed as dist
from utils.checkpoint import load_model_states
from utils.device import autocast
from utils.epochs import final_epoch
from utils.progress import progress
from utils.seed import rng_state, set_rng_state
from utils.stop import StopSignals

from .division import Division, division_quality, gmm_settings, model_prefix
from .division_reads import READS
from .faults import FiniteCheck, Interrupted
from .objective import rda_weight, weighted_loss
from .optimizer import build_optimizer
from .scheduler import build_scheduler
from .weighting import WEIGHTINGS, build_weighting

log = logging.getLogger("reid")


class Engine:
    defaults: dict = {}   # option values this method sets, under the config file and the command line
    options: dict = {}    # options this method declares ({name: utils.options.Option}); main.py --help lists them

    def __init__(self, cfg, models: list, device: torch.device, dtype: torch.dtype, data=None, hooks=(),
                 run_dir: str | None = None):
        """data: a solver.data.TrainData with its loaders built (None: the training step alone, as the
        benchmarks time it)."""
        self.cfg, self.models, self.device, self.dtype = cfg, models, device, dtype
        self.data, self.hooks, self.run_dir = data, list(hooks), run_dir
        # what the training step calls: the model itself, or its DDP wrapper under torchrun (whose forward
        # gathers features across processes so the in-batch losses see the global batch), maybe compiled
        self.runners = [self.wrap(m) for m in models]
        self.optimizers = [build_optimizer(m, cfg, device) for m in models]
        self.schedulers = [build_scheduler(o, cfg) for o in self.optimizers]
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.weighting = build_weighting(cfg)
        self.weights = torch.ones(len(data.records)) if data is not None else None
        self.start_epoch, self.best, self.results = 1, {}, {}  # best: {"epoch", "results"} of the best evaluation
        self.resumed_record = None                              # the metrics row of the checkpoint's epoch
        self.partial = None          # an epoch stopped by a signal: where, its loss sums, weights and record so far
        self.stop = StopSignals()    # installed by run()
        self.last_saved = None       # the newest checkpoint of this run, as the messages name it
        self.last_epoch = final_epoch(cfg)    # stop_epoch, or num_epoch (the schedule's length)

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
    def division_signals(self, epoch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Division signals of every model on the (noisy) training pairs and their mean positive cosine."""
        return READS[self.cfg.division_read](self, epoch)

    def view_images(self, model, batch: dict, view: int) -> torch.Tensor:
        """One augmented view of a batch's images as `model` takes them (datasets.transforms.training_view)."""
        return training_view(batch, view, model.backbone.visual.normalize)

    def division(self, epoch: int) -> Division:
        """The division of `epoch`: the pairs read (division_signals) and each signal's mixture and votes."""
        return self.fit_division(*self.division_signals(epoch), epoch)

    def fit_division(self, signals: dict[str, np.ndarray], positive_sim: np.ndarray, epoch: int) -> Division:
        """The division of these signals, with the run's mixture settings and seed."""
        cfg = self.cfg
        settings = gmm_settings(cfg.noisy_rate, cfg.dataset_name, cfg.gmm, cfg.gmm_tight_under_noise)
        return Division.fit(signals, positive_sim, epoch, cfg.seed, len(self.models), settings)

    def weigh(self, division: Division) -> torch.Tensor:
        """The weighting rule's weights for `division`, checked: a float32 tensor in [0, 1], [N] (every model's) or
        [models, N] (row k: model k's).  A rule's mistake is named here, with the rule, not at a batch."""
        weights, n, m = self.weighting(division), division.pairs, len(self.models)
        rule = WEIGHTINGS.describe(self.cfg.weighting)
        if not torch.is_tensor(weights):
            raise TypeError(f"{rule} returned a {type(weights).__module__}.{type(weights).__name__}: return a torch "
                            f"tensor (torch.as_tensor(weights, dtype=torch.float32))")
        if weights.dtype != torch.float32:
            raise TypeError(f"{rule} returned {weights.dtype} weights: return float32 (weights.float())")
        if tuple(weights.shape) not in ((n,), (m, n)):
            raise ValueError(f"{rule} returned weights of shape {tuple(weights.shape)}: expected [{n}] (one weight "
                             f"per pair, every model's) or [{m}, {n}] (one row per model)")
        outside = ~((weights >= 0) & (weights <= 1))        # NaN included
        if outside.any():
            raise ValueError(f"{rule} returned {int(outside.sum())} weights outside [0, 1] (first: "
                             f"{float(weights[outside][0])}): a weight scales a pair's loss, from 0 (dropped) to 1")
        return weights

    def division_notes(self, division: Division) -> tuple[str, dict]:
        """What a method adds to the epoch's division line (text) and metrics ({name: number}); none here."""
        return "", {}

    def divide(self, epoch: int) -> dict:
        start = time.time()
        division = self.division(epoch)
        self.weights = self.weigh(division)
        rows = [self.weights] if self.weights.dim() == 1 else list(self.weights)
        stats, said = {}, []
        for k, row in enumerate(rows):      # one row: every model's; several: row k is what model k trains on
            prefix = f"model{k + 1}_trains_on/" if len(rows) > 1 else ""
            quality = division_quality(row, self.data.is_clean)
            stats.update({prefix + name: v for name, v in quality.items()})
            said.append(f"{prefix.replace('_', ' ').replace('/', ': ')}kept {quality['kept']} of "
                        f"{quality['total']} pairs" + ("" if self.data.is_clean is None else
                                                        f", noise precision {quality['noise_precision']:.1f}% "
                                                        f"recall {quality['noise_recall']:.1f}%"))
        note, extra = self.division_notes(division)
        stats.update(extra)
        stats["time"] = time.time() - start
        log.info("epoch %d division: %s%s (%.1fs)", epoch, note, "; ".join(said), stats["time"])
        return {f"division/{k}": v for k, v in stats.items()}

    # ---------------------------------------------------------------- training
    def train_mode(self) -> bool:
        # published RDE / ICL left the models in eval mode after the division pass (see docs/METHOD.md §4.7)
        return not (self.cfg.published_eval_mode and self.cfg.division)

    def evaluates(self, epoch: int) -> bool:
        """Every eval_period epochs and the last."""
        return epoch % self.cfg.eval_period == 0 or epoch == self.last_epoch

    def train_step(self, batch: dict, weights: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch for every model (twins: each on its own augmented view) and its parts.

        `weights` are the division's per-sample weights of the global batch (all processes, rank order): [B] for
        every model, or [models, B] with row k for model k.
        """
        rda_factor = rda_weight(epoch) if "rda_ids" in batch else 0.0
        total, parts = 0.0, {}
        for k, (model, runner) in enumerate(zip(self.models, self.runners)):
            prefix = model_prefix(k, len(self.models))
            with autocast(self.device, self.dtype):
                per_sample, rda = runner(self.view_images(model, batch, k), batch["caption_ids"][:, k], batch["pid"],
                                         batch["rda_ids"][:, k] if rda_factor else None)
            own = weights[k] if weights.dim() == 2 else weights
            loss, model_parts = weighted_loss(model, per_sample, own, self.cfg.loss_weights, rda, rda_factor)
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
            model.train(self.train_mode())
        loader = self.data.train_loader
        self.data.sampler.set_epoch(epoch)  # the data order depends on (seed, epoch) only: resumable
        sums, steps = {}, 0
        if self.partial is not None:        # resumed mid-epoch: the epoch's remaining batches, as they would have come
            sums = {k: v.to(self.device) for k, v in self.partial["sums"].items()}
            steps = self.partial["steps"]
            self.data.sampler.skip = steps * loader.batch_size
            self.partial = None
        weights_on_device = self.weights.to(self.device)
        finite = FiniteCheck(self.device, epoch, len(loader))   # raises NonFiniteLoss, before anything is saved
        bar = progress(loader, dist.is_main(), desc=f"epoch {epoch}/{self.last_epoch}", leave=False)
        for batch in bar:
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with self.stop_if_a_process_ends(epoch, steps, len(loader), sums):
                loss, parts = self.train_step(batch, weights_on_device[..., dist.gather_batch(batch["index"])], epoch)
                self.optimizer_step(loss)
            steps += 1
            for hook in self.hooks:
                loss, parts = hook.after_step(self, epoch, steps, len(loader), loss, parts)
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
            finite.push(steps, loss, parts)
            if steps % self.cfg.log_period == 0:  # the only host sync of the loop
                bar.set_postfix(loss=f"{float(loss):.3f}")
            if self.stop.requested:
                finite.flush()
                raise Interrupted(self.stop.name, epoch, steps, len(loader), sums)
        finite.flush()
        with self.stop_if_a_process_ends(epoch, steps, len(loader), sums):
            for model in self.models:
                dist.broadcast_buffers(model)
        return {f"loss/{k}": float(v) / max(steps, 1) for k, v in sums.items()}

    @contextlib.contextmanager
    def stop_if_a_process_ends(self, epoch: int, steps: int, steps_in_epoch: int, sums: dict):
        """Under torchrun, a collective inside fails when another process of the job has ended (killed, crashed):
        stop there (Interrupted) with what every process finished.  All processes step together, so this one's
        weights are those after step `steps`; the buffers (BatchNorm's statistics, which a forward moves before
        its collective fails) are put back as they were."""
        buffers = [b for model in self.models for b in model.buffers()] if dist.world_size() > 1 else []
        kept = [b.clone() for b in buffers]
        try:
            yield
        except RuntimeError as e:
            stop = self.ended_process(e, epoch, steps, steps_in_epoch, sums)
            for b, before in zip(buffers, kept):
                b.copy_(before)
            raise stop from None

    def ended_process(self, error: RuntimeError, epoch: int, steps: int | None = None,
                      steps_in_epoch: int | None = None, sums=None) -> Interrupted:
        """The stop that names the processes of the job that have ended, if any (the error's traceback goes to the
        log file only); any other error is raised as it is."""
        ended = dist.ended_ranks(wait=2.0) if dist.world_size() > 1 else {}
        if not ended:
            raise error
        log.debug("the error that followed the end of rank(s) %s:", sorted(ended), exc_info=error)
        return Interrupted(self.stop.name, epoch, steps, steps_in_epoch, sums, ended=ended)

    # ---------------------------------------------------------------- loop
    def run(self) -> dict:
        """Train from start_epoch to last_epoch; returns the last evaluation's metrics per row.  A SIGTERM / SIGINT
        ends the epoch's training at the next step with a checkpoint (Interrupted); a non-finite loss stops at once
        (NonFiniteLoss)."""
        for hook in self.hooks:
            hook.before_run(self)
        last_record = self.resumed_record
        with self.stop:
            for epoch in range(self.start_epoch, self.last_epoch + 1):
                if self.stop.requested:         # arrived during the last epoch's evaluation or checkpoint
                    self.stopped(Interrupted(self.stop.name, epoch - 1, None, None, None))
                try:
                    last_record = self.run_epoch(epoch, last_record)
                except RuntimeError as e:       # in the division, the evaluation or a barrier (torchrun)
                    self.stopped(self.ended_process(e, epoch - 1))
        for hook in self.hooks:
            hook.after_run(self)
        return self.results

    def run_epoch(self, epoch: int, last_record: dict | None) -> dict:
        """Division, training, evaluation and checkpoints of one epoch; returns its metrics record."""
        start = time.time()
        if self.partial is not None:    # the division of this epoch was made before the stop
            record = dict(self.partial["record"])
            self.weights = self.partial["weights"]
        else:
            record = {"epoch": epoch, "lr": self.backbone_lr()}
            if self.cfg.division:
                record.update(self.divide(epoch))
        try:
            record.update(self.train_epoch(epoch))
        except Interrupted as stop:
            stop.state = self.state_dict(epoch - 1, last_record, partial={
                "epoch": epoch, "steps": stop.steps, "sums": stop.sums, "weights": self.weights, "record": record})
            self.stopped(stop)
        for scheduler in self.schedulers:
            scheduler.step()
        record["train_time"] = time.time() - start
        for hook in self.hooks:
            hook.after_epoch(self, epoch, record)
        dist.barrier()
        return record

    def stopped(self, stop: Interrupted) -> None:
        """The hooks see the stop (Checkpoints writes stop.state, when there is one), then it ends the run."""
        for hook in self.hooks:
            hook.interrupted(self, stop)
        raise stop

    def backbone_lr(self) -> float:
        groups = self.optimizers[0].param_groups
        return next((g["lr"] for g in groups if g["initial_lr"] == self.cfg.lr), groups[0]["lr"])

    # ---------------------------------------------------------------- state
    def state_dict(self, epoch: int, record: dict | None = None, partial: dict | None = None) -> dict:
        """The weights (best.pth) or, with the epoch's metrics record, all --resume needs (last.pth).  `partial`:
        the next epoch stopped by a signal mid-way (its step, loss sums, division weights and record so far)."""
        state = {"epoch": epoch, "models": [m.state_dict() for m in self.models], "results": self.results,
                 "config": json.loads(json.dumps(dict(self.cfg))), "best": self.best,   # plain data: weights_only
                 "clip_config": asdict(self.models[0].backbone.config)}  # test.py rebuilds without the CLIP file
        if partial is not None:
            state["partial"] = partial
        if record is not None or partial is not None:
            state.update(optimizers=[o.state_dict() for o in self.optimizers],
                         schedulers=[s.state_dict() for s in self.schedulers],
                         scaler=self.scaler.state_dict(), rng=rng_state(), record=record)
        return state

    def resume(self, ckpt: dict, path: str) -> None:
        load_model_states(self.models, ckpt["models"], path)
        for opt, s in zip(self.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, ckpt["schedulers"]):
            sched.load_state_dict(s)
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.start_epoch, self.best = ckpt["epoch"] + 1, ckpt["best"]
        self.results = ckpt.get("results", {})
        self.resumed_record = ckpt.get("record")
        self.partial = ckpt.get("partial")
        if self.partial is not None:
            log.info("continuing epoch %d after its step %d", self.partial["epoch"], self.partial["steps"])
        self.last_saved = f"{path} (epoch {ckpt['epoch']}" + (
            f", and epoch {self.partial['epoch']} up to step {self.partial['steps']})" if self.partial else ")")
        log.info("resumed from %s at epoch %d (best R1 so far %.2f)", path, self.start_epoch, self.best_r1)
