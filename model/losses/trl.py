"""TRL, the triplet ranking loss RDE compares with: TAL's weighted positive, the hardest negative."""
import torch.nn as nn

from . import register_loss
from .common import positive_attention, similarity_and_positives


def _row_trl(sim, pos, tau, margin):
    pull = (positive_attention(sim, pos, tau) * sim).sum(dim=1)
    hardest = sim.masked_fill(pos, -2.0).max(dim=1).values    # cosines are >= -1
    return (margin + hardest - pull).clamp(min=0)


@register_loss("TRL")
class TripletRankingLoss(nn.Module):
    reduction = "sum"

    def __init__(self, cfg, dim=None, num_classes=None):
        super().__init__()
        self.tau, self.margin = cfg.tau, cfg.margin

    def forward(self, image_feats, text_feats, pids):
        sim, pos = similarity_and_positives(image_feats, text_feats, pids)
        return _row_trl(sim, pos, self.tau, self.margin) + _row_trl(sim.t(), pos.t(), self.tau, self.margin)
