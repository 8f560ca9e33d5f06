"""CMPM, cross-modal projection matching (Zhang & Lu, ECCV 2018): KL between the softmax of each feature's
projection onto the other modality's normalised features and the normalised positives, both ways."""
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss


def _row_cmpm(feats, others, pos, eps=1e-8):
    projection = feats.float() @ F.normalize(others.float(), dim=-1).t()     # [B, B], unnormalised on one side
    log_pred = F.log_softmax(projection, dim=1)
    target = pos.float() / pos.float().sum(dim=1, keepdim=True)
    return (log_pred.exp() * (log_pred - (target + eps).log())).sum(dim=1)


@register_loss("CMPM")
class CrossModalProjectionMatching(nn.Module):
    reduction = "mean"

    def __init__(self, dim: int, num_classes: int):
        super().__init__()

    def forward(self, image_feats, text_feats, pids):
        pos = pids[:, None] == pids[None, :]
        return _row_cmpm(image_feats, text_feats, pos) + _row_cmpm(text_feats, image_feats, pos.t())
