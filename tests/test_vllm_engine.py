"""THI through the real vLLM engine (its CPU build), beside the transformers backend on the same tiny Qwen2-VL and
the same inputs, in float32: P(yes) agrees to 1e-5 with and without a LoRA adapter made by `python -m thi.sft`,
both see the same prompt tokens (image tokens included), greedy answers are the same text, and the whole
`python -m thi --backend vllm` command gives the transformers run's answers.  Runs in the environment that
vllm_cpu/build_env.sh makes (the README's THI section; .ci/run does it); skipped where vLLM is not installed:

    VENV=$(bash vllm_cpu/build_env.sh | tail -1) && $VENV/bin/python -m pytest -q tests/test_vllm_engine.py
"""
import gc
import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm", reason="the real vLLM engine is not installed in this environment; "
                                   "VENV=$(bash vllm_cpu/build_env.sh | tail -1) builds the one this test runs in")

from tests.helpers import (SMALL_IMAGES, THI_DATA_SIZES, load_run_split_images, read_jsonl,  # noqa: E402
                           weightless_model)
from tests.tiny_qwen2vl import build_tiny_qwen2vl  # noqa: E402
from mllm.backends import MLLMLoadError, Request, make_backend  # noqa: E402
from mllm.backends.chat import prompts_and_images  # noqa: E402
from thi import cli, sft, sft_data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIXELS = dict(min_pixels=3136, max_pixels=3136)
# the CPU engine: in this process, 1 GiB of KV cache, threads left where the OS puts them (CI shares 2 cores)
ENGINE = dict(dtype="float32", kv_cache_gib=1, max_model_len=2048)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


DATA_SIZES = THI_DATA_SIZES   # conftest.py's data_root, trained into its run_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # not calibrated to one answer: P(yes) then varies with the input, so agreement means something
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("qwen")), seed=3)


@pytest.fixture(scope="module")
def lora_dir(run_dir, model_dir, tmp_path_factory):
    """An adapter trained by `python -m thi.sft` (its main) on SFT data from the run, with a learning rate that
    moves P(yes) visibly in a few steps."""
    data = str(tmp_path_factory.mktemp("sft_data"))
    sft_data.main(["--run", run_dir, "--out", data])
    out = str(tmp_path_factory.mktemp("lora"))
    sft.main(["--data", data, "--model_dir", model_dir, "--out", out, "--max_steps", "4", "--lr", "2e-2",
              "--batch_size", "4", "--grad_accum", "1", "--warmup_ratio", "0", "--precision", "fp32",
              "--device", "cpu", "--lora_rank", "8", *SMALL_IMAGES])
    return out


