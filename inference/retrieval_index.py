"""Searching a folder of your own person crops with a trained run (retrieve.py).

The folder is embedded once and the features are cached in FOLDER/.reid_index/<run-hash>.pt together with
each file's size and mtime; later calls re-embed only files that were added or changed and drop removed ones.
Each file is read on its own (utils.images.read_image with a gallery's limits) and only good images are batched
together, so a file that is skipped (unreadable, empty, a dangling symlink, too large, too odd: one log line each,
naming it and why) changes nothing of the others: their features are those of a folder without it.

Scores are the evaluator's fused similarity: the mean, over every model and every embedding, of the cosine
similarity (evaluation.evaluator.similarity_rows' last row).  That mean is itself one inner product:
    mean_e <q_e, g_e> = < concat_e(q_e) / E , concat_e(g_e) >    (q_e, g_e L2-normalised per embedding)
so the gallery is stored as the concatenation of its normalised per-embedding features and searched with a
single inner-product index (faiss's exact IndexFlatIP when installed, a torch matmul + topk otherwise).
Separate per-embedding indexes could not return the exact fused top-k: an image can be in the fused top-k
without being in any single embedding's top-k.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from utils.images import ImageDecodeError, read_image, why_no_bytes
from datasets.transforms import build_transforms
from utils.checkpoint import atomic_save
from utils.device import autocast
from utils.progress import progress as progress_bar
from utils.safe_load import load as safe_load
from utils.tokenizer import get_tokenizer, tokenize_one
from .runs import load_run

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
INDEX_DIR = ".reid_index"
# bump when the cache layout changes: old caches are then rebuilt, not misread.  2: each file read on its own;
# format 1 could keep rows computed in a batch with an unreadable file (wrong features), and which cannot be told
INDEX_FORMAT = 2


# --------------------------------------------------------------------------- the run's encoders


@dataclass
class Encoders:
    """A run's trained models, enough to embed images and captions (no dataset, no loss heads)."""
    models: list
    cfg: dict
    device: torch.device
    dtype: torch.dtype | None
    identity: dict          # what the cached features depend on: checkpoint file + preprocessing

    @property
    def cache_name(self) -> str:
        # One cache file per (run, checkpoint); its content is checked against `identity` on load,
        # so a retrained best.pth invalidates it instead of adding a new file next to the old one.
        key = f"{os.path.abspath(self.cfg.run_dir)}|{self.identity['checkpoint']}"
        return hashlib.sha1(key.encode()).hexdigest()[:16] + ".pt"

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, sum of dims]: every model's every embedding, L2-normalised, concatenated."""
        images = images.to(self.device, non_blocking=True)
        parts = []
        for model in self.models:
            with autocast(self.device, self.dtype):
                feats = model.encode_image(images)
            parts += [F.normalize(v.float(), dim=-1) for v in feats.values()]
        return torch.cat(parts, dim=1).cpu()

    @torch.no_grad()
    def encode_queries(self, texts: list[str]) -> torch.Tensor:
        """[Q, sum of dims], scaled by 1 / (number of embeddings) so that q . g is the fused mean cosine."""
        ids = torch.stack([tokenize_one(t, self.cfg.text_length) for t in texts]).to(self.device)
        parts = []
        for model in self.models:
            with autocast(self.device, self.dtype):
                feats = model.encode_text(ids)
            parts += [F.normalize(v.float(), dim=-1) for v in feats.values()]
        return torch.cat(parts, dim=1).cpu() / len(parts)


