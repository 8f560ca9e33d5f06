"""Adam with the published learning-rate rules (docs/METHOD.md §5.1), in a handful of parameter groups.

The published `build_optimizer` (IRRA, RDE, ICL) walks the parameters by name, one group per tensor:
  1. every parameter: lr, weight_decay;
  2. a name that *contains* "bias" (attention in_proj_bias included): lr x bias_lr_factor, no weight decay;
  3. IRRA-style new modules (ID classifier, MLM / cross-modal heads): lr x lr_factor, set after rule 2, so
     their biases too; ICL's code (only ICL's: icl_text_position_lr) also gives the text position embedding
     lr x lr_factor when text_length != 77;
  4. RDE's heads (TSE, fused): head_lr, set last, so their biases train at head_lr too.
Each later rule overrides the learning rate only; the weight decay stays as rule 2 left it, except that
3RTPR's rebuild gives its heads' groups no weight decay at all (`head_weight_decay: false`: Adam's default, 0).
Parameters that end up with the same (lr, weight_decay) share a group, so the fused / foreach Adam kernels update
many tensors at once.
"""
from __future__ import annotations

import torch


def parameter_settings(model, cfg) -> dict[str, tuple[float, float]]:
    """{parameter name: (lr, weight_decay)} by the published rules above."""
    heads = {id(p) for m in model.new_modules() for p in m.parameters()}
    lr_factor = {id(p) for m in model.irra_modules() for p in m.parameters()}
    if cfg.icl_text_position_lr and cfg.text_length != 77:
        lr_factor.add(id(model.backbone.positional_embedding))
    settings = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr, decay = cfg.lr, cfg.weight_decay
        if "bias" in name:
            lr, decay = cfg.lr * cfg.bias_lr_factor, 0.0
        if id(p) in lr_factor:
            lr = cfg.lr * cfg.lr_factor
        if id(p) in heads:
            lr = cfg.head_lr
            decay = decay if cfg.head_weight_decay else 0.0
        settings[name] = (lr, decay)
    return settings


def param_groups(model, cfg) -> list[dict]:
    params = dict(model.named_parameters())
    groups: dict[tuple[float, float], dict] = {}
    for name, (lr, decay) in parameter_settings(model, cfg).items():
        group = groups.setdefault((lr, decay), {"params": [], "param_names": [], "lr": lr, "weight_decay": decay})
        group["params"].append(params[name])
        group["param_names"].append(name)
    return list(groups.values())


OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}   # --optimizer's choices (configs/table.py)


def build_optimizer(model, cfg, device: torch.device) -> torch.optim.Optimizer:
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg), betas=tuple(cfg.betas), eps=cfg.eps, **fast)
