"""Evaluation, kept apart from training: features of a gallery and its queries, similarities, the table."""
from __future__ import annotations

import torch

from model import similarities
from utils.device import autocast
from utils.distributed import gather
from utils.metrics import metrics_table, rank_metrics
from utils.progress import progress as progress_bar


@torch.no_grad()
def encode_loader(model, loader, tower: str, device, dtype=None, progress: bool = True) -> dict[str, torch.Tensor]:
    """{embedding: [N, D]} fp32 features of every item of an image (tower='image') or caption loader, in order.

    Under torchrun each process encodes its shard (the loader's sampler) and every process gets the whole.
    """
    was_training = model.training
    model.eval()
    encode = model.encode_image if tower == "image" else model.encode_text
    parts = []
    for _, batch in progress_bar(loader, enabled=progress, desc=f"encoding {tower}s", leave=False):
        with autocast(device, dtype):
            parts.append({k: v.float() for k, v in encode(batch.to(device, non_blocking=True)).items()})
    model.train(was_training)
    return {name: gather(torch.cat([p[name] for p in parts])) for name in parts[0]}


def extract_features(model, image_loader, text_loader, device, dtype=None, progress: bool = True):
    """({embedding: [G, D]}, {embedding: [Q, D]}) of a gallery and its queries."""
    return (encode_loader(model, image_loader, "image", device, dtype, progress),
            encode_loader(model, text_loader, "caption", device, dtype, progress))


def similarity_rows(per_model_sims: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Rows of the table: each embedding of each model, each model's fusion, and the mean of everything.

    One model with BGE and TSE gives rows BGE, TSE and BGE+TSE (RDE's table).  Twins give model1/BGE, ...,
    model1 (its fusion), model2 ..., and 'ensemble' (the mean of all similarity matrices).
    """
    rows = {}
    prefix = len(per_model_sims) > 1
    for k, sims in enumerate(per_model_sims, 1):
        tag = f"model{k}/" if prefix else ""
        for name, s in sims.items():
            rows[tag + name.upper()] = s
        if len(sims) > 1:
            rows[f"model{k}" if prefix else "+".join(n.upper() for n in sims)] = sum(sims.values()) / len(sims)
    if prefix:
        every = [s for sims in per_model_sims for s in sims.values()]
        rows["ensemble"] = sum(every) / len(every)
    return rows


def embedding_rows(per_model_sims: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Rows as 3RTPR's rebuild reports them (eval_rows: embedding): each embedding of each model (twins only),
    then each embedding averaged over the models (its GE and FS rows: BGE, FUSED); no mean across embeddings."""
    rows = {}
    if len(per_model_sims) > 1:
        for k, sims in enumerate(per_model_sims, 1):
            rows.update({f"model{k}/{name.upper()}": s for name, s in sims.items()})
    for name in per_model_sims[0]:
        rows[name.upper()] = sum(sims[name] for sims in per_model_sims) / len(per_model_sims)
    return rows


ROWS = {"fusion": similarity_rows, "embedding": embedding_rows}     # eval_rows' values (configs/table.py)


class Evaluator:
    """Evaluates one or several models (twins) on an EvalSplit through its loaders; `rows` (eval_rows) says which
    similarity matrices make the table and which row is the headline."""

    def __init__(self, split, image_loader, text_loader, device, dtype=None, rows: str = "fusion"):
        self.split, self.image_loader, self.text_loader = split, image_loader, text_loader
        self.device, self.dtype, self.rows = device, dtype, rows

    def similarity_rows(self, models) -> dict[str, torch.Tensor]:
        per_model = []
        for model in models:
            image_feats, text_feats = extract_features(model, self.image_loader, self.text_loader,
                                                       self.device, self.dtype)
            per_model.append(similarities(image_feats, text_feats))
        return ROWS[self.rows](per_model)

    def headline(self, results: dict[str, dict]) -> str:
        """The row a run is judged by (its best checkpoint, the metrics log): the last (fusion / ensemble); under
        eval_rows embedding the across-model row of highest R1 (the rebuild keeps the better of GE and FS)."""
        if self.rows == "fusion":
            return list(results)[-1]
        across = [name for name in results if "/" not in name]
        return max(across, key=lambda name: results[name]["R1"])     # the first of equals

    def evaluate(self, models, title: str | None = None):
        """(metrics per row, printable table); `headline` names the row the run is judged by."""
        rows = self.similarity_rows(models)
        results = {name: rank_metrics(s, self.split.caption_pids, self.split.image_pids) for name, s in rows.items()}
        return results, metrics_table(results, title)
