"""Checkpoints in the published layouts (RDE / ICL, IRRA, MLLM4Text-ReID) evaluate as they are.

The tests cannot download the released files, so they build the published models' key layouts here, from the
published code's module names (RDE's CrossEmbeddingLayer_tse.py, IRRA's model/build.py), with random weights,
convert them to fp16 as the published build_model does, and torch.save them as the published Checkpointer
does.  Our model loaded from such a file must give the embeddings of the published forward (written here from
RDE's code, independently of model/published.py), and the same embeddings as the same weights in our layout.
"""
import copy
import json
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

import test as test_main
from inference.runs import load_checkpoint_files, random_model
from model.clip import CLIP, CLIPConfig, Transformer
from model.published import CheckpointMismatch, load_models, read_file
from utils.metrics import rank_metrics
from configs import resolve

TINY_CLIP = dict(embed_dim=32, vision_width=64, vision_layers=1, vision_heads=1,   # heads = width // 64, as
                 text_width=64, text_layers=1, text_heads=1)                     # the weights cannot tell
IMG, TEXT_LEN, TSE_DIM, RATIO = (64, 32), 40, 64, 0.3   # RDE's hidden size is TSE_DIM // 2 = CLIP width, as 1024 / 512


# ---------------------------------------------------------------- the published models' layouts, rebuilt
class PublishedMLP(nn.Module):
    """RDE's MLP(input, hidden, output, num_layers=2): `layers` and `bns` ModuleLists, a BN for every layer
    though the forward uses only the first."""

    def __init__(self, width, hidden, out):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(width, hidden), nn.Linear(hidden, out)])
        self.bns = nn.ModuleList([nn.BatchNorm1d(hidden), nn.BatchNorm1d(out)])

    def forward(self, x):
        b, n, d = x.shape
        x = self.layers[1](F.relu(self.bns[0](self.layers[0](x.reshape(b * n, d)))))
        return x.view(b, n, -1)


class PublishedVisual(nn.Module):          # VisualEmbeddingLayer: `linear` built, `fc` used
    def __init__(self, width, out):
        super().__init__()
        self.linear, self.fc, self.mlp = nn.Linear(width, out), nn.Linear(width, out), PublishedMLP(width, out // 2, out)


class PublishedText(nn.Module):            # TexualEmbeddingLayer
    def __init__(self, width, out):
        super().__init__()
        self.linear, self.mlp = nn.Linear(width, out), PublishedMLP(width, out // 2, out)


def published_clip(seed):
    torch.manual_seed(seed)
    clip = CLIP(CLIPConfig(**TINY_CLIP, image_size=IMG, context_length=TEXT_LEN))   # OpenAI's key layout
    return clip


class PublishedRDE(nn.Module):
    def __init__(self, seed=0, tse_dim=TSE_DIM):
        super().__init__()
        self.base_model = published_clip(seed)
        self.visul_emb_layer = PublishedVisual(32, tse_dim)
        self.texual_emb_layer = PublishedText(32, tse_dim)
        randomise_batchnorm(self, seed)


class PublishedIRRA(nn.Module):
    """IRRA with its ID and MLM heads (loss_names sdm+id+mlm, cmt_depth 2 here)."""

    def __init__(self, seed=0, num_classes=7, vocab=49408):
        super().__init__()
        self.base_model = published_clip(seed)
        width = 32
        self.classifier = nn.Linear(width, num_classes)
        self.cross_attn = nn.MultiheadAttention(width, 1, batch_first=True)
        self.cross_modal_transformer = Transformer(width, layers=2, heads=1)
        self.ln_pre_t, self.ln_pre_i, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlm_head = nn.Sequential()
        for name, layer in (("dense", nn.Linear(width, width)), ("gelu", nn.GELU()), ("ln", nn.LayerNorm(width)),
                            ("fc", nn.Linear(width, vocab))):
            self.mlm_head.add_module(name, layer)


def randomise_batchnorm(module, seed):
    """Running statistics away from (0, 1), so that a BN left out or mixed up changes the embeddings."""
    g = torch.Generator().manual_seed(seed + 100)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.num_batches_tracked.fill_(123)


def convert_weights_fp16(model):
    """What the published build_model does before training: Linear / conv / attention weights and the two
    projections in fp16; LayerNorm, BatchNorm and the embedding tables stay fp32."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.half()
        for name in ("in_proj_weight", "in_proj_bias", "proj", "text_projection"):
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter):
                p.data = p.data.half()
    return model


def published_state_dict(model):
    """The published CLIP has no logit_scale: its state dict never holds one."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("logit_scale")}


def save_published(model, path, ddp=False, optimizer=True):
    """As the published Checkpointer.save: model, optimizer, scheduler and the loop's counters."""
    sd = published_state_dict(model)
    if ddp:
        sd = {f"module.{k}": v for k, v in sd.items()}
    data = {"model": sd}
    if optimizer:
        data["optimizer"] = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4),
                                           "exp_avg_sq": torch.zeros(4)}},
                             "param_groups": [{"lr": 1e-5, "params": [0]}]}
        data["scheduler"] = {"last_epoch": 7, "base_lrs": [1e-5]}
    data.update(num_epoch=60, iteration=0, epoch=7)
    torch.save(data, path)
    return sd


