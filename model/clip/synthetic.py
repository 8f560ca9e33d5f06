"""Where the CLIP pretrained on synthetic people is kept (``pretrain_choice: synthetic``).

The synthetic world's stand-in for OpenAI's web-pretrained ViT-B-16.pt: a CLIP of the run's architecture trained
once on synthetic identities that SYNTH-PEDES never holds (pretraining/synthetic_clip.py builds it, on first use or
with ``python -m pretraining``), then loaded through the same path as any CLIP file.  One file per
architecture (every CLIPConfig field, image size and text length included), in OpenAI's key layout.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

from .arch import CLIPConfig

SYNTHETIC = "synthetic"     # the pretrain_choice value
SYNTHETIC_CLIP_DIR = os.environ.get("REID_SYNTHETIC_CLIP_DIR", os.path.expanduser("~/.cache/reid-synthetic-clip"))


def synthetic_clip_file(config: CLIPConfig, folder: str | None = None) -> str:
    """The file of the synthetic-pretrained CLIP of this architecture (it may not exist yet)."""
    fields = json.dumps(asdict(config), sort_keys=True, default=list)
    key = hashlib.sha1(fields.encode()).hexdigest()[:12]
    c = config
    name = f"clip_v{c.vision_width}x{c.vision_layers}_t{c.text_width}x{c.text_layers}_{key}.pt"
    return os.path.join(folder or SYNTHETIC_CLIP_DIR, name)
