"""The training loss: cross-entropy of the answer tokens only (the prompt is context, not a target)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .encoding import IGNORE, Encoder
from .examples import Example


def answer_loss(model, batch: dict, device) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy of the answer tokens, their number); the caller divides, so that micro-batches
    of one accumulated step weigh each token equally."""
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch).logits
    target = labels[:, 1:]                     # position t predicts token t + 1
    keep = target != IGNORE
    loss = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")
    return loss, int(keep.sum())


@torch.no_grad()
def mean_answer_loss(model, encoder: Encoder, examples: list[Example], batch_size: int, device) -> float:
    """Mean answer-token loss of examples (eval mode), e.g. before and after training on a fixed set."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        loss, n = answer_loss(model, encoder(examples[i:i + batch_size]), device)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)
