"""Reading the MLLM's free text: numbered VQA answers, and the aggregated query.

Models number their answers in many ways ('1.', '1)', '(1)', '**1.**', 'Answer 1:'), put several on one line,
skip numbers, repeat the question, or do not number at all.  Nothing is dropped: what cannot be tied to a
question is kept as an unnumbered answer.
"""
from __future__ import annotations

import re

from .prompts import VQA_QUESTIONS

# A question number: at the start or after a space / markdown, optional 'Answer'/'Q', optional brackets and
# bold, then '.', ')', ']' or ':' -- and not a decimal ('1.5 m') nor a range ('2-3').
_MARKER = re.compile(
    r"(?:^|(?<=[\s*(\[]))(?:(?:answer|question|q)\s*)?\**[(\[]?\**(\d{1,2})\**\s*[.)\]:](?!\d)\**",
    re.IGNORECASE | re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+\s*[.)])\s*")
_LABEL = re.compile(r"^\s*(?:refined|final|new|merged|combined)?\s*(?:description|query|caption|answer)\s*:\s*",
                    re.IGNORECASE)


def parse_vqa_answers(text: str, num_questions: int = len(VQA_QUESTIONS)) -> tuple[dict[int, str], list[str]]:
    """({question number: answer}, [answers whose number is unknown]).

    Numbers are taken in increasing order only (a later, smaller number is text: 'size 2.'), up to
    num_questions; text before the first number is kept as unnumbered.
    """
    numbered: dict[int, str] = {}
    last, starts = 0, []
    for m in _MARKER.finditer(text):
        n = int(m.group(1))
        if last < n <= num_questions:
            starts.append((n, m.start(), m.end()))
            last = n
    for (n, _, end), nxt in zip(starts, starts[1:] + [(None, len(text), None)]):
        answer = _clean_answer(text[end:nxt[1]], n)
        if answer:
            numbered[n] = answer
    head = text[:starts[0][1]] if starts else text
    # a head line ending in ':' introduces the answers ("Here are the answers:"), it is not one
    unnumbered = [a for a in (_clean_answer(line) for line in head.splitlines() if not line.rstrip().endswith(":"))
                  if a]
    return numbered, unnumbered


def _clean_answer(text: str, number: int | None = None) -> str:
    text = _BULLET.sub("", text.strip()) if number is None else text
    text = " ".join(text.replace("**", "").split()).strip(" -*:;,.")
    if number is not None:
        question = VQA_QUESTIONS[number - 1][1]
        if text.lower().startswith(question.lower()):    # the model repeated the question before answering
            text = text[len(question):].strip(" -*:;,.")
    return text


def clean_refined_query(text: str) -> str:
    """The aggregation's reply as one paragraph: no 'Description:' label, quotes, markdown or line breaks."""
    text = " ".join(text.replace("**", "").split())
    return _LABEL.sub("", text).strip("\"' ")
