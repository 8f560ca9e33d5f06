"""Tests of the datasets package: formats, validation errors, RDA, noise, augmentation, loaders."""
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS, DatasetError, build_dataset  # noqa: E402
from datasets.synthetic import FORMATS, make_synthetic  # noqa: E402

SMALL = dict(num_train_ids=10, num_test_ids=4, num_val_ids=3, images_per_id=2, captions_per_image=2)


def _make(root, fmt, **kw):
    return make_synthetic(str(root), fmt=fmt, **{**SMALL, **kw})


def _rewrite(anno, edit):
    """Load the annotation list, let `edit` change it, write it back."""
    with open(anno) as f:
        data = json.load(f)
    edit(data)
    with open(anno, "w") as f:
        json.dump(data, f)


# ---- formats ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips(tmp_path, fmt):
    anno = _make(tmp_path, fmt)
    cls = DATASETS[fmt]
    assert anno == os.path.join(tmp_path, cls.dataset_dir, cls.anno_names[0])
    ds = build_dataset(fmt, str(tmp_path))
    assert isinstance(ds, cls) and ds.anno_file == anno and not ds.has_rda

    assert ds.num_train_pids == 10
    assert len(ds.train) == 10 * 2 * 2
    assert sorted({r.pid for r in ds.train}) == list(range(10))
    assert sorted({r.image_id for r in ds.train}) == list(range(20))
    assert ds.train[0].pid == 0 and ds.train[0].image_id == 0
    assert all(os.path.isabs(r.img_path) and os.path.isfile(r.img_path) for r in ds.train)
    assert len(ds.test.img_paths) == 8 and len(ds.test.captions) == 16
    assert len(ds.test.caption_pids) == 16 and len(set(ds.test.image_pids)) == 4
    assert set(ds.test.caption_pids) == set(ds.test.image_pids)
    assert all(os.path.isfile(p) for p in ds.test.img_paths)

    with open(anno) as f:
        raw = json.load(f)
    assert min(r["id"] for r in raw) == cls.id_base
    assert all(cls.path_key in r for r in raw)
    if "val" in cls.splits:
        assert ds.val is not None and len(ds.val.img_paths) == 6
    else:
        assert ds.val is None and {r["split"] for r in raw} == {"train", "test"}

    table = ds.summary()
    assert "train" in table and "test" in table and "captions" in table


def test_format_specifics(tmp_path):
    _make(tmp_path, "RSTPReid")
    with open(tmp_path / "RSTPReid" / "data_captions.json") as f:
        assert "img_path" in json.load(f)[0]
    _make(tmp_path, "UFine6926")
    ufine = build_dataset("UFine6926", str(tmp_path))
    assert os.path.dirname(os.path.dirname(ufine.train[0].img_path)) == str(tmp_path / "UFine6926")
    _make(tmp_path, "ICFG-PEDES")
    assert build_dataset("ICFG-PEDES", str(tmp_path)).val is None


def test_alternative_names_and_overrides(tmp_path):
    anno = _make(tmp_path, "CUHK-PEDES")
    os.replace(anno, tmp_path / "CUHK-PEDES" / "caption_all.json")
    assert build_dataset("CUHK-PEDES", str(tmp_path)).anno_file.endswith("caption_all.json")

    # --anno_path: relative to the dataset folder, or absolute.
    os.replace(tmp_path / "CUHK-PEDES" / "caption_all.json", tmp_path / "CUHK-PEDES" / "mine.json")
    assert build_dataset("CUHK-PEDES", str(tmp_path), anno_path="mine.json").anno_file.endswith("mine.json")
    absolute = str(tmp_path / "CUHK-PEDES" / "mine.json")
    assert build_dataset("CUHK-PEDES", str(tmp_path), anno_path=absolute).anno_file == absolute


def test_module_anno_path_constant(tmp_path, monkeypatch):
    import datasets.cuhkpedes as mod

    anno = _make(tmp_path, "CUHK-PEDES")
    os.replace(anno, tmp_path / "CUHK-PEDES" / "edited.json")
    monkeypatch.setattr(mod, "ANNO_PATH", "edited.json")
    assert build_dataset("CUHK-PEDES", str(tmp_path)).anno_file.endswith("edited.json")


