"""THI: the gate, the re-ranking formula and the parsing on hand-made cases; the whole path through a tiny random
Qwen2-VL (transformers backend) on a tiny trained run; the cache, failures, LoRA and the vLLM glue."""
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from utils.images import ImageDecodeError
from inference.runs import load_run
from mllm.backends import MLLMLoadError, Request, make_backend
from mllm.backends.chat import processor_size
from mllm.backends.hf import TransformersBackend
from mllm.backends.yes_no import answer_token_ids, yes_probability_from_logits, yes_probability_from_logprobs
from mllm.cache import AnswerCache, Failure, ask
from mllm.vqa import clean_refined_query, parse_vqa_answers
from tests.helpers import (SMALL_IMAGES, THI_DATA_SIZES, load_run_split_images, read_jsonl, train_tiny_run,
                           weightless_model)
from tests.tiny_qwen2vl import build_tiny_qwen2vl
from thi import cli
from thi.interaction import QueryState, accepts, localise, may_accept
from thi.rerank import RunSimilarity, reranked

DATA_SIZES = THI_DATA_SIZES   # conftest.py's data_root, trained into its run_dir


@pytest.fixture(scope="session")
def yes_model(tmp_path_factory):
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("qwen_yes")), seed=0, favour="Yes")


@pytest.fixture(scope="session")
def no_model(tmp_path_factory):
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("qwen_no")), seed=1, favour="No")


def count_backend_calls(monkeypatch):
    """Patch the transformers backend to count the requests it is asked; returns the counter."""
    calls = {"yes_probability": [], "generate": []}
    for kind in calls:
        real = getattr(TransformersBackend, kind)

        def counting(self, requests, *a, _real=real, _kind=kind, **kw):
            calls[_kind].append(len(requests))
            return _real(self, requests, *a, **kw)
        monkeypatch.setattr(TransformersBackend, kind, counting)
    return calls


# ---- pure logic: gate, rounds, re-ranking, parsing, yes/no ----------------------------------------------------

def test_gate_follows_method_md():
    xi = 0.5
    # round 0: yes and s1 > xi
    assert accepts(0, [True], 0.6, xi) and not accepts(0, [True], 0.5, xi) and not accepts(0, [False], 0.9, xi)
    # round r > 0: yes, every earlier round no, and s1 <= xi
    assert accepts(2, [False, False, True], 0.5, xi) and accepts(1, [False, True], 0.1, xi)
    assert not accepts(2, [False, False, True], 0.51, xi)     # s1 > xi: only round 0 could accept
    assert not accepts(2, [True, False, True], 0.3, xi)       # an earlier round said yes
    assert not accepts(1, [False, False], 0.3, xi)
    # who is still worth asking
    assert may_accept(0, [], 0.9, xi) and may_accept(3, [False] * 3, 0.2, xi)
    assert not may_accept(1, [False], 0.9, xi) and not may_accept(1, [True], 0.2, xi)


def test_rounds_with_scripted_answers():
    """Four queries, 3 rounds, answers scripted per (query, round); anchors and questions asked checked by hand."""
    xi = 0.5
    gallery = [f"img{g}.jpg" for g in range(6)]
    states = [QueryState(0, "a", [3, 1, 2], 0.8),     # s1 > xi, yes at round 0 -> anchor 3 at round 0
              QueryState(1, "b", [4, 0, 5], 0.8),     # s1 > xi, no at round 0 -> never asked again, no anchor
              QueryState(2, "c", [1, 2, 0], 0.3),     # s1 <= xi: no, no, yes -> anchor 0 at round 2
              QueryState(3, "d", [5, 4, 3], 0.3)]     # s1 <= xi, yes at round 0 -> rejected, closed
    script = {("a", "img3.jpg"): 0.9, ("b", "img4.jpg"): 0.2, ("c", "img1.jpg"): 0.1, ("c", "img2.jpg"): 0.4,
              ("c", "img0.jpg"): 0.7, ("d", "img5.jpg"): 0.95}
    asked = []

    def ask_yes(requests):
        asked.append(len(requests))
        return [script[(r.prompt.split('"')[1], r.image)] for r in requests]

    localise(states, gallery, ask_yes, rounds=3, xi=xi)
    assert [(s.anchor, s.anchor_round) for s in states] == [(3, 0), (None, None), (0, 2), (None, None)]
    assert asked == [4, 1, 1]
    assert states[2].yes_prob == [0.1, 0.4, 0.7] and states[3].yes_prob == [0.95]

    failed = [QueryState(0, "c", [1, 2, 0], 0.3)]
    localise(failed, gallery, lambda reqs: [Failure("OSError: boom")] * len(reqs), rounds=3, xi=xi)
    assert failed[0].anchor is None and "round 0" in failed[0].error and "boom" in failed[0].error


def test_reranked_by_hand():
    s_base = torch.tensor([[0.2, 0.6, 0.4],
                           [0.5, 0.1, 0.3]])
    refined_row = torch.tensor([[0.9, 0.0, 0.3]])
    out = reranked(s_base, refined_row, queries=[0], anchors=[2], lam=0.8)
    # query 0: S_hat = [0.9, 0.0, 1 (anchor)]; 0.8 * [0.2, 0.6, 0.4] + 0.2 * [0.9, 0.0, 1.0]
    torch.testing.assert_close(out[0], torch.tensor([0.34, 0.48, 0.52]))
    torch.testing.assert_close(out[1], s_base[1])                # not refined: S_hat = S_base
    torch.testing.assert_close(reranked(s_base, refined_row[:0], [], [], 0.8), s_base)
    assert out[0].argmax() == 2                                    # the anchor moved to the top


