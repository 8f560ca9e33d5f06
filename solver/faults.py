"""What stops a training early and how it is told: a stop signal (Interrupted, after a checkpoint that --resume
continues) and a loss that is no longer finite (NonFiniteLoss, before anything of it is saved)."""
from __future__ import annotations

import math
import signal

import torch

from utils import distributed as dist


class Interrupted(KeyboardInterrupt):
    """A stop at a step boundary: SIGTERM / SIGINT, or under torchrun another process of the job that ended
    (`ended`: {rank: pid}; its collectives can no longer complete).  The epoch stopped after `steps` of its
    `steps_in_epoch` steps (None: between epochs); `sums` are its loss sums so far (kept on the CPU).  A
    KeyboardInterrupt, so that whoever runs a training in its own process (pytest, a loop over seeds) stops as on
    Ctrl-C once the checkpoint is written, instead of going on to the next; main.py's command line turns it into
    its exit status (exit_status)."""

    def __init__(self, signal_name: str, epoch: int, steps: int | None, steps_in_epoch: int | None, sums,
                 ended: dict[int, int] | None = None):
        super().__init__(signal_name)
        self.signal_name, self.epoch, self.steps, self.steps_in_epoch = signal_name, epoch, steps, steps_in_epoch
        self.sums = None if sums is None else {k: v.detach().cpu() for k, v in sums.items()}
        self.ended = ended or {}
        self.state = None      # the checkpoint written for it (engine.run fills it in)

    @property
    def reports_here(self) -> bool:
        """One process says it: rank 0, or the first one left when rank 0 has ended."""
        return dist.rank() == min(set(range(dist.world_size())) - set(self.ended))

    @property
    def exit_status(self) -> int:
        """1 when another process of the job ended; else 128 + the signal's number, what a shell reports for a
        process that the signal ended."""
        return 1 if self.ended else 128 + signal.Signals[self.signal_name]

    def message(self, checkpoint: str | None, run_dir: str) -> str:
        where = (f"after epoch {self.epoch}" if self.steps is None else
                 f"at epoch {self.epoch}, step {self.steps} of {self.steps_in_epoch}")
        saved = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint yet"
        cause = f"stopped by {self.signal_name}" if not self.ended else "stopped: " + ", ".join(
            f"rank {r} of {dist.world_size()} (pid {pid})" for r, pid in sorted(self.ended.items())) + (
            " died" if len(self.ended) == 1 else " have died")
        return f"{cause} {where}: {saved}; continue with: {dist.resume_command(run_dir)}"


class NonFiniteLoss(Exception):
    def __init__(self, epoch: int, step: int, steps_in_epoch: int, loss: float, parts: dict[str, float]):
        super().__init__(f"epoch {epoch}, step {step}: loss {loss}")
        self.epoch, self.step, self.steps_in_epoch, self.loss, self.parts = epoch, step, steps_in_epoch, loss, parts

    def message(self, last_good: str | None, run_dir: str) -> str:
        bad = {k: v for k, v in self.parts.items() if not math.isfinite(v)} or self.parts
        kept = (f"the last good checkpoint is {last_good} (best.pth and last.pth hold finite weights)" if last_good
                else "no checkpoint was written before it")
        return (f"the loss is {self.loss} at epoch {self.epoch}, step {self.step} of {self.steps_in_epoch} ("
                + ", ".join(f"{k} {v}" for k, v in bad.items()) + f"); training stopped there and saved nothing of "
                f"it: {kept}. Lower --lr, or train with --precision bf16 / fp32 instead of fp16, in a new run "
                f"(--resume {run_dir} would keep the run's options)")


class FiniteCheck:
    """Each step's loss must be finite: NonFiniteLoss otherwise, raised before anything of that step is saved (so
    best.pth and last.pth keep the last finite state).  Read without stalling a GPU: on CUDA, step k's flag is
    copied to pinned memory as step k is queued and read at step k + 1 (long done by then) or at flush(); on the
    CPU at once."""

    def __init__(self, device: torch.device, epoch: int, steps_in_epoch: int):
        self.lagged = device.type == "cuda"
        self.epoch, self.steps_in_epoch = epoch, steps_in_epoch
        self.pending = None

    def push(self, step: int, loss: torch.Tensor, parts: dict) -> None:
        flag = torch.isfinite(loss.detach()).all()
        if not self.lagged:
            return self._check(step, flag, loss, parts)
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self.pending = self.pending, (step, host, event, loss, parts)
        self._read(previous)

    def flush(self) -> None:
        previous, self.pending = self.pending, None
        self._read(previous)

    def _read(self, entry) -> None:
        if entry is not None:
            step, host, event, loss, parts = entry
            event.synchronize()
            self._check(step, host, loss, parts)

    def _check(self, step: int, flag: torch.Tensor, loss: torch.Tensor, parts: dict) -> None:
        if not bool(flag):
            raise NonFiniteLoss(self.epoch, step, self.steps_in_epoch, float(loss.detach()),
                                {k: float(v.detach()) for k, v in parts.items()})
