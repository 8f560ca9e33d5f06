"""SDM with label smoothing: IRRA's similarity distribution matching towards a target that keeps `sdm_smoothing` of
its mass spread over the whole batch, so that a noisy pair's caption is never pulled with full confidence onto the
one image it was (wrongly) given (label smoothing, Szegedy et al., CVPR 2016).  sdm_smoothing 0 is SDM."""
import torch.nn as nn
import torch.nn.functional as F

from utils.options import Option, Range

from . import register_loss
from .common import LOGIT_SCALE, scaled_logits


def smoothed_kl(logits, pos, smoothing: float, eps: float = 1e-8):
    """KL(softmax(logits) || (1 - smoothing) x positives normalised + smoothing x uniform) of each row."""
    target = (1 - smoothing) * pos.float() / pos.float().sum(dim=1, keepdim=True) + smoothing / pos.shape[1]
    log_pred = F.log_softmax(logits, dim=1)
    return (log_pred.exp() * (log_pred - (target + eps).log())).sum(dim=1)


@register_loss("SDM_LS")
class SmoothedSDM(nn.Module):
    reduction = "mean"

    options = {"logit_scale": LOGIT_SCALE,
               "sdm_smoothing": Option(0.1, "SDM_LS: the share of the matching target spread evenly over the batch",
                                       Range(lo=0, hi=1, hi_open=True))}

    def __init__(self, dim: int, num_classes: int, logit_scale: float, sdm_smoothing: float):
        super().__init__()
        self.scale, self.smoothing = logit_scale, sdm_smoothing

    def forward(self, image_feats, text_feats, pids):
        logits, pos = scaled_logits(image_feats, text_feats, pids, self.scale)
        return smoothed_kl(logits, pos, self.smoothing) + smoothed_kl(logits.t(), pos.t(), self.smoothing)
