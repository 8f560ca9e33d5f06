"""Caption-side augmentations: RDE's token-level txt_aug and ICL's RDA composition (docs/METHOD.md §1.3, §1.7)."""
from __future__ import annotations

import random
from typing import Optional, Union

import torch

# Same values as utils/tokenizer.py; repeated here (and checked in tests) so that this module
# imports without the tokenizer's dependencies (ftfy, regex).
MASK_ID, SOT_ID, EOT_ID = 49405, 49406, 49407
PICK_P = 0.2                  # each ordinary token is picked with this probability
MASK_P, REPLACE_P = 0.6, 0.2  # a picked token is masked / replaced; the rest (0.2) is deleted
RANDOM_ID_RANGE = (1, 49404)  # replacement ids: ordinary tokens only (inclusive), never MASK/SOT/EOT
RDE_RATES = (PICK_P, MASK_P, REPLACE_P)    # txt_aug_rates' default; 3RTPR's rebuild masks 0.5 (deletes 0.3)

Rng = Union[random.Random, torch.Generator, None]
_KEEP = frozenset((0, SOT_ID, EOT_ID))


def _uniforms(n: int, rng: Rng) -> list[float]:
    if isinstance(rng, torch.Generator):
        return torch.rand(n, generator=rng).tolist()
    draw = (rng if rng is not None else random).random
    return [draw() for _ in range(n)]


def _randint(lo: int, hi: int, rng: Rng) -> int:
    """Uniform integer in [lo, hi]."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))
    return (rng if rng is not None else random).randint(lo, hi)


def augment_caption_ids(ids: torch.Tensor, rng: Rng = None, rates=RDE_RATES) -> torch.Tensor:
    """RDE's txt_aug on one tokenised caption [L] (SOT ... EOT 0 0 ...); returns a new [L] tensor.

    Ordinary tokens are picked with p 0.2; a picked token becomes MASK (0.6), a random ordinary
    id (0.2) or is deleted (0.2) (`rates`: pick, mask, replace). Deletions shift the rest left and pad with zeros,
    so EOT stays
    the last non-pad token and the argmax (EOT pooling relies on that). `rng` is a
    random.Random, a torch.Generator, or None for Python's global `random` (seeded per worker).
    """
    tokens = ids.tolist()
    out = augment_token_list(tokens, rng, rates)
    return ids.clone() if out is tokens else torch.tensor(out, dtype=ids.dtype)


def augment_token_list(tokens: list, rng: Rng = None, rates=RDE_RATES) -> list:
    """augment_caption_ids on a list of ids (what the loaders keep in memory); the same draws in the same order.
    Returns `tokens` itself when it is not a tokenised caption (nothing to augment)."""
    length = len(tokens)
    eot = tokens.index(max(tokens))          # the first argmax, as torch's argmax and EOT pooling
    if tokens[eot] != EOT_ID:
        return tokens  # not a tokenised caption (e.g. all padding): nothing to augment
    start = 1 if tokens[0] == SOT_ID else 0
    body = tokens[start:eot]
    draws = _uniforms(2 * len(body), rng)
    pick, mask, replace = rates
    out = tokens[:start]
    append = out.append
    for j, tok in enumerate(body):
        if draws[2 * j] >= pick or tok in _KEEP:          # not picked (or not an ordinary token): kept
            append(tok)
            continue
        action = draws[2 * j + 1]
        if action < mask:
            append(MASK_ID)
        elif action < mask + replace:
            append(_randint(*RANDOM_ID_RANGE, rng))
        # else: deleted
    append(EOT_ID)
    out += [0] * (length - len(out))
    return out


def compose_rda_caption(entry, rng: Optional[random.Random] = None) -> str:
    """One training caption from an RDA `diversity_captions` entry.

    A string passes through; a list of groups is reorganised: group order shuffled, one
    alternative picked per group, joined with spaces. A group given as a bare string counts
    as its only alternative.
    """
    if isinstance(entry, str):
        return entry
    r = rng if rng is not None else random
    groups = list(entry)
    r.shuffle(groups)
    return " ".join(g if isinstance(g, str) else r.choice(g) for g in groups)
