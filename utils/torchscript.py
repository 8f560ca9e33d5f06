"""The tensors of a TorchScript archive (OpenAI's ViT-B-16.pt), read without TorchScript.

torch.jit.load compiles the archive's code/ folder and runs its own deserialiser over data from the file (the
path of CVE-2025-32434 and other memory-safety fixes), and torch.load refuses TorchScript archives under
weights_only.  The weights need neither: the archive is a zip whose data.pkl pickles the module tree
(`__torch__.*` records holding their attributes) with tensors whose bytes are the zip's data/N entries.  That
pickle is read here by an unpickler that knows exactly four things: tensors (torch._utils._rebuild_tensor_v2),
typed storages, OrderedDict, and TorchScript module records, which become plain attribute holders.  Any other
name in the pickle is refused, so reading an archive runs no code from it.

Imports nothing of the project.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict

import torch


class _ModuleRecord:
    """A TorchScript module's pickled attributes (submodules, parameters, buffers, flags), nothing else."""

    def __setstate__(self, state):
        self.attributes = state if isinstance(state, dict) else {}


def _storage_dtype(name: str) -> torch.dtype:
    storage = getattr(torch, name, None)
    dtype = getattr(storage, "_dtype", None) if name.endswith("Storage") else None
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"unknown storage type torch.{name}")
    return dtype


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return _storage_dtype(name)
        if module.startswith("__torch__.") or module == "__torch__":
            return _ModuleRecord
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not read from a TorchScript archive")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel), as torch.jit.save writes it
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {dtype!r}")
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        untyped = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def is_torchscript_archive(path: str) -> bool:
    # Both torch.save and TorchScript write zip archives; only TorchScript ships code/ and constants.pkl.
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _flatten(record, prefix: str, out: dict) -> None:
    for name, value in record.attributes.items():
        key = f"{prefix}{name}"
        if isinstance(value, torch.Tensor):
            out[key] = value
        elif isinstance(value, _ModuleRecord):
            _flatten(value, key + ".", out)


def read_torchscript_tensors(path: str) -> dict[str, torch.Tensor]:
    """{dotted attribute name: tensor} of every tensor in the archive's module tree (the state dict, plus any
    tensor constant kept as an attribute).  Errors: pickle.UnpicklingError, zipfile.BadZipFile, KeyError."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise pickle.UnpicklingError("no data.pkl at the archive's top level")
        prefix = pickles[0][: -len("data.pkl")]
        root = _Unpickler(archive.read(pickles[0]), archive, prefix).load()
    if not isinstance(root, _ModuleRecord):
        raise pickle.UnpicklingError(f"data.pkl holds a {type(root).__name__}, not a module")
    out: dict[str, torch.Tensor] = {}
    _flatten(root, "", out)
    return out
