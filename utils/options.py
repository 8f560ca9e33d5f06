"""Every training option: its default, its type, the values it allows and its meaning, in one place.

Precedence: these defaults < the YAML file given with ``--config`` < the command line.  A run folder's
``configs.yaml`` holds the resolved result, so ``test.py --run`` and ``--resume`` rebuild the same thing (a saved
config without an option added since gets its default).  Names follow IRRA / RDE so that their commands keep
working.

Values are checked when read, wherever they come from (the command line, a YAML file, a saved configs.yaml,
code calling `resolve`): a value of the wrong type, outside the allowed ones, an unknown key inside
``clip_arch`` / ``gmm`` / ``loss_weights``, or a loss or head that is not registered stops the run before any data
is read, naming the option, the value and what is allowed.  Options are spelled out in full (no abbreviations).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields

import yaml
from easydict import EasyDict

from .registry import closest, did_you_mean


class OptionError(ValueError):
    """A value an option does not allow; the message says what it allows."""


# ------------------------------------------------------------------ what an option allows beyond its type
class OneOf:
    def __init__(self, *values, names: Callable[[], object] | None = None):
        # `names`: the allowed values come from a registry, read when first needed (it imports the package)
        self._values, self._names = values, names

    @property
    def values(self) -> list:
        return list(self._names()) if self._names else list(self._values)

    def __call__(self, value):
        if value not in self.values:
            raise OptionError(f"{value!r} is not one of: {', '.join(map(str, self.values))}"
                              f"{did_you_mean(str(value), map(str, self.values))}")
        return value

    def describe(self) -> str:
        return ""   # argparse shows the choices


class Range:
    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def __call__(self, value):
        bad = (self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))) or \
              (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))
        if bad:
            raise OptionError(f"{value!r} is out of range: {self.describe()}")
        return value

    def describe(self) -> str:
        low = f"{'>' if self.lo_open else '>='} {self.lo}" if self.lo is not None else ""
        high = f"{'<' if self.hi_open else '<='} {self.hi}" if self.hi is not None else ""
        return " and ".join(p for p in (low, high) if p)


class Pattern:
    def __init__(self, regex: str, description: str):
        self.regex, self.description = re.compile(regex), description

    def __call__(self, value):
        if not self.regex.fullmatch(value):
            raise OptionError(f"{value!r} is not {self.description}")
        return value

    def describe(self) -> str:
        return self.description


class Device:
    def __call__(self, value):
        if value != "auto":
            import torch
            try:
                torch.device(value)
            except RuntimeError:
                raise OptionError(f"{value!r} is not a device: auto, cpu, cuda, cuda:1 ... (any torch device)") from None
        return value

    def describe(self) -> str:
        return ""


class LossNames:
    def __call__(self, value):
        from model.losses import parse_loss_names
        try:
            parse_loss_names(value)
        except ValueError as e:
            raise OptionError(str(e)) from None
        return value

    def describe(self) -> str:
        from model.losses import LABEL_RULE, LOSSES
        return f"losses: {', '.join(LOSSES)}; {LABEL_RULE}"


class Heads:
    """A list of registered embedding heads, each once."""

    def names(self):
        from model.embeddings import EMBEDDINGS
        return list(EMBEDDINGS)

    def __call__(self, value):
        if not value:
            raise OptionError("names no head; give at least one")
        for name in value:
            OneOf(names=self.names)(name)
        if len(set(value)) != len(value):
            raise OptionError(f"{value!r} names a head twice")
        return value

    def describe(self) -> str:
        return ""


class Keys:
    """A mapping whose keys and value types come from `schema()`: {key: (type, rule or None)}.  `elsewhere`
    maps keys that belong to another option to that option's name."""

    def __init__(self, what: str, schema: Callable[[], dict], elsewhere: dict[str, str] | None = None):
        self.what, self.schema, self.elsewhere = what, schema, elsewhere or {}

    def __call__(self, value):
        if not value:   # an empty mapping needs no schema (whose package may be slow to import)
            return {}
        schema = self.schema()
        checked = {}
        for key, item in value.items():
            if key in self.elsewhere:
                raise OptionError(f"key {key!r} is set by the option {self.elsewhere[key]}; give it there")
            if key not in schema and item is None and ":" in str(key):
                raise OptionError(f"{key!r} reads as a key without a value: write a space after ':' ({{SDM: 2}})")
            if key not in schema:
                raise OptionError(f"key {key!r} is not {self.what}{did_you_mean(str(key), schema)}; "
                                  f"keys: {', '.join(schema)}")
            kind, rule = schema[key]
            try:
                checked[key] = (rule or (lambda v: v))(_typed(kind, item))
            except OptionError as e:
                raise OptionError(f"key {key}: {e}") from None
        return checked

    def describe(self) -> str:
        return ""