def test_synth_pedes_generates_on_first_use(tmp_path, monkeypatch):
    import datasets.synthetic_pedes as mod

    calls = []

    def small(root_dir, **kw):  # the real defaults are too big for a unit test
        calls.append(kw)
        return make_synthetic(root_dir, **{**kw, **SMALL})

    monkeypatch.setattr(mod, "make_synthetic", small)
    ds = build_dataset("SYNTH-PEDES", str(tmp_path))
    assert calls and os.path.isfile(tmp_path / "SYNTH-PEDES" / "reid_raw.json")
    assert ds.num_train_pids == 10 and ds.val is not None
    build_dataset("SYNTH-PEDES", str(tmp_path))
    assert len(calls) == 1  # second time it is loaded, not regenerated


def test_unknown_dataset_lists_names():
    with pytest.raises(DatasetError, match="CUHK-PEDES"):
        build_dataset("nope", "/tmp")


# ---- validation errors -----------------------------------------------------------------------
def test_missing_annotation_names_what_was_tried(tmp_path):
    with pytest.raises(DatasetError) as e:
        build_dataset("ICFG-PEDES", str(tmp_path))
    msg = str(e.value)
    assert "ICFG-PEDES.json" in msg and "ICFG_PEDES.json" in msg and "--anno_path" in msg and "--root_dir" in msg
    with pytest.raises(DatasetError, match="nothere.json"):
        build_dataset("ICFG-PEDES", str(tmp_path), anno_path="nothere.json")


def test_malformed_json(tmp_path):
    anno = _make(tmp_path, "CUHK-PEDES")
    with open(anno, "w") as f:
        f.write('[\n  {"id": 1,\n   "file_path": oops}\n]')
    with pytest.raises(DatasetError, match=r"reid_raw\.json.*line 3 column"):
        build_dataset("CUHK-PEDES", str(tmp_path))


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d[0].pop("id"), r"record 0 has no field 'id'"),
    (lambda d: d[3].pop("captions"), r"record 3 has no field 'captions'"),
    (lambda d: d[5].pop("file_path"), r"record 5 has no field 'file_path'"),
    (lambda d: d[2].update(captions="one string"), r"record 2: 'captions' must be a non-empty list of strings"),
    (lambda d: d[2].update(captions=[]), r"record 2: 'captions' must be a non-empty list"),
    (lambda d: d[4].update(captions=["ok", 7]), r"record 4: 'captions'"),
    (lambda d: d[0].update(diversity_captions=["only one"]), r"record 0: 'diversity_captions'.*2 entries.*got 1"),
    (lambda d: d[1].update(split="holdout"), r"record 1: unknown split 'holdout'"),
    (lambda d: d[1].update(id="x"), r"record 1: 'id' must be an integer"),
])
def test_bad_records(tmp_path, edit, pattern):
    anno = _make(tmp_path, "CUHK-PEDES")
    _rewrite(anno, edit)
    with pytest.raises(DatasetError, match=pattern) as e:
        build_dataset("CUHK-PEDES", str(tmp_path))
    assert "reid_raw.json" in str(e.value)


def test_not_a_list(tmp_path):
    anno = _make(tmp_path, "CUHK-PEDES")
    with open(anno, "w") as f:
        json.dump({"annotations": []}, f)
    with pytest.raises(DatasetError, match=r"reid_raw\.json: expected a JSON list of records, got a dict"):
        build_dataset("CUHK-PEDES", str(tmp_path))


def test_empty_split(tmp_path):
    anno = _make(tmp_path, "RSTPReid")
    _rewrite(anno, lambda d: [r.update(split="train") for r in d if r["split"] == "val"])
    with pytest.raises(DatasetError, match=r"data_captions\.json: the 'val' split is empty"):
        build_dataset("RSTPReid", str(tmp_path))


