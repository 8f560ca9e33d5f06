"""`python -m bench.suite`: every part runs (or says why not) into one JSON and one markdown table, a part past its
time limit is stopped with its process group while the next parts still run, and the real-size commands are
valid command lines of their scripts with the sizes the suite promises (they run only on a GPU)."""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench import suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_suite(out, *argv, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bench.suite", "--small", "--out", str(out), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
    with open(out / "suite.json") as f:
        data = json.load(f)
    return proc, data, (out / "suite.md").read_text()


def has_vllm():
    return suite.has_vllm(sys.executable)


@pytest.mark.slow
def test_small_suite_runs_every_part(tmp_path):
    start = time.monotonic()
    proc, data, table = run_suite(tmp_path)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = {p["name"]: p for p in data["parts"]}
    assert list(parts) == suite.NAMES and data["small"] is True and data["wall_s"] <= wall
    expected_skips = {"train_compiled": "torch.compile takes minutes on a CPU"}
    if not torch.cuda.is_available():
        expected_skips["cuda_tests"] = "needs CUDA"
    if not has_vllm():
        expected_skips["thi_vllm"] = "vllm not installed"
    for name, part in parts.items():
        if name in expected_skips:
            assert part["status"] == "skipped" and part["detail"].startswith(expected_skips[name]), part
            assert not part["figures"] and part["elapsed_s"] is None
            continue
        assert part["status"] == "ok", part
        assert part["figures"] and part["bench"]["rows"], part
        assert part["bench"].get("complete", True) is True
        assert 0 < part["elapsed_s"] <= part["limit_s"]
        assert (tmp_path / part["log"]).is_file() and (tmp_path / part["json"]).is_file()
        if name != "cuda_tests":
            assert part["bench"]["device"]["type"] == "cpu" and part["bench"]["args"]["small"] is True
    # the figures the table summarises, per script
    train = parts["train"]["figures"]
    assert [f["setting"] for f in train] == ["1 model, batch 4, eager", "2 models, batch 4, eager"]
    assert all(f["pairs/s per model"] > 0 and f["step ms"] > 0 for f in train) and train[1]["time / single"] > 0
    assert [f["setting"].split(":")[0] for f in parts["eval"]["figures"]] == ["CUHK-PEDES (scaled)",
                                                                              "ICFG-PEDES (scaled)"]
    assert all(f["total s"] > 0 for f in parts["eval"]["figures"])
    assert [f["setting"] for f in parts["division"]["figures"]] == ["1 model, 512 pairs, noise 0.2",
                                                                    "2 models, 512 pairs, noise 0.2"]
    assert parts["data"]["figures"][0]["pairs/s"] > 0
    thi = parts["thi"]["figures"]
    assert [f["setting"].split(",")[0] for f in thi] == ["yes/no (localisation)", "VQA answer"]
    assert all(f["per s"] > 0 for f in thi) and thi[1]["new tokens/s"] > 0
    # one markdown table: a header, then each part in the first column of its first line
    lines = table.strip().splitlines()
    assert lines[2] == "| part | setting | figures | status | s / limit |"
    first_cells = [line.split("|")[1].strip() for line in lines[4:]]
    assert [c for c in first_cells if c] == suite.NAMES
    assert sum(1 for line in lines[4:] if "eager" in line) == 2
    assert "skipped: vllm not installed" in table or has_vllm()


@pytest.mark.slow
def test_a_part_past_its_limit_is_stopped_and_the_next_still_runs(tmp_path):
    proc, data, table = run_suite(tmp_path, "--only", "train", "data", "--limit", "train=1")
    assert proc.returncode == 1                       # a part timed out
    train, data_part = data["parts"]
    assert train["name"] == "train" and train["status"] == "timed out"
    assert train["detail"].startswith("timed out after 1 s") and train["limit_s"] == 1
    assert 1 <= train["elapsed_s"] < 1 + suite.GRACE_S + 5 and not train["figures"]
    assert not suite.group_alive(train["pid"])        # nothing of its process group is left
    assert data_part["name"] == "data" and data_part["status"] == "ok" and data_part["figures"]
    assert "| train |  | - | timed out after 1 s | " in table


def test_stop_group_ends_the_grandchildren_too():
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    grandchild = int(proc.stdout.readline())
    assert suite.group_alive(proc.pid)
    start = time.monotonic()
    suite.stop_group(proc.pid, proc)
    took = time.monotonic() - start
    proc.wait(timeout=10)
    alive = suite.group_alive(proc.pid)
    if alive:
        os.kill(grandchild, signal.SIGKILL)
    assert not alive and took < suite.GRACE_S       # SIGTERM was enough: no wait for the SIGKILL


def test_partial_rows_survive_a_stopped_script(tmp_path, monkeypatch):
    """bench/train.py writes each row as it is measured: a run stopped at the second setting leaves the first."""
    from bench import train

    real, calls = train.bench_one, []

    def second_one_dies(args, batch_size, num_models):
        calls.append(num_models)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped")
        return real(args, batch_size, num_models)

    monkeypatch.setattr(train, "bench_one", second_one_dies)
    out = tmp_path / "train.json"
    threads = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            train.main(["--small", "--device", "cpu", "--threads", "1", "--json", str(out), "--models", "1", "2",
                        "--batch_size", "2", "--steps", "1", "--warmup", "1", *suite.TINY_SHAPES])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert data["complete"] is False and [r["models"] for r in data["rows"]] == [1]
    figs = suite.figures("train", data)
    assert figs[0]["setting"] == "1 model, batch 2, eager" and figs[0]["pairs/s per model"] > 0


def test_limits_and_budget():
    limits = suite.part_limits(False, None, {})
    assert sum(limits.values()) == suite.DEFAULT_BUDGET_S == 480          # 8 minutes on an H100
    doubled = suite.part_limits(False, 960, {"thi": 5})
    assert doubled["thi"] == 5 and doubled["train"] == 2 * limits["train"]
    assert set(suite.part_limits(True, None, {}).values()) == {suite.SMALL_LIMIT_S}
    assert suite.parse_limits(["eval=2.5"]) == {"eval": 2.5}
    for bad in ("nope=3", "eval", "eval=x", "eval=0"):
        with pytest.raises(SystemExit):
            suite.parse_limits([bad])


def test_without_cuda_the_real_suite_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "cuda_available", lambda: False)
    assert suite.main(["--out", str(tmp_path / "out")]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_real_size_commands_parse_with_the_promised_sizes():
    """What runs on a GPU: each command is a valid command line of its script, at the issue's sizes."""
    class Args:
        small, python, vllm_python = False, "python", ""

    parsed = {}
    for part in suite.PARTS:
        cmd = suite.command(part, Args, "OUT/x.json", "OUT/x.xml")
        if part.name == "cuda_tests":
            assert cmd[1:6] == ["-m", "pytest", "-q", "-m", "cuda"]
            assert {"tests/test_clip.py", "tests/test_solver.py"} <= set(cmd)
            continue
        assert cmd[2:5] == ["--full", "--device", "cuda"]
        module = importlib.import_module("bench." + os.path.basename(cmd[1])[:-3])
        args = module.build_parser().parse_args(cmd[2:])
        assert args.small is False and args.json == "OUT/x.json"
        parsed[part.name] = module.resolve_defaults(args)
    train, compiled = parsed["train"], parsed["train_compiled"]
    for a in (train, compiled):
        assert a.models == [1, 2] and a.batch_size == [64, 128] and a.img_size == [384, 128] and a.clip_arch == {}
    assert not train.compile and compiled.compile
    assert parsed["division"].num_pairs == 68126 and parsed["division"].models == [1, 2]
    from bench.eval import set_size
    ev = parsed["eval"]
    assert ev.sets == ["cuhk", "icfg"] and ev.max_pairs == 0
    assert set_size("cuhk", ev.max_pairs)[:2] == (3074, 6156)
    assert set_size("icfg", ev.max_pairs)[:2] == (19848, 19848)
    assert parsed["data"].num_workers == [8, 16] and parsed["data"].num_images == 2000
    for name, backend in (("thi", "transformers"), ("thi_vllm", "vllm")):
        a = parsed[name]
        assert a.arch == "7b" and a.backend == backend and a.batch_size == 64 and a.max_new_tokens == 128


def test_the_cuda_marker_selects_the_cuda_only_tests():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                           "no:cacheprovider", *suite.cuda_test_files()], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    collected = sorted(line for line in proc.stdout.splitlines() if "::" in line)
    assert collected == ["tests/test_clip.py::test_autocast_cuda[dtype0]",
                         "tests/test_clip.py::test_autocast_cuda[dtype1]",
                         "tests/test_solver.py::test_the_training_step_never_waits_for_the_gpu"]


