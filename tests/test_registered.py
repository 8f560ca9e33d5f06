"""Checks every registered loss and embedding head gets without anyone writing them (as timm does for each of its
models): a new file in model/losses/ or model/embeddings/ is collected here by its registered name.  And what the
registry refuses, at registration."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from model import build_model
from model.embeddings import EMBEDDINGS, build_embedding
from model.losses import LOSSES, REDUCTIONS, build_loss
from solver.build import build_engine
from solver.division import Division, gmm_settings, model_prefix
from solver.methods import METHODS
from solver.weighting import WEIGHTINGS
from solver.objective import weighted_loss
from solver.optimizer import build_optimizer
from configs import resolve
from utils.registry import Registry

TINY_CLIP = dict(embed_dim=16, vision_width=32, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                 text_heads=2, vocab_size=512)      # SOT / EOT are its last two ids
B, DIM, WIDTH, CLASSES = 6, 16, 16, 4
PIDS = torch.tensor([0, 0, 1, 1, 2, 3])      # positives and negatives in every row


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from threads, and on a shared 2-core machine a second thread spins against
    the other processes (steps take 50x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**over):
    heads = over.get("embeddings", ["bge", "tse"])   # the sizes of the heads trained (others' options are refused)
    sizes = {size: 24 for size, head in (("tse_dim", "tse"), ("fused_dim", "fused")) if head in heads}
    return resolve({"pretrain_choice": "random", "clip_arch": TINY_CLIP, "img_size": [32, 16], "text_length": 16,
                    **sizes, **over}, {})


def caption_ids(length=16, seed=0):
    """SOT, 3-10 word tokens, EOT (the largest id, as encode_text and token selection expect), zero padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, length, dtype=torch.long)
    for i in range(B):
        n = int(torch.randint(3, 11, (1,), generator=g))
        ids[i, 0], ids[i, n + 1] = 510, 511
        ids[i, 1:n + 1] = torch.randint(1, 510, (n,), generator=g)
    return ids


def features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, DIM, generator=g).requires_grad_(), torch.randn(B, DIM, generator=g).requires_grad_())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_gives_finite_per_sample_values_with_gradients(name):
    loss = build_loss(name, tiny_cfg(loss_names=name), DIM, CLASSES)
    image, text = features()
    values = loss(image, text, PIDS)
    assert values.shape == (B,) and values.dtype == torch.float32 and torch.isfinite(values).all()
    values.sum().backward()
    for grad in (image.grad, text.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0     # both towers learn from it


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_reduction_is_the_one_training_applies(name):
    loss = build_loss(name, tiny_cfg(loss_names=name), DIM, CLASSES)
    assert loss.reduction in REDUCTIONS
    values = loss(*features(1), PIDS).detach()
    weights = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.25, 1.0])
    model = SimpleNamespace(losses={"e": {name: loss}}, loss_names=[name], primary_loss=name)
    total, parts = weighted_loss(model, {("e", name): values}, weights, {name: 2.0})
    weighted = (weights * values).sum() / (B if loss.reduction == "mean" else 1)
    assert math.isclose(float(total), 2 * float(weighted), rel_tol=1e-6)
    assert math.isclose(float(parts[f"e_{name}"]), float(weighted), rel_tol=1e-6)


@pytest.mark.parametrize("name", sorted(EMBEDDINGS))
def test_head_gives_out_dim_vectors_with_gradients(name):
    head = build_embedding(name, tiny_cfg(embeddings=[name]), WIDTH)
    g = torch.Generator().manual_seed(0)
    image_tokens = torch.randn(B, 1 + 8, WIDTH, generator=g).requires_grad_()
    text_tokens = torch.randn(B, 16, WIDTH, generator=g).requires_grad_()
    image_attn = torch.rand(B, 9, 9, generator=g).softmax(-1)
    text_attn = torch.rand(B, 16, 16, generator=g).softmax(-1)
    image = head.encode_image(image_tokens, image_attn)
    text = head.encode_text(text_tokens, text_attn, caption_ids())
    assert image.shape == text.shape == (B, head.out_dim)
    (image.square().sum() + text.square().sum()).backward()
    for grad in (image_tokens.grad, text_tokens.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


STEPS = [(loss, "bge") for loss in sorted(LOSSES)] + [("TAL", head) for head in sorted(EMBEDDINGS) if head != "bge"]


@pytest.mark.parametrize("loss,head", STEPS, ids=[f"{loss}-{head}" for loss, head in STEPS])
def test_a_few_training_steps_through_the_model_lower_the_loss(loss, head):
    """Each loss (on BGE) and each head (with TAL) trains a tiny RetrievalModel on one fixed batch."""
    cfg = tiny_cfg(loss_names=loss, embeddings=[head], lr=1e-3)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=CLASSES).train()
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    images, ids = torch.randn(B, 3, 32, 16, generator=torch.Generator().manual_seed(1)), caption_ids()
    totals = []
    for _ in range(8):
        per_sample, _ = model(images, ids, PIDS)
        assert set(per_sample) == {(head, loss)}
        total, _ = weighted_loss(model, per_sample, torch.ones(B), cfg.loss_weights)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert totals[-1] < totals[0], totals


