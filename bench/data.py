"""The training data pipeline alone, three ways side by side (issue 14): pairs per second out of the loader.

(a) reference: built like the published code (IRRA / RDE): per pair, PIL decode, then the float transforms on the
    CPU, once per view (Resize, RandomHorizontalFlip, Pad(10), RandomCrop, ToTensor, Normalize,
    RandomErasing(scale=(0.02, 0.4), value=mean)), the caption tokenised and txt_aug'ed per view.
(b) JPEG: this repository's loader before the image cache (commit b4a0ccc): per pair, PIL decode, resize, flip,
    pad + crop on the PIL image and the erasing rectangle drawn on the CPU (uint8 out, normalised and erased on the
    device), the caption tokenised, txt_aug.
(c) cache: datasets.loaders.build_train_loader as solver/data.py builds it: each image decoded and resized once
    (datasets.image_cache, built before the timing; its build time is reported), captions tokenised once, per
    pair only the random draws (flip, crop offsets, erasing rectangle, txt_aug on ids) and a copy out of the
    memory-mapped cache; flip, pad + crop, normalisation and erasing run on the batch on the device
    (`device aug ms`: datasets.transforms.training_view of every view of one batch, on --device).
(d) as (c) with the cache switched off (--image_cache false): decode + resize per read, device augmentation.

A synthetic CUHK-PEDES-format dataset of --num_images JPEGs (two captions each) is written to a temporary folder
with `datasets.synthetic.make_synthetic`.  The records are repeated so that no epoch boundary falls in the timed
region; the first batches (worker start-up) are not timed.  One row per (workers, views); `per core` divides by
the workers (0 = the main process alone).

    python bench/data.py                                 # CPU: 0 and 2 workers, 1 and 2 views, all pipelines
    python bench/data.py --num_workers 8 16 --views 2    # a GPU box
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from bench.common import add_common_args, finish_args, report  # noqa: E402

PIPELINES = {"a": "reference", "b": "JPEG", "c": "cache", "d": "no cache"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_workers", type=int, nargs="+", default=None, help="loader workers (GPU: 8 16; small: 0 2)")
    p.add_argument("--views", type=int, nargs="+", default=None, choices=(1, 2),
                   help="augmented views per pair: 1 = one model, 2 = twins (default: 1 2; --twin: 2)")
    p.add_argument("--twin", action="store_true", help="only two views per pair (same as --views 2)")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES),
                   help="a reference, b JPEG, c cache, d no cache (see above)")
    p.add_argument("--num_images", type=int, default=None, help="JPEGs written (GPU 2000, small 200); 2 captions each")
    p.add_argument("--image_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"),
                   help="size of the JPEGs written")
    p.add_argument("--img_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"), help="model input size")
    p.add_argument("--text_length", type=int, default=77)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=None, help="timed batches per setting (GPU 30, small 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (default: 2 + num_workers)")
    p.add_argument("--min_seconds", type=float, default=None,
                   help="time more batches than --batches until this long (fast pipelines), up to --max_batches "
                        "(GPU 3, small 1)")
    p.add_argument("--max_batches", type=int, default=150, help="cap of the timed batches per setting")
    p.add_argument("--aug_repeat", type=int, default=5, help="timed runs of the device augmentation per setting")
    p.add_argument("--img_aug", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--txt_aug", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--rda", action="store_true", help="also RDA captions (ICL): diversity captions in the annotations")
    p.add_argument("--data_dir", default="", help="write the dataset here and keep it (default: a temporary folder)")
    return add_common_args(p)


def resolve_defaults(args):
    args.num_workers = args.num_workers if args.num_workers is not None else ([0, 2] if args.small else [8, 16])
    args.views = [2] if args.twin else (args.views or [1, 2])
    args.num_images = args.num_images or (200 if args.small else 2000)
    args.batches = args.batches or (8 if args.small else 30)
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (1.0 if args.small else 3.0)
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


# ---------------------------------------------------------------------------- (a) and (b)
class ReferencePairs(Dataset):
    """(a) The published pipeline: PIL decode, float transforms per view on the CPU, tokenise, txt_aug."""

    def __init__(self, records, args, views: int):
        import torchvision.transforms as T

        from utils.constants import PIXEL_MEAN, PIXEL_STD

        size = tuple(args.img_size)
        steps = [T.Resize(size)]
        if args.img_aug:
            steps += [T.RandomHorizontalFlip(0.5), T.Pad(10), T.RandomCrop(size)]
        steps += [T.ToTensor(), T.Normalize(PIXEL_MEAN, PIXEL_STD)]
        if args.img_aug:
            steps += [T.RandomErasing(scale=(0.02, 0.4), value=PIXEL_MEAN)]
        self.transform = T.Compose(steps)
        self.records, self.views, self.args = records, views, args

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from datasets.loaders import read_image
        from utils.tokenizer import tokenize_one
        from datasets.text_aug import augment_caption_ids

        rec = self.records[i]
        img = read_image(rec.img_path)
        ids = tokenize_one(rec.caption, self.args.text_length)
        return {"index": i, "images": torch.stack([self.transform(img) for _ in range(self.views)]),
                "caption_ids": torch.stack([augment_caption_ids(ids) if self.args.txt_aug else ids
                                            for _ in range(self.views)])}


class JpegPairs(Dataset):
    """(b) This repository's loader before the image cache (commit b4a0ccc, TrainPairs.__getitem__)."""

    def __init__(self, records, args, views: int):
        from datasets.transforms import build_transforms

        self.transform = build_transforms(tuple(args.img_size), is_train=True, img_aug=args.img_aug)
        self.records, self.views, self.args = records, views, args

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        from datasets.loaders import read_image, sample_seed
        from utils.tokenizer import tokenize_one
        from datasets.text_aug import augment_caption_ids

        i, epoch, stream = key
        rec = self.records[i]
        img = read_image(rec.img_path)
        seed = sample_seed(self.args.seed, epoch, stream, i)
        rng = random.Random(seed)
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            images, boxes = zip(*(self.transform(img) for _ in range(self.views)))
        finally:
            torch.set_rng_state(state)
        ids = tokenize_one(rec.caption, self.args.text_length)
        return {"index": i, "images": torch.stack(images), "erase": torch.tensor(boxes, dtype=torch.int32),
                "caption_ids": torch.stack([augment_caption_ids(ids, rng) if self.args.txt_aug else ids
                                            for _ in range(self.views)])}


