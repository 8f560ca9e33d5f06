"""torchrun support: process-group set-up, gathering (with gradients for the in-batch losses), sharding.

Every helper is the identity on a single process, so the training code reads the same either way.
"""
from __future__ import annotations

import os
import socket
import time

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
        _processes[:] = [None] * world_size()
        dist.all_gather_object(_processes, (_pid_space(), os.getpid()))
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


_processes: list = []    # (pid space, pid) of every rank, for telling which one has died


def _pid_space() -> str:
    """Where a pid means the same process: this kernel (its boot id) and this pid namespace (a container)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


def ended_ranks(wait: float = 0.0) -> dict[int, int]:
    """{rank: pid} of the other processes of this job on this machine that have ended (exited or killed, reaped
    or not), waiting up to `wait` seconds for one: a collective fails as soon as a peer's sockets close, a moment
    before its process is gone.  Processes on other machines cannot be seen from here."""
    here, deadline = _pid_space(), time.monotonic() + wait
    while True:
        ended = {r: pid for r, (host, pid) in enumerate(_processes)
                 if host == here and r != rank() and not _alive(pid)}
        if ended or time.monotonic() >= deadline:
            return ended
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")   # a zombie has ended
    except FileNotFoundError:
        return False
    except OSError:             # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def resume_command(run_dir: str) -> str:
    """The command that continues a run stopped under the launch it had (torchrun: the same processes)."""
    if world_size() == 1:
        return f"python main.py --resume {run_dir}"
    per_node, nodes = os.environ.get("LOCAL_WORLD_SIZE", world_size()), int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    if nodes == 1:
        return f"torchrun --nproc_per_node {per_node} main.py --resume {run_dir}"
    return (f"torchrun --nnodes {nodes} --nproc_per_node {per_node} (with this job's --node_rank, --master_addr and "
            f"--master_port on each node) main.py --resume {run_dir}")


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm's running statistics): DDP hands them over at the start of
    each forward, but each process's last training batch still moves its own, and without SyncBatchNorm (on the
    CPU) evaluation and the division would read per-process statistics that no checkpoint holds."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


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
