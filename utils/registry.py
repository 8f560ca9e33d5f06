"""Named parts a config picks (losses, embedding heads, weighting rules, training methods): one registry class,
checked when a part registers, and parts found by their files (`import_folder`).

A registry refuses a second entry under a name already taken (a silent overwrite would train another loss than
the one named) and runs its kind's check on each entry, so a loss without ``reduction`` or a head without
``encode_text`` fails at import, naming the class and what it lacks, instead of at the first training step.
A part may declare the options it reads (``options = {name: Option}``, see utils/options/): the config
collects them for ``--help`` and checking, and the part is built with their values as plain arguments.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping


def closest(word: str, choices) -> str | None:
    """The choice closest to `word`, case ignored, if any is close."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions that turn `a` into `b`."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''."""
    match = closest(word, choices)
    return f" (did you mean {match}?)" if match else ""


def accepts(func: Callable, *args, **kwargs) -> bool:
    """Whether `func` can be called with these arguments (by its signature; nothing is run)."""
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def qualified_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def declared_options(cls) -> dict:
    """{name: Option} a part declares (none when it has no `options`)."""
    return getattr(cls, "options", None) or {}


def option_defaults(cls) -> dict:
    return {name: option.default for name, option in declared_options(cls).items()}


def option_problems(cls) -> list[str]:
    options = getattr(cls, "options", {})
    if not isinstance(options, dict) or not all(hasattr(o, "default") and hasattr(o, "help") for o in options.values()):
        return ["options must be {name: utils.options.Option(default, help, allowed)}"]
    return []


def import_folder(package: str, path) -> None:
    """Import every module in a package's folder (`package`: its name, `path`: its __path__), in name order, except
    those whose name starts with _: each registers the parts it defines, so a new part is one new file, with no
    import line to add anywhere.  A registry package calls it last in its __init__.py."""
    for module in sorted(m.name for m in pkgutil.iter_modules(path)):
        if not module.startswith("_"):
            importlib.import_module(f"{package}.{module}")


class Registry(Mapping):
    """name -> class.  `check(cls)` returns what the class lacks for this kind of part (empty: nothing)."""

    def __init__(self, kind: str, folder: str, check: Callable[[type], list[str]]):
        self.kind, self.folder, self.check = kind, folder, check
        self._entries: dict[str, type] = {}

    def register(self, name: str):
        def add(cls):
            taken = self._entries.get(name)
            # the same class again is a module imported twice (importlib.reload), not a second part
            if taken is not None and qualified_name(taken) != qualified_name(cls):
                raise ValueError(f"{self.kind} name {name!r} is registered twice: by {qualified_name(taken)} and "
                                 f"by {qualified_name(cls)}; give one of them another name")
            problems = option_problems(cls) or self.check(cls)
            if problems:
                raise TypeError(f"{self.kind} {name!r} ({qualified_name(cls)}) cannot be registered: "
                                + "; ".join(problems))
            self._entries[name] = cls
            return cls
        return add

    def describe(self, name: str) -> str:
        """How messages name an entry: "weighting 'ccd' (solver.weighting.ccd.ConsensusCleanDivision)"."""
        return f"{self.kind} {name!r} ({qualified_name(self._entries[name])})"

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered."""
        return (f"unknown {self.kind} {name!r}{did_you_mean(name, self)}; registered: {', '.join(sorted(self))} "
                f"({self.folder})")

    def build(self, name: str, *args, cfg=None, **kwargs):
        """The part `name` built with these arguments and, from `cfg`, the values of the options it declares."""
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        cls = self._entries[name]
        return cls(*args, **kwargs, **({k: cfg[k] for k in declared_options(cls)} if cfg is not None else {}))

    def __getitem__(self, name: str) -> type:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._entries)})"
