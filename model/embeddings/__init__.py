"""Embedding heads: how a tower's token sequence becomes the vector that is compared.

Each head is one module in this folder that registers itself; a config's ``embeddings: [bge, tse]``
picks them by name.  A head maps image tokens (+ last-block attention) and text tokens (+ attention,
token ids) to one vector each, and declares ``out_dim``.
"""
from __future__ import annotations

import torch.nn as nn

EMBEDDINGS: dict[str, type[nn.Module]] = {}


def register_embedding(name: str):
    def add(cls):
        EMBEDDINGS[name] = cls
        return cls
    return add


def build_embedding(name: str, cfg, width: int) -> nn.Module:
    if name not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {name!r}; known: {sorted(EMBEDDINGS)} (model/embeddings/)")
    return EMBEDDINGS[name](cfg, width)


from . import bge, fused, tse  # noqa: E402,F401  (registration)
