"""Reading RDA's MLLM replies, and telling a usable reply from a mangled one.

A reply is a numbered list (rda/prompts.py asks for one), but models also answer with bullets, with the whole
list on one line, with an introduction ("Here are the sentences:") or with markdown.  What cannot be read as
a list, what loops, and what is far longer than its input are rejected here; the caller then keeps the
original caption for that pair, so that one bad generation never puts a wrong caption into training.
"""
from __future__ import annotations

import re
from collections import Counter

# A list number at the start of the text or after whitespace: "1.", "2)", "(3)", "4:" followed by a space.
# The space keeps decimals ("1.5 m") out; the numbering must run 1, 2, 3 ... (see numbered_items).
_NUMBER = re.compile(r"(?:^|(?<=\s))\(?(\d{1,2})\s*[.):]\s+", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}\s*[.):])\s*")
_LABEL = re.compile(r"^(?:sentence|rewrite|paraphrase|version|option)\s*\d*\s*:\s*", re.IGNORECASE)

# Limits of a sane reply.  Why these numbers: THI's VQA has 15 questions of a few words each, so aggregation
# adds at most ~150 words to a caption; a decomposition restates its text (plus a subject per sentence);
# a rewrite is about as long as its sentence.  Greedy decoding that runs away repeats itself until it hits
# max_new_tokens, which the repetition check catches even when the length is within bounds: an 8-word phrase
# three times (shorter phrases recur in honest descriptions: 'the man is wearing a').  A decomposition that
# loops repeats whole items, which are dropped as duplicates.
ENRICHED_EXTRA_WORDS = 150
DECOMPOSITION_WORD_FACTOR, DECOMPOSITION_EXTRA_WORDS = 2.0, 20
MAX_GROUPS = 20
PARAPHRASE_WORD_FACTOR, PARAPHRASE_EXTRA_WORDS = 2.0, 10
LOOP_NGRAM, LOOP_REPEATS = 8, 3
# A sub-sentence restates its text and a rewrite keeps its sentence's details (colours, garments), so each
# shares most of its content words with its source even through synonyms; a chatty line ("Sure, here are the
# rewrites", "I cannot do that") shares next to none.
DECOMPOSITION_MIN_OVERLAP = 0.5     # of the item's content words, found in the enriched text
PARAPHRASE_MIN_OVERLAP = 1 / 3      # of the sentence's content words, found in the rewrite
_STOP = frozenset("the and with his her him she has have had are was were this that for also who which its "
                  "their them they there here not but from into".split())


def words(text: str) -> int:
    return len(text.split())


def numbered_items(text: str) -> list[str]:
    """Items of a numbered list 1, 2, 3 ... (on separate lines or on one), [] when the text has none.

    Only a run that starts at 1 and goes up by one counts, so that numbers inside sentences ('size 2.') and a
    stray '3.' are text.  Text before item 1 is an introduction and is dropped.
    """
    starts, expected = [], 1
    for m in _NUMBER.finditer(text):
        if int(m.group(1)) == expected:
            starts.append((m.start(), m.end()))
            expected += 1
    ends = [s for s, _ in starts[1:]] + [len(text)]
    return [text[end:stop] for (_, end), stop in zip(starts, ends)]


def list_items(text: str) -> list[str]:
    """Sentences of a list reply: numbered items if any, else bulleted or plain lines; cleaned, no duplicates."""
    text = text.replace("**", "")
    raw = numbered_items(text)
    if not raw:
        # no numbering: one item a line; a line ending in ':' introduces the list, it is not an item
        raw = [_BULLET.sub("", line) for line in text.splitlines() if not line.rstrip().endswith(":")]
    items, seen = [], set()
    for item in raw:
        item = clean_sentence(item)
        if item and item.lower() not in seen:
            seen.add(item.lower())
            items.append(item)
    return items


def clean_sentence(text: str) -> str:
    """One sentence: single spaces, no label or quotes, a capital first letter and a final full stop."""
    text = " ".join(text.split()).strip("\"'“”` ")
    text = _LABEL.sub("", text).strip("\"'“”` ")
    if not any(c.isalnum() for c in text):
        return ""
    if text[-1] not in ".!?":
        text += "."
    return text[0].upper() + text[1:]


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in _STOP}


def overlap(part: str, whole: str) -> float:
    """The share of part's content words that whole has too (0 when part has none)."""
    words_ = content_words(part)
    return len(words_ & content_words(whole)) / len(words_) if words_ else 0.0


def loops(text: str) -> bool:
    """Whether the text repeats one phrase over and over, the mark of greedy decoding that ran away."""
    tokens = text.lower().split()
    grams = Counter(tuple(tokens[i:i + LOOP_NGRAM]) for i in range(len(tokens) - LOOP_NGRAM + 1))
    return bool(grams) and max(grams.values()) >= LOOP_REPEATS


def enriched_problem(enriched: str, caption: str) -> str | None:
    """Why an aggregation reply is unusable as the enriched caption, or None."""
    if not enriched.strip():
        return "empty answer"
    if words(enriched) > words(caption) + ENRICHED_EXTRA_WORDS or loops(enriched):
        return "runaway length"
    return None


def decompose(reply: str, enriched: str) -> tuple[list[str], str | None]:
    """(sub-sentences, None) or ([], why the decomposition reply is unusable)."""
    if not reply.strip():
        return [], "empty answer"
    items = [item for item in list_items(reply) if overlap(item, enriched) >= DECOMPOSITION_MIN_OVERLAP]
    if not items:
        return [], "no parse"
    if len(items) < 2:
        # one group cannot be reorganised: the 'decomposition' is the text itself, or not a list at all
        return [], "one group only"
    budget = DECOMPOSITION_WORD_FACTOR * words(enriched) + DECOMPOSITION_EXTRA_WORDS
    if len(items) > MAX_GROUPS or sum(map(words, items)) > budget:
        return [], "runaway length"
    return items, None


def paraphrases(reply: str, sentence: str, m: int) -> list[str]:
    """Up to m usable rewrites of sentence (other than the sentence itself); [] when none could be read."""
    limit = PARAPHRASE_WORD_FACTOR * words(sentence) + PARAPHRASE_EXTRA_WORDS
    kept = []
    for item in list_items(reply):
        if (item.lower() != sentence.lower() and words(item) <= limit and not loops(item)
                and overlap(sentence, item) >= PARAPHRASE_MIN_OVERLAP):
            kept.append(item)
    return kept[:m]
