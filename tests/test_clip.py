import argparse
import dataclasses
import os
import warnings

import pytest
import torch

import model.clip as clip_mod
from model.clip import (CLIP, CLIPConfig, build_clip, config_from_state_dict, interpolate_text_pos_embed,
                        interpolate_vision_pos_embed, load_clip, load_state_dict_file)

# Head width 64 like every OpenAI CLIP, so that config_from_state_dict (heads = width // 64) rebuilds it.
TINY = dict(embed_dim=32, image_size=(64, 32), patch_size=16, stride=16, vision_width=128, vision_layers=2,
            vision_heads=2, context_length=16, vocab_size=512, text_width=128, text_heads=2, text_layers=2)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")


def make_model(seed=0, **overrides) -> CLIP:
    torch.manual_seed(seed)
    model = CLIP(CLIPConfig(**{**TINY, **overrides})).eval()
    # Non-zero biases and LayerNorm affines so that a wrongly wired parameter cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_final"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_ids(batch=3, length=16, lengths=(5, 9, 14), vocab=512) -> torch.Tensor:
    ids = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate(lengths[:batch]):
        ids[i, 0] = vocab - 2  # SOT-like: second largest
        ids[i, 1:n - 1] = torch.randint(1, vocab - 3, (n - 2,))
        ids[i, n - 1] = vocab - 1  # EOT-like: largest, found by argmax
    return ids


def images(batch=3, size=(64, 32)) -> torch.Tensor:
    return torch.randn(batch, 3, *size)


@pytest.fixture(scope="module")
def tiny() -> CLIP:
    return make_model()


# ----------------------------------------------------------------------------- reference forward


def reference_tower(transformer, x, causal):
    """Slow, independent forward of a Transformer: per-head loops and an explicit softmax."""
    attn_avg = None
    for block in transformer.resblocks:
        attn = block.attn
        h = block.ln_1(x)
        width = h.shape[-1]
        wq, wk, wv = attn.in_proj_weight.split(width)
        bq, bk, bv = attn.in_proj_bias.split(width)
        q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv
        d = width // attn.heads
        heads_out, heads_attn = [], []
        for i in range(attn.heads):
            sl = slice(i * d, (i + 1) * d)
            s = q[..., sl] @ k[..., sl].transpose(-1, -2) / d ** 0.5
            if causal:
                n = s.shape[-1]
                s = s + torch.full((n, n), float("-inf")).triu(1)
            p = torch.exp(s - s.max(-1, keepdim=True).values)
            p = p / p.sum(-1, keepdim=True)
            heads_attn.append(p)
            heads_out.append(p @ v[..., sl])
        x = x + attn.out_proj(torch.cat(heads_out, -1))
        x = x + block.mlp.c_proj(block.mlp.gelu(block.mlp.c_fc(block.ln_2(x))))
        attn_avg = torch.stack(heads_attn).mean(0)
    return x, attn_avg