def test_the_table_of_made_up_results():
    train = {"bench": "train", "rows": [{"models": 2, "batch_size": 64, "compile": True, "pairs_per_s": 812.5,
                                         "mfu": 0.4567, "peak_mem_gib": None}]}
    data = {"bench": "data", "rows": [{"num_workers": 8, "views": 1, "batch_size": 64, "pairs_per_s": 3500.0,
                                       "pairs_per_s_a": 1000.0, "pairs_per_s_c": 3500.0,
                                       "pairs_per_s_per_worker": 437.5}]}
    unknown = {"bench": "new", "rows": [{"name": "x", "seconds": 1.5, "flag": True}]}
    results = [suite.Result("train_compiled", "timed out", "timed out after 130 s (1 row(s) written before)", 130,
                            131.2, figures=suite.figures("train_compiled", train)),
               suite.Result("data", "ok", "", 30, 20.0, figures=suite.figures("data", data)),
               suite.Result("new", "failed", "exit status 1: a | b", 10, 3.0, figures=suite.figures("new", unknown)),
               suite.Result("thi_vllm", "skipped", "vllm not installed", 100)]
    lines = suite.markdown(results, "t").splitlines()[4:]
    assert lines[0] == ("| train_compiled | 2 models, batch 64, compiled | pairs/s per model 812, MFU 45.7% | "
                        "timed out after 130 s (1 row(s) written before) | 131.2 / 130 |")
    assert lines[1] == ("| data | 8 workers, 1 view(s), batch 64 | pairs/s 3,500, pairs/s (a) 1,000, pairs/s (c) 3,500 | "
                        "ok | 20.0 / 30 |")
    assert lines[2] == "| new |  | seconds 1.5 | failed: exit status 1: a \\| b | 3.0 / 10 |"
    assert lines[3] == "| thi_vllm |  | - | skipped: vllm not installed | - / 100 |"


