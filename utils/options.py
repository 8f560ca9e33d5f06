"""Config machinery, with no option of its own: an option (`Option`: its default, its help text, the values it
allows), the rules that check a value (`OneOf`, `Range`, `Pattern`, `Device`, `NameList`, `Keys` and the ranges
`FRACTION`, `POSITIVE`, `AT_LEAST_0`, `AT_LEAST_1`), reading a value as its option's type (`check`, `check_all`),
the command-line parser built from groups of options (no abbreviations; an unknown option is named with the closest
known one), YAML files of options with fast-reid's ``_BASE_`` inheritance (`load_yaml`) and writing a config back
(`save_config`).

It imports nothing of the project.  The project's training options (their table, the registries their values are
checked against, how a run's config is resolved from defaults, a method's defaults, a YAML file and the command
line) are in configs/; the parts declare the options they read with `Option` and the rules here
(model/losses/common.py, model/embeddings/tse.py, solver/weighting/alr.py, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import yaml

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


class NameList:
    """A list of names from `names()` (a registry, read when first needed), each once, at least one unless
    `empty` (then [] has the meaning its option gives it); `what` names one item in messages (a head)."""

    def __init__(self, what: str, names: Callable[[], object], empty: bool = False):
        self.what, self.names, self.empty = what, names, empty

    def __call__(self, value):
        if not value and not self.empty:
            raise OptionError(f"names no {self.what}; give at least one")
        for name in value:
            OneOf(names=self.names)(name)
        if len(set(value)) != len(value):
            raise OptionError(f"{value!r} names a {self.what} twice")
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


FRACTION = Range(lo=0, hi=1, lo_open=True)
POSITIVE = Range(lo=0, lo_open=True)
AT_LEAST_0, AT_LEAST_1 = Range(lo=0), Range(lo=1)


@dataclass(frozen=True)
class Option:
    """The type is the default's (a list: of its first item; a list of numbers has the default's length)."""
    default: object
    help: str
    allowed: Callable | None = None   # typed value -> value, raising OptionError (OneOf, Range, ...)


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
    return type(option.default[0]) if option.default else str     # an empty default: a list of names


def _fixed_length(option: Option) -> int | None:
    """Lists of numbers (img_size: H W, betas) have the default's length; lists of names any length."""
    return len(option.default) if _item_kind(option) in (int, float) else None


def check(value, option: Option):
    """`value` as `option` takes it, typed (5 -> 5.0 for a float option) and checked; raises OptionError."""
    if isinstance(option.default, list):
        if isinstance(value, (str, int, float)) and _fixed_length(option) is None:
            value = [value]           # `embeddings: bge`
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{value!r} is not a list")
        n = _fixed_length(option)
        if n is not None and len(value) != n:
            raise OptionError(f"{list(value)!r} has {len(value)} values, expected {n}")
        value = [_typed(_item_kind(option), v) for v in value]
        if option.allowed is not None and not isinstance(option.allowed, NameList):
            return [option.allowed(v) for v in value]
    else:
        value = _typed(type(option.default), value)
    return option.allowed(value) if option.allowed is not None else value


def check_all(values: dict, source: str, options: dict[str, Option], listing: str) -> dict:
    """Every value typed and checked against `options` ({name: Option}); SystemExit naming each bad one with
    `source` (a file, the command line) and pointing to `listing` (the command that lists the options)."""
    unknown = sorted(set(values) - set(options))
    problems = [f"unknown option {k!r}{did_you_mean(k, options)}" for k in unknown]
    checked = {}
    for name, value in values.items():
        if name in options:
            try:
                checked[name] = check(value, options[name])
            except OptionError as e:
                problems.append(f"{name}: {e}")
    if problems:
        raise SystemExit(f"{source}: " + "\n  ".join(problems) + f"\n({listing} lists every option with "
                         "its allowed values)")
    return checked


# ------------------------------------------------------------------ the command line
class _Parser(argparse.ArgumentParser):
    """Unknown options are named with the closest known one (no abbreviations: --num_epo is not --num_epoch)."""

    listing = "--help"    # the command that lists the options, named in the message

    def parse_args(self, args=None, namespace=None):
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            known = [s for s in self._option_string_actions if s.startswith("--")]
            hints = [f"{a}: did you mean {closest(a, known)}?" for a in extra if a.startswith("-") and closest(a, known)]
            self.error(f"unrecognized arguments: {' '.join(extra)}" + "".join(f"; {h}" for h in hints)
                       + f" (options are spelled out in full: {self.listing} lists them)")
        return namespace


