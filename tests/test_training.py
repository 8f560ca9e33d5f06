"""End to end on tiny synthetic data: train, log, checkpoint, resume, evaluate a run folder."""
import json
import os

import pytest
import torch
import yaml

import main as train_main
import test as test_main
from datasets.synthetic import make_synthetic
from model.clip import CLIP, CLIPConfig

# widths of 64 so that a saved file's head count reads back as CLIP's width // 64
TINY_ARCH = dict(embed_dim=32, vision_width=64, vision_layers=1, vision_heads=1,
                 text_width=64, text_layers=1, text_heads=1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic(str(root), fmt="CUHK-PEDES", num_train_ids=12, num_test_ids=6, num_val_ids=3, seed=3)
    return str(root)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A random CLIP saved as a plain state dict in OpenAI's key layout, at its own size (64 x 32, 77 tokens)."""
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.manual_seed(0)
    torch.save(CLIP(CLIPConfig(**TINY_ARCH, image_size=(64, 32))).state_dict(), path)
    return str(path)


def tiny_args(data_root, run_dir, *extra):
    return ["--dataset_name", "CUHK-PEDES", "--root_dir", data_root, "--run_dir", str(run_dir),
            "--pretrain_choice", "random", "--clip_arch", json.dumps(TINY_ARCH),
            "--img_size", "64", "32", "--text_length", "40", "--embed_dim", "48",
            "--batch_size", "8", "--test_batch_size", "32", "--num_workers", "0",
            "--num_epoch", "2", "--warmup_epochs", "1", "--lr", "1e-4", *extra]


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


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


def test_resume_continues_a_killed_run_exactly(data_root, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train_main.main(tiny_args(data_root, full))

    killed = tmp_path / "killed"
    import solver.engine as engine
    real_append = engine.append_jsonl

    def die_after_first_epoch(path, record):
        real_append(path, record)
        raise KeyboardInterrupt  # as if killed right after epoch 1 was saved

    monkeypatch.setattr(engine, "append_jsonl", die_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_main.main(tiny_args(data_root, killed))
    monkeypatch.setattr(engine, "append_jsonl", real_append)
    assert len(read_metrics(killed)) == 1

    train_main.main(["--resume", str(killed)])
    a, b = read_metrics(full), read_metrics(killed)
    assert [r["epoch"] for r in b] == [1, 2]
    for key in ("lr", "loss/bge_TAL", "loss/tse_TAL", "R1", "mAP"):
        assert b[1][key] == pytest.approx(a[1][key], rel=1e-4), key
    wa = torch.load(full / "last.pth", weights_only=False)["models"][0]
    wb = torch.load(killed / "last.pth", weights_only=False)["models"][0]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_pretrained_clip_file_twins_and_other_losses(data_root, clip_file, tmp_path):
    """The real CLIP loading path (OpenAI layout, resized to 64 x 32 stride 16), twin models, SDM + ID."""
    run = tmp_path / "twin"
    train_main.main(tiny_args(data_root, run, "--pretrain_choice", clip_file, "--twin", "--num_epoch", "1",
                              "--loss_names", "SDM+ID+free_text", "--division", "false"))
    record = read_metrics(run)[0]
    assert {"loss/model1/bge_SDM", "loss/model2/tse_ID"} <= set(record)
    results = test_main.main(["--run", str(run), "--checkpoint", "last"])
    assert list(results["last"])[-1] == "ensemble"
    assert {"model1/BGE", "model2/TSE", "model1", "model2"} <= set(results["last"])


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
