"""The search page (Gradio Blocks): a description in, the gallery's top-k out, and THI's rounds on demand; and the
Audit tab (webapp/audit_tab.py), the run's training pairs that its division believes wrong.

Handlers never let an exception reach the page as a traceback: input the page can answer (an empty query, an
empty gallery) gets its message, anything else "failed: <error>" with the traceback in the terminal's log.
Images reach the browser only as thumbnails drawn here from gallery files (Gradio stores them in its upload
folder and serves them from there), so launch() needs no allowed_paths at all.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import textwrap
import time

import gradio as gr
from PIL import Image, ImageDraw, ImageOps

from utils.files import atomic_open
from utils.images import ImageDecodeError, read_image
from .gallery import Gallery, Hit, QueryError, Ranking

log = logging.getLogger(__name__)

THUMB_HEIGHT = 256
THUMB_MAX_WIDTH = 4 * THUMB_HEIGHT   # a wider image is scaled to fit (JPEG holds at most 65,535 pixels a side)
FRAME = 8                      # pixels of the green frame around the true identity's images
MATCH_COLOUR = (40, 170, 60)
TABLE_HEADERS = ["rank", "score", "file", "identity", "query's identity"]
THI_OFF = ("THI is off. Start the page with a Qwen2-VL model folder to ask it about the candidates: "
           "`python app.py --run RUN_DIR --mllm Qwen2-VL-7B-Instruct` (the backend options of `python -m thi` "
           "apply: `--backend vllm`, `--lora`, `--rounds`, `--xi`, `--lam` ...).")
AUDIT_OFF = ("No audit of this run yet. `python audit.py --run RUN_DIR` ranks its training pairs by how wrong the "
             "run's own division believes them (RUN_DIR/audit/pairs.csv); start the page again to review them here.")


def thumbnail(hit: Hit) -> Image.Image:
    """The gallery image, framed green when it is the query's identity (thumbnail_of)."""
    return thumbnail_of(hit.path, MATCH_COLOUR if hit.match else None)