@torch.no_grad()
def test_matches_reference_forward(tiny):
    img, ids = images(), make_ids()
    v = tiny.visual
    x = v.conv1(img).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(3, 1, -1), x], 1) + v.positional_embedding
    x, ref_img_attn = reference_tower(v.transformer, v.ln_pre(x), causal=False)
    ref_img_tokens = v.ln_post(x) @ v.proj

    x = tiny.token_embedding(ids) + tiny.positional_embedding
    x, ref_txt_attn = reference_tower(tiny.transformer, x, causal=True)
    ref_txt_tokens = tiny.ln_final(x) @ tiny.text_projection

    img_tokens, img_attn = tiny.encode_image_tokens(img)
    txt_tokens, txt_attn = tiny.encode_text_tokens(ids)
    torch.testing.assert_close(img_tokens, ref_img_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(img_attn, ref_img_attn, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(txt_tokens, ref_txt_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt_attn, ref_txt_attn, atol=1e-6, rtol=1e-5)
    # Global embeddings: the CLS / EOT entries of the token sequences.
    torch.testing.assert_close(tiny.encode_image(img), ref_img_tokens[:, 0], atol=1e-5, rtol=1e-5)
    eot = ref_txt_tokens[torch.arange(3), ids.argmax(-1)]
    torch.testing.assert_close(tiny.encode_text(ids), eot, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_shapes_and_attention_maps(tiny):
    tokens, attn = tiny.encode_image_tokens(images())
    assert tokens.shape == (3, 1 + 8, 32) and attn.shape == (3, 9, 9)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 9))
    tokens, attn = tiny.encode_text_tokens(make_ids())
    assert tokens.shape == (3, 16, 32) and attn.shape == (3, 16, 16)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 16))
    assert (attn.triu(1) == 0).all() and (attn.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert tiny.encode_image(images()).shape == (3, 32)
    assert tiny.encode_text(make_ids()).shape == (3, 32)
    assert tiny.dtype == torch.float32


@torch.no_grad()
def test_shorter_text_is_a_prefix(tiny):
    # Causal attention: a text cut before the padding gives the same tokens as the padded one.
    ids = make_ids(lengths=(5, 9, 14))
    full, _ = tiny.encode_text_tokens(ids)
    short, _ = tiny.encode_text_tokens(ids[:, :14])
    torch.testing.assert_close(short, full[:, :14], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="context_length"):
        tiny.encode_text(torch.zeros(1, 17, dtype=torch.long))


def test_overlapping_patches():
    model = make_model(stride=8)
    assert model.config.grid_size == (7, 3)  # (64 - 16) // 8 + 1, (32 - 16) // 8 + 1
    tokens, attn = model.encode_image_tokens(images())
    assert tokens.shape == (3, 22, 32) and attn.shape == (3, 22, 22)
    with pytest.raises(ValueError, match="patch grid"):
        model.encode_image(images(size=(96, 32)))


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(vision_width=100, vision_heads=12)
    with pytest.raises(ValueError, match="stride"):
        CLIPConfig(stride=20)
    assert CLIPConfig(image_size=[384, 128]).image_size == (384, 128)
    assert CLIPConfig().num_patches == 192


def test_backward_and_init(tiny):
    model = make_model()
    model.train()
    tok, _ = model.encode_image_tokens(images())
    txt, _ = model.encode_text_tokens(make_ids())
    (tok.square().mean() + txt.square().mean()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n != "logit_scale")
    # OpenAI init scales: text position table std 0.01, token embedding 0.02.
    fresh = CLIP(CLIPConfig(**TINY))
    assert abs(fresh.positional_embedding.std().item() - 0.01) < 0.003
    assert abs(fresh.token_embedding.weight.std().item() - 0.02) < 0.002


# ----------------------------------------------------------------------------- open_clip parity


@torch.no_grad()
def test_matches_open_clip():
    oc = pytest.importorskip("open_clip.model")
    torch.manual_seed(1)
    ref = oc.CLIP(
        32,
        vision_cfg=oc.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=(64, 32)),
        text_cfg=oc.CLIPTextCfg(context_length=16, vocab_size=512, width=64, heads=2, layers=2),
        quick_gelu=True,
    ).eval()
    sd = ref.state_dict()
    # open_clip keeps its causal mask as a non-persistent buffer: the key sets are identical.
    cfg = dataclasses.replace(config_from_state_dict(sd), vision_heads=2, text_heads=2)
    ours = CLIP(cfg).eval()
    ours.load_state_dict(sd, strict=True)

    img, ids = images(), make_ids()
    torch.testing.assert_close(ours.encode_image(img), ref.encode_image(img), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), atol=1e-5, rtol=1e-5)
    tokens, _ = ours.encode_image_tokens(img)
    torch.testing.assert_close(tokens[:, 0], ref.encode_image(img), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- loading


def check_same_outputs(a: CLIP, b: CLIP):
    img, ids = images(), make_ids()
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(img), b.encode_image(img), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(a.encode_text(ids), b.encode_text(ids), atol=1e-6, rtol=1e-6)


def check_loaded(model: CLIP):
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad for p in model.parameters())


