"""torchrun on CPU (gloo): two processes x batch 4 train exactly like one process x batch 8; a process that dies
stops the others with one line and a checkpoint that resumes exactly."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

import main as train_main
import test as test_main
from tests.helpers import read_metrics, same_run, tiny_args

pytestmark = pytest.mark.slow      # torchrun: two training processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_global_batch(data_root, tmp_path):
    # bge only: BatchNorm in the TSE head would see per-process statistics on CPU (SyncBatchNorm is CUDA-only).
    # No division: at random initialisation every pair's loss is nearly the same, so the last bits of a
    # batched matmul (batch 4 vs 8) can move a pair across the mixture's 0.5 boundary.
    common = ["--embeddings", "bge", "--img_aug", "false", "--txt_aug", "false", "--num_epoch", "2",
              "--loss_names", "TAL+ID", "--division", "false", "--device", "cpu"]
    single = tmp_path / "single"
    train_main.main(tiny_args(data_root, single, *common, "--batch_size", "8"))

    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), os.path.join(REPO, "main.py"), *tiny_args(data_root, multi, *common, "--batch_size", "4")]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = (json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) for run in (single, multi))
    for key in ("loss/bge_TAL", "loss/bge_ID", "R1", "R5", "mAP", "mINP"):
        assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a[key], b[key])
    wa, wb = (torch.load(run / "last.pth", weights_only=False)["models"][0] for run in (single, multi))
    for k in wa:
        x, y = wa[k], wb[k]
        if k.endswith("in_proj_bias"):
            # the key bias has no true gradient (softmax ignores a constant per query); Adam turns its
            # rounding-level gradient into lr-sized steps of arbitrary sign, so only q and v are comparable
            d = len(x) // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=k)


def torchrun(args, **faults):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, **faults}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(REPO, "main.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def logged_rows(run, epoch):
    """The rows of epoch `epoch`'s evaluation table in train_log.txt: {row: [R1, R5, R10, mAP, mINP]}."""
    lines = (run / "train_log.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip("| ") == f"epoch {epoch}")
    table = [line.split("|")[1:-1] for line in lines[start + 1:start + 9] if line.startswith("|")]
    return {cells[0].strip(): [float(c) for c in cells[1:6]] for cells in table if cells[1].strip()[:1].isdigit()}


def test_a_rank_killed_mid_epoch_stops_the_others_with_one_line_and_resume_equals_the_uninterrupted_run(
        data_root, tmp_path):
    """torchrun on CPU, one process killed -9 in the middle of an epoch (the TSE head's BatchNorm and the division
    on).  The other process stops with one line of ours (which rank, where, how to continue), the collective's
    fallout in the log file and not on the console.  Rank 1 killed in epoch 1: rank 0, the writer, saves the
    epoch's finished steps.  Rank 0 killed in epoch 2 of the resumed run: rank 1 says so, and epoch 1's checkpoint
    is where it continues, its division reading the BatchNorm statistics as saved.  --resume then ends where the
    uninterrupted run ends."""
    args = lambda run: tiny_args(data_root, run, "--batch_size", "4", "--num_workers", "1",   # noqa: E731
                                 "--device", "cpu")
    full, run = tmp_path / "full", tmp_path / "run"
    done = torchrun(args(full))
    assert done.returncode == 0, done.stderr[-3000:]
    # what a torchrun run logs is what test.py finds in its checkpoint (each process's statistics were its own)
    results = test_main.main(["--run", str(full), "--checkpoint", "last"])["last"]
    for row, values in logged_rows(full, 2).items():
        assert values == pytest.approx([results[row][k] for k in ("R1", "R5", "R10", "mAP", "mINP")], abs=0.011), row

    for killed, epoch, saved in ((1, 1, f"{run / 'last.pth'}"), (0, 2, f"{run / 'last.pth'} (epoch 1)")):
        done = torchrun(args(run) if killed else ["--resume", str(run)], REID_CRASH_AT=f"rank{killed}:epoch{epoch}:mid")
        assert done.returncode != 0
        console = done.stdout + done.stderr
        ours = [line for line in console.splitlines() if "continue with" in line]
        assert len(ours) == 1 and re.search(
            rf"stopped: rank {killed} of 2 \(pid \d+\) died at epoch {epoch}, step 3 of 6: checkpoint "
            rf"{re.escape(saved)}; continue with: torchrun --nproc_per_node 2 main.py --resume {re.escape(str(run))}$",
            ours[0]), console
        # torchrun's own report of the kill stays; no traceback of ours (gloo, DataLoader workers) reaches the console
        assert "RuntimeError" not in console and "[rank" not in console, console[-4000:]
        assert console.count("Traceback") <= 1 and "ChildFailedError" in console
        checkpoint = torch.load(run / "last.pth", weights_only=True)
        if killed == 1:
            assert (checkpoint["epoch"], checkpoint["partial"]["epoch"], checkpoint["partial"]["steps"]) == (0, 1, 3)
            assert "Connection" in (run / "train_log.txt").read_text()      # the collective's error, kept there
        else:
            assert checkpoint["epoch"] == 1 and "partial" not in checkpoint
    done = torchrun(["--resume", str(run)])
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(run, full)
