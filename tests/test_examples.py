"""The plug-in examples (configs/examples/): a new loss, head, weighting rule and method, each one new file,
train from their YAML file through main.py with nothing else changed (here on the tiny synthetic set)."""
import glob
import os

import pytest

import main as train_main
from tests.helpers import ROOT, read_metrics, tiny_args
from configs import load_yaml

EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "configs", "examples", "*.yaml")))


def test_there_are_examples_of_each_kind_of_plug_in():
    chosen = [load_yaml(path) for path in EXAMPLES]
    assert any("CMPM" in c.get("loss_names", "") for c in chosen)
    assert any("avg" in c.get("embeddings", []) for c in chosen)
    assert any(c.get("weighting") == "soft_clean" for c in chosen)
    assert any(c.get("weighting") == "co_teaching" for c in chosen)     # one weight vector per model
    assert any(c.get("weighting") == "co_divide" for c in chosen)       # the same, soft
    assert any("SDM_LS" in c.get("loss_names", "") for c in chosen)     # a loss with an option of its own
    assert any(c.get("method") == "dividemix" for c in chosen)          # a method with an option and a loop point


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_an_example_trains_from_its_yaml(path, data_root, tmp_path):
    # the example's own options (its _BASE_, the demo, included) with the tiny data, model and one epoch
    train_main.main(tiny_args(data_root, tmp_path / "run", "--config", path, "--num_epoch", "1"))
    row, = read_metrics(tmp_path / "run")
    if load_yaml(path).get("weighting") in ("co_teaching", "co_divide"):    # each model its own weights: logged per model
        assert {"division/model1_trains_on/kept", "division/model2_trains_on/kept",
                "division/model2_trains_on/noise_recall"} <= set(row)
    assert row["R1"] >= 0 and all(k.split("/")[0] in ("loss", "division", "epoch", "lr", "train_time") or k in
                                  ("R1", "R5", "R10", "mAP", "mINP", "eval_row") for k in row)
    saved = load_yaml(str(tmp_path / "run" / "configs.yaml"))
    for key, value in load_yaml(path).items():
        if key not in ("dataset_name", "root_dir", "clip_arch", "img_size", "text_length", "batch_size",
                       "test_batch_size", "num_workers", "num_epoch", "warmup_epochs", "lr", "tse_dim",
                       "pretrain_choice"):
            assert saved[key] == value, key        # the example's choices are what trained