@pytest.mark.parametrize("text, numbered, unnumbered", [
    ("1. female\n2. long black hair\n3) red coat, long sleeves", {1: "female", 2: "long black hair",
                                                               3: "red coat, long sleeves"}, []),
    ("**1.** Male\n**2.** Short, brown\n", {1: "Male", 2: "Short, brown"}, []),
    ("1. male 2. short hair 3. jeans, 1.5 m long", {1: "male", 2: "short hair", 3: "jeans, 1.5 m long"}, []),
    ("Here are the answers:\n(1) male\n2: short\n4) black pants", {1: "male", 2: "short", 4: "black pants"}, []),
    ("Answer 1: female. Answer 2: long hair", {1: "female", 2: "long hair"}, []),
    ("1. What is the gender of the person? Male\n2.short 2-3 cm hair", {1: "Male", 2: "short 2-3 cm hair"}, []),
    ("- male\n- short hair\n* red jacket", {}, ["male", "short hair", "red jacket"]),
    ("A woman in a red coat.", {}, ["A woman in a red coat"]),
    ("1. male\n3. jeans\n2. size 2. shoes", {1: "male", 3: "jeans 2. size 2. shoes"}, []),
])
def test_vqa_answers_survive_odd_formatting(text, numbered, unnumbered):
    assert parse_vqa_answers(text) == (numbered, unnumbered)


def test_refined_query_is_one_clean_paragraph():
    assert clean_refined_query('Refined description: "A man in a red coat.\n\nHe carries a bag."') == \
        "A man in a red coat. He carries a bag."
    assert clean_refined_query("**Description:** A woman.") == "A woman."
    assert clean_refined_query("  \n ") == ""


def test_yes_probability_from_logits_and_logprobs():
    logits = torch.full((2, 6), -5.0)
    logits[0, 1], logits[0, 2] = 2.0, 0.0            # yes id 1, no id 2
    logits[1, 1], logits[1, 3], logits[1, 2] = 0.0, 0.0, 1.0   # two yes spellings (1, 3)
    p = yes_probability_from_logits(logits, [1, 3], [2])
    assert p[0] == pytest.approx(torch.sigmoid(torch.logaddexp(torch.tensor(2.0), torch.tensor(-5.0))).item())
    assert p[1] == pytest.approx(2 / (2 + torch.e), abs=1e-6)
    assert yes_probability_from_logprobs({1: -0.1, 2: -2.4, 7: -3.0}, [1], [2]) == \
        pytest.approx(1 / (1 + torch.e ** -2.3))
    # an answer token missing (vLLM's default top-k raw log-probabilities): no guess, an error naming it
    with pytest.raises(ValueError, match=r"answer token\(s\) \[2\]"):
        yes_probability_from_logprobs({1: -0.01, 7: -6.0}, [1], [2])
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        yes_probability_from_logprobs({7: -0.1}, [1], [2])


# ---- cache and batched asking ------------------------------------------------------------------------------------

class FakeBackend:
    model_id = "fake"

    def __init__(self, bad=()):
        self.bad, self.calls = set(bad), 0

    def yes_probability(self, requests):
        self.calls += 1
        for r in requests:
            if r.image in self.bad:
                raise ImageDecodeError(f"cannot decode image {r.image}")
        return [len(r.prompt) / 100 for r in requests]


def test_cache_resumes_after_a_kill_mid_write(tmp_path):
    path = tmp_path / "cache.jsonl"
    backend, requests = FakeBackend(), [Request(f"q{i}", f"{i}.jpg") for i in range(5)]
    first = ask(backend, AnswerCache(str(path)), "yes_probability", requests, batch_size=2)
    assert backend.calls == 3
    with open(path, "a") as f:
        f.write('{"key": "abc", "val')               # a write cut by a kill
    cache = AnswerCache(str(path))
    assert ask(backend, cache, "yes_probability", requests) == first and backend.calls == 3
    ask(backend, cache, "yes_probability", [Request("new")])
    assert len(AnswerCache(str(path)).answers) == 6                 # the next append landed on its own line
    # the model identity is part of the key
    backend.model_id = "fake+lora"
    ask(backend, AnswerCache(str(path)), "yes_probability", requests[:1])
    assert backend.calls == 5


class PixelBackend(FakeBackend):
    """Answers from the image's pixels (its mean grey level), as a real MLLM's answer depends on them."""

    def yes_probability(self, requests):
        from PIL import Image
        self.calls += 1
        return [float(np.asarray(Image.open(r.image).convert("L")).mean()) / 255 if r.image else len(r.prompt) / 100
                for r in requests]