# ---------------------------------------------------------------- what registration refuses
def loss_class(**body):
    def forward(self, image_feats, text_feats, pids):
        return (image_feats - text_feats).square().sum(1)
    return type("Custom", (nn.Module,), {"reduction": "sum", "__init__": lambda self, dim,
                                          num_classes: nn.Module.__init__(self), "forward": forward, **body})


def test_a_loss_must_declare_its_reduction_and_forward():
    registry = Registry("loss", "model/losses/", LOSSES.check)
    registry.register("ok")(loss_class())
    with pytest.raises(TypeError, match=r"'no_reduction'.*declare reduction = 'sum'.*or 'mean'.*found None"):
        registry.register("no_reduction")(loss_class(reduction=None))
    with pytest.raises(TypeError, match=r"forward\(self, image_feats, text_feats, pids\)"):
        registry.register("two_args")(loss_class(forward=lambda self, image_feats, text_feats: image_feats))
    with pytest.raises(TypeError, match="nn.Module"):
        registry.register("function")(lambda image_feats, text_feats, pids: 0)
    assert list(registry) == ["ok"]


def test_a_head_must_declare_out_dim_and_both_encoders(monkeypatch):
    registry = Registry("embedding head", "model/embeddings/", EMBEDDINGS.check)

    class NoOutDim(nn.Module):
        def __init__(self, width):
            super().__init__()

        def encode_image(self, tokens, attn):
            return tokens[:, 0]

    with pytest.raises(TypeError, match=r"'bare'.*declare `out_dim: int`.*encode_text\(self, tokens, attn, ids\)"):
        registry.register("bare")(NoOutDim)

    class Fine(NoOutDim):
        out_dim: int

        def encode_text(self, tokens, attn, ids):
            return tokens[:, 0]

    registry.register("fine")(Fine)
    monkeypatch.setitem(EMBEDDINGS._entries, "fine", Fine)
    with pytest.raises(TypeError, match="'fine' was built with out_dim None"):      # declared, never set
        build_embedding("fine", None, 8)


def test_a_name_is_registered_once():
    registry = Registry("loss", "model/losses/", lambda cls: [])
    first, second = loss_class(), type("Other", (nn.Module,), {})
    registry.register("TAL")(first)
    registry.register("TAL")(first)               # the same class again: a module imported twice
    with pytest.raises(ValueError, match=r"loss name 'TAL' is registered twice: by .*Custom and by .*Other"):
        registry.register("TAL")(second)
    assert registry["TAL"] is first
    with pytest.raises(ValueError, match=r"unknown loss 'tal' \(did you mean TAL\?\); registered: TAL"):
        registry.build("tal")


def test_the_real_registries_hold_the_documented_entries():
    assert {"TAL", "TRL", "InfoNCE", "SDM", "ID"} <= set(LOSSES)
    assert {"bge", "tse", "fused"} <= set(EMBEDDINGS)
    with pytest.raises(ValueError, match=r"unknown embedding head 'tsee' \(did you mean tse\?\)"):
        build_embedding("tsee", None, 8)


# ---------------------------------------------------------------- weighting rules and training methods
def division_of(models: int, embeddings=("bge", "tse"), epoch: int = 1) -> Division:
    """The division of 50 pairs, named as the reads name signals: 40 whose every signal's loss is low and whose
    cosine is high, 10 the opposite (permuted pairs)."""
    rng = np.random.default_rng(1)
    signals = {model_prefix(k, models) + emb: np.concatenate([rng.normal(0.2, 0.05, 40), rng.normal(1.0, 0.05, 10)])
               for k in range(models) for emb in embeddings}
    positive_sim = np.concatenate([rng.normal(0.8, 0.02, 40), rng.normal(0.2, 0.02, 10)])
    return Division.fit(signals, positive_sim, epoch, seed=1, models=models, settings=gmm_settings(0.5, ""))


@pytest.mark.parametrize("models", [1, 2], ids=["one_model", "twins"])
@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_weighting_rule_weighs_low_loss_pairs_more(name, models):
    """Every registered rule, on one model's division and on twins': the engine takes its weights (Engine.weigh
    checks them: float32 in [0, 1], [N] or [models, N]), the low-loss pairs weigh more, and the same division
    gives the same weights (a rule draws from the division's seed and epoch, so a resumed run repeats it)."""
    engine = build_engine(tiny_cfg(weighting=name, twin=models == 2), num_classes=CLASSES)
    division = division_of(models)
    weights = engine.weigh(division)
    for row in weights.reshape(-1, division.pairs):
        assert float(row[:40].mean()) > float(row[40:].mean())
    assert torch.equal(weights, engine.weigh(division_of(models)))


class Bad:
    """A weighting rule whose result is `returns(division)`."""
    returns = staticmethod(lambda division: torch.ones(division.pairs))

    def __call__(self, division):
        return self.returns(division)


