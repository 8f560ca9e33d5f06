"""Decode once (issue 14, item 1): the image cache holds the JPEG path's pixels exactly, rebuilds only what changed,
finishes a build that was killed, never reads a half-written slot, and names an unreadable image."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from datasets import build_dataset
from datasets.image_cache import building
from datasets.image_cache import CachedImages, DecodedImages, ImageCache, cache_folder, open_images
from datasets.loaders import ImageDecodeError, read_image
from datasets.synthetic import make_synthetic
from datasets.transforms import build_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 32)


@pytest.fixture
def dataset(tmp_path):
    make_synthetic(str(tmp_path), fmt="CUHK-PEDES", num_train_ids=8, num_test_ids=3, num_val_ids=2, seed=5)
    return build_dataset("CUHK-PEDES", str(tmp_path))


def count_decodes(monkeypatch) -> list:
    calls, real = [], building.decode_resized

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(building, "decode_resized", counting)
    return calls


def test_pixels_equal_the_jpeg_path_exactly(dataset):
    paths = dataset.test.img_paths + dataset.val.img_paths
    cached = open_images(paths, SIZE)
    assert isinstance(cached, CachedImages)
    got = cached.read(range(len(paths)))
    transform = build_transforms(SIZE, is_train=False)                 # Resize (bilinear) + PILToTensor
    expect = torch.stack([transform(read_image(p)) for p in paths])
    assert got.dtype == torch.uint8 and torch.equal(got, expect)
    assert torch.equal(DecodedImages(paths, SIZE).read(range(len(paths))), expect)
    assert torch.equal(cached.read([3, 0, 3]), expect[[3, 0, 3]])
    # next to the dataset, keyed by the path inside the dataset folder
    folder, base = cache_folder(paths, SIZE)
    assert folder == os.path.join(dataset.dataset_root, ".cache", "images_64x32") and base == dataset.dataset_root
    with open(os.path.join(folder, "index.json")) as f:
        keys = json.load(f)["entries"]
    assert sorted(keys) == sorted(os.path.relpath(p, dataset.dataset_root) for p in paths)


def test_switched_off_decodes_and_another_size_is_another_cache(dataset, monkeypatch):
    paths = dataset.test.img_paths
    assert isinstance(open_images(paths, SIZE, image_cache=False), DecodedImages)
    open_images(paths, SIZE).prepare()
    calls = count_decodes(monkeypatch)
    other = open_images(paths, (32, 16))
    other.prepare()
    assert len(calls) == len(paths) and other.read([0]).shape == (1, 3, 32, 16)


def test_changed_and_added_images_rebuild_only_what_changed(dataset, monkeypatch, tmp_path):
    paths = list(dataset.test.img_paths)
    open_images(paths, SIZE).prepare()
    calls = count_decodes(monkeypatch)
    open_images(paths, SIZE).prepare()
    assert calls == []                                                  # all there: nothing decoded
    # one image replaced by another (its size and mtime change), one image added
    os.replace(paths[1], paths[1] + ".old")
    shutil.copyfile(paths[2], paths[1])
    added = str(tmp_path / "CUHK-PEDES" / "imgs" / "added.jpg")
    shutil.copyfile(paths[0], added)
    source = open_images(paths + [added], SIZE)
    source.prepare()
    assert sorted(calls) == sorted([paths[1], added])
    got = source.read(range(len(paths) + 1))
    assert torch.equal(got[1], got[2]) and torch.equal(got[-1], got[0])   # the new pixels, not the stale ones
    entries = ImageCache(*cache_folder(paths, SIZE), SIZE).read_index()
    assert len({e[0] for e in entries.values()}) == len(paths) + 1      # the changed image kept its slot


def test_a_moved_dataset_keeps_its_cache(dataset, monkeypatch, tmp_path):
    paths = dataset.train and sorted({r.img_path for r in dataset.train})
    open_images(paths, SIZE).prepare()
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "CUHK-PEDES", moved / "CUHK-PEDES", copy_function=shutil.copy2)   # mtimes kept
    calls = count_decodes(monkeypatch)
    again = build_dataset("CUHK-PEDES", str(moved))
    source = open_images(sorted({r.img_path for r in again.train}), SIZE)
    source.prepare()
    assert calls == [] and source.folder.startswith(str(moved))


def test_an_unreadable_image_is_named_and_the_rest_is_kept(dataset, monkeypatch):
    paths = list(dataset.test.img_paths)
    with open(paths[2], "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError, match=f"cannot decode image {paths[2]}"):
        open_images(paths, SIZE).prepare()
    shutil.copyfile(paths[3], paths[2])                                  # fixed: only that image is decoded
    calls = count_decodes(monkeypatch)
    source = open_images(paths, SIZE)
    source.prepare()
    assert calls == [paths[2]] and torch.equal(source.read([2]), source.read([3]))


def test_an_interrupted_build_is_finished_and_its_unlisted_slots_never_read(dataset, monkeypatch):
    paths = sorted({r.img_path for r in dataset.train})
    monkeypatch.setattr(building, "CHUNK", 4)
    monkeypatch.setattr(building, "SAVE_EVERY_S", -1.0)                # the index after every chunk
    real, done = building._decode_chunk, []

    def dies_on_the_third_chunk(task):
        if len(done) == 2:
            # the chunk's pixels are half written when the process dies: garbage in its slots
            pixels_file, size, items = task[:3]
            with open(pixels_file, "r+b") as f:
                f.seek(items[0][0] * 3 * size[0] * size[1])
                f.write(b"\x07" * 3 * size[0] * size[1])
            raise KeyboardInterrupt
        done.append(task)
        return real(task)

    monkeypatch.setattr(building, "_decode_chunk", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        open_images(paths, SIZE).prepare()
    folder, base = cache_folder(paths, SIZE)
    assert len(ImageCache(folder, base, SIZE).read_index()) == 8       # two chunks listed, nothing else
    monkeypatch.setattr(building, "_decode_chunk", real)
    calls = count_decodes(monkeypatch)
    source = open_images(paths, SIZE)
    source.prepare()
    assert sorted(calls) == sorted(paths[8:])
    expect = torch.stack([build_transforms(SIZE, is_train=False)(read_image(p)) for p in paths])
    assert torch.equal(source.read(range(len(paths))), expect)


KILLED_BUILD = """
import sys, time
sys.path.insert(0, {root!r})
from datasets.image_cache import building, open_images
real = building.decode_resized
def slow(path, size):
    time.sleep(0.01)
    return real(path, size)