def query_notes(text: str, text_length: int) -> list[str]:
    """What the user should know of how the model reads a query (retrieve.py and the search page print these):
    a query with no letter or digit (emoji, symbols) gives the model no word to match; a query longer than the
    text length is cut (tokenize_one keeps SOT, the first text_length - 2 tokens, EOT) and its end never read."""
    notes = []
    if not any(c.isalnum() for c in text):
        notes.append("the description holds no word (no letter or digit, only emoji, symbols or punctuation): "
                     "the ranking says nothing about it")
    tokenizer = get_tokenizer()
    ids, room = tokenizer.encode(text), text_length - 2
    if len(ids) > room:
        rest = tokenizer.decode(ids[room:]).strip()
        rest = rest if len(rest) <= 80 else rest[:80] + " ..."
        notes.append(f"the description is {len(ids)} tokens long and the model reads the first {room} (the run's "
                     f"text length {text_length}, less its start and end tokens): \"{rest}\" was not read")
    return notes


def load_encoders(run_dir: str, checkpoint: str = "best", device: str | None = None) -> Encoders:
    """The run's models with the checkpoint's weights, read by inference.runs without the training data (a
    user searching their own photos may not have it): no dataset, no loss modules."""
    run = load_run(run_dir, with_data=False, device=device)
    run.load_weights(checkpoint)
    path = run.checkpoint_path(checkpoint)
    st = os.stat(path)
    identity = {"checkpoint": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "img_size": list(run.cfg.img_size), "parts": [f"{k}/{n}" for k, m in enumerate(run.models)
                                                              for n in m.embeddings]}
    return Encoders(run.models, run.cfg, run.device, run.dtype, identity)


# --------------------------------------------------------------------------- the folder index


def scan_folder(folder: str, files: list[str] | None = None,
                skipped: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """{path relative to folder: (size, mtime_ns)} of every image below it (the cache folder excluded), or of
    `files` only (paths relative to folder: a dataset split, whose folder also holds other splits' images).
    A name without a file behind it (a dangling symlink, a file removed meanwhile) goes to `skipped` with why."""
    found = {}
    if files is not None:
        missing = [p for p in files if not os.path.isfile(os.path.join(folder, p))]
        if missing:
            raise SystemExit(f"{len(missing)} gallery images are missing under {folder}, e.g. {missing[0]}")
        for p in files:
            st = os.stat(os.path.join(folder, p))
            found[p] = (st.st_size, st.st_mtime_ns)
        return dict(sorted(found.items()))
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != INDEX_DIR)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    if skipped is not None:
                        skipped[os.path.relpath(full, folder)] = why_no_bytes(full) or "removed while scanned"
                    continue
                found[os.path.relpath(full, folder)] = (st.st_size, st.st_mtime_ns)
    return dict(sorted(found.items()))


