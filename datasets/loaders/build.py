"""DataLoaders for training, the per-epoch division pass and evaluation, over the datasets of torch_datasets.py:
batched (a dataset's __getitems__ makes the whole batch), the image cache prepared in this process first."""
from __future__ import annotations

import os
import signal
import threading
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..bases import EvalSplit, TrainRecord
from ..text_aug import RDE_RATES
from .torch_datasets import CaptionList, EpochDraws, GalleryImages, TrainPairs


def _batched(data):
    """collate_fn of the datasets whose __getitems__ returns a whole batch already."""
    return data


class PreparingLoader(DataLoader):
    """A DataLoader that lets its dataset prepare (build the image cache) in this process before it iterates,
    so that the build runs once, in parallel processes of its own, and an unreadable image stops the first
    epoch that reads it with ImageDecodeError, as the JPEG path did."""

    def __iter__(self):
        prepare = getattr(self.dataset, "prepare", None)
        if prepare is not None:
            prepare()
        batches = super().__iter__()
        finish = getattr(self.dataset, "finish_batch", None)
        if finish is None or self.num_workers == 0:
            return batches
        return (finish(batch, self.pin_memory) for batch in batches)


def _loader(dataset: Dataset, batch_size: int, num_workers: int, drop_last: bool = False,
            sampler: Optional[Sampler] = None, seed: int = 0) -> DataLoader:
    # the loader's own generator draws the workers' base seed, so iterating never advances torch's global RNG;
    # training samples are seeded one by one (TrainPairs), the other datasets draw nothing
    generator = torch.Generator()
    generator.manual_seed(seed)
    batched = hasattr(dataset, "__getitems__")
    return PreparingLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        generator=generator, pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        collate_fn=_batched if batched else None, worker_init_fn=_leave_stop_signals_to_the_main_process)


def _leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A loader worker leaves SIGTERM and SIGINT to its main process while that lives.  A scheduler, torchrun
    (tearing down a job one of whose processes died) and Ctrl-C on a terminal signal the whole process group, and
    a worker that died of it would make the main process fail wherever it is ("DataLoader worker ... is killed
    by signal") instead of stopping at its next step with a checkpoint (utils/stop.py).  From its main process
    a SIGTERM still ends the worker at once (how multiprocessing ends daemonic children at exit; torch's own
    worker does the same).  A worker also ends within 0.2 s of its main process's death (torch's own check takes
    up to 5 s): it holds copies of that process's sockets, and torchrun's other processes see their peer gone
    only when the last copy closes."""
    parent, stops = os.getppid(), {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)     # this thread's mask, which later threads inherit

    def watch():
        while os.getppid() == parent:
            sent = signal.sigtimedwait(stops, 0.2)
            if sent is not None and sent.si_pid == parent:
                break
        os._exit(0)

    threading.Thread(target=watch, name="loader-worker-stop-signals", daemon=True).start()


def build_train_loader(records: Sequence[TrainRecord], image_size, text_length: int, batch_size: int,
                       num_workers: int, img_aug: bool = True, txt_aug: bool = False, num_views: int = 1,
                       use_rda: bool = False, seed: int = 0, drop_last: bool = False,
                       sampler: Optional[Sampler] = None, image_cache: bool = True,
                       cache_dir: Optional[str] = None, txt_aug_rates=RDE_RATES) -> DataLoader:
    """Training loader of TrainPairs batches.  `sampler` (an EpochDraws, whose set_epoch moves the data order
    and the augmentation draws) defaults to a seeded shuffle.  The last partial batch is kept, as published.
    image_cache / cache_dir: the image cache on or off, and its folder (None: next to the dataset)."""
    dataset = TrainPairs(records, image_size, text_length=text_length, txt_aug=txt_aug, num_views=num_views,
                         use_rda=use_rda, seed=seed, img_aug=img_aug, image_cache=image_cache, cache_dir=cache_dir,
                         txt_aug_rates=txt_aug_rates)
    if sampler is None:
        sampler = EpochDraws(torch.utils.data.DistributedSampler(range(len(dataset)), num_replicas=1, rank=0,
                                                                 shuffle=True, seed=seed))
    return _loader(dataset, batch_size, num_workers, drop_last=drop_last, sampler=sampler, seed=seed)


def build_eval_loaders(split: EvalSplit, image_size, text_length: int, batch_size: int, num_workers: int,
                       image_cache: bool = True,
                       cache_dir: Optional[str] = None) -> tuple[DataLoader, DataLoader]:
    """(gallery image loader, query caption loader), both in split order; images from the image cache.

    Under torchrun each process reads one contiguous shard (utils.distributed.shard); gathering the
    features restores the split order.
    """
    from utils.distributed import shard, world_size

    images = GalleryImages(split.img_paths, image_size, image_cache, cache_dir)
    captions = CaptionList(split.captions, text_length)
    return tuple(_loader(d, batch_size, num_workers, sampler=shard(len(d)) if world_size() > 1 else None)
                 for d in (images, captions))
