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
