import pytest
import torch

from utils.tokenizer import (EOT_ID, MASK_ID, SOT_ID, VOCAB_SIZE, SimpleTokenizer, get_tokenizer, tokenize,
                             tokenize_one)

SENTENCES = [
    "A woman wearing a red T-shirt and blue jeans, carrying a black backpack.",
    "The man has short black hair. He's wearing a grey jacket, white sneakers and glasses.",
    "  She   wears\ta long-sleeved   top\n with stripes ;  her shoes are brown!!  ",
    "Tom &amp;amp; Jerry's café: naïve façade, 3 bags, 1024 pixels, 100% cotton 😀",
    "ALL CAPS TEXT with MiXeD case and numbers 12345",
    "",
]


@pytest.fixture(scope="module")
def tok() -> SimpleTokenizer:
    return get_tokenizer()


@pytest.fixture(scope="module")
def reference():
    # open_clip is a test-only dependency (requirements-test.txt).
    return pytest.importorskip("open_clip.tokenizer")


@pytest.fixture(scope="module")
def reference_tok(reference):
    return reference.SimpleTokenizer()


def test_vocabulary(tok):
    assert len(tok.encoder) == VOCAB_SIZE == 49408
    assert tok.encoder["<|mask|>"] == MASK_ID == 49405
    assert tok.encoder["<|startoftext|>"] == SOT_ID == 49406
    assert tok.encoder["<|endoftext|>"] == EOT_ID == 49407
    # One merge fewer than CLIP (48,894) makes room for <|mask|>.
    assert len(tok.bpe_ranks) == 48893
    assert get_tokenizer() is tok


@pytest.mark.parametrize("text", SENTENCES)
def test_ids_equal_open_clip(tok, reference_tok, text):
    assert tok.encode(text) == reference_tok.encode(text)


def test_ids_equal_open_clip_tokenize(reference):
    ours = tokenize(SENTENCES, 77)
    theirs = reference.tokenize(SENTENCES, context_length=77)
    assert torch.equal(ours, theirs.long())
    # Truncation rule is the same as open_clip's too.
    long_text = " ".join(["person"] * 100)
    assert torch.equal(tokenize(long_text, 20), reference.tokenize([long_text], context_length=20).long())


def test_only_the_dropped_merge_differs(tok, reference_tok):
    # CLIP's last merge ("jeky", "ll</w>") -> id 49405 is the one given up for <|mask|>: the one
    # word that needs it splits one level lower than in CLIP; ordinary vocabulary is unaffected.
    assert reference_tok.encode("jekyll") == [49405]
    assert "jekyll</w>" not in tok.encoder
    assert tok.encode("jekyll") == [tok.encoder["jeky"], tok.encoder["ll</w>"]]
    assert max(tok.encode(" ".join(SENTENCES))) < MASK_ID


def test_mask_literal_is_one_token(tok):
    assert tok.encode("a <|mask|> shirt") == [tok.encoder["a</w>"], MASK_ID, tok.encoder["shirt</w>"]]


def test_sot_eot_padding(tok):
    text = SENTENCES[0]
    ids = tok.encode(text)
    out = tokenize_one(text, 77)
    assert out.dtype == torch.long and out.shape == (77,)
    assert out[0] == SOT_ID
    assert out[1:1 + len(ids)].tolist() == ids
    assert out[1 + len(ids)] == EOT_ID
    assert (out[2 + len(ids):] == 0).all()
    assert out.argmax().item() == 1 + len(ids)


def test_batch_and_single_string():
    batch = tokenize(SENTENCES[:3], 40)
    assert batch.shape == (3, 40) and batch.dtype == torch.long
    for i, text in enumerate(SENTENCES[:3]):
        assert torch.equal(batch[i], tokenize_one(text, 40))
    assert tokenize(SENTENCES[0], 40).shape == (1, 40)
    assert tokenize([], 40).shape == (0, 40)


def test_empty_text():
    out = tokenize_one("", 8)
    assert out.tolist() == [SOT_ID, EOT_ID, 0, 0, 0, 0, 0, 0]


def test_truncation(tok):
    text = " ".join(["person"] * 100)
    out = tokenize_one(text, 16)
    assert out.shape == (16,)
    assert out[0] == SOT_ID and out[-1] == EOT_ID
    assert out[1:-1].tolist() == tok.encode(text)[:14]
    assert out.argmax().item() == 15


def test_exact_fit_is_not_truncated(tok):
    text = " ".join(["person"] * 14)
    assert len(tok.encode(text)) == 14
    out = tokenize_one(text, 16)
    assert out.tolist() == [SOT_ID] + tok.encode(text) + [EOT_ID]
    over = tokenize_one(text + " person", 16)
    assert over[-1] == EOT_ID and over[1:-1].tolist() == tok.encode(text)


def test_text_length_too_small():
    with pytest.raises(ValueError):
        tokenize_one("a", 1)


def test_decode_round_trip(tok):
    assert tok.decode(tok.encode("A Woman in a RED coat")).strip() == "a woman in a red coat"
    for text in SENTENCES:
        ids = tok.encode(text)
        assert tok.encode(tok.decode(ids)) == ids
    assert tok.decode([SOT_ID, MASK_ID, EOT_ID]) == "<|startoftext|><|mask|><|endoftext|>"


def test_bpe_cache(tok):
    tok.encode("backpackers")
    assert "backpackers" in tok.cache
    assert tok.encode("backpackers") == tok.encode("backpackers")
