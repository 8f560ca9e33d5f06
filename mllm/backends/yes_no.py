"""The yes/no decision from the next-token distribution: P(Yes) against P(No), no free generation.

Both spellings count ("Yes" after the assistant header's newline, " Yes" after a space), each side being the
log-sum-exp of its single-token spellings; the result is the softmax over the two sides.
"""
from __future__ import annotations

import math

import torch

YES_WORDS = ("Yes", " Yes")
NO_WORDS = ("No", " No")


def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """(ids of the Yes spellings, ids of the No spellings) that are single tokens of this tokenizer."""
    def single(words):
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
        return sorted({i[0] for i in ids if len(i) == 1})

    yes, no = single(YES_WORDS), single(NO_WORDS)
    if not yes or not no:
        raise SystemExit(f"the model's tokenizer has no single token for {'Yes' if not yes else 'No'}: "
                         "the yes/no scorer needs one (Qwen2-VL's tokenizer has both)")
    return yes, no


def yes_probability_from_logits(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> list[float]:
    """logits [B, V] at the answer position -> P(yes) per row."""
    logits = logits.float()
    margin = logits[:, yes_ids].logsumexp(-1) - logits[:, no_ids].logsumexp(-1)
    return torch.sigmoid(margin).tolist()


def yes_probability_from_logprobs(logprobs: dict[int, float], yes_ids: list[int], no_ids: list[int]) -> float:
    """P(yes) from the log-probabilities an engine (vLLM) returns for the answer position, which must include
    every Yes and No spelling: a missing one would have to be guessed, and a guess moves P(yes) (a side set to
    the smallest value returned made P exactly 0.5 when neither side was there, which the gate reads as no).
    Extra tokens (the sampled one, the rest of a top k) are ignored."""
    missing = [i for i in yes_ids + no_ids if i not in logprobs]
    if missing:
        raise ValueError(f"the engine returned no log-probability for answer token(s) {missing} (it returned "
                         f"{sorted(logprobs)}): ask it for exactly the answer tokens")
    yes = _logsumexp([logprobs[i] for i in yes_ids])
    no = _logsumexp([logprobs[i] for i in no_ids])
    return 1.0 / (1.0 + math.exp(no - yes))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
