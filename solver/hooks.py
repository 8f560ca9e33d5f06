"""What happens around the training loop, one hook each: evaluation, checkpoints, the metrics log, and the tests'
faults.

A hook sees the engine before the first epoch, after each training step (its loss and parts, which it may
replace), after each epoch (with that epoch's metrics record, which it may add to) and after the last.  The engine
calls them in order: evaluation fills the record and finds the best epoch, checkpoints save it, the log writes it.
"""
from __future__ import annotations

import glob
import logging
import math
import os

import torch

from utils import distributed as dist
from utils.checkpoint import atomic_save
from utils.faults import crash_point, injected, wait_point
from utils.logger import append_jsonl
from utils.metrics import metrics_table
from utils.run_folder import LAST, METRICS, PREVIOUS, settle_metrics

log = logging.getLogger("reid")


class Hook:
    def before_run(self, engine) -> None:
        pass

    def after_step(self, engine, epoch: int, step: int, steps_in_epoch: int, loss, parts: dict) -> tuple:
        """After training step `step` (from 1) of `steps_in_epoch`: its (loss, parts), as the run goes on with
        them (the finite check, the loss sums)."""
        return loss, parts

    def after_epoch(self, engine, epoch: int, record: dict) -> None:
        pass

    def after_run(self, engine) -> None:
        pass

    def interrupted(self, engine, stop) -> None:
        """A stop signal ended the run at a step boundary (solver.faults.Interrupted, its checkpoint in stop.state)."""


class Evaluation(Hook):
    """At the epochs the engine evaluates (every eval_period and the last): the table, the headline row's metrics
    in the record, and engine.best when its R1 beats the best so far."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def after_epoch(self, engine, epoch, record):
        if not engine.evaluates(epoch):
            return
        results, table = self.evaluator.evaluate(engine.models, title=f"epoch {epoch}")
        log.info("\n%s", table)
        headline = self.evaluator.headline(results)
        record.update(results[headline])
        record["eval_row"] = headline
        engine.results = results
        if results[headline]["R1"] > engine.best_r1:
            engine.best = {"epoch": epoch, "results": results}

    def after_run(self, engine):
        if engine.best:
            log.info("\n%s", metrics_table(engine.best["results"],
                                           f"{engine.cfg.dataset_name}: best.pth, epoch {engine.best['epoch']}"))
        log.info("best R1 %.2f; checkpoints in %s", engine.best_r1, engine.run_dir)


class Checkpoints(Hook):
    """best.pth (weights) at a new best epoch, and last.pth after every epoch: all --resume needs to continue
    the same schedule; the previous last.pth is kept as last.prev.pth until the new one is whole."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def after_epoch(self, engine, epoch, record):
        if dist.is_main():
            if engine.best.get("epoch") == epoch:
                self.save(engine.state_dict(epoch), "best.pth", epoch)
            self.save(engine.state_dict(epoch, record), LAST, epoch)
        engine.last_saved = f"{os.path.join(self.run_dir, LAST)} (epoch {epoch})"   # every process can name it

    def interrupted(self, engine, stop):
        if dist.is_main() and stop.state is not None:
            self.save(stop.state, LAST, stop.epoch)
            engine.last_saved = os.path.join(self.run_dir, LAST)

    def save(self, state: dict, name: str, epoch: int) -> None:
        atomic_save(state, os.path.join(self.run_dir, name), crash_name=f"epoch{epoch}:{name}",
                    previous=os.path.join(self.run_dir, PREVIOUS) if name == LAST else None)


class MetricsLog(Hook):
    """Each epoch's record: a line in the log, a row of metrics.jsonl and points in one TensorBoard events file.
    A resumed run has every finished epoch once: the rows are settled against the checkpoint and the events file
    rebuilt from them (TensorBoard cannot take back the points of an epoch that a kill cut short)."""

    def __init__(self, run_dir: str):
        self.run_dir, self.metrics_file, self.writer = run_dir, os.path.join(run_dir, METRICS), None

    def before_run(self, engine):
        if dist.is_main():
            rows = settle_metrics(self.metrics_file, engine.start_epoch - 1, engine.resumed_record)
            self.writer = self.tensorboard(rows)

    def after_epoch(self, engine, epoch, record):
        log.info("epoch %d: %s", epoch, ", ".join(
            f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float) and math.isfinite(v)))
        crash_point(f"epoch{epoch}:logging")
        if dist.is_main():
            append_jsonl(self.metrics_file, record)
            self.add_scalars(self.writer, record)
            self.writer.flush()

    def after_run(self, engine):
        if self.writer is not None:
            self.writer.close()

    def interrupted(self, engine, stop):
        self.after_run(engine)

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


class FaultInjection(Hook):
    """The tests' faults that reach the training loop (utils/faults.py): REID_NAN_AT makes a step's loss NaN, as
    its weights; REID_CRASH_AT and REID_WAIT_AT act after half an epoch's steps (epochE:mid).  solver/build.py adds
    it only when one of those variables is set."""

    def after_step(self, engine, epoch, step, steps_in_epoch, loss, parts):
        if injected("REID_NAN_AT", f"epoch{epoch}:step{step}"):
            nan = torch.tensor(float("nan"), device=loss.device)
            with torch.no_grad():
                for model in engine.models:
                    for p in model.parameters():
                        p.mul_(nan)
            first = next(iter(parts))
            loss, parts = loss * nan, {**parts, first: parts[first] * nan}
        if step == steps_in_epoch // 2:
            crash_point(f"epoch{epoch}:mid")
            wait_point(f"epoch{epoch}:mid", lambda: engine.stop.requested)
        return loss, parts