def test_missing_images_listed(tmp_path):
    _make(tmp_path, "CUHK-PEDES")
    img_dir = tmp_path / "CUHK-PEDES" / "imgs" / "test"
    removed = sorted(os.listdir(img_dir))
    for name in removed:
        os.remove(img_dir / name)
    with pytest.raises(DatasetError) as e:
        build_dataset("CUHK-PEDES", str(tmp_path))
    msg = str(e.value)
    assert f"{len(removed)} of" in msg and "reid_raw.json" in msg
    assert sum(name in msg for name in removed) == 5  # the first five are named
    build_dataset("CUHK-PEDES", str(tmp_path), check_images=False)  # and the check can be skipped


def test_tolerates_extra_keys_and_id_bases(tmp_path):
    anno = _make(tmp_path, "CUHK-PEDES")
    _rewrite(anno, lambda d: [r.update(processed_tokens=[["a"]], id=r["id"] + 1000) for r in d])
    ds = build_dataset("CUHK-PEDES", str(tmp_path))
    assert sorted({r.pid for r in ds.train}) == list(range(10))


def test_paths_leaving_the_dataset_folder_are_refused(tmp_path):
    anno = _make(tmp_path, "CUHK-PEDES")
    # a real image outside the dataset folder: the record would load without a word if it were not checked
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes((tmp_path / "CUHK-PEDES" / "imgs" / "train" / "1_0.jpg").read_bytes())

    def edit(d):
        d[3]["file_path"] = "../../elsewhere.jpg"
        d[5]["file_path"] = str(outside)                      # absolute: os.path.join would drop the root
        d[6]["file_path"] = "train/../train/" + d[6]["file_path"].split("/")[1]   # '..' that stays inside
    _rewrite(anno, edit)
    with pytest.raises(DatasetError) as e:
        build_dataset("CUHK-PEDES", str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{anno}: 2 image paths leading outside the dataset folder")
    assert "record 3: '../../elsewhere.jpg'" in msg and f"record 5: '{outside}'" in msg and "record 6" not in msg
    assert "move the image into the dataset folder" in msg and "python -m datasets.check" in msg


def test_symlinked_image_folder_is_not_outside(tmp_path):
    _make(tmp_path / "real", "CUHK-PEDES")
    (tmp_path / "CUHK-PEDES").mkdir()
    os.replace(tmp_path / "real" / "CUHK-PEDES" / "reid_raw.json", tmp_path / "CUHK-PEDES" / "reid_raw.json")
    os.symlink(tmp_path / "real" / "CUHK-PEDES" / "imgs", tmp_path / "CUHK-PEDES" / "imgs")  # images on another disk
    assert len(build_dataset("CUHK-PEDES", str(tmp_path)).train) == 40


@pytest.mark.parametrize("caption", ["", "  \t "])
def test_empty_captions_are_refused(tmp_path, caption):
    anno = _make(tmp_path, "RSTPReid")
    _rewrite(anno, lambda d: d[4]["captions"].__setitem__(1, caption))
    with pytest.raises(DatasetError) as e:
        build_dataset("RSTPReid", str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{anno}: 1 empty captions") and f"record 4 (train/" in msg and "caption 1" in msg
    assert "write the caption, or remove it" in msg


# ---- RDA -------------------------------------------------------------------------------------
def test_rda_groups_read_and_composed(tmp_path):
    from datasets.text_aug import compose_rda_caption

    _make(tmp_path, "CUHK-PEDES", with_rda=True)
    ds = build_dataset("CUHK-PEDES", str(tmp_path))
    assert ds.has_rda
    entry = ds.train[0].diversity
    assert isinstance(entry, list) and all(isinstance(g, list) and 2 <= len(g) <= 3 for g in entry)
    rng = random.Random(0)
    composed = {compose_rda_caption(entry, rng) for _ in range(20)}
    assert len(composed) > 1  # order and alternatives vary
    for text in composed:
        picked = [next(s for s in g if s in text) for g in entry]  # one alternative of each group
        assert len(" ".join(picked)) == len(text)
    assert compose_rda_caption("plain caption", rng) == "plain caption"
    assert compose_rda_caption([["a."], "b."], rng) in ("a. b.", "b. a.")


def test_synthetic_is_deterministic(tmp_path):
    a = _make(tmp_path / "a", "RSTPReid", seed=3, with_rda=True)
    b = _make(tmp_path / "b", "RSTPReid", seed=3, with_rda=True)
    with open(a) as fa, open(b) as fb:
        assert json.load(fa) == json.load(fb)
    img = "imgs/train/0_1.jpg"
    assert (tmp_path / "a" / "RSTPReid" / img).read_bytes() == (tmp_path / "b" / "RSTPReid" / img).read_bytes()


# ---- noisy correspondence --------------------------------------------------------------------
def test_noise_permutation(tmp_path):
    from datasets.noise import apply_noise, load_or_create_permutation, make_noisy_permutation

    n, rate = 1000, 0.2
    perm = make_noisy_permutation(n, rate, seed=1)
    assert perm.dtype == np.int64 and np.array_equal(np.sort(perm), np.arange(n))
    moved = int((perm != np.arange(n)).sum())
    assert int(rate * n) - 10 <= moved <= int(rate * n)  # a shuffle may leave a few in place
    assert np.array_equal(perm, make_noisy_permutation(n, rate, seed=1))
    assert not np.array_equal(perm, make_noisy_permutation(n, rate, seed=2))
    assert np.array_equal(make_noisy_permutation(n, 0.0, seed=1), np.arange(n))

    path = str(tmp_path / "sub" / "CUHK-PEDES_0.2.npy")
    saved = load_or_create_permutation(path, n, rate, seed=1)
    assert os.path.isfile(path) and np.array_equal(saved, perm)
    assert np.array_equal(load_or_create_permutation(path, n, rate, seed=99), perm)  # loaded, not re-made
    with pytest.raises(DatasetError, match=r"CUHK-PEDES_0\.2\.npy.*length 999"):
        load_or_create_permutation(path, 999, rate, seed=1)

    _make(tmp_path, "CUHK-PEDES", with_rda=True)
    records = build_dataset("CUHK-PEDES", str(tmp_path)).train
    p = make_noisy_permutation(len(records), 0.5, seed=0)
    noisy = apply_noise(records, p)
    for i, (new, old) in enumerate(zip(noisy, records)):
        assert (new.pid, new.image_id, new.img_path) == (old.pid, old.image_id, old.img_path)
        assert new.caption == records[p[i]].caption and new.diversity == records[p[i]].diversity


# ---- text augmentation -----------------------------------------------------------------------
def test_txt_aug_keeps_structure():
    from datasets import text_aug
    from datasets.text_aug import augment_caption_ids
    from utils import tokenizer

    assert (text_aug.MASK_ID, text_aug.SOT_ID, text_aug.EOT_ID) == (
        tokenizer.MASK_ID, tokenizer.SOT_ID, tokenizer.EOT_ID)
    ids = tokenizer.tokenize_one("a woman in a red coat and black trousers with a green backpack " * 3, 77)
    n_body = int(ids.argmax()) - 1
    changed = 0
    for rng in [random.Random(s) for s in range(50)] + [torch.Generator().manual_seed(s) for s in range(50)]:
        out = augment_caption_ids(ids, rng)
        assert out.shape == ids.shape and out.dtype == ids.dtype
        eot = int(out.argmax())
        assert out[0] == tokenizer.SOT_ID and out[eot] == tokenizer.EOT_ID
        assert (out[1:eot] > 0).all() and (out[1:eot] < tokenizer.SOT_ID).all()
        assert (out[eot + 1:] == 0).all() and eot <= n_body + 1
        changed += int(not torch.equal(out, ids))
    assert changed > 90
    assert torch.equal(augment_caption_ids(ids, random.Random(7)), augment_caption_ids(ids, random.Random(7)))


# ---- loaders ---------------------------------------------------------------------------------
def test_train_pairs_views(tmp_path):
    from datasets.loaders import TrainPairs, build_eval_loaders, build_train_loader
    from datasets.transforms import PAD

    _make(tmp_path, "CUHK-PEDES", with_rda=True)
    ds = build_dataset("CUHK-PEDES", str(tmp_path))
    pairs = TrainPairs(ds.train, (64, 32), text_length=40, txt_aug=True, num_views=2, use_rda=True)
    state = torch.get_rng_state()
    item = pairs[3]
    assert torch.equal(torch.get_rng_state(), state)          # the per-sample seeding leaves torch's RNG alone
    assert item["index"] == 3 and item["pid"] == ds.train[3].pid
    # one resized uint8 image per pair (normalised and augmented on the device), two views' parameters
    assert item["image"].shape == (3, 64, 32) and item["image"].dtype == torch.uint8
    assert item["flip"].shape == (2,) and item["crop"].shape == (2, 2) and item["erase"].shape == (2, 4)
    assert item["caption_ids"].shape == (2, 40) and item["rda_ids"].shape == (2, 40)
    assert ((item["crop"] >= 0) & (item["crop"] <= 2 * PAD)).all()
    items = [pairs[i] for i in range(8)]
    # independent augmentation draws per view
    assert any(not torch.equal(it["crop"][0], it["crop"][1]) for it in items)
    assert any(not torch.equal(v[0], v[1]) for it in items for v in (it["caption_ids"], it["rda_ids"]))
    batch = pairs.__getitems__(list(range(8)))                # a batch is the items stacked
    for key, value in batch.items():
        assert torch.equal(value, torch.stack([torch.as_tensor(it[key]) for it in items])), key

    loader = build_train_loader(ds.train, (64, 32), 40, batch_size=4, num_workers=0, num_views=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 64, 32) and batch["caption_ids"].shape == (4, 2, 40)
    assert batch["crop"].shape == (4, 2, 2) and batch["flip"].dtype == torch.bool
    assert torch.equal(batch["caption_ids"][:, 0], batch["caption_ids"][:, 1])  # no txt_aug: identical
    assert "rda_ids" not in batch
    order = [next(iter(build_train_loader(ds.train, (64, 32), 40, 4, 0, seed=5)))["index"] for _ in range(2)]
    assert torch.equal(order[0], order[1])  # seeded shuffle

    images, texts = build_eval_loaders(ds.test, (64, 32), 40, batch_size=100, num_workers=0)
    idx, imgs = next(iter(images))
    assert imgs.shape == (len(ds.test.img_paths), 3, 64, 32) and idx.tolist() == list(range(len(idx)))
    idx, ids = next(iter(texts))
    assert ids.shape == (len(ds.test.captions), 40)


def test_workers_give_the_main_process_batches(tmp_path):
    """Two loader workers (forked, each mapping the cache itself) give the batches of the main process."""
    from datasets.loaders import build_eval_loaders, build_train_loader

    _make(tmp_path, "CUHK-PEDES")
    ds = build_dataset("CUHK-PEDES", str(tmp_path))
    kw = dict(image_size=(64, 32), text_length=40, batch_size=6, img_aug=True, txt_aug=True, num_views=2)
    main, workers = (list(build_train_loader(ds.train, num_workers=w, **kw)) for w in (0, 2))
    assert len(main) == len(workers) == -(-len(ds.train) // 6)
    for a, b in zip(main, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (idx0, img0), = build_eval_loaders(ds.test, (64, 32), 40, 100, 0)[0]
    (idx2, img2), = build_eval_loaders(ds.test, (64, 32), 40, 100, 2)[0]
    assert torch.equal(idx0, idx2) and torch.equal(img0, img2)


def test_corrupt_jpeg_names_path(tmp_path):
    from datasets.loaders import ImageDecodeError, build_train_loader

    _make(tmp_path, "CUHK-PEDES")
    ds = build_dataset("CUHK-PEDES", str(tmp_path))
    bad = ds.train[0].img_path
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    loader = build_train_loader(ds.train[:2], (64, 32), 40, batch_size=2, num_workers=0)
    with pytest.raises(ImageDecodeError, match=os.path.basename(bad)):
        next(iter(loader))


def test_batched_sample_seeds_equal_numpys_seed_sequence():
    from datasets.loaders import sample_seed, sample_seeds

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2 ** 32, (3000, 3))
    keys[:10] = 0
    keys[10:20, 1] = 2 ** 32 - 1
    for seed in (0, 1, 2 ** 32 - 1, 2 ** 40):            # the last: two words of entropy, the scalar path
        got = sample_seeds(seed, keys[:300] if seed == 2 ** 40 else keys)
        assert got.tolist() == [sample_seed(seed, *map(int, k)) for k in keys[:len(got)]]
