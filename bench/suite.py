"""One command measures everything: the CUDA-only tests and every benchmark, each part a subprocess with its own
time limit, every figure in one JSON file and one markdown table.

    python -m bench.suite                        # a CUDA machine: real sizes, ~8 min on an H100 (limits add up to it)
    python -m bench.suite --small                # any machine: tiny shapes on the CPU (what tests/ run)
    python -m bench.suite --rehearse             # any machine: the real-size commands on the CPU, depth cut to one
                                                 # layer and counts cut (real widths, image size, vocabulary,
                                                 # sequence lengths): everything but the GPU's speed is checked
    python -m bench.suite --only train eval      # some parts
    python -m bench.suite --limit thi=120        # another time limit for a part (seconds)
    python -m bench.suite --budget 900           # scale every default limit to add up to 900 s (a slower GPU)
    python -m bench.suite --list                 # the parts, their limits and commands

A part that runs past its limit is stopped (its whole process group: SIGTERM, then SIGKILL 5 s later), recorded as
"timed out after N s" with whatever rows the script had written by then (bench/train.py and bench/thi.py write
each row as it is measured), and the next part starts.  Parts that need what the machine lacks are recorded as
skipped with the reason: the CUDA tests and compiled training on a CPU run, vLLM where it is not installed.

Writes to --out (default bench/results/<timestamp>/): suite.json (every part: status, times, command, the
script's whole JSON and a summary of its figures), suite.md (one table), <part>.json and logs/<part>.log.
The exit status is 0 when every part is ok or skipped, 1 when one failed or timed out, 2 when the machine cannot
run the suite (no CUDA without --small).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from xml.etree import ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the tiny CLIP of the small runs (as tests/test_bench.py)
TINY_CLIP = ("{embed_dim: 32, vision_width: 32, vision_layers: 1, vision_heads: 1, text_width: 32, text_heads: 1, "
             "text_layers: 1}")
TINY_SHAPES = ["--img_size", "32", "16", "--text_length", "16", "--tse_dim", "32", "--clip_arch", TINY_CLIP]
GRACE_S = 5.0        # SIGTERM -> SIGKILL
SMALL_LIMIT_S = 180  # each part of a --small run (2 busy CPU cores take ~15-30 s a part)
REHEARSE_LIMIT_S = 300   # each part of a --rehearse run but train_compiled (2 busy CPU cores: 9-30 s a part)

# --rehearse: the real-size command of each part with these arguments appended (argparse keeps the last value of
# an option), on the CPU.  Only depths and counts are cut: one transformer layer per tower, a few items or steps;
# widths, image size (384x128, patch 16), vocabularies (49,408; 152,064), text length 77, THI's prompts and
# 224x224 images, the training batch's per-sample shapes, CUHK-PEDES's 68,126 division pairs and every gallery
# stay real.  bf16 autocast / bf16 weights as on the GPU (the CPU has bf16 kernels; it also halves the 7B-width
# model's memory: 1.39 B parameters, 2.8 GB).
ONE_LAYER_CLIP = ["--clip_arch", "{vision_layers: 1, text_layers: 1}", "--precision", "bf16"]
ONE_LAYER_QWEN = ["--text_layers", "1", "--vision_depth", "1", "--dtype", "bfloat16", "--init", "fast",
                  "--batch_size", "2", "--batches", "1", "--vqa_batches", "1", "--max_new_tokens", "8"]


@dataclass
class Part:
    name: str
    what: str                       # one line: what it measures, at which size
    limit_s: float                  # real size, on an H100; the defaults add up to DEFAULT_BUDGET_S
    full: list[str]                 # the script (or "pytest") and its real-size arguments
    small: list[str] | None         # tiny arguments; None: not run with --small (small_skip says why)
    small_skip: str = ""
    needs_cuda: bool = False        # skipped where torch sees no CUDA device (but run by --rehearse: see there)
    needs_vllm: bool = False        # skipped where the interpreter cannot find vllm
    rehearse: list[str] = field(default_factory=list)   # --rehearse: appended to `full` (the cuts), on the CPU
    rehearse_limit_s: float = REHEARSE_LIMIT_S


PARTS = [
    Part("cuda_tests", "the CUDA-only tests (pytest -m cuda)", 30, ["pytest"], ["pytest"], needs_cuda=True),
    # (--rehearse runs the same pytest command without CUDA: the tests skip themselves, the JUnit report is read)
    Part("train", "training step, ViT-B/16 384x128 BGE+TSE bf16: single and twin, batch 64 and 128, eager", 60,
         ["bench/train.py", "--models", "1", "2", "--batch_size", "64", "128", "--steps", "20", "--warmup", "5"],
         ["bench/train.py", "--models", "1", "2", "--batch_size", "4", "--steps", "1", "--warmup", "1", *TINY_SHAPES],
         rehearse=[*ONE_LAYER_CLIP, "--batch_size", "2", "--steps", "1", "--warmup", "1"]),
    Part("train_compiled", "the same four settings under torch.compile (each compiled afresh)", 100,
         ["bench/train.py", "--models", "1", "2", "--batch_size", "64", "128", "--compile", "--steps", "20",
          "--warmup", "5"],
         None, "torch.compile takes minutes on a CPU (inductor's C++ build; 70-110 s for the tiny model): real size "
               "only",
         # inductor's compilations on 2 CPU cores: ~2 min for both settings with an empty cache (1 model 80 s, twins
         # then 21 s): not in the default rehearsal test (pytest -m real_size runs it)
         rehearse=[*ONE_LAYER_CLIP, "--batch_size", "2", "--steps", "1", "--warmup", "1"], rehearse_limit_s=900),
    Part("data", "data pipeline, 2,000 JPEGs 384x128, batch 64, 8 and 16 workers, one view and twins: the "
                 "published-style float pipeline vs the image cache + device augmentation", 60,
         ["bench/data.py", "--num_workers", "8", "16", "--num_images", "2000", "--batch_size", "64",
          "--pipelines", "a", "c", "--views", "1", "2"],
         ["bench/data.py", "--num_images", "8", "--batch_size", "4", "--batches", "2", "--num_workers", "0",
          "--img_size", "64", "32", "--image_size", "64", "32"],
         rehearse=["--num_images", "128", "--batches", "1", "--warmup", "1", "--min_seconds", "0", "--max_batches",
                   "1", "--aug_repeat", "1"]),
    Part("division", "division over 68,126 pairs (CUHK-PEDES train): loss pass + GMMs + consensus, single and twin",
         30,
         ["bench/division.py", "--num_pairs", "68126", "--models", "1", "2", "--noisy_rate", "0.2", "0.5"],
         ["bench/division.py", "--num_pairs", "512", "--models", "1", "2", "--noisy_rate", "0.2", "--bge_dim", "32",
          "--tse_dim", "32"],
         rehearse=["--noisy_rate", "0.5", "--warmup", "0"]),
    Part("eval", "evaluation, ViT-B/16: CUHK-PEDES (3,074 x 6,156) and ICFG-PEDES (19,848 x 19,848) sized", 40,
         ["bench/eval.py", "--sets", "cuhk", "icfg", "--max_pairs", "0"],
         ["bench/eval.py", "--sets", "cuhk", "icfg", "--max_pairs", "40000", "--batch_size", "64", *TINY_SHAPES],
         # every gallery whole; 1,416 queries = a rank_metrics chunk of 1,024 and the last one of ICFG's 392
         rehearse=[*ONE_LAYER_CLIP, "--batch_size", "8", "--encode_max", "16", "--max_captions", "1416",
                   "--no-all_rows"]),
    Part("thi", "THI yes/no + VQA (128 tokens), Qwen2-VL-7B architecture (random bf16), transformers, batch 64", 60,
         ["bench/thi.py", "--arch", "7b", "--backend", "transformers", "--batch_size", "64"],
         ["bench/thi.py", "--arch", "tiny", "--backend", "transformers", "--batch_size", "2", "--batches", "1",
          "--vqa_batches", "1", "--max_new_tokens", "3", "--image_size", "56"],
         rehearse=ONE_LAYER_QWEN),
    Part("thi_vllm", "the same through vLLM (its random 'dummy' weights), batch 64", 100,
         ["bench/thi.py", "--arch", "7b", "--backend", "vllm", "--batch_size", "64"],
         ["bench/thi.py", "--arch", "tiny", "--backend", "vllm", "--batch_size", "2", "--batches", "1",
          "--vqa_batches", "1", "--max_new_tokens", "3", "--image_size", "56"],
         needs_vllm=True, rehearse=ONE_LAYER_QWEN),
]
DEFAULT_BUDGET_S = sum(p.limit_s for p in PARTS)       # 480 s: 8 minutes
NAMES = [p.name for p in PARTS]


@dataclass
class Result:
    name: str
    status: str = "ok"              # ok | failed | timed out | skipped
    detail: str = ""
    limit_s: float | None = None
    elapsed_s: float | None = None
    command: list[str] = field(default_factory=list)
    log: str = ""
    json: str = ""
    pid: int | None = None
    max_rss_gib: float | None = None  # the part's largest process (its own or a reaped child's peak RSS)
    bench: dict | None = None       # the script's own JSON (every row, full precision)
    figures: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------- options


def parse_limits(items: list[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in NAMES:
            raise SystemExit(f"--limit {item!r}: expected PART=SECONDS with PART one of {', '.join(NAMES)}")
        try:
            limits[name] = float(value)
        except ValueError:
            raise SystemExit(f"--limit {item!r}: {value!r} is not a number of seconds") from None
        if limits[name] <= 0:
            raise SystemExit(f"--limit {item!r}: the limit must be positive")
    return limits


def part_limits(small: bool, budget: float | None, overrides: dict[str, float],
                rehearse: bool = False) -> dict[str, float]:
    """Each part's limit: --limit, else (real size) its default scaled by --budget / 480 s, else (small) 180 s,
    else (rehearsal) its rehearse_limit_s."""
    scale = (budget / DEFAULT_BUDGET_S) if budget else 1.0
    return {p.name: overrides.get(p.name, p.rehearse_limit_s if rehearse else SMALL_LIMIT_S if small
                                  else p.limit_s * scale) for p in PARTS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="tiny shapes on the CPU (the test suite's run)")
    size.add_argument("--rehearse", action="store_true",
                      help="the real-size commands on the CPU with depth cut to one layer and fewer items / steps "
                           "(real widths, image size, vocabularies, sequence lengths): a shape error shows here, "
                           "before a GPU is lent; 1.5-2 min on 2 busy CPU cores without train_compiled (--skip "
                           "it), whose compilations add ~2 min with an empty inductor cache")
    p.add_argument("--out", default="", help="output folder (default bench/results/<timestamp>/)")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="PART", help=f"run these parts: {', '.join(NAMES)}")
    p.add_argument("--skip", nargs="+", choices=NAMES, default=[], metavar="PART", help="leave these parts out")
    p.add_argument("--limit", nargs="+", default=[], metavar="PART=SECONDS", help="a part's time limit")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds the real-size limits add up to (default {DEFAULT_BUDGET_S:.0f}); each scaled alike")
    p.add_argument("--python", default=sys.executable, help="the interpreter of every part")
    p.add_argument("--vllm_python", default="",
                   help="the interpreter of the vLLM part, e.g. a vLLM environment's bin/python (default --python)")
    p.add_argument("--list", action="store_true", help="print the parts, their limits and commands, and stop")
    return p


# ---------------------------------------------------------------------------- commands


def command(part: Part, args, json_path: str, junit_path: str) -> list[str]:
    python = (args.vllm_python or args.python) if part.needs_vllm else args.python
    if part.full == ["pytest"]:
        return [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={junit_path}",
                *cuda_test_files()]
    rehearse = getattr(args, "rehearse", False)
    argv = part.small if args.small else part.full + (part.rehearse if rehearse else [])
    size = (["--small", "--device", "cpu", "--threads", "1"] if args.small else
            ["--full", "--device", "cpu" if rehearse else "cuda"])
    return [python, argv[0], *size, "--json", json_path, *argv[1:]]


def cuda_test_files() -> list[str]:
    """The test files that mark a test with `cuda` (collecting only those: the whole tests/ folder imports much)."""
    folder = os.path.join(ROOT, "tests")
    found = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("test_") and name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                if "pytest.mark.cuda" in f.read():
                    found.append(f"tests/{name}")
    return found


def has_vllm(python: str) -> bool:
    """Whether `import vllm` can find the package in that interpreter (without importing it: that takes ~10 s)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------- running


