"""CLIP for person re-id: the factory (`build_clip`, `load_clip`) and the public names of the package.

network.py      the modules (ViT image tower, causal text transformer, fused attention), OpenAI's key layout
arch.py         CLIPConfig and the architecture read off a state dict
checkpoint.py   reading weight files (OpenAI's TorchScript release with its checksum, state dicts, wrappers)
interpolate.py  position embeddings resized to another image grid or text length
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Iterable

import torch

from .arch import CLIPConfig, config_from_state_dict, grid_size
from .checkpoint import (OPENAI_CACHE_DIR, OPENAI_SHA256, OPENAI_VIT_B16_URL, load_state_dict_file,
                         verify_openai_checksum)
from .interpolate import interpolate_pos_embed, interpolate_text_pos_embed, interpolate_vision_pos_embed
from .network import CLIP, QuickGELU, ResidualAttentionBlock, SelfAttention, Transformer, VisionTransformer
from .synthetic import SYNTHETIC, synthetic_clip_file

__all__ = ["CLIP", "CLIPConfig", "OPENAI_CACHE_DIR", "OPENAI_SHA256", "OPENAI_VIT_B16_URL", "QuickGELU",
           "ResidualAttentionBlock", "SelfAttention", "Transformer", "VisionTransformer", "build_clip",
           "config_from_state_dict", "grid_size", "interpolate_pos_embed", "interpolate_text_pos_embed",
           "interpolate_vision_pos_embed", "load_clip", "load_state_dict_file", "random_clip_config", "SYNTHETIC",
           "synthetic_clip_file", "verify_openai_checksum"]


def load_clip(path: str | os.PathLike | None, image_size: Iterable[int] = (384, 128), stride: int = 16,
              text_length: int = 77, source_grid: tuple[int, int] | None = None) -> CLIP:
    """CLIP from a checkpoint file, adapted to `image_size` / `stride` / `text_length`; fp32 weights."""
    if path is None or str(path) in ("", "random"):
        raise ValueError("load_clip needs a checkpoint path; build a randomly initialised model with "
                         "CLIP(CLIPConfig(...)) or build_clip('random', ...)")
    sd = load_state_dict_file(path)
    # Master weights in fp32 (OpenAI stores fp16); autocast handles mixed precision.
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    src = config_from_state_dict(sd, source_grid)
    dst = replace(src, image_size=tuple(image_size), stride=stride, context_length=text_length)
    sd = interpolate_pos_embed(sd, src, dst)

    # Meta-device construction skips the random init we would overwrite anyway.
    with torch.device("meta"):
        model = CLIP(dst)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{os.fspath(path)!r} does not match the CLIP architecture read from it: "
                           f"missing keys {list(missing)}, unexpected keys {list(unexpected)}")
    model.visual.set_pixel_stats()
    return model


def random_clip_config(arch: dict | None, image_size: Iterable[int], stride: int, text_length: int) -> CLIPConfig:
    """The CLIPConfig of `arch` (CLIPConfig fields) at the run's image size, stride and text length."""
    return CLIPConfig(**{**(arch or {}), "image_size": tuple(image_size), "stride": stride,
                         "context_length": text_length})


def build_clip(pretrain: str | None, image_size: Iterable[int] = (384, 128), stride: int = 16,
               text_length: int = 77, arch: dict | None = None) -> CLIP:
    """CLIP from a file path, an OpenAI model name ('ViT-B/16', looked up in ~/.cache/clip), 'random' (of `arch`)
    or 'synthetic' (`arch` pretrained on synthetic people, model/clip/synthetic.py)."""
    if not pretrain or pretrain == "random":
        return CLIP(random_clip_config(arch, image_size, stride, text_length))
    if pretrain == SYNTHETIC:
        path = synthetic_clip_file(random_clip_config(arch, image_size, stride, text_length))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrain_choice synthetic: {path} is not built yet; main.py builds it on first "
                                    "use, or build it with: python -m pretraining --config YOUR_CONFIG")
        return load_clip(path, image_size, stride, text_length)
    if re.fullmatch(r"(RN|ViT-)[\w/@-]+", pretrain) and not os.path.exists(pretrain):
        path = os.path.join(OPENAI_CACHE_DIR, pretrain.replace("/", "-") + ".pt")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrain={pretrain!r} names an OpenAI CLIP model, expected its weights at {path}; "
                f"nothing is downloaded automatically: download it by hand "
                f"(ViT-B/16: {OPENAI_VIT_B16_URL}; other models: the URLs in OpenAI's clip/clip.py)")
        return load_clip(path, image_size, stride, text_length)
    return load_clip(pretrain, image_size, stride, text_length)
