"""From the division's verdict to a ranking of the pairs, most suspect first, and what can be said of it: each
pair's rank among its identity's captions, the truth metrics under simulated noise (AUROC, precision at K), and the
summary by identity and by caption length.  Plain arrays in, plain arrays and dicts out: the audit, the page and
the benchmark (bench/audit_table.py, which ranks its baselines here too) share it."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

# caption length bins, in words: (first, last) inclusive
LENGTH_BINS = ((1, 10), (11, 20), (21, 30), (31, 40), (41, 60), (61, None))


def clean_probability(clean_probabilities: np.ndarray) -> np.ndarray:
    """[N] one pair's clean probability: the mean of its signals' (every embedding of every model)."""
    return np.asarray(clean_probabilities, dtype=np.float64).mean(axis=0)


def suspect_order(score: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Pair indices, most suspect first: lowest `score` first, then lowest `tie_break`, then lowest index.
    (Mixture posteriors saturate at 0 or 1 for many pairs; the similarity orders those among themselves.)"""
    n = len(score)
    keys = [np.arange(n)] + ([] if tie_break is None else [np.asarray(tie_break)]) + [np.asarray(score)]
    return np.lexsort(keys)


def ranks_of(order: np.ndarray) -> np.ndarray:
    """[N] 1-based position of each pair in `order`."""
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


@torch.no_grad()
def identity_ranks(features: list[tuple[dict, dict]], image_ids, pids) -> tuple[np.ndarray, np.ndarray]:
    """([N] rank, [N] count): where pair i's caption ranks, by similarity to pair i's image, among the captions of
    every pair of its identity (1 = its image's closest of them; count = how many there are).  The similarity is
    test.py's fused one: the cosine averaged over every embedding of every model."""
    image_ids, pids = torch.as_tensor(np.asarray(image_ids)), torch.as_tensor(np.asarray(pids))
    parts = [(F.normalize(img[e].float(), dim=-1)[image_ids], F.normalize(txt[e].float(), dim=-1))
             for img, txt in features for e in img]
    rank, count = torch.zeros(len(pids), dtype=torch.long), torch.zeros(len(pids), dtype=torch.long)
    order = torch.argsort(pids, stable=True)
    bounds = torch.unique_consecutive(pids[order], return_counts=True)[1].cumsum(0).tolist()
    start = 0
    for end in bounds:
        group = order[start:end]
        sims = sum(i[group] @ t[group].t() for i, t in parts) / len(parts)     # [pairs, captions] of the identity
        own = sims.diagonal()[:, None]
        rank[group] = 1 + (sims > own).sum(1)
        count[group] = len(group)
        start = end
    return rank.numpy(), count.numpy()


def truth_metrics(order: np.ndarray, is_clean: np.ndarray, flagged: np.ndarray | None = None) -> dict:
    """How well a ranking (most suspect first) finds the permuted pairs: AUROC, and precision at K with K = the
    number of permuted pairs (where precision equals recall); with `flagged` ([N] bool, e.g. clean probability
    below 0.5), their precision and recall too.  In percent."""
    noisy = ~np.asarray(is_clean, dtype=bool)
    k = int(noisy.sum())
    out = {"permuted": k, "pairs": len(noisy)}
    if 0 < k < len(noisy):
        out["auroc"] = 100.0 * roc_auc_score(noisy, len(order) - ranks_of(order))
        out["precision_at_k"] = 100.0 * noisy[order[:k]].mean()
    if flagged is not None:
        out["flagged"] = int(flagged.sum())
        out["flagged_precision"] = 100.0 * noisy[flagged].mean() if flagged.any() else float("nan")
        out["flagged_recall"] = 100.0 * noisy[flagged].sum() / k if k else float("nan")
    return out


def by_identity(identities: list[int], below: np.ndarray, top: int = 10) -> dict:
    """Pairs below the threshold per identity: how many identities have 0, 1, 2 ... of them, and the identities
    with the most (as a share of their pairs, then by count)."""
    pairs, flagged = Counter(identities), Counter(i for i, b in zip(identities, below) if b)
    histogram = Counter(flagged.get(i, 0) for i in pairs)
    worst = sorted(flagged, key=lambda i: (-flagged[i] / pairs[i], -flagged[i], i))[:top]
    return {"identities": len(pairs),
            "identities_by_pairs_below": {str(n): histogram[n] for n in sorted(histogram)},
            "most_below": [{"id": i, "below": flagged[i], "pairs": pairs[i]} for i in worst]}


def by_caption_length(captions: list[str], below: np.ndarray, is_clean: np.ndarray | None = None) -> list[dict]:
    """Per caption length bin (words): pairs, pairs below the threshold, and under simulated noise how many of
    them are permuted."""
    words = np.array([len(c.split()) for c in captions])
    rows = []
    for first, last in LENGTH_BINS:
        inside = (words >= first) & (words <= (last if last is not None else words.max(initial=0)))
        if not inside.any():
            continue
        row = {"words": f"{first}-{last}" if last is not None else f"{first}+", "pairs": int(inside.sum()),
               "below": int((below & inside).sum())}
        if is_clean is not None:
            row["permuted"] = int((~is_clean & inside).sum())
        rows.append(row)
    return rows