def published_embeddings(model, images, ids, ratio=RATIO):
    """RDE's evaluation forward, from its code: BGE = projected CLS / EOT token; TSE = the top tokens of the CLS
    (EOT) attention row with the CLS (SOT, EOT) column set to -1 and padding multiplied by 0, l2-normalised,
    `fc` (image) / `linear` (text) plus the MLP, max over the kept tokens (text: the first min(words, k))."""
    model = copy.deepcopy(model).float().eval()
    clip = model.base_model
    with torch.no_grad():
        tok_i, att_i = clip.encode_image_tokens(images)
        att = att_i.clone()
        att[:, :, 0] = -1
        k = int((att.shape[1] - 1) * ratio)
        idx = att[:, 0].topk(k, dim=-1).indices
        x = F.normalize(tok_i.gather(1, idx[..., None].expand(-1, -1, tok_i.shape[-1])), dim=-1)
        tse_i = (model.visul_emb_layer.fc(x) + model.visul_emb_layer.mlp(x)).max(dim=1).values

        tok_t, att_t = clip.encode_text_tokens(ids)
        rows, eot = torch.arange(ids.shape[0]), ids.argmax(dim=-1)
        mask = (ids != 0).float()
        att = att_t.clone()
        att[rows, :, eot] = -1
        att[:, :, 0] = -1
        att = att[rows, eot] * mask
        k = int((ids.shape[1] - 2) * ratio)
        idx = att.topk(k, dim=-1).indices
        x = F.normalize(tok_t.gather(1, idx[..., None].expand(-1, -1, tok_t.shape[-1])), dim=-1)
        feats = model.texual_emb_layer.linear(x) + model.texual_emb_layer.mlp(x)
        words = (mask.sum(1) - 2).long()
        tse_t = torch.stack([feats[i, :min(int(words[i]), k)].max(dim=0).values for i in range(ids.shape[0])])
    return {"bge": tok_i[:, 0], "tse": tse_i}, {"bge": tok_t[rows, eot], "tse": tse_t}


# ---------------------------------------------------------------- our side
def tiny_cfg(**over):
    values = {"dataset_name": "CUHK-PEDES", "pretrain_choice": "random", "img_size": list(IMG),
              "text_length": TEXT_LEN, "embeddings": ["bge", "tse"], "test_batch_size": 32, "num_workers": 0,
              "precision": "fp32", "device": "cpu", **over}
    if "tse" in values["embeddings"]:       # TSE's options only where it is trained (others' are refused)
        values = {"tse_dim": TSE_DIM, "select_ratio": RATIO, **values}
    return resolve({}, values)


def load(paths, cfg):
    return load_models([str(p) for p in paths], cfg, lambda c, arch: random_model(c, arch, 5), torch.device("cpu"))


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (5, 3, *IMG), dtype=torch.uint8, generator=g)
    ids = torch.zeros(5, TEXT_LEN, dtype=torch.long)
    for i, n in enumerate((3, 9, 17, 30, TEXT_LEN)):
        ids[i, 0], ids[i, 1:n - 1], ids[i, n - 1] = 49406, torch.randint(1, 49000, (n - 2,), generator=g), 49407
    return images, ids


