import math

import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict

from model.losses import LOSSES, build_loss, drop_old_labels, parse_loss_names, register_loss

CFG = EasyDict(tau=0.015, margin=0.1, logit_scale=50.0)


def batch(seed=0, b=6, d=8):
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    pids = torch.tensor([0, 0, 1, 2, 2, 3])[:b]
    return img, txt, pids


def tal_reference(img, txt, pids, tau, m):
    """docs/METHOD.md §3.1, element by element."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    S = (txt @ img.t()).tolist()
    n = len(S)

    def row(S, i):
        pos = [j for j in range(n) if pids[i] == pids[j]]
        neg = [j for j in range(n) if pids[i] != pids[j]]
        z = sum(math.exp(S[i][j] / tau) for j in pos)
        pull = sum(math.exp(S[i][j] / tau) / z * S[i][j] for j in pos)
        push = tau * math.log(sum(math.exp(S[i][j] / tau) for j in neg))
        return max(0.0, m - pull + push)

    St = [list(r) for r in zip(*S)]
    return torch.tensor([row(S, i) + row(St, i) for i in range(n)])


def test_tal_matches_the_formula():
    img, txt, pids = batch()
    got = build_loss("TAL", EasyDict(CFG, tau=0.5, margin=0.3), 8, 4)(img, txt, pids)
    assert torch.allclose(got, tal_reference(img, txt, pids, 0.5, 0.3).float(), atol=1e-5)


def test_tal_gradient_finite_without_negatives():
    img = torch.randn(3, 4, requires_grad=True)
    txt = torch.randn(3, 4, requires_grad=True)
    loss = build_loss("TAL", CFG, 4, 1)(img, txt, torch.zeros(3, dtype=torch.long)).sum()
    loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


def test_trl_uses_the_hardest_negative():
    img, txt, pids = batch(1)
    tau = 1e-4  # alpha picks the most similar positive
    got = build_loss("TRL", EasyDict(CFG, tau=tau, margin=0.2), 8, 4)(img, txt, pids)
    S = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).t()
    P = pids[:, None] == pids[None]
    want = ((0.2 + S.masked_fill(P, -9).max(1).values - S.masked_fill(~P, -9).max(1).values).clamp(min=0)
            + (0.2 + S.t().masked_fill(P, -9).max(1).values - S.t().masked_fill(~P, -9).max(1).values).clamp(min=0))
    assert torch.allclose(got, want, atol=1e-4)


def test_sdm_is_zero_only_for_the_target_distribution():
    img, txt, pids = batch(2)
    sdm = build_loss("SDM", CFG, 8, 4)
    assert (sdm(img, txt, pids) > 0).all()
    # identical unit features per identity and a huge scale: the softmax equals the positive mask
    feats = F.one_hot(pids, 8).float()
    sharp = build_loss("SDM", EasyDict(CFG, logit_scale=1e4), 8, 4)
    assert sharp(feats, feats, pids).abs().max() < 1e-4


def test_infonce_and_id_shapes_and_gradients():
    img, txt, pids = batch(3)
    for name in ("InfoNCE", "ID"):
        loss = build_loss(name, CFG, 8, 4)
        out = loss(img.requires_grad_(), txt, pids)
        assert out.shape == (6,) and (out > 0).all()
    assert math.isclose(float(build_loss("ID", CFG, 8, 4)(img.detach(), txt, pids).mean()), 2 * math.log(4), rel_tol=0.05)


def test_loss_names_follow_rde_convention():
    assert parse_loss_names("TAL+sr0.3_tau0.015_margin0.1_n0.5") == ["TAL"]
    assert parse_loss_names("SDM+ID+free-text+a=b") == ["SDM", "ID"]
    assert parse_loss_names("TAL+pre") == ["TAL"]                      # ICL's flag
    assert set(LOSSES) >= {"TAL", "TRL", "InfoNCE", "SDM", "ID"}
    # a part without . = - is a loss or a flag: a mistyped or unregistered loss is not taken for a label
    with pytest.raises(ValueError, match=r"'SDMM' in 'TAL\+SDMM' is neither a registered loss \(did you mean SDM\?\)"):
        parse_loss_names("TAL+SDMM")
    for typo in ("InfoNCE2", "Smooth_InfoNCE", "infonce"):
        with pytest.raises(ValueError, match=rf"'{typo}' in 'TAL\+{typo}' is neither a registered loss \(did you mean "
                                             r"InfoNCE\?\) nor a label"):
            parse_loss_names(f"TAL+{typo}")
    with pytest.raises(ValueError, match="free_text.*nor a label.*a label holds one of . = -"):
        parse_loss_names("TAL+free_text")
    # written as a label, but a loss's typo
    with pytest.raises(ValueError, match=r"'SDM\.' in 'TAL\+SDM\.' is written as a label but is a typo of the loss "
                                         r"SDM: did you mean SDM\?"):
        parse_loss_names("TAL+SDM.")
    with pytest.raises(ValueError, match="registered loss.*label holds one of"):
        parse_loss_names("MLM")
    with pytest.raises(ValueError, match="names no loss"):
        parse_loss_names("sr0.3")
    with pytest.raises(ValueError, match="empty part"):
        parse_loss_names("TAL+")


def test_old_labels_are_dropped_from_run_folders_and_loss_names_are_identifiers():
    """Parts the earlier rule read as labels (a digit or _) and this one refuses; nothing else is dropped."""
    assert drop_old_labels("SDM+ID+free_text+sr0.3") == ("SDM+ID+sr0.3", ["free_text"])
    assert drop_old_labels("TAL+InfoNCE2") == ("TAL", ["InfoNCE2"])
    assert drop_old_labels("TAL+SDMM+pre") == ("TAL+SDMM+pre", [])       # an error then too: refused, not dropped
    with pytest.raises(ValueError, match=r"loss name 'my\.loss': use letters, digits and _"):
        register_loss("my.loss")
