"""Helpers shared by test files (fixtures are in conftest.py; this module is imported as `tests.helpers`)."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# widths of 64 so that a saved file's head count reads back as CLIP's width // 64
TINY_ARCH = dict(embed_dim=32, vision_width=64, vision_layers=1, vision_heads=1,
                 text_width=64, text_layers=1, text_heads=1)
SMALL_IMAGES = ["--min_pixels", "3136", "--max_pixels", "3136"]   # THI: 56 x 56, 4 visual tokens per image


def tiny_args(data_root, run_dir, *extra):
    """main.py's arguments for a 2-epoch tiny random CLIP on CPU; `extra` (later values win) changes them.  TSE's
    size (--tse_dim 48) only when the run trains TSE: an option of a head the run does not use is refused."""
    return ["--dataset_name", "CUHK-PEDES", "--root_dir", str(data_root), "--run_dir", str(run_dir),
            "--pretrain_choice", "random", "--clip_arch", json.dumps(TINY_ARCH),
            "--img_size", "64", "32", "--text_length", "40", *(["--tse_dim", "48"] if "tse" in heads(extra) else []),
            "--batch_size", "8", "--test_batch_size", "32", "--num_workers", "0",
            "--num_epoch", "2", "--warmup_epochs", "1", "--lr", "1e-4", *extra]


def heads(argv) -> list:
    """The embedding heads main.py's arguments `argv` train: --embeddings, else --config's, else the default."""
    from configs import OPTIONS, load_yaml
    argv = list(argv)
    if "--embeddings" in argv:
        rest = argv[argv.index("--embeddings") + 1:]
        return rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]
    if "--config" in argv:
        return load_yaml(argv[argv.index("--config") + 1]).get("embeddings", OPTIONS["embeddings"].default)
    return OPTIONS["embeddings"].default


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


TIMING = ("train_time", "division/time")    # metrics that are the clock's, not the run's


def same_run(run, full):
    """The run in `run` (killed, stopped, resumed) ended where the uninterrupted run in `full` did: the same
    epochs with the same fields, every value but the times within float noise, and the same last weights
    (BatchNorm's running statistics included)."""
    import pytest
    import torch

    rows, expected = read_metrics(run), read_metrics(full)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in expected]
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys(), got["epoch"]
        for key in set(want) - set(TIMING):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["epoch"], key)
    resumed, uninterrupted = (torch.load(os.path.join(r, "last.pth"), weights_only=True)["models"][0]
                              for r in (run, full))
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-6, msg=key)


# THI: a tiny trained run (CLIP widths of 32, no division; conftest's run_dir) on data of these sizes, its test
# images, and model folders
THI_DATA_SIZES = dict(num_train_ids=6, num_test_ids=4, num_val_ids=2, seed=4)
THI_CLIP = dict(embed_dim=32, vision_width=32, vision_layers=1, vision_heads=2,
                text_width=32, text_layers=1, text_heads=2)


def train_tiny_run(root, run_dir, *extra):
    import main as train_main
    train_main.main(["--dataset_name", "CUHK-PEDES", "--root_dir", str(root), "--run_dir", str(run_dir),
                     "--pretrain_choice", "random", "--clip_arch", json.dumps(THI_CLIP), "--img_size", "64", "32",
                     "--text_length", "40", "--tse_dim", "48", "--batch_size", "8", "--test_batch_size", "32",
                     "--num_workers", "0", "--num_epoch", "1", "--warmup_epochs", "1", "--division", "false", *extra])
    return str(run_dir)


def load_run_split_images(data_root):
    from datasets import build_dataset
    return build_dataset("CUHK-PEDES", data_root).test.img_paths


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def weightless_model(model_dir, tmp_path):
    """A model folder with config.json, tokenizer and processor, but no weights (an unfinished download)."""
    import shutil
    folder = tmp_path / "no_weights"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return str(folder)


def write_odd_gallery_files(folder, good_jpeg: str) -> dict[str, str]:
    """Every kind of file a gallery folder must skip alone, named to sort between the good images 000.jpg,
    001.jpg ... (so that each would share a batch with good ones): {name: what its skip line must say}."""
    from PIL import Image

    folder = str(folder)
    with open(good_jpeg, "rb") as f:
        jpeg = f.read()
    with open(os.path.join(folder, "000_empty.jpg"), "wb"):
        pass                                                                  # 0 bytes
    os.symlink(os.path.join(folder, "gone.jpg"), os.path.join(folder, "001_dangling.jpg"))
    with open(os.path.join(folder, "002_garbage.jpg"), "wb") as f:
        f.write(b"these bytes are no image at all")
    with open(os.path.join(folder, "003_truncated.jpg"), "wb") as f:
        f.write(jpeg[:len(jpeg) // 2])
    Image.new("1", (8000, 8000)).save(os.path.join(folder, "004_huge.png"))   # 64 megapixels, a few kB on disk
    Image.new("RGB", (10000, 10), (200, 30, 30)).save(os.path.join(folder, "005_odd.png"))
    os.mkfifo(os.path.join(folder, "006_pipe.jpg"))                         # opening it would wait for a writer
    return {"000_empty.jpg": "empty file", "001_dangling.jpg": "dangling symlink",
            "002_garbage.jpg": "not an image", "003_truncated.jpg": "damaged", "004_huge.png": "too large",
            "005_odd.png": "too odd", "006_pipe.jpg": "not a regular file"}
