"""torchrun support: process-group set-up, gathering (with gradients for the in-batch losses), sharding.

Every helper is the identity on a single process, so the training code reads the same either way.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def init_distributed(device_name: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1) once; returns this process's device, or None
    on a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-sized per-rank tensors (a training batch) along dim 0, gradients flowing back to
    their owners.  No size exchange, hence no host-device sync: the training step calls it on every batch.

    Every rank then computes the loss of the whole global batch; with DDP's gradient averaging this gives
    exactly the gradient one process would get on that batch (each rank's copy sends its share back).
    """
    if world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate per-rank tensors of possibly different lengths along dim 0 (no gradient; the lengths are
    exchanged first, a host sync: for evaluation, not the training step)."""
    if world_size() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes)])


def shard(n: int) -> list[int]:
    """This rank's indices of n items, in contiguous blocks so that `gather` restores the order."""
    per = -(-n // world_size())
    return list(range(rank() * per, min(n, (rank() + 1) * per)))


def broadcast_object(obj):
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
