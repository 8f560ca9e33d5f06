"""Checkpoints written atomically (a killed run never leaves a half-written last.pth) and read with clear errors."""
from __future__ import annotations

import os

import errno
import json
import shutil

import torch

from .files import atomic_open
from .faults import crash_point, injected
from .run_folder import checkpoints
from .safe_load import DamagedFileError, FileRefused, UnsafeFileError
from .safe_load import load as safe_load


class DiskFullError(OSError):
    """A checkpoint that did not fit: the files it would have replaced are untouched; the message says where and
    how much space it needs."""


def atomic_save(obj, path: str, previous: str | None = None, crash_name: str = "") -> None:
    """torch.save, visible under `path` only once complete.  With `previous`, the file it replaces is kept under
    that name, so a newest checkpoint damaged later (a full disk, a copy cut short) has a fallback.  A full disk
    raises DiskFullError and leaves `path` (and `previous`) as they were."""
    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())       # ENOSPC of a delayed write surfaces here, before the old file is moved
            if injected("REID_DISK_FULL_AT", crash_name):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)
            crash_point(crash_name)
            if previous and os.path.isfile(path):
                os.replace(path, previous)
    except (OSError, RuntimeError) as e:
        if not _out_of_space(e):
            raise
        folder = os.path.dirname(os.path.abspath(path))
        need, free = _saved_size(obj), shutil.disk_usage(folder).free
        kept = f"{path} is still the previous one" if os.path.isfile(path) else f"nothing was written to {path}"
        more = f"Free at least {_mib(need - free + (1 << 20))} there" if need >= free else "Free some space there"
        raise DiskFullError(errno.ENOSPC, f"no space left to write {os.path.basename(path)} in {folder}: it needs "
                            f"{_mib(need)} and {_mib(free)} are free there; {kept} (intact). {more}") from None


class _Counter:
    """A file that only counts what is written to it."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _saved_size(obj) -> int:
    """The exact size of torch.save(obj), by saving it again into a counter (only after a failed write)."""
    counter = _Counter()
    torch.save(obj, counter)
    return counter.size


def _out_of_space(e: BaseException | None) -> bool:
    """torch.save reports a failed write as a RuntimeError of its zip writer, with the OSError as its context."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def load_latest(run_dir: str, log) -> tuple[dict | None, str | None]:
    """The newest readable checkpoint of a run folder (last.pth, else the one before it), or (None, None) when
    the run has none yet; a damaged one is named in the log and skipped."""
    for path in checkpoints(run_dir):
        try:
            return load_checkpoint(path), path
        except UnsafeFileError:
            raise                      # not a damaged file: the user decides, the run does not quietly go back
        except FileRefused as e:
            log.warning("%s; falling back to the previous checkpoint", e)
    return None, None


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by main.py, read without running code from it (utils/safe_load.py)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = safe_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or "models" not in ckpt:
        raise DamagedFileError(f"{path} is not a checkpoint written by main.py (no 'models' entry)")
    if "config" in ckpt:   # checkpoints written before the config was plain data hold it as (Easy/Ordered)Dicts
        ckpt["config"] = json.loads(json.dumps(ckpt["config"]))
    return ckpt


def load_model_states(models, states, path: str) -> None:
    """Load each model's weights strictly; missing or unexpected keys are named in the error."""
    if len(states) != len(models):
        raise ValueError(f"{path} holds {len(states)} model(s) but the config builds {len(models)} "
                         "(a twin run and a single run are not interchangeable)")
    for k, (model, state) in enumerate(zip(models, states), 1):
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{path}, model {k}: weights do not match the configured model; "
                             f"missing {result.missing_keys[:8]} ({len(result.missing_keys)}), "
                             f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})")
