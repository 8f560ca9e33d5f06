"""Where the image cache of a list of images lives: one folder per (dataset folder, size), by default
DATASET/.cache/images_HxW/, under --image_cache_dir when given, or under ~/.cache when the dataset folder is
read-only.  Keys are relative to the dataset folder, so a moved dataset keeps its cache."""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

from ..bases import DATASET_ROOTS
from ..transforms import image_size_hw

CACHE_FOLDER = ".cache"          # inside the dataset folder


def dataset_folder_of(paths: Sequence[str]) -> str:
    """The registered dataset folder holding every path (the deepest one), else the paths' common folder."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    common = os.path.commonpath(list(folders)) if folders else os.getcwd()
    inside = [r for r in DATASET_ROOTS if os.path.commonpath([r, common]) == r]
    return max(inside, key=len) if inside else common


def cache_folder(paths: Sequence[str], size, cache_dir: str = "") -> tuple[str, str]:
    """(folder of the cache for these images at this size, the dataset folder its keys are relative to)."""
    h, w = image_size_hw(size)
    base = dataset_folder_of(paths)
    if cache_dir:
        tag = f"{os.path.basename(base) or 'root'}-{hashlib.sha1(base.encode()).hexdigest()[:8]}"
        return os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), tag, f"images_{h}x{w}"), base
    return os.path.join(base, CACHE_FOLDER, f"images_{h}x{w}"), base


def user_cache_folder(paths: Sequence[str], size) -> tuple[str, str]:
    """Where a cache goes when the dataset folder is read-only: $XDG_CACHE_HOME (~/.cache)/reid-images/..."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return cache_folder(paths, size, os.path.join(root, "reid-images"))