@pytest.mark.parametrize("returns, message", [
    (lambda d: np.ones(d.pairs, dtype=np.float32), r"returned a numpy.ndarray: return a torch tensor"),
    (lambda d: torch.ones(d.pairs, dtype=torch.float64), r"returned torch.float64 weights: return float32"),
    (lambda d: torch.ones(d.pairs) > 0, r"returned torch.bool weights: return float32 \(weights.float\(\)\)"),
    (lambda d: torch.ones(3, d.pairs), r"returned weights of shape \(3, 50\): expected \[50\] .* or \[1, 50\]"),
    (lambda d: torch.full((d.pairs,), 2.0), r"returned 50 weights outside \[0, 1\] \(first: 2.0\)"),
    (lambda d: torch.full((d.pairs,), float("nan")), r"returned 50 weights outside \[0, 1\] \(first: nan\)"),
], ids=["numpy", "float64", "bool", "shape", "range", "nan"])
def test_the_engine_names_the_rule_whose_weights_are_wrong(returns, message, monkeypatch):
    monkeypatch.setitem(WEIGHTINGS._entries, "bad", type("Bad", (Bad,), {"returns": staticmethod(returns)}))
    engine = build_engine(tiny_cfg(weighting="bad"), num_classes=CLASSES)
    with pytest.raises((TypeError, ValueError), match=r"^weighting 'bad' \((tests\.)?test_registered\.Bad\) " + message):
        engine.weigh(division_of(1))


def test_a_per_model_rule_needs_every_model_read():
    twins = division_of(2)
    assert [d.owners for d in twins.by_model()] == [[0, 0], [1, 1]]
    assert list(twins.of_model(1).signals) == ["model2/bge", "model2/tse"]
    one_read = Division.fit({"model2/fused": twins.signals["model2/bge"]}, twins.positive_sim, 1, 1, 2,
                            gmm_settings(0.5, ""))        # twins_release's drawn twin
    with pytest.raises(ValueError, match=r"division of epoch 1 read no signal of model 1 \(it read model2/fused\)"):
        one_read.by_model()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_a_step_and_weighs_its_division(name):
    """Every registered method, on a tiny model without data: its defaults resolve, a training step lowers
    nothing to NaN, each model trains with its own row of [models, B] weights, and its rule (its default
    `weighting`) weighs a division of its models."""
    cfg = tiny_cfg(method=name, division_read="clean")
    engine = build_engine(cfg, num_classes=CLASSES)
    assert isinstance(engine, METHODS[name])
    assert len(engine.models) == (2 if cfg.twin else 1)
    views = len(engine.models)
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (B, views, 3, 32, 16), generator=g, dtype=torch.uint8),
             "caption_ids": caption_ids().unsqueeze(1).expand(B, views, 16), "pid": PIDS, "index": torch.arange(B)}
    loss, parts = engine.train_step(batch, torch.ones(B), epoch=1)
    engine.optimizer_step(loss)
    assert math.isfinite(float(loss.detach())) and parts
    if views == 2:      # [models, B]: each model trains with its own row
        _, parts = engine.train_step(batch, torch.stack([torch.ones(B), torch.zeros(B)]), epoch=1)
        assert all(float(v) != 0 for k, v in parts.items() if k.startswith("model1/"))
        assert all(float(v) == 0 for k, v in parts.items() if k.startswith("model2/"))
    weights = engine.weigh(division_of(views, cfg.embeddings))
    for row in weights.reshape(-1, 50):
        assert float(row[:40].mean()) > float(row[40:].mean())      # low-loss pairs weigh more


def test_an_option_is_declared_once(monkeypatch):
    """Two parts that read one option share its declaration; a second, different one is refused by name."""
    from model.losses.common import TAU
    import configs as options

    assert options.OPTIONS["tau"] is TAU and options.OPTIONS["alr_k"].default == 5.0   # collected from the parts
    clash = loss_class(options={"tau": options.Option(0.5, "my temperature")})
    monkeypatch.setitem(LOSSES._entries, "Clash", clash)
    with pytest.raises(TypeError, match=r"option 'tau' of loss 'Clash' .* is already declared by loss"):
        options.OPTIONS


def test_a_part_is_found_by_its_file(tmp_path, monkeypatch):
    """A registry package imports every module of its folder (utils/registry.py import_folder): a new part is one
    new file, with no import line to edit; modules named _x are left alone."""
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text("from utils.registry import Registry, import_folder\n"
                                         "PARTS = Registry('part', 'plugins/', lambda cls: [])\n"
                                         "import_folder(__name__, __path__)\n")
    (package / "zeta.py").write_text("from . import PARTS\n@PARTS.register('zeta')\nclass Zeta: pass\n")
    (package / "alpha.py").write_text("from . import PARTS\n@PARTS.register('alpha')\nclass Alpha: pass\n")
    (package / "_draft.py").write_text("raise RuntimeError('not a part: never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugins
    assert list(plugins.PARTS) == ["alpha", "zeta"]          # in file-name order
