"""The identical inputs of the side-by-side tests with 3RTPR's rebuilt code (tests/test_3rtpr_release.py): tokens,
attention maps, captions, features, losses and weights drawn from fixed seeds, so that the rebuild's pieces run on
exactly these numbers outside this repository gave the reference values the tests hold.  Everything here is
deterministic on any CPU (torch's and numpy's seeded generators), and nothing here is the rebuild's code.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

EOT_ID, SOT_ID = 49407, 49406
PIDS = [0, 0, 1, 2, 2, 2, 3, 4]            # a batch of 8 pairs, some of one person (SDM's positives)
CAPTION_WORDS = [8, 30, 14, 3, 22, 15, 40, 1]  # words of each caption: fewer and more than the text head's k = 15


def seeded(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def attention(batch: int, length: int, seed: int, causal: bool = False) -> torch.Tensor:
    """Rows of a head-averaged attention map: positive, summing to 1 (causal: over the earlier tokens only)."""
    logits = seeded((batch, length, length), seed, 2.0)
    if causal:
        logits = logits.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(dim=-1)


def captions(length: int = 77, seed: int = 5, words=CAPTION_WORDS) -> torch.Tensor:
    """[B, length] token ids: SOT, `words[i]` ordinary ids, EOT, zeros."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(words), length, dtype=torch.long)
    for i, n in enumerate(words):
        ids[i, 0] = SOT_ID
        ids[i, 1:n + 1] = torch.randint(1, 49405, (n,), generator=g)
        ids[i, n + 1] = EOT_ID
    return ids


def parameter_value(name: str, shape) -> torch.Tensor:
    """A parameter's value from its name (ours: model/ key layout) alone: norm weights near 1, biases and
    embeddings small, matrices scaled by their fan-in."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(tuple(shape), generator=g)
    last = name.rsplit(".", 1)[-1]
    if len(shape) == 1 and last == "weight":                   # LayerNorm, BatchNorm
        return 1 + 0.1 * x
    if last == "bias" or last.endswith("_bias"):
        return 0.05 * x
    if last in ("class_embedding", "positional_embedding") or "token_embedding" in name:
        return 0.02 * x
    if last in ("proj", "text_projection"):                    # x @ proj: fan-in is the first dimension
        return x * shape[0] ** -0.5
    return x * float(np.prod(shape[1:])) ** -0.5


def fill_parameters(model: torch.nn.Module, prefix: str = "") -> None:
    """Every parameter of `model` set to parameter_value(prefix + its name)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(parameter_value(prefix + name, p.shape))


# ------------------------------------------------------------------ the division's inputs
def division_inputs(n: int = 400, seed: int = 11):
    """Per-sample SDM losses of both twins on the same 30% permuted pairs and each twin's positive cosine: the
    permuted pairs' losses high and cosines low, with some overlap, and the twins not quite agreeing."""
    rng = np.random.default_rng(seed)
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.permutation(n)[: int(0.3 * n)]] = True
    loss_a = np.where(noisy, rng.normal(4.5, 0.6, n), rng.normal(1.5, 0.4, n)).clip(min=0.01)
    loss_b = np.where(noisy, rng.normal(4.0, 0.7, n), rng.normal(1.6, 0.5, n)).clip(min=0.01)
    sim_a = np.where(noisy, rng.normal(0.15, 0.08, n), rng.normal(0.55, 0.08, n))
    sim_b = np.where(noisy, rng.normal(0.12, 0.09, n), rng.normal(0.50, 0.09, n))
    return (loss_a.astype(np.float32), loss_b.astype(np.float32), sim_a.astype(np.float32),
            sim_b.astype(np.float32), noisy)


def overlapping_losses(n: int = 400, seed: int = 51) -> np.ndarray:
    """One twin's per-sample losses where clean and permuted pairs overlap: the mixture's settings (RSTPReid's
    tight ones against the loose ones) change its votes, and the same way from any initialisation."""
    rng = np.random.default_rng(seed)
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.permutation(n)[: int(0.3 * n)]] = True
    return np.where(noisy, rng.normal(3.2, 1.4, n), rng.normal(1.5, 0.6, n)).clip(min=0.01).astype(np.float32)


def all_clean_probabilities(n: int = 250, seed: int = 12) -> np.ndarray:
    """Clean posteriors all above 0.5: the split's fallback (the N // 100 + 1 lowest become noisy)."""
    return np.random.default_rng(seed).uniform(0.55, 1.0, n)


# ALR's grid: cosines s and mu (negative, zero and positive)
ALR_S = [-0.6, -0.3, -0.1, 0.0, 0.05, 0.15, 0.3, 0.5, 0.9]
ALR_MU = [-0.3, -0.05, 0.0, 0.05, 0.2, 0.45]


# ------------------------------------------------------------------ one training step
def step_batch():
    """Twin k's view k of a batch of 8 pairs (normalised images at 384 x 128, captions after their masking) and
    the pairs' ALR weights."""
    images = [seeded((8, 3, 384, 128), 31), seeded((8, 3, 384, 128), 32)]
    caption_ids = [captions(seed=33), captions(seed=34)]
    weights = torch.rand(8, generator=torch.Generator().manual_seed(35))
    return images, caption_ids, torch.tensor(PIDS), weights


# ------------------------------------------------------------------ evaluation
Q_PIDS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]          # 12 captions
G_PIDS = [0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 5, 2]          # 12 images


def eval_features(k: int) -> dict:
    """Twin k's {embedding: (caption features, image features)}: each near its person, with noise about as far
    as one person from another (BGE 512, fused 2048 dimensions)."""
    out = {}
    for emb, dim, noise in (("bge", 512, 5.0), ("fused", 2048, 7.0)):
        seed = 40 + 10 * k + (emb == "fused")
        people = seeded((6, dim), seed)
        out[emb] = (people[Q_PIDS] + seeded((12, dim), seed + 4, noise),
                    people[G_PIDS] + seeded((12, dim), seed + 2, noise))
    return out
