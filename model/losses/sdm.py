"""SDM, IRRA's similarity distribution matching: KL(softmax(scale S) || normalised positives), both ways."""
import torch.nn as nn

from . import register_loss
from .common import LOGIT_SCALE, matching_kl, scaled_logits


@register_loss("SDM")
class SimilarityDistributionMatching(nn.Module):
    reduction = "mean"

    options = {"logit_scale": LOGIT_SCALE}

    def __init__(self, dim: int, num_classes: int, logit_scale: float):
        super().__init__()
        self.scale = logit_scale

    def forward(self, image_feats, text_feats, pids):
        logits, pos = scaled_logits(image_feats, text_feats, pids, self.scale)
        return matching_kl(logits, pos) + matching_kl(logits.t(), pos.t())
