"""One cache folder: `ImageCache.ensure(paths)` gives each image's slot in `pixels.u8`, decoding what is missing
or stale first, in worker processes; index.json lists a slot only once its pixels are on disk (the package's
docstring has the layout and the rules)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional, Sequence

import numpy as np

from ..transforms import build_transforms, image_size_hw

log = logging.getLogger("reid")

VERSION = 1
RESIZE = "PIL RGB -> torchvision.transforms.Resize(size) (bilinear, antialias) -> uint8 [3, H, W]"
CHUNK = 64                       # images per worker task
SAVE_EVERY_S = 5.0               # index.json is rewritten at most this often while building
IN_PROCESS_BELOW = 256           # fewer images than this are decoded in the calling process (no pool start-up)


# ------------------------------------------------------------------ decoding (the JPEG path)
def decode_resized(path: str, size) -> np.ndarray:
    """uint8 [3, H, W]: the image read as RGB through the published test transform (build_transforms)."""
    from utils.images import read_image

    return build_transforms(size)(read_image(path)).numpy()


# ------------------------------------------------------------------ the cache folder
class ImageCache:
    """One cache folder: `ensure(paths)` returns each path's slot, decoding what is missing or stale."""

    def __init__(self, folder: str, base: str, size):
        self.folder, self.base, self.size = folder, base, image_size_hw(size)
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
        with self._locked():                        # another process may be building: wait, then look again
            entries = self.read_index()
            slots, stats = self.lookup(paths, entries)
            todo = np.flatnonzero(slots < 0)
            if len(todo):
                self._build(paths, stats, todo, slots, entries, workers, show_progress)
        return slots

    def verify(self, paths: Sequence[str], workers: Optional[int] = None, show_progress: bool = True) -> list[str]:
        """Decode every image again and rewrite the slots whose pixels differ: a file replaced by another of the
        same size with its modification time kept (cp -p, touch -r, some sync tools) escapes the stat key.  As
        long as building the cache; returns the images that had changed."""
        with self._locked():
            entries = self.read_index()
            slots, stats = self.lookup(paths, entries)
            return self._build(paths, stats, np.arange(len(paths)), slots, entries, workers, show_progress,
                               compare=True)

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, "lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _build(self, paths, stats, todo, slots, entries, workers, show_progress, compare=False) -> list[str]:
        """Decode paths[todo] into their slots (a listed image into its own); with `compare`, returns those whose
        pixels differed from their slot's."""
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
            tasks = [(self.pixels_file, self.size, [(slot, path) for slot, path, _, _ in chunk], workers > 1, compare)
                     for chunk in chunks]
            failed: list[str] = []
            changed: list[str] = []
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
                for chunk, (errors, differed) in zip(chunks, results):
                    bad = {path for path, _ in errors}
                    failed += [message for _, message in errors]
                    changed += differed
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
        return changed


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


def _decode_chunk(task) -> tuple[list[tuple[str, str]], list[str]]:
    """Decode a chunk of images into their slots (in a pool worker or in-process); returns (path, message) of
    the images that could not be decoded and, with `compare`, the paths whose slot held other pixels."""
    from utils.images import ImageDecodeError

    pixels_file, size, items, in_pool, compare = task
    fd = _open_files.get(pixels_file) if in_pool else None
    if fd is None:
        fd = os.open(pixels_file, os.O_RDWR)
        if in_pool:
            _open_files[pixels_file] = fd
    slot_bytes = 3 * size[0] * size[1]
    errors, changed = [], []
    try:
        for slot, path in items:
            try:
                pixels = np.ascontiguousarray(decode_resized(path, size)).tobytes()
            except ImageDecodeError as e:
                errors.append((path, str(e)))
                continue
            if compare and os.pread(fd, slot_bytes, slot * slot_bytes) != pixels:
                changed.append(path)
            os.pwrite(fd, pixels, slot * slot_bytes)
    finally:
        if not in_pool:
            os.close(fd)
    return errors, changed
