"""Data parallel MLLM work: N processes (one per GPU, or per group of GPUs under tensor parallelism) each ask
the questions of every N-th query, into an answer cache file of their own; the same command without --shard
then finds every answer cached and writes the results without loading a model.

    for k in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$k python -m thi ... --shard $k/4 & done; wait
    python -m thi ...                      # merges: 0 MLLM calls, metrics and files as from one process

Queries are dealt out round-robin (k, k+N, k+2N, ...) so that each shard gets the same mix of easy and hard ones.
"""
from __future__ import annotations

import argparse
import glob
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def take(self, items: list) -> list:
        return items[self.index::self.count]

    def own_file(self, path: str) -> str:
        """This shard's version of a file (its answer cache, its log): PATH with .shardK-of-N before the extension."""
        root, ext = os.path.splitext(path)
        return f"{root}.shard{self.index}-of-{self.count}{ext}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """argparse type of --shard: 'K/N' with 0 <= K < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 0/4 for the first of 4 shards") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: K/N needs 0 <= K < N")
    return Shard(index, count)


def shard_cache_files(path: str) -> list[str]:
    """Every shard's cache file written beside PATH (by any number of shards)."""
    root, ext = os.path.splitext(path)
    return sorted(glob.glob(f"{glob.escape(root)}.shard*-of-*{ext}"))


def add_shard_arg(p) -> None:
    p.add_argument("--shard", type=parse_shard, metavar="K/N",
                   help="data parallel: ask only every N-th item's questions, starting at K, into a cache file of "
                        "its own; then run again without --shard to merge (see mllm/shards.py)")
