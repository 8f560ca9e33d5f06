"""BGE, the basic global embedding (RDE): the projected CLS token and the projected EOT token."""
import torch
import torch.nn as nn

from . import register_embedding


@register_embedding("bge")
class GlobalEmbedding(nn.Module):
    out_dim: int

    def __init__(self, width: int):
        super().__init__()
        self.out_dim = width

    def encode_image(self, tokens, attn):
        return tokens[:, 0]

    def encode_text(self, tokens, attn, ids):
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), ids.argmax(dim=-1)]
