"""Check a dataset before training: every problem at once, not just the first.

    python -m datasets.check --dataset_name CUHK-PEDES --root_dir data [--anno_path F] [--decode [--full]]

Reports the annotation file found (or the names tried), ids / images / captions per split, missing and
(with --decode) undecodable images, image paths listed twice, image paths leading outside the dataset folder
and empty captions; exits 1 when anything is wrong.  Parsing and checks are the dataset classes' own
(datasets/bases.py), so what passes here loads for training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from PIL import Image
from utils.progress import progress as progress_bar
from . import DATASETS, DatasetError

SHOW = 10  # problems listed per kind; the count is always complete


def decode_problem(path: str, full: bool = False) -> str | None:
    """None if the image looks intact, else the reason.

    Fast (default): PIL parses the header and verify()s the file (for PNG that checks every chunk's CRC), and
    a JPEG must end with its end-of-image marker -- verify() alone checks little more than a JPEG's header,
    and a missing EOI is what an interrupted download or extraction leaves.  About 0.1 ms per image.
    full: also decode the pixels (JPEGs at 1/8 scale, which still walks the whole compressed stream), which
    catches damage inside the stream too, at about 5x the cost.
    """
    try:
        with Image.open(path) as img:
            fmt = img.format
            if full:
                if fmt == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
            else:
                img.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 64))
                if b"\xff\xd9" not in f.read():  # some writers pad after EOI, hence a small window
                    return "JPEG without end-of-image marker (truncated file)"
        return None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... by damage
        return f"{type(e).__name__}: {e}"


def read_raw_records(cls, root_dir: str, anno_path: str | None):
    """(dataset object with its paths resolved, list of raw JSON records); DatasetError on file problems."""
    ds = cls.__new__(cls)  # the class's own path logic, without its fail-fast __init__
    ds.root_dir = os.path.abspath(os.path.expanduser(root_dir))
    ds.dataset_root = os.path.join(ds.root_dir, cls.dataset_dir)
    ds.anno_file = ds._resolve_anno_file(anno_path)
    try:
        with open(ds.anno_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        ds.read_records(ds.anno_file)  # raises the class's own message for a malformed file
        raise
    if not isinstance(data, list) or not data:
        ds.read_records(ds.anno_file)
    return ds, data


def check(name: str, root_dir: str, anno_path: str | None = None, decode: bool = False, full: bool = False,
          workers: int = 8, progress: bool = True) -> tuple[list[str], list[str]]:
    """(report lines, error lines).  No errors means the dataset loads and every listed image exists."""
    if name not in DATASETS:
        return [], [f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}"]
    cls = DATASETS[name]
    report, errors = [], []
    try:
        ds, raw = read_raw_records(cls, root_dir, anno_path)
    except DatasetError as e:
        return report, [str(e)]
    report.append(f"{name}: annotation file {ds.anno_file} ({len(raw)} records)")

    records, bad_records = [], []
    for i, item in enumerate(raw):
        try:
            records.append(ds._parse_record(i, item, ds.anno_file))
        except DatasetError as e:
            bad_records.append(str(e))
    _add(errors, "malformed records", bad_records)
    try:
        ds._check_splits(records)
    except DatasetError as e:
        errors.append(str(e))

    by_split = defaultdict(list)
    for r in records:
        by_split[r.split].append(r)
    for split in ("train", "val", "test"):
        rs = by_split.get(split, [])
        report.append(f"  {split:5s}  {len({r.pid for r in rs}):6d} ids  {len({r.img_path for r in rs}):7d} images  "
                      f"{sum(len(r.captions) for r in rs):7d} captions")

    owners = defaultdict(list)
    for r in records:
        owners[r.img_path].append(r)
    _add(errors, "image paths listed by more than one record", [
        f"{p} (records {', '.join(str(r.index) for r in rs)}; ids {sorted({r.pid for r in rs})}, "
        f"splits {sorted({r.split for r in rs})})" for p, rs in owners.items() if len(rs) > 1])
    for kind, fix, lines in ds.content_problems(records):  # the checks training runs at start-up
        _add(errors, kind, lines, hint=fix)

    paths = list(owners)
    with ThreadPoolExecutor(workers) as pool:  # stat() and decoding wait on the disk / release the GIL
        exists = list(pool.map(os.path.isfile, paths))
        missing = [p for p, ok in zip(paths, exists) if not ok]
        _add(errors, "missing images", missing, hint=f"images are looked up under "
             f"{os.path.join(ds.dataset_root, cls.image_dir)}; check --root_dir")
        if decode:
            present = [p for p, ok in zip(paths, exists) if ok]
            results = list(progress_bar(pool.map(partial(decode_problem, full=full), present, chunksize=64),
                                        enabled=progress, total=len(present), desc="checking images", unit="img"))
            _add(errors, "undecodable images", [f"{p}: {why}" for p, why in zip(present, results) if why])
            report.append(f"{'decoded' if full else 'opened'} {len(present)} images")
    return report, errors


def _add(errors: list[str], kind: str, items: list[str], hint: str = "") -> None:
    if not items:
        return
    shown = "\n    ".join(items[:SHOW]) + (f"\n    ... and {len(items) - SHOW} more" if len(items) > SHOW else "")
    errors.append(f"{len(items)} {kind}{f' ({hint})' if hint else ''}:\n    {shown}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_name", required=True, choices=list(DATASETS))
    p.add_argument("--root_dir", default="data")
    p.add_argument("--anno_path", help="annotation file instead of the dataset's default names")
    p.add_argument("--decode", action="store_true", help="also open every image with PIL (header, verify(), JPEG end)")
    p.add_argument("--full", action="store_true", help="with --decode: decode every image's pixels (slower)")
    p.add_argument("--workers", type=int, default=8, help="threads for stat / decode")
    args = p.parse_args(argv)
    report, errors = check(args.dataset_name, args.root_dir, args.anno_path, args.decode or args.full, args.full,
                           args.workers)
    print("\n".join(report))
    if errors:
        print("\nERRORS\n" + "\n".join(f"- {e}" for e in errors))
        return 1
    print("OK: no problems found" + ("" if args.decode else " (images not decoded; add --decode to open them)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
