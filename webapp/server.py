"""app.py's options turned into a running page: the run's encoders, the gallery (indexed before the page opens,
so that the first query is as fast as the others), the test captions, THI when a model folder is given."""
from __future__ import annotations

import logging
import os

from evaluation.retrieval_index import load_encoders
from evaluation.runs import load_run
import solver.build  # noqa: F401  (gives configs/ the registries it checks options against)
from .gallery import Gallery
from .page import Page

log = logging.getLogger(__name__)

SPLIT_INDEX_DIR = "search_index"   # in the run folder: the test split's index (a dataset folder may be read-only)


def test_split(args):
    """The run's test split, or None with a log line when --gallery is given and the data is not readable."""
    try:
        return load_run(args.run, with_data=True, root_dir=args.root_dir, device=args.device).dataset.test
    except SystemExit as e:
        if args.gallery is None:
            raise SystemExit(f"{e}\n(the page searches the run's test split unless --gallery FOLDER is given)") \
                from None
        log.warning("the run's test captions are not offered (%s)", str(e).splitlines()[0])
        return None


def thi_runner(args, enc):
    """THI's runner when --mllm is given: the backend checks its folder now; the model loads on the first question."""
    if args.model_dir is None:
        return None
    from mllm.backends import backend_from_args
    from thi.cli import default_xi
    from .thi_steps import ThiRunner, ThiSettings

    backend = backend_from_args(args)
    # THI's own cache file by default: answers `python -m thi --run RUN_DIR` got are reused, and kept for it
    cache = args.cache or os.path.join(args.run, "thi", "mllm_cache.jsonl")
    xi = args.xi if args.xi is not None else default_xi(enc.cfg.dataset_name)
    return ThiRunner(backend, cache, ThiSettings(args.rounds, xi, args.lam, args.batch_size, args.max_new_tokens))


def make_page(args) -> Page:
    enc = load_encoders(args.run, args.checkpoint, args.device)
    split = test_split(args)
    kw = dict(batch_size=args.index_batch_size, num_workers=args.num_workers)
    name = os.path.basename(os.path.normpath(args.run))
    if args.gallery is None:
        gallery = Gallery.of_split(enc, split, f"the test split of {enc.cfg.dataset_name}",
                                   os.path.join(args.run, SPLIT_INDEX_DIR), **kw)
    else:
        gallery = Gallery(enc, args.gallery, f"folder {os.path.abspath(args.gallery)}", **kw)
    log.info("indexing %s ...", gallery.description)
    log.info("%s", gallery.refresh())
    return Page(gallery, f"Person search: run {name}", split.captions if split else None,
                split.caption_pids if split else None, thi_runner(args, enc), args.topk)


def serve(args, block: bool = True):
    """Builds and launches the page; returns (blocks, local URL).  block=False returns at once (tests)."""
    blocks = make_page(args).build()
    # allowed_paths stays empty: the browser gets the thumbnails page.py draws (Gradio's upload folder), never a
    # path of the gallery, the run or the data; nothing else on the disk is reachable through /file=
    _, url, _ = blocks.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True,
                              show_error=False, allowed_paths=[])
    print(f"search page: {url}", flush=True)
    if block:
        try:
            blocks.block_thread()
        finally:
            blocks.close()
    return blocks, url
