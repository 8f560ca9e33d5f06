"""Checkpoints in the layouts the published code saves, read into our RetrievalModel.

The mapping from published parameter names to ours lives here and nowhere else.  Layouts (found from the keys):

* **RDE / ICL** (QinYang79/RDE, ICL): ``torch.save({"model": RDE.state_dict(), "optimizer": ..., "scheduler": ...,
  "num_epoch", "iteration", "epoch"})`` after ``convert_weights`` made Linear / conv / attention weights fp16.
  ``base_model.*`` is OpenAI's CLIP layout (no ``logit_scale``), ``visul_emb_layer.*`` / ``texual_emb_layer.*``
  are the TSE heads.
* **IRRA family** (IRRA, MLLM4Text-ReID, other IRRA forks): ``base_model.*`` plus IRRA's training heads
  (``classifier`` for the ID loss, ``cross_attn`` / ``cross_modal_transformer`` / ``ln_pre_t`` / ``ln_pre_i`` /
  ``ln_post`` / ``mlm_head`` for MLM), which evaluation does not use: the model is its BGE embedding.
* ``module.`` in front of any of them (DataParallel / DDP; MLLM4Text-ReID's files), a plain OpenAI-layout
  CLIP state dict (a BGE-only model), and the checkpoints main.py writes (``{"models": [...], "config": ...}``).

Every tensor of a file ends up either loaded or listed as unused with the reason (`LoadReport`); a name no rule
knows, a head the config asks for but the file lacks, or a shape the config does not give stops the load with
a message naming the file, the tensors and the option to change.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from .clip import config_from_state_dict, grid_size
from .clip.checkpoint import _CLIP_KEY, _read_checkpoint, _strip_prefixes

log = logging.getLogger("reid")

# RDE's TSE heads (CrossEmbeddingLayer_tse.py) -> ours (model/embeddings/tse.py).  Their MLP(512, 512, 1024, 2)
# keeps `layers` and `bns` in ModuleLists; the image head's residual branch is `fc`, the text head's `linear`.
_TSE_RENAMES = {
    r"visul_emb_layer\.fc\.(weight|bias)": "embeddings.tse.image_mlp.linear.{0}",
    r"visul_emb_layer\.mlp\.layers\.0\.(weight|bias)": "embeddings.tse.image_mlp.fc1.{0}",
    r"visul_emb_layer\.mlp\.bns\.0\.(weight|bias|running_mean|running_var|num_batches_tracked)":
        "embeddings.tse.image_mlp.bn.{0}",
    r"visul_emb_layer\.mlp\.layers\.1\.(weight|bias)": "embeddings.tse.image_mlp.fc2.{0}",
    r"texual_emb_layer\.linear\.(weight|bias)": "embeddings.tse.text_mlp.linear.{0}",
    r"texual_emb_layer\.mlp\.layers\.0\.(weight|bias)": "embeddings.tse.text_mlp.fc1.{0}",
    r"texual_emb_layer\.mlp\.bns\.0\.(weight|bias|running_mean|running_var|num_batches_tracked)":
        "embeddings.tse.text_mlp.bn.{0}",
    r"texual_emb_layer\.mlp\.layers\.1\.(weight|bias)": "embeddings.tse.text_mlp.fc2.{0}",
}

# Tensors of published files that evaluation never reads, and why.
_UNUSED = {
    r"visul_emb_layer\.linear\..+":
        "RDE's image TSE head builds `linear` but its forward uses `fc` (never trained)",
    r"(visul|texual)_emb_layer\.mlp\.bns\.1\..+":
        "BatchNorm that RDE's MLP builds for its last layer, whose forward skips it (never trained)",
    r"classifier\..+": "IRRA's ID-loss classifier over the training identities (training only)",
    r"(cross_attn|cross_modal_transformer|ln_pre_t|ln_pre_i|ln_post|mlm_head)\..+":
        "IRRA's masked-language-modelling branch (cross-modal transformer + MLM head; training only)",
    r"base_model\.(input_resolution|context_length|vocab_size)":
        "OpenAI's bookkeeping numbers (the architecture is read off the weights)",
}
_UNUSED_ENTRY = {
    "optimizer": "optimizer state (resuming training only)",
    "optimizers": "optimizer state (resuming training only)",
    "scheduler": "learning-rate scheduler state (resuming training only)",
    "schedulers": "learning-rate scheduler state (resuming training only)",
    "scaler": "gradient-scaler state (resuming training only)",
    "rng": "random-generator state (resuming training only)",
}
# Our parameters a published file does not hold, left as built because evaluation never reads them.
_KEPT = {
    r"backbone\.logit_scale": "the published CLIPs drop logit_scale; evaluation does not use it",
    r"losses\..+": "loss parameters (e.g. the ID classifier); training only",
}
# What to change when a tensor's shape differs from the one the config builds.
_SHAPE_HINTS = {
    r"embeddings\.tse\..+": "tse_dim (TSE output size)",
    r"embeddings\.fused\..+": "fused_dim",
    r"backbone\.visual\.positional_embedding": "img_size / stride_size (image patch grid)",
    r"backbone\.positional_embedding": "text_length",
}
_WRAPPERS = ("module.", "_orig_mod.")
_HEAD_PREFIX = {"tse": ("visul_emb_layer.", "texual_emb_layer.")}


class CheckpointMismatch(ValueError):
    """A file that cannot be evaluated with the given config; the message names the file and the fix."""


@dataclass
class LoadReport:
    path: str
    layout: str
    loaded: dict[str, str] = field(default_factory=dict)     # name in the file -> our name
    unused: dict[str, str] = field(default_factory=dict)     # name in the file -> why it is not loaded
    kept: dict[str, str] = field(default_factory=dict)       # our name missing from the file -> why that is fine
    notes: list[str] = field(default_factory=list)
    epoch: Any = None

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.layout} layout, {len(self.loaded)} tensors loaded, {len(self.unused)} unused"
               + (f" (epoch {self.epoch})" if self.epoch is not None else "")]
        for title, names in (("unused", self.unused), ("not in the file, kept as built", self.kept)):
            by_reason: dict[str, list[str]] = {}
            for name, reason in names.items():
                by_reason.setdefault(reason, []).append(name)
            for reason, group in by_reason.items():
                out.append(f"  {title}: {len(group)} x {reason}: {', '.join(_compress(group))}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _compress(names: list[str]) -> list[str]:
    """resblocks.0.x, resblocks.1.x ... -> resblocks.{0-3}.x, so 60 head tensors stay one readable line."""
    groups: dict[str, list[int]] = {}
    order = []
    for n in names:
        m = re.search(r"\.(\d+)\.", n)
        key = n if m is None else n[:m.start()] + ".{}." + n[m.end():]
        if key not in groups:
            groups[key] = []
            order.append(key)
        if m is not None:
            groups[key].append(int(m.group(1)))
    out = []
    for key in order:
        idx = sorted(groups[key])
        if not idx:
            out.append(key)
        else:
            span = str(idx[0]) if len(idx) == 1 else (f"{idx[0]}-{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1))
                                                       else ",".join(map(str, idx)))
            out.append(key.replace("{}", "{" + span + "}" if len(idx) > 1 else span))
    return out


def _tensors(obj, prefix: str):
    """(dotted name, tensor) for every tensor inside nested dicts / lists (optimizer states, for instance)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}")


