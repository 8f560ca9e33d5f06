"""app.py's options turned into a running page: the run's encoders, the gallery (indexed before the page opens,
so that the first query is as fast as the others), the test captions, THI when a model folder is given."""
from __future__ import annotations

import logging
import os

from starlette.middleware import Middleware

from inference.retrieval_index import load_encoders
from inference.runs import load_run
from .audit_tab import AuditTab
from .gallery import Gallery
from .page import Page

log = logging.getLogger(__name__)

SPLIT_INDEX_DIR = "search_index"   # in the run folder: the test split's index (a dataset folder may be read-only)
MAX_REQUEST_BYTES = 64 * 1024      # a request's body: a description and two numbers as JSON fit many times over


class JsonOnly:
    """ASGI middleware in front of Gradio: all the page takes is a description and two numbers, sent as JSON.
    A body of any other type (an upload to /gradio_api/upload: Gradio would store any file and serve it back) is
    refused with 415 before it is read, a body over MAX_REQUEST_BYTES with 413 before it is passed on."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind not in (b"", b"application/json"):
            return await _refuse(send, 415, "This page takes no files: it searches its own gallery. Only a "
                                            "description (JSON) is accepted.")
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_REQUEST_BYTES:
                return await _refuse(send, 413, f"Request too large: at most {MAX_REQUEST_BYTES} bytes.")
        if kind == b"" and body:
            return await _refuse(send, 415, "A request body must be JSON.")
        sent = False

        async def replay():   # the body read above, then whatever the connection says next (a disconnect)
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _refuse(send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": text.encode()})


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
    audit, why = AuditTab.open(args.audit or os.path.join(args.run, "audit"))
    if audit is None and args.audit and not why:
        why = f"{args.audit} holds no {'pairs.csv'} (python audit.py --run RUN_DIR --out {args.audit} writes it)"
    if why:
        log.warning("no Audit tab: %s", why)
    return Page(gallery, f"Person search: run {name}", split.captions if split else None,
                split.as_written(split.caption_pids) if split else None, thi_runner(args, enc), args.topk, audit)


def serve(args, block: bool = True):
    """Builds and launches the page; returns (blocks, local URL).  block=False returns at once (tests)."""
    blocks = make_page(args).build()
    # allowed_paths stays empty: the browser gets the thumbnails page.py draws (Gradio's upload folder), never a
    # path of the gallery, the run or the data; nothing else on the disk is reachable through /file=
    _, url, _ = blocks.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True,
                              show_error=False, allowed_paths=[], app_kwargs={"middleware": [Middleware(JsonOnly)]})
    print(f"search page: {url}", flush=True)
    if block:
        try:
            blocks.block_thread()
        finally:
            blocks.close()
    return blocks, url