def test_answers_are_keyed_by_the_image_content_not_its_path(tmp_path, caplog):
    """Every image replaced by new pixels at the same path: a rerun asks again and answers about the new pixels;
    the same pixels at another path reuse the answer.  A cache written when answers were keyed by the image's
    path still loads: its answers about images are not used, and one line says so."""
    from PIL import Image
    paths = [str(tmp_path / f"{i}.jpg") for i in range(2)]
    for i, p in enumerate(paths):
        Image.new("RGB", (16, 32), (40 + 100 * i,) * 3).save(p)
    requests = [Request("a man in a red shirt?", p) for p in paths] + [Request("a text-only question?")]
    cache_file, backend = str(tmp_path / "cache.jsonl"), PixelBackend()
    first = ask(backend, AnswerCache(cache_file), "yes_probability", requests)
    for i, p in enumerate(paths):                                       # new pixels at the same paths
        Image.new("RGB", (16, 32), (200 - 100 * i,) * 3).save(p)
    rerun = ask(backend, AnswerCache(cache_file), "yes_probability", requests)
    assert rerun == PixelBackend().yes_probability(requests[:2]) + first[2:] and rerun[:2] != first[:2]
    shutil.copyfile(paths[0], tmp_path / "copy.jpg")                    # the same pixels elsewhere: no question
    calls = backend.calls
    assert ask(backend, AnswerCache(cache_file), "yes_probability",
               [Request("a man in a red shirt?", str(tmp_path / "copy.jpg"))]) == rerun[:1]
    assert backend.calls == calls

    # a cache of the path-keyed format (the key hashed the path where the content's hash is now)
    import hashlib
    import json as json_
    old = tmp_path / "old.jsonl"
    with open(old, "w") as f:
        for r, value in zip(requests, (0.123, 0.456, 0.789)):
            key = hashlib.sha256(json_.dumps([backend.model_id, "yes_probability", r.image, r.system, r.prompt,
                                              []]).encode()).hexdigest()
            f.write(json_.dumps({"key": key, "value": value, "image": r.image}) + "\n")
    with caplog.at_level("WARNING"):
        got = ask(backend, AnswerCache(str(old)), "yes_probability", requests)
    assert got == rerun[:2] + [0.789]                                   # the text-only answer is still good
    assert (f"answer cache {old}: 2 answers about images were keyed by the image's path (a cache written before "
            "answers were keyed by the image's content), not by its pixels: not used, asked again") in caplog.text


def test_a_bad_image_fails_its_query_only_and_systematic_failure_raises(tmp_path):
    backend = FakeBackend(bad={"2.jpg"})
    requests = [Request(f"q{i}", f"{i}.jpg") for i in range(4)]
    out = ask(backend, AnswerCache(str(tmp_path / "a.jsonl")), "yes_probability", requests, batch_size=4)
    assert isinstance(out[2], Failure) and "2.jpg" in out[2].reason
    assert out[:2] + out[3:] == [0.02, 0.02, 0.02]

    class Broken(FakeBackend):
        def yes_probability(self, requests):
            raise RuntimeError("CUDA error: device-side assert")
    with pytest.raises(RuntimeError, match="every MLLM yes_probability request failed"):
        ask(Broken(), AnswerCache(str(tmp_path / "b.jsonl")), "yes_probability", requests)


# ---- the transformers backend on a tiny random Qwen2-VL ---------------------------------------------------------

def test_transformers_backend_batches_with_left_padding(yes_model, no_model, data_root, tmp_path):
    image = load_run_split_images(data_root)[0]
    requests = [Request('Description: "a man"\nDoes this describe him? Answer Yes or No.', image),
                Request("A much longer text-only question " * 6 + "? Answer Yes or No."),
                Request("Is this a person?", image)]
    yes = make_backend("transformers", yes_model, min_pixels=3136, max_pixels=3136)
    batched = yes.yes_probability(requests)
    assert batched == pytest.approx([yes.yes_probability([r])[0] for r in requests], abs=1e-4)
    assert all(p > 0.5 for p in batched)
    no = make_backend("transformers", no_model, min_pixels=3136, max_pixels=3136)
    assert all(p < 0.5 for p in no.yes_probability(requests))
    texts = yes.generate(requests[:2], max_new_tokens=5)
    assert texts == [yes.generate([r], max_new_tokens=5)[0] for r in requests[:2]] and all(texts)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ImageDecodeError, match="corrupt.jpg"):
        yes.yes_probability([Request("Is this a person?", str(corrupt))])


# ---- the whole path on a trained run ----------------------------------------------------------------------------

def assert_same_up_to_float_noise(got, expected, path="", rel=1e-5, abs=1e-6):
    """Structures equal exactly in everything but floats (ids, counts, texts, keys), floats within a
    tolerance: P(yes) from batches of different composition differs in the last bits."""
    if isinstance(expected, float) or isinstance(got, float):
        assert got == pytest.approx(expected, rel=rel, abs=abs), path
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_same_up_to_float_noise(got[key], expected[key], f"{path}.{key}", rel, abs)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same_up_to_float_noise(g, e, f"{path}[{i}]", rel, abs)
    else:
        assert got == expected, path


