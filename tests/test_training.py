"""End to end on tiny synthetic data: train, log, checkpoint, resume, evaluate a run folder."""
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

import main as train_main
import test as test_main
from datasets.synthetic import make_synthetic
from model.clip import CLIP, CLIPConfig
from tests.helpers import ROOT, TINY_ARCH, read_metrics, same_run, tiny_args
from utils.run_folder import RunFolder

pytestmark = pytest.mark.slow      # every test here trains end to end (subprocesses, torch.compile included)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A random CLIP saved as a plain state dict in OpenAI's key layout, at its own size (64 x 32, 77 tokens)."""
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.manual_seed(0)
    torch.save(CLIP(CLIPConfig(**TINY_ARCH, image_size=(64, 32))).state_dict(), path)
    return str(path)


def test_train_writes_a_complete_run_folder_and_test_py_reads_it(data_root, tmp_path):
    run = tmp_path / "run"
    train_main.main(tiny_args(data_root, run, "--noisy_rate", "0.5"))
    for name in ("configs.yaml", "best.pth", "last.pth", "metrics.jsonl", "train_log.txt"):
        assert (run / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run)).Reload()
    assert {"R1", "lr", "loss/tse_TAL", "division/noise_recall"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("R1")] == [1, 2]
    saved = yaml.safe_load((run / "configs.yaml").read_text())
    assert saved["noisy_rate"] == 0.5 and saved["run_dir"] == str(run)
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("lr", "loss/bge_TAL", "loss/tse_TAL", "R1", "R5", "R10", "mAP", "mINP",
                "division/kept", "division/noise_precision", "division/noise_recall"):
        assert key in records[-1], key
    assert records[0]["lr"] == pytest.approx(1e-5)   # warm-up starts at 0.1 x lr
    assert os.path.isfile(os.path.join(data_root, "noiseindex", "CUHK-PEDES_0.5.npy"))

    results = test_main.main(["--run", str(run)])
    assert set(results) == {"best", "last"}
    assert list(results["last"]) == ["BGE", "TSE", "BGE+TSE"]
    best_epoch_r1 = max(r["R1"] for r in records)
    assert results["best"]["BGE+TSE"]["R1"] == pytest.approx(best_epoch_r1)


