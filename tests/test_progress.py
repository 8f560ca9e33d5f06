"""Logs read well when redirected: commands run with `> log 2>&1` leave no progress-bar redraws (carriage
returns, escape codes) in the file, while a terminal still gets its bars."""
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

import main as train_main
from tests.helpers import SMALL_IMAGES, tiny_args
from tests.tiny_qwen2vl import build_tiny_qwen2vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def redirected(tmp_path, *args, timeout=600) -> tuple[int, str]:
    """(exit code, text) of `python ARGS > log 2>&1` run from the repository root."""
    log = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}   # as a user's shell has it
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                            timeout=timeout).returncode
    return rc, log.read_bytes().decode("utf-8", errors="replace")   # read_text() would turn \r into \n


def assert_no_bar_output(text: str) -> None:
    assert "\r" not in text, f"carriage returns in the log:\n{text[-2000:]!r}"
    assert "\x1b" not in text, f"escape codes in the log:\n{text[-2000:]!r}"
    assert "it/s]" not in text and "s/it]" not in text


DATA_SIZES = dict(num_train_ids=6, num_test_ids=4, num_val_ids=2, seed=2)   # data_root's (conftest.py): 24 images


def test_bar_is_drawn_on_a_terminal_and_not_into_a_file(tmp_path):
    code = "from utils.progress import progress\nfor _ in progress(range(3), desc='counting'):\n    pass\n"
    rc, text = redirected(tmp_path, "-c", code)
    assert rc == 0 and text == ""
    master, slave = pty.openpty()   # stderr on a terminal: the bar is wanted there
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a new pty is 0 columns wide
    try:
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave, timeout=120,
                       check=True)
        os.close(slave)
        shown = os.read(master, 1 << 16)
    finally:
        os.close(master)
    assert b"counting" in shown and b"3/3" in shown


@pytest.mark.slow
@pytest.mark.parametrize("division", ["false", "true"])
def test_training_log_has_one_line_per_epoch(data_root, tmp_path, division):
    run = tmp_path / "run"
    rc, text = redirected(tmp_path, "main.py", *tiny_args(data_root, run, "--num_epoch", "3", "--division", division))
    assert rc == 0, text[-3000:]
    assert_no_bar_output(text)
    assert re.findall(r"INFO: (epoch \d+): lr ", text) == ["epoch 1", "epoch 2", "epoch 3"]


def test_dataset_check_with_decode(data_root, tmp_path):
    rc, text = redirected(tmp_path, "-m", "datasets.check", "--dataset_name", "CUHK-PEDES", "--root_dir", data_root,
                          "--decode")
    assert rc == 0 and "opened 24 images" in text and "OK" in text   # the images were decoded, silently
    assert_no_bar_output(text)


@pytest.mark.slow
def test_thi_log(data_root, tmp_path):
    run_dir = str(tmp_path / "run")
    train_main.main(tiny_args(data_root, run_dir, "--num_epoch", "1", "--division", "false"))
    model = build_tiny_qwen2vl(str(tmp_path / "qwen"), seed=0, favour="Yes")
    rc, text = redirected(tmp_path, "-m", "thi", "--run", run_dir, "--model_dir", model, "--xi", "-1",
                          "--limit", "3", "--rounds", "2", "--max_new_tokens", "4", "--batch_size", "2",
                          *SMALL_IMAGES)
    assert rc == 0, text[-3000:]
    assert_no_bar_output(text)   # neither our MLLM bars nor transformers' 'Loading weights'
    assert "Loading weights" not in text and "THI round 2" in text
    assert json.loads((tmp_path / "run" / "thi" / "metrics.json").read_text())["queries"] == 3
