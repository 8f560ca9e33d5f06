"""The published recipes do what the published code (IRRA, RDE, ICL) does: each rule and constant pinned with its
own numbers, so that a later change cannot drift silently (issue: published recipes = published code)."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from datasets.loaders import TrainPairs, build_train_loader
from datasets.synthetic import make_synthetic
from datasets.text_aug import MASK_ID
from datasets.transforms import TrainTransform, build_transforms, erase
from model import build_model
from model.clip import VisionTransformer, CLIPConfig
from utils.constants import PIXEL_MEAN, PIXEL_STD
from model.embeddings.selection import select_text_tokens
from solver.optimizer import build_optimizer, parameter_settings
from configs import OPTIONS, load_yaml, resolve

TINY = dict(embed_dim=32, vision_width=64, vision_layers=1, vision_heads=1, text_width=64, text_layers=1,
            text_heads=1)


def published_cfg(config="configs/rde/cuhk.yaml", **over):
    values = {**load_yaml(config), "pretrain_choice": "random", "clip_arch": TINY, "img_size": [64, 32],
              "text_length": 40, **over}
    return resolve({}, values)


PUBLISHED = ["configs/rde/cuhk.yaml", "configs/rde/ufine.yaml", "configs/3rtpr/rstp.yaml", "configs/icl/icfg.yaml"]


@pytest.mark.parametrize("config", PUBLISHED)
def test_published_recipes_use_adam_eps_1e3(config):
    cfg = resolve({}, load_yaml(config))
    assert cfg.optimizer == "Adam" and cfg.eps == 1e-3 and cfg.betas == [0.9, 0.999]
    assert cfg.division_read == "augmented" and cfg.img_aug and cfg.txt_aug
    # ICL's code trains in eval mode after the division pass; RDE's current code (and 3RTPR's) in train mode
    assert cfg.published_eval_mode == config.startswith("configs/icl/")


def test_learning_rate_and_weight_decay_per_parameter():
    cfg = published_cfg(loss_names="TAL+ID", text_length=77)
    model = build_model(cfg, num_classes=10)
    settings = parameter_settings(model, cfg)
    expect = {
        "backbone.visual.conv1.weight": (1e-5, 4e-5),
        "backbone.visual.transformer.resblocks.0.attn.in_proj_weight": (1e-5, 4e-5),
        # "bias" *in* the name: the attention's in_proj_bias is a bias for the published rule
        "backbone.visual.transformer.resblocks.0.attn.in_proj_bias": (2e-5, 0.0),
        "backbone.visual.transformer.resblocks.0.attn.out_proj.bias": (2e-5, 0.0),
        "backbone.visual.ln_pre.bias": (2e-5, 0.0),
        "backbone.positional_embedding": (1e-5, 4e-5),       # text length 77: no ICL factor
        # RDE's TSE lr is set after the bias rule: its biases train at 1e-3 too, without weight decay
        "embeddings.tse.image_mlp.fc1.weight": (1e-3, 4e-5),
        "embeddings.tse.image_mlp.fc1.bias": (1e-3, 0.0),
        "embeddings.tse.image_mlp.bn.weight": (1e-3, 4e-5),
        # IRRA's classifier: lr x lr_factor (5), biases too
        "losses.bge.ID.classifier.weight": (5e-5, 4e-5),
        "losses.bge.ID.classifier.bias": (5e-5, 0.0),
    }
    missing = set(expect) - set(settings)
    assert not missing, f"parameter names changed: {missing}; known: {sorted(settings)[:40]}"
    for name, (lr, decay) in expect.items():
        assert settings[name] == pytest.approx((lr, decay), rel=1e-12), name
    assert "backbone.logit_scale" not in settings                       # frozen
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    assert optimizer.defaults["eps"] == 1e-3
    assert 3 <= len(optimizer.param_groups) <= 6                       # a handful, not one per tensor
    grouped = {n: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for n in g["param_names"]}
    assert grouped == settings


@pytest.mark.parametrize("config, text_lr", [("configs/icl/ufine.yaml", 5e-5), ("configs/rde/ufine.yaml", 1e-5),
                                             ("configs/3rtpr/ufine.yaml", 1e-5)])
def test_only_icl_trains_the_text_position_embedding_faster_when_the_text_length_is_not_77(config, text_lr):
    """ICL's code gives the text position embedding lr x lr_factor at UFine6926's length 168; RDE's and 3RTPR's
    code have no such rule (applied to every recipe, it also sped up the demo's embedding 5x: issue 20)."""
    assert load_yaml(config)["text_length"] == 168
    cfg = published_cfg(config, text_length=168)
    settings = parameter_settings(build_model(cfg, num_classes=10), cfg)
    assert settings["backbone.positional_embedding"] == pytest.approx((text_lr, 4e-5))
    assert settings["backbone.visual.positional_embedding"] == pytest.approx((1e-5, 4e-5))   # the image's: never


def textured_image(seed=0, size=(150, 60)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def published_train_transform(size):
    """IRRA / RDE's build_transforms(is_train=True): float pipeline, normalised, then erased with the mean."""
    return T.Compose([T.Resize(size), T.RandomHorizontalFlip(0.5), T.Pad(10), T.RandomCrop(size), T.ToTensor(),
                      T.Normalize(PIXEL_MEAN, PIXEL_STD), T.RandomErasing(scale=(0.02, 0.4), value=PIXEL_MEAN)])


def test_training_pixels_equal_the_published_pipeline_erased_pixels_read_the_mean(tmp_path):
    """A training batch (images from the image cache, the flip / crop / erasing drawn per sample by the loader and
    applied on the batch by training_view) holds the published float pipeline's pixels for the same draws: the
    published transforms run on the decoded image with torch's generator seeded as the loader seeds the sample,
    views one after the other (twins)."""
    from datasets.bases import TrainRecord
    from datasets.loaders import read_image, sample_seed
    from datasets.transforms import training_view

    size = (64, 32)
    paths = []
    for k in range(40):
        paths.append(str(tmp_path / f"{k}.png"))
        textured_image(k, (150 + k, 60 + k % 7)).save(paths[-1])
    records = [TrainRecord(pid=k, image_id=k, img_path=p, caption="a man in a red coat") for k, p in enumerate(paths)]
    pairs = TrainPairs(records, size, text_length=16, num_views=2, seed=7, cache_dir=str(tmp_path / "cache"))
    pairs.prepare()
    assert pairs.images.cached
    batch = pairs.__getitems__([(k, 3, 1) for k in range(40)])           # epoch 3, stream 1
    visual = VisionTransformer(CLIPConfig(**TINY, image_size=size))
    got = [training_view(batch, view, visual.normalize) for view in range(2)]
    erased = 0
    for k, path in enumerate(paths):
        torch.manual_seed(sample_seed(7, 3, 1, k))
        img = read_image(path)
        for view in range(2):
            reference = published_train_transform(size)(img)
            torch.testing.assert_close(got[view][k], reference, atol=1e-5, rtol=0)
            top, left, h, w = batch["erase"][k, view].tolist()
            if h:
                erased += 1
                region = got[view][k][:, top:top + h, left:left + w]
                assert torch.equal(region, torch.tensor(PIXEL_MEAN).view(3, 1, 1).expand_as(region))
    assert 25 <= erased <= 55          # p = 0.5 of 80 views
    # the CPU reference of the same pipeline on one PIL image (TrainTransform) agrees too
    ours = TrainTransform(size, img_aug=True)
    for seed in range(10):
        img = textured_image(seed)
        torch.manual_seed(seed)
        reference = published_train_transform(size)(img)
        torch.manual_seed(seed)
        image, box = ours(img)
        torch.testing.assert_close(erase(visual.normalize(image[None]), torch.tensor([box]))[0], reference,
                                   atol=1e-5, rtol=0)


def test_resize_is_torchvisions_default_bilinear():
    img = textured_image(1, (200, 90))
    ours = build_transforms((64, 32), is_train=False)(img)
    bilinear = T.PILToTensor()(img.resize((32, 64), Image.BILINEAR))
    bicubic = T.PILToTensor()(img.resize((32, 64), Image.BICUBIC))
    assert torch.equal(ours, bilinear) and not torch.equal(ours, bicubic)


@pytest.fixture(scope="module")
def rda_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("published_data")
    make_synthetic(str(root), fmt="CUHK-PEDES", num_train_ids=4, num_test_ids=2, num_val_ids=1, seed=2)
    anno = root / "CUHK-PEDES" / "reid_raw.json"
    records = json.loads(anno.read_text())
    for r in records:
        if r["split"] == "train":
            r["diversity_captions"] = [[["a woman in a long red coat walking", "a lady wearing a red coat"],
                                        ["black boots with heels and a bag", "dark heeled boots, a bag"]]] \
                * len(r["captions"])
    anno.write_text(json.dumps(records))
    return str(root)


def test_rda_captions_get_the_text_augmentation_too(rda_root):
    from datasets import build_dataset
    ds = build_dataset("CUHK-PEDES", rda_root)
    plain = TrainPairs(ds.train, (64, 32), text_length=40, use_rda=True, seed=0)
    augmented = TrainPairs(ds.train, (64, 32), text_length=40, use_rda=True, txt_aug=True, seed=0)
    masked = 0
    for i in range(len(ds.train)):
        assert not (plain[i]["rda_ids"] == MASK_ID).any()
        masked += int((augmented[i]["rda_ids"] == MASK_ID).any())
    assert masked >= len(ds.train) // 3        # ~12 words, each masked with p 0.12
    # a sample's draws are a function of (seed, epoch, stream, index): the same key, the same item
    again = augmented[(3, 2, 0)]
    for key in ("image", "flip", "crop", "erase", "caption_ids", "rda_ids"):
        assert torch.equal(again[key], augmented[(3, 2, 0)][key])
    assert any(not torch.equal(augmented[(3, 2, 0)][key], augmented[(3, 5, 0)][key])
               for key in ("caption_ids", "crop", "flip", "erase"))


def test_the_last_partial_batch_is_trained_on(rda_root):
    from datasets import build_dataset
    ds = build_dataset("CUHK-PEDES", rda_root)
    loader = build_train_loader(ds.train, (64, 32), 40, batch_size=5, num_workers=0)
    sizes = [len(b["index"]) for b in loader]
    assert sum(sizes) == len(ds.train) and len(sizes) == -(-len(ds.train) // 5)
    assert sorted(torch.cat([b["index"] for b in loader]).tolist()) == list(range(len(ds.train)))


def test_all_clean_fallback_marks_the_n_over_100_plus_1_lowest_posteriors():
    from solver.division import votes_from_probability
    p_clean = 0.6 + 0.39 * np.random.default_rng(0).random(1000)      # the mixture calls every pair clean
    votes = votes_from_probability(p_clean)
    assert (~votes).sum() == 1000 // 100 + 1
    assert set(np.flatnonzero(~votes)) == set(np.argsort(p_clean)[:11])
    p_clean = np.r_[0.4, p_clean[1:]]                                  # one noisy already: no fallback
    assert np.flatnonzero(~votes_from_probability(p_clean)).tolist() == [0]


def test_text_selection_scores_padding_0_and_sot_eot_minus_1():
    ids = torch.tensor([[49406, 5, 6, 49407, 0, 0, 0, 0, 0, 0]])           # 2 real words, length 10
    attn = torch.full((1, 10, 10), 0.1)
    tokens = torch.arange(10, dtype=torch.float32).view(1, 10, 1)          # a token's feature is its position
    selected, keep = select_text_tokens(tokens, attn, ids, ratio=0.9)      # k = int(8 * 0.9) = 7
    positions = selected[0, :, 0].long().tolist()
    assert set(positions[:2]) == {1, 2} and set(positions[2:]) <= {4, 5, 6, 7, 8, 9}   # padding before SOT / EOT
    assert keep.tolist() == [[True, True, False, False, False, False, False]]


def test_option_defaults_are_the_published_ones():
    assert OPTIONS["eps"].default == 1e-3 and OPTIONS["lr_factor"].default == 5.0
    assert OPTIONS["bias_lr_factor"].default == 2.0
    assert OPTIONS["division_read"].default == "augmented" and OPTIONS["published_eval_mode"].default is False


def test_the_published_division_read_scores_each_twin_on_the_other_models_view(rda_root, tmp_path):
    from solver.build import build_engine
    from configs import parse_args
    cfg = parse_args(["--dataset_name", "CUHK-PEDES", "--root_dir", rda_root, "--pretrain_choice", "random",
                      "--clip_arch", json.dumps(TINY), "--img_size", "64", "32", "--text_length", "40",
                      "--tse_dim", "48", "--batch_size", "5", "--num_workers", "0", "--twin", "--use_rda", "false"])
    assert cfg.division_read == "augmented"
    trainer = build_engine(cfg, str(tmp_path))
    seen, real = [], trainer.view_images

    def spy(model, batch, view):
        seen.append((trainer.models.index(model), view))
        return real(model, batch, view)

    trainer.view_images = spy
    signals, positive_sim = trainer.division_signals(epoch=1)
    assert set(seen) == {(0, 1), (1, 0)}                     # 3RTPR: model 1 on view 2, model 2 on view 1
    n = len(trainer.data.records)
    assert sorted(signals) == ["model1/bge", "model1/tse", "model2/bge", "model2/tse"]
    assert all(v.shape == (n,) and np.isfinite(v).all() for v in signals.values())
    read = torch.cat([b["index"] for b in trainer.data.division_loader])             # every pair read once
    assert sorted(read.tolist()) == list(range(n))
    assert positive_sim.shape == (n,) and all(not m.training for m in trainer.models)   # eval mode, as published
    # the draws are a function of (seed, epoch): the same epoch reads the same views, another epoch others
    again, _ = trainer.division_signals(epoch=1)
    other, _ = trainer.division_signals(epoch=2)
    np.testing.assert_allclose(again["model1/tse"], signals["model1/tse"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(other["model1/tse"], signals["model1/tse"])
