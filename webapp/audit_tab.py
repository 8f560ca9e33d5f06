"""The page's Audit tab: the pairs `python audit.py --run RUN_DIR` ranked (RUN_DIR/audit), as image + caption + scores,
sorted and filtered, each marked keep or drop, and the cleaned annotation file exported (pair_audit/cleaned.py, what
`audit.py --write_clean` writes) into the audit's folder.

A pair's image is found in the audited annotation file by the pair's number, never taken from pairs.csv, and reaches
the browser only as a thumbnail drawn here (webapp/page.py thumbnail_of): the tab serves nothing but the dataset's
images, and writes nothing but the audit folder's marks.json and cleaned.json.
"""
from __future__ import annotations

import logging
import os
import threading

import gradio as gr
import numpy as np

from datasets import DatasetError, build_dataset
from datasets.noise import apply_noise, load_or_create_permutation
from pair_audit import store
from pair_audit.cleaned import pairs_to_drop, training_options, write_cleaned
from pair_audit.pairs import AuditError, split_pairs
from .gallery import QueryError
from .page import MATCH_COLOUR, on_page, thumbnail_file, thumbnail_of

log = logging.getLogger(__name__)

PAGE_SIZE = 24
DROP_COLOUR = (200, 40, 40)
SHOW = ("all pairs", "below the threshold", "to be dropped", "marked", "asked the MLLM")
SORTS = ("most suspect first", "least similar first", "lowest MLLM P(yes) first", "by identity")
TABLE_HEADERS = ["rank", "pair", "id", "clean p", "similarity", "rank in identity", "MLLM P(yes)", "permuted",
                 "mark", "file", "caption"]


class AuditUnreadable(ValueError):
    """The audit folder does not match the data it audited (or cannot be read): the tab says so, the page runs."""


