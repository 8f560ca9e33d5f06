"""Linear warm-up from warmup_factor x lr, then cosine to target_lr; stepped once per epoch (IRRA / RDE)."""
from __future__ import annotations

import math

import torch


def lr_factor(epoch: int, cfg, base_lr: float) -> float:
    """Multiplier of a group's base lr during epoch `epoch` (0-based: epochs already completed)."""
    if epoch < cfg.warmup_epochs:
        alpha = epoch / cfg.warmup_epochs
        return cfg.warmup_factor * (1 - alpha) + alpha
    span = max(cfg.num_epoch - cfg.warmup_epochs, 1)
    cos = 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    target = cfg.target_lr / base_lr if base_lr else 0.0
    return target + (1 - target) * cos


def build_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    lambdas = [lambda e, base=g["lr"]: lr_factor(e, cfg, base) for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
