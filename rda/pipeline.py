"""RDA's steps (docs/METHOD.md §8) over a list of training pairs, each step batched over every pair.

    (i)   enrichment: THI's human-centred VQA on the pair's own image + aggregation with its caption
          (mllm.vqa.describe, the code THI itself runs on its anchor: here the anchor is the pair's own image)
    (ii)  decomposition of the enriched text into attribute sub-sentences
    (iii) rewriting of each sub-sentence into m paraphrases
    (iv)  the groups [sub-sentence, paraphrase 1, ..., paraphrase m], one per attribute, which the loader
          reorganises at training time (datasets.text_aug.compose_rda_caption)

The MLLM is one callable, `ask_text(requests) -> [text | Failure]` (mllm.cache.ask over a backend: batched,
cached, per-request failures), so this module never sees a model or the cache.  A pair whose step fails or
whose reply is mangled keeps its original caption, with the reason recorded.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field

from mllm.backends import Request
from mllm.cache import Failure
from mllm.vqa import describe
from .parsing import decompose, enriched_problem, paraphrases
from .prompts import decomposition_prompt, rewrite_prompt

logger = logging.getLogger(__name__)


@dataclass
class PairResult:
    """One training caption through RDA, written out as one JSON line of the details file."""
    index: int                    # index among the dataset's training captions
    caption: str
    image: str
    enriched: str | None = None
    sentences: list[str] = field(default_factory=list)       # the decomposition
    groups: list[list[str]] | None = None                     # set when every step succeeded
    bare: int = 0                 # sub-sentences left without a usable paraphrase (their group is the sentence)
    error: str | None = None      # why the pair keeps its original caption

    @property
    def entry(self):
        """The pair's diversity_captions entry: its groups, or its caption (a string the loader passes through)."""
        return self.groups if self.groups is not None else self.caption

    def to_json(self) -> dict:
        return asdict(self)


def enrich(pairs: list[PairResult], ask_text) -> None:
    """Step (i): sets enriched, or error."""
    for p, d in zip(pairs, describe([p.caption for p in pairs], [p.image for p in pairs], ask_text)):
        problem = d.error or (f"aggregation: {why}" if (why := enriched_problem(d.refined, p.caption)) else None)
        if problem:
            p.error = problem
        else:
            p.enriched = d.refined


def decompose_all(pairs: list[PairResult], ask_text) -> None:
    """Step (ii): sets sentences, or error."""
    todo = [p for p in pairs if p.error is None]
    for p, reply in zip(todo, ask_text([Request(decomposition_prompt(p.enriched)) for p in todo])):
        if isinstance(reply, Failure):
            p.error = f"decomposition: {reply.reason}"
            continue
        p.sentences, why = decompose(reply, p.enriched)
        if why:
            p.error = f"decomposition: {why}"


def rewrite_all(pairs: list[PairResult], ask_text, m: int) -> None:
    """Steps (iii) and (iv): sets groups and bare, or error.  m = 0 keeps the sub-sentences alone (the
    reorganisation without rewriting)."""
    todo = [p for p in pairs if p.error is None]
    if m == 0:
        for p in todo:
            p.groups = [[s] for s in p.sentences]
        return
    replies = iter(ask_text([Request(rewrite_prompt(s, m)) for p in todo for s in p.sentences]))
    for p in todo:
        groups = []
        for sentence in p.sentences:
            reply = next(replies)
            groups.append([sentence] + ([] if isinstance(reply, Failure) else paraphrases(reply, sentence, m)))
        p.bare = sum(len(g) == 1 for g in groups)
        if p.bare == len(groups):
            # not one rewrite could be read: the model is not following the rewriting prompt for this pair
            p.error = "rewriting: no paraphrase parsed"
        else:
            p.groups = groups


def augment(captions: list[str], images: list[str], ask_text, m: int = 3) -> list[PairResult]:
    """RDA for each (caption, own image path) pair, in order."""
    pairs = [PairResult(i, c, im) for i, (c, im) in enumerate(zip(captions, images))]
    for name, step in (("enrichment (VQA + aggregation)", lambda: enrich(pairs, ask_text)),
                       ("decomposition", lambda: decompose_all(pairs, ask_text)),
                       ("rewriting", lambda: rewrite_all(pairs, ask_text, m))):
        logger.info("RDA %s of %d captions", name, sum(p.error is None for p in pairs))
        step()
    return pairs


def summary(pairs: list[PairResult], total: int) -> dict:
    """Counts for the log: how many pairs were augmented, how many fell back and why (the reason up to its
    second ':', so that 'VQA: ImageDecodeError: cannot decode image X' counts with the other bad images)."""
    failed = [p for p in pairs if p.error is not None]
    done = [p for p in pairs if p.groups is not None]
    return {
        "train_captions": total,
        "processed": len(pairs),
        "augmented": len(done),
        "fell_back": len(failed),
        "reasons": dict(Counter(":".join(p.error.split(":")[:2]) for p in failed).most_common()),
        "groups_per_caption": round(sum(len(p.groups) for p in done) / len(done), 2) if done else 0.0,
        "sentences_without_paraphrase": sum(p.bare for p in done),
    }
