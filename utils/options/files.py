"""YAML files of options: reading one (`read_mapping`), with fast-reid's ``_BASE_`` inheritance and every value
checked (`load_yaml`), and writing a config back (`save_config`)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import yaml

from .option import Option, check_all


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
