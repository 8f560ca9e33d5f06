"""CLIP's architecture: CLIPConfig (sizes of both towers, image grid, text length) and its inference from an
OpenAI-layout state dict (widths, depths, patch size, grid and context length read off the tensors' shapes)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    image_size: tuple[int, int] = (384, 128)
    patch_size: int = 16
    stride: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12

    def __post_init__(self):
        # YAML/JSON give lists; a bare int means a square image.
        size = self.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {size!r}")
        if not 0 < self.stride <= self.patch_size:
            raise ValueError(f"stride must be in [1, patch_size={self.patch_size}], got {self.stride}")
        if min(self.image_size) < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        for tower, width, heads in (("vision", self.vision_width, self.vision_heads),
                                    ("text", self.text_width, self.text_heads)):
            if width % heads:
                raise ValueError(f"{tower}_width={width} is not divisible by {tower}_heads={heads} "
                                 f"(CLIP uses heads = width // 64)")

    @property
    def grid_size(self) -> tuple[int, int]:
        return grid_size(self.image_size, self.patch_size, self.stride)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw


def grid_size(image_size: Iterable[int], patch_size: int, stride: int) -> tuple[int, int]:
    """Patch grid of a conv with kernel `patch_size` and `stride` (overlapping when stride < patch)."""
    h, w = image_size
    return (h - patch_size) // stride + 1, (w - patch_size) // stride + 1


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if idx != set(range(len(idx))):
        raise ValueError(f"non-contiguous block indices under {prefix!r}: {sorted(idx)}")
    return len(idx)


def _guess_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    # Non-square grids come from person-ReID fine-tuning (e.g. 24 x 8 for 384 x 128):
    # the count alone is ambiguous, so pick the factorisation closest to a 3:1 portrait.
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0 and h >= num_patches // h]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1] / 3.0)))


def config_from_state_dict(sd: Mapping[str, torch.Tensor],
                           source_grid: tuple[int, int] | None = None) -> CLIPConfig:
    """Architecture of an OpenAI-layout ViT CLIP state dict (as OpenAI's build_model reads it).

    The stride is not stored in the weights, so the returned config has stride =
    patch size and an image size whose grid matches the stored position table.
    `source_grid` (gh, gw) overrides the grid guess for non-square tables.
    """
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
                "positional_embedding", "text_projection", "ln_final.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"not a ViT CLIP state dict: missing {missing} (ResNet CLIPs are not supported)")

    vision_width, _, patch, _ = sd["visual.conv1.weight"].shape
    num_patches = sd["visual.positional_embedding"].shape[0] - 1
    if source_grid is None:
        gh, gw = _guess_grid(num_patches)
    else:
        gh, gw = source_grid
        if gh * gw != num_patches:
            raise ValueError(f"source_grid {source_grid} has {gh * gw} cells, the state dict has {num_patches}")
    text_width = sd["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_size=(gh * patch, gw * patch),
        patch_size=patch,
        stride=patch,
        vision_width=vision_width,
        vision_layers=_count_blocks(sd, "visual.transformer."),
        vision_heads=vision_width // 64,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_heads=text_width // 64,
        text_layers=_count_blocks(sd, "transformer."),
    )