def test_config_from_state_dict(tiny):
    cfg = config_from_state_dict(tiny.state_dict())
    assert cfg == CLIPConfig(**TINY)
    # Non-square tables: the count is ambiguous, a 3:1 portrait is assumed unless told otherwise.
    sd = make_model(image_size=(96, 32)).state_dict()
    assert config_from_state_dict(sd).grid_size == (6, 2)
    assert config_from_state_dict(sd, source_grid=(4, 3)).grid_size == (4, 3)
    with pytest.raises(ValueError, match="cells"):
        config_from_state_dict(sd, source_grid=(5, 3))


def test_load_plain_state_dict_same_size(tmp_path, tiny):
    path = tmp_path / "plain.pt"
    torch.save(tiny.state_dict(), path)
    model = load_clip(path, image_size=(64, 32), stride=16, text_length=16)
    check_loaded(model)
    assert model.config == tiny.config
    check_same_outputs(model, tiny)


def test_load_resized(tmp_path, tiny):
    path = tmp_path / "plain.pt"
    torch.save(tiny.state_dict(), path)
    model = load_clip(path, image_size=(96, 48), stride=12, text_length=24)
    check_loaded(model)
    grid = ((96 - 16) // 12 + 1, (48 - 16) // 12 + 1)
    assert model.config.grid_size == grid
    pos = model.visual.positional_embedding
    assert pos.shape == (1 + grid[0] * grid[1], 128)
    torch.testing.assert_close(pos[0], tiny.visual.positional_embedding[0], rtol=0, atol=0)
    torch.testing.assert_close(pos, interpolate_vision_pos_embed(tiny.visual.positional_embedding, (4, 2), grid))
    assert model.positional_embedding.shape == (24, 128)
    torch.testing.assert_close(model.positional_embedding,
                               interpolate_text_pos_embed(tiny.positional_embedding, 24))

    with torch.no_grad():
        tokens, attn = model.encode_image_tokens(images(size=(96, 48)))
        assert tokens.shape == (3, 1 + grid[0] * grid[1], 32) and attn.shape[-1] == tokens.shape[1]
        tokens, attn = model.encode_text_tokens(make_ids(length=24, lengths=(5, 20, 24)))
        assert tokens.shape == (3, 24, 32) and attn.shape == (3, 24, 24)
        assert torch.isfinite(tokens).all()
    # Every other weight is untouched.
    ref = tiny.state_dict()
    for k, v in model.state_dict().items():
        if "positional_embedding" not in k:
            assert torch.equal(v, ref[k]), k


def test_interpolation_helpers():
    torch.manual_seed(0)
    pos = torch.randn(1 + 4 * 2, 8)
    assert torch.equal(interpolate_vision_pos_embed(pos, (4, 2), (4, 2)), pos)
    up = interpolate_vision_pos_embed(pos, (4, 2), (8, 4))
    assert up.shape == (33, 8) and torch.equal(up[0], pos[0])
    # A constant grid stays constant under bilinear resizing.
    const = torch.cat([pos[:1], torch.ones(8, 8)])
    torch.testing.assert_close(interpolate_vision_pos_embed(const, (4, 2), (24, 8))[1:], torch.ones(192, 8))
    text = torch.randn(77, 8)
    assert torch.equal(interpolate_text_pos_embed(text, 77), text)
    longer = interpolate_text_pos_embed(text, 168)
    assert longer.shape == (168, 8)
    torch.testing.assert_close(longer[0], text[0])
    torch.testing.assert_close(longer[-1], text[-1])
    assert interpolate_text_pos_embed(text.half(), 30).dtype == torch.float16


def test_load_prefixed_checkpoint_dicts(tmp_path, tiny):
    sd = tiny.state_dict()
    # IRRA/RDE: CLIP under base_model., heads beside it, DDP adds module.; a training checkpoint
    # carries the state dict under `model` plus non-tensor entries.
    wrapped = {f"module.base_model.{k}": v for k, v in sd.items()}
    wrapped["module.classifier.weight"] = torch.randn(10, 32)
    wrapped["module.base_model.extra_adapter.weight"] = torch.randn(4, 4)  # bigger model, outside CLIP
    wrapped["module.base_model.input_resolution"] = torch.tensor(224)
    for name, payload in {
        "model.pt": {"model": wrapped, "epoch": 3, "note": "irra"},
        "state_dict.pt": {"state_dict": {f"base_model.{k}": v for k, v in sd.items()}},
        "module.pt": {f"module.{k}": v for k, v in sd.items()},
        "with_args.pt": {"model": sd, "args": argparse.Namespace(lr=1e-5)},
    }.items():
        torch.save(payload, tmp_path / name)
        # pickled training arguments (argparse.Namespace) are plain data: read by the safe loader, no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = load_state_dict_file(tmp_path / name)
        assert set(loaded) == set(sd), name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = load_clip(tmp_path / name, image_size=(64, 32), stride=16, text_length=16)
        check_same_outputs(model, tiny)


def test_load_fp16_and_non_tensor_entries(tmp_path, tiny):
    # OpenAI's file stores fp16 weights plus a few bookkeeping entries.
    sd = {k: v.half() for k, v in tiny.state_dict().items()}
    sd.update(input_resolution=torch.tensor(64), context_length=16, vocab_size=512)
    torch.save(sd, tmp_path / "half.pt")
    model = load_clip(tmp_path / "half.pt", image_size=(64, 32), stride=16, text_length=16)
    check_loaded(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k].float()), k


