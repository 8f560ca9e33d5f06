"""torchrun on CPU (gloo): two processes x batch 4 train exactly like one process x batch 8."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import main as train_main
from tests.helpers import tiny_args

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
