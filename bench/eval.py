"""Evaluation time of a test set the size of CUHK-PEDES (3,074 images, 6,156 captions) and ICFG-PEDES (19,848 / 19,848).

A randomly initialised full-size model (ViT-B/16 at 384x128, BGE + TSE) encodes in-memory random images and
captions through the evaluator's own `encode_loader` (the model's encode_image / encode_text under autocast,
bf16 on CUDA, batch 512); then `model.similarities` + `similarity_rows` (the fused BGE+TSE row) and
`rank_metrics` on the fused similarity, each timed apart.  Disk reads and JPEG decoding are not included
(bench/data.py measures the loader).  "metrics all rows" is what test.py / the Evaluator computes (one
rank_metrics per table row: BGE, TSE, BGE+TSE).

    python bench/eval.py                          # GPU: both sets at full size
    python bench/eval.py --small                  # CPU: tiny model; metrics capped at 5k x 5k
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import (add_common_args, clip_summary, finish_args, free_memory, peak_memory_gib,  # noqa: E402
                          random_caption_ids, report, reset_peak_memory, timed)
from bench.train import model_size_defaults  # noqa: E402

# name: (gallery images, query captions, identities)
SETS = {"cuhk": (3074, 6156, 1000), "icfg": (19848, 19848, 1000), "rstp": (1000, 2000, 200),
        "ufine": (1340, 2680, 680)}
TITLES = {"cuhk": "CUHK-PEDES", "icfg": "ICFG-PEDES", "rstp": "RSTPReid", "ufine": "UFine6926"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["cuhk", "icfg"], choices=sorted(SETS), help="test-set sizes")
    p.add_argument("--max_pairs", type=float, default=None,
                   help="cap on images x captions: a larger set is scaled down on both axes (GPU: none; small: 25e6, "
                        "i.e. 5k x 5k, since a 20k x 20k rank_metrics takes ~2 min on 2 CPU cores)")
    p.add_argument("--max_captions", type=int, default=0,
                   help="cap on each set's captions (queries), the gallery kept whole (0: none); e.g. 1416 = one "
                        "rank_metrics chunk of 1024 and a last one of 392, as ICFG-PEDES's 19,848 queries end")
    p.add_argument("--encode_max", type=int, default=0,
                   help="encode at most this many images and captions of each set with the model and fill the "
                        "rest of the features with random ones of the same size, so that similarity and metrics "
                        "still run at the set's size (0: encode everything; bench.suite --rehearse on a CPU)")
    p.add_argument("--batch_size", type=int, default=512, help="encoding batch (the test_batch_size default)")
    p.add_argument("--img_size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--text_length", type=int, default=None)
    p.add_argument("--clip_arch", type=str, default=None, help="CLIPConfig fields as YAML (GPU: ViT-B/16; small: tiny)")
    p.add_argument("--tse_dim", type=int, default=None, help="TSE output dimension (GPU 1024, small 128)")
    p.add_argument("--embeddings", nargs="+", default=["bge", "tse"])
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--chunk_size", type=int, default=1024, help="rank_metrics query chunk")
    p.add_argument("--all_rows", action=argparse.BooleanOptionalAction, default=True,
                   help="also time rank_metrics over every table row, as test.py does")
    p.add_argument("--read_images", action="store_true",
                   help="also time reading each set's gallery as JPEGs (synthetic, written first) through the eval "
                        "loader with and without the image cache (bench/data.py read_times)")
    p.add_argument("--read_workers", type=int, default=None, help="loader workers of --read_images (default: 2 "
                                                                   "small, 8 otherwise)")
    return add_common_args(p)


def resolve_defaults(args):
    small = args.small
    if args.max_pairs is None:
        args.max_pairs = 25e6 if small else 0
    return model_size_defaults(args)


def set_size(name: str, max_pairs: float, max_captions: int = 0) -> tuple[int, int, int]:
    images, captions, ids = SETS[name]
    if max_pairs and images * captions > max_pairs:
        f = math.sqrt(max_pairs / (images * captions))
        images, captions, ids = max(1, int(images * f)), max(1, int(captions * f)), max(1, min(ids, int(images * f)))
    if max_captions:
        captions = min(captions, max_captions)
    return images, captions, ids


class RepeatedBatches:
    """A stand-in for the eval DataLoader: (index, batch) pairs covering `total` items, every batch a slice of one
    random device tensor (in memory: no decoding, no host-to-device copy)."""

    def __init__(self, data: torch.Tensor, total: int, batch_size: int):
        self.data, self.total, self.batch_size = data, total, batch_size

    def __len__(self):
        return math.ceil(self.total / self.batch_size)

    def __iter__(self):
        for start in range(0, self.total, self.batch_size):
            n = min(self.batch_size, self.total - start)
            yield torch.arange(start, start + n), self.data[:n]


def build_model_for_eval(args):
    from model import build_model
    from configs import resolve

    cfg = resolve({"pretrain_choice": "random", "clip_arch": args.clip_arch, "img_size": list(args.img_size),
                   "text_length": args.text_length, "embeddings": list(args.embeddings),
                   **({"tse_dim": args.tse_dim} if "tse" in args.embeddings else {}),  # TSE's: else refused
                   "seed": args.seed}, {})
    torch.manual_seed(args.seed)
    return build_model(cfg, 1).to(args.device).eval(), cfg


def encode(args, model, loader: RepeatedBatches, tower: str, dtype) -> dict[str, torch.Tensor]:
    """encode_loader over the loader's items; with --encode_max, over the first encode_max of them, the rest of
    the rows random features of the same size (the similarity and ranking still see the whole set)."""
    from evaluation.evaluator import encode_loader

    total = loader.total
    if args.encode_max and total > args.encode_max:
        loader = RepeatedBatches(loader.data, args.encode_max, loader.batch_size)
    feats = encode_loader(model, loader, tower, args.device, dtype, progress=False)
    if loader.total < total:
        g = torch.Generator().manual_seed(args.seed + (tower == "image"))
        feats = {k: torch.cat([v, torch.randn(total - len(v), *v.shape[1:], generator=g).to(v)])
                 for k, v in feats.items()}
    return feats


def bench_set(args, model, name: str, dtype) -> dict:
    from model import similarities
    from evaluation.evaluator import encode_loader, similarity_rows
    from utils.metrics import rank_metrics

    device = args.device
    num_images, num_captions, num_ids = set_size(name, args.max_pairs, args.max_captions)
    g = torch.Generator().manual_seed(args.seed)
    b = args.batch_size
    images = torch.randint(0, 256, (min(b, num_images), 3, *args.img_size), generator=g, dtype=torch.uint8).to(device)
    ids = random_caption_ids(min(b, num_captions), args.text_length, g,
                             args.clip_arch.get("vocab_size", 49408)).to(device)
    image_pids = torch.arange(num_images) % num_ids
    caption_pids = image_pids[torch.arange(num_captions) * num_images // num_captions]   # ~captions/images per image
    image_loader, text_loader = RepeatedBatches(images, num_images, b), RepeatedBatches(ids, num_captions, b)

    # warm-up: kernels, autotuning, allocator (one batch each)
    encode_loader(model, RepeatedBatches(images, min(b, num_images), b), "image", device, dtype, progress=False)
    encode_loader(model, RepeatedBatches(ids, min(b, num_captions), b), "caption", device, dtype, progress=False)
    reset_peak_memory(device)

    image_s, image_feats = timed(lambda: encode(args, model, image_loader, "image", dtype), device)
    text_s, text_feats = timed(lambda: encode(args, model, text_loader, "caption", dtype), device)
    encoded_images = min(num_images, args.encode_max or num_images)
    encoded_captions = min(num_captions, args.encode_max or num_captions)
    sim_s, rows = timed(lambda: similarity_rows([similarities(image_feats, text_feats)]), device)
    shapes = {"image_features": {k: list(v.shape) for k, v in image_feats.items()},
              "text_features": {k: list(v.shape) for k, v in text_feats.items()},
              "similarity": {k: list(v.shape) for k, v in rows.items()}}
    fused_name = list(rows)[-1]
    metric_device = device
    metrics_s, metrics = timed(lambda: rank_metrics(rows[fused_name], caption_pids, image_pids,
                                                    chunk_size=args.chunk_size, device=metric_device), device)
    all_rows_s = None
    if args.all_rows:
        all_rows_s, _ = timed(lambda: {k: rank_metrics(s, caption_pids, image_pids, chunk_size=args.chunk_size,
                                                       device=metric_device) for k, s in rows.items()}, device)
    features_s = image_s + text_s
    row = {
        "set": TITLES[name] + ("" if (num_images, num_captions) == SETS[name][:2] else " (scaled)"),
        "images": num_images, "captions": num_captions,
        "encoded_images": encoded_images, "encoded_captions": encoded_captions,
        "image_s": image_s, "text_s": text_s,
        "images_per_s": encoded_images / image_s, "captions_per_s": encoded_captions / text_s,
        "similarity_s": sim_s, "fused_row": fused_name, "metrics_s": metrics_s, "metrics_all_rows_s": all_rows_s,
        "total_s": features_s + sim_s + metrics_s,
        "total_all_rows_s": features_s + sim_s + all_rows_s if all_rows_s is not None else None,
        "peak_mem_gib": peak_memory_gib(device),
        "R1_random": metrics["R1"], "shapes": shapes,
    }
    del image_feats, text_feats, rows
    free_memory(device)
    return row


COLUMNS = [("set", "set"), ("images", "images"), ("captions", "captions"), ("image_s", "image enc s"),
           ("text_s", "text enc s"), ("images_per_s", "images/s"), ("captions_per_s", "captions/s"),
           ("similarity_s", "similarity s"), ("metrics_s", "metrics s (fused)"),
           ("metrics_all_rows_s", "metrics s (all rows)"), ("total_s", "total s"), ("peak_mem_gib", "peak GiB")]


def main(argv=None) -> dict:
    from utils.device import resolve_precision

    args = resolve_defaults(finish_args(build_parser().parse_args(argv)))
    model, cfg = build_model_for_eval(args)
    dtype = resolve_precision(args.precision, args.device)
    rows = [bench_set(args, model, name, dtype) for name in args.sets]
    depth = {"vision_layers", "text_layers"}
    arch = ("ViT-B/16" if not args.clip_arch else
            "ViT-B/16, {vision_layers}+{text_layers} layers".format(**{**{k: 12 for k in depth}, **args.clip_arch})
            if set(args.clip_arch) <= depth else "tiny CLIP")
    reads = read_galleries(args, rows) if args.read_images else None
    return report("eval", args, rows, COLUMNS,
                  title=f"bench/eval.py: {arch} at {args.img_size[0]}x{args.img_size[1]}, "
                        f"{'+'.join(args.embeddings).upper()}, {dtype or torch.float32}, batch {args.batch_size}",
                  extra={"model": clip_summary(model), "reference": {"target_cuhk_total_s": 5.0}, "reads": reads})


def read_galleries(args, rows: list[dict]) -> list[dict]:
    """Each set's gallery read from JPEGs through the eval loader, with and without the image cache; the
    evaluation's total with each = the read + the in-memory total of its row."""
    from bench.data import print_reads, read_times

    workers = args.read_workers if args.read_workers is not None else (2 if args.small else 8)
    reads = []
    for row in rows:
        for r in read_times("gallery", row["images"], args.img_size, args.batch_size, workers, seed=args.seed):
            r["set"] = row["set"]
            r["eval_total_s"] = r["read_s"] + row["total_s"]
            row["total_with_jpeg_read_s" if not r["image_cache"] else "total_with_cache_read_s"] = r["eval_total_s"]
            reads.append(r)
    print_reads(f"gallery read at {args.img_size[0]}x{args.img_size[1]} (eval total = read + the table's total)",
                reads)
    return reads


if __name__ == "__main__":
    main()