def _strip(key: str) -> str:
    return _strip_prefixes(key, _WRAPPERS)


@dataclass
class FileContents:
    states: list[dict]                 # one model state dict, or two for a twin run written by main.py
    unused: dict[str, str]             # tensors outside the weights -> why they are not loaded
    epoch: Any = None
    config: dict | None = None         # main.py's checkpoints carry their options ...
    clip_arch: dict | None = None      # ... and their CLIP architecture


def read_file(path: str) -> FileContents:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _read_checkpoint(path)
    if isinstance(obj, nn.Module):
        obj = {"model": obj.state_dict()}
    if not isinstance(obj, Mapping):
        raise CheckpointMismatch(f"{path} holds a {type(obj).__name__}, expected a state dict or a checkpoint dict "
                                 "with a 'model' (RDE, IRRA) or 'models' (main.py) entry")
    if isinstance(obj.get("models"), list):        # written by main.py
        states, entry = obj["models"], "models"
    elif isinstance(obj.get("model"), Mapping):
        states, entry = [obj["model"]], "model"
    elif isinstance(obj.get("state_dict"), Mapping):
        states, entry = [obj["state_dict"]], "state_dict"
    elif obj and not any(isinstance(v, (Mapping, list)) for v in obj.values()):
        states, entry = [obj], None
    else:
        raise CheckpointMismatch(f"{path}: no model weights found; expected a state dict or a checkpoint dict with "
                                 f"a 'model' / 'state_dict' / 'models' entry, found entries {sorted(map(str, obj))[:10]}")
    contents = FileContents([dict(s) for s in states], {})
    if entry is None:
        return contents
    for key, value in obj.items():
        if key != entry:
            reason = _UNUSED_ENTRY.get(key, "training bookkeeping stored beside the weights")
            contents.unused.update({name: reason for name, _ in _tensors(value, key)})
    contents.epoch = obj.get("epoch")
    if entry == "models":
        contents.config = dict(obj.get("config") or {})
        contents.clip_arch = {k: v for k, v in (obj.get("clip_config") or {}).items()
                              if k not in ("image_size", "stride", "context_length")}
    return contents


