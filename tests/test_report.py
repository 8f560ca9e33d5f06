"""python -m reports.tables: run folders grouped into seeds of a recipe, beside the published numbers; run_seeds.sh."""
import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from reports import tables
from utils.metrics import METRIC_NAMES
from configs import resolve
from utils.options import save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLIP = dict(embed_dim=32, vision_width=32, vision_layers=1, vision_heads=2,
                 text_width=32, text_layers=1, text_heads=2)


def metrics(r1, shift=0.0):
    return {"R1": r1, "R5": 85.0 + shift, "R10": 90.0 + shift, "mAP": 60.0 + shift, "mINP": 40.0 + shift}


def make_run(path, records, **options):
    """A run folder as main.py writes it: the resolved options and one JSON line per epoch."""
    os.makedirs(path, exist_ok=True)
    cfg = resolve({"run_dir": str(path), **options}, {})
    save_config(cfg, os.path.join(path, "configs.yaml"))
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for epoch, m in enumerate(records, 1):
            f.write(json.dumps({"epoch": epoch, "lr": 1e-5, "loss/bge_TAL": 0.5, **m, "eval_row": "BGE+TSE"}) + "\n")
    return str(path)


@pytest.fixture
def logs(tmp_path):
    logs = tmp_path / "logs"
    # two seeds of RDE on CUHK-PEDES: best at epochs 2 / 3, last at epoch 3
    make_run(logs / "CUHK-PEDES" / "s1", [metrics(60.0), metrics(70.0, 1), metrics(69.0, 2)], seed=1, num_epoch=3)
    make_run(logs / "CUHK-PEDES" / "s2", [metrics(61.0), metrics(71.0, 1), metrics(72.0, 3)], seed=2, num_epoch=3,
             device="cpu", root_dir="/elsewhere")
    # the same name with another learning rate: another recipe
    make_run(logs / "CUHK-PEDES" / "lr", [metrics(50.0)], seed=1, num_epoch=3, lr=1e-4)
    # 50% noise: RDE's published R1 / mAP only
    make_run(logs / "CUHK-PEDES" / "n05", [metrics(65.0)], seed=1, num_epoch=1, noisy_rate=0.5)
    # RDA captions: compared with ICL without THI
    make_run(logs / "ICFG-PEDES" / "rda", [metrics(66.0)], dataset_name="ICFG-PEDES", num_epoch=1,
             anno_path="ICFG-PEDES/rda.json", name="ICL")
    return logs


def table(tables, dataset, rate):
    (t,) = [t for t in tables if t["dataset"] == dataset and t["noisy_rate"] == rate]
    return t


def test_seeds_are_averaged_and_compared_with_the_paper(logs):
    out = tables.main([str(logs), "--paper"])
    t = table(out["tables"], "CUHK-PEDES", 0.0)
    rows = {row.label: row for row in t["rows"]}
    best, last = rows["RDE (lr=1e-05), best (epoch 2, 3)"], rows["RDE (lr=1e-05), last (epoch 3)"]
    assert best.n == 2 and best.mean["R1"] == pytest.approx(71.0) and best.std["R1"] == pytest.approx(math.sqrt(2))
    assert best.mean["mAP"] == pytest.approx(62.0)             # 61 (epoch 2 of seed 1) and 63 (epoch 3 of seed 2)
    assert last.mean["R1"] == pytest.approx(70.5) and last.std["R1"] == pytest.approx(math.sqrt(4.5))
    assert best.reference == "RDE" and best.delta["R1"] == pytest.approx(71.0 - 75.94)
    assert rows["RDE (lr=0.0001), best (epoch 1)"].n == 1 and rows["RDE (lr=0.0001), best (epoch 1)"].std["R1"] is None
    assert [p.label for p in t["published"]][:2] == ["IRRA [IRRA]", "RDE [RDE]"]

    noisy = table(out["tables"], "CUHK-PEDES", 0.5)
    (row, _) = noisy["rows"]
    assert row.delta["R1"] == pytest.approx(65.0 - 71.33) and row.delta["mAP"] == pytest.approx(60.0 - 63.50)
    assert row.delta["R5"] is None                              # the paper gives R1 and mAP under noise
    rda = table(out["tables"], "ICFG-PEDES", 0.0)
    assert rda["rows"][0].reference == "ICL without THI (RDE + RDA)"
    assert rda["rows"][0].delta["R1"] == pytest.approx(66.0 - 68.11)

    md, tex = out["md"], out["tex"]
    assert "### CUHK-PEDES, noise rate 0" in md and "| RDE (lr=1e-05), best (epoch 2, 3) | 2 | 71.00 ± 1.41 |" in md
    assert "-4.94" in md and "*RDE [RDE]*" in md and "75.94" in md and "CVPR 2024" in md
    assert r"\begin{tabular}" in tex and r"71.00 $\pm$ 1.41" in tex and "$-4.94$" in tex and r"\toprule" in tex
    assert r"RDE (lr=1e-05), best (epoch 2, 3)" in tex and r"ICL without THI (RDE + RDA)" in tex


