"""SDM, IRRA's similarity distribution matching: KL(softmax(scale S) || normalised positives), both ways."""
import torch.nn as nn
import torch.nn.functional as F

from . import register_loss
from .common import LOGIT_SCALE, similarity_and_positives


def _row_kl(sim, pos, scale, eps=1e-8):
    target = pos.float() / pos.float().sum(dim=1, keepdim=True)
    log_pred = F.log_softmax(scale * sim, dim=1)
    return (log_pred.exp() * (log_pred - (target + eps).log())).sum(dim=1)


@register_loss("SDM")
class SimilarityDistributionMatching(nn.Module):
    reduction = "mean"

    options = {"logit_scale": LOGIT_SCALE}

    def __init__(self, dim: int, num_classes: int, logit_scale: float):
        super().__init__()
        self.scale = logit_scale

    def forward(self, image_feats, text_feats, pids):
        sim, pos = similarity_and_positives(image_feats, text_feats, pids)
        return _row_kl(sim, pos, self.scale) + _row_kl(sim.t(), pos.t(), self.scale)
