"""3RTPR's fused embedding: the global token plus max-pooled, MLP-mapped local tokens.

    fused = maxpool(MLP(l2norm(local tokens))) + Linear(width, D)(global token)
    MLP   = Linear(width, D/2) -> BatchNorm1d -> ReLU -> Linear(D/2, D)

The text's local tokens are its top-k by the EOT token's attention.  The image's are its top-k patches by the CLS
token's attention in the paper (``fused_image_tokens: selected``, configs/3rtpr); 3RTPR's rebuilt code selects them
and then, by its next line, pools over every token, the CLS token included (``all``, configs/3rtpr_release).
"""
import torch
import torch.nn as nn

from utils.options import FRACTION, OneOf, Option, Range

from . import register_embedding
from .selection import l2norm, masked_max, select_image_tokens, select_text_tokens


class LocalMLP(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, out_dim // 2)
        self.bn = nn.BatchNorm1d(out_dim // 2)
        self.fc2 = nn.Linear(out_dim // 2, out_dim)

    def forward(self, x):                                      # [B, k, w] -> [B, k, D]
        b, k, w = x.shape
        return self.fc2(self.bn(self.fc1(x.reshape(b * k, w))).relu()).reshape(b, k, -1)


@register_embedding("fused")
class FusedEmbedding(nn.Module):
    out_dim: int

    options = {"fused_ratio": Option(0.2, "fused embedding (3RTPR): fraction of tokens selected", FRACTION),
               "fused_dim": Option(2048, "fused embedding (3RTPR): output dimension D (its MLP's hidden size is D / 2)",
                                   Range(lo=2)),
               "fused_image_tokens": Option("selected", "fused embedding (3RTPR): the image tokens its local branch "
                                                        "pools: selected (the top fused_ratio of the patches, as the "
                                                        "paper and the rebuild's comments say) or all (every token, "
                                                        "CLS included, as the rebuild's code does)",
                                            OneOf("selected", "all"))}

    def __init__(self, width: int, fused_ratio: float, fused_dim: int, fused_image_tokens: str):
        super().__init__()
        self.ratio, self.image_tokens = fused_ratio, fused_image_tokens
        self.out_dim = fused_dim
        self.image_local, self.text_local = LocalMLP(width, self.out_dim), LocalMLP(width, self.out_dim)
        self.image_global = nn.Linear(width, self.out_dim)
        self.text_global = nn.Linear(width, self.out_dim)

    def encode_image(self, tokens, attn):
        local = tokens if self.image_tokens == "all" else select_image_tokens(tokens, attn, self.ratio)
        return masked_max(self.image_local(l2norm(local)), None) + self.image_global(tokens[:, 0])

    def encode_text(self, tokens, attn, ids):
        selected, keep = select_text_tokens(tokens, attn, ids, self.ratio)
        eot = tokens[torch.arange(tokens.shape[0], device=tokens.device), ids.argmax(dim=-1)]
        return masked_max(self.text_local(l2norm(selected)), keep) + self.text_global(eot)
