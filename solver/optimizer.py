"""Adam with the published learning rates (METHOD.md section 5), in four parameter groups.

The published code makes one group per tensor; four groups let the fused / foreach Adam kernels update
all tensors of a group at once.
"""
from __future__ import annotations

import torch


def param_groups(model, cfg) -> list[dict]:
    new = {id(p) for m in model.new_modules() for p in m.parameters()}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_new = id(p) in new
        is_bias = name.endswith(".bias")
        lr = cfg.head_lr if is_new else cfg.lr
        key = ("head" if is_new else "clip", "bias" if is_bias else "weight")
        if key not in groups:
            groups[key] = {"params": [], "name": "/".join(key),
                           "lr": lr * (cfg.bias_lr_factor if is_bias else 1.0),
                           "weight_decay": 0.0 if is_bias else cfg.weight_decay}
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(model, cfg, device: torch.device) -> torch.optim.Optimizer:
    kinds = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
    if cfg.optimizer not in kinds:
        raise ValueError(f"optimizer {cfg.optimizer!r}: choose one of {sorted(kinds)}")
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return kinds[cfg.optimizer](param_groups(model, cfg), betas=tuple(cfg.betas), eps=cfg.eps, **fast)
