"""What an option allows beyond its type, one rule each (`OneOf`, `Range`, `Pattern`, `Device`, `NameList`, `Keys`)
and the ranges parts share (`FRACTION`, `POSITIVE`, `AT_LEAST_0`, `AT_LEAST_1`).  A rule is called with the typed
value and returns it, or raises OptionError saying what it allows; `describe()` is its part of the --help line."""
from __future__ import annotations

import re
from collections.abc import Callable

from ..registry import did_you_mean
from .typed import OptionError, as_type


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
                checked[key] = (rule or (lambda v: v))(as_type(kind, item))
            except OptionError as e:
                raise OptionError(f"key {key}: {e}") from None
        return checked

    def describe(self) -> str:
        return ""


FRACTION = Range(lo=0, hi=1, lo_open=True)
POSITIVE = Range(lo=0, lo_open=True)
AT_LEAST_0, AT_LEAST_1 = Range(lo=0), Range(lo=1)
