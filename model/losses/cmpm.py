"""CMPM, cross-modal projection matching (Zhang & Lu, ECCV 2018): KL between the softmax of each feature's
projection onto the other modality's normalised features and the normalised positives, both ways."""
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss
from .common import matching_kl


def _projection(feats, others):
    return feats.float() @ F.normalize(others.float(), dim=-1).t()     # [B, B], unnormalised on one side


@register_loss("CMPM")
class CrossModalProjectionMatching(nn.Module):
    reduction = "mean"

    def __init__(self, dim: int, num_classes: int):
        super().__init__()

    def forward(self, image_feats, text_feats, pids):
        pos = pids[:, None] == pids[None, :]
        return (matching_kl(_projection(image_feats, text_feats), pos)
                + matching_kl(_projection(text_feats, image_feats), pos.t()))
