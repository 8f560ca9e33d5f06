"""Reading .pth / .pt files without running code from them.

torch.load's pickles can name any Python callable, so a downloaded checkpoint, a run folder shared by someone or a
cache file swapped by someone else could run anything on load.  Every file of the project is read here with
weights_only=True: tensors, containers and plain scalars, plus SAFE_GLOBALS below and nothing else.  A file that
names anything else is refused with UnsafeFileError, naming the object; `--trust_checkpoint` (trust_files())
loads it anyway, for a file whose origin the user trusts.  A damaged file raises DamagedFileError.  Both name the
file and the way out; the entry points print them as one message (command()).

Imports nothing of the project.
"""
from __future__ import annotations

import argparse
import pickle
import re
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch

TRUST_FLAG = "--trust_checkpoint"


class FileRefused(ValueError):
    """A file that cannot be used as asked; the message names it and what to do."""


class UnsafeFileError(FileRefused):
    """The file's pickle names an object outside the allowlist: loading it would call that object's code."""


class DamagedFileError(FileRefused):
    """Truncated, cut short or not a torch file at all."""


def _numpy_globals() -> list:
    # Checkpoints written before utils/seed.py stored plain data held the numpy RNG state as a uint32 ndarray; its pickle names
    # these.  An ndarray rebuilt from them is plain data (an object-dtype array would also need numpy's
    # ObjectDType, which is not listed, so it stays refused).
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
            (reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct")]


class _EasyDictAsDict:
    """Our checkpoints written before the config was stored as a plain dict carry EasyDict values (clip_arch,
    gmm, loss_weights).  Their pickle is read as an OrderedDict (the one dict type weights_only fills item by
    item and then gives attributes): the same keys and values, and no EasyDict code runs."""

    def __new__(cls, *args):
        return OrderedDict()


# What the formats we read carry beyond tensors, dicts, lists, tuples and scalars (which weights_only always
# takes): old run folders (above) and training scripts' pickled argparse.Namespace, a plain attribute holder that
# IRRA-family checkpoints carry beside the weights (construction only sets attributes).  RDE / ICL / IRRA /
# MLLM4Text-ReID files are otherwise dicts of tensors and numbers; OpenAI's TorchScript archive is not read by
# torch.load at all (utils/torchscript.py).
SAFE_GLOBALS = [argparse.Namespace, (_EasyDictAsDict, "easydict.EasyDict"), *_numpy_globals()]

_trusted = {"on": False}


def trust_files(on: bool = True) -> None:
    """--trust_checkpoint: files holding other objects are loaded in full (their code runs)."""
    _trusted["on"] = bool(on)


def trusted() -> bool:
    return _trusted["on"]


def add_trust_flag(parser) -> None:
    """--trust_checkpoint in a command's --help (command() takes it out of argv before the parser runs)."""
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="load checkpoint files that hold objects other than tensors and plain data (their code "
                             "runs: only for files you trust)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def refused_object(e: BaseException) -> str | None:
    """The object a weights_only load refused (e.g. 'posix.system'), or None when `e` is no such refusal."""
    text = str(e)
    if "Weights only load failed" not in text and "WeightsUnpickler" not in text:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported (?:class|operand) ([^\s]+)", text)
    if found:
        return found.group(1)
    details = [line for line in text.splitlines() if "WeightsUnpickler error" in line]
    return details[0].split("error:", 1)[-1].strip() if details else "an object outside the allowed types"


def unsafe_message(path: str, what: str, obj: str) -> str:
    return (f"{path}: refused to load this {what}: it holds an object of type {obj}, and unpickling it would run "
            f"that code. Our own checkpoints and the published RDE / ICL / IRRA / MLLM4Text-ReID / OpenAI CLIP "
            f"files hold only tensors and plain data. If you trust where the file comes from, add {TRUST_FLAG} "
            "to load it anyway")


def load(path: str, what: str = "checkpoint", hint: str = "") -> object:
    """torch.load(path) with weights_only=True and SAFE_GLOBALS; UnsafeFileError / DamagedFileError naming the
    file otherwise.  `what` names the file in messages ("checkpoint", "retrieval index"); `hint` says what the
    file should be, for a damaged one."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        obj = refused_object(e)
        if obj is None:
            raise DamagedFileError(f"{path} is not a readable {what} ({_first_line(e)}){hint}") from None
        if not trusted():
            raise UnsafeFileError(unsafe_message(path, what, obj)) from None
    except Exception as e:  # noqa: BLE001 - truncated, foreign or unreadable: named, never a traceback
        raise DamagedFileError(f"{path} is not a readable {what} ({_first_line(e)}){hint}") from None
    warnings.warn(f"{path}: loaded in full because of {TRUST_FLAG} (it holds objects other than tensors and "
                  "plain data, whose code ran)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise DamagedFileError(f"{path} is not a readable {what} ({_first_line(e)}){hint}") from None


@contextmanager
def command(argv: list[str]):
    """Around an entry point: yields argv without --trust_checkpoint, which trusts files for this command only (the
    command line alone can: a config file or a run's configs.yaml may come from where the file comes from), and
    ends the command with the message of a refused or damaged file instead of a traceback."""
    previous = trusted()
    trust_files(TRUST_FLAG in argv)
    try:
        yield [a for a in argv if a != TRUST_FLAG]
    except FileRefused as e:
        raise SystemExit(str(e)) from None
    finally:
        trust_files(previous)