class _Crops(Dataset):
    """Images for the index, each read on its own: (i, uint8 image, None), or (i, None, why) for a file that is
    skipped, which never stands in a batch (a placeholder there would change the batch's dtype and shape)."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(read_image(self.paths[i], limits=True)), None
        except ImageDecodeError as e:
            return i, None, e.reason


@dataclass
class RefreshReport:
    embedded: list[str] = field(default_factory=list)   # new or changed files, embedded in this call
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)     # files read in this call and skipped (until they change)
    skipped: dict[str, str] = field(default_factory=dict)   # every file skipped now: {name: why}
    kept: int = 0                                       # reused from the cache

    def __str__(self) -> str:
        text = f"{self.kept} cached, {len(self.embedded)} embedded, {len(self.removed)} removed"
        return text + (f", {len(self.skipped)} skipped" if self.skipped else "")

    def skipped_lines(self, limit: int | None = None) -> list[str]:
        """'NAME (why)' per skipped file, the first `limit` of them and a count of the rest."""
        names = sorted(self.skipped)
        lines = [f"{n} ({self.skipped[n]})" for n in names[:limit]]
        return lines + ([f"... {len(names) - limit} more"] if limit is not None and len(names) > limit else [])


@dataclass
class FolderIndex:
    folder: str
    paths: list[str]                     # relative to folder, in feature-row order
    stats: list[tuple[int, int]]         # (size, mtime_ns) per path when it was embedded
    features: torch.Tensor               # [N, sum of dims] fp32, normalised per embedding
    failed: dict[str, tuple[int, int, str]]   # files skipped when read: the stat they had, and why

    def to_dict(self, identity: dict) -> dict:
        return {"format": INDEX_FORMAT, "identity": identity, "paths": self.paths,
                "stats": [list(s) for s in self.stats], "features": self.features,
                "failed": {p: list(s) for p, s in self.failed.items()}}


def index_path(folder: str, enc: Encoders, cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or os.path.join(folder, INDEX_DIR), enc.cache_name)


def _load_cached(path: str, folder: str, enc: Encoders) -> FolderIndex | None:
    if not os.path.isfile(path):
        return None
    try:
        data = safe_load(path, "retrieval index")
        if data.get("format") != INDEX_FORMAT:
            log.info("%s was made by an older version of this code (format %s, which could keep wrong features of "
                     "images batched with an unreadable file); rebuilding it", path, data.get("format"))
            return None
        if data.get("identity") != enc.identity:
            log.info("%s was made with other weights or settings; rebuilding it", path)
            return None
        return FolderIndex(folder, list(data["paths"]), [tuple(s) for s in data["stats"]], data["features"],
                           {p: tuple(s) for p, s in data["failed"].items()})
    except Exception as e:  # noqa: BLE001 - a damaged cache is only a cache: say so and rebuild
        log.warning("ignoring unreadable index %s (%s: %s); rebuilding it", path, type(e).__name__, e)
        return None


def _embed(paths: list[str], enc: Encoders, batch_size: int, num_workers: int,
           progress: bool) -> tuple[torch.Tensor | None, dict[int, str]]:
    """(features of the good images in order, {index of a skipped path: why}).  The loader reads the files (in
    workers); the good images are then batched anew, batch_size at a time, so they form the same batches as in a
    folder without the skipped ones and get exactly its features."""
    data = _Crops(paths, build_transforms(tuple(enc.cfg.img_size), is_train=False))
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    feats, skipped, pending = [], {}, []
    for items in progress_bar(loader, enabled=progress, desc="indexing images", unit="batch"):
        for i, image, why in items:
            if why is not None:
                skipped[i] = why
                continue
            pending.append(image)
            if len(pending) == batch_size:
                feats.append(enc.encode_images(torch.stack(pending)))
                pending = []
    if pending:
        feats.append(enc.encode_images(torch.stack(pending)))
    return (torch.cat(feats) if feats else None), skipped


def open_index(folder: str, enc: Encoders, batch_size: int | None = None, num_workers: int | None = None,
               progress: bool = True, files: list[str] | None = None,
               cache_dir: str | None = None) -> tuple[FolderIndex, RefreshReport]:
    """The folder's index, brought up to date with the files now there, and what had to change.

    files: only these images (relative to folder) instead of every image below it; cache_dir: where the index
    file goes instead of FOLDER/.reid_index (a dataset folder may be read-only, and a subset needs its own file).
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise SystemExit(f"--images {folder}: not a folder")
    report = RefreshReport()
    current = scan_folder(folder, files, report.skipped)
    cache_file = index_path(folder, enc, cache_dir)
    old = _load_cached(cache_file, folder, enc) or FolderIndex(folder, [], [], torch.zeros(0, 0), {})

    keep_rows = [i for i, (p, s) in enumerate(zip(old.paths, old.stats)) if current.get(p) == s]
    report.kept = len(keep_rows)
    report.removed = [p for p in old.paths + list(old.failed) if p not in current]
    failed = {p: f for p, f in old.failed.items() if current.get(p) == tuple(f[:2])}
    known = {old.paths[i] for i in keep_rows} | set(failed)
    todo = [p for p in current if p not in known]

    paths = [old.paths[i] for i in keep_rows]
    stats = [old.stats[i] for i in keep_rows]
    features = old.features[keep_rows] if keep_rows else None
    if todo:
        new_feats, bad = _embed([os.path.join(folder, p) for p in todo], enc,
                                batch_size or enc.cfg.test_batch_size,
                                enc.cfg.num_workers if num_workers is None else num_workers, progress)
        for i, p in enumerate(todo):
            if i in bad:
                report.failed.append(p)
                failed[p] = (*current[p], bad[i])
            else:
                report.embedded.append(p)
        paths += report.embedded
        stats += [current[p] for p in report.embedded]
        if new_feats is not None:
            features = new_feats if features is None else torch.cat([features, new_feats])
    report.skipped.update({p: f[2] for p, f in failed.items()})
    for line in report.skipped_lines():   # every call, cached or not: what is not searched, and why
        log.warning("skipped %s", line)
    if features is None or not paths:
        raise SystemExit(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    index = FolderIndex(folder, paths, stats, features, failed)
    if todo or report.removed or not os.path.isfile(cache_file):
        _save(index, enc, cache_file)
    return index, report


def _save(index: FolderIndex, enc: Encoders, cache_file: str) -> None:
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        atomic_save(index.to_dict(enc.identity), cache_file)  # an interrupted save leaves no half-written cache
    except OSError as e:  # a read-only folder still gets searched, just not cached
        log.warning("cannot write the index cache %s (%s); the folder is re-embedded next time", cache_file, e)


# --------------------------------------------------------------------------- search


class VectorSearch:
    """Exact maximum-inner-product search: faiss IndexFlatIP when installed, a torch matmul otherwise."""

    def __init__(self, features: torch.Tensor, device: torch.device | str = "cpu", use_faiss: bool | None = None):
        self.size = features.shape[0]
        if use_faiss is None:
            try:
                import faiss  # noqa: F401  optional: BLAS-tuned search and lower memory for huge folders
                use_faiss = True
            except ImportError:
                use_faiss = False
        self.backend = "faiss" if use_faiss else "torch"
        if use_faiss:
            import faiss
            self.index = faiss.IndexFlatIP(features.shape[1])
            self.index.add(features.float().contiguous().numpy())
        else:
            self.device = torch.device(device)
            self.matrix = features.float().to(self.device)

    def search(self, queries: torch.Tensor, k: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [Q, k], row indices [Q, k]), best first."""
        k = min(k, self.size)
        if self.backend == "faiss":
            scores, ids = self.index.search(queries.float().contiguous().numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(ids).long()
        out_s, out_i = [], []
        for start in range(0, queries.shape[0], chunk):  # bounded [chunk, N] score blocks
            sims = queries[start:start + chunk].float().to(self.device) @ self.matrix.t()
            s, i = sims.topk(k, dim=1)
            out_s.append(s.cpu())
            out_i.append(i.cpu())
        return torch.cat(out_s), torch.cat(out_i)


class GallerySearch:
    """A folder index and the run's encoders, ready for queries: the one scoring path of retrieve.py and of the
    search page (webapp/), so that both rank a query alike.  The search structure is built once, not per query."""

    def __init__(self, index: FolderIndex, enc: Encoders, use_faiss: bool | None = None):
        self.index, self.enc = index, enc
        self.engine = VectorSearch(index.features, enc.device, use_faiss)

    def ranked(self, queries: list[str], topk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused scores [Q, k], row indices [Q, k] into index.paths), best first; topk None = the whole gallery."""
        return self.engine.search(self.enc.encode_queries(queries), topk or self.engine.size)

    def search(self, queries: list[str], topk: int = 10) -> list[list[tuple[str, float]]]:
        """Per query, the top-k (relative path, fused score), best first."""
        scores, ids = self.ranked(queries, topk)
        return [[(self.index.paths[i], float(s)) for s, i in zip(row_s.tolist(), row_i.tolist())]
                for row_s, row_i in zip(scores, ids)]


def search(index: FolderIndex, enc: Encoders, queries: list[str], topk: int = 10,
           use_faiss: bool | None = None) -> list[list[tuple[str, float]]]:
    """Per query, the top-k (relative path, fused score), best first."""
    return GallerySearch(index, enc, use_faiss).search(queries, topk)
