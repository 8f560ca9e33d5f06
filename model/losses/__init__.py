"""Training losses, one file each (every module of this folder is imported and registers its loss), chosen by
name with ``--loss_names`` (RDE's convention: 'TAL+SDM', and labels such as RDE's run tag
'TAL+sr0.3_tau0.015_margin0.1_n0.2': LABEL_RULE below).

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

from utils.registry import Registry, accepts, closest, edit_distance, import_folder, option_defaults

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


def register_loss(name: str):
    # a loss name is an identifier, so that a part holding . = - (a label, below) can never be one
    if not name.isidentifier():
        raise ValueError(f"loss name {name!r}: use letters, digits and _ (a --loss_names part holding . = - is a "
                         "label)")
    return LOSSES.register(name)


# Parts of --loss_names that are not losses.  RDE's scripts append a run tag (TAL+sr0.3_tau0.015_margin0.1_n0.2),
# ICL writes TAL+pre.  A label is written so that it cannot be a loss: it holds one of . = - (no loss name does)
# or is one of FLAGS, and it is not within a typo of a registered loss (TAL+SDM. is refused).  So a mistyped or
# unregistered loss (SDMM, InfoNCE2, Smooth_InfoNCE) is an error, never a label that trains nothing.
FLAGS = {"pre": "ICL: CLIP initialised from a ReID-pretrained checkpoint, given with --pretrain_path"}
LABEL_MARK = re.compile(r"[.=-]")
LABEL_RULE = ("a label holds one of . = - (RDE's sr0.3_tau0.015_margin0.1_n0.2, my-run) or is one of: "
              + ", ".join(FLAGS))
# what versions before this rule also read as a label: a digit or _ sufficed (free_text, InfoNCE2); run folders
# written then are read with those parts dropped (configs/reading.py upgrade_saved)
OLD_LABEL_MARK = re.compile(r"[0-9_.=-]")


def typo_of(part: str) -> str | None:
    """The registered loss `part` is a typo of, if any: case ignored, within 1 edit (2 for names of 6 letters or
    more)."""
    distance = {name: edit_distance(part.lower(), name.lower()) for name in LOSSES}
    name = min(distance, key=distance.get, default=None)
    return name if name is not None and distance[name] <= (2 if len(name) >= 6 else 1) else None


def part_problem(part: str, loss_names: str) -> str | None:
    """What is wrong with one '+' part of `loss_names` (None: a registered loss or a label)."""
    if part in LOSSES:
        return None
    if not part:
        return f"{loss_names!r} has an empty part: '+' separates losses (TAL+SDM)"
    if part in FLAGS:
        return None
    typo = typo_of(part)
    if not LABEL_MARK.search(part):
        suggestion = typo or closest(part, LOSSES)
        return (f"{part!r} in {loss_names!r} is neither a registered loss"
                f"{f' (did you mean {suggestion}?)' if suggestion else ''} nor a label; losses: {', '.join(LOSSES)} "
                f"(model/losses/); {LABEL_RULE}")
    if typo:
        return (f"{part!r} in {loss_names!r} is written as a label but is a typo of the loss {typo}: did you mean "
                f"{typo}? (a label must not look like a loss)")
    return None


def parse_loss_names(loss_names: str) -> list[str]:
    """'TAL+sr0.3_tau0.015' -> ['TAL']: the registered losses named; labels (LABEL_RULE) are skipped; anything
    else raises ValueError naming the part, the loss it is a typo of, the registered losses and the label rule."""
    for part in loss_names.split("+"):
        problem = part_problem(part, loss_names)
        if problem:
            raise ValueError(problem)
    names = [part for part in loss_names.split("+") if part in LOSSES]
    if not names:
        raise ValueError(f"{loss_names!r} names no loss; losses: {', '.join(LOSSES)} (model/losses/)")
    if len(set(names)) != len(names):
        raise ValueError(f"{loss_names!r} names a loss twice")
    return names


def drop_old_labels(loss_names: str) -> tuple[str, list[str]]:
    """(loss_names without the parts versions before LABEL_RULE read as labels and it refuses, those parts): how a
    run folder written then is read.  Those parts were labels there: they trained nothing."""
    parts = loss_names.split("+")
    dropped = [p for p in parts if p and OLD_LABEL_MARK.search(p) and part_problem(p, loss_names)]
    return "+".join(p for p in parts if p not in dropped), dropped


def build_loss(name: str, cfg, dim: int, num_classes: int) -> nn.Module:
    return LOSSES.build(name, dim=dim, num_classes=num_classes, cfg=cfg)


import_folder(__name__, __path__)      # every file here: a new loss is one new file
