"""CLIP byte-level BPE tokenizer (docs/METHOD.md §1.5).

Same text cleaning and merges as OpenAI CLIP, so ordinary words get exactly
CLIP's ids. The vocabulary differs only at the very end: the last BPE merge is
dropped to make room for `<|mask|>` (used by text augmentation and MLM), which
keeps `<|startoftext|>` / `<|endoftext|>` at CLIP's ids 49406 / 49407 and the
total at 49,408, so CLIP's token embedding loads unchanged.
"""
from __future__ import annotations

import gzip
import html
import os
from functools import lru_cache
from typing import Iterable, Sequence

import ftfy
import regex as re
import torch

MASK_ID = 49405
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408

_SPECIALS = ("<|mask|>", "<|startoftext|>", "<|endoftext|>")
_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character.

    BPE works on strings, so each raw byte needs a visible, non-whitespace
    stand-in; printable latin-1 bytes map to themselves, the rest are shifted
    past 255. This is GPT-2/CLIP's table, which the merges file is written in.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


def _clean(text: str) -> str:
    text = ftfy.fix_text(text)
    # Twice, as CLIP does: scraped captions are sometimes double-escaped (&amp;amp;).
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    def __init__(self, bpe_path: str = _BPE_PATH):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}

        lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        # Line 0 is a version header. CLIP keeps 49152 - 256 - 2 merges; we keep
        # one fewer so that <|mask|> fits before SOT/EOT.
        n_merges = VOCAB_SIZE - 2 * 256 - len(_SPECIALS)
        merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]

        byte_chars = list(self.byte_encoder.values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars]
        vocab += ["".join(m) for m in merges]
        vocab += list(_SPECIALS)
        assert len(vocab) == VOCAB_SIZE

        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        # Special tokens never go through BPE; pre-seeding the cache makes them atomic.
        self.cache = {s: s for s in _SPECIALS}
        # CLIP's pre-tokenizer (special tokens, English contractions, letter runs, single
        # digits, punctuation runs) plus <|mask|>, so a literal mask in text stays one token.
        self.pat = re.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|<\|mask\|>|'s|'t|'re|'ve|'m|'ll|'d"
            r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            re.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        """Greedy lowest-rank merging of one pre-token; returns space-joined subwords."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        # '</w>' marks the word end so that suffix pieces differ from inner pieces.
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"

        while True:
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _pairs(word)

        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without SOT/EOT."""
        ids: list[int] = []
        for token in self.pat.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        text = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return text.replace("</w>", " ")


@lru_cache(maxsize=None)
def get_tokenizer() -> SimpleTokenizer:
    # Building the vocabulary takes ~0.5 s; share one instance (and its BPE cache).
    return SimpleTokenizer()


def _pack(ids: Sequence[int], text_length: int) -> torch.Tensor:
    ids = [SOT_ID, *ids, EOT_ID]
    if len(ids) > text_length:
        # Keep EOT as the last position: the text embedding is read there (argmax).
        ids = ids[:text_length]
        ids[-1] = EOT_ID
    out = torch.zeros(text_length, dtype=torch.long)
    out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def tokenize_one(text: str, text_length: int = 77) -> torch.Tensor:
    """[SOT] + ids + [EOT], zero padded / truncated to a LongTensor of shape [text_length]."""
    return tokenize_counted(text, text_length)[0]


def tokens_cut(text: str, text_length: int = 77) -> int:
    """How many of `text`'s tokens do not fit `text_length` (with SOT and EOT) and so never reach the model; 0 when
    all of it fits.  Training counts its cut captions with it, the search page says when a query was cut."""
    return tokenize_counted(text, text_length)[1]


def tokenize_counted(text: str, text_length: int = 77) -> tuple[torch.Tensor, int]:
    """(tokenize_one's ids, tokens_cut's count) from one encoding."""
    if text_length < 2:
        raise ValueError(f"text_length must be >= 2 to hold SOT and EOT, got {text_length}")
    ids = get_tokenizer().encode(text)
    return _pack(ids, text_length), max(0, len(ids) + 2 - text_length)


def tokenize(texts: str | Sequence[str], text_length: int = 77) -> torch.Tensor:
    """Batch version of `tokenize_one`: LongTensor [len(texts), text_length] (a str gives [1, L])."""
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        return torch.zeros(0, text_length, dtype=torch.long)
    return torch.stack([tokenize_one(t, text_length) for t in texts])
