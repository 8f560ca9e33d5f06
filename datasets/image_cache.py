"""Decode once: the images of a dataset, resized to the model's input size, kept in one uint8 file.

JPEG decoding and resizing give the same pixels every epoch, so they are done once per (dataset, size): each
image is read with PIL, resized with torchvision's Resize (its default, bilinear with antialias, on the PIL
image: the published transform) and stored as uint8 [3, H, W] in a slot of `pixels.u8`, a raw array
[slots, 3, H, W] that training, the division pass and evaluation read through a memory map.

Layout, one folder per (dataset folder, size), by default next to the dataset:

    ROOT/DATASET/.cache/images_384x128/
        pixels.u8     raw uint8 [slots, 3, H, W]
        index.json    {"version", "size", "resize", "entries": {image: [slot, bytes, mtime_ns]}}
        lock          flock'ed while the cache is extended

An image is keyed by its path (relative to the dataset folder, so a moved dataset keeps its cache), its size in
bytes and its modification time (ns), as make and rsync decide what changed: an image whose size or mtime
differs from its entry is stale and is decoded again into its slot; a new image gets a new slot.  A content
hash would also catch a file replaced by another of the same size with its mtime kept (`cp -p`, `touch -r`),
but it reads every JPEG at every start (CUHK-PEDES: ~1 GB), which is what the cache is there to avoid.

A slot is listed in index.json only after its pixels are written and flushed to disk, and index.json is
replaced atomically: a build that is killed leaves images that are simply not listed (or listed with their
old stat), which the next use decodes; a half-written slot is never read.  Building runs in worker processes
with a progress bar (on a terminal) and is locked, so concurrent trainings (or torchrun's processes) wait for
one builder instead of racing.

    python -m datasets.cache --dataset_name CUHK-PEDES --root_dir data --img_size 384 128     # build ahead
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional, Sequence

import numpy as np
import torch

from .bases import DATASET_ROOTS
from .transforms import build_transforms, image_size_hw as _hw

log = logging.getLogger("reid")

VERSION = 1
RESIZE = "PIL RGB -> torchvision.transforms.Resize(size) (bilinear, antialias) -> uint8 [3, H, W]"
CACHE_FOLDER = ".cache"          # inside the dataset folder
CHUNK = 64                       # images per worker task
SAVE_EVERY_S = 5.0               # index.json is rewritten at most this often while building
IN_PROCESS_BELOW = 256           # fewer images than this are decoded in the calling process (no pool start-up)

# Process-wide defaults of the loaders (datasets.loaders): on, next to the dataset.  configure() changes them
# (--image_cache / --image_cache_dir); a loader's own arguments win.
_settings = {"enabled": True, "cache_dir": ""}


def configure(enabled: Optional[bool] = None, cache_dir: Optional[str] = None) -> dict:
    """Set the process-wide default (on / off, and the folder caches go to; "" = next to each dataset)."""
    if enabled is not None:
        _settings["enabled"] = bool(enabled)
    if cache_dir is not None:
        _settings["cache_dir"] = str(cache_dir)
    return dict(_settings)


def settings() -> dict:
    return dict(_settings)


def register_dataset_root(path: str) -> None:
    """A dataset folder (PersonDataset registers its own): caches of images under it go to PATH/.cache."""
    DATASET_ROOTS.add(os.path.abspath(path))


def dataset_folder_of(paths: Sequence[str]) -> str:
    """The registered dataset folder holding every path (the deepest one), else the paths' common folder."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    common = os.path.commonpath(list(folders)) if folders else os.getcwd()
    inside = [r for r in DATASET_ROOTS if os.path.commonpath([r, common]) == r]
    return max(inside, key=len) if inside else common


def cache_folder(paths: Sequence[str], size, cache_dir: str = "") -> tuple[str, str]:
    """(folder of the cache for these images at this size, the dataset folder its keys are relative to)."""
    h, w = _hw(size)
    base = dataset_folder_of(paths)
    if cache_dir:
        tag = f"{os.path.basename(base) or 'root'}-{hashlib.sha1(base.encode()).hexdigest()[:8]}"
        return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), tag, f"images_{h}x{w}"), base
    return os.path.join(base, CACHE_FOLDER, f"images_{h}x{w}"), base