def test_thi_end_to_end_then_resumes_from_the_cache(run_dir, yes_model, monkeypatch, tmp_path):
    out = tmp_path / "thi"
    argv = ["--run", run_dir, "--model_dir", yes_model, "--out", str(out), "--xi", "-1", "--limit", "6",
            "--max_new_tokens", "4", "--batch_size", "4", *SMALL_IMAGES]
    calls = count_backend_calls(monkeypatch)
    result = cli.main(argv)
    states, metrics = result["states"], result["metrics"]
    # the model says yes and every s1 > xi: every query is refined at round 0, through VQA and aggregation
    assert [s.anchor for s in states] == [s.candidates[0] for s in states] and all(s.refined for s in states)
    # one VQA per distinct anchor image (queries of one person share it), one aggregation per query
    assert sum(calls["yes_probability"]) == 6 and sum(calls["generate"]) == len({s.anchor for s in states}) + 6
    assert list(metrics) == ["base (BGE+TSE)"] + [f"THI round {r}" for r in range(1, 6)]

    # S_final is the formula of docs/METHOD.md §7.1 (step 5) over the run's own fused similarity of the refined texts
    sims = RunSimilarity(load_run_weights(run_dir))
    s_base = sims.base[:6]
    torch.testing.assert_close(result["base"], s_base)
    expected = reranked(s_base, sims.of_captions([s.refined for s in states]), list(range(6)),
                        [s.anchor for s in states], 0.8)
    torch.testing.assert_close(result["final"], expected)
    assert (result["final"].argmax(1) == torch.tensor([s.anchor for s in states])).all()

    lines = read_jsonl(out / "queries.jsonl")
    assert [line["query"] for line in lines] == list(range(6))
    assert lines[0]["refined"] == states[0].refined and lines[0]["vqa_text"] and lines[0]["anchor_round"] == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == metrics and saved["xi"] == -1
    full = torch.load(out / "final_similarity.pt")              # every query; past --limit the base row
    assert full.shape == sims.base.shape
    torch.testing.assert_close(full[:6], result["final"])
    torch.testing.assert_close(full[6:], sims.base[6:])

    # a second run asks the MLLM nothing and gives the same result
    for kind in calls:
        calls[kind].clear()
    again = cli.main(argv)
    assert calls == {"yes_probability": [], "generate": []}
    torch.testing.assert_close(again["final"], result["final"])
    assert read_jsonl(out / "queries.jsonl") == lines


