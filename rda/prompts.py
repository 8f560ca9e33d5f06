"""Every text RDA sends to the MLLM beyond the enrichment's (docs/METHOD.md §8), in one place.

The enrichment (step i) is THI's human-centred VQA and aggregation: those prompts live in mllm/vqa.py, shared
by both apps, so that RDA's enriched captions and THI's refined queries are written the same way.  The
published decomposition and rewriting prompts are not available; these are ours.

Both ask for a numbered list, one item a line: that is the shape models follow most reliably, and the one
rda/parsing.py reads.
"""
from __future__ import annotations

DECOMPOSITION_PROMPT = (
    "Split the description of a person below into short sentences, one for each attribute (for example: the "
    "person and gender; hair; upper clothing; lower clothing; shoes; bags and things carried; accessories; "
    "action; surroundings). Each sentence must make sense on its own, so it names the person (for example "
    "\"The woman\" or \"He\"), and must keep every detail the description gives about its attribute. Add "
    "nothing that the description does not say. Write one sentence a line, numbered 1., 2., 3. and so on. "
    "Reply with the list only.\n"
    "Description: {text}")

REWRITE_PROMPT = (
    "Rewrite the sentence about a person below in {m} different ways. Each rewrite keeps the meaning and every "
    "detail (colours, garments, objects, actions), changes the wording or the word order, and adds nothing. "
    "Write one rewrite a line, numbered 1. to {m}. Reply with the list only.\n"
    "Sentence: {sentence}")


def decomposition_prompt(text: str) -> str:
    return DECOMPOSITION_PROMPT.format(text=text.strip())


def rewrite_prompt(sentence: str, m: int) -> str:
    return REWRITE_PROMPT.format(sentence=sentence.strip(), m=m)