def _clip_fields() -> dict:
    from model.clip import CLIPConfig
    return {f.name: (int, Range(lo=1)) for f in fields(CLIPConfig) if f.name not in CLIP_SET_ELSEWHERE}


def _gmm_fields() -> dict:
    from solver.division import gmm_settings
    return {k: (type(v), Range(lo=1) if isinstance(v, int) else Range(lo=0)) for k, v in gmm_settings(0.0, "").items()}


def _loss_weight_keys() -> dict:
    from model.losses import LOSSES
    # rda_<loss>: ICL's term on (image, RDA caption) pairs (solver/engine.py weighted_loss)
    return {key: (float, Range(lo=0)) for name in LOSSES for key in (name, f"rda_{name}")}


def _datasets():
    from datasets import DATASETS
    return DATASETS


def _precisions():
    from .device import PRECISIONS
    return ("auto", *PRECISIONS)


def _optimizers():
    from solver.optimizer import OPTIMIZERS
    return OPTIMIZERS


def _weightings():
    from solver.weighting import WEIGHTINGS
    return WEIGHTINGS


def _methods():
    from solver.methods import METHODS
    return METHODS


def _declaring_registries() -> dict[str, list]:
    """Where options are declared next to the code that reads them: {--help group: registries whose entries
    carry `options = {name: Option}`} (a loss's temperature, a head's size, a weighting rule's constants)."""
    from model.embeddings import EMBEDDINGS
    from model.losses import LOSSES
    return {"model": [EMBEDDINGS, LOSSES], "robust training (RDE)": [_weightings(), _methods()]}


# CLIPConfig fields that other options set (model/clip.py build_clip)
CLIP_SET_ELSEWHERE = {"image_size": "img_size", "stride": "stride_size", "context_length": "text_length"}
FRACTION = Range(lo=0, hi=1, lo_open=True)
POSITIVE = Range(lo=0, lo_open=True)
AT_LEAST_0, AT_LEAST_1 = Range(lo=0), Range(lo=1)


@dataclass(frozen=True)
class Option:
    """The type is the default's (a list: of its first item; a list of numbers has the default's length)."""
    default: object
    help: str
    allowed: Callable | None = None   # typed value -> value, raising OptionError (OneOf, Range, ...)


