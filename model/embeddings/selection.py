"""Attention-guided token selection shared by the TSE and fused heads (RDE section 3.2, docs/METHOD.md §2.3-§2.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def select_image_tokens(tokens: torch.Tensor, attn: torch.Tensor, ratio: float) -> torch.Tensor:
    """The int(N * ratio) patch tokens the CLS query attends to most: [B, k, D]."""
    scores = attn[:, 0, 1:]                                     # CLS row, CLS column left out
    k = max(1, int(scores.shape[1] * ratio))
    idx = scores.topk(k, dim=-1).indices + 1                    # +1: back to token positions
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def select_text_tokens(tokens: torch.Tensor, attn: torch.Tensor, ids: torch.Tensor, ratio: float):
    """Top tokens of the EOT query's attention row, SOT / EOT / padding excluded.

    Returns the selected tokens [B, k, D] and a mask [B, k] that keeps, for caption i, only the first
    min(len_i, k) of them (len_i = real tokens - 2), so short captions pool over real words only.
    """
    b, length = ids.shape
    eot = ids.argmax(dim=-1)
    rows = torch.arange(b, device=ids.device)
    scores = attn[rows, eot].float()                            # [B, L]
    # as published: padding scores 0, SOT and EOT -1 (attention weights are > 0, so real tokens come first)
    scores = scores.masked_fill(ids == 0, 0.0)
    scores[:, 0] = -1.0
    scores[rows, eot] = -1.0
    k = max(1, int((length - 2) * ratio))
    idx = scores.topk(k, dim=-1).indices
    selected = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    lengths = (ids != 0).sum(dim=-1) - 2
    keep = torch.arange(k, device=ids.device)[None] < lengths.clamp(min=1)[:, None]
    return selected, keep


def masked_max(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Max over dim 1 of [B, k, D], ignoring positions where keep is False."""
    if keep is not None:
        x = x.masked_fill(~keep.unsqueeze(-1), torch.finfo(x.dtype).min)
    return x.max(dim=1).values


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
