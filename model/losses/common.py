import torch
import torch.nn.functional as F

from utils.options import POSITIVE, Option

# options several losses read, declared once (configs/table.py collects every loss's `options`)
TAU = Option(0.015, "TAL / TRL temperature", POSITIVE)
MARGIN = Option(0.1, "TAL / TRL margin")
LOGIT_SCALE = Option(50.0, "SDM / InfoNCE logit scale (1 / temperature 0.02)", POSITIVE)


def similarity_and_positives(image_feats, text_feats, pids):
    """S[i, j] = cos(text_i, image_j) in fp32 and P[i, j] = (pid_i == pid_j)."""
    sim = F.normalize(text_feats.float(), dim=-1) @ F.normalize(image_feats.float(), dim=-1).t()
    pos = pids[:, None] == pids[None, :]
    return sim, pos


def scaled_logits(image_feats, text_feats, pids, scale: float):
    """(scale x S, P): the text-to-image logits SDM and InfoNCE soft-max (rows: captions, columns: images)."""
    sim, pos = similarity_and_positives(image_feats, text_feats, pids)
    return scale * sim, pos


def matching_kl(logits, pos, eps: float = 1e-8):
    """KL(softmax(logits) || positives normalised) of each row: how far the predicted matching distribution is from
    the true one (SDM, CMPM; their both-ways losses add it for the rows and for the transposed columns)."""
    target = pos.float() / pos.float().sum(dim=1, keepdim=True)
    log_pred = F.log_softmax(logits, dim=1)
    return (log_pred.exp() * (log_pred - (target + eps).log())).sum(dim=1)


def positive_attention(sim: torch.Tensor, pos: torch.Tensor, tau: float) -> torch.Tensor:
    """alpha_ij = softmax of S_ij / tau over the positives j of row i, with no gradient (RDE's TAL / TRL)."""
    return torch.softmax((sim / tau).masked_fill(~pos, float("-inf")), dim=1).detach()