# the options of the engine and the run; the parts' own options join their groups (_declaring_registries)
CORE_GROUPS: dict[str, dict[str, Option]] = {
    "run": {
        "name": Option("RDE", "run name, part of the run folder's name"),
        "output_dir": Option("logs", "runs go to OUTPUT_DIR/DATASET_NAME/TIME_NAME unless --run_dir is given"),
        "run_dir": Option("", "exact run folder (default: made from output_dir, dataset_name, time and name)"),
        "resume": Option("", "a run folder: continue that run from its last.pth with its saved config"),
        "overwrite": Option(False, "start a new training in a --run_dir that already holds one (its checkpoints and "
                                   "logs are deleted)"),
        "seed": Option(1, "seed for initialisation, data order, augmentation and the division coin", AT_LEAST_0),
        "device": Option("auto", "auto (cuda when available), cpu, cuda, cuda:1 ...", Device()),
        "precision": Option("auto", "autocast dtype with fp32 master weights; auto = bf16 on CUDA, fp32 on CPU",
                            OneOf(names=_precisions)),
        "compile": Option(False, "torch.compile the training forward (first steps are slow while it compiles)"),
        "log_period": Option(50, "iterations between progress-bar loss updates", AT_LEAST_1),
        "eval_period": Option(1, "epochs between evaluations", AT_LEAST_1),
        "val_dataset": Option("test", "split used for evaluation during training", OneOf("test", "val")),
    },
    "data": {
        "dataset_name": Option("CUHK-PEDES", "dataset (SYNTH-PEDES is generated on first use)", OneOf(names=_datasets)),
        "root_dir": Option("data", "folder holding the dataset folders"),
        "anno_path": Option("", "annotation JSON to use instead of the default names (absolute or relative to the "
                                "dataset folder)"),
        "img_size": Option([384, 128], "image height and width", AT_LEAST_1),
        "stride_size": Option(16, "patch-embedding stride", AT_LEAST_1),
        "text_length": Option(77, "caption length in tokens (168 for UFine6926)", Range(lo=3)),
        "img_aug": Option(True, "image augmentation: flip, pad+crop, random erasing"),
        "txt_aug": Option(True, "RDE's token masking / replacement / deletion"),
        "batch_size": Option(64, "training batch size (per process)", AT_LEAST_1),
        "test_batch_size": Option(512, "batch size for feature extraction", AT_LEAST_1),
        "num_workers": Option(8, "data-loading worker processes", AT_LEAST_0),
        "image_cache": Option(True, "decode and resize each image once, into a uint8 file the loaders memory-map "
                                    "(datasets/image_cache.py; built on first use); false: decode JPEGs every read"),
        "image_cache_dir": Option("", "folder for the image caches (default: DATASET_FOLDER/.cache, or "
                                      "~/.cache/reid-images when the dataset folder is read-only)"),
    },
    "noisy correspondence (RDE)": {
        "noisy_rate": Option(0.0, "fraction of training captions shuffled among themselves",
                             Range(lo=0, hi=1, hi_open=True)),
        "noisy_file": Option("", "permutation .npy (RDE's files load as they are); default "
                                 "ROOT_DIR/noiseindex/DATASET_RATE.npy, created if missing"),
    },
    "model": {
        "method": Option("rde", "training method (registry in solver/methods): rde, twins (3RTPR), recommended, "
                                "...; a method may change other options' defaults, which the config file overrides",
                         OneOf(names=_methods)),
        "twin": Option(False, "train reciprocal twin models (two independent models sharing the division) and fuse "
                              "them at test time"),
        "pretrain_choice": Option("ViT-B/16", "CLIP weights: ViT-B/16 (~/.cache/clip/ViT-B-16.pt), a path to a "
                                              "checkpoint, or random"),
        "clip_arch": Option({}, "CLIPConfig fields for a random CLIP (pretrain_choice: random), e.g. "
                                "{vision_width: 128}",
                            Keys("a CLIP architecture field (model/clip.py CLIPConfig)", _clip_fields,
                                 CLIP_SET_ELSEWHERE)),
        "embeddings": Option(["bge", "tse"], "embeddings trained and fused at test time (registry in "
                                             "model/embeddings)", Heads()),
        "pretrain_path": Option("", "ReID-pretrained CLIP checkpoint (e.g. MLLM4Text-ReID) loaded instead of "
                                    "pretrain_choice; RDE/ICL users write '+pre' in loss_names for this"),
        "loss_names": Option("TAL", "'+'-separated losses (registry in model/losses) and labels, as in RDE",
                             LossNames()),
        "primary_loss": Option("", "the loss the division listens to and ICL's RDA term trains; default: the first "
                                   "of loss_names"),
        "loss_weights": Option({}, "per-loss weights, e.g. {SDM: 1.0, ID: 0.5}, rda_TAL for ICL's RDA term; missing "
                                   "names weigh 1",
                               Keys("a registered loss or rda_<loss> (model/losses)", _loss_weight_keys)),
    },
    "robust training (RDE)": {
        "division": Option(True, "per-epoch clean/noisy division (CCD); off trains on every pair with weight 1"),
        "weighting": Option("ccd", "how the division becomes per-sample weights (registry in solver/weighting.py): "
                                   "ccd (RDE, 0/1 + coin) or alr (3RTPR, soft)", OneOf(names=_weightings)),
        "published_eval_mode": Option(False, "ICL's (and RDE's first release's) quirk: train in eval mode after the "
                                             "division pass (changes BatchNorm in the heads); RDE's code since "
                                             "October 2024 trains in train mode"),
        "use_rda": Option(True, "ICL: when annotations carry diversity_captions, add TAL on (image, RDA caption) "
                                "weighted max(0.1, 1 - 0.03 epoch)"),
        "division_read": Option("augmented", "what the division pass reads: augmented (as published: the training "
                                             "pipeline's augmented batches, their in-batch negatives; twins score "
                                             "each model on the other's view) or clean (each pair once, no "
                                             "augmentation, like a test set)", OneOf("augmented", "clean")),
        "gmm": Option({}, "GaussianMixture settings; default chosen from noisy_rate and dataset "
                          "(solver/division.py gmm_settings)",
                      Keys("a mixture setting", _gmm_fields)),
    },
    "optimisation": {
        "optimizer": Option("Adam", "optimiser", OneOf(names=_optimizers)),
        "lr": Option(1e-5, "learning rate of the CLIP backbone", AT_LEAST_0),
        "head_lr": Option(1e-3, "learning rate of RDE-style new heads (TSE, fused), biases included", AT_LEAST_0),
        "lr_factor": Option(5.0, "IRRA-style new modules (ID classifier) train at lr x this; so does the text "
                                 "position embedding when text_length is not 77 (ICL)", AT_LEAST_0),
        "bias_lr_factor": Option(2.0, "parameters whose name contains 'bias' train at lr x this, without weight "
                                      "decay", AT_LEAST_0),
        "weight_decay": Option(4e-5, "weight decay (none for biases)", AT_LEAST_0),
        "betas": Option([0.9, 0.999], "Adam betas", Range(lo=0, hi=1, hi_open=True)),
        "eps": Option(1e-3, "Adam epsilon, 1e-3 as IRRA, RDE and ICL pass it (it shapes every step: gradients are "
                            "far below it)", POSITIVE),
        "num_epoch": Option(60, "training epochs", AT_LEAST_1),
        "warmup_epochs": Option(5, "linear warm-up epochs", AT_LEAST_0),
        "warmup_factor": Option(0.1, "warm-up starts at this fraction of the learning rate", Range(lo=0, hi=1)),
        "target_lr": Option(0.0, "cosine schedule's final learning rate", AT_LEAST_0),
    },
}


