"""THI on one query of the search page, step by step, so that the page can show each round as it ends.

The rounds are THI's own (thi/interaction.py: localise_round with the gate, refine = VQA + aggregation;
thi/rerank.py: reranked), asked through THI's answer cache (mllm/cache.py): an answer `python -m thi` or an
earlier click already got is read back, not asked again.  S_base is the page's own fused score over the gallery
(retrieve.py's), so a test caption on the test split goes through the same rounds as in `python -m thi`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mllm.cache import AnswerCache, ask
from mllm.vqa import VQA_QUESTIONS
from thi.interaction import localise_round, new_states, refine, said_yes
from thi.prompts import localisation_prompt
from thi.rerank import reranked
from .gallery import Gallery, Ranking


@dataclass
class Step:
    """What one step of THI did, for the page: a yes/no round, or the VQA + aggregation on the accepted image."""
    title: str
    question: str = ""
    answer: str = ""
    candidate: str | None = None                 # the image asked about (its path)
    lines: list[str] = field(default_factory=list)   # VQA questions and answers, the refined query ...
    order: torch.Tensor | None = None            # the gallery order after this step (re-ranked, or the base)
    scores: torch.Tensor | None = None


@dataclass
class ThiSettings:
    rounds: int
    xi: float
    lam: float
    batch_size: int
    max_new_tokens: int


class ThiRunner:
    """A backend (mllm/backends, loaded on its first question), THI's answer cache file, and the settings."""

    def __init__(self, backend, cache_path: str, settings: ThiSettings):
        self.backend, self.cache_path, self.s = backend, cache_path, settings
        self.cache = AnswerCache(cache_path)

    def _ask_yes(self, requests):
        return ask(self.backend, self.cache, "yes_probability", requests, self.s.batch_size)

    def _ask_text(self, requests):
        return ask(self.backend, self.cache, "generate", requests, self.s.batch_size,
                   max_new_tokens=self.s.max_new_tokens)

    def steps(self, gallery: Gallery, ranking: Ranking):
        """Yields a Step per yes/no round asked, then one for VQA + aggregation and the re-ranked list."""
        # read again at every run: answers another process (python -m thi) cached since are reused too, and the
        # cache's counts are this run's
        self.cache = AnswerCache(self.cache_path)
        s_base = ranking.row()
        paths = gallery.paths()
        (state,) = new_states(s_base[None], [ranking.query], self.s.rounds)
        question = localisation_prompt(ranking.query)
        for r in range(self.s.rounds):
            if not localise_round([state], paths, self._ask_yes, r, self.s.xi):
                break
            cand = state.candidates[r]
            if state.error is not None:
                yield Step(f"Round {r + 1}: no answer", question, state.error, paths[cand],
                           order=ranking.order, scores=ranking.scores)
                return
            p = state.yes_prob[-1]
            verdict = ("accepted: this image is taken as the person described" if state.anchor is not None else
                       "not accepted" + (f" (the gate: s1 = {state.s1:.3f} {'>' if state.s1 > self.s.xi else '<='} "
                                         f"xi = {self.s.xi})" if said_yes(p) else ""))
            yield Step(f"Round {r + 1}: candidate {gallery.names[cand]} (rank {r + 1})", question,
                       f"{'Yes' if said_yes(p) else 'No'} (P(yes) = {p:.3f}); {verdict}", paths[cand],
                       order=ranking.order, scores=ranking.scores)
        if state.anchor is None:
            yield Step("No candidate accepted", lines=[
                f"The ranking stays as it was (s1 = {state.s1:.3f}, xi = {self.s.xi}, {len(state.yes_prob)} "
                "rounds asked)."], order=ranking.order, scores=ranking.scores)
            return
        refine([state], paths, self._ask_text)
        anchor = paths[state.anchor]
        lines = [f"{VQA_QUESTIONS[n - 1][1]} -> {a}" for n, a in sorted(state.answers.items())]
        lines += [f"(not tied to a question) {a}" for a in state.unnumbered]
        yield Step(f"VQA on the accepted image {gallery.names[state.anchor]}",
                   f"the {len(VQA_QUESTIONS)} human-centred questions of mllm/vqa.py",
                   state.vqa_text if state.vqa_text is not None else (state.error or ""), anchor, lines,
                   order=ranking.order, scores=ranking.scores)
        if state.refined is None:
            yield Step("No refined query: the ranking stays as it was", answer=state.error or "", candidate=anchor,
                       order=ranking.order, scores=ranking.scores)
            return
        refined_row = gallery.rank(state.refined).row()
        final = reranked(s_base[None], refined_row[None], [0], [state.anchor], self.s.lam)[0]
        scores, order = final.sort(descending=True)
        yield Step(f"Aggregation, then the re-ranked list (lam = {self.s.lam})",
                   "merge the description and the answers into one description", state.refined, anchor,
                   order=order, scores=scores)
