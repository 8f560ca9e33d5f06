"""Torch datasets and DataLoader builders for training, the per-epoch division pass and evaluation."""
from __future__ import annotations

import random
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .bases import EvalSplit, TrainRecord
from .text_aug import augment_caption_ids, compose_rda_caption
from .transforms import build_transforms


class ImageDecodeError(RuntimeError):
    """An image file that PIL cannot read; the message names the path (also through DataLoader workers)."""


def read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... depending on the damage
        raise ImageDecodeError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


def _tokenize(text: str, text_length: int) -> torch.Tensor:
    from utils.tokenizer import tokenize_one  # lazy: keeps `import datasets` light

    return tokenize_one(text, text_length)


def sample_seed(seed: int, epoch: int, stream: int, index: int) -> int:
    """The seed of one sample's augmentation draws: a function of (run seed, epoch, stream, sample) only, so a
    sample is augmented the same whichever worker or process reads it, and a resumed run draws what the
    uninterrupted run drew."""
    return int(np.random.SeedSequence([seed, epoch, stream, index]).generate_state(1)[0])


class TrainPairs(Dataset):
    """Training pairs.  A key is a sample index, or (index, epoch, stream) as EpochDraws yields them (a bare
    index draws as epoch 0, stream 0).  Item is a dict:

    index, pid, image_id: int
    images:      uint8 [V, 3, H, W], V = num_views independent augmentation draws (twin models)
    erase:       int [V, 4] each view's random-erasing rectangle (top, left, height, width; all 0: none),
                 applied on the device after the normalisation (datasets.transforms.erase)
    caption_ids: LongTensor [V, L], each view its own txt_aug draw (identical rows without txt_aug)
    rda_ids:     LongTensor [V, L], only with use_rda: each view its own RDA composition, with txt_aug as
                 ICL applies it; a record without diversity captions falls back to its caption, so every
                 item of a batch has it.
    """

    def __init__(self, records: Sequence[TrainRecord], transform, text_length: int = 77, txt_aug: bool = False,
                 num_views: int = 1, use_rda: bool = False, seed: int = 0):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.records = list(records)
        self.transform = transform
        self.text_length = text_length
        self.txt_aug = txt_aug
        self.num_views = num_views
        self.use_rda = use_rda
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def _caption(self, ids: torch.Tensor, rng: random.Random) -> torch.Tensor:
        return augment_caption_ids(ids, rng) if self.txt_aug else ids

    def __getitem__(self, key) -> dict:
        i, epoch, stream = key if isinstance(key, tuple) else (key, 0, 0)
        rec = self.records[i]
        img = read_image(rec.img_path)
        seed = sample_seed(self.seed, epoch, stream, i)
        rng = random.Random(seed)
        # torchvision draws from torch's global CPU generator: seed it for this sample, then put it back
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)   # not torch.manual_seed: that also queues CUDA seeding
        try:
            images, boxes = zip(*(self.transform(img) for _ in range(self.num_views)))
        finally:
            torch.set_rng_state(state)
        ids = _tokenize(rec.caption, self.text_length)
        item = {
            "index": i,
            "pid": rec.pid,
            "image_id": rec.image_id,
            "images": torch.stack(images),
            "erase": torch.tensor(boxes, dtype=torch.int32),
            "caption_ids": torch.stack([self._caption(ids, rng) for _ in range(self.num_views)]),
        }
        if self.use_rda:
            entry = rec.diversity if rec.diversity is not None else rec.caption
            item["rda_ids"] = torch.stack([self._caption(_tokenize(compose_rda_caption(entry, rng), self.text_length),
                                                         rng) for _ in range(self.num_views)])
        return item


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
    """Gallery images: item i is (i, image tensor [3, H, W])."""

    def __init__(self, img_paths: Sequence[str], transform):
        self.img_paths = list(img_paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, i: int):
        return i, self.transform(read_image(self.img_paths[i]))


class CaptionList(Dataset):
    """Query captions: item i is (i, ids LongTensor [L])."""

    def __init__(self, captions: Sequence[str], text_length: int = 77):
        self.captions = list(captions)
        self.text_length = text_length

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return i, _tokenize(self.captions[i], self.text_length)


def _loader(dataset: Dataset, batch_size: int, num_workers: int, drop_last: bool = False,
            sampler: Optional[Sampler] = None, seed: int = 0) -> DataLoader:
    # the loader's own generator draws the workers' base seed, so iterating never advances torch's global RNG;
    # training samples are seeded one by one (TrainPairs), the other datasets draw nothing
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        generator=generator, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)


def build_train_loader(records: Sequence[TrainRecord], image_size, text_length: int, batch_size: int,
                       num_workers: int, img_aug: bool = True, txt_aug: bool = False, num_views: int = 1,
                       use_rda: bool = False, seed: int = 0, drop_last: bool = False,
                       sampler: Optional[Sampler] = None) -> DataLoader:
    """Training loader of TrainPairs dicts.  `sampler` (an EpochDraws, whose set_epoch moves the data order
    and the augmentation draws) defaults to a seeded shuffle.  The last partial batch is kept, as published."""
    dataset = TrainPairs(records, build_transforms(image_size, is_train=True, img_aug=img_aug),
                         text_length=text_length, txt_aug=txt_aug, num_views=num_views, use_rda=use_rda, seed=seed)
    if sampler is None:
        sampler = EpochDraws(torch.utils.data.DistributedSampler(range(len(dataset)), num_replicas=1, rank=0,
                                                                 shuffle=True, seed=seed))
    return _loader(dataset, batch_size, num_workers, drop_last=drop_last, sampler=sampler, seed=seed)


def build_eval_loaders(split: EvalSplit, image_size, text_length: int, batch_size: int,
                       num_workers: int) -> tuple[DataLoader, DataLoader]:
    """(gallery image loader, query caption loader), both in split order.

    Under torchrun each process reads one contiguous shard (utils.distributed.shard); gathering the
    features restores the split order.
    """
    from utils.distributed import shard, world_size

    images = ImageFolderList(split.img_paths, build_transforms(image_size, is_train=False))
    captions = CaptionList(split.captions, text_length)
    return tuple(_loader(d, batch_size, num_workers, sampler=shard(len(d)) if world_size() > 1 else None)
                 for d in (images, captions))
