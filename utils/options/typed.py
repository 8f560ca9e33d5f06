"""An option's value as its type: the default's type (bool, int, float, str, dict), text as the command line or a
YAML file gives it read too (`as_type`), and the error every rule raises (`OptionError`)."""
from __future__ import annotations

import re


class OptionError(ValueError):
    """A value an option does not allow; the message says what it allows."""


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _boolean(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if v.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise OptionError(f"{v!r} is not a boolean (true / false)")


def as_type(kind: type, value):
    """`value` as `kind`; text as the command line gives it is read too."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _boolean(value)
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
