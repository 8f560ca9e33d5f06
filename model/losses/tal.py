"""TAL, the triplet alignment loss of RDE (docs/METHOD.md §3.1)."""
import torch
import torch.nn as nn

from . import register_loss
from .common import MARGIN, TAU, positive_attention, similarity_and_positives


def _row_tal(sim, pos, tau, margin):
    alpha = positive_attention(sim, pos, tau)
    pull = (alpha * sim).sum(dim=1)
    # a row with no negative contributes nothing: a very small finite value keeps gradients finite
    push = tau * torch.logsumexp((sim / tau).masked_fill(pos, -1e4), dim=1)
    return (margin - pull + push).clamp(min=0)


@register_loss("TAL")
class TripletAlignmentLoss(nn.Module):
    """Per sample: the text-to-image row term plus the image-to-text row term (RDE sums over the batch)."""
    reduction = "sum"
    row_loss = staticmethod(_row_tal)

    options = {"tau": TAU, "margin": MARGIN}

    def __init__(self, dim: int, num_classes: int, tau: float, margin: float):
        super().__init__()
        self.tau, self.margin = tau, margin

    def forward(self, image_feats, text_feats, pids):
        sim, pos = similarity_and_positives(image_feats, text_feats, pids)
        return self.row_loss(sim, pos, self.tau, self.margin) + self.row_loss(sim.t(), pos.t(), self.tau, self.margin)