def our_embeddings(model, images, ids):
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def assert_same(got, expected, names):
    for name in names:
        torch.testing.assert_close(got[name].float(), expected[name].float(), atol=2e-4, rtol=2e-4, msg=name)


def every_tensor(path):
    """Dotted names of all tensors in a file, nested entries (optimizer state) included."""
    def walk(obj, prefix):
        if isinstance(obj, torch.Tensor):
            yield prefix
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from walk(v, f"{prefix}.{i}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in obj:   # the model's tensors are named as in the state dict, the rest by their entry
        return set(obj["model"]) | {n for k, v in obj.items() if k != "model" for n in walk(v, k)}
    return set(walk(obj, ""))


# ---------------------------------------------------------------- RDE / ICL
@pytest.fixture
def rde(tmp_path):
    model = convert_weights_fp16(PublishedRDE(seed=0))
    path = tmp_path / "best.pth"
    save_published(model, path)
    return model, path


def test_rde_file_gives_the_published_forwards_embeddings(rde):
    published, path = rde
    (model,), (report,) = load([path], tiny_cfg())
    images, ids = inputs()
    ref_i, ref_t = published_embeddings(published, images, ids)
    got_i, got_t = our_embeddings(model, images, ids)
    assert_same(got_i, ref_i, ["bge", "tse"])
    assert_same(got_t, ref_t, ["bge", "tse"])
    assert report.layout == "RDE / ICL" and report.epoch == 7
    # fp16 in the file, fp32 master weights in the model
    assert read_file(str(path)).states[0]["visul_emb_layer.fc.weight"].dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_rde_every_tensor_is_loaded_or_named_unused_with_its_reason(rde):
    _, path = rde
    (_,), (report,) = load([path], tiny_cfg())
    assert set(report.loaded) | set(report.unused) == every_tensor(path)
    assert not set(report.loaded) & set(report.unused)
    assert "fc" in report.unused["visul_emb_layer.linear.weight"]            # built, never used by the forward
    for name in ("visul_emb_layer.mlp.bns.1.running_var", "texual_emb_layer.mlp.bns.1.weight"):
        assert "skips" in report.unused[name]
    assert report.unused["optimizer.state.0.exp_avg"].startswith("optimizer state")
    assert set(report.kept) == {"backbone.logit_scale"}
    text = "\n".join(report.lines())
    assert "visul_emb_layer.linear.weight" in text and "optimizer state" in text


def test_rde_file_equals_the_same_weights_in_our_layout(tmp_path):
    """Our model -> RDE's names (a table written here from RDE's module names) -> fp16 file -> our model again."""
    torch.manual_seed(3)
    ours = random_model(tiny_cfg(), TINY_CLIP, 5).eval()
    randomise_batchnorm(ours, 3)
    for t in ours.state_dict().values():             # the published file keeps fp16 precision: start from it
        if t.is_floating_point():
            t.copy_(t.half().float())
    sd = ours.state_dict()
    published = {"base_model." + k[len("backbone."):]: v.clone() for k, v in sd.items()
                 if k.startswith("backbone.") and k != "backbone.logit_scale"}
    for side, head, residual in (("image_mlp", "visul_emb_layer", "fc"), ("text_mlp", "texual_emb_layer", "linear")):
        p = f"embeddings.tse.{side}."
        for ours_name, theirs in (("linear", residual), ("fc1", "mlp.layers.0"), ("fc2", "mlp.layers.1"),
                                  ("bn", "mlp.bns.0")):
            for k, v in sd.items():
                if k.startswith(p + ours_name + "."):
                    published[f"{head}.{theirs}.{k[len(p + ours_name) + 1:]}"] = v.clone()
        last_bn = nn.BatchNorm1d(TSE_DIM).state_dict()                   # built by RDE, never used
        published.update({f"{head}.mlp.bns.1.{k}": v for k, v in last_bn.items()})
    published["visul_emb_layer.linear.weight"] = torch.randn(TSE_DIM, 32)
    published["visul_emb_layer.linear.bias"] = torch.randn(TSE_DIM)
    half = re.compile(r".*(in_proj_weight|in_proj_bias|out_proj\.\w+|c_fc\.\w+|c_proj\.\w+|conv1\.weight|visual\.proj"
                      r"|text_projection|\.fc\.\w+|\.linear\.\w+|layers\.\d\.\w+)")
    published = {k: v.half() if half.fullmatch(k) else v for k, v in published.items()}
    torch.save({"model": published, "epoch": 60}, tmp_path / "ours_as_rde.pth")

    (loaded,), (report,) = load([tmp_path / "ours_as_rde.pth"], tiny_cfg())
    assert set(report.loaded) | set(report.unused) == set(published)
    images, ids = inputs(1)
    got_i, got_t = our_embeddings(loaded, images, ids)
    ref_i, ref_t = our_embeddings(ours, images, ids)
    assert_same(got_i, ref_i, ["bge", "tse"])
    assert_same(got_t, ref_t, ["bge", "tse"])


def test_ddp_prefixes_load_the_same(tmp_path, rde):
    published, _ = rde
    save_published(published, tmp_path / "ddp.pth", ddp=True)
    (model,), (report,) = load([tmp_path / "ddp.pth"], tiny_cfg())
    assert "module." in report.layout and all(k.startswith("module.") for k in report.loaded)
    images, ids = inputs()
    assert_same(our_embeddings(model, images, ids)[1], published_embeddings(published, images, ids)[1], ["tse"])


def test_bge_only_config_names_the_tse_head_unused(rde):
    _, path = rde
    (model,), (report,) = load([path], tiny_cfg(embeddings=["bge"]))
    assert list(model.embeddings) == ["bge"]
    assert "add tse" in report.unused["texual_emb_layer.linear.weight"]


# ---------------------------------------------------------------- mismatches stop with the fix
def test_tse_dimension_mismatch_names_the_option(rde):
    _, path = rde
    with pytest.raises(CheckpointMismatch, match=r"tse_dim") as e:
        load([path], tiny_cfg(tse_dim=2 * TSE_DIM))
    assert str(path) in str(e.value) and "visul_emb_layer.fc.weight (64, 32)" in str(e.value)


def test_image_size_mismatch_names_the_option(rde):
    _, path = rde
    with pytest.raises(CheckpointMismatch, match=r"img_size \[96, 32\].*--img_size"):
        load([path], tiny_cfg(img_size=[96, 32]))
    with pytest.raises(CheckpointMismatch, match=r"--text_length 40"):
        load([path], tiny_cfg(text_length=77))


def test_ratio_recorded_beside_the_file_is_checked(rde):
    _, path = rde
    # the published save_train_configs: yaml.dump(vars(args)), a tuple image size tagged python/tuple
    beside = path.parent / "configs.yaml"
    beside.write_text(yaml.dump({"select_ratio": 0.5, "img_size": tuple(IMG), "stride_size": 16,
                                 "text_length": TEXT_LEN, "dataset_name": "CUHK-PEDES"}, default_flow_style=False))
    assert "!!python/tuple" in beside.read_text()
    with pytest.raises(CheckpointMismatch, match=r"select_ratio was 0.5 in training.*--select_ratio 0.5"):
        load([path], tiny_cfg())
    (_,), (report,) = load([path], tiny_cfg(select_ratio=0.5))
    assert any("checked against" in n for n in report.notes)
    beside.unlink()
    (_,), (report,) = load([path], tiny_cfg())
    assert any("select_ratio 0.3 assumed" in n for n in report.notes)


def test_unknown_tensors_stop_the_load(tmp_path, rde):
    published, _ = rde
    sd = published_state_dict(published)
    sd["prompt_learner.ctx"] = torch.zeros(4, 32)
    torch.save({"model": sd}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointMismatch, match=r"no known layout.*prompt_learner\.ctx"):
        load([tmp_path / "odd.pth"], tiny_cfg())


# ---------------------------------------------------------------- IRRA family, MLLM4Text-ReID
def test_irra_file_is_its_bge_embedding_and_its_heads_are_named(tmp_path):
    irra = convert_weights_fp16(PublishedIRRA(seed=4))
    save_published(irra, tmp_path / "irra.pth")
    (model,), (report,) = load([tmp_path / "irra.pth"], tiny_cfg(embeddings=["bge"]))
    assert report.layout == "IRRA family"
    assert set(report.loaded) | set(report.unused) == every_tensor(tmp_path / "irra.pth")
    assert "ID-loss classifier" in report.unused["classifier.weight"]
    for name in ("cross_attn.in_proj_weight", "cross_modal_transformer.resblocks.0.mlp.c_fc.weight",
                 "ln_pre_t.weight", "ln_pre_i.bias", "ln_post.weight", "mlm_head.fc.weight"):
        assert "masked-language" in report.unused[name], name
    assert "cross_modal_transformer.resblocks.{0-1}.attn.in_proj_weight" in "\n".join(report.lines())
    images, ids = inputs()
    clip = copy.deepcopy(irra.base_model).float()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images)["bge"], clip.encode_image(images), atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(model.encode_text(ids)["bge"], clip.encode_text(ids), atol=2e-4, rtol=2e-4)
    with pytest.raises(CheckpointMismatch, match=r"embeddings \['bge'\].*--embeddings bge"):
        load([tmp_path / "irra.pth"], tiny_cfg())
    with pytest.raises(CheckpointMismatch, match=r"fused head"):
        load([tmp_path / "irra.pth"], tiny_cfg(embeddings=["bge", "fused"]))


