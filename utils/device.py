"""Device and numeric precision, decided once from the config."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = plain fp32).  Weights stay fp32 either way (mixed precision)."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise SystemExit(f"--precision {name!r}: choose one of {sorted(PRECISIONS)} or auto")
    return PRECISIONS[name]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