def test_shards_then_merge_equal_one_process(run_dir, yes_model, monkeypatch, tmp_path):
    """Data parallel THI: --shard K/N asks every N-th query's questions into its own cache and log; the same
    command without --shard asks nothing and writes what one process would have."""
    argv = ["--run", run_dir, "--model_dir", yes_model, "--xi", "0.05", "--limit", "7", "--rounds", "3",
            "--max_new_tokens", "4", *SMALL_IMAGES]
    single = cli.main([*argv, "--out", str(tmp_path / "single")])
    out = tmp_path / "sharded"
    calls = count_backend_calls(monkeypatch)
    for k in range(3):
        shard = cli.main([*argv, "--out", str(out), "--shard", f"{k}/3"])
        assert [s.query for s in shard["states"]] == list(range(k, 7, 3))
    assert sum(calls["yes_probability"]) >= 7 and calls["generate"]
    assert not (out / "metrics.json").exists()
    assert {p.name for p in out.iterdir()} >= {f"mllm_cache.shard{k}-of-3.jsonl" for k in range(3)} | \
        {f"thi_log.shard{k}-of-3.txt" for k in range(3)}
    for kind in calls:
        calls[kind].clear()
    merged = cli.main([*argv, "--out", str(out)])
    assert calls == {"yes_probability": [], "generate": []}
    # the shards batch other queries together than one process does: floats agree to rounding, the rest exactly
    assert_same_up_to_float_noise(merged["metrics"], single["metrics"])
    torch.testing.assert_close(merged["final"], single["final"])
    assert_same_up_to_float_noise(read_jsonl(out / "queries.jsonl"), read_jsonl(tmp_path / "single" / "queries.jsonl"))


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_refused(text, run_dir, yes_model, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--run", run_dir, "--model_dir", yes_model, "--shard", text])
    assert "K/N" in capsys.readouterr().err


def load_run_weights(run_dir):
    run = load_run(run_dir)
    run.load_weights("best")
    return run


def test_rounds_continue_while_the_model_says_no(run_dir, no_model, monkeypatch, tmp_path):
    """Default xi: queries with s1 <= xi are asked about each of the K candidates; nothing is refined."""
    calls = count_backend_calls(monkeypatch)
    result = cli.main(["--run", run_dir, "--model_dir", no_model, "--out", str(tmp_path), "--limit", "4",
                       "--rounds", "3", *SMALL_IMAGES])
    low = sum(s.s1 <= 0.5 for s in result["states"])
    assert sum(calls["yes_probability"]) == 4 + 2 * low and calls["generate"] == []
    assert all(s.anchor is None and len(s.yes_prob) == (3 if s.s1 <= 0.5 else 1) for s in result["states"])
    torch.testing.assert_close(result["final"], result["base"])


def test_a_query_with_a_corrupt_image_keeps_its_base_ranking(run_dir, yes_model, monkeypatch, tmp_path):
    run = load_run_weights(run_dir)
    target = int(RunSimilarity(run).base[0].argmax())        # query 0's top candidate
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    import mllm.backends.chat as chat
    real_read = chat.read_image
    # that file turns out corrupt when the MLLM reads it (the retrieval model read it fine): the same path,
    # a real decoding failure
    target_path = run.dataset.test.img_paths[target]
    monkeypatch.setattr(chat, "read_image", lambda p: real_read(str(corrupt) if p == target_path else p))
    result = cli.main(["--run", run_dir, "--model_dir", yes_model, "--out", str(tmp_path), "--xi", "-1",
                       "--limit", "4", "--max_new_tokens", "4", *SMALL_IMAGES])
    hit = [s for s in result["states"] if s.candidates[0] == target]
    assert hit[0].query == 0
    for s in hit:
        assert "corrupt.jpg" in s.error and s.refined is None
        torch.testing.assert_close(result["final"][s.query], result["base"][s.query])
    assert all(s.refined and s.error is None for s in result["states"] if s not in hit)
    assert read_jsonl(tmp_path / "queries.jsonl")[0]["error"] == hit[0].error


@pytest.mark.slow
def test_twin_run_scores_captions_like_test_py(data_root, tmp_path):
    """The refined-query helper reproduces the base (the ensemble row test.py prints) from the original captions."""
    run = load_run_weights(train_tiny_run(data_root, tmp_path / "twin", "--twin", "--batch_size", "12"))
    sims = RunSimilarity(run)
    assert sims.headline == "ensemble"
    torch.testing.assert_close(sims.of_captions(run.dataset.test.captions), sims.base, atol=1e-5, rtol=1e-5)
    assert sims.of_captions([]).shape == (0, sims.base.shape[1])


# ---- LoRA, and the vLLM glue ------------------------------------------------------------------------------------

def test_lora_applied_with_flag_and_merged(yes_model, run_dir, data_root, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    from thi import merge_lora

    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration.from_pretrained(yes_model)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora_dir = str(tmp_path / "lora")
    get_peft_model(base, config).save_pretrained(lora_dir)

    image = load_run_split_images(data_root)[1]
    requests = [Request('Description: "a woman"\nIs she in the image? Answer Yes or No.', image),
                Request("Answer Yes or No: is the sky green?")]
    plain = make_backend("transformers", yes_model, min_pixels=3136, max_pixels=3136).yes_probability(requests)
    adapted = make_backend("transformers", yes_model, lora=lora_dir, min_pixels=3136, max_pixels=3136)
    with_lora = adapted.yes_probability(requests)
    assert max(abs(a - b) for a, b in zip(plain, with_lora)) > 1e-3      # the adapter changes the answers

    merged_dir = merge_lora.main(["--base", yes_model, "--lora", lora_dir, "--out", str(tmp_path / "merged")])
    merged = make_backend("transformers", merged_dir, min_pixels=3136, max_pixels=3136)
    assert merged.yes_probability(requests) == pytest.approx(with_lora, abs=1e-5)
    assert merged.model_id != adapted.model_id

    result = cli.main(["--run", run_dir, "--model_dir", yes_model, "--lora", lora_dir, "--out",
                       str(tmp_path / "thi"), "--limit", "2", "--rounds", "1", *SMALL_IMAGES])
    assert result["states"][0].yes_prob
    assert lora_dir in json.loads((tmp_path / "thi" / "metrics.json").read_text())["model_id"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_says_how_to_install(yes_model):
    with pytest.raises(SystemExit, match="pip install vllm"):
        make_backend("vllm", yes_model)


# The arguments vLLM 0.32's LLM() takes that this project passes; the real engine rejects an unknown one
VLLM_ENGINE_ARGS = {"model", "max_model_len", "dtype", "tensor_parallel_size", "seed", "limit_mm_per_prompt",
                    "mm_processor_kwargs", "max_num_seqs", "enable_lora", "max_lora_rank", "enforce_eager",
                    "gpu_memory_utilization", "kv_cache_memory_bytes", "logprobs_mode"}


def answer_position_logits(prompt: str, vocab: int, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    """The stand-in engine's next-token logits: 30 unrelated tokens above every answer spelling (as in the real
    tiny model, where "No" was not in the top 20), the answers' margin depending on the prompt."""
    g = torch.Generator().manual_seed(len(prompt))
    logits = torch.randn(vocab, generator=g)
    answers = torch.tensor(yes_ids + no_ids)
    others = torch.tensor([t for t in torch.randperm(vocab, generator=g).tolist() if t not in answers][:30])
    logits[others] += 6.0
    logits[answers] = torch.rand(len(answers), generator=g) * 2
    return logits


def install_stand_in_vllm(monkeypatch, exact_logprobs=True, on_cpu=True, start_error=None):
    """A `vllm` module that answers as the real engine does: `logprobs=k` gives the top k raw log-probabilities
    (before allowed_token_ids masks anything, unrelated tokens included) plus the sampled token;
    `logprob_token_ids` (when the release has it) exactly those tokens plus the sampled one;
    `logprobs_mode="processed_logprobs"` log-probabilities after the mask.  Returns what it saw."""
    seen = {"starts": 0, "prompts": []}
    lp = types.SimpleNamespace

    class LLM:
        def __init__(self, **kwargs):
            seen["starts"] += 1
            unknown = set(kwargs) - VLLM_ENGINE_ARGS
            if unknown:
                raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
            if start_error is not None:
                raise start_error
            seen["engine"] = kwargs
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
            self.vocab, self.answers = len(tokenizer), answer_token_ids(tokenizer)

        def generate(self, prompts, sampling, lora_request=None, use_tqdm=True):
            seen["prompts"].extend(prompts)
            seen["lora"] = lora_request
            outputs = []
            for prompt in prompts:
                if sampling.max_tokens != 1:
                    outputs.append(lp(outputs=[lp(logprobs=None, text=" 1. male\n")]))
                    continue
                logits = answer_position_logits(prompt["prompt"], self.vocab, *self.answers)
                raw = logits.log_softmax(-1)
                masked = torch.full_like(logits, -float("inf"))
                if getattr(sampling, "allowed_token_ids", None):
                    masked[sampling.allowed_token_ids] = logits[sampling.allowed_token_ids]
                else:
                    masked = logits
                sampled = int(masked.argmax())
                values = masked.log_softmax(-1) if seen["engine"].get("logprobs_mode") == "processed_logprobs" else raw
                if getattr(sampling, "logprob_token_ids", None):
                    returned = list(sampling.logprob_token_ids)
                else:
                    returned = values.topk(sampling.logprobs).indices.tolist()
                step = {t: lp(logprob=float(values[t])) for t in returned + [sampled]}
                outputs.append(lp(outputs=[lp(logprobs=[step], text="")]))
            return outputs

    fields = ("max_tokens", "temperature", "logprobs", "allowed_token_ids") + \
        (("logprob_token_ids",) if exact_logprobs else ())

    class SamplingParams:
        __annotations__ = {f: object for f in fields}

        def __init__(self, **kwargs):
            unknown = set(kwargs) - set(fields)
            if unknown:
                raise TypeError(f"Unexpected keyword argument {sorted(unknown)[0]!r}")
            self.__dict__.update({f: None for f in fields}, **kwargs)

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.path = path

    platform = lp(is_cpu=lambda: on_cpu)
    for name, attrs in (("vllm", dict(LLM=LLM, SamplingParams=SamplingParams)), ("vllm.lora", {}),
                        ("vllm.lora.request", dict(LoRARequest=LoRARequest)),
                        ("vllm.platforms", dict(current_platform=platform))):
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")   # the backend may set it: restored afterwards
    return seen


def transformers_p_yes(model_dir, requests):
    return make_backend("transformers", model_dir, min_pixels=3136, max_pixels=3136).yes_probability(requests)


@pytest.mark.parametrize("exact_logprobs", [True, False], ids=["logprob_token_ids", "processed_logprobs"])
def test_vllm_p_yes_is_exact_when_the_answers_are_outside_the_top_k(exact_logprobs, yes_model, data_root,
                                                                    monkeypatch):
    """Defect 1: with vLLM's default top-20 raw log-probabilities neither answer was returned here; the backend
    must ask for exactly the answer tokens (or the masked, processed ones) and get P(yes) exactly."""
    seen = install_stand_in_vllm(monkeypatch, exact_logprobs=exact_logprobs)
    backend = make_backend("vllm", yes_model, min_pixels=3136, max_pixels=3136)
    image = load_run_split_images(data_root)[0]
    requests = [Request("Is this a person? Answer Yes or No.", image), Request("Yes or No?"),
                Request("Is the sky green? Answer Yes or No.")]
    got = backend.yes_probability(requests)
    expected = []
    for prompt in seen["prompts"]:
        logits = answer_position_logits(prompt["prompt"], backend._llm.vocab, backend.yes_ids, backend.no_ids)
        assert set(logits.topk(20).indices.tolist()).isdisjoint(backend.yes_ids + backend.no_ids)
        margin = logits[backend.yes_ids].logsumexp(-1) - logits[backend.no_ids].logsumexp(-1)
        expected.append(float(torch.sigmoid(margin)))
    assert got == pytest.approx(expected, abs=1e-6)
    assert len({round(p, 6) for p in got}) == 3 and all(p != 0.5 for p in got)
    assert ("logprobs_mode" in seen["engine"]) != exact_logprobs


def test_vllm_engine_arguments(yes_model, data_root, monkeypatch, tmp_path):
    """Defects 3-5: image budget, platform defaults, LoRA rank bound; the prompts are those of the HF backend."""
    seen = install_stand_in_vllm(monkeypatch)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"r": 12}))
    backend = make_backend("vllm", yes_model, lora=str(lora), max_model_len=2048, tensor_parallel_size=2,
                           min_pixels=3136, max_pixels=3136)
    image = load_run_split_images(data_root)[0]
    backend.yes_probability([Request("Is this a person? Answer Yes or No.", image), Request("Yes or No?")])
    assert backend.generate([Request("Describe.", image)], max_new_tokens=16) == ["1. male"]
    engine = seen["engine"]
    assert engine["max_model_len"] == 2048 and engine["tensor_parallel_size"] == 2 and "max_num_seqs" not in engine
    assert engine["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert engine["mm_processor_kwargs"] == {"size": processor_size(3136, 3136)}
    assert engine["enable_lora"] and engine["max_lora_rank"] == 16 and seen["lora"].path == str(lora)
    # the CPU build: eager, a KV cache in GiB rather than a fraction of all RAM, the engine in this process
    assert engine["enforce_eager"] is True and engine["kv_cache_memory_bytes"] == 4 * 2 ** 30
    assert "gpu_memory_utilization" not in engine and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert engine["dtype"] == "auto"
    with_image, text_only = seen["prompts"][:2]
    width, height = with_image["multi_modal_data"]["image"].size      # resized as the transformers backend does
    assert width % 28 == 0 and height % 28 == 0 and width * height <= 3136
    assert "<|image_pad|>" in with_image["prompt"] and "multi_modal_data" not in text_only
    assert with_image["prompt"].endswith("<|im_start|>assistant\n")

    def platform_args(on_cpu, **opts):
        return make_backend("vllm", yes_model, **opts).platform_args(on_cpu)
    assert platform_args(False) == {"enforce_eager": False, "gpu_memory_utilization": 0.85}
    assert platform_args(False, gpu_memory_utilization=0.5, enforce_eager=True) == \
        {"enforce_eager": True, "gpu_memory_utilization": 0.5}
    assert platform_args(True, kv_cache_gib=0.5, enforce_eager=False) == \
        {"enforce_eager": False, "kv_cache_memory_bytes": 2 ** 29}
    assert platform_args(True, gpu_memory_utilization=0.3) == {"enforce_eager": True, "gpu_memory_utilization": 0.3}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")                 # the engine reads it itself
    assert platform_args(True) == {"enforce_eager": True}


def test_vllm_options_from_the_command_line(yes_model):
    from mllm.backends import add_backend_args, backend_from_args
    import argparse

    p = argparse.ArgumentParser()
    add_backend_args(p)
    args = p.parse_args(["--model_dir", yes_model, "--backend", "transformers", "--dtype", "bfloat16"])
    assert backend_from_args(args).dtype == torch.bfloat16 and args.batch_size == 16
    args = p.parse_args(["--model_dir", yes_model, "--backend", "transformers"])
    assert backend_from_args(args).dtype == torch.float32           # auto on CPU
    args = p.parse_args(["--model_dir", yes_model, "--backend", "vllm", "--no-enforce_eager", "--kv_cache_gib", "1"])
    assert args.enforce_eager is False and args.kv_cache_gib == 1 and args.gpu_memory_utilization is None


@pytest.mark.parametrize("config, bound", [({"r": 1}, 1), ({"r": 8}, 8), ({"r": 12}, 16), ({"r": 300}, 320),
                                           ({"r": 512}, 512), ({"r": 8, "rank_pattern": {"q_proj": 64}}, 64),
                                           ({"r": 4, "rank_pattern": {"v_proj": 2}}, 8)])
def test_lora_rank_bound(config, bound, tmp_path):
    """Defect 5: vLLM's accepted max_lora_rank values, and the adapter's per-module ranks."""
    from mllm.backends.vllm import lora_rank_bound
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert lora_rank_bound(str(tmp_path)) == bound


def test_lora_rank_above_vllms_limit_is_refused(tmp_path):
    from mllm.backends.vllm import lora_rank_bound
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "rank_pattern": {"q_proj": 1024}}))
    with pytest.raises(SystemExit, match="rank 1024 .* above 512"):
        lora_rank_bound(str(tmp_path))


