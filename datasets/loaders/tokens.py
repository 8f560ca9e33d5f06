"""Captions to CLIP token ids: every caption of a split once, a whole list per call (CLIP's BPE costs ~0.5 ms a
caption), and the composed RDA captions memoised per process."""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Optional, Sequence

import numpy as np
import torch


def _tokenize(text: str, text_length: int) -> torch.Tensor:
    from utils.tokenizer import tokenize_one  # lazy: keeps `import datasets` light

    return tokenize_one(text, text_length)


@functools.lru_cache(maxsize=1 << 16)
def token_tuple(text: str, text_length: int) -> tuple:
    """Token ids of a composed RDA caption, memoised per process: the compositions of a caption repeat."""
    return tuple(_tokenize(text, text_length).tolist())


def _tokenize_chunk(task) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n, text_length], tokens cut from each caption [n])."""
    from utils.tokenizer import tokenize_counted

    texts, text_length = task
    done = [tokenize_counted(t, text_length) for t in texts]
    ids = np.stack([d[0].numpy() for d in done]) if done else np.zeros((0, text_length), dtype=np.int64)
    return ids, np.array([d[1] for d in done], dtype=np.int64)


_token_memo: dict = {}


def tokenize_all(texts: Sequence[str], text_length: int, workers: Optional[int] = None) -> torch.Tensor:
    """LongTensor [N, text_length] of every caption, tokenised once (CLIP's BPE costs ~0.5 ms a caption):
    in worker processes for a long list, and remembered for the same list (the training loader and the
    division's share one)."""
    return _tokenized(texts, text_length, workers)[0]


def captions_cut(texts: Sequence[str], text_length: int) -> tuple[int, int]:
    """(how many captions are longer than text_length tokens and cut, the most tokens one of them loses),
    counted as tokenize_all tokenises them (free after it)."""
    cut = _tokenized(texts, text_length)[1]
    return int((cut > 0).sum()), int(cut.max(initial=0))


def _tokenized(texts: Sequence[str], text_length: int,
               workers: Optional[int] = None) -> tuple[torch.Tensor, np.ndarray]:
    texts = list(texts)
    key = (text_length, len(texts), hashlib.sha1("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest())
    if key in _token_memo:
        return _token_memo[key]
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:
            workers = os.cpu_count() or 1
    chunk = 2000
    if workers > 1 and len(texts) > 2 * chunk:
        import multiprocessing

        tasks = [(texts[k:k + chunk], text_length) for k in range(0, len(texts), chunk)]
        with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
            parts = pool.map(_tokenize_chunk, tasks)
        ids, cut = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        ids, cut = _tokenize_chunk((texts, text_length))
    if len(_token_memo) > 8:
        _token_memo.clear()
    _token_memo[key] = torch.from_numpy(ids), cut
    return _token_memo[key]
