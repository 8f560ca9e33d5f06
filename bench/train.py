"""Training throughput of the real training step, on random tensors already on the device (the model, not the data).

One step is exactly the engine's: `Engine.train_step` (every model's forward under autocast, the per-sample
losses weighted by the division's weights and --loss_weights, summed) of `solver.build.build_engine(cfg,
num_classes=...)` (the method's engine without data), then `Engine.optimizer_step` (zero_grad, GradScaler
backward, the fused optimiser steps).  FLOPs of
one forward+backward are counted with torch.utils.flop_counter on the uncompiled model(s); model FLOP
utilisation (MFU) = FLOPs per step / step time / the device's dense bf16 peak.

    python bench/train.py                                   # GPU: ViT-B/16 at 384x128, batch 64 and 128
    python bench/train.py --models 1 2 --compile            # single and twin, compiled
    python bench/train.py --small                           # CPU: a tiny CLIP
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import (add_common_args, clip_summary, finish_args, free_memory, peak_memory_gib,  # noqa: E402
                          peak_tflops, random_caption_ids, report, reset_peak_memory, timed, write_partial)

# the tiny CLIP of --small (the demo's size class)
SMALL_ARCH = {"embed_dim": 64, "vision_width": 64, "vision_layers": 2, "vision_heads": 2,
              "text_width": 64, "text_heads": 2, "text_layers": 2}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, nargs="+", default=None, help="per-model batch sizes (GPU: 64 128; small: 8)")
    p.add_argument("--models", type=int, nargs="+", choices=(1, 2), default=None,
                   help="1 = one model, 2 = reciprocal twins; several values give several rows (default 1)")
    p.add_argument("--twin", action="store_true", help="same as --models 2")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (as --compile in training)")
    p.add_argument("--embeddings", nargs="+", default=["bge", "tse"], help="embedding heads (model/embeddings)")
    p.add_argument("--loss_names", default="TAL", help="as in training, e.g. TAL, TAL+ID, SDM+ID")
    p.add_argument("--rda", action="store_true", help="ICL: also the TAL on (image, RDA caption): a third text pass")
    p.add_argument("--steps", type=int, default=None, help="timed steps (GPU 50, small 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 10, 30 with --compile; small 1)")
    p.add_argument("--img_size", type=int, nargs=2, default=None, metavar=("H", "W"), help="GPU 384 128, small 128 64")
    p.add_argument("--text_length", type=int, default=None, help="GPU 77, small 32")
    p.add_argument("--clip_arch", type=str, default=None,
                   help="CLIPConfig fields as YAML, e.g. '{vision_layers: 2}' (GPU: ViT-B/16, small: a tiny CLIP)")
    p.add_argument("--tse_dim", type=int, default=None, help="TSE output dimension (GPU 1024, small 128)")
    p.add_argument("--num_classes", type=int, default=11003, help="identities (the ID loss's classifier): CUHK 11003")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--peak_tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s (overrides the table)")
    return add_common_args(p)


def resolve_defaults(args):
    small = args.small
    args.batch_size = args.batch_size or ([8] if small else [64, 128])
    args.models = args.models or ([2] if args.twin else [1])
    args.steps = args.steps or (3 if small else 50)
    if args.warmup is None:
        args.warmup = 1 if small else (30 if args.compile else 10)
    return model_size_defaults(args)


def model_size_defaults(args):
    """Image size, text length, TSE size and CLIP architecture: tiny with --small, ViT-B/16 at 384x128 otherwise."""
    small = args.small
    args.img_size = args.img_size or ([128, 64] if small else [384, 128])
    args.text_length = args.text_length or (32 if small else 77)
    args.tse_dim = args.tse_dim or (128 if small else 1024)
    if args.clip_arch is None:
        args.clip_arch = dict(SMALL_ARCH) if small else {}
    elif isinstance(args.clip_arch, str):
        import yaml
        args.clip_arch = yaml.safe_load(args.clip_arch) or {}
    return args


def make_cfg(args, batch_size: int, num_models: int):
    from configs import resolve

    return resolve({"pretrain_choice": "random", "clip_arch": args.clip_arch, "img_size": list(args.img_size),
                    "text_length": args.text_length, "embeddings": list(args.embeddings),
                    **({"tse_dim": args.tse_dim} if "tse" in args.embeddings else {}),   # TSE's: else refused
                    "loss_names": args.loss_names, "batch_size": batch_size, "twin": num_models == 2,
                    "compile": args.compile, "device": str(args.device), "precision": args.precision,
                    "seed": args.seed}, {})


def random_batch(args, cfg, batch_size: int, num_models: int) -> dict:
    """What the train loader yields (dict of [B, V, ...] views), already on the device."""
    g = torch.Generator().manual_seed(args.seed)
    h, w = cfg.img_size
    vocab = cfg.clip_arch.get("vocab_size", 49408)

    def ids():
        return torch.stack([random_caption_ids(batch_size, cfg.text_length, g, vocab) for _ in range(num_models)], 1)

    batch = {"images": torch.randint(0, 256, (batch_size, num_models, 3, h, w), generator=g, dtype=torch.uint8),
             "caption_ids": ids(),
             "pid": torch.randint(0, max(args.num_classes, 1), (batch_size,), generator=g),
             "index": torch.arange(batch_size)}
    if args.rda:
        batch["rda_ids"] = ids()
    return {k: v.to(args.device) for k, v in batch.items()}


def make_step(trainer, batch, weights, epoch: int = 1):
    def step():
        # the body of the engine's training loop (no host sync: no .item())
        loss, _parts = trainer.train_step(batch, weights, epoch)
        trainer.optimizer_step(loss)
    return step


def count_flops(trainer, batch, weights, epoch: int = 1) -> int:
    """FLOPs of one forward + backward of every model, uncompiled: the count is the model's, not the kernels'."""
    runners, trainer.runners = trainer.runners, trainer.models
    try:
        with FlopCounterMode(display=False) as counter:
            loss, _ = trainer.train_step(batch, weights, epoch)
            loss.backward()
    finally:
        trainer.runners = runners
    for m in trainer.models:
        m.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_one(args, batch_size: int, num_models: int) -> dict:
    device = args.device
    if args.compile:
        # every setting compiles afresh: left alone, dynamo would see a second batch size of the same forward and
        # recompile it with dynamic shapes, so the second row would time another (slower) kind of graph
        torch._dynamo.reset()
    from solver.build import build_engine

    cfg = make_cfg(args, batch_size, num_models)
    trainer = build_engine(cfg, num_classes=args.num_classes)     # models and optimisers, no data
    args._model = clip_summary(trainer.models[0])
    batch = random_batch(args, cfg, batch_size, num_models)
    weights = (torch.rand(batch_size, generator=torch.Generator().manual_seed(args.seed)) > 0.1).float().to(device)
    flops = count_flops(trainer, batch, weights)
    step = make_step(trainer, batch, weights)
    compile_s, _ = timed(step, device)          # first step (compiles under --compile)
    for _ in range(max(args.warmup - 1, 0)):
        step()
    reset_peak_memory(device)
    step_s, _ = timed(step, device, repeat=args.steps)
    peak = peak_tflops(device, args.peak_tflops)
    achieved = flops / step_s / 1e12
    row = {
        "models": num_models, "batch_size": batch_size, "compile": bool(args.compile),
        "embeddings": "+".join(args.embeddings), "img_size": "x".join(map(str, args.img_size)),
        "step_ms": 1000 * step_s,
        "pairs_per_s": batch_size / step_s,                        # pairs each model trains on per second
        "model_pairs_per_s": num_models * batch_size / step_s,     # summed over the models
        "gflop_per_step": flops / 1e9,
        "gflop_per_pair": flops / 1e9 / (batch_size * num_models),  # forward+backward of one model on one pair
        "tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_tflops": peak,
        "peak_mem_gib": peak_memory_gib(device),
        "first_step_s": compile_s,
        "steps": args.steps, "warmup": args.warmup,
    }
    del trainer, batch
    free_memory(device)
    return row


COLUMNS = [("models", "models"), ("batch_size", "batch"), ("compile", "compile"), ("step_ms", "step ms"),
           ("pairs_per_s", "pairs/s per model"), ("model_pairs_per_s", "model-pairs/s"),
           ("gflop_per_pair", "GFLOP/pair f+b"), ("tflops", "TFLOP/s"), ("mfu", "MFU"),
           ("peak_mem_gib", "peak GiB"), ("first_step_s", "1st step s")]


def main(argv=None) -> dict:
    args = resolve_defaults(finish_args(build_parser().parse_args(argv)))
    rows = []
    for m in args.models:
        for b in args.batch_size:
            rows.append(bench_one(args, b, m))
            write_partial("train", args, rows, {"model": args._model})   # kept if stopped (bench.suite's limits)
    single = {r["batch_size"]: r["step_ms"] for r in rows if r["models"] == 1}
    for r in rows:  # the twin's cost relative to one model at the same batch
        r["time_vs_single"] = r["step_ms"] / single[r["batch_size"]] if r["batch_size"] in single else None
    cols = COLUMNS + ([("time_vs_single", "time / single")] if len(set(args.models)) > 1 else [])
    return report("train", args, rows, cols,
                  extra={"model": args._model,
                         "reference": {"rde_published_h100_pairs_per_s": 395, "target_mfu": 0.45,
                                       "guide_gflop_per_pair": 122}})


if __name__ == "__main__":
    main()