class AuditTab:
    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.lock = threading.Lock()     # marks are written by concurrent clicks
        try:
            self.about = store.read_about(self.folder)
            self.rows = store.read_pairs(os.path.join(self.folder, store.PAIRS))
        except (OSError, ValueError, KeyError) as e:
            raise AuditUnreadable(f"{self.folder}: cannot read the audit ({e}); run python audit.py again") from None
        a = self.about
        try:
            dataset = build_dataset(a["dataset_name"], a["root_dir"], a["annotations"])
            records, self.sources = split_pairs(dataset, a["split"])
            self.permutation = None
            if a["noisy_file"]:
                if not os.path.isfile(a["noisy_file"]):
                    raise AuditUnreadable(f"{a['noisy_file']}, the noise of the audited pairs, is gone: the pairs "
                                          "the run saw cannot be shown")
                self.permutation = load_or_create_permutation(a["noisy_file"], len(records), 1.0, 0)  # read, checked
                records = apply_noise(records, self.permutation)
        except (DatasetError, AuditError) as e:
            raise AuditUnreadable(f"the audited data cannot be read: {e}") from None
        self.records = records
        now = {"annotations": store.fingerprint(a["annotations"]), "split": a["split"],
               "noise": store.fingerprint(a["noisy_file"])}
        if now != a["pairs_key"] or sorted(r["pair"] for r in self.rows) != list(range(len(records))):
            raise AuditUnreadable(f"{a['annotations']} (or its noise file) changed since the audit in {self.folder}: "
                                  f"run python audit.py --run {a['run']} again")
        for row in self.rows:
            if row["file_path"] != self.sources[row["pair"]].file_path:
                raise AuditUnreadable(f"{os.path.join(self.folder, store.PAIRS)} pair {row['pair']} is "
                                      f"{row['file_path']}, the annotation file says {self.sources[row['pair']].file_path}: "
                                      "run python audit.py again")
        self.by_pair = {row["pair"]: row for row in self.rows}
        self.has_truth = "permuted" in self.rows[0]
        self.has_mllm = "mllm_p_yes" in self.rows[0]
        self.marks = store.read_marks(self.folder, a["pairs_key"])

    @classmethod
    def open(cls, folder: str) -> tuple["AuditTab | None", str]:
        """(the tab, '') or (None, why there is none: no audit yet, or one that does not match its data)."""
        if not os.path.isfile(os.path.join(folder, store.PAIRS)):
            return None, ""
        try:
            return cls(folder), ""
        except AuditUnreadable as e:
            return None, str(e)

    # ------------------------------------------------------------------ what the handlers do
    def selected(self, show: str, sort: str, threshold: float, identity, text: str) -> list[dict]:
        threshold = float(threshold)
        rows = self.rows
        if show == SHOW[1]:
            rows = [r for r in rows if r["clean_probability"] < threshold]
        elif show == SHOW[2]:
            drop = self.to_drop(threshold)
            rows = [r for r in rows if r["pair"] in drop]
        elif show == SHOW[3]:
            rows = [r for r in rows if r["pair"] in self.marks]
        elif show == SHOW[4]:
            rows = [r for r in rows if r.get("mllm_group")]
        if identity not in (None, ""):
            try:
                wanted = int(str(identity).strip())
            except ValueError:
                raise QueryError(f"identity {identity!r}: give the identity's number, as the annotation file "
                                 "writes it") from None
            rows = [r for r in rows if r["id"] == wanted]
        if text and text.strip():
            needle = text.strip().lower()
            rows = [r for r in rows if needle in self.records[r["pair"]].caption.lower()]
        if sort == SORTS[1]:
            rows = sorted(rows, key=lambda r: (r["similarity"], r["suspect_rank"]))
        elif sort == SORTS[2]:
            rows = sorted(rows, key=lambda r: (r.get("mllm_p_yes") is None, r.get("mllm_p_yes") or 0.0,
                                               r["suspect_rank"]))
        elif sort == SORTS[3]:
            rows = sorted(rows, key=lambda r: (r["id"], r["pair"]))
        return rows

    def to_drop(self, threshold: float) -> set[int]:
        below = np.zeros(len(self.records), dtype=bool)
        below[[r["pair"] for r in self.rows if r["clean_probability"] < threshold]] = True
        return pairs_to_drop(below, self.marks)

    def listing(self, show, sort, threshold, identity, text, page):
        """(summary, gallery, table, the pairs shown in the gallery's order)."""
        rows = self.selected(show, sort, threshold, identity, text)
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page = min(max(int(page or 1), 1), pages)
        shown = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        a = self.about
        below = sum(r["clean_probability"] < float(threshold) for r in self.rows)
        dropped, kept = (sum(m == v for m in self.marks.values()) for v in (store.DROP, store.KEEP))
        summary = (f"{len(self.rows)} pairs of the {a['split']} split of `{os.path.basename(a['annotations'])}`, "
                   f"scored by `{os.path.basename(a['checkpoint'])}`; {below} below {float(threshold):.2f}, "
                   f"{len(self.to_drop(float(threshold)))} to be dropped ({dropped} marked drop, {kept} marked keep). "
                   f"Showing {len(shown)} of {len(rows)} ({show}, {sort}), page {page} of {pages}. "
                   "Click an image to select its pair.")
        gallery = [(thumbnail_file(thumbnail_of(self.records[r["pair"]].img_path, self._frame(r["pair"]))), self._tile(r))
                   for r in shown]
        table = [[r["suspect_rank"], r["pair"], r["id"], round(r["clean_probability"], 4), round(r["similarity"], 4),
                  f"{r['identity_rank']} of {r['identity_captions']}",
                  "" if r.get("mllm_p_yes") is None else round(r["mllm_p_yes"], 3),
                  "" if not self.has_truth else ("yes" if r["permuted"] else "no"), self.marks.get(r["pair"], ""),
                  r["file_path"], self.records[r["pair"]].caption] for r in shown]
        return summary, gallery, table, [r["pair"] for r in shown]

    def _frame(self, pair: int):
        return {store.DROP: DROP_COLOUR, store.KEEP: MATCH_COLOUR}.get(self.marks.get(pair))

    def _tile(self, r: dict) -> str:
        mark = self.marks.get(r["pair"])
        return (f"#{r['suspect_rank']} pair {r['pair']} · id {r['id']} · p {r['clean_probability']:.2f}"
                + (f" · {mark.upper()}" if mark else ""))

    def mark(self, pair, what: str) -> str:
        if pair in (None, ""):
            raise QueryError("Select a pair first: click its image, or type its number.")
        pair = int(pair)
        if pair not in self.by_pair:
            raise QueryError(f"There is no pair {pair}: the audit has pairs 0 to {len(self.rows) - 1}.")
        with self.lock:
            if what in (store.KEEP, store.DROP):
                self.marks[pair] = what
            else:
                self.marks.pop(pair, None)
            store.write_marks(self.folder, self.about["pairs_key"], self.marks)
        row = self.by_pair[pair]
        return (f"pair {pair} (#{row['suspect_rank']}, id {row['id']}): "
                + (f"marked {what}" if what in (store.KEEP, store.DROP) else "mark cleared")
                + f" (saved in {os.path.join(self.folder, store.MARKS)})")

    def export(self, threshold) -> str:
        path = os.path.join(self.folder, store.CLEANED)
        with self.lock:
            drop = self.to_drop(float(threshold))
            report = write_cleaned(self.about["annotations"], self.sources, drop, path, self.permutation)
        noise = f" and `{report['noise_file']}`" if report.get("noise_file") else ""
        return (f"Wrote `{report['file']}`{noise}: {report['kept']} pairs kept, {report['dropped']} dropped "
                f"(below {float(threshold):.2f}, the marks winning). Train on it with the run's training command and "
                f"`{training_options(report, self.about['noisy_rate'])}`.")

    # ------------------------------------------------------------------ the tab
    def build(self, blocks: gr.Blocks) -> None:
        """The tab's components and events, inside the page's gr.Tab of `blocks`."""
        with gr.Row():
            threshold = gr.Slider(0, 1, value=self.about["threshold"], step=0.01, label="clean probability threshold",
                                  elem_id="audit_threshold", scale=2)
            show = gr.Radio(list(SHOW), value=SHOW[1], label="show", elem_id="audit_show", scale=3)
            sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="sort", elem_id="audit_sort", scale=2)
        with gr.Row():
            identity = gr.Textbox(label="identity", placeholder="all", elem_id="audit_identity", scale=1)
            text = gr.Textbox(label="caption contains", elem_id="audit_text", scale=3)
            page = gr.Number(1, precision=0, minimum=1, label="page", elem_id="audit_page", scale=1)
            refresh = gr.Button("List", elem_id="audit_list", scale=1)
        summary = gr.Markdown(elem_id="audit_summary")
        with gr.Row():
            pair = gr.Number(None, precision=0, label="selected pair", elem_id="audit_pair", scale=2)
            keep = gr.Button("Keep", elem_id="audit_keep", scale=1)
            drop = gr.Button("Drop", variant="stop", elem_id="audit_drop", scale=1)
            clear = gr.Button("Clear mark", elem_id="audit_clear", scale=1)
        status = gr.Markdown(elem_id="audit_status")
        gallery = gr.Gallery(label="pairs", columns=8, height=430, object_fit="contain",
                             elem_id="audit_gallery", allow_preview=False)
        shown = gr.State([])
        table = gr.Dataframe(headers=TABLE_HEADERS, elem_id="audit_table", interactive=False, wrap=True,
                             column_widths=["5%", "5%", "5%", "7%", "8%", "8%", "7%", "7%", "5%", "10%", "33%"])
        with gr.Row():
            export = gr.Button("Export the cleaned annotation file", variant="primary", elem_id="audit_export")
        exported = gr.Markdown(f"Writes `{os.path.join(self.folder, store.CLEANED)}`: the annotation file without the "
                               "pairs to be dropped, in the dataset's format.", elem_id="audit_exported")

        filters = [show, sort, threshold, identity, text, page]
        listed = [summary, gallery, table, shown]
        list_fn = on_page(4)(self.listing)
        refresh.click(list_fn, filters, listed, api_name="audit_list")
        for control in (show, sort, threshold, identity, text, page):
            control.change(list_fn, filters, listed, api_visibility="private")
        gallery.select(self._select, shown, [pair, status], api_visibility="private")
        for button, what in ((keep, store.KEEP), (drop, store.DROP), (clear, "")):
            button.click(on_page(1)(lambda p, what=what: self.mark(p, what)), pair, status,
                         api_name=f"audit_{what or 'clear'}").then(list_fn, filters, listed, api_visibility="private")
        export.click(on_page(1)(self.export), threshold, exported, api_name="audit_export")
        blocks.load(list_fn, filters, listed)       # each visit lists the pairs with the marks saved by then

    def _select(self, shown: list[int], evt: gr.SelectData):
        """A click on a tile: its pair becomes the selected one, and its caption and scores are shown."""
        if evt.index is None or evt.index >= len(shown):
            return None, ""
        return shown[evt.index], self.details(shown[evt.index])

    def details(self, pair: int) -> str:
        r = self.by_pair[pair]
        said = [f"clean probability {r['clean_probability']:.3f}", f"similarity {r['similarity']:.3f}",
                f"rank {r['identity_rank']} of {r['identity_captions']} among its identity's captions"]
        if r.get("mllm_p_yes") is not None:
            said.append(f"MLLM P(yes) {r['mllm_p_yes']:.3f}")
        if self.has_truth:
            said.append("permuted (the noise file)" if r["permuted"] else "not permuted (the noise file)")
        return (f"**pair {pair}** (#{r['suspect_rank']}, id {r['id']}, `{r['file_path']}`"
                + (f", marked {self.marks[pair]}" if pair in self.marks else "") + f"): {'; '.join(said)}.  \n"
                f"*{self.records[pair].caption}*")
