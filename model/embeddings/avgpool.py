"""AVG, a mean-pooled embedding: the mean of the image's patch tokens and of the caption's word tokens (SOT to
EOT), each through a LayerNorm and a linear map to ``avg_dim``."""
import torch.nn as nn

from utils.options import AT_LEAST_1, Option

from . import register_embedding


@register_embedding("avg")
class MeanPooledEmbedding(nn.Module):
    out_dim: int
    options = {"avg_dim": Option(512, "AVG embedding: output dimension", AT_LEAST_1)}

    def __init__(self, width: int, avg_dim: int):
        super().__init__()
        self.out_dim = avg_dim
        self.image_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, avg_dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, avg_dim))

    def encode_image(self, tokens, attn):
        return self.image_proj(tokens[:, 1:].mean(dim=1))             # patches, not the CLS token

    def encode_text(self, tokens, attn, ids):
        inside = (ids != 0).unsqueeze(-1).to(tokens.dtype)           # SOT, words, EOT; padding is 0
        return self.text_proj((tokens * inside).sum(dim=1) / inside.sum(dim=1).clamp(min=1))
