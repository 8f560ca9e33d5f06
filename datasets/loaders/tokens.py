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


def _tokenize_chunk(task) -> np.ndarray:
    texts, text_length = task
    return np.stack([_tokenize(t, text_length).numpy() for t in texts]) if texts else \
        np.zeros((0, text_length), dtype=np.int64)


_token_memo: dict = {}


def tokenize_all(texts: Sequence[str], text_length: int, workers: Optional[int] = None) -> torch.Tensor:
    """LongTensor [N, text_length] of every caption, tokenised once (CLIP's BPE costs ~0.5 ms a caption):
    in worker processes for a long list, and remembered for the same list (the training loader and the
    division's share one)."""
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
            ids = np.concatenate(pool.map(_tokenize_chunk, tasks))
    else:
        ids = _tokenize_chunk((texts, text_length))
    out = torch.from_numpy(ids)
    if len(_token_memo) > 8:
        _token_memo.clear()
    _token_memo[key] = out
    return out
