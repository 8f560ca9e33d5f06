"""THI's rounds (docs/METHOD.md §7.1, steps 1-4): localisation with gating, then VQA on the anchor and
aggregation (mllm.vqa.describe, the step RDA shares).

The gate is a pure function of the round, the yes/no answers so far, s1 and xi.  The rounds take the MLLM as
two callables (`ask_yes(requests) -> [P(yes) | Failure]`, `ask_text(requests) -> [text | Failure]`), so this
module never sees a model or the cache.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from mllm.backends import Request
from mllm.cache import Failure
from mllm.vqa import describe
from .prompts import localisation_prompt


@dataclass
class QueryState:
    """One query's interaction, written out as one JSON line."""
    query: int                   # index among the split's captions
    caption: str
    candidates: list[int]        # top-K gallery indices under S_base, best first
    s1: float                    # S_base of the top-1 candidate
    yes_prob: list[float] = field(default_factory=list)   # P(yes) of rounds 0, 1, ... asked
    anchor: int | None = None    # gallery index accepted as the target
    anchor_image: str | None = None
    anchor_round: int | None = None
    answers: dict[int, str] = field(default_factory=dict)  # VQA: question number -> answer
    unnumbered: list[str] = field(default_factory=list)    # VQA answers not tied to a question
    vqa_text: str | None = None
    refined: str | None = None   # the refined query, when every step succeeded
    error: str | None = None     # why this query keeps its base ranking

    def to_json(self) -> dict:
        return asdict(self)


def said_yes(p: float) -> bool:
    return p > 0.5


def accepts(round_: int, yes_so_far: list[bool], s1: float, xi: float) -> bool:
    """Gate of round `round_` given the answers of rounds 0..round_ (the last one is this round's)."""
    *earlier, now = yes_so_far
    if round_ == 0:
        return now and s1 > xi
    return now and not any(earlier) and s1 <= xi


def may_accept(round_: int, yes_so_far: list[bool], s1: float, xi: float) -> bool:
    """Whether round `round_` can still accept this query, given the answers of the rounds before it.

    Asking the others would be wasted: with s1 > xi only round 0 accepts; a yes in an earlier round closes
    every later one.
    """
    return round_ == 0 or (s1 <= xi and not any(yes_so_far))


def top_candidates(s_base: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gallery indices [Q, k] best first, s1 [Q])."""
    values, indices = s_base.topk(min(k, s_base.shape[1]), dim=1)
    return indices, values[:, 0]


def new_states(s_base: torch.Tensor, captions: list[str], rounds: int) -> list[QueryState]:
    indices, s1 = top_candidates(s_base, rounds)
    return [QueryState(q, captions[q], indices[q].tolist(), float(s1[q])) for q in range(len(captions))]


def localise(states: list[QueryState], gallery: list[str], ask_yes, rounds: int, xi: float) -> None:
    """Rounds 0..rounds-1 of yes/no questions with the gate; sets anchor / anchor_round / error in place."""
    for r in range(rounds):
        if not localise_round(states, gallery, ask_yes, r, xi):
            break


def localise_round(states: list[QueryState], gallery: list[str], ask_yes, r: int, xi: float) -> list[QueryState]:
    """Round r alone (the search page shows each round as it ends): asks the queries still open about their r-th
    candidate, updates them in place and returns them; none returned means no later round asks anything."""
    open_ = [s for s in states if s.anchor is None and s.error is None and r < len(s.candidates)
             and may_accept(r, [said_yes(p) for p in s.yes_prob], s.s1, xi)]
    if not open_:
        return []
    replies = ask_yes([Request(localisation_prompt(s.caption), gallery[s.candidates[r]]) for s in open_])
    for s, reply in zip(open_, replies):
        if isinstance(reply, Failure):
            s.error = f"round {r} yes/no: {reply.reason}"
            continue
        s.yes_prob.append(reply)
        if accepts(r, [said_yes(p) for p in s.yes_prob], s.s1, xi):
            s.anchor, s.anchor_round, s.anchor_image = s.candidates[r], r, gallery[s.candidates[r]]
    return open_


def refine(states: list[QueryState], gallery: list[str], ask_text) -> None:
    """VQA on each anchor, then the text-only aggregation into the refined query; sets refined / error."""
    anchored = [s for s in states if s.anchor is not None and s.error is None]
    described = describe([s.caption for s in anchored], [gallery[s.anchor] for s in anchored], ask_text)
    for s, d in zip(anchored, described):
        s.answers, s.unnumbered, s.vqa_text = d.answers, d.unnumbered, d.vqa_text
        s.refined, s.error = d.refined, d.error