def test_load_torchscript_archive(tmp_path, tiny):
    traced = torch.jit.trace(tiny, (images(), make_ids()), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    assert set(load_state_dict_file(path)) == set(tiny.state_dict())
    model = load_clip(path, image_size=(64, 32), stride=16, text_length=16)
    check_loaded(model)
    check_same_outputs(model, tiny)
    resized = load_clip(path, image_size=(96, 32), stride=16, text_length=20)
    assert resized.visual.positional_embedding.shape == (1 + 6 * 2, 128)


def test_build_clip(tmp_path, monkeypatch, tiny):
    arch = {k: v for k, v in TINY.items() if k not in ("image_size", "stride", "context_length")}
    model = build_clip("random", image_size=(96, 32), stride=8, text_length=20, arch=arch)
    assert model.config.image_size == (96, 32) and model.config.stride == 8 and model.config.context_length == 20
    assert build_clip(None, (64, 32), 16, 16, arch).config == CLIPConfig(**TINY)

    path = tmp_path / "weights.pt"
    torch.save(tiny.state_dict(), path)
    check_same_outputs(build_clip(str(path), (64, 32), 16, 16), tiny)

    monkeypatch.setattr(clip_mod, "OPENAI_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cache" / "ViT-B-16.pt")):
        build_clip("ViT-B/16", (64, 32), 16, 16)
    os.makedirs(tmp_path / "cache")
    torch.save(tiny.state_dict(), tmp_path / "cache" / "ViT-B-16.pt")
    check_same_outputs(build_clip("ViT-B/16", (64, 32), 16, 16), tiny)


# ----------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_clip(path)
    assert str(path) in str(err.value) and "download" in str(err.value)
    with pytest.raises(ValueError, match="CLIP"):
        load_clip(None)
    with pytest.raises(ValueError):
        load_clip("random")


def test_truncated_files(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "full.pt")
    torch.jit.trace(tiny, (images(), make_ids()), check_trace=False).save(str(tmp_path / "full_jit.pt"))
    for name in ("full.pt", "full_jit.pt"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=f"cut_{name}.*expected"):
            load_state_dict_file(cut)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    for path in (junk, text):
        with pytest.raises(ValueError, match=path.name):
            load_clip(path)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="list.pt.*list"):
        load_state_dict_file(listing)


