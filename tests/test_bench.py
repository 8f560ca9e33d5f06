"""The benchmark scripts run with their smallest CPU settings and write JSON with the expected keys.

Each script's `main(argv)` is called in-process (one torch import for all); one script also runs as a command,
as people run them.  Tiny shapes through each script's options keep this well under a minute on two cores.
"""
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow      # each benchmark script end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_bench(name, tmp_path, *argv):
    out = tmp_path / f"{name}.json"
    module = importlib.import_module(f"bench.{name}")
    payload = module.main(["--small", "--device", "cpu", "--threads", "1", "--json", str(out), *argv])
    with open(out) as f:
        data = json.load(f)
    assert data["bench"] == name and data["rows"], data
    assert data["device"]["type"] == "cpu" and data["args"]["small"] is True
    assert payload["rows"] == data["rows"] or len(payload["rows"]) == len(data["rows"])
    return data


def test_train(tmp_path):
    data = run_bench("train", tmp_path, "--batch_size", "4", "--models", "1", "2", "--steps", "1", "--warmup", "1",
                     "--img_size", "32", "16", "--text_length", "16", "--tse_dim", "32",
                     "--clip_arch", "{embed_dim: 32, vision_width: 32, vision_layers: 1, vision_heads: 1, "
                                    "text_width: 32, text_heads: 1, text_layers: 1, vocab_size: 1000}")
    rows = data["rows"]
    assert [(r["models"], r["batch_size"]) for r in rows] == [(1, 4), (2, 4)]
    for r in rows:
        for key in ("step_ms", "pairs_per_s", "model_pairs_per_s", "gflop_per_step", "gflop_per_pair", "tflops",
                    "mfu", "peak_mem_gib", "time_vs_single"):
            assert key in r
        assert r["step_ms"] > 0 and r["gflop_per_step"] > 0 and r["mfu"] is None   # MFU is n/a on CPU
    # twins cost twice the FLOPs of one model per step, the same per (model, pair)
    assert rows[1]["gflop_per_step"] == pytest.approx(2 * rows[0]["gflop_per_step"], rel=1e-6)
    assert rows[0]["time_vs_single"] == 1.0


def test_eval(tmp_path):
    data = run_bench("eval", tmp_path, "--sets", "cuhk", "icfg", "--max_pairs", "40000", "--batch_size", "64",
                     "--img_size", "32", "16", "--text_length", "16", "--tse_dim", "32",
                     "--clip_arch", "{embed_dim: 32, vision_width: 32, vision_layers: 1, vision_heads: 1, "
                                    "text_width: 32, text_heads: 1, text_layers: 1}")
    rows = data["rows"]
    assert [r["set"] for r in rows] == ["CUHK-PEDES (scaled)", "ICFG-PEDES (scaled)"]
    for r in rows:
        for key in ("images", "captions", "image_s", "text_s", "similarity_s", "metrics_s", "metrics_all_rows_s",
                    "total_s", "fused_row"):
            assert key in r
        assert r["images"] * r["captions"] <= 40000 and r["fused_row"] == "BGE+TSE"
        assert r["total_s"] == pytest.approx(r["image_s"] + r["text_s"] + r["similarity_s"] + r["metrics_s"])
    assert rows[0]["captions"] == pytest.approx(2 * rows[0]["images"], abs=2)   # CUHK's 2 captions per image


def test_eval_set_scaling():
    from bench.eval import SETS, set_size

    assert set_size("cuhk", 0) == SETS["cuhk"] and set_size("icfg", 25e6)[:2] == (5000, 5000)


def test_division(tmp_path):
    data = run_bench("division", tmp_path, "--num_pairs", "512", "--models", "1", "2", "--noisy_rate", "0.2",
                     "--bge_dim", "32", "--tse_dim", "32")
    rows = data["rows"]
    assert [(r["models"], r["signals"]) for r in rows] == [(1, 2), (2, 4)]
    for r in rows:
        for key in ("loss_pass_s", "gmm_consensus_s", "gmm_per_signal_s", "total_s", "kept", "noise_recall"):
            assert key in r
        assert r["pairs"] == 512 and 0 < r["kept"] < 512


def test_data(tmp_path):
    data = run_bench("data", tmp_path, "--num_images", "8", "--batch_size", "4", "--batches", "2",
                     "--num_workers", "0", "--img_size", "64", "32", "--image_size", "64", "32", "--twin")
    (row,) = data["rows"]
    assert row["num_workers"] == 0 and row["views"] == 2 and row["pairs_per_s"] > 0
    assert data["train_pairs"] == 16 and set(data["stages_ms_per_pair"]) == {
        "decode_ms", "image_transform_ms", "tokenize_ms", "txt_aug_ms"}


def test_thi(tmp_path):
    pytest.importorskip("qwen_vl_utils")
    data = run_bench("thi", tmp_path, "--arch", "tiny", "--batch_size", "2", "--batches", "1", "--vqa_batches", "1",
                     "--max_new_tokens", "3", "--image_size", "56")
    rows = data["rows"]
    assert [r["task"] for r in rows] == ["yes/no (localisation)", "VQA answer"]
    for r in rows:
        assert r["per_s"] > 0 and r["prompt_tokens_padded"] > 0 and r["batch_size"] == 2
    assert rows[1]["new_tokens"] == 3


def test_qwen2vl_7b_architecture():
    """--arch 7b is Qwen2-VL-7B's size: 8.29 B parameters (counted on the meta device: no memory, no init)."""
    from transformers import Qwen2VLForConditionalGeneration

    from bench.thi import qwen2vl_7b_config

    cfg = qwen2vl_7b_config(dict(bos=1, eos=2, pad=1, image=3, video=4, vision_start=5, vision_end=6))
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration._from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(8.29e9, rel=0.01)


def test_peak_table():
    from bench.common import lookup_peak

    assert lookup_peak("NVIDIA H100 80GB HBM3") == 989
    assert lookup_peak("NVIDIA H100 PCIe") == 756
    assert lookup_peak("NVIDIA H200") == 989
    assert lookup_peak("NVIDIA A100-SXM4-80GB") == 312
    assert lookup_peak("NVIDIA L40S") == 362
    assert lookup_peak("NVIDIA GeForce RTX 4090") == 165
    assert lookup_peak("NVIDIA GeForce GTX 1080") is None


def test_runs_as_a_command(tmp_path):
    out = tmp_path / "division.json"
    proc = subprocess.run([sys.executable, "bench/division.py", "--small", "--device", "cpu", "--threads", "1",
                           "--num_pairs", "256", "--models", "1", "--noisy_rate", "0.5", "--bge_dim", "16",
                           "--tse_dim", "16", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "loss pass s" in proc.stdout and json.loads(out.read_text())["rows"][0]["pairs"] == 256
