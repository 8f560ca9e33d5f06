"""Human-centred VQA on a person image and the aggregation of its answers with a caption: the step THI runs on
its accepted anchor (docs/METHOD.md §7.1, steps 3-4) and RDA on each training pair's own image (its enrichment,
docs/METHOD.md §8, step i).  Both apps build on this one module, so that THI's refined queries and RDA's
enriched captions are asked and read the same way.

The prompts (the questions, the aggregation), the reading of the MLLM's free text (numbered VQA answers, the
aggregated text) and `describe`, the two batched calls.  The MLLM is one callable, `ask_text(requests) ->
[text | Failure]` (mllm.cache.ask over a backend), so this module never sees a model or the cache.

Models number their answers in many ways ('1.', '1)', '(1)', '**1.**', 'Answer 1:'), put several on one line,
skip numbers, repeat the question, or do not number at all.  Nothing is dropped: what cannot be tied to a
question is kept as an unnumbered answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .backends import Request
from .cache import Failure

# Human-centred VQA: (short topic used when the answers are merged, question asked), in the asked order.
VQA_QUESTIONS = (
    ("gender", "What is the gender of the person?"),
    ("hair", "What are the length and the colour of the person's hair?"),
    ("upper clothing", "What colour and type is the upper-body clothing, and are its sleeves long or short?"),
    ("lower clothing", "What colour and type is the lower-body clothing, and how long is it?"),
    ("patterns", "Does the clothing have any pattern, such as stripes, checks, prints or logos?"),
    ("shoes", "What colour and type are the shoes?"),
    ("glasses", "Is the person wearing glasses?"),
    ("scarf", "Is the person wearing a scarf? If so, what colour?"),
    ("held items", "Is the person holding anything? If so, what is it and what colour?"),
    ("backpack", "Is the person carrying a backpack? If so, what colour?"),
    ("hat", "Is the person wearing a hat? If so, what colour?"),
    ("belt", "Is the person wearing a belt?"),
    ("action", "What is the person doing?"),
    ("background", "What is in the background?"),
    ("other people", "Are there other people in the image?"),
)

VQA_PROMPT = (
    "Answer each question about the person in the image with a few words, one line per answer, numbered like "
    "the questions (for example: 1. female). If something cannot be seen, answer: not visible.\n"
    + "\n".join(f"{i}. {question}" for i, (_, question) in enumerate(VQA_QUESTIONS, 1)))

AGGREGATION_PROMPT = (
    "Below are a description of a person and answers to questions about a photo of that person. Rewrite them "
    "as one concise description in continuous sentences: keep every detail of the description, add the details "
    "the answers give, and leave out answers that say something cannot be seen. Reply with the description "
    "only.\n"
    "Description: {caption}\n"
    "Answers:\n{answers}")


def aggregation_prompt(caption: str, answers: dict[int, str], unnumbered: list[str]) -> str:
    """answers: question number (1-based) -> answer; unnumbered: answer lines whose question is unknown."""
    lines = [f"- {VQA_QUESTIONS[n - 1][0]}: {text}" for n, text in sorted(answers.items())]
    lines += [f"- {text}" for text in unnumbered]
    return AGGREGATION_PROMPT.format(caption=caption.strip(), answers="\n".join(lines))


# --------------------------------------------------------------------------- reading the replies

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


# --------------------------------------------------------------------------- the step


@dataclass
class Description:
    """One (caption, image) pair through VQA and aggregation."""
    answers: dict[int, str] = field(default_factory=dict)  # VQA: question number -> answer
    unnumbered: list[str] = field(default_factory=list)    # VQA answers not tied to a question
    vqa_text: str | None = None   # the VQA reply as the model wrote it
    refined: str | None = None    # caption and answers merged into one text, when both steps succeeded
    error: str | None = None      # why there is no refined text ('VQA: ...' or 'aggregation: ...')


def describe(captions: list[str], images: list[str], ask_text) -> list[Description]:
    """VQA on each image, then the text-only aggregation of each caption with its image's answers; in order."""
    out = [Description() for _ in captions]
    replies = ask_text([Request(VQA_PROMPT, image) for image in images])
    answered = []
    for i, (d, reply) in enumerate(zip(out, replies)):
        if isinstance(reply, Failure):
            d.error = f"VQA: {reply.reason}"
            continue
        d.vqa_text = reply
        d.answers, d.unnumbered = parse_vqa_answers(reply)
        if d.answers or d.unnumbered:
            answered.append(i)
        else:
            d.error = "VQA: empty answer"
    replies = ask_text([Request(aggregation_prompt(captions[i], out[i].answers, out[i].unnumbered))
                        for i in answered])
    for i, reply in zip(answered, replies):
        refined = None if isinstance(reply, Failure) else clean_refined_query(reply)
        if refined:
            out[i].refined = refined
        else:
            out[i].error = f"aggregation: {reply.reason if isinstance(reply, Failure) else 'empty answer'}"
    return out