def test_a_failed_engine_start_stops_at_once(yes_model, tmp_path, monkeypatch):
    """Defect 2: one start, not one per request, and the engine's own message with a hint."""
    error = ValueError("Available memory on node 0 (3.1/23.4 GiB) on startup is less than desired CPU memory "
                       "utilization (0.85, 19.9 GiB).")
    seen = install_stand_in_vllm(monkeypatch, start_error=error)
    backend = make_backend("vllm", yes_model, min_pixels=3136, max_pixels=3136)
    requests = [Request(f"Question {i}? Answer Yes or No.") for i in range(5)]
    with pytest.raises(MLLMLoadError) as raised:
        ask(backend, AnswerCache(str(tmp_path / "c.jsonl")), "yes_probability", requests, batch_size=2)
    message = str(raised.value)
    assert "ValueError: Available memory on node 0" in message and yes_model in message
    assert "--gpu_memory_utilization" in message and "--kv_cache_gib" in message
    assert seen["starts"] == 1
    with pytest.raises(MLLMLoadError):                               # a later call does not start it again
        backend.generate(requests[:1], max_new_tokens=4)
    assert seen["starts"] == 1
    assert not (tmp_path / "c.jsonl").exists() or (tmp_path / "c.jsonl").read_text() == ""


def test_thi_stops_at_once_when_the_mllm_cannot_load(run_dir, yes_model, tmp_path, monkeypatch):
    """Issue 16 item 9: no per-request retries, no "every request failed" after each one; the loader's message."""
    folder = weightless_model(yes_model, tmp_path)
    loads = []
    real_load = TransformersBackend._load
    monkeypatch.setattr(TransformersBackend, "_load", lambda self: loads.append(1) or real_load(self))
    with pytest.raises(MLLMLoadError) as raised:
        cli.main(["--run", run_dir, "--model_dir", folder, "--out", str(tmp_path / "thi"), "--limit", "6",
                  "--batch_size", "2", *SMALL_IMAGES])
    assert len(loads) == 1
    message = str(raised.value)
    assert message.startswith(f"transformers backend: the MLLM could not be loaded from {folder}: ")
    assert "safetensors" in message and "complete Qwen2-VL model folder" in message
    assert read_jsonl_or_empty(tmp_path / "thi" / "mllm_cache.jsonl") == []


