"""What the search page searches: a gallery (the run's test split, or a folder of one's own crops) behind the same
incremental feature index and scoring as retrieve.py (inference/retrieval_index.py), and one query's ranking on it
with, for a test caption, its rank metrics (utils/metrics.py, the numbers test.py prints).

Nothing here knows about Gradio: the page (webapp/page.py) and the benchmark (bench/app.py) call it alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from inference.retrieval_index import IMAGE_EXTENSIONS, Encoders, GallerySearch, open_index, query_notes
from utils.metrics import rank_metrics


class QueryError(ValueError):
    """Input the page answers with a message (an empty query, a gallery without images), not a failure."""


@dataclass
class Hit:
    rank: int            # 1-based
    name: str            # path relative to the gallery folder: what the page and retrieve.py print
    path: str            # the file, as THI's answer cache keys it
    score: float         # fused cosine, retrieve.py's score
    identity: int | None = None   # the test split's identity (the annotation file's number); None for a folder
    match: bool | None = None     # same identity as the query (test captions only)
    row: int = -1                 # its row in the gallery index


@dataclass
class Ranking:
    """One query on the whole gallery: the order and scores, best first, as retrieval_index ranks it."""
    query: str
    order: torch.Tensor          # [N] gallery rows, best first
    scores: torch.Tensor         # [N] their fused scores
    true_identity: int | None = None
    metrics: dict | None = None  # R1, R5, R10, mAP (= this query's AP), mINP in percent
    true_ranks: list[int] = field(default_factory=list)   # 1-based ranks of the true identity's images
    notes: list[str] = field(default_factory=list)        # how the model read the query: cut, no word in it

    def row(self) -> torch.Tensor:
        """[N] scores in gallery order (THI's S_base row, the metrics' input)."""
        out = torch.empty_like(self.scores)
        out[self.order] = self.scores
        return out


class Gallery:
    """A gallery's index (embedded once into an index file, refreshed incrementally) and its known identities.

    folder + files: only those images (a dataset split; its folder also holds the other splits' images);
    identities: {relative path: identity} where known, as the dataset numbers them.  `refresh()` (re)opens the
    index; until it succeeds, `status` says why there is nothing to search.
    """

    def __init__(self, enc: Encoders, folder: str, description: str, files: list[str] | None = None,
                 identities: dict[str, int] | None = None, full_paths: dict[str, str] | None = None,
                 cache_dir: str | None = None, batch_size: int | None = None, num_workers: int | None = None):
        self.enc, self.folder, self.description = enc, os.path.abspath(folder), description
        self.files, self.identities, self.cache_dir = files, identities or {}, cache_dir
        self._full_paths = full_paths or {}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.searcher: GallerySearch | None = None
        self.status = "not indexed yet"

    @classmethod
    def of_split(cls, enc: Encoders, split, name: str, cache_dir: str, **kw) -> "Gallery":
        """The run's test split: its images, their identities (the annotation file's numbers), and the same path
        strings THI reads them by."""
        folder = os.path.commonpath([os.path.dirname(p) for p in split.img_paths])
        rel = [os.path.relpath(p, folder) for p in split.img_paths]
        return cls(enc, folder, name, files=rel, identities=dict(zip(rel, split.as_written(split.image_pids))),
                   full_paths=dict(zip(rel, split.img_paths)), cache_dir=cache_dir, **kw)

    def refresh(self) -> str:
        """Brings the index up to date with the files now there; returns (and keeps) the status line."""
        try:
            index, report = open_index(self.folder, self.enc, self.batch_size, self.num_workers, progress=False,
                                       files=self.files, cache_dir=self.cache_dir)
        except SystemExit as e:   # open_index's messages are meant for people: no images, not a folder
            self.searcher, self.status = None, str(e)
            return self.status
        self.searcher = GallerySearch(index, self.enc)
        self.status = (f"{self.description}: {len(index.paths)} images ({report})"
                       + (f"; skipped: {', '.join(report.skipped_lines(10))}" if report.skipped else ""))
        return self.status

    @property
    def size(self) -> int:
        return 0 if self.searcher is None else len(self.searcher.index.paths)

    @property
    def names(self) -> list[str]:
        return self.searcher.index.paths

    def path(self, row: int) -> str:
        name = self.names[row]
        return self._full_paths.get(name) or os.path.join(self.folder, name)

    def paths(self) -> list[str]:
        return [self.path(i) for i in range(self.size)]

    def rank(self, query: str, true_identity: int | None = None) -> Ranking:
        """The whole gallery ranked for `query`; with the query's identity, its metrics on this gallery."""
        query = query.strip()
        if not query:
            raise QueryError("Type a description (or pick a caption of the test split) first.")
        if self.searcher is None:
            raise QueryError(f"Nothing to search: {self.status}. Add images ({', '.join(IMAGE_EXTENSIONS)}) "
                             "and press 'Re-scan gallery'.")
        scores, order = self.searcher.ranked([query])
        result = Ranking(query, order[0], scores[0], notes=query_notes(query, self.enc.cfg.text_length))
        if true_identity is not None and self.identities:
            pids = torch.tensor([self.identities.get(n, -1) for n in self.names])
            result.true_identity = true_identity
            result.metrics = rank_metrics(result.row()[None], [true_identity], pids, device="cpu")
            result.true_ranks = (torch.nonzero(pids[result.order] == true_identity)[:, 0] + 1).tolist()
        return result

    def hits(self, ranking: Ranking, k: int, order: torch.Tensor | None = None,
             scores: torch.Tensor | None = None) -> list[Hit]:
        """The first k of a ranking (or of another order of the gallery, THI's re-ranked one) as page rows."""
        order = ranking.order if order is None else order
        scores = ranking.scores if scores is None else scores
        out = []
        for rank, (row, score) in enumerate(zip(order[:k].tolist(), scores[:k].tolist()), 1):
            name = self.names[row]
            identity = self.identities.get(name)
            match = None if ranking.true_identity is None else identity == ranking.true_identity
            out.append(Hit(rank, name, self.path(row), float(score), identity, match, row))
        return out