def test_mllm4text_reid_file_with_module_prefixes(tmp_path):
    # MLLM4Text-ReID wraps IRRA in nn.DataParallel: every key under module.
    irra = convert_weights_fp16(PublishedIRRA(seed=5))
    save_published(irra, tmp_path / "pretrain.pth", ddp=True)
    (model,), (report,) = load([tmp_path / "pretrain.pth"], tiny_cfg(embeddings=["bge"]))
    assert report.layout == "IRRA family (module. prefixes)"
    assert set(report.loaded) | set(report.unused) == every_tensor(tmp_path / "pretrain.pth")
    images, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images)["bge"],
                                   copy.deepcopy(irra.base_model).float().encode_image(images), atol=2e-4, rtol=2e-4)


# ---------------------------------------------------------------- test.py and THI
DATA_SIZES = dict(num_train_ids=5, num_test_ids=6, num_val_ids=2, seed=9)   # data_root's (conftest.py)


def write_config(path, data_root, **over):
    values = {k: v for k, v in tiny_cfg(**over).items() if k in ("dataset_name", "pretrain_choice", "img_size",
                                                                 "text_length", "tse_dim", "select_ratio", "embeddings",
                                                                 "test_batch_size", "num_workers", "precision",
                                                                 "device", "twin")}
    path.write_text(yaml.safe_dump({**values, "root_dir": data_root}))
    return str(path)