def read_jsonl_or_empty(path):
    return read_jsonl(path) if os.path.exists(path) else []


def test_the_retrieval_side_holds_no_similarity_matrices_while_the_mllm_works(run_dir, yes_model, monkeypatch,
                                                                               tmp_path):
    """Defect 3: when the MLLM starts, only the headline matrix (on the CPU) is left, and on a GPU the retrieval
    model(s) are off it; they come back for the refined queries."""
    made = []
    real_init = RunSimilarity.__init__

    def keep(self, *a, **kw):
        real_init(self, *a, **kw)
        made.append(self)
    monkeypatch.setattr(RunSimilarity, "__init__", keep)
    at_load = []
    real_load = TransformersBackend._load

    def load(self):
        sims = made[-1]
        at_load.append((list(sims.rows), {p.device.type for m in sims.run.models for p in m.parameters()},
                        torch.cuda.memory_allocated() if torch.cuda.is_available() else 0))
        real_load(self)
    monkeypatch.setattr(TransformersBackend, "_load", load)
    device = ["--device", "cuda", "--mllm_device", "cpu"] if torch.cuda.is_available() else []
    result = cli.main(["--run", run_dir, "--model_dir", yes_model, "--out", str(tmp_path), "--limit", "3",
                       "--xi", "-1", "--max_new_tokens", "4", *device, *SMALL_IMAGES])
    rows, devices, allocated = at_load[0]
    assert rows == [made[-1].headline] and devices == {"cpu"} and allocated == 0
    assert all(s.refined for s in result["states"])
    expected_device = "cuda" if device else "cpu"
    assert {p.device.type for m in made[-1].run.models for p in m.parameters()} == {expected_device}


