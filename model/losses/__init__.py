"""Training losses, one file each, chosen by name with ``--loss_names`` (RDE's convention: 'TAL+free text').

A loss is a module called as ``loss(image_feats, text_feats, pids) -> [B]`` per-sample values, so that
the robust-training weights (0/1 consensus or ALR soft weights) can multiply them; ``reduction`` says how
the weighted values become one number ('sum' as RDE, 'mean' as IRRA).  Features arrive as the heads
made them (not normalised): similarity losses normalise, the ID classifier sees the raw vectors.  It is built
as ``cls(dim=..., num_classes=..., **its options)``: a loss declares the options it reads (``options = {"tau":
Option(...)}``; shared ones in common.py) and gets their values as arguments.  LOSSES checks all of this when a
loss registers.
"""
from __future__ import annotations

import re

import torch.nn as nn

from utils.registry import Registry, accepts, did_you_mean, option_defaults

REDUCTIONS = ("sum", "mean")


def _loss_problems(cls) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return ["a loss is an nn.Module subclass"]
    problems = []
    if getattr(cls, "reduction", None) not in REDUCTIONS:
        problems.append(f"declare reduction = 'sum' (RDE: summed over the batch) or 'mean' (IRRA) as a class "
                        f"attribute (found {getattr(cls, 'reduction', None)!r})")
    if cls.forward is nn.Module.forward or not accepts(cls.forward, None, "image_feats", "text_feats", "pids"):
        problems.append("forward(self, image_feats, text_feats, pids) must return per-sample values [B]")
    if not accepts(cls.__init__, None, dim=1, num_classes=1, **option_defaults(cls)):
        problems.append("__init__(self, dim, num_classes, <its declared options>) is how losses are built")
    return problems


LOSSES = Registry("loss", "model/losses/", _loss_problems)
register_loss = LOSSES.register

# Parts of --loss_names that are not losses.  RDE's scripts append run labels (TAL+sr0.3_tau0.015_margin0.1_n0.2),
# ICL writes TAL+pre.  So that a mistyped loss (SDMM, tal) is an error and not a label, a label holds a character
# no loss name has (a digit or one of _ . - =) or is one of FLAGS.
FLAGS = {"pre": "ICL: CLIP initialised from a ReID-pretrained checkpoint, given with --pretrain_path"}
LABEL_MARK = re.compile(r"[0-9_.=-]")
LABEL_RULE = ("a label holds a digit or one of _ . - = (RDE's sr0.3_tau0.015, free_text) or is one of: "
              + ", ".join(FLAGS))


def parse_loss_names(loss_names: str) -> list[str]:
    """'TAL+sr0.3_tau0.015' -> ['TAL']: the registered losses named; labels (LABEL_RULE) are skipped; anything
    else raises ValueError naming the part, the registered losses and the label rule."""
    names = []
    for part in loss_names.split("+"):
        if part in LOSSES:
            names.append(part)
        elif not part:
            raise ValueError(f"{loss_names!r} has an empty part: '+' separates losses (TAL+SDM)")
        elif part not in FLAGS and not LABEL_MARK.search(part):
            raise ValueError(f"{part!r} in {loss_names!r} is neither a registered loss{did_you_mean(part, LOSSES)} "
                             f"nor a label; losses: {', '.join(LOSSES)} (model/losses/); {LABEL_RULE}")
    if not names:
        raise ValueError(f"{loss_names!r} names no loss; losses: {', '.join(LOSSES)} (model/losses/)")
    if len(set(names)) != len(names):
        raise ValueError(f"{loss_names!r} names a loss twice")
    return names


def build_loss(name: str, cfg, dim: int, num_classes: int) -> nn.Module:
    return LOSSES.build(name, dim=dim, num_classes=num_classes, cfg=cfg)


from . import cmpm, id_loss, infonce, sdm, tal, trl  # noqa: E402,F401  (registration)
