"""The CLIP network: OpenAI CLIP (ViT image tower + causal text transformer), docs/METHOD.md §2.1.

Parameter names follow OpenAI's state-dict layout exactly, so OpenAI's
`ViT-B-16.pt` and IRRA/RDE-style fine-tuned checkpoints load with strict key
checking. Two deliberate departures from OpenAI's module code, neither visible
in the weights:

* activations are batch-first [B, L, W] (OpenAI permutes to [L, B, W]);
* attention is our own module: one fused qkv matmul + SDPA everywhere except the
  last block of each tower, which computes softmax(QK^T) explicitly because
  token selection (TSE / fused embedding) needs its head-averaged weights.

Both towers return *projected* token sequences (ln + projection applied to every
token); the global embeddings are the CLS token (image) and EOT token (text).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import PIXEL_MEAN, PIXEL_STD
from .arch import CLIPConfig


class QuickGELU(nn.Module):
    # OpenAI's weights were trained with this approximation, not exact GELU.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names.

    in_proj_weight [3W, W] holds q, k, v stacked, which is both OpenAI's layout
    and the fastest way to compute them (one matmul).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D]

        weights = None
        if need_weights:
            scores = torch.matmul(q * (self.head_dim ** -0.5), k.transpose(-2, -1)).float()
            if causal:
                future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu_(1)
                scores = scores.masked_fill(future, float("-inf"))
            # Softmax in fp32: these weights drive top-k token selection, where bf16 ties hurt.
            probs = scores.softmax(dim=-1)
            out = torch.matmul(probs.to(v.dtype), v)
            weights = probs.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        out = out.transpose(1, 2).reshape(b, n, w)
        return self.out_proj(out), weights


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        attn_out, weights = self.attn(self.ln_1(x), causal=causal, need_weights=need_weights)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False, need_weights: bool = False):
        """Returns (x, last block's attention averaged over heads, or None)."""
        weights = None
        last = len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks):
            x, weights = block(x, causal=causal, need_weights=need_weights and i == last)
        return x, weights

    def init_weights(self) -> None:
        # CLIP's initialize_parameters; the residual-branch outputs get the
        # extra 1/sqrt(2 * layers) so the residual stream's variance stays bounded.
        attn_std = self.width ** -0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        width = cfg.vision_width
        self.set_pixel_stats()
        self.grid_size = cfg.grid_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.stride, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_patches + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))

    def set_pixel_stats(self) -> None:
        """uint8 images are normalised in forward, on the device: the loaders then copy a quarter of the bytes
        and spend no CPU on float conversion.  Buffers outside the state dict (the OpenAI key layout stays as
        it is), so a model built on the meta device and loaded with assign=True sets them again."""
        self.register_buffer("pixel_mean", 255 * torch.tensor(PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", 255 * torch.tensor(PIXEL_STD).view(3, 1, 1), persistent=False)

    def init_weights(self) -> None:
        scale = self.conv1.out_channels ** -0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.init_weights()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] -> float32 in CLIP's normalised units."""
        return (images.float() - self.pixel_mean.float()) / self.pixel_std.float()

    def forward(self, images: torch.Tensor, need_weights: bool = False):
        """images: uint8 [B, 3, H, W] as the loaders give them, or already normalised floats.
        Returns the transformer output before ln_post, [B, 1 + N, W], and the attention map."""
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [B, W, gh, gw]
        if x.shape[-2:] != self.grid_size:
            raise ValueError(f"image of size {tuple(images.shape[-2:])} gives a {tuple(x.shape[-2:])} patch grid, "
                             f"but the model was built for {self.grid_size}; resize images or rebuild the model")
        x = x.flatten(2).transpose(1, 2)  # [B, N, W], row-major over the grid like OpenAI
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        return self.transformer(x, need_weights=need_weights)


# --------------------------------------------------------------------------- CLIP


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig | None = None):
        super().__init__()
        cfg = cfg or CLIPConfig()
        self.config = cfg
        self.context_length = cfg.context_length
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.text_width ** -0.5)
        self.transformer.init_weights()
        self.visual.init_weights()

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    # ---- image
    def encode_image_tokens(self, images: torch.Tensor):
        """images [B, 3, H, W] -> (tokens [B, 1 + N, embed_dim], attn [B, 1 + N, 1 + N]); token 0 is CLS."""
        x, attn = self.visual(images, need_weights=True)
        return self.visual.ln_post(x) @ self.visual.proj, attn

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLS token [B, embed_dim] (OpenAI's encode_image); no attention weights needed, so all-SDPA."""
        x, _ = self.visual(images)
        return self.visual.ln_post(x[:, 0]) @ self.visual.proj

    # ---- text
    def _text_forward(self, ids: torch.Tensor, need_weights: bool):
        n = ids.shape[1]
        if n > self.context_length:
            raise ValueError(f"text of length {n} exceeds the model's context_length {self.context_length}")
        # Shorter inputs are fine: under the causal mask, a prefix of the position table is exact.
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        return self.transformer(x, causal=True, need_weights=need_weights)

    def encode_text_tokens(self, ids: torch.Tensor):
        """ids [B, L] -> (tokens [B, L, embed_dim], causal attn [B, L, L])."""
        x, attn = self._text_forward(ids, need_weights=True)
        return self.ln_final(x) @ self.text_projection, attn

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Projected EOT token [B, embed_dim]; EOT has the largest id, hence argmax (as OpenAI)."""
        x, _ = self._text_forward(ids, need_weights=False)
        eot = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return self.ln_final(eot) @ self.text_projection

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        return self.encode_image(images), self.encode_text(ids)
