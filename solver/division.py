"""Per-epoch clean/noisy division (RDE's consensus clean division, docs/METHOD.md §4.1-§4.3).

Each division signal (a per-sample loss vector: one per embedding per model) is min-max normalised and
split by a two-component Gaussian mixture; the signals then vote.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture


def gmm_settings(noisy_rate: float, dataset_name: str, overrides: dict | None = None) -> dict:
    """RDE's mixture settings: loose for mild noise, tight for heavy noise and for RSTPReid."""
    if noisy_rate > 0.4 or dataset_name == "RSTPReid":
        settings = {"max_iter": 100, "tol": 1e-4, "reg_covar": 1e-6}
    else:
        settings = {"max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}
    settings.update(overrides or {})
    return settings


def clean_probability(losses: np.ndarray, settings: dict, seed: int = 0) -> np.ndarray:
    """Posterior of the lower-mean mixture component for each sample."""
    x = np.asarray(losses, dtype=np.float64)
    span = x.max() - x.min()
    x = (x - x.min()) / (span if span > 0 else 1.0)
    gmm = GaussianMixture(n_components=2, random_state=seed, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # max_iter 10 is the published setting
        gmm.fit(x[:, None])
    return gmm.predict_proba(x[:, None])[:, int(gmm.means_.argmin())]


def votes_from_probability(p_clean: np.ndarray) -> np.ndarray:
    """Clean when p_clean > 0.5.  If that is everyone, RDE's split_prob moves the threshold to the (N // 100)-th
    smallest p_clean, so the N // 100 + 1 pairs of lowest p_clean become noisy."""
    if (p_clean > 0.5).all():
        return p_clean > np.sort(p_clean)[len(p_clean) // 100]
    return p_clean > 0.5


def consensus(votes: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """CCD: weight 1 where every signal says clean, 0 where all say noisy, a fair coin where they disagree."""
    votes = torch.as_tensor(votes, dtype=torch.bool)          # [signals, N]
    all_clean, any_clean = votes.all(dim=0), votes.any(dim=0)
    coin = torch.randint(0, 2, (votes.shape[1],), generator=generator).bool()
    return (all_clean | (any_clean & coin)).float()


def alr_weights(votes: np.ndarray, positive_sim: np.ndarray, k: float, mu_stat: str = "min") -> torch.Tensor:
    """3RTPR's adaptive loss refinement: nothing dropped, pairs less similar than the clean ones weigh less.

    mu = a statistic (min, mean or pNN percentile) of the positive-pair cosine s over the consensus-clean set
    (every signal says clean); w = 1 where s >= mu, else sigmoid(k s / mu).
    """
    s = torch.as_tensor(positive_sim, dtype=torch.float64)
    clean = torch.as_tensor(votes, dtype=torch.bool).all(dim=0)
    ref = s[clean] if clean.any() else s
    if mu_stat == "min":
        mu = ref.min()
    elif mu_stat == "mean":
        mu = ref.mean()
    elif mu_stat.startswith("p") and mu_stat[1:].replace(".", "", 1).isdigit():
        mu = torch.quantile(ref, float(mu_stat[1:]) / 100)
    else:
        raise ValueError(f"alr_mu {mu_stat!r}: use min, mean or pNN (a percentile such as p5)")
    mu = mu.clamp(min=1e-6)
    return torch.where(s >= mu, torch.ones_like(s), torch.sigmoid(k * s / mu)).float()


def division_quality(weights: torch.Tensor, is_clean: np.ndarray | None) -> dict:
    """With simulated noise the truth is known: how well the division finds the permuted pairs.

    A pair counts as flagged noisy when its weight is below 0.5 (0 under CCD).
    """
    flagged = weights < 0.5
    stats = {"kept": int((~flagged).sum()), "total": int(len(weights)), "mean_weight": float(weights.mean())}
    if is_clean is not None:
        clean = torch.as_tensor(is_clean, dtype=torch.bool)
        hit = int((flagged & ~clean).sum())
        stats["noise_precision"] = 100.0 * hit / max(int(flagged.sum()), 1)
        stats["noise_recall"] = 100.0 * hit / max(int((~clean).sum()), 1)
        stats["mean_weight_clean"] = float(weights[clean].mean()) if clean.any() else float("nan")
        stats["mean_weight_noisy"] = float(weights[~clean].mean()) if (~clean).any() else float("nan")
    return stats
