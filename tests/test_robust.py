"""Issue 3 pieces: ALR weights, the fused head, RDA captions in training, +pre, the published eval-mode switch,
twin determinism."""
import json

import numpy as np
import pytest
import torch
from easydict import EasyDict

import main as train_main
from datasets.synthetic import make_synthetic
from model.embeddings import build_embedding
from solver.division import alr_mu, alr_weights
from tests.helpers import TINY_ARCH, read_metrics, tiny_args


def test_alr_weights_by_hand():
    votes = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0]], dtype=bool)   # consensus-clean: pairs 0 and 1
    s = np.array([0.6, 0.4, 0.5, 0.2, -0.1])
    mu = alr_mu(s, votes.all(axis=0), "min")                             # 0.4
    w = alr_weights(s, mu, k=5)
    expected = [1, 1, 1, torch.sigmoid(torch.tensor(5 * 0.2 / 0.4)), torch.sigmoid(torch.tensor(5 * -0.1 / 0.4))]
    assert float(mu) == pytest.approx(0.4)
    assert torch.allclose(w, torch.tensor(expected, dtype=torch.float), atol=1e-6)
    assert float(alr_mu(s, votes.all(axis=0), "mean")) == pytest.approx(0.5)
    assert float(alr_mu(s, votes.all(axis=0), "p0")) == pytest.approx(0.4)
    assert float(alr_mu(s, np.zeros(5, dtype=bool), "min")) == pytest.approx(-0.1)   # no clean pair: all pairs
    with pytest.raises(ValueError, match="percentile"):
        alr_mu(s, votes.all(axis=0), "median")
    with pytest.raises(ValueError, match="form"):
        alr_weights(s, mu, 5, "rebuilt")


def test_fused_head_selects_on_both_towers():
    head = build_embedding("fused", EasyDict(fused_ratio=0.2, fused_dim=16, fused_image_tokens="selected"),
                           width=8).eval()
    tokens, attn = torch.randn(2, 11, 8), torch.rand(2, 11, 11)
    out = head.encode_image(tokens, attn)
    assert out.shape == (2, 16)
    # only CLS and the 2 selected patches matter
    keep = attn[:, 0, 1:].topk(2).indices + 1
    other = tokens.clone()
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[:, 0] = False
    mask.scatter_(1, keep, False)
    other[mask] = torch.randn(int(mask.sum()), 8)
    assert torch.allclose(head.encode_image(other, attn), out, atol=1e-6)
    ids = torch.tensor([[49406, 5, 6, 7, 49407, 0, 0, 0, 0, 0, 0, 0]] * 2)
    assert head.encode_text(torch.randn(2, 12, 8), torch.rand(2, 12, 12), ids).shape == (2, 16)


@pytest.fixture(scope="module")
def rda_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rda")
    make_synthetic(str(root), fmt="CUHK-PEDES", num_train_ids=12, num_test_ids=6, num_val_ids=3, seed=5,
                   with_rda=True)
    return str(root)


@pytest.mark.slow
def test_rda_captions_train_with_noise_and_alr_and_fused(rda_root, tmp_path):
    run = tmp_path / "rda"
    train_main.main(tiny_args(rda_root, run, "--noisy_rate", "0.5", "--num_epoch", "1", "--weighting", "alr",
                              "--embeddings", "bge", "fused", "--fused_dim", "32"))
    record = read_metrics(run)[0]
    assert {"loss/bge_rda_TAL", "loss/fused_rda_TAL", "loss/fused_TAL"} <= set(record)
    assert {"division/mean_weight_clean", "division/mean_weight_noisy"} <= set(record)
    assert 0 < record["division/mean_weight"] <= 1


@pytest.mark.slow
def test_pre_initialisation_needs_and_uses_pretrain_path(rda_root, tmp_path):
    from model.clip import CLIP, CLIPConfig
    with pytest.raises(SystemExit, match="--pretrain_path"):
        train_main.main(tiny_args(rda_root, tmp_path / "a", "--loss_names", "TAL+pre"))
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(**TINY_ARCH, image_size=(64, 32), context_length=77))
    # an MLLM4Text-ReID-style file: weights under 'model', with 'module.' prefixes
    path = tmp_path / "pre.pth"
    torch.save({"model": {f"module.base_model.{k}": v for k, v in clip.state_dict().items()}}, path)
    run = tmp_path / "pre"
    train_main.main(tiny_args(rda_root, run, "--loss_names", "TAL+pre", "--pretrain_path", str(path),
                              "--num_epoch", "1", "--lr", "0", "--head_lr", "0"))
    saved = torch.load(run / "last.pth", weights_only=False)["models"][0]
    torch.testing.assert_close(saved["backbone.visual.conv1.weight"], clip.visual.conv1.weight)
    assert saved["backbone.positional_embedding"].shape[0] == 40     # interpolated 77 -> 40 tokens