def stop_group(pgid: int, leader: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, SIGKILL whatever is left GRACE_S later.  `leader` (the Popen whose pid is pgid)
    is reaped meanwhile: an unreaped child stays in its group as a zombie and would look alive."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not count; without /proc, killpg's answer)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def run_part(part: Part, args, limit: float, out: str) -> Result:
    json_path = os.path.join(out, f"{part.name}.json")
    junit_path = os.path.join(out, f"{part.name}.xml")
    log_path = os.path.join(out, "logs", f"{part.name}.log")
    res = Result(part.name, limit_s=limit, log=os.path.relpath(log_path, out))
    res.command = command(part, args, json_path, junit_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.small or getattr(args, "rehearse", False):
        env.setdefault("OMP_NUM_THREADS", "1")     # 2 threads on 2 busy cores ran the division 10x slower
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(res.command) + "\n")
        log.flush()
        start = time.monotonic()
        proc = subprocess.Popen(res.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)       # its own process group: stopped as a whole
        res.pid = proc.pid
        rc, res.max_rss_gib = wait_for(proc, start + limit)
        if rc is None:
            stop_group(proc.pid, proc)
            proc.wait()
        else:
            stop_group(proc.pid)                              # a child the script left behind
        res.elapsed_s = time.monotonic() - start
    if rc is None:
        res.status, res.detail = "timed out", f"timed out after {limit:g} s"
    elif rc != 0:
        res.status, res.detail = "failed", f"exit status {rc}: {last_line(log_path)}"
    if os.path.isfile(json_path):
        res.json = os.path.relpath(json_path, out)
        with open(json_path) as f:
            res.bench = json.load(f)
        if not res.bench.get("complete", True):
            res.detail += f" ({len(res.bench['rows'])} row(s) written before)"
    elif os.path.isfile(junit_path):
        res.bench = junit_summary(junit_path)
        res.json = os.path.relpath(junit_path, out)
    res.figures = figures(part.name, res.bench)
    if res.status == "ok" and not res.figures:
        res.status, res.detail = "failed", "exit status 0 but no figures (no JSON written)"
    return res


def wait_for(proc: subprocess.Popen, deadline: float) -> tuple[int | None, float | None]:
    """(exit status, peak RSS in GiB of its largest process) once proc ends, (None, None) at the deadline (time.
    monotonic()).  os.wait4 reaps it and gives its resource usage (ru_maxrss: KiB on Linux, the largest of the
    process and its reaped children); where there is no wait4, Popen.wait and no memory figure."""
    if not hasattr(os, "wait4"):
        try:
            return proc.wait(timeout=max(deadline - time.monotonic(), 0)), None
        except subprocess.TimeoutExpired:
            return None, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            scale = 2**30 if sys.platform == "darwin" else 2**20       # bytes on macOS
            return proc.returncode, usage.ru_maxrss / scale
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.05)


