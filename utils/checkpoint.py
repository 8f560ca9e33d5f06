"""Checkpoints written atomically (a killed run never leaves a half-written last.pth) and read with clear errors."""
from __future__ import annotations

import os

import torch

from .files import atomic_open
from .run_folder import checkpoints, crash_point


def atomic_save(obj, path: str, previous: str | None = None, crash_name: str = "") -> None:
    """torch.save, visible under `path` only once complete.  With `previous`, the file it replaces is kept under
    that name, so a newest checkpoint damaged later (a full disk, a copy cut short) has a fallback."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        crash_point(crash_name)
        if previous and os.path.isfile(path):
            os.replace(path, previous)


def load_latest(run_dir: str, log) -> tuple[dict | None, str | None]:
    """The newest readable checkpoint of a run folder (last.pth, else the one before it), or (None, None) when
    the run has none yet; a damaged one is named in the log and skipped."""
    for path in checkpoints(run_dir):
        try:
            return load_checkpoint(path), path
        except ValueError as e:
            log.warning("%s; falling back to the previous checkpoint", e)
    return None, None


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "models" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by main.py (no 'models' entry)")
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
