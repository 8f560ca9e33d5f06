"""THI's re-ranking (docs/METHOD.md §7.1, step 5), and the trained model's similarities it needs.

`RunSimilarity` scores any captions against the run's gallery exactly as test.py fuses its headline row (the
last entry of evaluation.evaluator.similarity_rows: BGE+TSE, or the twins' ensemble), with the gallery encoded once.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from datasets.loaders import CaptionList
from evaluation.evaluator import encode_loader, extract_features, similarity_rows
from model import similarities


def reranked(s_base: torch.Tensor, refined_rows: torch.Tensor, queries: list[int], anchors: list[int],
             lam: float) -> torch.Tensor:
    """S_final = lam S_base + (1 - lam) S_hat, where S_hat is S_base but for the refined queries, whose rows are
    the refined texts' similarities with 1 at their anchor."""
    s_hat = s_base.clone()
    if queries:
        q = torch.as_tensor(queries, dtype=torch.long)
        s_hat[q] = refined_rows.to(s_hat.dtype)
        s_hat[q, torch.as_tensor(anchors, dtype=torch.long)] = 1.0
    return lam * s_base + (1 - lam) * s_hat


class RunSimilarity:
    """A run's trained model(s) on its evaluation split: the base similarity and that of new captions."""

    def __init__(self, run, split: str = "test"):
        self.run = run
        evaluator = run.evaluator(split)
        self.split = evaluator.split
        self.image_feats, per_model = [], []
        for model in run.models:
            image_feats, text_feats = extract_features(model, evaluator.image_loader, evaluator.text_loader,
                                                       run.device, run.dtype)
            self.image_feats.append(image_feats)
            per_model.append(similarities(image_feats, text_feats))
        self.rows = similarity_rows(per_model)
        self.headline = list(self.rows)[-1]       # the row test.py reports last: the fusion / ensemble
        self.base = self.rows[self.headline].cpu()

    @torch.no_grad()
    def of_captions(self, captions: list[str]) -> torch.Tensor:
        """[len(captions), gallery] similarity, fused like the base; empty input gives [0, gallery]."""
        if not captions:
            return self.base.new_zeros((0, self.base.shape[1]))
        cfg = self.run.cfg
        loader = DataLoader(CaptionList(captions, cfg.text_length), batch_size=cfg.test_batch_size)
        per_model = [similarities(image_feats, encode_loader(model, loader, "caption", self.run.device, self.run.dtype))
                     for model, image_feats in zip(self.run.models, self.image_feats)]
        return similarity_rows(per_model)[self.headline].cpu()