def last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def junit_summary(path: str) -> dict:
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests = []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0))})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"bench": "cuda_tests", "rows": [{"tests": len(tests), **counts}], "tests": tests, "complete": True}


# ---------------------------------------------------------------------------- figures


def fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if kind == "%":
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


# per script: the setting of a row, and the figures of the table as (key, label, kind); every figure is in the JSON.
# A key ending in * takes every key of the row with that prefix and a suffix without '_', which fills the label's {}.
SUMMARY = {
    "train": (lambda r: f"{r['models']} model{'s' if r['models'] > 1 else ''}, batch {r['batch_size']}, "
                        f"{'compiled' if r.get('compile') else 'eager'}",
              [("pairs_per_s", "pairs/s per model", ""), ("model_pairs_per_s", "model-pairs/s", ""),
               ("mfu", "MFU", "%"), ("peak_mem_gib", "peak GiB", ""), ("step_ms", "step ms", ""),
               ("first_step_s", "1st step s", ""), ("time_vs_single", "time / single", "")]),
    "data": (lambda r: f"{r['num_workers']} workers, {r.get('views', 1)} view(s), batch {r['batch_size']}",
             [("pairs_per_s", "pairs/s", ""), ("pairs_per_s_*", "pairs/s ({})", ""), ("speedup_vs_a", "vs (a)", ""),
              ("device_aug_ms", "device aug ms", ""), ("ms_per_batch", "ms / batch", "")]),
    "division": (lambda r: f"{r['models']} model{'s' if r['models'] > 1 else ''}, {r['pairs']:,} pairs, "
                           f"noise {r['noisy_rate']:g}",
                 [("loss_pass_s", "loss pass s", ""), ("gmm_consensus_s", "GMM+consensus s", ""),
                  ("total_s", "total s", ""), ("noise_recall", "noise recall %", "")]),
    "eval": (lambda r: f"{r['set']}: {r['images']:,} images x {r['captions']:,} captions",
             [("total_s", "total s", ""), ("image_s", "image enc s", ""), ("text_s", "text enc s", ""),
              ("similarity_s", "similarity s", ""), ("metrics_s", "metrics s", ""),
              ("metrics_all_rows_s", "metrics all rows s", ""), ("peak_mem_gib", "peak GiB", "")]),
    "thi": (lambda r: f"{r['task']}, {r.get('backend', 'transformers')}, {r['arch']}, batch {r['batch_size']}",
            [("per_s", "per s", ""), ("tokens_per_s", "new tokens/s", ""), ("batch_s", "s / batch", ""),
             ("prompt_tokens_padded", "prompt tokens", ""), ("peak_mem_gib", "peak GiB", "")]),
    "cuda_tests": (lambda r: f"{r['tests']} tests",
                   [("passed", "passed", ""), ("failed", "failed", ""), ("error", "errors", ""),
                    ("skipped", "skipped", "")]),
}


