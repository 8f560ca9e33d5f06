"""What the per-epoch division listens to: every training pair's primary loss under each embedding of each
model, read one of two ways (``division_read``), and the mean positive-pair cosine (ALR's s).

Each read returns ({signal name: [N] losses}, [N] positive cosine); a signal's name says whose it is:
`model_prefix` + EMB ('EMB' for one model, 'modelK/EMB' for twins; solver/division.py `model_of` reads it back).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils import distributed as dist
from utils.device import autocast
from evaluation.evaluator import extract_features
from utils.progress import progress

from .division import model_prefix


@torch.no_grad()
def division_losses(model, image_feats: dict, text_feats: dict, pids: torch.Tensor, order: torch.Tensor,
                    batch_size: int) -> dict[str, torch.Tensor]:
    """{embedding: [N]} per-pair value of the model's primary loss for each embedding it trains, with in-batch
    negatives as in training: pairs are taken in `order`, batch_size at a time (features are per pair:
    image_feats[e][i] is pair i's)."""
    losses = {}
    for chunk in order.split(batch_size):
        per = model.per_sample_losses({e: f[chunk] for e, f in image_feats.items()},
                                      {e: f[chunk] for e, f in text_feats.items()}, pids[chunk])
        for emb in trained_embeddings(model, per):
            row = losses.setdefault(emb, torch.zeros(len(pids), device=pids.device))
            row[chunk] = per[(emb, model.primary_loss)].float()
    return losses


def trained_embeddings(model, per_sample: dict) -> list[str]:
    """The embeddings whose primary loss `per_sample` (model.per_sample_losses' result) holds: those the model
    trains (loss_embeddings)."""
    return [emb for emb, name in per_sample if name == model.primary_loss]


@torch.no_grad()
def division_signals(models, features, image_ids, pids, order, batch_size: int, readers=None):
    """Per-sample loss of every training pair under each trained embedding of each model read (`readers`, their
    indices; default all) with in-batch negatives as in training, and the positive-pair cosine averaged over all
    of them.

    features[k] = ({emb: [images, D]}, {emb: [pairs, D]}) of the k-th model read; image_ids[i] is pair i's image.
    """
    signals, positive_sim = {}, torch.zeros(len(pids), device=pids.device)
    readers = range(len(models)) if readers is None else readers
    for k, (image_feats, text_feats) in zip(readers, features):
        model = models[k]
        image_feats = {e: f[image_ids] for e, f in image_feats.items()}     # pair i's image
        losses = division_losses(model, image_feats, text_feats, pids, order, batch_size)
        for emb in losses:
            positive_sim += F.cosine_similarity(image_feats[emb], text_feats[emb], dim=-1)
        prefix = model_prefix(k, len(models))
        signals.update({prefix + emb: v.cpu().numpy() for emb, v in losses.items()})
    return signals, (positive_sim / len(signals)).cpu().numpy()


def read_clean(engine, epoch: int, readers: list[int] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each image and caption once, unaugmented, like a test set; losses over batches of a seeded shuffle.
    `readers`: the models read (their indices; default all)."""
    records, device = engine.data.records, engine.device
    image_ids = torch.tensor([r.image_id for r in records], device=device)
    pids = torch.tensor([r.pid for r in records], device=device)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(engine.cfg.seed + epoch))
    readers = range(len(engine.models)) if readers is None else readers
    features = [extract_features(engine.models[k], *engine.data.division_loaders, device, engine.dtype)
                for k in readers]
    return division_signals(engine.models, features, image_ids, pids, order.to(device), engine.cfg.batch_size,
                            readers)


@torch.no_grad()
def read_augmented(engine, epoch: int, readers: list[int] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The published read (RDE's get_loss): per-pair loss on augmented training batches, in eval mode, with
    those batches' in-batch negatives; twins score each model on the other model's view (3RTPR).  `readers`:
    the models read (their indices; default all), as 3RTPR's rebuild reads one twin drawn at random."""
    models, device = engine.models, engine.device
    n, num_models = len(engine.data.records), len(models)
    readers = range(num_models) if readers is None else readers
    losses, positive_sim = {}, torch.zeros(n, device=device)
    for model in models:
        model.eval()
    engine.data.division_sampler.set_epoch(epoch)
    for batch in progress(engine.data.division_loader, dist.is_main(), desc=f"division {epoch}", leave=False):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        index, pids = dist.gather_batch(batch["index"]), dist.gather_batch(batch["pid"])
        for k in readers:
            model, view = models[k], (k + 1) % num_models
            with autocast(device, engine.dtype):
                image_feats = model.encode_image(engine.view_images(model, batch, view))
                text_feats = model.encode_text(batch["caption_ids"][:, view])
            image_feats = {e: dist.gather_batch(f) for e, f in image_feats.items()}
            text_feats = {e: dist.gather_batch(f) for e, f in text_feats.items()}
            per = model.per_sample_losses(image_feats, text_feats, pids)
            for emb in trained_embeddings(model, per):
                name = model_prefix(k, num_models) + emb
                losses.setdefault(name, torch.zeros(n, device=device))[index] = per[(emb, model.primary_loss)].float()
                positive_sim[index] += F.cosine_similarity(image_feats[emb].float(), text_feats[emb].float(), dim=-1)
    signals = {name: v.cpu().numpy() for name, v in losses.items()}
    return signals, (positive_sim / len(signals)).cpu().numpy()


READS = {"augmented": read_augmented, "clean": read_clean}     # division_read's values (configs/table.py)
