"""A second opinion on the division's suspects: the MLLM (THI's backends, transformers or vLLM, and its answer cache)
is asked whether each caption describes the person in its own image (thi/prompts.py AUDIT_PROMPT), for the K most
suspect pairs and, as a control, K pairs the division trusts (drawn at random, seeded, among those whose clean
probability is 0.5 or more).  P(yes) is read from the Yes / No tokens as in THI.  Every answer is cached as it
comes, so a killed audit asks only what is missing when started again."""
from __future__ import annotations

import numpy as np

from mllm.backends import Request
from mllm.cache import Failure, ask
from thi.prompts import audit_prompt

SUSPECT, CONTROL = "suspect", "control"
CONTROL_SEED = 0


def asked_pairs(order: np.ndarray, clean_probability: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the K most suspect pairs, K trusted pairs drawn at random among the rest) -- fewer when there are not as
    many."""
    suspects = np.asarray(order[:k])
    trusted = np.setdiff1d(np.flatnonzero(clean_probability >= 0.5), suspects)
    rng = np.random.default_rng(CONTROL_SEED)
    control = np.sort(rng.choice(trusted, size=min(k, len(trusted)), replace=False))
    return suspects, control


def second_opinion(backend, cache, records, order: np.ndarray, clean_probability: np.ndarray, k: int,
                   batch_size: int) -> tuple[np.ndarray, list[str], int]:
    """([N] P(yes), NaN where not asked or failed; [N] 'suspect' / 'control' / ''; how many requests failed)."""
    suspects, control = asked_pairs(order, clean_probability, k)
    asked = np.concatenate([suspects, control]).astype(np.int64)
    requests = [Request(audit_prompt(records[i].caption), records[i].img_path) for i in asked]
    answers = ask(backend, cache, "yes_probability", requests, batch_size)
    p_yes = np.full(len(records), np.nan)
    group = [""] * len(records)
    failed = 0
    for i, answer in zip(asked.tolist(), answers):
        group[i] = SUSPECT if i in set(suspects.tolist()) else CONTROL
        if isinstance(answer, Failure):
            failed += 1
        else:
            p_yes[i] = answer
    return p_yes, group, failed