def test_test_py_evaluates_an_rde_file_without_a_run_folder(rde, data_root, tmp_path, caplog):
    published, path = rde
    config = write_config(tmp_path / "rde.yaml", data_root)
    results = test_main.main(["--checkpoint", str(path), "--config", config])
    (rows,) = results.values()
    assert list(rows) == ["BGE", "TSE", "BGE+TSE"]                  # RDE's published table rows
    # the same numbers as the published forward's similarities on the same split
    run = load_checkpoint_files([str(path)], config)
    evaluator = run.evaluator("test")
    run.load_weights()
    got = evaluator.similarity_rows(run.models)
    images = torch.cat([batch for _, batch in evaluator.image_loader])
    ids = torch.cat([batch for _, batch in evaluator.text_loader])
    ref_i, ref_t = published_embeddings(published, images, ids)
    for name in ("bge", "tse"):
        s = F.normalize(ref_t[name], dim=-1) @ F.normalize(ref_i[name], dim=-1).t()
        torch.testing.assert_close(got[name.upper()], s, atol=1e-4, rtol=1e-4)
        metrics = rank_metrics(s, evaluator.split.caption_pids, evaluator.split.image_pids)
        assert rows[name.upper()] == pytest.approx(metrics, abs=1e-6)
    # training options after --config override the file
    results = test_main.main(["--checkpoint", str(path), "--config", config, "--embeddings", "bge"])
    assert list(next(iter(results.values()))) == ["BGE"]