def _published_layout(keys: list[str], wrapped: bool) -> str:
    if any(k.startswith(("visul_emb_layer.", "texual_emb_layer.")) for k in keys):
        name = "RDE / ICL"
    elif any(k.startswith("base_model.") for k in keys):
        name = "IRRA family"
    else:
        name = "OpenAI CLIP"
    return name + (" (module. prefixes)" if wrapped else "")


def map_published(sd: Mapping[str, torch.Tensor], path: str, embeddings: list[str]):
    """(our state dict: name -> tensor, LoadReport) for one published model state dict."""
    keys = [_strip(str(k)) for k in sd]
    report = LoadReport(path, _published_layout(keys, any(str(k) != s for k, s in zip(sd, keys))))
    ours, unknown = {}, []
    for raw, key in zip(sd, keys):
        value = sd[raw]
        if not isinstance(value, torch.Tensor):
            continue
        target = None
        clip_key = key[len("base_model."):] if key.startswith("base_model.") else key
        if _CLIP_KEY.fullmatch(clip_key):
            target = "backbone." + clip_key
        else:
            for pattern, template in _TSE_RENAMES.items():
                if m := re.fullmatch(pattern, key):
                    target = template.format(*m.groups())
                    break
        if target is not None and target.startswith("embeddings.tse.") and "tse" not in embeddings:
            report.unused[str(raw)] = f"TSE head: the config's embeddings are {embeddings} (add tse to evaluate it)"
            continue
        if target is None:
            reason = next((r for p, r in _UNUSED.items() if re.fullmatch(p, key)), None)
            if reason is None:
                unknown.append(str(raw))
            else:
                report.unused[str(raw)] = reason
            continue
        if target in ours:
            raise CheckpointMismatch(f"{path}: two tensors map to {target!r} (one is {raw!r}) after removing "
                                     f"{_WRAPPERS} prefixes; cannot tell which to use")
        ours[target] = value
        report.loaded[str(raw)] = target
    if unknown:
        raise CheckpointMismatch(
            f"{path}: {len(unknown)} tensors of no known layout: {_compress(unknown)[:12]}. Known: RDE / ICL "
            "(base_model.*, visul_emb_layer.*, texual_emb_layer.*), IRRA family (base_model.* + IRRA's heads), "
            "OpenAI CLIP keys, and main.py's checkpoints; model/published.py holds the mapping")
    if not any(t.startswith("backbone.") for t in ours):
        raise CheckpointMismatch(f"{path}: no CLIP weights (expected keys like 'base_model.visual.conv1.weight')")
    return ours, report


