"""No file a user loads runs code, and training survives preemption, NaNs, a full disk, damaged caches and read-only
folders (README, Safety).  Every path goes through the real entry points (main.py, test.py, retrieve.py,
python -m thi, thi.sft's checkpoint reader, the caches' readers); the faults are real (a signal sent to a training
process, a tmpfs that fills up, a read-only bind mount) where this machine allows, else injected at the same
point of the same code path (utils/faults.py)."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import main as train_main
import retrieve as retrieve_main
import test as test_main
from tests.helpers import ROOT, THI_CLIP, read_metrics, same_run, tiny_args
from utils.run_folder import RunFolder, RunFolderError

DATA_SIZES = dict(num_train_ids=6, num_test_ids=4, num_val_ids=2, seed=4)   # 24 pairs: 3 steps of 8 per epoch


class Payload:
    """A pickle that creates `marker` when unpickled: what a malicious checkpoint does with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker, **entries):
    torch.save({**entries, "payload": Payload(marker)}, path)
    return str(path)


def write_pickle(path, marker):
    """The same payload as a bare pickle, in place of a file of another format (.npy, JSON, JSON lines)."""
    with open(path, "wb") as f:
        pickle.dump(Payload(marker), f)
    return str(path)


def eval_config(path, data_root):
    path.write_text(yaml.safe_dump({"dataset_name": "CUHK-PEDES", "root_dir": data_root, "pretrain_choice": "random",
                                    "img_size": [64, 32], "text_length": 40, "tse_dim": 48, "num_workers": 0,
                                    "test_batch_size": 32, "device": "cpu"}))
    return str(path)


def copy_run(run_dir, dest):
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns(".lock", "thi"))
    return str(dest)


def refused(excinfo_or_text, path) -> None:
    text = str(getattr(excinfo_or_text, "value", excinfo_or_text))
    assert str(path) in text and "of type io.open" in text and "--trust_checkpoint" in text, text


# ---- 1. nothing a user loads runs code --------------------------------------------------------------------------

