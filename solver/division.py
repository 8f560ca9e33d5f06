"""Per-epoch clean/noisy division (RDE's consensus clean division, docs/METHOD.md §4.1-§4.3), and `Division`, what
every weighting rule (solver/weighting/) receives.

Each division signal (a per-sample loss vector: one per embedding per model) is min-max normalised and
split by a two-component Gaussian mixture; the signals then vote.  The formulas the rules use (the consensus,
ALR's mu and weights) are plain functions here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture


def gmm_settings(noisy_rate: float, dataset_name: str, overrides: dict | None = None,
                 tight_under_noise: bool = True) -> dict:
    """RDE's mixture settings: loose for mild noise, tight for heavy noise (unless not `tight_under_noise`, as
    3RTPR's rebuild) and for RSTPReid."""
    if (tight_under_noise and noisy_rate > 0.4) or dataset_name == "RSTPReid":
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


def model_prefix(k: int, num_models: int) -> str:
    """What names model k's signals and loss parts (k from 0): '' for one model, 'modelK/' (K = k + 1) for twins."""
    return f"model{k + 1}/" if num_models > 1 else ""


def model_of(signal: str) -> int:
    """The model (from 0) a signal named by model_prefix is of: 'model2/bge' -> 1, 'bge' -> 0."""
    head, slash, _ = signal.partition("/")
    return int(head.removeprefix("model")) - 1 if slash else 0


@dataclass(frozen=True)
class Division:
    """One epoch's division, as a weighting rule receives it (``rule(division) -> weights``, solver/weighting/).

    Rows of `clean` and `votes` follow `signals` in order; N is the number of training pairs.  Build it from
    signals with `Division.fit`, or for a run and epoch with its engine: ``engine.division(epoch)`` (reads the
    pairs with the run's models), ``engine.fit_division(signals, positive_sim, epoch)`` (signals given).
    """
    epoch: int
    seed: int                        # the run's seed: a rule's random draws come from (seed, epoch), so resumable
    models: int                      # how many models train: a rule returns [N] (all of them) or [models, N]
    signals: dict[str, np.ndarray]   # {name: [N] each pair's primary loss}; names 'EMB', or 'modelK/EMB' for twins
    owners: list[int]                # the model (from 0) each signal is of
    clean: np.ndarray                # [signals, N] float: each signal's mixture posterior that the pair is clean
    votes: np.ndarray                # [signals, N] bool: each signal calls the pair clean (votes_from_probability)
    positive_sim: np.ndarray         # [N] each pair's image-text cosine, the mean over the signals read (ALR's s)

    @classmethod
    def fit(cls, signals: dict[str, np.ndarray], positive_sim: np.ndarray, epoch: int, seed: int, models: int,
            settings: dict) -> "Division":
        """Each signal's two-component mixture (gmm_settings' `settings`, seeded by seed + epoch) and votes."""
        clean = np.stack([clean_probability(v, settings, seed=seed + epoch) for v in signals.values()])
        return cls(epoch, seed, models, dict(signals), [model_of(name) for name in signals], clean,
                   np.stack([votes_from_probability(p) for p in clean]), np.asarray(positive_sim))

    @property
    def pairs(self) -> int:
        return len(self.positive_sim)

    def of_model(self, k: int) -> "Division":
        """The signals of model k alone (co-teaching, co-divide: each twin divides by its own)."""
        rows = [i for i, owner in enumerate(self.owners) if owner == k]
        if not rows:
            raise ValueError(f"the division of epoch {self.epoch} read no signal of model {k + 1} (it read "
                             f"{', '.join(self.signals)}): a rule that divides per model needs every model read")
        names = [list(self.signals)[i] for i in rows]
        return replace(self, signals={n: self.signals[n] for n in names}, owners=[k] * len(rows),
                       clean=self.clean[rows], votes=self.votes[rows])

    def by_model(self) -> list["Division"]:
        """of_model of each model, in model order."""
        return [self.of_model(k) for k in range(self.models)]


def consensus(votes: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """CCD: weight 1 where every signal says clean, 0 where all say noisy, a fair coin where they disagree."""
    votes = torch.as_tensor(votes, dtype=torch.bool)          # [signals, N]
    all_clean, any_clean = votes.all(dim=0), votes.any(dim=0)
    coin = torch.randint(0, 2, (votes.shape[1],), generator=generator).bool()
    return (all_clean | (any_clean & coin)).float()


def alr_mu(positive_sim, reference, stat: str = "min") -> torch.Tensor:
    """ALR's mu: a statistic of the positive-pair cosine s over the reference pairs (a bool mask; the
    consensus-clean set), all pairs when none is: min (3RTPR), mean, or pNN, the NN-th percentile (linear
    interpolation, torch.quantile)."""
    s = torch.as_tensor(positive_sim, dtype=torch.float64)
    reference = torch.as_tensor(reference, dtype=torch.bool)
    ref = s[reference] if reference.any() else s
    if stat == "min":
        return ref.min()
    if stat == "mean":
        return ref.mean()
    if stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit():
        return torch.quantile(ref, float(stat[1:]) / 100)
    raise ValueError(f"alr_mu {stat!r}: use min, mean or pNN (a percentile such as p5)")


# how mu and k turn a cosine below mu into a weight (alr_weights' `form`)
ALR_FORMS = ("paper", "release")


def alr_weights(positive_sim, mu, k: float, form: str = "paper") -> torch.Tensor:
    """3RTPR's adaptive loss refinement: each pair's weight from its positive-pair cosine s and the clean pairs'
    mu (alr_mu).  Nothing is dropped: w = 1 where s >= mu; below mu,

      paper    w = sigmoid(k s / mu'), mu' = max(mu, 1e-6), also in the comparison (configs/3rtpr)
      release  3RTPR's rebuild (_adjust_margin_loss, mode 1, k 5): x = s / (mu + 1e-7), and for mu < 0,
               x - |x| (0 where s and mu share a sign, else 2x); w = sigmoid(k x) (configs/3rtpr_release)

    So for mu < 0 the paper reading weighs the pairs below mu ~0, the release 0.5.  Returns float32 [N]."""
    s = torch.as_tensor(positive_sim, dtype=torch.float64)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    if form == "paper":
        mu = mu.clamp(min=1e-6)
        x = s / mu
    elif form == "release":
        x = s / (mu + 1e-7)
        if mu < 0:
            x = x - x.abs()
    else:
        raise ValueError(f"ALR form {form!r}: one of {', '.join(ALR_FORMS)}")
    return torch.where(s >= mu, torch.ones_like(s), torch.sigmoid(k * x)).float()


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