def _backbone_arch(ours: Mapping[str, torch.Tensor], cfg, path: str) -> dict:
    """CLIPConfig fields read off the file's backbone; the grid and text length must be the config's."""
    sd = {k[len("backbone."):]: v for k, v in ours.items() if k.startswith("backbone.")}
    grid = grid_size(cfg.img_size, sd["visual.conv1.weight"].shape[-1], cfg.stride_size)
    rows = sd["visual.positional_embedding"].shape[0]
    text_rows = sd["positional_embedding"].shape[0]
    problems = []
    if rows != 1 + grid[0] * grid[1]:
        problems.append(f"its image position table has {rows} rows, but img_size {list(cfg.img_size)} with "
                        f"stride_size {cfg.stride_size} gives a {grid[0]}x{grid[1]} grid ({1 + grid[0] * grid[1]} rows): "
                        "set --img_size / --stride_size to the ones it was trained with (RDE, IRRA: 384 128, 16)")
    if text_rows != cfg.text_length:
        problems.append(f"its text position table has {text_rows} rows, but text_length is {cfg.text_length}: "
                        f"set --text_length {text_rows}")
    if problems:
        raise CheckpointMismatch(f"{path} does not match the config: " + "; ".join(problems))
    arch = config_from_state_dict(sd, source_grid=grid)
    arch = {k: getattr(arch, k) for k in ("embed_dim", "patch_size", "vision_width", "vision_layers", "vision_heads",
                                          "vocab_size", "text_width", "text_heads", "text_layers")}
    # head counts are not in the weights: CLIP's width // 64 unless the config's clip_arch says otherwise
    arch.update({k: v for k, v in (cfg.get("clip_arch") or {}).items() if k in ("vision_heads", "text_heads")})
    return arch


class _TupleLoader(yaml.SafeLoader):
    """The published code writes configs.yaml with yaml.dump(vars(args)): tuples carry a python/tuple tag."""


_TupleLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
_TupleLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def training_config(path: str, carried: dict | None) -> tuple[dict | None, str | None]:
    """The options the file was trained with: carried in it (main.py), or configs.yaml beside it (the published
    code's save_train_configs writes one into the same output folder as best.pth)."""
    if carried is not None:
        return carried, path
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "configs.yaml")
    if not os.path.isfile(beside):
        return None, None
    try:
        with open(beside) as f:
            data = yaml.load(f, Loader=_TupleLoader)
    except yaml.YAMLError as e:
        log.warning("%s: not readable YAML (%s); the training options cannot be checked", beside, e)
        return None, None
    return (data, beside) if isinstance(data, dict) else (None, None)


def check_options(trained: dict | None, source: str | None, cfg, path: str) -> list[str]:
    """Options the weights do not record (token-selection ratios, image size) compared with the config's."""
    if trained is None:
        used = [f"{k} {cfg[k]}" for k, emb in (("select_ratio", "tse"), ("fused_ratio", "fused")) if emb in cfg.embeddings]
        return [f"no training options beside {os.path.basename(path)} (configs.yaml): the config's "
                f"{', '.join(used)} assumed"] if used else []
    checks = [("img_size", None), ("stride_size", None), ("text_length", None),
              ("select_ratio", "tse"), ("fused_ratio", "fused")]
    wrong = []
    for key, emb in checks:
        if key not in trained or trained[key] is None or (emb is not None and emb not in cfg.embeddings):
            continue
        mine, theirs = cfg[key], trained[key]
        same = ([float(x) for x in mine] == [float(x) for x in theirs] if isinstance(mine, (list, tuple))
                else float(mine) == float(theirs))
        if not same:
            shown = " ".join(map(str, theirs)) if isinstance(theirs, (list, tuple)) else theirs
            wrong.append(f"{key} was {theirs!r} in training but the config has {mine!r} (pass --{key} {shown})")
    if wrong:
        raise CheckpointMismatch(f"{path} was trained with other options than the config ({source}): " + "; ".join(wrong))
    return [f"training options checked against {source}"]