def make_loader(pipeline: str, args, records, num_workers: int, views: int):
    from datasets.loaders import EpochDraws, build_train_loader

    sampler = EpochDraws(torch.utils.data.DistributedSampler(range(len(records)), num_replicas=1, rank=0,
                                                             shuffle=True, seed=args.seed))
    if pipeline in ("c", "d"):
        return build_train_loader(records, image_size=tuple(args.img_size), text_length=args.text_length,
                                  batch_size=args.batch_size, num_workers=num_workers, img_aug=args.img_aug,
                                  txt_aug=args.txt_aug, num_views=views, use_rda=args.rda, seed=args.seed,
                                  sampler=sampler, image_cache=pipeline == "c", cache_dir=args._cache_dir)
    dataset = ReferencePairs(records, args, views) if pipeline == "a" else JpegPairs(records, args, views)
    if pipeline == "a":
        sampler = None
    return DataLoader(dataset, batch_size=args.batch_size, num_workers=num_workers, sampler=sampler,
                      shuffle=sampler is None, generator=torch.Generator().manual_seed(args.seed),
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)


def time_loader(pipeline: str, args, records, num_workers: int, views: int) -> tuple[float, dict]:
    """(pairs/s, the last batch) over at least args.batches batches and args.min_seconds after the warm-up ones."""
    warmup = args.warmup if args.warmup is not None else 2 + num_workers
    most = warmup + max(args.batches, args.max_batches)
    repeated = (records * (most * args.batch_size // len(records) + 2))[:(most + 1) * args.batch_size]
    loader = make_loader(pipeline, args, repeated, num_workers, views)
    it = iter(loader)                         # (c): builds the image cache first (already built: a stat per image)
    for _ in range(warmup):
        next(it)
    start, done = time.perf_counter(), 0
    while done < args.batches or (time.perf_counter() - start < args.min_seconds and warmup + done < most):
        batch = next(it)
        done += 1
    elapsed = time.perf_counter() - start
    del it, loader
    return done * args.batch_size / elapsed, batch


def device_aug_ms(args, batch: dict, views: int) -> float:
    """Milliseconds of training_view over every view of one (c) batch on args.device (the model's side)."""
    from datasets.transforms import training_view
    from utils.constants import PIXEL_MEAN, PIXEL_STD

    device = args.device
    batch = {k: v.to(device) for k, v in batch.items()}
    mean = torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(PIXEL_STD, device=device).view(1, 3, 1, 1) * 255

    def normalize(x):
        return (x.float() - mean) / std

    def run():
        return [training_view(batch, v, normalize) for v in range(views)]

    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reps = args.aug_repeat
    start = time.perf_counter()
    for _ in range(reps):
        out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert out[0].shape == (args.batch_size, 3, *args.img_size)
    return 1000 * (time.perf_counter() - start) / reps


def bench_row(args, records, num_workers: int, views: int) -> dict:
    row = {"num_workers": num_workers, "views": views, "batch_size": args.batch_size, "batches": args.batches,
           "img_aug": args.img_aug, "txt_aug": args.txt_aug, "rda": args.rda}
    for p in args.pipelines:
        pairs_per_s, batch = time_loader(p, args, records, num_workers, views)
        row[f"pairs_per_s_{p}"] = pairs_per_s
        if p == "c":
            assert batch["image"].shape == (args.batch_size, 3, *args.img_size)
            row["device_aug_ms"] = device_aug_ms(args, batch, views)
    main = "c" if "c" in args.pipelines else args.pipelines[0]
    row["pairs_per_s"] = row[f"pairs_per_s_{main}"]
    row["pairs_per_s_per_worker"] = row["pairs_per_s"] / max(num_workers, 1)
    if "a" in args.pipelines and main != "a":
        row["speedup_vs_a"] = row["pairs_per_s"] / row["pairs_per_s_a"]
    return row


def stage_times(args, records, n: int = 64) -> dict:
    """Main-process milliseconds per pair of each stage of the JPEG path (b) (JSON only: where the time goes)."""
    from datasets.loaders import read_image
    from utils.tokenizer import tokenize_one
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
    ids = [tokenize_one(r.caption, args.text_length) for r in recs]
    out["tokenize_ms"] = 1000 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in ids:
        augment_caption_ids(i)
    out["txt_aug_ms"] = 1000 * (time.perf_counter() - start) / n
    return out


def cached_stage_times(args, records, n: int = 256) -> dict:
    """Main-process milliseconds per pair of the cached path (c): the copy out of the cache, one view's draws
    (flip, crop, erasing rectangle), txt_aug of one view on ids, and a whole two-view pair (__getitems__)."""
    from datasets.loaders import TrainPairs
    from datasets.text_aug import augment_token_list
    from datasets.transforms import ViewDraws

    recs = (records * (n // len(records) + 1))[:n]
    pairs = TrainPairs(recs, tuple(args.img_size), args.text_length, txt_aug=args.txt_aug, num_views=2,
                       seed=args.seed, img_aug=args.img_aug, cache_dir=args._cache_dir)
    pairs.prepare()
    out = {}
    start = time.perf_counter()
    for k in range(0, n, 64):
        pairs.images.read(pairs.image_of[k:k + 64])
    out["cache_read_ms"] = 1000 * (time.perf_counter() - start) / n
    draws = ViewDraws(tuple(args.img_size))
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(n):
            draws()
    out["view_draws_ms"] = 1000 * (time.perf_counter() - start) / n
    ids = [pairs.caption_ids[k].tolist() for k in range(n)]
    rng = random.Random(0)
    start = time.perf_counter()
    for i in ids:
        augment_token_list(i, rng)
    out["txt_aug_ids_ms"] = 1000 * (time.perf_counter() - start) / n
    start = time.perf_counter()
    for k in range(0, n, 64):
        pairs.__getitems__(list(range(k, min(n, k + 64))))
    out["twin_pair_ms"] = 1000 * (time.perf_counter() - start) / n
    return out


def cache_build(args, records) -> dict:
    """Seconds to build the image cache of the training images (every available core), and images/s."""
    from datasets.image_cache import open_images

    from datasets.loaders import read_image  # noqa: F401  (imports torchvision: not part of the build time)

    paths = list(dict.fromkeys(r.img_path for r in records))
    source = open_images(paths, tuple(args.img_size), image_cache=True, cache_dir=args._cache_dir,
                         show_progress=False)
    start = time.perf_counter()
    source.prepare()
    seconds = time.perf_counter() - start
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds,
            "bytes": os.path.getsize(os.path.join(source.folder, "pixels.u8"))}


def _columns(args):
    cols = [("num_workers", "workers"), ("views", "views")]
    cols += [(f"pairs_per_s_{p}", f"({p}) {PIPELINES[p]} pairs/s") for p in args.pipelines]
    if "c" in args.pipelines:
        cols += [("pairs_per_s_per_worker", "(c) pairs/s per core"), ("device_aug_ms", "(c) device aug ms")]
    if "a" in args.pipelines and len(args.pipelines) > 1:
        cols += [("speedup_vs_a", "(c) / (a)")]
    return cols


def main(argv=None) -> dict:
    args = resolve_defaults(finish_args(build_parser().parse_args(argv)))
    root = args.data_dir or tempfile.mkdtemp(prefix="bench_data_")
    args._cache_dir = os.path.join(root, "image_cache")
    try:
        dataset, write_s = write_dataset(args, root)
        records = dataset.train
        build = cache_build(args, records) if "c" in args.pipelines else None
        rows = [bench_row(args, records, w, v) for v in args.views for w in args.num_workers]
        stages = stage_times(args, records)
        cached = cached_stage_times(args, records) if "c" in args.pipelines else None
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    del args._cache_dir
    return report("data", args, rows, _columns(args),
                  title=f"bench/data.py: {len(records):,} pairs ({args.num_images:,} JPEGs at "
                        f"{args.image_size[0]}x{args.image_size[1]}) -> {args.img_size[0]}x{args.img_size[1]}, "
                        f"img_aug {'on' if args.img_aug else 'off'}, txt_aug {'on' if args.txt_aug else 'off'}, "
                        f"batch {args.batch_size}, {os.cpu_count()} cores (load {load:.1f})",
                  extra={"dataset_write_s": write_s, "train_pairs": len(records), "stages_ms_per_pair": stages,
                         "cached_stages_ms_per_pair": cached, "cache_build": build, "load_average_1min": load,
                         "reference": {"target_twin_pairs_per_s_2_cores": 4000}})


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------- reads for division.py and eval.py
def read_times(kind: str, num_images: int, img_size, batch_size: int, num_workers: int, views: int = 1,
               text_length: int = 77, image_size=(384, 128), seed: int = 0) -> list[dict]:
    """Seconds to read a synthetic set of `num_images` JPEGs (2 captions each) once, with and without the image
    cache.  kind "gallery": the evaluation's image loader (build_eval_loaders; also the division's clean read of
    the training images); "train": one pass of the training loader with `views` views (the published division
    read).  With the cache: first the build (every core), then the read; without: decode + resize per read."""
    from datasets.image_cache import decode_resized, open_images
    from datasets.loaders import build_eval_loaders, build_train_loader, tokenize_all

    root = tempfile.mkdtemp(prefix="bench_reads_")
    try:
        args = argparse.Namespace(num_images=num_images, image_size=list(image_size), seed=seed, rda=False)
        dataset, _ = write_dataset(args, root)
        records = dataset.train
        paths = list(dict.fromkeys(r.img_path for r in records))
        cache_dir = os.path.join(root, "image_cache")
        decode_resized(paths[0], tuple(img_size))          # warm-up: imports, the tokenizer's vocabulary
        tokenize_all(["a person"], text_length)
        tokenize_all([r.caption for r in records], text_length)   # once per run (memoised): not in the reads
        rows = []
        for cached in (False, True):
            build_s = None
            if cached:
                source = open_images(paths, tuple(img_size), image_cache=True, cache_dir=cache_dir,
                                     show_progress=False)
                start = time.perf_counter()
                source.prepare()
                build_s = time.perf_counter() - start
            start = time.perf_counter()
            if kind == "gallery":
                split = argparse.Namespace(img_paths=paths, captions=["a person"])
                loader = build_eval_loaders(split, tuple(img_size), text_length, batch_size, num_workers,
                                            image_cache=cached, cache_dir=cache_dir)[0]
                count = sum(len(images) for _, images in loader)
            else:
                loader = build_train_loader(records, tuple(img_size), text_length, batch_size, num_workers,
                                            txt_aug=True, num_views=views, seed=seed, image_cache=cached,
                                            cache_dir=cache_dir)
                count = sum(len(batch["index"]) for batch in loader)
            seconds = time.perf_counter() - start
            del loader
            rows.append({"read": kind, "image_cache": cached, "images": len(paths), "items": count,
                         "workers": num_workers, "views": views if kind == "train" else None,
                         "cache_build_s": build_s, "read_s": seconds, "items_per_s": count / seconds})
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


READ_COLUMNS = [("read", "read"), ("image_cache", "image cache"), ("images", "images"), ("items", "items read"),
                ("workers", "workers"), ("views", "views"), ("cache_build_s", "cache build s"), ("read_s", "read s"),
                ("items_per_s", "items/s")]


def print_reads(title: str, rows: list[dict]) -> None:
    from prettytable import PrettyTable

    table = PrettyTable([h for _, h in READ_COLUMNS])
    table.title = title
    for row in rows:
        table.add_row(["" if row.get(k) is None else (f"{row[k]:.2f}" if isinstance(row[k], float) else row[k])
                       for k, _ in READ_COLUMNS])
    table.align = "r"
    print(table, flush=True)
