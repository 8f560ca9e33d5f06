"""Build a dataset's image cache ahead of training (training builds it on first use otherwise):

    python -m datasets.cache --dataset_name CUHK-PEDES --root_dir data --img_size 384 128 [--cache_dir DIR]

Every image of the train, val and test splits is decoded, resized to the model's input size and stored once
(datasets/image_cache/); images already cached and unchanged (same size and modification time) are skipped.
Prints where the cache is and its size.  --verify decodes every image again and repairs the ones whose pixels
changed with their size and modification time kept (cp -p, touch -r), which the cache cannot see otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from datasets import DATASETS, DatasetError, build_dataset
    from datasets.image_cache import open_images
    from utils.images import ImageDecodeError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_name", required=True, choices=sorted(DATASETS))
    p.add_argument("--root_dir", default="data")
    p.add_argument("--anno_path", default="")
    p.add_argument("--img_size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"))
    p.add_argument("--cache_dir", default="", help="where caches go (default: DATASET_FOLDER/.cache)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (default: every available core)")
    p.add_argument("--verify", action="store_true",
                   help="decode every cached image again and repair those whose pixels changed (as long as a build)")
    args = p.parse_args(argv)
    try:
        ds = build_dataset(args.dataset_name, args.root_dir, args.anno_path or None)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = list(dict.fromkeys([r.img_path for r in ds.train] + ds.test.img_paths +
                               (ds.val.img_paths if ds.val is not None else [])))
    start = time.perf_counter()
    source = open_images(paths, tuple(args.img_size), image_cache=True, cache_dir=args.cache_dir,
                         workers=args.workers or None)
    try:
        source.prepare()
    except ImageDecodeError as e:
        print(f"error: {e}\nreplace or remove it (python -m datasets.check --decode lists them all)", file=sys.stderr)
        return 2
    if not getattr(source, "folder", None):
        print("error: the image cache could not be written (see the warning above)", file=sys.stderr)
        return 2
    if args.verify:
        changed = [source.cache.key(p) for p in source.cache.verify(paths, args.workers or None)]
        print(f"verified {len(paths)} cached images by decoding them again: " + (
            f"{len(changed)} had changed with their size and modification time kept, now repaired: "
            + ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else "") if changed else "none had changed"))
    size = os.path.getsize(os.path.join(source.folder, "pixels.u8"))
    print(f"{args.dataset_name}: {len(paths)} images at {args.img_size[0]}x{args.img_size[1]} cached in "
          f"{source.folder} ({size / 2**30:.2f} GiB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
