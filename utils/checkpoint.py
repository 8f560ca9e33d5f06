"""Checkpoints written atomically (a killed run never leaves a half-written last.pth) and read with clear errors."""
from __future__ import annotations

import os

import torch

from .files import atomic_open


def atomic_save(obj, path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


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
