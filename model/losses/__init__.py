"""Training losses, one file each, chosen by name with ``--loss_names`` (RDE's convention: 'TAL+free text').

A loss is a module called as ``loss(image_feats, text_feats, pids) -> [B]`` per-sample values, so that
the robust-training weights (0/1 consensus or ALR soft weights) can multiply them; ``reduction`` says how
the weighted values become one number ('sum' as RDE, 'mean' as IRRA).  Features arrive as the heads
made them (not normalised): similarity losses normalise, the ID classifier sees the raw vectors.
"""
from __future__ import annotations

import torch.nn as nn

LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str):
    def add(cls):
        LOSSES[name] = cls
        return cls
    return add


def parse_loss_names(loss_names: str) -> list[str]:
    """'TAL+sr0.3_tau0.015' -> ['TAL']: registered names are used, anything else is a free-text label."""
    names = [part for part in loss_names.split("+") if part in LOSSES]
    if not names:
        raise ValueError(f"--loss_names {loss_names!r} names no known loss; known: {sorted(LOSSES)}")
    return names


def build_loss(name: str, cfg, dim: int, num_classes: int) -> nn.Module:
    return LOSSES[name](cfg, dim=dim, num_classes=num_classes)


from . import id_loss, infonce, sdm, tal, trl  # noqa: E402,F401  (registration)
