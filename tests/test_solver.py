import numpy as np
import pytest
import torch
from easydict import EasyDict

from solver.division import clean_probability, consensus, division_quality, gmm_settings, votes_from_probability
from solver.scheduler import lr_factor
from configs import defaults

CFG = EasyDict(defaults())


def test_schedule_warms_up_then_cosine_to_zero():
    f = [lr_factor(e, CFG, 1e-5) for e in range(CFG.num_epoch + 1)]
    assert f[0] == pytest.approx(0.1)
    assert f[1] == pytest.approx(0.1 * 0.8 + 0.2)
    assert f[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[5:], f[6:]))
    assert f[CFG.num_epoch] == pytest.approx(0.0, abs=1e-12)


def test_gmm_splits_a_bimodal_loss():
    rng = np.random.default_rng(0)
    clean, noisy = rng.normal(1.0, 0.2, 800), rng.normal(4.0, 0.5, 200)
    votes = votes_from_probability(clean_probability(np.concatenate([clean, noisy]), gmm_settings(0.2, "CUHK-PEDES")))
    assert votes[:800].mean() > 0.97 and votes[800:].mean() < 0.03


def test_all_clean_still_marks_the_worst_one_percent():
    losses = np.linspace(0, 1, 1000) ** 8
    p_clean = clean_probability(np.full(1000, 0.5) + 1e-9 * np.arange(1000), gmm_settings(0.0, "CUHK-PEDES"))
    assert (~votes_from_probability(p_clean)).sum() >= 10
    assert votes_from_probability(clean_probability(losses, gmm_settings(0.0, "x"))).sum() < 1000


def test_consensus_rules():
    votes = np.array([[1, 1, 0, 0] * 500, [1, 0, 1, 0] * 500], dtype=bool)
    w = consensus(votes, torch.Generator().manual_seed(0)).numpy().reshape(-1, 4)
    assert (w[:, 0] == 1).all() and (w[:, 3] == 0).all()
    assert 0.4 < w[:, 1:3].mean() < 0.6           # the coin
    again = consensus(votes, torch.Generator().manual_seed(0)).numpy().reshape(-1, 4)
    assert (w == again).all()


def test_division_quality_against_known_noise():
    is_clean = np.array([True] * 6 + [False] * 4)
    w = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 1.0])
    q = division_quality(w, is_clean)
    assert q["kept"] == 6 and q["noise_precision"] == pytest.approx(75.0) and q["noise_recall"] == pytest.approx(75.0)


def test_gmm_settings_follow_rde():
    assert gmm_settings(0.5, "CUHK-PEDES")["max_iter"] == 100
    assert gmm_settings(0.0, "RSTPReid")["reg_covar"] == 1e-6
    assert gmm_settings(0.2, "CUHK-PEDES", {"tol": 0.5})["tol"] == 0.5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: set_sync_debug_mode is a CUDA feature")
def test_the_training_step_never_waits_for_the_gpu():
    """Twins, BGE+TSE+ID, bf16, fused Adam: after the first step (lazy optimiser state), a step launches its
    kernels without one host-device sync, so the CPU runs ahead and the GPU never idles between steps."""
    from solver.build import build_engine
    from configs import resolve

    arch = {"embed_dim": 64, "vision_width": 64, "vision_layers": 1, "vision_heads": 1,
            "text_width": 64, "text_heads": 1, "text_layers": 1}
    cfg = resolve({"pretrain_choice": "random", "clip_arch": arch, "img_size": [64, 32], "text_length": 16,
                   "tse_dim": 32, "loss_names": "TAL+ID", "twin": True, "device": "cuda"}, {})
    trainer = build_engine(cfg, num_classes=10)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 400, (8, 2, 16), generator=g)
    ids[..., 0], ids[..., 10], ids[..., 11:] = 49406, 49407, 0           # SOT, words, EOT, padding
    batch = {"images": torch.randint(0, 256, (8, 2, 3, 64, 32), generator=g, dtype=torch.uint8), "caption_ids": ids,
             "pid": torch.arange(8) % 4, "index": torch.arange(8)}
    batch = {k: v.cuda() for k, v in batch.items()}
    weights = torch.ones(8, device="cuda")
    trainer.optimizer_step(trainer.train_step(batch, weights, 1)[0])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            loss, _ = trainer.train_step(batch, weights, 1)
            trainer.optimizer_step(loss)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