def test_a_malicious_pickle_runs_on_no_path_that_reads_a_file(run_dir, data_root, tmp_path, capsys, caplog):
    marker = tmp_path / "PWNED"
    evil = write_malicious(tmp_path / "evil.pth", marker, model={"visual.conv1.weight": torch.zeros(1)},
                           models=[{}], epoch=1)
    config = eval_config(tmp_path / "eval.yaml", data_root)

    # published-style weights for test.py --checkpoint
    with pytest.raises(SystemExit) as e:
        test_main.main(["--checkpoint", evil, "--config", config])
    refused(e, evil)
    # a CLIP to start from: --pretrain_choice PATH and ICL's --pretrain_path
    for extra in (["--pretrain_choice", evil], ["--pretrain_path", evil, "--loss_names", "TAL+pre"]):
        with pytest.raises(SystemExit):
            train_main.main(tiny_args(data_root, tmp_path / "start", "--num_epoch", "1", *extra))
        refused(capsys.readouterr().out, evil)
        assert not (tmp_path / "start").exists()
    # a run folder whose checkpoints were swapped: --resume (which must not fall back to starting over),
    # test.py --run, retrieve.py --run
    swapped = copy_run(run_dir, tmp_path / "swapped")
    rows = read_metrics(swapped)
    for name in ("best.pth", "last.pth"):
        write_malicious(os.path.join(swapped, name), marker, models=[{}], epoch=1)
    with pytest.raises(SystemExit):
        train_main.main(["--resume", swapped])
    refused(capsys.readouterr().out, os.path.join(swapped, "last.pth"))
    assert read_metrics(swapped) == rows
    with pytest.raises(SystemExit) as e:
        test_main.main(["--run", swapped])
    refused(e, os.path.join(swapped, "best.pth"))
    images = tmp_path / "photos"
    images.mkdir()
    from tests.helpers import load_run_split_images
    for p in load_run_split_images(data_root)[:3]:
        shutil.copy(p, images)
    with pytest.raises(SystemExit) as e:
        retrieve_main.main(["--run", swapped, "--images", str(images), "--query", "a man"])
    refused(e, os.path.join(swapped, "best.pth"))
    # a noise permutation file (np.load never unpickles)
    evil_npy = write_pickle(tmp_path / "noise.npy", marker)
    with pytest.raises(SystemExit):
        train_main.main(tiny_args(data_root, tmp_path / "noisy", "--noisy_rate", "0.2", "--noisy_file", evil_npy))
    assert "cannot read the noise permutation" in capsys.readouterr().out

    # the LoRA fine-tuning state (python -m thi.sft --resume reads it before anything else of the checkpoint)
    from thi.sft import load_checkpoint as load_sft_checkpoint
    from utils.safe_load import UnsafeFileError
    state = tmp_path / "lora" / "checkpoint-10"
    state.mkdir(parents=True)
    write_malicious(state / "state.pt", marker, step=10, args={})
    with pytest.raises(UnsafeFileError, match="LoRA training state"):
        load_sft_checkpoint(str(state), None, None, None, {})

    # caches read back: each is rebuilt (a cache is only a cache), none is unpickled
    good = copy_run(run_dir, tmp_path / "good")
    retrieve_main.main(["--run", good, "--images", str(images), "--query", "a man"])
    (index_file,) = (images / ".reid_index").iterdir()
    write_malicious(index_file, marker, format=1)
    hits = retrieve_main.main(["--run", good, "--images", str(images), "--query", "a man"])
    assert len(hits[0]["hits"]) == 3 and "3 embedded" in capsys.readouterr().out
    assert "of type io.open" in caplog.text and "rebuilding it" in caplog.text
    from datasets.image_cache import cache_folder, open_images
    paths = load_run_split_images(data_root)
    folder, _ = cache_folder(paths, (64, 32))
    write_pickle(os.path.join(folder, "index.json"), marker)
    source = open_images(paths, (64, 32), image_cache=True, show_progress=False)
    assert source.read([0]).shape == (1, 3, 64, 32)
    from mllm.cache import AnswerCache
    answers = tmp_path / "thi" / "mllm_cache.jsonl"
    answers.parent.mkdir()
    write_pickle(answers, marker)
    assert AnswerCache(str(answers)).answers == {}
    # THI's re-ranked similarities, which test.py --visualize reads
    os.makedirs(os.path.join(good, "thi"))
    similarity = write_malicious(os.path.join(good, "thi", "final_similarity.pt"), marker)
    with pytest.raises(SystemExit) as e:
        test_main.main(["--run", good, "--checkpoint", "best", "--visualize", "1"])
    assert similarity in str(e.value) and "of type io.open" in str(e.value)

    # python -m thi --checkpoint (the MLLM folder is read first, so a tiny one is built)
    from tests.tiny_qwen2vl import build_tiny_qwen2vl
    from thi.cli import main as thi_main
    qwen = build_tiny_qwen2vl(str(tmp_path / "qwen"), seed=0, favour="Yes")
    with pytest.raises(SystemExit) as e:
        thi_main(["--checkpoint", evil, "--config", config, "--model_dir", qwen, "--out", str(tmp_path / "thi_out"),
                  "--mllm_device", "cpu", "--limit", "1"])
    refused(e, evil)

    assert not marker.exists()
    # the one flag that loads such a file anyway: its code runs (the marker appears), and the file is then
    # judged on its contents
    with pytest.raises(SystemExit), pytest.warns(UserWarning, match="loaded in full because of --trust_checkpoint"):
        test_main.main(["--checkpoint", evil, "--config", config, "--trust_checkpoint"])
    assert marker.exists()


