"""The torch datasets the loaders read: training pairs with their per-sample augmentation draws (TrainPairs, keyed
by EpochDraws), gallery images from the image cache (GalleryImages) or decoded (ImageFolderList), query captions
(CaptionList)."""
from __future__ import annotations

import random
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from utils.images import read_image
from ..bases import TrainRecord
from ..image_cache import ImageSource, open_images
from ..text_aug import RDE_RATES, augment_token_list, compose_rda_caption
from ..transforms import PAD, ViewDraws, image_size_hw
from .seeds import sample_seeds
from .tokens import token_tuple, tokenize_all


def _unique(paths: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(distinct paths in order of first appearance, the position of each path among them)."""
    first: dict[str, int] = {}
    where = np.fromiter((first.setdefault(p, len(first)) for p in paths), dtype=np.int64, count=len(paths))
    return list(first), where


class TrainPairs(Dataset):
    """Training pairs.  A key is a sample index, or (index, epoch, stream) as EpochDraws yields them (a bare
    index draws as epoch 0, stream 0).  `__getitems__(keys)` makes a whole batch (the DataLoader calls it);
    an item (`pairs[key]`) is the same without the batch dimension.  A batch is a dict:

    index, pid, image_id: [B] int64
    image:       uint8 [B, 3, H, W], each pair's image resized once (datasets.image_cache), shared by the views
    flip:        bool [B, V], V = num_views independent augmentation draws (twin models)
    crop:        int32 [B, V, 2] top, left of the crop in the image padded by PAD (PAD, PAD: none)
    erase:       int32 [B, V, 4] each view's random-erasing rectangle (top, left, height, width; all 0: none)
    caption_ids: LongTensor [B, V, L], each view its own txt_aug draw (identical rows without txt_aug; txt_aug_rates:
                 pick, mask, replace, as datasets.text_aug.augment_token_list reads them)
    rda_ids:     LongTensor [B, V, L], only with use_rda: each view its own RDA composition, with txt_aug as
                 ICL applies it; a record without diversity captions falls back to its caption, so every
                 item of a batch has it.

    The flip, the crop and the erasing are only drawn here (torchvision's random calls on torch's generator
    seeded per sample, in the published order); datasets.transforms.training_view applies them to the batch on
    the device, so the pixels equal the published pipeline's.
    """

    def __init__(self, records: Sequence[TrainRecord], image_size=(384, 128), text_length: int = 77,
                 txt_aug: bool = False, num_views: int = 1, use_rda: bool = False, seed: int = 0,
                 img_aug: bool = True, image_cache: bool = True, cache_dir: Optional[str] = None,
                 images: Optional[ImageSource] = None, txt_aug_rates=RDE_RATES):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.records = list(records)
        self.size = image_size_hw(image_size)
        self.text_length = text_length
        self.txt_aug, self.txt_aug_rates = txt_aug, tuple(txt_aug_rates)
        self.num_views = num_views
        self.use_rda = use_rda
        self.seed = seed
        self.draws = ViewDraws(self.size) if img_aug else None
        paths, self.image_of = _unique([r.img_path for r in self.records])
        self.images = images if images is not None else open_images(paths, self.size, image_cache, cache_dir)
        self.caption_ids = tokenize_all([r.caption for r in self.records], text_length).numpy()
        self.defer_images = True        # loader workers hand over cache slots, the main process reads the pixels
        self.pids = np.array([r.pid for r in self.records], dtype=np.int64)
        self.image_ids = np.array([r.image_id for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def prepare(self) -> None:
        """Decode what the image cache lacks (main process, before the loader's workers start)."""
        self.images.prepare()

    def _captions(self, ids: list, rng: random.Random, out: np.ndarray) -> None:
        for v in range(self.num_views):
            out[v] = augment_token_list(ids, rng, self.txt_aug_rates) if self.txt_aug else ids

    def __getitems__(self, keys) -> dict:
        keys = [key if isinstance(key, tuple) else (key, 0, 0) for key in keys]
        index = np.array([k[0] for k in keys], dtype=np.int64)
        n, views, L = len(keys), self.num_views, self.text_length
        flip = np.zeros((n, views), dtype=bool)
        crop = np.full((n, views, 2), PAD, dtype=np.int32)
        erase = np.zeros((n, views, 4), dtype=np.int32)
        caption_ids = np.empty((n, views, L), dtype=np.int64)
        rda_ids = np.empty((n, views, L), dtype=np.int64) if self.use_rda else None
        # torchvision draws from torch's global CPU generator: seed it for each sample, then put it back
        seeds = sample_seeds(self.seed, np.array(keys, dtype=np.int64)[:, [1, 2, 0]]).tolist()
        state = torch.get_rng_state()
        try:
            with torch.inference_mode():
                for b, ((i, epoch, stream), seed) in enumerate(zip(keys, seeds)):
                    if self.draws is not None:
                        torch.default_generator.manual_seed(seed)   # not torch.manual_seed: that queues CUDA's
                        for v in range(views):
                            flip[b, v], crop[b, v], erase[b, v] = self.draws()
                    rng = random.Random(seed)
                    self._captions(self.caption_ids[i].tolist(), rng, caption_ids[b])
                    if self.use_rda:
                        rec = self.records[i]
                        entry = rec.diversity if rec.diversity is not None else rec.caption
                        for v in range(views):
                            ids = list(token_tuple(compose_rda_caption(entry, rng), L))
                            rda_ids[b, v] = augment_token_list(ids, rng, self.txt_aug_rates) if self.txt_aug else ids
        finally:
            torch.set_rng_state(state)
        batch = {
            "index": index,
            "pid": self.pids[index],
            "image_id": self.image_ids[index],
            "flip": flip,
            "crop": crop,
            "erase": erase,
            "caption_ids": caption_ids,
        }
        if rda_ids is not None:
            batch["rda_ids"] = rda_ids
        if self._deferred():
            # a loader worker: numpy arrays (pickled by value, ~0.1 ms, where each tensor would cost a shared-
            # memory file and a socket round trip, ~3 ms) and the images' cache slots; the main process reads
            # the pixels out of the page cache (finish_batch, called by PreparingLoader)
            batch["image_slots"] = self.images.slots_of(self.image_of[index])
            return batch
        batch = {k: torch.from_numpy(v) for k, v in batch.items()}
        batch["image"] = self.images.read(self.image_of[index])
        return batch

    def _deferred(self) -> bool:
        return (self.defer_images and torch.utils.data.get_worker_info() is not None
                and getattr(self.images, "cached", False) and self.images._fallback is None)

    def finish_batch(self, batch: dict, pin: bool = False) -> dict:
        """In the main process: a batch from a worker (numpy arrays and cache slots, see __getitems__) as
        tensors with the pixels, pinned with `pin` (so that the copy to the GPU runs asynchronously)."""
        if "image_slots" not in batch:
            return batch
        slots = batch.pop("image_slots")
        out = {k: torch.from_numpy(v) for k, v in batch.items()}
        if pin:
            out = {k: v.pin_memory() for k, v in out.items()}
        out["image"] = self.images.read_slots(slots, pin=pin)
        return out

    def __getitem__(self, key) -> dict:
        batch = self.__getitems__([key])
        return {k: (int(v[0]) if k in ("index", "pid", "image_id") else v[0]) for k, v in batch.items()}


class EpochDraws(Sampler):
    """Wraps an index sampler (with set_epoch) and yields (index, epoch, stream) keys for TrainPairs: the epoch
    reaches the dataset even in persistent workers, so augmentation is a function of (seed, epoch, sample)."""

    def __init__(self, sampler, stream: int = 0):
        self.sampler, self.stream, self.epoch = sampler, stream, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch, stream = self.epoch, self.stream
        return ((i, epoch, stream) for i in self.sampler)


class ImageFolderList(Dataset):
    """Gallery images decoded at every read: item i is (i, transform(image)) (THI's tools use it)."""

    def __init__(self, img_paths: Sequence[str], transform):
        self.img_paths = list(img_paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, i: int):
        return i, self.transform(read_image(self.img_paths[i]))


class GalleryImages(Dataset):
    """Gallery images resized to the model's size, from the image cache: `__getitems__` gives a whole batch,
    (indices LongTensor [B], uint8 [B, 3, H, W]); item i is (i, uint8 [3, H, W])."""

    def __init__(self, img_paths: Sequence[str], image_size, image_cache: bool = True,
                 cache_dir: Optional[str] = None):
        self.img_paths = list(img_paths)
        paths, self.image_of = _unique(self.img_paths)
        self.images = open_images(paths, image_size_hw(image_size), image_cache, cache_dir)

    def __len__(self) -> int:
        return len(self.img_paths)

    def prepare(self) -> None:
        self.images.prepare()

    def __getitems__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if (torch.utils.data.get_worker_info() is not None and getattr(self.images, "cached", False)
                and self.images._fallback is None):
            return ("slots", indices, self.images.slots_of(self.image_of[indices]))   # see TrainPairs
        return torch.from_numpy(indices), self.images.read(self.image_of[indices])

    def finish_batch(self, batch, pin: bool = False):
        """In the main process: (indices, pixels) of a worker's (indices, cache slots)."""
        if len(batch) == 3 and batch[0] == "slots":
            index = torch.from_numpy(batch[1])
            return (index.pin_memory() if pin else index), self.images.read_slots(batch[2], pin=pin)
        return batch

    def __getitem__(self, i: int):
        return i, self.images.read(self.image_of[[i]])[0]


class CaptionList(Dataset):
    """Query captions, tokenised once: item i is (i, ids LongTensor [L])."""

    def __init__(self, captions: Sequence[str], text_length: int = 77):
        self.captions = list(captions)
        self.text_length = text_length
        self.ids = tokenize_all(self.captions, text_length)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return i, self.ids[i]