def _groups() -> dict[str, dict[str, Option]]:
    """CORE_GROUPS with every registered part's declared options in its group.  An option two parts read (TAL's
    and TRL's tau) is declared once and shared: two different declarations of one name are refused."""
    groups = {title: dict(group) for title, group in CORE_GROUPS.items()}
    declared_by: dict[str, str] = {}
    for title, registries in _declaring_registries().items():
        for registry in registries:
            for entry, cls in registry.items():
                for name, option in getattr(cls, "options", {}).items():
                    where = f"{registry.kind} {entry!r} ({registry.folder})"
                    known = next((g[name] for g in groups.values() if name in g), None)
                    if known is not None and known is not option:
                        raise TypeError(f"option {name!r} of {where} is already declared"
                                        f"{' by ' + declared_by[name] if name in declared_by else ' in utils/options.py'}"
                                        "; declare it once and let both parts read it")
                    groups[title][name] = option
                    declared_by.setdefault(name, where)
    return groups


def _options() -> dict[str, Option]:
    return {k: option for group in _groups().values() for k, option in group.items()}


def __getattr__(name: str):
    # GROUPS and OPTIONS are read when used, so parts registered since (a new loss file) are in them
    if name == "GROUPS":
        return _groups()
    if name == "OPTIONS":
        return _options()
    raise AttributeError(name)


# ------------------------------------------------------------------ types
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if v.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise OptionError(f"{v!r} is not a boolean (true / false)")


def _typed(kind: type, value):
    """`value` as `kind`; text as the command line gives it is read too."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _str2bool(value)
        raise OptionError(f"{value!r} is not a boolean (true / false)")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise OptionError(f"{value!r} is not an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)       # YAML reads 1e-4 (no dot) as text
        raise OptionError(f"{value!r} is not a number")
    if kind is str:
        if value is None:
            return ""                 # `anno_path:` with nothing after it
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str):
            return value
        raise OptionError(f"{value!r} is not text")
    if kind is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        raise OptionError(f"{value!r} is not a mapping such as {{key: value}}")
    raise TypeError(kind)


def _item_kind(option: Option) -> type:
    return type(option.default[0])


def _fixed_length(option: Option) -> int | None:
    """Lists of numbers (img_size: H W, betas) have the default's length; lists of names any length."""
    return len(option.default) if _item_kind(option) in (int, float) else None


def check(name: str, value, option: Option | None = None):
    """The value of option `name`, typed (5 -> 5.0 for a float option) and checked; raises OptionError."""
    option = option or _options()[name]
    if isinstance(option.default, list):
        if isinstance(value, (str, int, float)) and _fixed_length(option) is None:
            value = [value]           # `embeddings: bge`
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{value!r} is not a list")
        n = _fixed_length(option)
        if n is not None and len(value) != n:
            raise OptionError(f"{list(value)!r} has {len(value)} values, expected {n}")
        value = [_typed(_item_kind(option), v) for v in value]
        if option.allowed is not None and not isinstance(option.allowed, Heads):
            return [option.allowed(v) for v in value]
    else:
        value = _typed(type(option.default), value)
    return option.allowed(value) if option.allowed is not None else value