def test_no_clip_keys(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2), "fc.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"resnet\.pt.*no CLIP weights.*fc\.weight"):
        load_clip(path)


def test_incomplete_state_dict(tmp_path, tiny):
    sd = tiny.state_dict()
    del sd["transformer.resblocks.1.mlp.c_fc.bias"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match=r"partial\.pt.*transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        load_clip(tmp_path / "partial.pt", image_size=(64, 32), stride=16, text_length=16)


# ----------------------------------------------------------------------------- precision


@torch.no_grad()
def test_autocast_bf16_cpu(tiny):
    img, ids = images(), make_ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img_tokens, img_attn = tiny.encode_image_tokens(img)
        txt_tokens, txt_attn = tiny.encode_text_tokens(ids)
        img_emb, txt_emb = tiny.encode_image(img), tiny.encode_text(ids)
    for t in (img_tokens, img_attn, txt_tokens, txt_attn, img_emb, txt_emb):
        assert torch.isfinite(t).all()
    assert img_tokens.dtype == torch.bfloat16
    torch.testing.assert_close(img_attn.sum(-1), torch.ones(3, 9), atol=1e-3, rtol=0)
    assert (txt_attn.triu(1) == 0).all()
    torch.testing.assert_close(img_emb.float(), tiny.encode_image(img), atol=0.1, rtol=0.1)
    torch.testing.assert_close(txt_emb.float(), tiny.encode_text(ids), atol=0.1, rtol=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_autocast_cuda(dtype):
    model = make_model().cuda()
    img, ids = images().cuda(), make_ids().cuda()
    with torch.autocast("cuda", dtype=dtype):
        img_tokens, img_attn = model.encode_image_tokens(img)
        txt_tokens, txt_attn = model.encode_text_tokens(ids)
        img_emb, txt_emb = model.encode_image(img), model.encode_text(ids)
    for t in (img_tokens, img_attn, txt_tokens, txt_attn, img_emb, txt_emb):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(img_emb.float(), model.encode_image(img), atol=0.1, rtol=0.1)
    torch.testing.assert_close(txt_tokens.float(), model.encode_text_tokens(ids)[0], atol=0.1, rtol=0.1)


def test_tensors_outside_the_clip_layout_are_named_in_the_log(tmp_path, caplog):
    import logging

    from model.clip import CLIP, CLIPConfig, load_state_dict_file

    sd = CLIP(CLIPConfig(embed_dim=16, image_size=(32, 32), vision_width=64, vision_layers=1, vision_heads=1,
                         text_width=64, text_layers=1, text_heads=1, context_length=8)).state_dict()
    path = tmp_path / "irra.pth"
    torch.save({"model": {**{f"base_model.{k}": v for k, v in sd.items()},
                          "classifier.weight": torch.zeros(3, 16)}}, path)
    logger = logging.getLogger("reid")
    logger.addHandler(caplog.handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        loaded = load_state_dict_file(path)
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
    assert set(loaded) == set(sd)
    assert "1 tensors outside the CLIP layout" in caplog.text and "classifier.weight" in caplog.text


def test_uint8_images_are_normalised_with_clips_statistics():
    """The loaders hand over uint8 images; the model normalises them as torchvision's ToTensor + Normalize did."""
    import torchvision.transforms as T

    from utils.constants import PIXEL_MEAN, PIXEL_STD

    model = make_model()
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (2, 3, *model.config.image_size), dtype=torch.uint8, generator=g)
    by_hand = T.Normalize(PIXEL_MEAN, PIXEL_STD)(raw.float() / 255)
    torch.testing.assert_close(model.encode_image(raw), model.encode_image(by_hand), atol=1e-5, rtol=1e-5)
    assert not any("pixel" in k for k in model.state_dict())      # the OpenAI key layout is unchanged