def run_subprocess(args, crash_at=None):
    env = {**os.environ, "REID_CRASH_AT": crash_at or "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(data_root, tmp_path):
    """A real kill -9 (the process kills itself at a named point: REID_CRASH_AT) mid-epoch, then while last.pth is
    being written, then between last.pth and the metrics log, each in the run resumed from the one before (as a
    scheduler that keeps killing and resuming would); the last --resume then ends where an uninterrupted run
    ends: every epoch once in metrics.jsonl, the same rows, the same weights, one events file, no leftovers."""
    args = lambda run: tiny_args(data_root, run, "--num_epoch", "3", "--num_workers", "1")  # noqa: E731
    full = tmp_path / "full"
    assert run_subprocess(args(full)).returncode == 0
    run = tmp_path / "killed"
    command = args(run)
    for point in ("epoch2:mid", "epoch2:last.pth", "epoch2:logging"):
        killed = run_subprocess(command, crash_at=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        command = ["--resume", str(run)]
    resumed = run_subprocess(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    same_run(run, full)
    names = os.listdir(run)
    assert not [n for n in names if ".tmp" in n], names
    assert len([n for n in names if n.startswith("events.out.tfevents")]) == 1, names


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(data_root, tmp_path, caplog):
    run = tmp_path / "run"
    train_main.main(tiny_args(data_root, run))
    expected = read_metrics(run)
    data = (run / "last.pth").read_bytes()
    (run / "last.pth").write_bytes(data[: len(data) // 2])          # a copy cut short
    train_main.main(["--resume", str(run)])
    log = (run / "train_log.txt").read_text()
    assert "last.pth is not a readable checkpoint" in log and "falling back" in log
    assert "resumed from " + str(run / "last.prev.pth") in log
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert read_metrics(run)[1]["R1"] == pytest.approx(expected[1]["R1"], abs=1e-6)


def test_a_run_folder_has_one_writer_and_keeps_its_run(data_root, tmp_path):
    run = tmp_path / "run"
    train_main.main(tiny_args(data_root, run, "--num_epoch", "1"))
    # a new training into a folder that holds a run is refused; --overwrite starts over
    with pytest.raises(SystemExit, match="already holds a run.*--resume"):
        train_main.main(tiny_args(data_root, run, "--num_epoch", "1"))
    # a second training while one holds the folder
    holder = RunFolder(str(run), resume=True)
    try:
        with pytest.raises(SystemExit, match="in use by another training"):
            train_main.main(["--resume", str(run)])
    finally:
        holder.release()
    # --resume keeps the run's configuration: another config file or option is refused by name
    other = tmp_path / "other.yaml"
    other.write_text("lr: 1.0e-3\n")
    with pytest.raises(SystemExit, match="drop --config"):
        train_main.main(["--resume", str(run), "--config", str(other)])
    with pytest.raises(SystemExit, match=r"lr \(run: 0.0001, given: 0.5\)"):
        train_main.main(["--resume", str(run), "--lr", "0.5", "--num_workers", "0"])
    # an edited configs.yaml that no longer matches the checkpoint
    saved = yaml.safe_load((run / "configs.yaml").read_text())
    (run / "configs.yaml").write_text(yaml.safe_dump({**saved, "tse_dim": 64}))
    with pytest.raises(SystemExit, match=r"tse_dim \(run: 48, given: 64\)"):
        train_main.main(["--resume", str(run)])
    (run / "configs.yaml").write_text(yaml.safe_dump(saved))
    train_main.main(tiny_args(data_root, run, "--num_epoch", "1", "--overwrite"))
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    # a start that fails leaves no run folder behind
    with pytest.raises(SystemExit):
        train_main.main(tiny_args(str(tmp_path / "no_data"), tmp_path / "failed"))
    assert not (tmp_path / "failed").exists()


def test_trainings_started_in_the_same_second_get_folders_of_their_own(data_root, tmp_path, monkeypatch, capsys):
    """Without --run_dir the folder is OUTPUT_DIR/DATASET/TIME_NAME: a second training of the same name in the same
    second (the clock is held still here) gets TIME_NAME_2, not a refusal naming an option it never set.  Its log
    says how many captions the text length cut (tiny_args' 40 tokens cut the longest synthetic captions)."""
    from types import SimpleNamespace
    from utils.tokenizer import get_tokenizer
    monkeypatch.setattr(train_main, "time", SimpleNamespace(strftime=lambda fmt: "20270101_120000"))
    args = tiny_args(data_root, "unused", "--num_epoch", "1", "--division", "false", "--output_dir",
                     str(tmp_path / "logs"), "--name", "same")
    del args[args.index("--run_dir"):args.index("--run_dir") + 2]
    first, second = (tmp_path / "logs" / "CUHK-PEDES" / name for name in ("20270101_120000_same",
                                                                        "20270101_120000_same_2"))
    holder = RunFolder(str(first))         # the first training, still running (no checkpoint yet)
    try:
        train_main.main(args)
    finally:
        holder.release()
    assert "run folder " + str(second) in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(second)] == [1]
    train_main.main(args)                   # the first has a run now: the next one takes _3
    assert [r["epoch"] for r in read_metrics(first.parent / "20270101_120000_same_3")] == [1]
    assert not (first / "configs.yaml").exists()

    from datasets import build_dataset
    dataset = build_dataset("CUHK-PEDES", data_root)
    lengths = {split: [len(get_tokenizer().encode(c)) + 2 for c in captions] for split, captions in
               (("training", [r.caption for r in dataset.train]), ("test", dataset.test.captions))}
    cut = {split: [n - 40 for n in lengths[split] if n > 40] for split in lengths}
    assert cut["training"], "no caption is longer than 40 tokens: this test would prove nothing"
    said = "captions cut by --text_length 40: " + ", ".join(
        f"{len(cut[split])} of {len(lengths[split])} {split} captions"
        + (f" (at worst {max(cut[split])} tokens lost)" if cut[split] else "") for split in ("training", "test"))
    assert said in (second / "train_log.txt").read_text()


def test_a_run_folder_from_before_tse_dim_evaluates_and_resumes(data_root, tmp_path):
    """A run written when TSE's size was called embed_dim (in configs.yaml and in its checkpoints' config): test.py
    evaluates it as before, --resume continues it, and an edited size is still caught."""
    run = tmp_path / "run"
    train_main.main(tiny_args(data_root, run, "--num_epoch", "1"))
    expected = test_main.main(["--run", str(run)])
    old = lambda cfg: {("embed_dim" if k == "tse_dim" else k): v for k, v in cfg.items()}    # noqa: E731
    saved = old(yaml.safe_load((run / "configs.yaml").read_text()))
    (run / "configs.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for path in run.glob("*.pth"):
        checkpoint = torch.load(path, weights_only=True)
        torch.save({**checkpoint, "config": old(checkpoint["config"])}, path)
    assert test_main.main(["--run", str(run)]) == expected
    train_main.main(["--resume", str(run)])                   # nothing left to train: the config matched
    (run / "configs.yaml").write_text(yaml.safe_dump({**saved, "embed_dim": 64}, sort_keys=False))
    with pytest.raises(SystemExit, match=r"tse_dim \(run: 48, given: 64\)"):
        train_main.main(["--resume", str(run)])


def test_pretrained_clip_file_twins_and_other_losses(data_root, clip_file, tmp_path):
    """The real CLIP loading path (OpenAI layout, resized to 64 x 32 stride 16), twin models, SDM + ID."""
    run = tmp_path / "twin"
    train_main.main(tiny_args(data_root, run, "--pretrain_choice", clip_file, "--twin", "--num_epoch", "1",
                              "--loss_names", "SDM+ID+free-text", "--division", "false"))
    record = read_metrics(run)[0]
    assert {"loss/model1/bge_SDM", "loss/model2/tse_ID"} <= set(record)
    results = test_main.main(["--run", str(run), "--checkpoint", "last"])
    assert list(results["last"])[-1] == "ensemble"
    assert {"model1/BGE", "model2/TSE", "model1", "model2"} <= set(results["last"])


def test_twin_model_1_trains_as_the_single_model(data_root, tmp_path):
    """The twin path gives model 1 what a single model gets (its initialisation, view 0's images and captions, the
    division's weights) and model 2 its own view: with the division off, model 1's losses and evaluation rows are
    the single model's, and model 2's are not (issue 20 looked here first when twins stopped learning)."""
    args = ["--num_epoch", "2", "--noisy_rate", "0.5", "--division", "false"]
    train_main.main(tiny_args(data_root, tmp_path / "single", *args))
    train_main.main(tiny_args(data_root, tmp_path / "twin", *args, "--twin"))
    single, twin = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "twin")
    for s, t in zip(single, twin):
        for name in ("bge_TAL", "tse_TAL"):
            assert t[f"loss/model1/{name}"] == pytest.approx(s[f"loss/{name}"], rel=1e-5)
            assert t[f"loss/model2/{name}"] != pytest.approx(s[f"loss/{name}"], rel=1e-3)
    one = torch.load(tmp_path / "single" / "last.pth", weights_only=True)["models"][0]
    two = torch.load(tmp_path / "twin" / "last.pth", weights_only=True)["models"]
    assert all(torch.allclose(one[k], two[0][k], atol=1e-5) for k in one)
    assert not all(torch.allclose(one[k], two[1][k], atol=1e-3) for k in one)


def test_bad_checkpoint_and_bad_config_are_reported(data_root, tmp_path):
    run = tmp_path / "run"
    train_main.main(tiny_args(data_root, run, "--num_epoch", "1"))
    (run / "best.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="best.pth"):
        test_main.main(["--run", str(run)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\nbatchsize: 3\n")
    with pytest.raises(SystemExit, match="batchsize"):
        train_main.main(["--config", str(bad)])
    with pytest.raises(SystemExit, match="no configs.yaml"):
        train_main.main(["--resume", str(tmp_path / "nowhere")])


def test_an_undecodable_image_stops_training_with_its_path(tmp_path):
    root = tmp_path / "data"
    make_synthetic(str(root), fmt="CUHK-PEDES", num_train_ids=6, num_test_ids=3, num_val_ids=2, seed=4)
    bad = next((root / "CUHK-PEDES" / "imgs").rglob("*.jpg"))
    bad.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(SystemExit):
        train_main.main(tiny_args(str(root), tmp_path / "run", "--num_workers", "1", "--division", "false"))
    log = (tmp_path / "run" / "train_log.txt").read_text()
    error = log[log.index("ERROR"):]
    assert f"cannot decode image {bad}" in error and "--resume" in error and "Traceback" not in error
    # the advice works when followed, although no epoch had finished
    advice = error[error.index("python main.py --resume"):].split()
    good = next(p for p in (root / "CUHK-PEDES" / "imgs").rglob("*.jpg") if p != bad)
    bad.write_bytes(good.read_bytes())
    train_main.main(advice[2:4])
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_compiled_twins_train_like_eager_twins(data_root, tmp_path):
    """--compile with the twin trainer and the division (torch.compile's default backend, inductor: about a
    minute of compilation on 2 CPU cores) gives the losses and the weights of the uncompiled run."""
    args = ["--twin", "true", "--num_epoch", "1", "--noisy_rate", "0.2"]
    train_main.main(tiny_args(data_root, tmp_path / "eager", *args))
    train_main.main(tiny_args(data_root, tmp_path / "compiled", *args, "--compile", "true"))
    eager, compiled = read_metrics(tmp_path / "eager")[0], read_metrics(tmp_path / "compiled")[0]
    losses = sorted(k for k in eager if k.startswith("loss/"))
    assert len(losses) == 4                                     # two models x (BGE, TSE)
    assert [compiled[k] for k in losses] == pytest.approx([eager[k] for k in losses], rel=1e-4)
    # the trained weights agree (rankings of 24 captions are too coarse to compare).  The heads get a wider
    # margin: a bias before BatchNorm has no gradient in exact arithmetic, so Adam moves it by up to the head lr
    # per step in the direction of the rounding noise, which differs between the kernels.
    states = [torch.load(tmp_path / run / "last.pth", weights_only=False)["models"] for run in ("eager", "compiled")]
    for eager_model, compiled_model in zip(*states):
        assert eager_model.keys() == compiled_model.keys()
        for name, value in eager_model.items():
            atol = 1e-4 if name.startswith("backbone.") else 5e-3
            torch.testing.assert_close(compiled_model[name], value, atol=atol, rtol=1e-3, msg=name)
