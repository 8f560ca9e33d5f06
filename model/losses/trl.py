"""TRL, the triplet ranking loss RDE compares with: TAL's weighted positive, the hardest negative."""
from . import register_loss
from .common import positive_attention
from .tal import TripletAlignmentLoss


def _row_trl(sim, pos, tau, margin):
    pull = (positive_attention(sim, pos, tau) * sim).sum(dim=1)
    hardest = sim.masked_fill(pos, -2.0).max(dim=1).values    # cosines are >= -1
    return (margin + hardest - pull).clamp(min=0)


@register_loss("TRL")
class TripletRankingLoss(TripletAlignmentLoss):
    row_loss = staticmethod(_row_trl)
