"""Lets PyPI's torchvision import beside the CPU build of torch, in the vLLM CPU environment only.

PyPI's torchvision wheels are CUDA builds: their C++ ops (`_C.so`) need libtorch_cuda, which torch+cpu lacks, so
they do not load.  torchvision's Python side copes with that (every op checks `_has_ops()` before it runs) except
two fake-kernel registrations for `torchvision::nms` and `torchvision::qnms`, which fail at import time with
"operator torchvision::nms does not exist".  Qwen2-VL's image processor in transformers needs only
`torchvision.transforms.v2`, pure Python over torch.

build_env.sh installs this file with a .pth line into the environment's site-packages.  It waits for the first
`import torchvision` (so that other processes, pip included, never import torch for it), then tries the C++ ops
the way torchvision does; only if they cannot load does it declare the two operators' signatures, with no
kernel: calling them raises torch's own "could not run ... with arguments from the CPU backend" error, just
as every other torchvision op raises "Couldn't load custom C++ ops" there.  No installed file is changed.
"""
from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import os
import sys


def _declare_ops_if_unloadable(package_dir: str) -> None:
    import torch

    for path in glob.glob(os.path.join(package_dir, "_C*.so")):
        try:
            torch.ops.load_library(path)   # what torchvision does next: loaded once, a no-op the second time
            return
        except (OSError, ImportError):
            pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_ops_if_unloadable.lib = lib   # a Library object drops its definitions when collected


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            _declare_ops_if_unloadable(spec.submodule_search_locations[0])
        return spec


def install() -> None:
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