def figures(part: str, bench: dict | None) -> list[dict]:
    """One dict per row: {"setting", label: value...} (values as measured; formatting is the table's)."""
    if not bench or not bench.get("rows"):
        return []
    setting, keys = SUMMARY.get(bench.get("bench", part), (None, []))
    out = []
    for r in bench["rows"]:
        try:
            name = setting(r) if setting else ""
        except (KeyError, TypeError, ValueError):
            name = ""
        picked = {}
        for k, label, kind in keys:
            if k.endswith("*"):
                picked.update({label.format(key[len(k) - 1:]): (v, kind) for key, v in r.items()
                               if key.startswith(k[:-1]) and "_" not in key[len(k) - 1:] and v is not None})
            elif r.get(k) is not None:
                picked[label] = (r[k], kind)
        if not picked:   # a row of a kind this table does not know: its numbers, as they are
            picked = {k: (v, "") for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append({"setting": name, **{label: v for label, (v, _) in picked.items()},
                    "_kinds": {label: kind for label, (_, kind) in picked.items() if kind}})
    return out


def status_text(res: Result) -> str:
    """ok, "timed out after 60 s", "skipped: vllm not installed", "failed: exit status 1: ..." """
    if not res.detail or res.detail.startswith(res.status):
        return res.detail or res.status
    return f"{res.status}: {res.detail}"


def markdown(results: list[Result], title: str) -> str:
    lines = [f"# {title}", "", "| part | setting | figures | status | s / limit |", "|---|---|---|---|---|"]
    for res in results:
        status = status_text(res).replace("|", "\\|")
        secs = f"{res.elapsed_s:.1f} / {res.limit_s:g}" if res.elapsed_s is not None else f"- / {res.limit_s:g}"
        rows = res.figures or [{"setting": "", "_kinds": {}}]
        for i, fig in enumerate(rows):
            kinds = fig.get("_kinds", {})
            cells = ", ".join(f"{k} {fmt(v, kinds.get(k, ''))}" for k, v in fig.items()
                              if k not in ("setting", "_kinds"))
            lines.append(f"| {res.name if i == 0 else ''} | {fig['setting']} | {cells or '-'} | "
                         f"{status if i == 0 else ''} | {secs if i == 0 else ''} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    limits = part_limits(args.small, args.budget, parse_limits(args.limit), args.rehearse)
    chosen = [p for p in PARTS if (not args.only or p.name in args.only) and p.name not in args.skip]
    if args.list:
        for p in chosen:
            if args.small and p.small is None:
                how = "skipped with --small: " + p.small_skip
            else:
                how = shlex.join(command(p, args, f"OUT/{p.name}.json", f"OUT/{p.name}.xml")[1:])
            print(f"{p.name:15s} {limits[p.name]:5.0f} s  {p.what}\n{'':23s}{how}")
        print(f"total {sum(limits[p.name] for p in chosen):.0f} s")
        return 0
    cuda = cuda_available()
    if not cuda and not args.small and not args.rehearse:
        print("bench.suite: no CUDA device on this machine. The real-size suite needs a GPU (about 8 minutes on an "
              "H100); here, `python -m bench.suite --rehearse` runs every part's real-size command on the CPU with "
              "depth cut to one layer, and `--small` every part at tiny size.", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out or os.path.join(
        ROOT, "bench", "results", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t0 = time.monotonic()
    results = []
    for part in chosen:
        limit = limits[part.name]
        skip = ""
        if args.small and part.small is None:
            skip = part.small_skip
        elif part.needs_cuda and not cuda and not args.rehearse:    # rehearsal: the tests skip themselves
            skip = "needs CUDA"
        elif part.full == ["pytest"] and not cuda_test_files():
            skip = "no test is marked cuda"
        elif part.needs_vllm and not has_vllm(args.vllm_python or args.python):
            skip = "vllm not installed"
        if skip:
            res = Result(part.name, status="skipped", detail=skip, limit_s=limit)
        else:
            print(f"bench.suite: {part.name} (limit {limit:g} s) ...", flush=True)
            res = run_part(part, args, limit, out)
        took = f"{res.elapsed_s:.1f} s" if res.elapsed_s is not None else ""
        if res.max_rss_gib is not None:
            took += f", peak RSS {res.max_rss_gib:.2f} GiB"
        print(f"bench.suite: {part.name}: {status_text(res)}{f' ({took})' if took else ''}", flush=True)
        results.append(res)
    wall = time.monotonic() - t0
    device = next((r.bench["device"] for r in results if r.bench and "device" in r.bench), None)
    device_name = device["name"] if device else ("CUDA" if cuda and not (args.small or args.rehearse) else "cpu")
    budget = sum(r.limit_s for r in results if r.status != "skipped")
    mode = " --small" if args.small else " --rehearse" if args.rehearse else ""
    title = (f"bench.suite{mode} on {device_name}, {started}: "
             f"{wall:.0f} s wall; the parts run had limits adding up to {budget:g} s")
    payload = {"suite": "bench.suite", "small": args.small, "rehearse": args.rehearse, "started": started,
               "wall_s": wall,
               "budget_s": budget, "device": device,
               "parts": [{k: v for k, v in vars(r).items()} for r in results]}
    for part in payload["parts"]:
        part["figures"] = [{k: v for k, v in f.items() if k != "_kinds"} for f in part["figures"]]
    with open(os.path.join(out, "suite.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    table = markdown(results, title)
    with open(os.path.join(out, "suite.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"bench.suite: wrote {os.path.join(out, 'suite.json')} and suite.md ({wall:.0f} s)")
    return 1 if any(r.status in ("failed", "timed out") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
