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
but it reads every JPEG at every start (CUHK-PEDES: ~1 GB), which is what the cache is there to avoid; such an
edit is found on demand instead (`python -m datasets.cache ... --verify`, ImageCache.verify: every image decoded
again, the slots whose pixels differ rewritten).

A slot is listed in index.json only after its pixels are written and flushed to disk, and index.json is
replaced atomically: a build that is killed leaves images that are simply not listed (or listed with their
old stat), which the next use decodes; a half-written slot is never read.  Building runs in worker processes
with a progress bar (on a terminal) and is locked, so concurrent trainings (or torchrun's processes) wait for
one builder instead of racing.

    python -m datasets.cache --dataset_name CUHK-PEDES --root_dir data --img_size 384 128     # build ahead
    python -m datasets.cache ... --verify       # decode everything again, repair what changed unseen

    location.py   where a cache lives: next to the dataset, under --image_cache_dir, or ~/.cache when the
                  dataset folder is read-only
    building.py   one cache folder (ImageCache): its index, and decoding what is missing or stale in worker
                  processes (decode_resized, the JPEG path)
    reading.py    what the loaders read (open_images): CachedImages through a memory map, DecodedImages with
                  the cache switched off
"""
from .building import VERSION, ImageCache, decode_resized
from .location import cache_folder, dataset_folder_of, user_cache_folder
from .reading import CachedImages, DecodedImages, ImageSource, open_images

__all__ = ["VERSION", "CachedImages", "DecodedImages", "ImageCache", "ImageSource", "cache_folder",
           "dataset_folder_of", "decode_resized", "open_images", "user_cache_folder"]