def check_all(values: dict, source: str) -> dict:
    """Every value typed and checked; SystemExit naming each bad one with `source` (a file, the command line)."""
    options = _options()
    unknown = sorted(set(values) - set(options))
    problems = [f"unknown option {k!r}{did_you_mean(k, options)}" for k in unknown]
    checked = {}
    for name, value in values.items():
        if name in options:
            try:
                checked[name] = check(name, value, options[name])
            except OptionError as e:
                problems.append(f"{name}: {e}")
    if problems:
        raise SystemExit(f"{source}: " + "\n  ".join(problems) + "\n(python main.py --help lists every option with "
                         "its allowed values)")
    return checked


def primary_loss(cfg: dict) -> str:
    """The loss the division listens to and the RDA term trains: primary_loss, or the first of loss_names."""
    from model.losses import parse_loss_names
    return cfg["primary_loss"] or parse_loss_names(cfg["loss_names"])[0]


def cross_problems(cfg: dict) -> list[str]:
    """What is wrong between options (each fine on its own)."""
    from model.losses import parse_loss_names
    problems = []
    parts = cfg["loss_names"].split("+")
    if "pre" in parts and not cfg["pretrain_path"]:
        problems.append(f"loss_names {cfg['loss_names']!r}: '+pre' initialises CLIP from a ReID-pretrained "
                        "checkpoint: give its file with --pretrain_path")
    losses = parse_loss_names(cfg["loss_names"])
    if cfg["primary_loss"] and cfg["primary_loss"] not in losses:
        problems.append(f"primary_loss {cfg['primary_loss']!r} is not trained: loss_names {cfg['loss_names']!r} "
                        f"trains {', '.join(losses)}")
    trained = losses + [f"rda_{primary_loss(cfg)}"]       # the RDA term trains the primary loss
    for key in cfg["loss_weights"]:
        if key not in trained:
            problems.append(f"loss_weights: {key!r} is not trained by loss_names {cfg['loss_names']!r}; its keys "
                            f"can be {', '.join(trained)} (add the loss to loss_names or drop the weight)")
    if (cfg["pretrain_path"] or cfg["pretrain_choice"]) in ("", "random"):     # a random CLIP (build_clip)
        from model.clip import CLIPConfig
        try:
            CLIPConfig(**cfg["clip_arch"], image_size=tuple(cfg["img_size"]), stride=cfg["stride_size"],
                       context_length=cfg["text_length"])
        except ValueError as e:
            problems.append(f"clip_arch {cfg['clip_arch']} with img_size {cfg['img_size']}, stride_size "
                            f"{cfg['stride_size']}: {e}")
    return problems


# ------------------------------------------------------------------ the command line
class _Parser(argparse.ArgumentParser):
    """Unknown options are named with the closest known one (no abbreviations: --num_epo is not --num_epoch)."""

    def parse_args(self, args=None, namespace=None):
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            known = [s for s in self._option_string_actions if s.startswith("--")]
            hints = [f"{a}: did you mean {closest(a, known)}?" for a in extra if a.startswith("-") and closest(a, known)]
            self.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f"; {h}" for h in hints)
                       + " (options are spelled out in full: python main.py --help lists them)")
        return namespace


