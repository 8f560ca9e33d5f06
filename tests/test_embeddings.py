import torch
from easydict import EasyDict

from model.embeddings import EMBEDDINGS, build_embedding
from model.embeddings.selection import select_image_tokens, select_text_tokens


def test_image_selection_takes_the_cls_rows_top_patches():
    b, n, d = 2, 1 + 10, 4
    tokens = torch.arange(b * n * d, dtype=torch.float).reshape(b, n, d)
    attn = torch.zeros(b, n, n)
    attn[:, 0, 0] = 5.0                      # CLS attending to itself must never be selected
    attn[0, 0, [3, 7, 9]] = torch.tensor([0.5, 0.9, 0.7])
    attn[1, 0, [1, 2, 4]] = torch.tensor([0.3, 0.2, 0.1])
    sel = select_image_tokens(tokens, attn, ratio=0.3)   # k = int(10 * 0.3) = 3
    assert sel.shape == (b, 3, d)
    assert torch.equal(sel[0], tokens[0, [7, 9, 3]])
    assert torch.equal(sel[1], tokens[1, [1, 2, 4]])


def test_text_selection_skips_sot_eot_padding_and_masks_short_captions():
    # caption 0: SOT w w w w EOT pad pad ; caption 1: SOT w EOT pad ...
    ids = torch.tensor([[49406, 5, 6, 7, 8, 49407, 0, 0, 0, 0, 0, 0],
                        [49406, 9, 49407, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    L, d = ids.shape[1], 3
    tokens = torch.randn(2, L, d)
    attn = torch.rand(2, L, L)
    attn[0, 5, 0] = attn[0, 5, 5] = 10.0     # SOT and EOT columns: excluded
    attn[0, 5, 6:] = 20.0                    # padding: excluded
    sel, keep = select_text_tokens(tokens, attn, ids, ratio=0.3)   # k = int(10 * 0.3) = 3
    order0 = attn[0, 5, 1:5].argsort(descending=True)[:3] + 1
    assert torch.equal(sel[0], tokens[0, order0])
    assert keep[0].tolist() == [True, True, True]
    assert sel[1, 0].equal(tokens[1, 1]) and keep[1].tolist() == [True, False, False]


def test_tse_pools_only_kept_tokens_and_has_the_configured_size():
    cfg = EasyDict(select_ratio=0.3, tse_dim=24)
    tse = build_embedding("tse", cfg, width=8).eval()
    ids = torch.tensor([[49406, 5, 49407] + [0] * 9, [49406, 5, 6, 7, 8, 9, 10, 49407] + [0] * 4])
    tokens, attn = torch.randn(2, 12, 8), torch.rand(2, 12, 12)
    out = tse.encode_text(tokens, attn, ids)
    assert out.shape == (2, 24)
    # caption 0 has one real word: its embedding depends on that token only
    tokens2 = tokens.clone()
    tokens2[0, 2:] = torch.randn(10, 8)
    assert torch.allclose(tse.encode_text(tokens2, attn, ids)[0], out[0])
    img = tse.encode_image(torch.randn(2, 1 + 20, 8), torch.rand(2, 21, 21))
    assert img.shape == (2, 24)
    assert {"bge", "tse"} <= set(EMBEDDINGS)
