"""Embedding heads: how a tower's token sequence becomes the vector that is compared.

Each head is one module in this folder that registers itself (every module here is imported); a config's ``embeddings: [bge, tse]``
picks them by name.  A head is built as ``cls(width, **its options)`` (``options = {name: Option}``, the values of
the options it reads) and maps image tokens (+ last-block attention)
and text tokens (+ attention, token ids) to one vector each:
``encode_image(tokens, attn)``, ``encode_text(tokens, attn, ids)``; it declares ``out_dim: int`` (set from the
config when built).  EMBEDDINGS checks all of this when a head registers.
"""
from __future__ import annotations

import inspect

import torch.nn as nn

from utils.registry import Registry, accepts, import_folder, option_defaults


def _declares(cls, attribute: str) -> bool:
    return any(attribute in inspect.get_annotations(k) or attribute in vars(k) for k in cls.__mro__)


def _head_problems(cls) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return ["a head is an nn.Module subclass"]
    problems = []
    if not _declares(cls, "out_dim"):
        problems.append("declare `out_dim: int` in the class body (the size of its vectors, set in __init__)")
    for method, args in (("encode_image", ("tokens", "attn")), ("encode_text", ("tokens", "attn", "ids"))):
        if not (callable(getattr(cls, method, None)) and accepts(getattr(cls, method), None, *args)):
            problems.append(f"{method}(self, {', '.join(args)}) must return one vector per sample [B, out_dim]")
    if not accepts(cls.__init__, None, 1, **option_defaults(cls)):
        problems.append("__init__(self, width, <its declared options>) is how heads are built")
    return problems


EMBEDDINGS = Registry("embedding head", "model/embeddings/", _head_problems)
register_embedding = EMBEDDINGS.register


def build_embedding(name: str, cfg, width: int) -> nn.Module:
    head = EMBEDDINGS.build(name, width, cfg=cfg)
    if not isinstance(getattr(head, "out_dim", None), int) or head.out_dim < 1:
        raise TypeError(f"embedding head {name!r} was built with out_dim {getattr(head, 'out_dim', None)!r}; "
                        "set self.out_dim to the size of its vectors in __init__")
    return head


import_folder(__name__, __path__)      # every file here: a new head is one new file
