"""An option (`Option`: its default, its help text, the rule of the values it allows) and checking values against
options (`check`, `check_all`): typed as the default (utils/options/typed.py), then the rule (rules.py)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import did_you_mean
from .rules import NameList
from .typed import OptionError, as_type


@dataclass(frozen=True)
class Option:
    """The type is the default's (a list: of its first item; a list of numbers has the default's length)."""
    default: object
    help: str
    allowed: Callable | None = None   # typed value -> value, raising OptionError (OneOf, Range, ...)


def item_kind(option: Option) -> type:
    return type(option.default[0]) if option.default else str     # an empty default: a list of names


def fixed_length(option: Option) -> int | None:
    """Lists of numbers (img_size: H W, betas) have the default's length; lists of names any length."""
    return len(option.default) if item_kind(option) in (int, float) else None


def check(value, option: Option):
    """`value` as `option` takes it, typed (5 -> 5.0 for a float option) and checked; raises OptionError."""
    if isinstance(option.default, list):
        if isinstance(value, (str, int, float)) and fixed_length(option) is None:
            value = [value]           # `embeddings: bge`
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{value!r} is not a list")
        n = fixed_length(option)
        if n is not None and len(value) != n:
            raise OptionError(f"{list(value)!r} has {len(value)} values, expected {n}")
        value = [as_type(item_kind(option), v) for v in value]
        if option.allowed is not None and not isinstance(option.allowed, NameList):
            return [option.allowed(v) for v in value]
    else:
        value = as_type(type(option.default), value)
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