@pytest.mark.slow
def test_published_eval_mode_switch(rda_root, tmp_path, monkeypatch):
    from solver.engine import Engine
    seen = []
    real_step = Engine.train_step

    def spy(self, batch, weights, epoch):
        seen.append(self.models[0].training)
        return real_step(self, batch, weights, epoch)

    monkeypatch.setattr(Engine, "train_step", spy)
    train_main.main(tiny_args(rda_root, tmp_path / "quirk", "--num_epoch", "1", "--published_eval_mode"))
    assert seen and not any(seen)
    seen.clear()
    train_main.main(tiny_args(rda_root, tmp_path / "default", "--num_epoch", "1"))
    assert seen and all(seen)


@pytest.mark.slow
def test_twin_training_is_deterministic(rda_root, tmp_path):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        train_main.main(tiny_args(rda_root, run, "--twin", "--num_epoch", "1", "--noisy_rate", "0.5"))
        runs.append(run)
    ra, rb = (json.loads((r / "metrics.jsonl").read_text().splitlines()[0]) for r in runs)
    for key in ra:
        if "time" not in key:
            assert ra[key] == rb[key], key
    wa, wb = (torch.load(r / "last.pth", weights_only=False)["models"] for r in runs)
    assert len(wa) == 2
    for k in wa[1]:
        assert torch.equal(wa[1][k], wb[1][k]), k
    # the two models are independent: their heads differ
    assert not torch.equal(wa[0]["embeddings.tse.image_mlp.fc1.weight"], wa[1]["embeddings.tse.image_mlp.fc1.weight"])


def test_division_finds_permuted_pairs_of_a_noisy_synthetic_set(tmp_path):
    """The division's path (per-pair losses with in-batch negatives, one mixture per signal, CCD) on the
    synthetic training set at 50% noise, with features that know which image a caption was written for, as a
    trained model's do (end to end on the demo, the division reaches ~89% precision by epoch 15; the README)."""
    from datasets import build_dataset
    from datasets.noise import apply_noise, make_noisy_permutation
    from solver.division import clean_probability, consensus, division_quality, gmm_settings, votes_from_probability
    from solver.division_reads import division_losses

    make_synthetic(str(tmp_path), fmt="CUHK-PEDES", num_train_ids=60, num_test_ids=2, num_val_ids=2, seed=9)
    records = build_dataset("CUHK-PEDES", str(tmp_path)).train
    perm = make_noisy_permutation(len(records), 0.5, seed=0)
    noisy = apply_noise(records, perm)
    g = torch.Generator().manual_seed(0)
    pid_code = torch.nn.functional.normalize(torch.randn(max(r.pid for r in records) + 1, 32, generator=g), dim=-1)
    image = pid_code[[r.pid for r in records]] + 0.05 * torch.randn(len(records), 32, generator=g)
    # a caption describes the person it was written for: after the permutation, record perm[i]'s person
    text = pid_code[[records[j].pid for j in perm]] + 0.05 * torch.randn(len(records), 32, generator=g)
    from model.losses import build_loss

    class OneLoss:  # what division_losses needs of a model: its primary loss by name
        primary_loss = "TAL"
        tal = build_loss("TAL", EasyDict(tau=0.015, margin=0.1), 32, 1)

        def per_sample_losses(self, image_feats, text_feats, pids):
            return {("bge", "TAL"): self.tal(image_feats["bge"], text_feats["bge"], pids)}

    pids = torch.tensor([r.pid for r in noisy])
    order = torch.randperm(len(records), generator=g)
    losses = division_losses(OneLoss(), {"bge": image}, {"bge": text}, pids, order, batch_size=8)["bge"]
    votes = np.stack([votes_from_probability(clean_probability(losses.numpy(), gmm_settings(0.5, "CUHK-PEDES")))] * 2)
    # a caption moved to another image of its own person is no noise to any model: the truth is the person
    is_clean = np.array([records[j].pid == r.pid for j, r in zip(perm, records)])
    quality = division_quality(consensus(votes, torch.Generator().manual_seed(0)), is_clean)
    assert quality["noise_precision"] > 80 and quality["noise_recall"] > 80, quality
