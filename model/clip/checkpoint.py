"""Reading CLIP weights from a file: OpenAI's TorchScript release (checked against its published SHA-256) or a
torch.save'd state dict / checkpoint dict (IRRA, RDE, ICL, MLLM4Text-ReID, ours), wrapper prefixes stripped and
only the keys of OpenAI's CLIP layout kept."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Mapping

import torch
from torch import nn

from utils.safe_load import TRUST_FLAG, DamagedFileError, FileRefused, UnsafeFileError, trusted, unsafe_message
from utils.safe_load import load as safe_load
from utils.torchscript import is_torchscript_archive as _is_torchscript_archive
from utils.torchscript import read_torchscript_tensors

OPENAI_VIT_B16_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
)
# Where OpenAI's `clip` package downloads to; we only look there, never download.
OPENAI_CACHE_DIR = os.path.expanduser("~/.cache/clip")
# OpenAI publishes each file's SHA-256 as the second-to-last part of its download URL.
OPENAI_SHA256 = {OPENAI_VIT_B16_URL.rsplit("/", 1)[1]: OPENAI_VIT_B16_URL.rsplit("/", 2)[1]}


_BLOCK = r"transformer\.resblocks\.\d+\.(?:attn\.(?:in_proj_weight|in_proj_bias|out_proj\.(?:weight|bias))" \
         r"|ln_[12]\.(?:weight|bias)|mlp\.c_(?:fc|proj)\.(?:weight|bias))"
# Exactly the keys of a ViT CLIP. Anything else (IRRA's classifier / cross-modal heads,
# non-tensor entries like `input_resolution`, optimizer state) is dropped on load.
_CLIP_KEY = re.compile(
    r"(?:visual\.(?:conv1\.weight|class_embedding|positional_embedding|ln_pre\.(?:weight|bias)"
    r"|ln_post\.(?:weight|bias)|proj|" + _BLOCK + r")"
    r"|" + _BLOCK +
    r"|token_embedding\.weight|positional_embedding|ln_final\.(?:weight|bias)|text_projection|logit_scale)"
)
# Wrappers added by DataParallel/DDP (`module.`), IRRA/RDE (`base_model.`) and torch.compile.
_WRAPPER_PREFIXES = ("module.", "base_model.", "_orig_mod.")


def _strip_prefixes(key: str, prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _missing_file_message(path: str) -> str:
    return (f"CLIP checkpoint not found: {path!r}. OpenAI's ViT-B-16.pt is not downloaded automatically; "
            f"download it by hand (e.g. {OPENAI_VIT_B16_URL}, the URL in OpenAI's clip package) "
            f"and pass its path, or put it at {os.path.join(OPENAI_CACHE_DIR, 'ViT-B-16.pt')}.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _read_checkpoint(path: str) -> Any:
    """The file's contents, read without running code from it (utils/safe_load.py, utils/torchscript.py): a
    TorchScript archive gives {name: tensor}, a torch.save'd file its dict.  DamagedFileError naming the file when
    it is not one; UnsafeFileError when its pickle names objects outside the allowlist."""
    expected = ("; expected a TorchScript archive (OpenAI's ViT-B-16.pt) or a torch.save'd state dict / "
                "checkpoint dict; the file may be truncated or of another format")
    if _is_torchscript_archive(path):
        try:
            return read_torchscript_tensors(path)
        except pickle.UnpicklingError as e:
            if "is not read from a TorchScript archive" in str(e) and not trusted():
                raise UnsafeFileError(unsafe_message(path, "TorchScript archive", str(e).split()[1])) from None
            if not trusted():
                raise DamagedFileError(f"{path!r} looks like a TorchScript archive but cannot be read "
                                       f"({_first_line(e)}){expected}") from None
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise DamagedFileError(f"{path!r} looks like a TorchScript archive but cannot be read "
                                   f"({_first_line(e)}){expected}") from None
        # --trust_checkpoint: TorchScript's own loader, for archives holding more than a module tree of tensors
        warnings.warn(f"{path}: loaded with torch.jit.load because of {TRUST_FLAG}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)   # torch.jit is deprecated; OpenAI publishes only it
                return torch.jit.load(path, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise DamagedFileError(f"{path!r} looks like a TorchScript archive but cannot be loaded "
                                   f"({_first_line(e)}){expected}") from None
    return safe_load(path, "checkpoint", expected)


def _sha256(path: str) -> str:
    """The file's SHA-256, hashed in 1 MiB chunks, remembered per (size, mtime) in PATH.sha256.json."""
    st = os.stat(path)
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = path + ".sha256.json"
    try:
        with open(cache) as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in stamp} == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or an unreadable one: hash again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    try:
        with open(cache, "w") as f:
            json.dump({**stamp, "sha256": digest.hexdigest()}, f)
    except OSError:
        pass  # read-only folder: the check still ran, it is only not remembered
    return digest.hexdigest()