def test_without_paper_no_published_rows(logs):
    out = tables.main([str(logs), "--format", "markdown"])
    assert all(not t["published"] for t in out["tables"]) and "tex" not in out
    assert "vs" not in out["md"].splitlines()[2]


def test_thi_rows_before_and_after(logs, tmp_path):
    run = logs / "CUHK-PEDES" / "s1"
    thi = {"metrics": {"base (BGE+TSE)": metrics(70.0), "THI round 1": metrics(72.0), "THI round 2": metrics(74.0, 1)},
           "rounds": 2, "xi": 0.5, "lam": 0.8, "queries": 100, "checkpoint": "best", "model_id": "m"}
    os.makedirs(run / "thi")
    (run / "thi" / "metrics.json").write_text(json.dumps(thi))
    # THI on a published checkpoint: no run folder above, the dataset comes from metrics.json
    os.makedirs(logs / "thi" / "rde_best")
    (logs / "thi" / "rde_best" / "metrics.json").write_text(json.dumps(
        {**thi, "checkpoint": ["/w/rde_best.pth"], "dataset_name": "CUHK-PEDES"}))
    out = tables.main([str(logs), "--paper"])
    rows = {row.label: row for row in table(out["tables"], "CUHK-PEDES", 0.0)["rows"]}
    after = rows["RDE + THI, THI after: THI round 2"]
    assert rows["RDE + THI, THI before: base (BGE+TSE)"].mean["R1"] == 70.0 and after.mean["R1"] == 74.0
    assert after.reference == "ICL with THI" and after.delta["R1"] == pytest.approx(74.0 - 77.91)
    unrecorded = {row.label: row for row in table(out["tables"], "CUHK-PEDES", None)["rows"]}
    assert unrecorded["rde_best.pth + THI, THI after: THI round 2"].mean["mAP"] == 61.0
    assert "noise rate not recorded" in out["md"]


def test_synthetic_runs_stand_beside_cuhk_pedes(tmp_path):
    make_run(tmp_path / "demo", [metrics(30.0)], dataset_name="SYNTH-PEDES", name="demo", num_epoch=1)
    out = tables.main([str(tmp_path), "--paper"])
    (t,) = out["tables"]
    assert t["paper_dataset"] == "CUHK-PEDES" and t["published"] and "measure nothing" in out["md"]
    out = tables.main([str(tmp_path), "--paper", "RSTPReid", "--format", "latex"])
    assert out["tables"][0]["published"][0].mean["R1"] == 60.20


