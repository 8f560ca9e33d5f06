"""What the loaders read: the images of a list of paths at the model's size, from the cache (CachedImages, a
memory map of its pixel file, built on first use) or decoded at every read (DecodedImages, --image_cache false)."""
from __future__ import annotations

import errno
import logging
import os
from typing import Optional, Sequence

import numpy as np
import torch

from ..transforms import image_size_hw
from .building import ImageCache, decode_resized
from .location import cache_folder, user_cache_folder

log = logging.getLogger("reid")


class ImageSource:
    """Resized uint8 images of a list of paths: `read(indices)` -> uint8 tensor [n, 3, H, W].  `prepare()` (in
    the main process, before loader workers start) does any one-off work."""

    def __init__(self, paths: Sequence[str], size):
        self.paths, self.size = list(paths), image_size_hw(size)

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
        self.cache: Optional[ImageCache] = None      # the cache folder read, once prepared
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
        self.cache = ImageCache(folder, base, self.size)
        self.slots = self.cache.ensure(self.paths, self.workers, self.show_progress)
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


def open_images(paths: Sequence[str], size, image_cache: bool = True, cache_dir: Optional[str] = None,
                workers: Optional[int] = None, show_progress: bool = True) -> ImageSource:
    """The images of `paths` at `size` (H, W): from the cache (built on the first prepare / read; in `cache_dir`,
    or next to the dataset when it is empty or None) or, without `image_cache`, decoded on every read."""
    if not image_cache:
        return DecodedImages(paths, size)
    return CachedImages(paths, size, cache_dir or "", workers, show_progress)