def user_cache_folder(paths: Sequence[str], size) -> tuple[str, str]:
    """Where a cache goes when the dataset folder is read-only: $XDG_CACHE_HOME (~/.cache)/reid-images/..."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return cache_folder(paths, size, os.path.join(root, "reid-images"))


# ------------------------------------------------------------------ decoding (the JPEG path)
def decode_resized(path: str, size) -> np.ndarray:
    """uint8 [3, H, W]: the image read as RGB through the published test transform (build_transforms)."""
    from utils.images import read_image

    return build_transforms(size)(read_image(path)).numpy()


# ------------------------------------------------------------------ the cache folder
class ImageCache:
    """One cache folder: `ensure(paths)` returns each path's slot, decoding what is missing or stale."""

    def __init__(self, folder: str, base: str, size):
        self.folder, self.base, self.size = folder, base, _hw(size)
        self.pixels_file = os.path.join(folder, "pixels.u8")
        self.index_file = os.path.join(folder, "index.json")
        self.slot_bytes = 3 * self.size[0] * self.size[1]

    # ---- index
    def key(self, path: str) -> str:
        path = os.path.abspath(path)
        return os.path.relpath(path, self.base) if os.path.commonpath([self.base, path]) == self.base else path

    def read_index(self) -> dict:
        """{key: [slot, bytes, mtime_ns]} of the finished slots; {} when missing, damaged or of another format
        (then everything is rebuilt: a cache is only a cache)."""
        try:
            with open(self.index_file, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("image cache %s: unreadable index (%s); rebuilding it", self.index_file, e)
            return {}
        if (not isinstance(data, dict) or data.get("version") != VERSION or data.get("resize") != RESIZE
                or data.get("size") != list(self.size) or not _valid_entries(data.get("entries"))):
            log.warning("image cache %s was made by another version or size, or its index is damaged; rebuilding it",
                        self.folder)
            return {}
        size = os.path.getsize(self.pixels_file) if os.path.exists(self.pixels_file) else 0
        entries = data["entries"]
        # a slot past the end of the pixel file (file replaced or truncated) is not there
        return {k: v for k, v in entries.items() if (v[0] + 1) * self.slot_bytes <= size}

    def write_index(self, entries: dict) -> None:
        tmp = f"{self.index_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "size": list(self.size), "resize": RESIZE, "entries": entries}, f,
                      separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.index_file)

    @staticmethod
    def stat(path: str) -> list[int]:
        """[bytes, mtime_ns] of an image; a missing file gives [-1, -1] (never equal to an entry)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return [-1, -1]
        return [st.st_size, st.st_mtime_ns]

    def lookup(self, paths: Sequence[str], entries: dict) -> tuple[np.ndarray, list]:
        """(slot of each path, -1 where missing or stale; the stat of each path now)."""
        slots = np.full(len(paths), -1, dtype=np.int64)
        stats = [self.stat(p) for p in paths]
        for i, (p, st) in enumerate(zip(paths, stats)):
            entry = entries.get(self.key(p))
            if entry is not None and entry[1:] == st:
                slots[i] = entry[0]
        return slots, stats

    # ---- building
    def ensure(self, paths: Sequence[str], workers: Optional[int] = None, show_progress: bool = True) -> np.ndarray:
        """Slot of every path, after decoding the missing and stale ones (in `workers` processes).  An image that
        cannot be decoded raises ImageDecodeError naming it, after every other image is stored."""
        entries = self.read_index()
        slots, _ = self.lookup(paths, entries)
        if (slots >= 0).all():
            return slots
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, "lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)        # another process may be building: wait, then look again
            try:
                entries = self.read_index()
                slots, stats = self.lookup(paths, entries)
                todo = np.flatnonzero(slots < 0)
                if len(todo):
                    self._build(paths, stats, todo, slots, entries, workers, show_progress)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return slots

    def _build(self, paths, stats, todo, slots, entries, workers, show_progress) -> None:
        from utils.progress import progress

        from utils.images import ImageDecodeError

        # a stale image is decoded again into its own slot; a new one (and a duplicate path) gets the next free
        # slot.  Free slots start after the highest listed one, so the slots of a killed build are reused.
        used = {v[0] for v in entries.values()}
        next_slot = max(used) + 1 if used else 0
        jobs, assigned = [], {}
        for i in todo:
            key = self.key(paths[i])
            if key not in assigned:
                old = entries.get(key)
                if old is not None:
                    assigned[key] = old[0]
                else:
                    assigned[key], next_slot = next_slot, next_slot + 1
                jobs.append((assigned[key], paths[i], key, stats[i]))
        fd = os.open(self.pixels_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < next_slot * self.slot_bytes:
                os.ftruncate(fd, next_slot * self.slot_bytes)
            workers = _workers(workers, len(jobs))
            log.info("image cache: decoding %d of %d images into %s (%dx%d, %d process%s)", len(jobs), len(paths),
                     self.folder, *self.size, workers, "" if workers == 1 else "es")
            chunks = [jobs[k:k + CHUNK] for k in range(0, len(jobs), CHUNK)]
            tasks = [(self.pixels_file, self.size, [(slot, path) for slot, path, _, _ in chunk], workers > 1)
                     for chunk in chunks]
            failed: list[str] = []
            bar = progress(total=len(jobs), enabled=show_progress, desc=f"caching images {self.size[0]}x{self.size[1]}",
                           unit="img", leave=False)
            last_save = time.monotonic()
            pool = None
            try:
                if workers > 1:
                    # forkserver, not fork: a forked copy of this process (torch's threads, the TensorBoard
                    # writer's) can inherit a held lock and hang, and a Pool waits forever for a worker that died;
                    # the executor raises BrokenProcessPool instead
                    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
                    results = pool.map(_decode_chunk, tasks)
                else:
                    results = map(_decode_chunk, tasks)
                for chunk, errors in zip(chunks, results):
                    bad = {path for path, _ in errors}
                    failed += [message for _, message in errors]
                    os.fdatasync(fd)                 # the pixels are on disk before the index lists them
                    for slot, path, key, st in chunk:
                        if path not in bad:
                            entries[key] = [slot, *st]
                    bar.update(len(chunk))
                    if time.monotonic() - last_save > SAVE_EVERY_S:
                        self.write_index(entries)
                        last_save = time.monotonic()
            except BrokenProcessPool as e:
                raise RuntimeError(f"image cache: a process decoding images into {self.folder} died ({e}); the "
                                   f"images cached so far are kept: run again, or train with --image_cache false") from e
            finally:
                bar.close()
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
                self.write_index(entries)
        finally:
            os.close(fd)
        where: dict[str, list[int]] = {}
        for i in todo:
            where.setdefault(self.key(paths[i]), []).append(i)
        for slot, path, key, st in jobs:
            entry = entries.get(key)
            if entry is not None and entry[1:] == st:
                slots[where[key]] = entry[0]
        if failed:
            more = f" (and {len(failed) - 1} other unreadable images)" if len(failed) > 1 else ""
            raise ImageDecodeError(failed[0] + more)


def _valid_entries(entries) -> bool:
    """{key: [slot >= 0, bytes, mtime_ns]}, as write_index writes them: anything else is not read as slots."""
    return isinstance(entries, dict) and all(
        isinstance(v, list) and len(v) == 3 and all(type(x) is int for x in v) and v[0] >= 0
        for v in entries.values())


def _workers(workers: Optional[int], jobs: int) -> int:
    if jobs < IN_PROCESS_BELOW:
        return 1
    if workers is None or workers <= 0:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:
            workers = os.cpu_count() or 1
    return max(1, min(workers, 32, -(-jobs // CHUNK)))


_open_files: dict[str, int] = {}      # a pool worker keeps the pixel file open for its next chunks


def _decode_chunk(task) -> list[tuple[str, str]]:
    """Decode a chunk of images into their slots (in a pool worker or in-process); returns (path, message) of
    the images that could not be decoded."""
    from utils.images import ImageDecodeError

    pixels_file, size, items, in_pool = task
    fd = _open_files.get(pixels_file) if in_pool else None
    if fd is None:
        fd = os.open(pixels_file, os.O_RDWR)
        if in_pool:
            _open_files[pixels_file] = fd
    slot_bytes = 3 * size[0] * size[1]
    errors = []
    try:
        for slot, path in items:
            try:
                pixels = decode_resized(path, size)
            except ImageDecodeError as e:
                errors.append((path, str(e)))
                continue
            os.pwrite(fd, np.ascontiguousarray(pixels).tobytes(), slot * slot_bytes)
    finally:
        if not in_pool:
            os.close(fd)
    return errors


# ------------------------------------------------------------------ what the loaders read
class ImageSource:
    """Resized uint8 images of a list of paths: `read(indices)` -> uint8 tensor [n, 3, H, W].  `prepare()` (in
    the main process, before loader workers start) does any one-off work."""

    def __init__(self, paths: Sequence[str], size):
        self.paths, self.size = list(paths), _hw(size)

    def __len__(self) -> int:
        return len(self.paths)

    def prepare(self) -> None:
        pass

    def read(self, indices) -> torch.Tensor:
        raise NotImplementedError


class DecodedImages(ImageSource):
    """The JPEG path: every read decodes and resizes (the cache switched off)."""

    cached = False

    def read(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([decode_resized(self.paths[i], self.size) for i in indices]))


class CachedImages(ImageSource):
    """Reads slots of a cache folder through a memory map (opened lazily in each process)."""

    cached = True

    def __init__(self, paths: Sequence[str], size, cache_dir: str = "", workers: Optional[int] = None,
                 show_progress: bool = True):
        super().__init__(paths, size)
        self.cache_dir, self.workers, self.show_progress = cache_dir, workers, show_progress
        self.slots: Optional[np.ndarray] = None
        self.folder: Optional[str] = None
        self._pixels = None
        self._fallback: Optional[DecodedImages] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pixels"] = None          # each worker maps the file itself
        return state

    def prepare(self) -> None:
        """Build what is missing (once per process); ImageDecodeError names an unreadable image.  A dataset
        folder that is read-only puts the cache under ~/.cache; a cache that cannot be written at all (disk
        full) falls back to decoding, with a warning."""
        if self.slots is not None or self._fallback is not None:
            return
        try:
            self._ensure(*cache_folder(self.paths, self.size, self.cache_dir))
        except OSError as e:
            if not self.cache_dir and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                try:
                    log.info("image cache: %s is not writable (%s); using %s", e.filename, e.strerror,
                             user_cache_folder(self.paths, self.size)[0])
                    return self._ensure(*user_cache_folder(self.paths, self.size))
                except OSError as again:
                    e = again
            log.warning("image cache unavailable (%s: %s); decoding the JPEGs at every read instead",
                        type(e).__name__, e)
            self._fallback = DecodedImages(self.paths, self.size)

    def _ensure(self, folder: str, base: str) -> None:
        self.slots = ImageCache(folder, base, self.size).ensure(self.paths, self.workers, self.show_progress)
        self.folder = folder

    def _map(self) -> np.ndarray:
        if self._pixels is None:
            h, w = self.size
            count = int(self.slots.max()) + 1 if len(self.slots) else 0
            self._pixels = np.memmap(os.path.join(self.folder, "pixels.u8"), dtype=np.uint8, mode="r",
                                     shape=(count, 3, h, w))
        return self._pixels

    def read(self, indices) -> torch.Tensor:
        if self._fallback is not None or self.slots is None:
            self.prepare()
            if self._fallback is not None:
                return self._fallback.read(indices)
        return self.read_slots(self.slots[np.asarray(indices, dtype=np.int64)])

    def slots_of(self, indices) -> np.ndarray:
        """The cache slots of images `indices` (a loader worker hands these over instead of the pixels)."""
        if self.slots is None:
            self.prepare()
        return self.slots[np.asarray(indices, dtype=np.int64)]

    def read_slots(self, slots, pin: bool = False) -> torch.Tensor:
        """uint8 [n, 3, H, W] of cache slots: one copy out of the page cache, into pinned memory with `pin`
        (then the copy to the GPU runs asynchronously); in a loader worker, into shared memory."""
        pixels = self._map()
        slots = np.asarray(slots, dtype=np.int64)
        if torch.utils.data.get_worker_info() is not None:
            return _take_shared(pixels, slots)
        if not pin:
            return torch.from_numpy(pixels[slots])
        out = torch.empty((len(slots), *pixels.shape[1:]), dtype=torch.uint8, pin_memory=True)
        np.take(pixels, slots, axis=0, out=out.numpy())
        return out


def _take_shared(pixels: np.ndarray, slots: np.ndarray) -> torch.Tensor:
    """pixels[slots] written straight into new shared memory, as torch's default_collate allocates a batch in a
    worker (no copy on the way to the main process, none into it either)."""
    shape = (len(slots), *pixels.shape[1:])
    elem = torch.empty(0, dtype=torch.uint8)
    storage = elem._typed_storage()._new_shared(int(np.prod(shape)), device=elem.device)
    out = elem.new(storage).resize_(shape)
    np.take(pixels, slots, axis=0, out=out.numpy())
    return out


def open_images(paths: Sequence[str], size, image_cache: Optional[bool] = None, cache_dir: Optional[str] = None,
                workers: Optional[int] = None, show_progress: bool = True) -> ImageSource:
    """The images of `paths` at `size` (H, W): from the cache (built on the first prepare / read) or decoded on
    every read.  None = the process-wide setting (configure())."""
    enabled = _settings["enabled"] if image_cache is None else image_cache
    if not enabled:
        return DecodedImages(paths, size)
    return CachedImages(paths, size, _settings["cache_dir"] if cache_dir is None else cache_dir, workers,
                        show_progress)