@pytest.fixture(scope="module")
def requests_(data_root):
    images = load_run_split_images(data_root)
    return [Request('Description: "A man in a red shirt and black trousers."\nDoes the description accurately '
                    'describe the person in the image? Answer Yes or No.', images[0]),
            Request('Description: "A woman with a blue coat."\nIs this her? Answer Yes or No.', images[len(images) // 2]),
            Request("Is the sky green? Answer Yes or No."),
            Request("Describe the person's clothing. Answer Yes or No.", images[-1])]


def prompt_tokens_transformers(backend, requests):
    inputs = backend._inputs(requests)
    return [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]


def prompt_tokens_vllm(backend, requests):
    from vllm import SamplingParams
    return [list(o.prompt_token_ids) for o in backend._run(requests, SamplingParams(max_tokens=1))]


def close(backend):
    """Drop an engine before the next one starts (the CPU build holds its KV cache in this process)."""
    backend._llm = None
    gc.collect()


def compare_backends(model_dir, requests, lora=None):
    hf = make_backend("transformers", model_dir, lora=lora, dtype="float32", **PIXELS)
    vl = make_backend("vllm", model_dir, lora=lora, **ENGINE, **PIXELS)
    try:
        p_hf, p_vl = hf.yes_probability(requests), vl.yes_probability(requests)
        assert p_vl == pytest.approx(p_hf, abs=1e-5, rel=0)
        tokens_hf, tokens_vl = prompt_tokens_transformers(hf, requests), prompt_tokens_vllm(vl, requests)
        assert tokens_vl == tokens_hf                              # every prompt token, image tokens included
        pad = hf._processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        _, images = prompts_and_images(hf._processor, requests, **PIXELS)
        expected = [0 if im is None else im.size[0] * im.size[1] // 28 ** 2 for im in images]   # 28 x 28 each
        assert [t.count(pad) for t in tokens_vl] == expected and min(expected[:2]) > 0
        text_hf, text_vl = hf.generate(requests[:2], max_new_tokens=6), vl.generate(requests[:2], max_new_tokens=6)
        assert text_vl == text_hf
        return p_hf
    finally:
        close(vl)


def test_yes_no_and_vqa_agree_with_transformers(model_dir, requests_):
    p = compare_backends(model_dir, requests_)
    assert max(p) - min(p) > 1e-3                                  # the inputs matter: not a constant


def test_with_a_lora_adapter_from_thi_sft(model_dir, lora_dir, requests_):
    with_lora = compare_backends(model_dir, requests_, lora=lora_dir)
    without = make_backend("transformers", model_dir, dtype="float32", **PIXELS).yes_probability(requests_)
    assert max(abs(a - b) for a, b in zip(with_lora, without)) > 1e-3    # the adapter is applied by both


def test_the_thi_command_with_vllm_gives_the_transformers_answers(run_dir, model_dir, lora_dir, tmp_path):
    common = ["--run", run_dir, "--model_dir", model_dir, "--lora", lora_dir, "--limit", "5", "--rounds", "2",
              "--xi", "-1", "--max_new_tokens", "8", "--dtype", "float32", *SMALL_IMAGES]
    cli.main([*common, "--out", str(tmp_path / "hf")])
    env = {**os.environ, "PYTHONPATH": REPO}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "thi", *common, "--out", str(tmp_path / "vllm"), "--backend", "vllm",
                           "--kv_cache_gib", "1", "--max_model_len", "2048"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"python -m thi --backend vllm: {time.time() - started:.0f} s")
    hf, vl = read_jsonl(tmp_path / "hf" / "queries.jsonl"), read_jsonl(tmp_path / "vllm" / "queries.jsonl")
    assert [q["query"] for q in vl] == [q["query"] for q in hf] == list(range(5))
    for a, b in zip(vl, hf):
        assert a["yes_prob"] == pytest.approx(b["yes_prob"], abs=1e-5, rel=0)
        assert (a["anchor"], a["vqa_text"], a["refined"], a["error"]) == (b["anchor"], b["vqa_text"], b["refined"],
                                                                           b["error"])
    # the adapted model says yes (P ~0.54) and xi = -1: every query is anchored at round 0, so its VQA and
    # aggregation went through the engine too
    assert all(q["anchor_round"] == 0 and q["vqa_text"] and q["refined"] for q in vl)
    metrics = json.loads((tmp_path / "vllm" / "metrics.json").read_text())
    assert metrics["model_id"].startswith("vllm|") and lora_dir in metrics["model_id"]
    assert "MLLM answers: 0 from the cache" in (tmp_path / "vllm" / "thi_log.txt").read_text()


def test_a_model_without_weights_stops_at_once_with_the_engines_message(model_dir, tmp_path, requests_):
    backend = make_backend("vllm", weightless_model(model_dir, tmp_path), **ENGINE, **PIXELS)
    started = time.time()
    with pytest.raises(MLLMLoadError) as raised:
        backend.yes_probability(requests_)
    message = str(raised.value)
    assert message.startswith("vllm backend: the MLLM could not be loaded from ") and "safetensors" in message
    assert "complete Qwen2-VL folder" in message
    with pytest.raises(MLLMLoadError):
        backend.generate(requests_, max_new_tokens=4)
    print(f"failed start reported in {time.time() - started:.0f} s")


def test_the_processed_logprobs_fallback_agrees_too(model_dir, requests_, monkeypatch):
    """Releases without SamplingParams.logprob_token_ids get the processed (answer-masked) log-probabilities
    instead: the same P(yes) on the real engine."""
    from vllm import SamplingParams

    fields = {k: v for k, v in SamplingParams.__annotations__.items() if k != "logprob_token_ids"}
    monkeypatch.setattr(SamplingParams, "__annotations__", fields)
    vl = make_backend("vllm", model_dir, **ENGINE, **PIXELS)
    try:
        p_vl = vl.yes_probability(requests_)
        assert vl.exact_logprobs is False
    finally:
        close(vl)
    p_hf = make_backend("transformers", model_dir, dtype="float32", **PIXELS).yes_probability(requests_)
    assert p_vl == pytest.approx(p_hf, abs=1e-5, rel=0)


def test_the_suites_vllm_part_rehearses_at_7b_width(tmp_path):
    """`python -m bench.suite --rehearse`'s vLLM part, which the main environment skips: Qwen2-VL-7B's widths at one
    layer, on vLLM's random weights, THI's real prompts.  It first failed here on a config without
    `architectures` (vLLM then takes the model for a pooling one and refuses generate): what the GPU run would
    have met first."""
    proc = subprocess.run([sys.executable, "-m", "bench.suite", "--rehearse", "--only", "thi_vllm",
                           "--vllm_python", sys.executable, "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    (part,) = json.loads((tmp_path / "suite.json").read_text())["parts"]
    assert part["status"] == "ok", part["detail"]
    assert part["max_rss_gib"] < 8
    model = part["bench"]["model"]
    assert model["params"] == pytest.approx(1.389e9, rel=0.01) and model["dtype"] == "bfloat16"
    assert model["text"] == {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 1,
                             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}
    assert model["vision"]["embed_dim"] == 1280 and model["vision"]["depth"] == 1
    yes_no, vqa = part["bench"]["rows"]
    assert (yes_no["backend"], yes_no["task"], vqa["task"]) == ("vllm", "yes/no (localisation)", "VQA answer")
    assert (yes_no["new_tokens"], vqa["new_tokens"]) == (1, 8)
    assert 100 < yes_no["prompt_tokens_padded"] < vqa["prompt_tokens_padded"] < 500     # 157 and 358 tokens