def verify_openai_checksum(path: str) -> None:
    """A file named like an OpenAI release (ViT-B-16.pt) must be that release, byte for byte.

    A mismatch is an error when the file is damaged or a foreign TorchScript archive: a partial download
    otherwise surfaces later as an obscure unpickling error. A plain torch.save'd state dict saved under the
    name (someone's own weights, never OpenAI's TorchScript release) only gets a warning.
    """
    expected = OPENAI_SHA256.get(os.path.basename(path))
    if expected is None:
        return
    actual = _sha256(path)
    if actual == expected:
        return
    size = os.path.getsize(path)
    if zipfile.is_zipfile(path) and not _is_torchscript_archive(path):
        warnings.warn(f"{path!r} is not OpenAI's {os.path.basename(path)} (SHA-256 {actual[:12]}..., OpenAI's is "
                      f"{expected[:12]}...); it is a plain state dict, loaded as such")
        return
    raise ValueError(f"{path!r} ({size} bytes) has SHA-256 {actual}, but OpenAI's {os.path.basename(path)} has "
                     f"{expected}: the file is truncated or corrupted (an interrupted download?). Download it again "
                     f"from {OPENAI_VIT_B16_URL}")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict (OpenAI layout keys) from a checkpoint file.

    Accepts OpenAI's TorchScript archive, a plain state dict, or a checkpoint dict
    with the weights under `model` / `state_dict`. Wrapper prefixes are stripped
    and only keys of the CLIP layout are kept. Tensors keep their stored dtype.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_file_message(path))
    verify_openai_checksum(path)

    obj = _read_checkpoint(path)
    if isinstance(obj, nn.Module):  # TorchScript archive or a pickled full model
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise FileRefused(f"{path!r} holds a {type(obj).__name__}, expected a state dict (a mapping of "
                         f"parameter names to tensors) or a checkpoint dict with a 'model' / 'state_dict' entry")

    sd: dict[str, torch.Tensor] = {}
    ignored = []
    for raw_key, value in obj.items():
        key = _strip_prefixes(str(raw_key))
        if not isinstance(value, torch.Tensor):
            continue
        if not _CLIP_KEY.fullmatch(key):
            ignored.append(str(raw_key))
            continue
        if key in sd:
            raise FileRefused(f"{path!r}: two entries map to CLIP key {key!r} after stripping prefixes "
                             f"{_WRAPPER_PREFIXES} (one is {raw_key!r}); cannot tell which to use")
        sd[key] = value
    if not sd:
        seen = [str(k) for k in list(obj.keys())[:8]]
        raise FileRefused(f"{path!r} contains no CLIP weights (expected keys like 'visual.conv1.weight', "
                         f"'token_embedding.weight', optionally under 'module.' / 'base_model.'); "
                         f"{len(obj)} keys seen, e.g. {seen}")
    if ignored:  # e.g. the heads of an IRRA / RDE checkpoint: said, so that a misspelt layout is noticed
        logging.getLogger("reid").info("%s: %d tensors outside the CLIP layout were not loaded, e.g. %s",
                                       path, len(ignored), ignored[:5])
    return sd