def _cli(option: Option, item: bool = False):
    """argparse type for `option` (for one item of a list option when `item`)."""

    def convert(text: str):
        try:
            if item:
                value = _typed(_item_kind(option), text)
                allowed = option.allowed
                if isinstance(allowed, NameList):
                    return OneOf(names=allowed.names)(value)
                return allowed(value) if allowed is not None else value
            return check(yaml.safe_load(text) if isinstance(option.default, dict) else text, option)
        except (OptionError, yaml.YAMLError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _help(option: Option) -> str:
    rule = option.allowed.describe() if option.allowed is not None else ""
    text = f"{option.help}{f'; allowed: {rule}' if rule else ''} (default: {option.default})"
    return text.replace("%", "%%")


def build_parser(groups: dict[str, dict[str, Option]], description: str, listing: str) -> argparse.ArgumentParser:
    """`--config FILE` and one `--NAME` per option of `groups` ({--help group title: {name: Option}}), in their
    order; a boolean also takes `--no-NAME`.  Only the options given appear in the parsed namespace (so that they
    can override a file's).  `listing` (the command that lists the options) is named when an option is unknown."""
    p = _Parser(description=description, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.listing = listing
    p.add_argument("--config", default="", help="YAML file of options (command-line values override it)")
    for title, group in groups.items():
        g = p.add_argument_group(title)
        for name, option in group.items():
            # default=SUPPRESS: only values actually typed appear, so they can override the YAML file
            kw = dict(default=argparse.SUPPRESS, help=_help(option))
            if isinstance(option.allowed, OneOf):
                kw["choices"] = option.allowed.values
            if isinstance(option.default, bool):
                # `--img_aug` as in RDE's scripts, `--img_aug false` or `--no-img_aug` to switch off
                g.add_argument(f"--{name}", nargs="?", const=True, type=_cli(option), **kw)
                g.add_argument(f"--no-{name}", dest=name, action="store_false", default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            elif isinstance(option.default, list):
                if isinstance(option.allowed, NameList):
                    kw["choices"] = option.allowed.names()
                g.add_argument(f"--{name}", nargs=_fixed_length(option) or "+", type=_cli(option, item=True), **kw)
            else:
                g.add_argument(f"--{name}", type=_cli(option), **kw)
    return p


# ------------------------------------------------------------------ files
def read_mapping(path: str, hint: str = "") -> dict:
    """A YAML file's mapping of option: value, unchecked; SystemExit naming the file when it is missing (`hint`
    says why it was read), is not YAML or holds something else."""
    if not os.path.isfile(path):
        raise SystemExit(f"config file not found: {path}{hint}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise SystemExit(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a mapping of option: value")
    return data


def load_yaml(path: str, options: dict[str, Option], listing: str, prepare: Callable | None = None,
              _seen: tuple = (), layers: list | None = None) -> dict:
    """The options of a YAML file, typed and checked against `options` (`listing`: as check_all's; `prepare(values,
    source)`, if given, sees each file's values first).  A file may start from another one, as fast-reid's do:
    ``_BASE_: ../demo.yaml`` (relative to the file) is read first and the file's own options override it.
    `layers`, when given, receives (file, its own options) for each file read, base first."""
    if os.path.abspath(path) in _seen:
        raise SystemExit(f"config file {path}: its _BASE_ chain comes back to it ({' -> '.join(_seen)})")
    data = read_mapping(path, f" (the _BASE_ of {_seen[-1]})" if _seen else "")
    base = data.pop("_BASE_", None)
    source = f"config file {path}"
    own = check_all(prepare(data, source) if prepare else data, source, options, listing)
    inherited = {} if base is None else load_yaml(os.path.join(os.path.dirname(path), str(base)), options, listing,
                                                  prepare, (*_seen, os.path.abspath(path)), layers)
    if layers is not None:
        layers.append((path, own))
    return {**inherited, **own}


def save_config(cfg: dict, path: str) -> None:
    """`cfg` as a YAML file, in its order, plain types only (what load_yaml reads back)."""
    with open(path, "w") as f:
        yaml.safe_dump(dict(json.loads(json.dumps(cfg))), f, sort_keys=False)