def _cli(name: str, item: bool = False):
    """argparse type for option `name` (for one item of a list option when `item`)."""
    option = _options()[name]

    def convert(text: str):
        try:
            if item:
                value = _typed(_item_kind(option), text)
                allowed = option.allowed
                if isinstance(allowed, Heads):
                    return OneOf(names=allowed.names)(value)
                return allowed(value) if allowed is not None else value
            return check(name, yaml.safe_load(text) if isinstance(option.default, dict) else text)
        except (OptionError, yaml.YAMLError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _help(option: Option) -> str:
    rule = option.allowed.describe() if option.allowed is not None else ""
    text = f"{option.help}{f'; allowed: {rule}' if rule else ''} (default: {option.default})"
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Train a text-to-image person re-identification model.", allow_abbrev=False,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="", help="YAML file of options (command-line values override it)")
    for title, group in _groups().items():
        g = p.add_argument_group(title)
        for name, option in group.items():
            # default=SUPPRESS: only values actually typed appear, so they can override the YAML file
            kw = dict(default=argparse.SUPPRESS, help=_help(option))
            if isinstance(option.allowed, OneOf):
                kw["choices"] = option.allowed.values
            if isinstance(option.default, bool):
                # `--img_aug` as in RDE's scripts, `--img_aug false` or `--no-img_aug` to switch off
                g.add_argument(f"--{name}", nargs="?", const=True, type=_cli(name), **kw)
                g.add_argument(f"--no-{name}", dest=name, action="store_false", default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            elif isinstance(option.default, list):
                if isinstance(option.allowed, Heads):
                    kw["choices"] = option.allowed.names()
                g.add_argument(f"--{name}", nargs=_fixed_length(option) or "+", type=_cli(name, item=True), **kw)
            else:
                g.add_argument(f"--{name}", type=_cli(name), **kw)
    return p


# ------------------------------------------------------------------ files and the resolved config
def load_yaml(path: str, _seen: tuple = ()) -> dict:
    """The options of a YAML file (a --config or a run's configs.yaml), typed and checked.  A file may start
    from another one, as fast-reid's do: ``_BASE_: ../demo.yaml`` (relative to the file) is read first and the
    file's own options override it."""
    if not os.path.isfile(path):
        raise SystemExit(f"config file not found: {path}" + (f" (the _BASE_ of {_seen[-1]})" if _seen else ""))
    if os.path.abspath(path) in _seen:
        raise SystemExit(f"config file {path}: its _BASE_ chain comes back to it ({' -> '.join(_seen)})")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise SystemExit(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a mapping of option: value")
    base = data.pop("_BASE_", None)
    own = check_all(data, f"config file {path}")
    if base is None:
        return own
    return {**load_yaml(os.path.join(os.path.dirname(path), str(base)), (*_seen, os.path.abspath(path))), **own}


def defaults() -> dict:
    return {k: option.default for k, option in _options().items()}


def resolve(cli: dict, file_values: dict, source: str = "options") -> EasyDict:
    """defaults < file_values < cli, every value checked, and the options checked against each other; `source`
    says where they came from in messages."""
    cfg = defaults()
    method = cli.get("method", file_values.get("method", cfg["method"]))
    if method in _methods():        # a method's own defaults, under the file and the command line
        cfg.update(_methods()[method].defaults)
    cfg.update(file_values)
    cfg.update(cli)
    cfg = check_all(json.loads(json.dumps(cfg)), source)       # deep copy; plain types only
    problems = cross_problems(cfg)
    if problems:
        raise SystemExit(f"{source}: " + "\n  ".join(problems))
    return EasyDict(cfg)


# what may change when a run is resumed: where the data is and how fast it is read, not what is trained
RUNTIME_OPTIONS = ("resume", "run_dir", "overwrite", "root_dir", "device", "num_workers", "log_period", "output_dir",
                   "image_cache", "image_cache_dir")


def config_conflicts(saved: dict, given: dict) -> list[str]:
    """'name (run: a, given: b)' for every option of `given` whose value differs from `saved` (or from the
    default where `saved` lacks it), runtime options aside."""
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists, int vs float 1 vs 1.0 stay apart)
    return [f"{k} (run: {saved.get(k, _options()[k].default)!r}, given: {v!r})" for k, v in given.items()
            if k in _options() and k not in RUNTIME_OPTIONS and plain(v) != plain(saved.get(k, _options()[k].default))]


def parse_args(argv=None) -> EasyDict:
    """Options for main.py.  With --resume RUN_DIR the run's saved configs.yaml is the configuration: options
    that would change it are refused, by name."""
    args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    config_file = args.pop("config")
    if not args.get("resume"):
        return resolve(args, load_yaml(config_file) if config_file else {},
                       f"options of {config_file} and the command line" if config_file else "options")
    run = args["resume"]
    saved_file = os.path.join(run, "configs.yaml")
    if not os.path.isfile(saved_file):
        raise SystemExit(f"--resume {run}: no configs.yaml there; is it a run folder made by main.py?")
    if config_file:
        raise SystemExit(f"--resume {run} continues the run with its own configs.yaml; drop --config {config_file} "
                         "(to train with other options, start a new run)")
    saved = load_yaml(saved_file)
    conflicts = config_conflicts(saved, args)
    if conflicts:
        raise SystemExit(f"--resume {run}: these options differ from the run's configs.yaml: {'; '.join(conflicts)}. "
                         f"A resumed run keeps its configuration; only {', '.join(RUNTIME_OPTIONS[3:])} may change")
    args["run_dir"] = run
    return resolve(args, saved, f"options of {saved_file}")


def save_config(cfg: dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(dict(json.loads(json.dumps(cfg))), f, sort_keys=False)