def test_test_py_two_files_are_twins(tmp_path, data_root):
    paths = []
    for seed in (1, 2):
        model = convert_weights_fp16(PublishedRDE(seed=seed))
        save_published(model, tmp_path / f"m{seed}.pth", optimizer=False)
        paths.append(str(tmp_path / f"m{seed}.pth"))
    config = write_config(tmp_path / "twins.yaml", data_root)
    (rows,) = test_main.main(["--checkpoint", *paths, "--config", config]).values()
    assert list(rows) == ["model1/BGE", "model1/TSE", "model1", "model2/BGE", "model2/TSE", "model2", "ensemble"]
    single = [next(iter(test_main.main(["--checkpoint", p, "--config", config]).values())) for p in paths]
    assert rows["model1"] == pytest.approx(single[0]["BGE+TSE"]) and rows["model2"] == pytest.approx(single[1]["BGE+TSE"])


@pytest.mark.filterwarnings("ignore:.*weights_only=False")   # main.py's checkpoints carry their options
def test_test_py_reads_main_py_checkpoints_with_a_config(tmp_path, data_root):
    from dataclasses import asdict
    cfg = tiny_cfg(clip_arch=TINY_CLIP)
    model = random_model(cfg, TINY_CLIP, 5)
    torch.save({"epoch": 2, "models": [model.state_dict()], "config": dict(cfg),
                "clip_config": asdict(model.backbone.config)}, tmp_path / "best.pth")
    config = write_config(tmp_path / "c.yaml", data_root)
    run = load_checkpoint_files([str(tmp_path / "best.pth")], config)
    run.load_weights()
    assert run.reports[0].layout == "main.py"
    images, ids = inputs()
    assert_same(our_embeddings(run.models[0], images, ids)[1], our_embeddings(model.eval(), images, ids)[1],
                ["bge", "tse"])
    with pytest.raises(SystemExit, match="select_ratio"):
        load_checkpoint_files([str(tmp_path / "best.pth")], config, select_ratio=0.5).load_weights()


def test_test_py_arguments():
    with pytest.raises(SystemExit):
        test_main.parse(["--checkpoint", "a.pth"])                      # neither --run nor --config
    with pytest.raises(SystemExit):
        test_main.parse(["--run", "r", "--config", "c.yaml"])           # both
    with pytest.raises(SystemExit):
        test_main.parse(["--run", "r", "--embeddings", "bge"])          # a run folder keeps its own options
    args = test_main.parse(["--checkpoint", "a.pth", "--config", "c.yaml", "--img_size", "384", "128"])
    assert args.options == {"img_size": [384, 128]} and args.checkpoint == ["a.pth"]


@pytest.mark.slow
def test_thi_on_a_published_checkpoint(rde, data_root, tmp_path):
    from tests.tiny_qwen2vl import build_tiny_qwen2vl
    from thi import cli
    _, path = rde
    config = write_config(tmp_path / "rde.yaml", data_root)
    qwen = build_tiny_qwen2vl(str(tmp_path / "qwen"), seed=0, favour="Yes")
    out = tmp_path / "thi"
    result = cli.main(["--checkpoint", str(path), "--config", config, "--model_dir", qwen, "--out", str(out),
                       "--xi", "-1", "--limit", "3", "--rounds", "1", "--max_new_tokens", "4", "--batch_size", "4",
                       "--min_pixels", "3136", "--max_pixels", "3136"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset_name"] == "CUHK-PEDES" and saved["checkpoint"] == [str(path)]
    assert list(saved["metrics"]) == ["base (BGE+TSE)", "THI round 1"]
    # the base ranking is test.py's fused row on the same queries
    run = load_checkpoint_files([str(path)], config)
    run.load_weights()
    fused = run.evaluator("test").similarity_rows(run.models)["BGE+TSE"]
    torch.testing.assert_close(result["base"], fused[:3], atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):
        cli.parse(["--checkpoint", str(path), "--model_dir", qwen])      # a file needs its config
