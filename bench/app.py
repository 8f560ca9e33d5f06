"""Query latency of the search page (app.py) on a gallery of N synthetic person images (3,000 by default).

    python main.py --config configs/demo.yaml                     # the demo run the README's latency is for
    OMP_NUM_THREADS=1 python bench/app.py --run logs/RUN --threads 1 --json bench/results/app.json

The gallery is drawn once with the synthetic dataset's figures (datasets/synthetic.py, 128x64 JPEGs, one new
identity per image) into --gallery_dir, and indexed from scratch through retrieve.py's index (the build is timed
too); the queries are captions of other random identities.  Each query is timed three ways:
  rank       GallerySearch.ranked: the caption encoded, the whole gallery scored and sorted (retrieve.py's path)
  handler    the page's Search handler (webapp/page.py Page.search): rank + the top-k thumbnails and table
  http       the same through the page's HTTP API (gradio_client), as a browser's click goes (--no-http skips it),
             without and with fetching the thumbnails
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import ROOT, add_common_args, finish_args, report  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained run folder (the README's figure: the demo run)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--gallery_size", type=int, default=3000)
    p.add_argument("--gallery_dir", help="where the gallery images are drawn (default bench/results/app_gallery_N);"
                                         " reused when it holds them, its index is always rebuilt")
    p.add_argument("--queries", type=int, default=50, help="timed queries per way (after 3 warm-up queries)")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--http", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the queries through the page's HTTP API")
    return add_common_args(p)


def draw_gallery(folder: str, n: int, seed: int, size=(128, 64)) -> None:
    from datasets.synthetic import _sample_identity, draw_person

    if os.path.isdir(folder) and len([f for f in os.listdir(folder) if f.endswith(".jpg")]) == n:
        return
    os.makedirs(folder, exist_ok=True)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    for i in range(n):
        draw_person(_sample_identity(rng), size, np_rng).save(os.path.join(folder, f"{i:05d}.jpg"), quality=92)


def query_texts(n: int, seed: int) -> list[str]:
    from datasets.synthetic import _sample_identity, make_caption

    rng = random.Random(seed + 1)
    return [make_caption(_sample_identity(rng), rng) for _ in range(n)]


def latency_row(way: str, what: str, seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    return {"way": way, "what": what, "queries": len(ms), "median_ms": statistics.median(ms),
            "p90_ms": ms[int(0.9 * (len(ms) - 1))], "max_ms": ms[-1]}


def timed_queries(fn, texts: list[str], warmup: int = 3) -> list[float]:
    for t in texts[:warmup]:
        fn(t)
    out = []
    for t in texts[warmup:]:
        start = time.perf_counter()
        fn(t)
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> dict:
    args = finish_args(build_parser().parse_args(argv))
    os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="reid-bench-app-"))   # as app.py
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from inference.retrieval_index import INDEX_DIR, load_encoders
    from webapp.gallery import Gallery
    from webapp.page import Page

    folder = args.gallery_dir or os.path.join(ROOT, "bench", "results", f"app_gallery_{args.gallery_size}")
    draw_gallery(folder, args.gallery_size, args.seed)
    shutil.rmtree(os.path.join(folder, INDEX_DIR), ignore_errors=True)     # the build is part of the figure
    enc = load_encoders(args.run, args.checkpoint, str(args.device))
    gallery = Gallery(enc, folder, f"{args.gallery_size} synthetic images", num_workers=0)
    start = time.perf_counter()
    status = gallery.refresh()
    build = time.perf_counter() - start
    start = time.perf_counter()
    gallery.refresh()
    refresh = time.perf_counter() - start
    print(status, flush=True)

    texts = query_texts(args.queries + 3, args.seed)
    page = Page(gallery, "bench", topk=args.topk)
    rows = [{"way": "index build", "what": f"{gallery.size} images embedded from JPEG",
             "queries": None, "median_ms": 1000 * build, "p90_ms": None, "max_ms": None},
            {"way": "index refresh", "what": "nothing changed: scan + cached features",
             "queries": None, "median_ms": 1000 * refresh, "p90_ms": None, "max_ms": None},
            latency_row("rank", "encode + score + sort the whole gallery", timed_queries(gallery.rank, texts)),
            latency_row("handler", f"Search handler: rank + top-{args.topk} thumbnails + table",
                        timed_queries(lambda t: page.search(t, None, args.topk), texts))]
    if args.http:
        from gradio_client import Client

        blocks = page.build()
        _, url, _ = blocks.launch(prevent_thread_lock=True, quiet=True)
        try:
            for client, way, what in (
                    (Client(url, verbose=False, download_files=False), "http",
                     "the page's /search through its queue: the answer a click gets"),
                    (Client(url, verbose=False), "http + images", "the same, then its thumbnails fetched one "
                                                                  "after the other (a browser fetches them at once)")):
                rows.append(latency_row(way, what, timed_queries(
                    lambda t: client.predict(t, None, args.topk, api_name="/search"), texts)))
        finally:
            blocks.close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return report("app", args, rows, title=f"bench/app.py: {os.path.basename(os.path.normpath(args.run))}, "
                                           f"{gallery.size} images, {args.device}, load {load:.1f}",
                  extra={"gallery": folder, "load_average": load})


if __name__ == "__main__":
    main()