# ---------------------------------------------------------------------------- the rehearsal (--rehearse)

# the options a rehearsal may cut: depth, counts, steps, and the dtype (bf16, as on the GPU); never a width, an
# image or text size, a vocabulary, a gallery or the division's pair count
REHEARSAL_CUTS = {"--clip_arch", "--precision", "--batch_size", "--steps", "--warmup", "--num_images", "--batches",
                  "--min_seconds", "--max_batches", "--aug_repeat", "--noisy_rate", "--encode_max", "--max_captions",
                  "--no-all_rows", "--text_layers", "--vision_depth", "--dtype", "--init", "--vqa_batches",
                  "--max_new_tokens"}


class RehearseArgs:
    small, rehearse, python, vllm_python = False, True, "python", ""


def test_rehearsal_commands_are_the_real_ones_cut_in_depth_and_count():
    """Each rehearsal command is the real-size command, on the CPU, with only depth / count / dtype options
    appended (argparse keeps the last value), and parses to the real widths and sizes."""
    parsed = {}
    for part in suite.PARTS:
        cmd = suite.command(part, RehearseArgs, "OUT/x.json", "OUT/x.xml")
        if part.name == "cuda_tests":
            assert part.rehearse == [] and cmd[1:6] == ["-m", "pytest", "-q", "-m", "cuda"]
            continue
        real = [part.full[0], "--full", "--device", "cpu", "--json", "OUT/x.json", *part.full[1:]]
        assert cmd[1:] == real + part.rehearse
        assert {a for a in part.rehearse if a.startswith("--")} <= REHEARSAL_CUTS, part.name
        module = importlib.import_module("bench." + os.path.basename(cmd[1])[:-3])
        parsed[part.name] = module.resolve_defaults(module.build_parser().parse_args(cmd[2:]))
    for name in ("train", "train_compiled", "eval"):
        a = parsed[name]
        assert a.img_size == [384, 128] and a.text_length == 77 and a.tse_dim == 1024 and a.precision == "bf16"
        assert a.clip_arch == {"vision_layers": 1, "text_layers": 1}          # widths, patch, vocabulary: ViT-B/16
    assert parsed["train"].models == [1, 2] and not parsed["train"].compile and parsed["train_compiled"].compile
    d = parsed["data"]
    assert d.num_workers == [8, 16] and d.batch_size == 64 and d.img_size == d.image_size == [384, 128]
    assert d.views == [1, 2] and d.pipelines == ["a", "c"] and d.text_length == 77
    assert parsed["division"].num_pairs == 68126 and parsed["division"].models == [1, 2]
    assert (parsed["division"].bge_dim, parsed["division"].tse_dim) == (512, 1024)
    from bench.eval import set_size
    ev = parsed["eval"]
    assert ev.sets == ["cuhk", "icfg"] and ev.max_pairs == 0 and ev.encode_max == 16
    assert set_size("icfg", ev.max_pairs, ev.max_captions) == (19848, 1416, 1000)     # the whole ICFG gallery
    assert set_size("cuhk", ev.max_pairs, ev.max_captions)[0] == 3074
    assert 1416 % ev.chunk_size == 19848 % ev.chunk_size                  # the real last rank_metrics chunk
    for name in ("thi", "thi_vllm"):
        a = parsed[name]
        assert a.arch == "7b" and a.image_size == 224 and a.dtype == "bfloat16"
        assert (a.text_layers, a.vision_depth) == (1, 1)
    assert suite.part_limits(False, None, {}, rehearse=True)["train_compiled"] == 900


