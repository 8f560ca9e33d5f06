"""The CLIP pretrained on synthetic people (pretrain_choice: synthetic, pretraining/synthetic_clip.py): its people are
none of SYNTH-PEDES's, it learns, it is kept in OpenAI's key layout and loaded through the CLIP file path, built
once and rebuilt when its recipe changes, and main.py builds it on first use."""
import json
import os
import random

import pytest
import torch

import main as train_main
from datasets.synthetic import RESERVED_IDENTITIES, _identity_key, _sample_identities, pretraining_identities
from model.clip import SYNTHETIC, build_clip, load_state_dict_file, random_clip_config
from model.clip import synthetic as synthetic_file
from pretraining import synthetic_clip
from tests.helpers import TINY_ARCH, read_metrics, tiny_args

TINY_RECIPE = dict(synthetic_clip.RECIPE, identities=96, held_out=16, epochs=4, batch_size=16, lr=2e-3)


@pytest.fixture
def clip_dir(tmp_path, monkeypatch):
    folder = tmp_path / "synthetic-clip"
    monkeypatch.setattr(synthetic_file, "SYNTHETIC_CLIP_DIR", str(folder))
    monkeypatch.setattr(synthetic_clip, "RECIPE", TINY_RECIPE)
    return folder


def test_pretraining_people_are_never_synth_pedes_people():
    pool = {_identity_key(i) for i in pretraining_identities(500)}
    assert len(pool) == 500
    dataset = {_identity_key(i) for i in _sample_identities(RESERVED_IDENTITIES, random.Random(0))}
    assert not pool & dataset
    # SYNTH-PEDES (make_synthetic's defaults: 380 identities, seed 0) takes the first of those
    assert {_identity_key(i) for i in _sample_identities(380, random.Random(0))} <= dataset


def test_built_once_in_openai_layout_and_loaded_as_a_clip_file(clip_dir):
    config = random_clip_config(TINY_ARCH, (64, 32), 16, 40)
    path = synthetic_clip.ensure_synthetic_clip(config)
    assert path == synthetic_file.synthetic_clip_file(config) and os.path.isfile(path)
    summary = json.loads(open(os.path.splitext(path)[0] + ".json").read())
    assert summary["recipe"] == TINY_RECIPE
    losses = summary["loss_per_epoch"]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1          # the contrastive loss fell
    state = load_state_dict_file(path)                   # the reader of OpenAI's files keeps every tensor
    assert {"visual.conv1.weight", "token_embedding.weight", "text_projection"} <= set(state)
    model = build_clip(SYNTHETIC, image_size=(64, 32), stride=16, text_length=40, arch=TINY_ARCH)
    assert torch.equal(model.visual.conv1.weight, state["visual.conv1.weight"].float())
    stamp = os.stat(path).st_mtime_ns
    assert synthetic_clip.ensure_synthetic_clip(config) == path and os.stat(path).st_mtime_ns == stamp   # kept


def test_another_recipe_rebuilds_and_a_missing_file_is_explained(clip_dir, monkeypatch):
    config = random_clip_config(TINY_ARCH, (64, 32), 16, 40)
    with pytest.raises(FileNotFoundError, match="python -m pretraining --config"):
        build_clip(SYNTHETIC, image_size=(64, 32), stride=16, text_length=40, arch=TINY_ARCH)
    path = synthetic_clip.ensure_synthetic_clip(config)
    first = load_state_dict_file(path)["visual.proj"].clone()
    monkeypatch.setattr(synthetic_clip, "RECIPE", dict(TINY_RECIPE, seed=5))
    assert synthetic_clip.ensure_synthetic_clip(config) == path
    assert not torch.equal(load_state_dict_file(path)["visual.proj"], first)


@pytest.mark.slow
def test_main_builds_it_on_first_use(clip_dir, data_root, tmp_path):
    train_main.main(tiny_args(data_root, tmp_path / "run", "--pretrain_choice", SYNTHETIC, "--num_epoch", "1"))
    assert len(list(clip_dir.glob("*.pt"))) == 1
    assert read_metrics(tmp_path / "run")[0]["R1"] >= 0