def thumbnail_of(path: str, frame: tuple[int, int, int] | None = None) -> Image.Image:
    """An image scaled to fit THUMB_MAX_WIDTH x THUMB_HEIGHT, framed in `frame`'s colour; a file that cannot be
    shown (changed on disk since it was indexed into one the index would skip) is a grey tile saying why."""
    try:
        img = ImageOps.contain(read_image(path, limits=True), (THUMB_MAX_WIDTH, THUMB_HEIGHT))
    except ImageDecodeError as e:
        img = Image.new("RGB", (THUMB_HEIGHT // 2, THUMB_HEIGHT), (200, 200, 200))
        why = textwrap.fill(f"skipped: {e.reason}", 18)
        ImageDraw.Draw(img).multiline_text((6, 6), why, fill=(0, 0, 0))
    if frame is not None:
        ImageDraw.Draw(img).rectangle([0, 0, img.width - 1, img.height - 1], outline=frame, width=FRAME)
    return img


def thumbnail_file(img: Image.Image) -> str:
    """A thumbnail as a JPEG in Gradio's upload folder, named by its content and renamed into place once written.
    Handed a PIL image, Gradio rewrites one shared file in place on every answer that holds the same picture
    (gradio/processing_utils.py save_pil_to_cache): a client still fetching it from an earlier answer then got a
    cut file ("Too little data for declared Content-Length").  A file path is copied once, atomically."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG")   # a 256-pixel thumbnail encodes in ~0.1 ms, WebP in ~15
    data = buffer.getvalue()
    folder = os.path.join(gr.utils.get_upload_folder(), "thumbnails")
    path = os.path.join(folder, hashlib.sha256(data).hexdigest()[:32] + ".jpg")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        with atomic_open(path, "wb") as f:
            f.write(data)
    return path


def caption_of(hit: Hit) -> str:
    who = "" if hit.identity is None else f" · id {hit.identity}" + (" ✓" if hit.match else "")
    return f"#{hit.rank} {hit.score:.4f} {hit.name}{who}"


def grid(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(thumbnail_file(thumbnail(h)), caption_of(h)) for h in hits]


def table(hits: list[Hit]) -> list[list]:
    return [[h.rank, round(h.score, 4), h.name, "" if h.identity is None else h.identity,
             "" if h.match is None else ("yes" if h.match else "no")] for h in hits]


def summary(ranking: Ranking, gallery: Gallery, seconds: float, caption_index: int | None, k: int) -> str:
    head = f"Searched {gallery.size} images in {1000 * seconds:.0f} ms."
    head += "".join(f" **Note: {note}.**" for note in ranking.notes)
    if ranking.metrics is None:
        return head + " Free text: no identity to check against, so no R1 / AP."
    m, ranks = ranking.metrics, ranking.true_ranks
    shown = ", ".join(map(str, ranks[:10])) + (" ..." if len(ranks) > 10 else "")
    return (f"{head} Test caption #{caption_index}, identity {ranking.true_identity}: **R1 {m['R1']:.0f}, "
            f"AP {m['mAP']:.2f}** (R5 {m['R5']:.0f}, R10 {m['R10']:.0f}, INP {m['mINP']:.2f}). Its {len(ranks)} "
            f"images rank {shown}" + ("; those in the grid are framed green." if ranks[0] <= k else "."))


def on_page(n_outputs: int):
    """Turns a handler's failures into a message in its first output (the others emptied), never a traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args):
            try:
                return fn(*args)
            except QueryError as e:
                message = str(e)
            except (Exception, SystemExit) as e:   # noqa: BLE001 -- SystemExit: the MLLM loader's message
                log.exception("%s failed", fn.__name__)
                message = f"Failed: {type(e).__name__}: {e}"
            if n_outputs == 1:    # Gradio takes a lone output's value as it is, not in a tuple
                return f"**{message}**"
            return (f"**{message}**",) + (None,) * (n_outputs - 1)
        return handler
    return wrap


class Page:
    """The page's state: the gallery, the test captions (when the run's data is readable) and THI."""

    def __init__(self, gallery: Gallery, title: str, captions: list[str] | None = None,
                 caption_identities: list[int] | None = None, thi=None, topk: int = 10, audit=None):
        """audit: the Audit tab (webapp/audit_tab.py), or None: the tab says how to make one."""
        self.gallery, self.title, self.thi, self.topk, self.audit = gallery, title, thi, topk, audit
        self.captions, self.caption_identities = captions or [], caption_identities or []
        self._caption_index = {}
        for i, c in enumerate(self.captions):
            self._caption_index.setdefault(c.strip(), i)

    def _query(self, text: str, pick) -> tuple[str, int | None, int | None]:
        """(query, caption index, its identity): the picked test caption while its text is unchanged, or a test
        caption typed or pasted word for word; anything else is free text, without an identity."""
        text = (text or "").strip()
        if pick is not None and 0 <= int(pick) < len(self.captions) and self.captions[int(pick)].strip() == text:
            index = int(pick)
        else:
            index = self._caption_index.get(text)
        return (text, None, None) if index is None else (text, index, self.caption_identities[index])

    def search(self, text: str, pick, k) -> tuple[str, list, list]:
        """(summary, grid, table) of the top-k."""
        text, index, identity = self._query(text, pick)
        start = time.perf_counter()
        ranking = self.gallery.rank(text, identity)
        hits = self.gallery.hits(ranking, int(k))
        elapsed = time.perf_counter() - start
        return summary(ranking, self.gallery, elapsed, index, int(k)), grid(hits), table(hits)

    def run_thi(self, text: str, pick, k):
        """Generator of (THI log, grid): one update per round as it ends."""
        if self.thi is None:
            yield THI_OFF, None
            return
        text, _, identity = self._query(text, pick)
        ranking = self.gallery.rank(text, identity)
        was = {row: rank for rank, row in enumerate(ranking.order.tolist(), 1)}
        done: list[str] = []
        yield f"Asking the MLLM about the top {self.thi.s.rounds} candidates of: *{text}* ...", None
        for step in self.thi.steps(self.gallery, ranking):
            block = [f"**{step.title}**"]
            if step.question:
                block.append(f"- question: {step.question}")
            if step.answer:
                block.append(f"- answer: **{step.answer}**")
            block += [f"- {line}" for line in step.lines]
            done.append("\n".join(block))
            hits = self.gallery.hits(ranking, int(k), step.order, step.scores)
            yield "\n\n".join(done), self._thi_grid(hits, step.candidate, was)
        cache = self.thi.cache   # this run's (ThiRunner.steps opens it afresh)
        done.append(f"MLLM answers of this click: {cache.from_cache} read from THI's cache ({cache.path}), "
                    f"{cache.asked} asked.")
        yield "\n\n".join(done), self._thi_grid(hits, step.candidate, was)

    def _thi_grid(self, hits: list[Hit], candidate: str | None, was: dict[int, int]) -> list:
        """The list after a THI step; each image says its base rank, the one THI asked about is marked."""
        # the base rank first: a narrow tile cuts its caption's end
        return [(thumbnail_file(thumbnail(h)), f"#{h.rank} (base #{was[h.row]}){' ASKED' if h.path == candidate else ''} "
                               + caption_of(h).split(" ", 1)[1]) for h in hits]

    def rescan(self) -> str:
        return self.gallery.refresh()

    def pick(self, pick) -> str:
        return self.captions[int(pick)] if pick is not None else ""

    def build(self) -> gr.Blocks:
        with gr.Blocks(title=self.title, analytics_enabled=False) as blocks:
            gr.Markdown(f"## {self.title}")
            with gr.Tabs():
                with gr.Tab("Search", id="search", elem_id="search_tab"):
                    self._search_tab()
                with gr.Tab("Audit", id="audit", elem_id="audit_tab"):
                    if self.audit is None:
                        gr.Markdown(AUDIT_OFF, elem_id="audit_status")
                    else:
                        self.audit.build(blocks)
        return blocks

    def _search_tab(self) -> None:
        status = gr.Markdown(self.gallery.status, elem_id="gallery_status")
        with gr.Row():
            query = gr.Textbox(label="Description", placeholder="a woman in a red coat and black trousers ...",
                               elem_id="query", scale=4)
            topk = gr.Slider(1, 50, value=self.topk, step=1, label="top-k", scale=1)
        with gr.Row():
            pick = gr.Dropdown([(f"#{i} (id {p}): {c}", i) for i, (c, p) in
                                enumerate(zip(self.captions, self.caption_identities))],
                               value=None, label="or pick a caption of the test split", visible=bool(self.captions),
                               elem_id="caption_pick", scale=4)
            search = gr.Button("Search", variant="primary", elem_id="search", scale=1)
            rescan = gr.Button("Re-scan gallery", elem_id="rescan", scale=1)
        result_md = gr.Markdown(elem_id="summary")
        results = gr.Gallery(label="top-k", columns=5, height=480, object_fit="contain", elem_id="results")
        with gr.Accordion("table", open=True):
            rows = gr.Dataframe(headers=TABLE_HEADERS, elem_id="table", interactive=False)
        with gr.Accordion("THI: ask the MLLM about the candidates", open=self.thi is not None):
            thi_md = gr.Markdown(THI_OFF if self.thi is None else
                                 f"Runs THI's rounds on the current query (K = {self.thi.s.rounds}, "
                                 f"xi = {self.thi.s.xi}, lam = {self.thi.s.lam}); each round shows as it ends. "
                                 "Answers already in THI's cache are read back.", elem_id="thi_log")
            thi_button = gr.Button("Run THI on this query", elem_id="thi_run", interactive=self.thi is not None)
            thi_grid = gr.Gallery(label="THI: the list after each round", columns=5, height=480,
                                  object_fit="contain", elem_id="thi_results")

        pick.change(on_page(1)(self.pick), pick, query, api_name="pick")
        search.click(on_page(3)(self.search), [query, pick, topk], [result_md, results, rows], api_name="search")
        query.submit(on_page(3)(self.search), [query, pick, topk], [result_md, results, rows],
                     api_visibility="private")   # Enter in the text box: the same search
        rescan.click(on_page(1)(self.rescan), None, status, api_name="rescan")
        thi_button.click(self._thi_handler, [query, pick, topk], [thi_md, thi_grid], api_name="thi",
                         concurrency_limit=1)   # one MLLM: questions are asked one query at a time

    def _thi_handler(self, text, pick, k):
        """run_thi with on_page's rule for generators: a failure ends the stream with its message."""
        try:
            yield from self.run_thi(text, pick, k)
        except QueryError as e:
            yield f"**{e}**", None
        except (Exception, SystemExit) as e:  # noqa: BLE001 -- see on_page
            log.exception("THI failed")
            yield f"**Failed: {type(e).__name__}: {e}**", None
