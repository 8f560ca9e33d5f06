"""Fixtures shared by the test files, and the `slow` marker (pytest.ini): `python -m pytest -m "not slow"` skips
the end-to-end tests (subprocess trainings, THI end to end, torch.compile, torchrun, the benchmarks).  Tests
marked `real_size` (minutes on a CPU) are skipped unless the marker expression names them (`-m real_size`)."""
import os
import sys
import tempfile

import pytest

# tests import the project's packages the way main.py does: with the repo root first on the path
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# torch.compile's kernel cache does not tell ATen's kernel sets apart: a kernel that inductor compiled beside the
# machine's AVX-512 kernels, reused under ATEN_CPU_CAPABILITY=avx2, segfaults (tests/test_training.py's compiled
# twins, torch 2.14.1; with a cache of its own it passes).  So a suite run on another kernel set gets its own cache.
if os.environ.get("ATEN_CPU_CAPABILITY"):
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"torchinductor_{os.getuid()}_{os.environ['ATEN_CPU_CAPABILITY']}"))


# the synthetic dataset of `data_root`; a test file sets DATA_SIZES (make_synthetic's arguments) to change it
DATA_SIZES = dict(num_train_ids=12, num_test_ids=6, num_val_ids=3, seed=3)


@pytest.fixture(scope="module")
def data_root(request, tmp_path_factory):
    """A synthetic CUHK-PEDES-format dataset, one per test file: trainings write noise files into it."""
    from datasets.synthetic import make_synthetic

    sizes = getattr(request.module, "DATA_SIZES", DATA_SIZES)
    root = tmp_path_factory.mktemp("data")
    make_synthetic(str(root), fmt="CUHK-PEDES", **sizes)
    return str(root)


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory):
    """A tiny trained run (one epoch, no division; tests.helpers.train_tiny_run) on this file's data_root: what
    THI re-ranks, through transformers (test_thi.py) and through vLLM (test_vllm_engine.py)."""
    from tests.helpers import train_tiny_run

    return train_tiny_run(data_root, tmp_path_factory.mktemp("run") / "run")


# Fixtures that train a run or build a tiny MLLM: a test using one (directly or through another fixture) is
# end to end, so it is marked slow here, in test files of every owner alike.
SLOW_FIXTURES = {"run_dir", "single_run", "twin_run", "rda_run", "yes_model", "no_model", "tiny_qwen", "model_dir",
                 "lora_dir"}


def pytest_collection_modifyitems(config, items):
    # a `real_size` test (pytest.ini) takes minutes: it runs only where the marker expression names it
    run_real_size = "real_size" in (config.getoption("markexpr", "") or "")
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if "real_size" in item.keywords and not run_real_size:
            item.add_marker(pytest.mark.skip(reason="a real-size rehearsal of several minutes on a CPU: "
                                                    "python -m pytest -m real_size runs it"))