building.decode_resized = slow
building.SAVE_EVERY_S = 0.2
building.CHUNK = 8
open_images({paths!r}, {size!r}, workers=1).prepare()
"""


@pytest.mark.slow          # a subprocess that imports torch: ~15 s on 2 busy cores
def test_a_build_killed_by_a_signal_is_finished_on_next_use(tmp_path, monkeypatch):
    """A real process, SIGKILLed while building (no cleanup runs): the next use decodes only what the index does
    not list and reads exact pixels."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for k in range(300):
        paths.append(str(folder / f"{k}.png"))
        from PIL import Image
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(paths[-1])
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD.format(root=ROOT, paths=paths, size=SIZE)])
    cache, base = cache_folder(paths, SIZE)
    index = ImageCache(cache, base, SIZE)
    deadline = time.time() + 60
    while time.time() < deadline and len(index.read_index()) < 40:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = len(index.read_index())
    assert 40 <= listed < 300, listed
    calls = count_decodes(monkeypatch)
    source = open_images(paths, SIZE, workers=1)
    source.prepare()
    assert len(calls) == 300 - listed
    expect = torch.stack([build_transforms(SIZE, is_train=False)(read_image(p)) for p in paths])
    assert torch.equal(source.read(range(300)), expect)


@pytest.mark.slow          # a subprocess that imports torch
def test_the_cache_command_builds_every_split(dataset, tmp_path):
    out = tmp_path / "elsewhere"
    proc = subprocess.run([sys.executable, "-m", "datasets.cache", "--dataset_name", "CUHK-PEDES", "--root_dir",
                           str(tmp_path), "--img_size", "64", "32", "--cache_dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    every = {r.img_path for r in dataset.train} | set(dataset.test.img_paths) | set(dataset.val.img_paths)
    assert f"{len(every)} images" in proc.stdout
    folder, base = cache_folder(sorted(every), SIZE, str(out))
    assert folder.startswith(str(out)) and len(ImageCache(folder, base, SIZE).read_index()) == len(every)
    assert not os.path.exists(os.path.join(dataset.dataset_root, ".cache"))


def test_the_image_cache_option_reaches_the_loaders(data_root, tmp_path, monkeypatch):
    """--image_cache false trains and evaluates from the JPEGs (no cache folder appears); the default builds the
    cache where --image_cache_dir says."""
    from datasets.loaders import torch_datasets
    from configs import parse_args
    from solver.build import build_engine
    from tests.helpers import tiny_args

    seen = []
    real = torch_datasets.open_images

    def spy(paths, size, image_cache=None, cache_dir=None):
        seen.append((image_cache, cache_dir))
        return real(paths, size, image_cache, cache_dir)
    monkeypatch.setattr(torch_datasets, "open_images", spy)
    build_engine(parse_args(tiny_args(data_root, tmp_path / "off", "--image_cache", "false")), str(tmp_path / "off"))
    assert seen and all(on is False for on, _ in seen)
    seen.clear()
    cache_dir = str(tmp_path / "caches")
    build_engine(parse_args(tiny_args(data_root, tmp_path / "on", "--image_cache_dir", cache_dir)), str(tmp_path / "on"))
    assert seen and all(on is True and where == cache_dir for on, where in seen)


def test_verify_repairs_an_image_replaced_with_its_size_and_mtime_kept(dataset, tmp_path):
    """The index keys an image by (path, bytes, mtime): a file replaced by other pixels of the same size whose mtime
    was put back (cp -p, touch -r) escapes it.  `python -m datasets.cache --verify` decodes every image again and
    rewrites the slots whose pixels changed, naming them."""
    from PIL import Image
    command = [sys.executable, "-m", "datasets.cache", "--dataset_name", "CUHK-PEDES", "--root_dir", str(tmp_path),
               "--img_size", "64", "32"]
    assert subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120).returncode == 0
    paths = dataset.test.img_paths
    target, other = paths[0], paths[-1]
    before, size = os.stat(target), os.path.getsize(target)
    Image.open(other).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "new.jpg", quality=40)
    data = (tmp_path / "new.jpg").read_bytes()
    assert len(data) <= size, "the replacement must fit the old file's size"
    with open(target, "wb") as f:
        f.write(data + bytes(size - len(data)))          # JPEG readers stop at the end-of-image marker
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(target).st_size == before.st_size and os.stat(target).st_mtime_ns == before.st_mtime_ns
    new_pixels = torch.from_numpy(building.decode_resized(target, SIZE))
    stale = open_images(paths, SIZE).read([0])[0]
    assert not torch.equal(stale, new_pixels)            # what the stat key cannot see
    done = subprocess.run(command + ["--verify"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    every = {r.img_path for r in dataset.train} | set(paths) | set(dataset.val.img_paths)
    relative = os.path.relpath(target, dataset.dataset_root)
    assert (f"verified {len(every)} cached images by decoding them again: 1 had changed with their size and "
            f"modification time kept, now repaired: {relative}\n") in done.stdout, done.stdout
    assert torch.equal(open_images(paths, SIZE).read([0])[0], new_pixels)
    again = subprocess.run(command + ["--verify"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert f"verified {len(every)} cached images by decoding them again: none had changed" in again.stdout
