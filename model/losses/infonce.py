"""InfoNCE (CLIP's contrastive loss): the paired caption / image is the only positive."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss
from .common import LOGIT_SCALE, scaled_logits


@register_loss("InfoNCE")
class InfoNCELoss(nn.Module):
    reduction = "mean"

    options = {"logit_scale": LOGIT_SCALE}

    def __init__(self, dim: int, num_classes: int, logit_scale: float):
        super().__init__()
        self.scale = logit_scale

    def forward(self, image_feats, text_feats, pids):
        logits, _ = scaled_logits(image_feats, text_feats, pids, self.scale)
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target, reduction="none")
                + F.cross_entropy(logits.t(), target, reduction="none")) / 2
