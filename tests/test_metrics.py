import numpy as np
import pytest
import torch

from utils.metrics import rank_metrics


def reference_metrics(sim, qp, gp):
    """Straight from docs/METHOD.md §6, one query at a time."""
    r = {1: 0, 5: 0, 10: 0}
    aps, inps = [], []
    for q in range(sim.shape[0]):
        order = np.argsort(-sim[q], kind="stable")
        m = (gp[order] == qp[q]).astype(float)
        for k in r:
            r[k] += m[:k].any()
        if m.sum() == 0:
            aps.append(0.0), inps.append(0.0)
            continue
        ranks = np.arange(1, len(m) + 1)
        aps.append((m * np.cumsum(m) / ranks).sum() / m.sum())
        inps.append(m.sum() / (np.nonzero(m)[0].max() + 1))
    n = sim.shape[0]
    return {"R1": 100 * r[1] / n, "R5": 100 * r[5] / n, "R10": 100 * r[10] / n,
            "mAP": 100 * np.mean(aps), "mINP": 100 * np.mean(inps)}


def test_hand_computed_case():
    # query 0: its two images rank 1st and 3rd; query 1: its only image ranks 2nd
    sim = np.array([[0.9, 0.7, 0.5, 0.1],     # order: img0 (pid 0), img1 (pid 2), img2 (pid 0), img3
                    [0.8, 0.1, 0.3, 0.5]])    # order: img0 (pid 0), img3 (pid 1), ...
    qp, gp = np.array([0, 1]), np.array([0, 2, 0, 1])
    m = rank_metrics(sim, qp, gp)
    assert m["R1"] == pytest.approx(50.0)
    assert m["R5"] == pytest.approx(100.0)
    # AP: q0 = (1/1 + 2/3) / 2, q1 = 1/2 ; INP: q0 = 2/3, q1 = 1/2
    assert m["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5) / 2)
    assert m["mINP"] == pytest.approx(100 * (2 / 3 + 0.5) / 2)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_matches_reference_on_random_data(chunk):
    rng = np.random.default_rng(0)
    qp, gp = rng.integers(0, 15, 50), rng.integers(0, 15, 40)
    sim = rng.standard_normal((50, 40)).astype(np.float32)
    got = rank_metrics(torch.from_numpy(sim), qp, gp, chunk_size=chunk)
    want = reference_metrics(sim, qp, gp)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-6)


def test_perfect_and_shape_errors():
    gp = np.arange(6)
    assert rank_metrics(np.eye(6), gp, gp)["mAP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="expected"):
        rank_metrics(np.zeros((3, 5)), np.arange(3), np.arange(4))
