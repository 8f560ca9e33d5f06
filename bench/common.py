"""What every benchmark shares: the device and its bf16 peak, timing, synthetic inputs, the table and the JSON.

Each bench script builds an argparse parser with `add_common_args`, measures rows (one dict each), then calls
`report(...)`, which prints ONE prettytable and, with `--json PATH`, writes
`{"bench", "device", "args", "rows", "complete"}` (rows = the same dicts as the table, full precision).  A script
whose rows take long writes them as they come with `write_partial` (`"complete": false`), so that
`python -m bench.suite`, which stops each script at its time limit, keeps what was measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:           # `python bench/x.py` puts bench/ first on the path, not the repo root
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from prettytable import PrettyTable  # noqa: E402

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.  Matched in order
# against torch.cuda.get_device_name(): the first entry whose every word occurs in the name wins, so the
# specific variants (PCIe, NVL) come before the generic name.
PEAK_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),          # SXM (e.g. "NVIDIA H100 80GB HBM3")
    (("H200",), 989.0),
    (("H20",), 148.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("4090",), 165.0),
]

# CUHK-PEDES's training set: what the division pass goes over every epoch
CUHK_TRAIN = {"captions": 68_126, "images": 34_054, "ids": 11_003}


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("common")
    g.add_argument("--small", dest="small", action="store_true", default=None,
                   help="small CPU shapes (default when there is no CUDA)")
    g.add_argument("--full", dest="small", action="store_false",
                   help="the real shapes (default when there is CUDA)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--json", default="", metavar="PATH", help="also write the results as JSON to PATH")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve --small / --device once; apply --threads."""
    from utils.device import resolve_device

    args.device = resolve_device(args.device)
    if args.small is None:
        args.small = args.device.type != "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
        # as build_engine does: TF32 for the fp32 matmuls autocast leaves alone
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return args


# ---------------------------------------------------------------------------- device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "name": device_name(device), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    sm_count=props.multi_processor_count)
    return info


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOP/s (None on CPU or an unknown GPU: MFU is then n/a)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    return lookup_peak(torch.cuda.get_device_name(device))


def lookup_peak(name: str) -> float | None:
    words = name.replace("-", " ").split()
    for keys, tflops in PEAK_BF16_TFLOPS:
        if all(any(k.lower() == w.lower() or (k.isdigit() and k in w) for w in words) for k in keys):
            return tflops
    return None


# ---------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 1) -> tuple[float, object]:
    """(seconds per call, last result): synchronised before and after the whole region, never inside it."""
    sync(device)
    start = time.perf_counter()
    out = None
    for _ in range(repeat):
        out = fn()
    sync(device)
    return (time.perf_counter() - start) / repeat, out


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- synthetic inputs


def random_caption_ids(n: int, length: int, generator: torch.Generator, vocab_size: int = 49408,
                       min_tokens: int = 15, max_tokens: int = 60) -> torch.Tensor:
    """[n, length] CLIP-tokenised-looking captions: SOT, 15-60 random word tokens (CUHK captions have ~30), EOT,
    zero padding.  EOT keeps the largest id, as encode_text and TSE's token selection expect (a smaller test
    vocabulary puts SOT / EOT at its last two ids)."""
    from utils.tokenizer import EOT_ID, SOT_ID

    if vocab_size <= EOT_ID:
        SOT_ID, EOT_ID = vocab_size - 2, vocab_size - 1
    body_max = SOT_ID
    lengths = torch.randint(min(min_tokens, length - 2), min(max_tokens, length - 2) + 1, (n,), generator=generator)
    ids = torch.zeros(n, length, dtype=torch.long)
    ids[:, 0] = SOT_ID
    body = torch.randint(1, body_max, (n, length), generator=generator)
    pos = torch.arange(length)
    inside = (pos[None] >= 1) & (pos[None] <= lengths[:, None])
    ids = torch.where(inside, body, ids)
    ids[torch.arange(n), lengths + 1] = EOT_ID
    return ids


# ---------------------------------------------------------------------------- model


def clip_summary(model) -> dict:
    """The architecture a RetrievalModel was built with, and the shapes of the tensors that fix its sizes (in the
    JSON: bench.suite --rehearse checks them against ViT-B/16 at 384x128)."""
    import dataclasses

    clip = model.backbone
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(clip.config).items()}
    return {"clip": cfg, "params": sum(p.numel() for p in model.parameters()),
            "shapes": {"patch_embedding": list(clip.visual.conv1.weight.shape),
                       "vision_positions": list(clip.visual.positional_embedding.shape),
                       "vision_blocks": len(clip.visual.transformer.resblocks),
                       "token_embedding": list(clip.token_embedding.weight.shape),
                       "text_positions": list(clip.positional_embedding.shape),
                       "text_blocks": len(clip.transformer.resblocks)},
            "embeddings": {name: head.out_dim for name, head in model.embeddings.items()}}


# ---------------------------------------------------------------------------- output


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def report(bench: str, args: argparse.Namespace, rows: list[dict], columns: Sequence[tuple[str, str]] | None = None,
           title: str | None = None, extra: dict | None = None) -> dict:
    """Print one table (columns: (key, header) pairs; default every key of the first row) and maybe write JSON."""
    columns = list(columns or [(k, k) for k in rows[0]])
    table = PrettyTable([h for _, h in columns])
    table.title = title or f"bench/{bench}.py on {device_name(args.device)}"
    for row in rows:
        table.add_row([_cell(row.get(k)) for k, _ in columns])
    table.align = "r"
    print(table, flush=True)
    payload = make_payload(bench, args, rows, extra, complete=True)
    write_json(args.json, payload)
    return payload


def make_payload(bench: str, args: argparse.Namespace, rows: list[dict], extra: dict | None = None,
                 complete: bool = True) -> dict:
    return {"bench": bench, "device": device_info(args.device),
            "args": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()
                     if not k.startswith("_")},
            "rows": rows, "complete": complete, **(extra or {})}


def write_partial(bench: str, args: argparse.Namespace, rows: list[dict], extra: dict | None = None) -> None:
    """With --json, write the rows measured so far (`"complete": false`): a script stopped at a time limit (as
    `python -m bench.suite` does) still leaves them; `report` overwrites the file with the whole table."""
    if rows:
        write_json(args.json, make_payload(bench, args, rows, extra, complete=False))


def write_json(path: str, payload: dict) -> None:
    """Write to PATH.tmp, then rename: a process killed while writing never leaves half a file at PATH."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)
