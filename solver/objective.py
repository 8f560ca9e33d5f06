"""What a training batch costs: the per-sample losses weighted by the division, plus ICL's RDA term."""
from __future__ import annotations

import torch


def rda_weight(epoch: int) -> float:
    """ICL's schedule for the (image, RDA caption) term: max(0.1, 1 - 0.03 epoch)."""
    return max(0.1, 1 - 0.03 * epoch)


def weighted_loss(model, per_sample: dict, weights: torch.Tensor, loss_weights: dict,
                  rda: dict | None = None, rda_factor: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum over embeddings and losses of loss_weight * reduce(w_i * loss_i); RDA pairs add the model's primary
    loss (TAL) times rda_factor.  Returns the total and its detached parts named 'embedding_loss'."""
    terms = [(name, emb, v, 1.0) for (emb, name), v in per_sample.items()]
    if rda is not None and rda_factor:  # ICL: the primary loss on (image, RDA caption), every embedding
        terms += [(f"rda_{name}", emb, v, rda_factor) for (emb, name), v in rda.items() if name == model.primary_loss]
    total, parts = 0.0, {}
    for name, emb, values, factor in terms:
        weighted = (weights * values.float()).sum()
        if model.losses[emb][name.removeprefix("rda_")].reduction == "mean":
            weighted = weighted / len(values)
        total = total + factor * loss_weights.get(name, 1.0) * weighted
        parts[f"{emb}_{name}"] = weighted.detach()
    return total, parts