def check_clip_summary(model: dict):
    """ViT-B/16 at 384x128 (patch 16: 24 x 8 + 1 tokens of width 768) and CLIP's text tower (77 x 512, 49,408
    tokens), one block each; BGE 512 and TSE 1024."""
    clip = model["clip"]
    assert clip["image_size"] == [384, 128] and clip["patch_size"] == clip["stride"] == 16
    assert (clip["vision_width"], clip["vision_heads"], clip["text_width"], clip["text_heads"]) == (768, 12, 512, 8)
    assert (clip["vocab_size"], clip["context_length"], clip["embed_dim"]) == (49408, 77, 512)
    assert model["shapes"] == {"patch_embedding": [768, 3, 16, 16], "vision_positions": [193, 768], "vision_blocks": 1,
                               "token_embedding": [49408, 512], "text_positions": [77, 512], "text_blocks": 1}
    assert model["embeddings"] == {"bge": 512, "tse": 1024}


@pytest.mark.slow
def test_real_size_rehearsal(tmp_path):
    """`python -m bench.suite --rehearse`: every part's real-size command runs on the CPU with one layer per tower
    and fewer items (train_compiled apart: its compilations take minutes, test_real_size_rehearsal_compiled), and
    the shapes that fix the GPU run's sizes are what the JSON reports.  ~2-2.5 min on 2 busy cores."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)                      # the suite's own default for a rehearsal (1)
    proc = subprocess.run([sys.executable, "-m", "bench.suite", "--rehearse", "--skip", "train_compiled",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "suite.json").read_text())
    assert data["rehearse"] is True and data["small"] is False
    parts = {p["name"]: p for p in data["parts"]}
    assert list(parts) == [n for n in suite.NAMES if n != "train_compiled"]
    for name, part in parts.items():
        if name == "thi_vllm" and not has_vllm():
            assert part["status"] == "skipped" and part["detail"] == "vllm not installed"
            continue
        assert part["status"] == "ok" and part["figures"] and part["bench"]["rows"], (name, part["detail"])
        assert part["bench"].get("complete", True) is True
        assert part["max_rss_gib"] is not None and part["max_rss_gib"] < 8, (name, part["max_rss_gib"])
        if name != "cuda_tests":
            bench = part["bench"]
            assert bench["device"]["type"] == "cpu" and bench["args"]["small"] is False
    cuda = parts["cuda_tests"]["bench"]["rows"][0]          # the same pytest command; without CUDA they skip
    assert cuda["tests"] == 3 and cuda["failed"] == cuda["error"] == 0
    assert cuda["skipped"] == (0 if torch.cuda.is_available() else 3)

    train = parts["train"]["bench"]
    check_clip_summary(train["model"])
    assert [(r["models"], r["batch_size"], r["img_size"]) for r in train["rows"]] == [(1, 2, "384x128"),
                                                                                       (2, 2, "384x128")]
    # one layer per tower: ~11.7 GFLOP per pair forward+backward (12 layers: the guide's 122)
    assert all(10 < r["gflop_per_pair"] < 14 and r["step_ms"] > 0 for r in train["rows"])

    data_rows = parts["data"]["bench"]["rows"]
    assert [(r["num_workers"], r["views"], r["batch_size"]) for r in data_rows] == [
        (8, 1, 64), (16, 1, 64), (8, 2, 64), (16, 2, 64)]                        # 384x128 batches: asserted there
    assert all(r["pairs_per_s_a"] > 0 and r["pairs_per_s_c"] > 0 and r["device_aug_ms"] > 0 for r in data_rows)

    division = parts["division"]["bench"]["rows"]
    assert [(r["models"], r["pairs"], r["signals"]) for r in division] == [(1, 68126, 2), (2, 68126, 4)]
    assert all(0 < r["kept"] < 68126 for r in division)

    ev = parts["eval"]["bench"]
    check_clip_summary(ev["model"])
    for row, gallery in zip(ev["rows"], (3074, 19848)):
        assert (row["images"], row["captions"], row["encoded_images"]) == (gallery, 1416, 16)
        assert row["shapes"] == {
            "image_features": {"bge": [gallery, 512], "tse": [gallery, 1024]},
            "text_features": {"bge": [1416, 512], "tse": [1416, 1024]},
            "similarity": {k: [1416, gallery] for k in ("BGE", "TSE", "BGE+TSE")}}
        assert 0 <= row["R1_random"] <= 100

    thi = parts["thi"]["bench"]
    model = thi["model"]
    assert model["dtype"] == "torch.bfloat16" and model["params"] == pytest.approx(1.389e9, rel=0.01)
    assert model["text"] == {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 1,
                             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}
    assert model["vision"] == {"embed_dim": 1280, "hidden_size": 3584, "depth": 1, "num_heads": 16,
                               "patch_size": 14, "spatial_merge_size": 2}
    assert model["shapes"] == {"embed_tokens": [152064, 3584], "lm_head": [152064, 3584], "text_layers": 1,
                               "mlp_up": [18944, 3584], "patch_embed": [1280, 3, 2, 14, 14], "vision_blocks": 1,
                               "merger_out": [3584, 5120]}
    # a 224x224 image: 16 x 16 patches of 14 pixels, merged 2 x 2 into 64 tokens
    assert model["image_tokens_per_request"] == 64 and model["pixel_values"] == [256, 3 * 2 * 14 * 14]
    yes_no, vqa = thi["rows"]
    assert yes_no["task"] == "yes/no (localisation)" and vqa["task"] == "VQA answer"
    assert yes_no["batch_size"] == vqa["batch_size"] == 2 and vqa["new_tokens"] == 8
    assert 100 < yes_no["prompt_tokens_padded"] < vqa["prompt_tokens_padded"] < 500     # 157 and 358 tokens
    table = (tmp_path / "suite.md").read_text()
    assert table.startswith("# bench.suite --rehearse on cpu")


@pytest.mark.slow
@pytest.mark.real_size
def test_real_size_rehearsal_compiled(tmp_path):
    """The compiled training part rehearsed: inductor compiles a one-layer ViT-B/16 at 384x128 for one model and
    for twins (2-3 min each on 2 CPU cores with a cold cache).  Run with -m real_size."""
    proc = subprocess.run([sys.executable, "-m", "bench.suite", "--rehearse", "--only", "train_compiled", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    (part,) = json.loads((tmp_path / "suite.json").read_text())["parts"]
    assert part["status"] == "ok" and part["max_rss_gib"] < 8
    check_clip_summary(part["bench"]["model"])
    rows = part["bench"]["rows"]
    assert [(r["models"], r["batch_size"], r["compile"]) for r in rows] == [(1, 2, True), (2, 2, True)]
    assert all(r["first_step_s"] > 0 and r["step_ms"] > 0 for r in rows)
