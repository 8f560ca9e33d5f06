"""TSE, the token selection embedding (RDE): selected tokens, a residual MLP, max pooling."""
import torch.nn as nn

from utils.options import AT_LEAST_1, FRACTION, Option

from . import register_embedding
from .selection import l2norm, masked_max, select_image_tokens, select_text_tokens


class TokenMLP(nn.Module):
    """Linear(w, out)(x) + [Linear(w, hidden) -> BN -> ReLU -> Linear(hidden, out)](x), token-wise."""

    def __init__(self, width: int, hidden: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(width, out_dim)
        self.fc1 = nn.Linear(width, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x):                                      # [B, k, w] -> [B, k, out]
        b, k, w = x.shape
        flat = x.reshape(b * k, w)
        mlp = self.fc2(self.bn(self.fc1(flat)).relu())
        return (self.linear(flat) + mlp).reshape(b, k, -1)


@register_embedding("tse")
class TokenSelectionEmbedding(nn.Module):
    out_dim: int

    options = {"select_ratio": Option(0.3, "TSE: fraction of tokens selected", FRACTION),
               "tse_dim": Option(1024, "TSE output dimension (not clip_arch's embed_dim: that is CLIP's own output "
                                       "size, BGE's)", AT_LEAST_1)}

    def __init__(self, width: int, select_ratio: float, tse_dim: int):
        super().__init__()
        self.ratio = select_ratio
        self.out_dim = tse_dim
        # separate heads for the two towers, as in RDE
        self.image_mlp = TokenMLP(width, width, self.out_dim)
        self.text_mlp = TokenMLP(width, width, self.out_dim)

    def encode_image(self, tokens, attn):
        x = l2norm(select_image_tokens(tokens, attn, self.ratio))
        return masked_max(self.image_mlp(x), None)

    def encode_text(self, tokens, attn, ids):
        x, keep = select_text_tokens(tokens, attn, ids, self.ratio)
        return masked_max(self.text_mlp(l2norm(x)), keep)