def test_partial_and_empty_folders(tmp_path, capsys):
    path = make_run(tmp_path / "killed", [metrics(40.0), metrics(45.0)], num_epoch=60)
    with open(os.path.join(path, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 3, "R1"')
    out = tables.main([str(tmp_path)])
    (row, _) = out["tables"][0]["rows"]
    assert row.mean["R1"] == 45.0 and "stopped at epoch 2 of 60" in out["md"]
    assert "not JSON" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SystemExit, match="no run folders"):
        tables.main([str(tmp_path / "empty")])


def test_published_numbers_are_complete_and_sourced():
    sources, results = tables.load_published()
    for r in results:
        assert r["source"] in sources and r["dataset"] in {"CUHK-PEDES", "ICFG-PEDES", "RSTPReid", "UFine6926"}
        assert set(r) - {"method", "source", "dataset", "noisy_rate"} <= set(METRIC_NAMES)
    clean = [r for r in results if r["noisy_rate"] == 0.0 and r["dataset"] != "UFine6926"]
    assert len(clean) == 15 and all(set(METRIC_NAMES) <= set(r) for r in clean)   # 5 methods x 3 datasets
    rde = next(r for r in clean if r["method"] == "RDE" and r["dataset"] == "CUHK-PEDES")
    assert [rde[m] for m in METRIC_NAMES] == [75.94, 90.14, 94.12, 67.56, 51.44]


def test_run_seeds_script_dry_run_and_resume(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "SEEDS": "1 2", "NOISE_RATES": "0.0 0.5", "OUTPUT": str(tmp_path)}
    os.makedirs(tmp_path / "rde_cuhk_n0.5_s2")
    (tmp_path / "rde_cuhk_n0.5_s2" / "last.pth").write_bytes(b"")
    lines = subprocess.run(["sh", "run_seeds.sh", "--root_dir", "/data"], cwd=ROOT, env=env, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    assert lines[0] == (f"python main.py --config configs/rde/cuhk.yaml --noisy_rate 0.0 --seed 1 "
                        f"--run_dir {tmp_path}/rde_cuhk_n0.0_s1 --root_dir /data")
    assert lines[3] == f"python main.py --resume {tmp_path}/rde_cuhk_n0.5_s2"
    assert len(lines) == 5 and lines[4] == f"python -m reports.tables {tmp_path} --paper"


@pytest.mark.slow
def test_run_seeds_script_trains_each_seed_in_its_own_folder(tmp_path):
    from datasets.synthetic import make_synthetic
    data = tmp_path / "data"
    make_synthetic(str(data), fmt="CUHK-PEDES", num_train_ids=6, num_test_ids=4, num_val_ids=2, seed=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "dataset_name": "CUHK-PEDES", "root_dir": str(data), "pretrain_choice": "random",
        "clip_arch": TINY_CLIP, "img_size": [64, 32], "text_length": 40, "tse_dim": 48, "batch_size": 8,
        "test_batch_size": 32, "num_workers": 0, "num_epoch": 1, "warmup_epochs": 1, "division": False,
        "precision": "fp32", "device": "cpu"}))
    env = {**os.environ, "CONFIG": str(config), "SEEDS": "1 2", "NOISE_RATES": "0.0", "OUTPUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    done = subprocess.run(["sh", "run_seeds.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = sorted(os.listdir(tmp_path / "out"))        # named FOLDER-OF-CONFIG_CONFIG_nRATE_sSEED
    assert len(folders) == 2 and folders[0].endswith("_tiny_n0.0_s1") and folders[1].endswith("_tiny_n0.0_s2")
    seeds = {yaml.safe_load(open(tmp_path / "out" / d / "configs.yaml"))["seed"] for d in os.listdir(tmp_path / "out")}
    assert seeds == {1, 2}
    assert "| tiny, best (epoch 1) | 2 |" in done.stdout and "*RDE [RDE]*" in done.stdout


def test_3rtpr_runs_have_no_paper_row_and_stop_where_their_recipe_stops(tmp_path):
    """No public text gives 3RTPR's numbers (README): its recipes stand without a paper row.  The release recipe
    stops at epoch 40 of its 60-epoch schedule on RSTPReid: no 'stopped at' note for that."""
    make_run(tmp_path / "rel", [metrics(50.0)] * 40, dataset_name="RSTPReid", method="twins_release",
             num_epoch=60, stop_epoch=40)
    out = tables.main([str(tmp_path), "--paper"])
    (t,) = out["tables"]
    assert [r.reference for r in t["rows"]] == [None, None] and t["published"]      # RDE's, IRRA's, ICL's rows
    assert "no published 3RTPR row" in out["md"] and "stopped at" not in out["md"]