def load_into(model: nn.Module, ours: dict[str, torch.Tensor], report: LoadReport, embeddings: list[str]) -> None:
    """Shapes checked against the built model, then loaded; fp16 published weights become fp32 master weights."""
    target = model.state_dict()
    wrong = [f"{src} {tuple(ours[dst].shape)} -> {dst} {tuple(target[dst].shape)} "
             f"[{next((h for p, h in _SHAPE_HINTS.items() if re.fullmatch(p, dst)), 'architecture')}]"
             for src, dst in report.loaded.items() if dst in target and ours[dst].shape != target[dst].shape]
    extra = [dst for dst in ours if dst not in target]
    if wrong or extra:
        raise CheckpointMismatch(f"{report.path}: does not fit the model the config builds: "
                                 + "; ".join(wrong + [f"{d}: no such parameter" for d in extra])
                                 + ". Change the bracketed options to the ones the file was trained with")
    missing = [k for k in target if k not in ours]
    heads = [k for k in missing if k.startswith("embeddings.")]
    if heads:
        have = sorted({"bge"} | {e for e, prefixes in _HEAD_PREFIX.items()
                                 if any(s.startswith(prefixes) for s in report.loaded)})
        asked = [e for e in embeddings if e not in have]
        hint = ("no published code saves 3RTPR's fused head (their code was lost; docs/METHOD.md §2.4); only files "
                "written by main.py hold it" if "fused" in asked else f"evaluate with --embeddings {' '.join(have)}")
        raise CheckpointMismatch(f"{report.path} ({report.layout}) holds weights for the embeddings {have}, but the "
                                 f"config asks for {list(embeddings)}: {hint}")
    for k in missing:
        reason = next((r for p, r in _KEPT.items() if re.fullmatch(p, k)), None)
        if reason is None:
            raise CheckpointMismatch(f"{report.path}: the file has no weights for {k!r}, which evaluation needs")
        report.kept[k] = reason
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ours.items()}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == set(report.kept), result


def load_models(paths: list[str], cfg, build, device) -> tuple[list[nn.Module], list[LoadReport]]:
    """Our models from one checkpoint file (one model, or a twin run written by main.py) or two files (twins,
    one model each).  `build(cfg, clip_arch)` makes a model with random weights; returns (models, reports)."""
    from utils.checkpoint import load_model_states    # utils imports model: imported here, not at the top

    models, reports = [], []
    for path in paths:
        contents = read_file(path)
        trained, source = training_config(path, contents.config)
        if contents.config is not None:                # main.py's own layout: its names are ours
            built = [build(cfg, contents.clip_arch).to(device) for _ in contents.states]
            load_model_states(built, contents.states, path)
            report = LoadReport(path, "main.py", loaded={f"models.{i}.{k}": k for i, s in enumerate(contents.states)
                                                         for k in s}, unused=contents.unused, epoch=contents.epoch)
            report.notes += check_options(trained, source, cfg, path)
            models += built
            reports.append(report)
            continue
        if len(contents.states) != 1:
            raise CheckpointMismatch(f"{path}: {len(contents.states)} state dicts, expected one")
        ours, report = map_published(contents.states[0], path, list(cfg.embeddings))
        report.unused.update(contents.unused)
        report.epoch = contents.epoch
        report.notes += check_options(trained, source, cfg, path)
        model = build(cfg, _backbone_arch(ours, cfg, path))
        load_into(model, ours, report, list(cfg.embeddings))
        models.append(model.to(device))
        reports.append(report)
    if len(models) > 2:
        raise CheckpointMismatch(f"{paths}: {len(models)} models in all; give one model, or two files for twins")
    return [m.eval() for m in models], reports
