"""The training data pipeline alone: JPEG decode + augmentation + tokenisation (+ txt_aug) + collation.

A synthetic CUHK-PEDES-format dataset of --num_images JPEGs at 384x128 (two captions each) is written to a
temporary folder with `datasets.synthetic.make_synthetic`, read back with `datasets.build_dataset` and fed
through `datasets.loaders.build_train_loader` exactly as the Trainer builds it (img_aug, txt_aug, one view per
model).  The records are repeated so that no epoch boundary falls in the timed region; the first batches
(worker start-up) are not timed.

    python bench/data.py --num_workers 8 16          # a GPU box (16 cores): is it >= 3,000 pairs/s?
    python bench/data.py --small                     # CPU: 0 and 2 workers
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import add_common_args, finish_args, report  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_workers", type=int, nargs="+", default=None, help="loader workers (GPU: 8 16; small: 0 2)")
    p.add_argument("--num_images", type=int, default=None, help="JPEGs written (GPU 2000, small 200); 2 captions each")
    p.add_argument("--image_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"),
                   help="size of the JPEGs written")
    p.add_argument("--img_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"), help="model input size")
    p.add_argument("--text_length", type=int, default=77)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=None, help="timed batches per setting (GPU 100, small 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default: 2 + num_workers)")
    p.add_argument("--twin", action="store_true", help="two augmented views per pair (twin training)")
    p.add_argument("--img_aug", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--txt_aug", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--rda", action="store_true", help="also RDA captions (ICL): diversity captions in the annotations")
    p.add_argument("--data_dir", default="", help="write the dataset here and keep it (default: a temporary folder)")
    return add_common_args(p)


def resolve_defaults(args):
    args.num_workers = args.num_workers if args.num_workers is not None else ([0, 2] if args.small else [8, 16])
    args.num_images = args.num_images or (200 if args.small else 2000)
    args.batches = args.batches or (8 if args.small else 100)
    return args


def write_dataset(args, root: str):
    from datasets import build_dataset
    from datasets.synthetic import make_synthetic

    anno = os.path.join(root, "CUHK-PEDES", "reid_raw.json")
    start = time.perf_counter()
    if not os.path.isfile(anno):
        make_synthetic(root, fmt="CUHK-PEDES", num_train_ids=max(1, args.num_images // 2), num_test_ids=1,
                       num_val_ids=1, images_per_id=2, captions_per_image=2, image_size=tuple(args.image_size),
                       seed=args.seed, with_rda=args.rda)
    write_s = time.perf_counter() - start
    return build_dataset("CUHK-PEDES", root), write_s


def bench_workers(args, records, num_workers: int, use_rda: bool) -> dict:
    from datasets.loaders import build_train_loader

    views = 2 if args.twin else 1
    need = (args.warmup if args.warmup is not None else 2 + num_workers) + args.batches
    repeated = (records * (need * args.batch_size // len(records) + 2))[:(need + 1) * args.batch_size]
    loader = build_train_loader(repeated, image_size=tuple(args.img_size), text_length=args.text_length,
                                batch_size=args.batch_size, num_workers=num_workers, img_aug=args.img_aug,
                                txt_aug=args.txt_aug, num_views=views, use_rda=use_rda, seed=args.seed)
    warmup = need - args.batches
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["images"].shape == (args.batch_size, views, 3, *args.img_size)
    del it, loader
    pairs_per_s = args.batches * args.batch_size / elapsed
    return {"num_workers": num_workers, "views": views, "batch_size": args.batch_size, "batches": args.batches,
            "pairs_per_s": pairs_per_s, "pairs_per_s_per_worker": pairs_per_s / max(num_workers, 1),
            "ms_per_batch": 1000 * elapsed / args.batches,
            "img_aug": args.img_aug, "txt_aug": args.txt_aug, "rda": use_rda}


def stage_times(args, records, n: int = 64) -> dict:
    """Main-process milliseconds per pair of each stage of TrainPairs.__getitem__ (JSON only: where the time goes)."""
    from datasets.loaders import _tokenize, read_image
    from datasets.text_aug import augment_caption_ids
    from datasets.transforms import build_transforms

    transform = build_transforms(tuple(args.img_size), is_train=True, img_aug=args.img_aug)
    recs = (records * (n // len(records) + 1))[:n]
    out = {}
    start = time.perf_counter()
    images = [read_image(r.img_path) for r in recs]
    out["decode_ms"] = 1000 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    for img in images:
        transform(img)
    out["image_transform_ms"] = 1000 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    ids = [_tokenize(r.caption, args.text_length) for r in recs]
    out["tokenize_ms"] = 1000 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in ids:
        augment_caption_ids(i)
    out["txt_aug_ms"] = 1000 * (time.perf_counter() - start) / n
    return out


COLUMNS = [("num_workers", "workers"), ("views", "views"), ("batch_size", "batch"), ("pairs_per_s", "pairs/s"),
           ("pairs_per_s_per_worker", "pairs/s per worker"), ("ms_per_batch", "ms / batch")]


def main(argv=None) -> dict:
    args = resolve_defaults(finish_args(build_parser().parse_args(argv)))
    root = args.data_dir or tempfile.mkdtemp(prefix="bench_data_")
    try:
        dataset, write_s = write_dataset(args, root)
        records = dataset.train
        rows = [bench_workers(args, records, w, use_rda=args.rda and dataset.has_rda) for w in args.num_workers]
        stages = stage_times(args, records)
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    return report("data", args, rows, COLUMNS,
                  title=f"bench/data.py: {len(records):,} pairs ({args.num_images:,} JPEGs at "
                        f"{args.image_size[0]}x{args.image_size[1]}) -> {args.img_size[0]}x{args.img_size[1]}, "
                        f"img_aug {'on' if args.img_aug else 'off'}, txt_aug {'on' if args.txt_aug else 'off'}",
                  extra={"dataset_write_s": write_s, "train_pairs": len(records), "stages_ms_per_pair": stages,
                         "reference": {"target_pairs_per_s_16_cores": 3000}})


if __name__ == "__main__":
    main()