def test_a_torchscript_archive_is_read_without_torchscript_and_a_malicious_one_is_refused(tmp_path):
    """OpenAI's format: the weights come out of the zip without torch.jit.load; an archive whose data.pkl names
    anything but tensors and module records is refused (--pretrain_choice reads CLIP files this way)."""
    import warnings
    import zipfile
    from model.clip import load_state_dict_file
    from utils.safe_load import UnsafeFileError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # torch.jit.trace is deprecated; OpenAI's file was made with it
        model = torch.nn.Sequential(torch.nn.Linear(3, 4)).half()
        torch.jit.trace(model, torch.randn(2, 3).half()).save(str(tmp_path / "ViT-tiny.pt"))
    from utils.torchscript import read_torchscript_tensors
    weights = read_torchscript_tensors(str(tmp_path / "ViT-tiny.pt"))
    assert {k: v.dtype for k, v in weights.items()} == {"0.weight": torch.float16, "0.bias": torch.float16}
    assert torch.equal(weights["0.weight"], model[0].weight)
    marker = tmp_path / "PWNED"
    with zipfile.ZipFile(tmp_path / "ViT-tiny.pt") as good, zipfile.ZipFile(tmp_path / "evil.pt", "w") as evil:
        for item in good.infolist():
            data = pickle.dumps(Payload(marker)) if item.filename.endswith("/data.pkl") else good.read(item)
            evil.writestr(item, data)
    with pytest.raises(UnsafeFileError, match=r"evil\.pt: refused to load this TorchScript archive: it holds an "
                                              r"object of type io\.open.*--trust_checkpoint"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_our_checkpoints_hold_plain_data_and_old_ones_still_load(run_dir, tmp_path):
    """A new run's checkpoints load with torch's bare weights_only (no allowlist); a run folder written before
    (config values as EasyDicts, numpy's RNG state as an ndarray) still evaluates, without --trust_checkpoint."""
    for name in ("best.pth", "last.pth"):
        torch.load(os.path.join(run_dir, name), weights_only=True)
    from easydict import EasyDict
    old = copy_run(run_dir, tmp_path / "old")
    for name in ("best.pth", "last.pth"):
        ckpt = torch.load(os.path.join(old, name), weights_only=True)
        ckpt["config"] = dict(EasyDict(ckpt["config"]))
        if "rng" in ckpt:
            ckpt["rng"]["numpy"] = np.random.get_state()
        torch.save(ckpt, os.path.join(old, name))
    results = test_main.main(["--run", old])
    assert results["best"] == test_main.main(["--run", run_dir])["best"]


# ---- 2. preemption, NaN, full disk -----------------------------------------------------------------------------

def train_process(args, **faults):
    """main.py in a process group of its own, with its loader workers (what a scheduler or a terminal signals)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **faults}
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop_mid_epoch(args, run, sig):
    """Train in a subprocess that waits in the middle of epoch 2 (REID_WAIT_AT) until the test's signal arrives,
    sent to its whole process group, loader workers included (as SLURM's scancel, torchrun and Ctrl-C on a
    terminal send it); returns its stdout after checking its exit status and its one-line message."""
    proc = train_process(args, REID_WAIT_AT="epoch2:mid")
    for line in proc.stderr:                 # it trains epoch 1, then waits in the middle of epoch 2
        if "waiting at epoch2:mid" in line:
            break
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, err[-3000:]
    message = [line for line in out.splitlines() if "stopped by" in line]
    assert len(message) == 1, out[-2000:]
    assert (f"stopped by {sig.name} at epoch 2, step 1 of 3: checkpoint {run / 'last.pth'}; continue with: "
            f"python main.py --resume {run}") in message[0]
    partial = torch.load(run / "last.pth", weights_only=True)
    assert (partial["epoch"], partial["partial"]["epoch"], partial["partial"]["steps"]) == (1, 2, 1)
    return out


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_with_a_checkpoint_that_resumes_exactly(data_root, tmp_path):
    """A real SIGTERM sent to a training process (with a loader worker) in the middle of epoch 2: it stops after
    that step, and --resume trains the epoch's remaining batches into the uninterrupted run's rows and weights."""
    args = lambda run: tiny_args(data_root, run, "--num_workers", "1")  # noqa: E731
    full, run = tmp_path / "full", tmp_path / "run"
    train_main.main(args(full))
    stop_mid_epoch(args(run), run, signal.SIGTERM)
    resumed = train_process(["--resume", str(run)])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    same_run(run, full)
    assert not [n for n in os.listdir(run) if ".tmp" in n]


@pytest.mark.slow
def test_ctrl_c_mid_epoch_stops_the_same_way(data_root, tmp_path):
    run = tmp_path / "run"
    stop_mid_epoch(tiny_args(data_root, run, "--num_workers", "1"), run, signal.SIGINT)


@pytest.mark.slow
def test_kill_9_then_resume_at_once_with_loader_workers(data_root, tmp_path, capsys):
    """What a scheduler does after an OOM kill: kill -9 mid-epoch (with loader workers, forked copies of the
    process), then --resume at once.  On main the run folder's lock lived on in the workers until they noticed
    their parent was gone (seconds), and the resume was refused naming the dead process."""
    run = tmp_path / "run"
    with open(tmp_path / "killed.log", "w") as out:
        killed = subprocess.Popen([sys.executable, "main.py", *tiny_args(data_root, run, "--num_workers", "2")],
                                  cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "REID_CRASH_AT": "epoch2:mid"},
                                  stdout=out, stderr=out, start_new_session=True)   # its workers: its process group
        try:
            assert killed.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
            train_main.main(["--resume", str(run)])
        finally:
            try:
                os.killpg(killed.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "resumed from" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_the_run_folder_lock_dies_with_its_process_not_its_children(tmp_path):
    """The lock itself, without the loader's timing: a process holds a run folder, forks a child that lives on
    with the lock file open (as a loader worker does), and is killed -9.  The folder is free at once, while the
    child lives; a refusal names only a live holder."""
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import os, time; from utils.run_folder import RunFolder; "
                               f"held = RunFolder({run!r}); child = os.fork(); time.sleep(60 if child == 0 else 0); "
                               "print(child, flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunFolderError, match=rf"in use by another training \(pid {holder.pid}\)"):
            RunFolder(run)
        holder.kill()
        holder.wait()
        os.kill(child, 0)                                   # the child is alive, the lock file open in it
        RunFolder(run).release()
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)


SUITE = """
import sys
sys.path.insert(0, {root!r})
import main as train_main
from tests.helpers import tiny_args

def test_a_training():
    train_main.main(tiny_args({data!r}, {run!r}))

def test_the_next():
    open({marker!r}, "w").close()
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_suite_that_trains_in_its_own_process(data_root, tmp_path):
    """pytest running a training in its own process (main.main, as tests/test_learning.py does) gets Ctrl-C
    mid-epoch: the training writes its checkpoint and says so, then pytest stops, the next test unrun.  (SIGTERM
    takes the same path: solver.faults.Interrupted for either.)"""
    run, marker, suite = tmp_path / "run", tmp_path / "next_test_ran", tmp_path / "test_suite.py"
    suite.write_text(SUITE.format(root=ROOT, data=data_root, run=str(run), marker=str(marker)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "REID_WAIT_AT": "epoch2:mid"}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(suite)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:                 # it trains epoch 1, then waits in the middle of epoch 2
        if "waiting at epoch2:mid" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:] + err[-3000:]
    assert f"stopped by SIGINT at epoch 2, step 1 of 3: checkpoint {run / 'last.pth'}" in out, out[-3000:]
    assert "solver.faults.Interrupted: SIGINT" in out and not marker.exists(), out[-3000:]
    assert torch.load(run / "last.pth", weights_only=True)["partial"]["steps"] == 1


@pytest.mark.slow
def test_a_nan_loss_stops_at_once_and_keeps_the_last_finite_checkpoints(data_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv("REID_NAN_AT", "epoch2:step2")
    with pytest.raises(SystemExit) as e:
        train_main.main(tiny_args(data_root, run))
    assert e.value.code == 3
    out = capsys.readouterr().out
    assert ("the loss is nan at epoch 2, step 2 of 3 (bge_TAL nan)" in out
            and f"the last good checkpoint is {run / 'last.pth'} (epoch 1)" in out), out[-2000:]
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    for name in ("best.pth", "last.pth"):
        ckpt = torch.load(run / name, weights_only=True)
        assert ckpt["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt["models"][0].values() if v.is_floating_point())


def small_filesystem(path, size_bytes) -> bool:
    """A tmpfs of this size mounted at `path` (True), where this process may mount (root, no seccomp filter)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_how_much_space(data_root, tmp_path, monkeypatch,
                                                                           capsys):
    reference = tmp_path / "reference"
    train_main.main(tiny_args(data_root, reference, "--num_epoch", "1"))
    used = sum(f.stat().st_size for f in reference.iterdir())
    last_size = (reference / "last.pth").stat().st_size
    disk = tmp_path / "disk"
    # room for epoch 1's files and half a checkpoint more: epoch 2's last.pth cannot be written beside the first
    mounted = small_filesystem(disk, (used + last_size // 2) // 4096 * 4096)
    if not mounted:     # no mount permitted here: the same write fails with ENOSPC at the same point
        monkeypatch.setenv("REID_DISK_FULL_AT", "epoch2:last.pth")
    try:
        run = disk / "run"
        with pytest.raises(SystemExit) as e:
            train_main.main(tiny_args(data_root, run))
        assert e.value.code == 2
        out = capsys.readouterr().out
        assert f"no space left to write last.pth in {run}: it needs " in out, out[-2000:]
        assert f"{run / 'last.pth'} is still the previous one (intact)" in out and "--resume" in out
        assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
        assert not [n for n in os.listdir(run) if ".tmp" in n]
    finally:
        if mounted:     # lazily: the failed run's log and events files may still be open in this process
            subprocess.run(["umount", "-l", str(disk)], check=True)


# ---- 3. damaged caches, read-only folders ----------------------------------------------------------------------

def test_a_damaged_image_cache_is_rebuilt_never_read_as_pixels(data_root):
    """A pixel file cut short and index files of another version (or half-written) are detected: every image is
    decoded again into a rebuilt cache, and what is read equals the JPEGs' pixels."""
    from datasets.image_cache import VERSION, ImageCache, cache_folder, decode_resized, open_images
    from tests.helpers import load_run_split_images
    paths = load_run_split_images(data_root)[:6]
    size = (64, 32)
    folder, base = cache_folder(paths, size)
    truth = np.stack([decode_resized(p, size) for p in paths])
    pixels, index = os.path.join(folder, "pixels.u8"), os.path.join(folder, "index.json")

    def read():
        got = open_images(paths, size, image_cache=True, show_progress=False).read(range(len(paths))).numpy()
        rebuilt = json.load(open(index))
        cache = ImageCache(folder, base, size)
        assert rebuilt["version"] == VERSION and {cache.key(p) for p in paths} <= set(rebuilt["entries"])
        return got

    assert np.array_equal(read(), truth)
    with open(pixels, "r+b") as f:                       # truncated (a copy cut short, a full disk)
        f.truncate(os.path.getsize(pixels) // 2)
    assert np.array_equal(read(), truth)
    data = json.load(open(index))
    for damaged in ({**data, "version": 0}, {**data, "entries": {k: "slot 3" for k in data["entries"]}},
                    {**data, "entries": {k: [-5, *v[1:]] for k, v in data["entries"].items()}},
                    {**data, "entries": list(data["entries"])}, list(data["entries"]), "not json {"):
        with open(index, "w") as f:                      # written by another version, or half-written
            f.write(damaged if isinstance(damaged, str) else json.dumps(damaged))
        with open(pixels, "r+b") as f:                   # what a wrong slot would read: never these pixels
            f.write(bytes(os.path.getsize(pixels)))
        assert np.array_equal(read(), truth), damaged


def read_only_mount(source, path) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(path)], capture_output=True)
    if done.returncode:
        return False
    probe = path / ".write_probe"
    try:
        probe.write_text("")
    except OSError:
        return True
    probe.unlink()              # a kernel that ignores ro on a bind mount: not read-only after all
    subprocess.run(["umount", str(path)])
    return False


@pytest.mark.slow
def test_read_only_dataset_and_run_folders_are_evaluated(run_dir, data_root, tmp_path, monkeypatch, capsys):
    """Someone else's run on a shared, read-only dataset: test.py --run works, its log on the console and the image
    cache under ~/.cache; what cannot be written (--visualize's pictures) is refused with a message."""
    data, run = tmp_path / "ro_data", tmp_path / "ro_run"
    shutil.rmtree(os.path.join(data_root, "CUHK-PEDES", ".cache"), ignore_errors=True)
    if not (read_only_mount(data_root, data) and read_only_mount(run_dir, run)):
        pytest.skip("needs read-only bind mounts (root); chmod does not stop root, so there is no honest substitute")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home_cache"))
    try:
        results = test_main.main(["--run", str(run), "--root_dir", str(data), "--checkpoint", "best"])
        assert results["best"] == test_main.main(["--run", run_dir, "--checkpoint", "best"])["best"]
        out = capsys.readouterr().out
        assert f"cannot write {run / 'test_log.txt'}" in out and "console only" in out
        assert (tmp_path / "home_cache" / "reid-images").is_dir()
        with pytest.raises(SystemExit) as e:
            test_main.main(["--run", str(run), "--root_dir", str(data), "--visualize", "1"])
        assert str(run / "visualize") in str(e.value) and "read-only" in str(e.value).lower()
        # training on the read-only dataset under simulated noise: the permutation cannot be saved beside it
        train_main.main(tiny_args(data, tmp_path / "train", "--num_epoch", "1", "--noisy_rate", "0.5",
                                  "--division", "false"))
        assert "cannot save the noise permutation" in capsys.readouterr().out
        assert read_metrics(tmp_path / "train")[0]["epoch"] == 1
    finally:
        for mount in (data, run):
            subprocess.run(["umount", "-l", str(mount)])