def test_a_rerun_says_how_many_answers_came_from_the_cache(run_dir, yes_model, tmp_path):
    argv = ["--run", run_dir, "--model_dir", yes_model, "--out", str(tmp_path), "--limit", "3", "--xi", "-1",
            "--max_new_tokens", "4", *SMALL_IMAGES]
    cli.main(argv)
    log = (tmp_path / "thi_log.txt").read_text()
    asked = len(AnswerCache(str(tmp_path / "mllm_cache.jsonl")).answers)
    assert f"MLLM answers: 0 from the cache ({tmp_path / 'mllm_cache.jsonl'}), {asked} asked\n" in log
    cli.main(argv)
    log = (tmp_path / "thi_log.txt").read_text()
    assert f"MLLM answers: {asked} from the cache ({tmp_path / 'mllm_cache.jsonl'}), 0 asked -- every answer was " \
           "cached, no model was loaded" in log


def test_processor_keeps_the_resized_image_so_both_backends_see_the_same_tokens(yes_model, tmp_path):
    """Defect 4: qwen_vl_utils rounds 256 x 96 at 224 x 224 up to 392 x 140 (above max_pixels); the processor,
    given processor_size, keeps it (70 tokens), where one limited to max_pixels would shrink it again."""
    from PIL import Image
    from transformers import AutoProcessor

    from mllm.backends.chat import prompts_and_images

    path = tmp_path / "wide.png"
    Image.new("RGB", (256, 96), (120, 30, 200)).save(path)
    processor = AutoProcessor.from_pretrained(yes_model)
    texts, images = prompts_and_images(processor, [Request("Describe.", str(path))], 50176, 50176)
    assert images[0].size == (392, 140)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def tokens(size):
        ids = processor(text=texts, images=images, return_tensors="pt", size=size)["input_ids"][0]
        return int((ids == pad).sum())
    assert tokens(processor_size(50176, 50176)) == 14 * 5 == 70
    assert tokens({"shortest_edge": 50176, "longest_edge": 50176}) != 70
    assert 50176 < processor_size(50176, 50176)["longest_edge"] < 28 * 28 * 200   # a budget of ~180 tokens


def test_rda_stops_at_once_when_the_mllm_cannot_load_and_a_rerun_counts_cached_answers(data_root, yes_model,
                                                                                      tmp_path, monkeypatch):
    """Issue 16 item 9 for RDA: the loader's message at the first request, one load attempt; a rerun logs how
    many answers came from the cache."""
    from rda import cli as rda_cli

    loads = []
    real_load = TransformersBackend._load
    monkeypatch.setattr(TransformersBackend, "_load", lambda self: loads.append(1) or real_load(self))
    argv = ["--dataset_name", "CUHK-PEDES", "--root_dir", data_root, "--limit", "2", "--m", "1",
            "--max_new_tokens", "8", "--batch_size", "1", *SMALL_IMAGES]
    folder = weightless_model(yes_model, tmp_path)
    with pytest.raises(MLLMLoadError, match=f"could not be loaded from {folder}: OSError"):
        rda_cli.main([*argv, "--model_dir", folder, "--out", str(tmp_path / "broken" / "rda.json")])
    assert len(loads) == 1

    out = tmp_path / "ok" / "rda.json"
    rda_cli.main([*argv, "--model_dir", yes_model, "--out", str(out)])
    asked = len(AnswerCache(str(tmp_path / "ok" / "rda.cache.jsonl")).answers)
    rda_cli.main([*argv, "--model_dir", yes_model, "--out", str(out)])
    log = (tmp_path / "ok" / "rda.log.txt").read_text()
    assert f"MLLM answers: 0 from the cache ({tmp_path / 'ok' / 'rda.cache.jsonl'}), {asked} asked\n" in log
    assert f"MLLM answers: {asked} from the cache ({tmp_path / 'ok' / 'rda.cache.jsonl'}), 0 asked -- every " \
           "answer was cached, no model was loaded" in log
