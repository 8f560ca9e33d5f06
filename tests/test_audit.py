"""The dataset audit (audit.py, pair_audit/, the page's Audit tab) on one tiny run trained once for the module: twins
with the division under 50% simulated noise, two epochs.  The audit of its epoch-1 checkpoint must be the division
the run made at epoch 2 (its weights, its precision); pairs.csv is complete and ordered and numbers pairs as the
noise file does; a killed audit continues; the cleaned file loads, trains, and can still be scored; the tiny
Qwen2-VL gives the second opinion through THI's backend and cache (mechanics only: a random model cannot judge);
the tab lists, marks and exports through gradio_client and in a real browser; bad input is named with its fix.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pair_audit import cli, store
from tests.helpers import ROOT, SMALL_IMAGES, read_metrics, tiny_args

pytestmark = pytest.mark.slow

REQUIRED = ["pair", "file_path", "caption", "id", "clean_probability", "similarity", "suspect_rank"]


@pytest.fixture(scope="module")
def noisy_run(data_root, tmp_path_factory):
    import main as train_main

    run_dir = tmp_path_factory.mktemp("audit") / "run"
    train_main.main(tiny_args(data_root, run_dir, "--twin", "--noisy_rate", "0.5"))   # published read: augmented
    return str(run_dir)


@pytest.fixture(scope="module")
def audited(noisy_run):
    """(summary, rows of pairs.csv) of `audit.py --run RUN --checkpoint last.prev` (epoch 1: the run's division of
    epoch 2 is in its metrics)."""
    summary = cli.main(["--run", noisy_run, "--checkpoint", "last.prev", "--top", "3"])
    return summary, store.read_pairs(os.path.join(noisy_run, "audit", store.PAIRS))


def noisy_pairs(data_root):
    """The run's training pairs as it saw them, rebuilt without the audit: (records, is_clean)."""
    from datasets import build_dataset
    from datasets.noise import apply_noise

    perm = np.load(os.path.join(data_root, "noiseindex", "CUHK-PEDES_0.5.npy"))
    return apply_noise(build_dataset("CUHK-PEDES", data_root).train, perm), perm == np.arange(len(perm))


def test_the_audit_is_the_runs_own_division_ranked(noisy_run, audited, data_root):
    summary, rows = audited
    records, is_clean = noisy_pairs(data_root)
    n = len(records)
    columns = list(rows[0])
    assert columns[:len(store.COLUMNS)] == list(store.COLUMNS) and set(REQUIRED) <= set(columns)
    signals = ["model1/bge", "model1/tse", "model2/bge", "model2/tse"]           # twins: both models' signals
    assert summary["division"]["signals"] == signals and [f"p_clean/{s}" for s in signals] == \
        [c for c in columns if c.startswith("p_clean/")]
    # every pair once, most suspect first, numbered as the noise file numbers them
    assert sorted(r["pair"] for r in rows) == list(range(n)) and [r["suspect_rank"] for r in rows] == list(range(1, n + 1))
    p = [r["clean_probability"] for r in rows]
    assert p == sorted(p)
    for r in rows:
        rec = records[r["pair"]]
        assert r["caption"] == rec.caption and rec.img_path.endswith(r["file_path"])
        assert r["id"] == int(os.path.basename(r["file_path"]).split("_")[0])      # the file's own identity number
        assert r["permuted"] == int(not is_clean[r["pair"]])
        assert r["clean_probability"] == pytest.approx(np.mean([r[f"p_clean/{s}"] for s in signals]), abs=1e-5)
        same_id = sum(q["id"] == r["id"] for q in rows)
        assert r["identity_captions"] == same_id and 1 <= r["identity_rank"] <= same_id
    # the division the run made at epoch 2, from the weights it had after epoch 1: the same pairs kept, as precise
    epoch2 = read_metrics(noisy_run)[1]
    assert summary["division_epoch"] == 2 and summary["checkpoint_epoch"] == 1
    kept = [r for r in rows if r["weight"] >= 0.5]
    assert len(kept) == epoch2["division/kept"] == summary["weights"]["weight"]["kept"]
    dropped = [r for r in rows if r["weight"] < 0.5]
    assert 100 * sum(r["permuted"] for r in dropped) / len(dropped) == pytest.approx(epoch2["division/noise_precision"])
    # the summary counts what the rows hold
    below = [r for r in rows if r["clean_probability"] < 0.5]
    assert summary["below"] == len(below) and summary["truth"]["permuted"] == int((~is_clean).sum())
    assert sum(summary["by_identity"]["identities_by_pairs_below"].values()) == summary["by_identity"]["identities"]
    assert sum(b["pairs"] for b in summary["by_caption_length"]) == n
    assert sum(b["below"] for b in summary["by_caption_length"]) == len(below)
    text = open(os.path.join(noisy_run, "audit", store.SUMMARY_TEXT)).read()
    assert f"clean probability below 0.5: {len(below)} pairs" in text and f"#1 pair {rows[0]['pair']} " in text


def test_a_rule_that_weighs_each_model_apart_gets_a_weight_column_each(noisy_run, audited):
    """The rule co_teaching divides by each model's own signals and returns [models, N]: the audit keeps both rows."""
    import copy
    from inference.runs import Run, load_run
    from pair_audit.division import method_engine, pair_set, verdict

    run = load_run(noisy_run, with_data=False)
    cfg = copy.deepcopy(run.cfg)
    cfg.weighting = "co_teaching"
    pairs = pair_set(cfg)
    models = Run(cfg, pairs.data.dataset, run.device, run.dtype)
    models.load_weights("last.prev")
    v = verdict(method_engine(cfg, models.models, run.device, run.dtype, pairs), 2)
    assert v.weight_names == ["model1 weight", "model2 weight"] and v.weights.shape == (2, len(audited[1]))
    assert v.owners == ["model1", "model1", "model2", "model2"]
    # the same signals and mixtures as the run's own method: only the rule differs
    probabilities = {r["pair"]: r["p_clean/model2/tse"] for r in audited[1]}
    assert [probabilities[i] for i in range(len(probabilities))] == pytest.approx(v.clean_probabilities[3], abs=1e-5)


def test_a_killed_audit_continues_from_its_saved_stage(noisy_run, audited, tmp_path):
    out = tmp_path / "audit"
    env = {**os.environ, "REID_CRASH_AT": "audit:scored"}
    killed = subprocess.run([sys.executable, "audit.py", "--run", noisy_run, "--checkpoint", "last.prev",
                             "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / store.SCORES).exists() and not (out / store.PAIRS).exists()
    cli.main(["--run", noisy_run, "--checkpoint", "last.prev", "--out", str(out)])
    log = (out / store.LOG).read_text()
    # the killed process computed the scores, the second read them back and went on
    assert log.count("the division's scores: computing") == 1 and log.count("the division's scores: read back") == 1
    assert log.count("the identity ranks: computing") == 1
    again = {r["pair"]: r for r in store.read_pairs(str(out / store.PAIRS))}
    for r in audited[1]:
        assert again[r["pair"]]["clean_probability"] == pytest.approx(r["clean_probability"], abs=1e-6)
        assert again[r["pair"]]["identity_rank"] == r["identity_rank"]


def test_the_cleaned_file_keeps_the_pairs_as_seen_trains_and_can_be_scored(noisy_run, audited, data_root, tmp_path):
    import main as train_main
    from datasets import build_dataset
    from datasets.noise import apply_noise

    _, rows = audited
    folder = tmp_path / "audit"
    shutil.copytree(os.path.join(noisy_run, "audit"), folder)        # its stages are read back, not computed
    about = store.read_about(str(folder))
    below = [r["pair"] for r in rows if r["clean_probability"] < 0.5]
    above = [r["pair"] for r in rows if r["clean_probability"] >= 0.5]
    store.write_marks(str(folder), about["pairs_key"], {below[0]: store.KEEP, above[0]: store.DROP})  # the page's
    out = tmp_path / "cleaned.json"
    summary = cli.main(["--run", noisy_run, "--checkpoint", "last.prev", "--out", str(folder),
                        "--write_clean", str(out)])
    report = summary["cleaned"]
    drop = (set(below) - {below[0]}) | {above[0]}
    kept = [i for i in range(len(rows)) if i not in drop]
    assert (report["kept"], report["dropped"]) == (len(kept), len(drop))

    records, is_clean = noisy_pairs(data_root)
    perm = np.load(report["noise_file"])
    cleaned = build_dataset("CUHK-PEDES", data_root, anno_path=str(out))
    seen = apply_noise(cleaned.train, perm)
    assert [(r.img_path, r.caption) for r in seen] == [(records[i].img_path, records[i].caption) for i in kept]
    permuted_kept = int((~is_clean[kept]).sum())
    assert report["permuted_kept"] == permuted_kept and permuted_kept > 1
    assert np.array_equal(perm == np.arange(len(perm)), is_clean[kept])    # the truth of the kept pairs
    original = build_dataset("CUHK-PEDES", data_root)
    assert cleaned.test.captions == original.test.captions and cleaned.val.captions == original.val.captions

    # it trains, without the division, on exactly those pairs
    run_dir = tmp_path / "cleaned_run"
    train_main.main(tiny_args(data_root, run_dir, "--anno_path", str(out), "--noisy_rate", "0.5", "--noisy_file",
                              report["noise_file"], "--division", "false", "--num_epoch", "1"))
    assert len(read_metrics(run_dir)) == 1
    assert f"{permuted_kept} of {len(kept)} captions permuted" in (run_dir / "train_log.txt").read_text()
    # and the run's audit scores it, with the truth of its noise file, into a folder of its own
    scored = cli.main(["--run", noisy_run, "--checkpoint", "last.prev", "--anno_path", str(out),
                       "--noisy_file", report["noise_file"]])
    assert scored["pairs"] == len(kept) and scored["truth"]["permuted"] == permuted_kept
    assert os.path.isfile(os.path.join(noisy_run, "audit_cleaned_train", store.PAIRS))


def test_the_second_opinion_asks_the_mllm_through_thi_backend_and_cache(noisy_run, audited, tmp_path_factory):
    """Mechanics only: the tiny random Qwen2-VL answers at random."""
    from tests.tiny_qwen2vl import build_tiny_qwen2vl

    model = build_tiny_qwen2vl(str(tmp_path_factory.mktemp("qwen")), seed=0)
    folder = tmp_path_factory.mktemp("opinion") / "audit"
    shutil.copytree(os.path.join(noisy_run, "audit"), folder)
    argv = ["--run", noisy_run, "--checkpoint", "last.prev", "--out", str(folder), "--mllm", model, "--top", "3",
            "--batch_size", "4", *SMALL_IMAGES]
    summary = cli.main(argv)
    rows = store.read_pairs(str(folder / store.PAIRS))
    asked = [r for r in rows if r["mllm_group"]]
    assert [r["mllm_group"] for r in rows[:3]] == ["suspect"] * 3
    control = [r for r in asked if r["mllm_group"] == "control"]
    assert len(control) == 3 and all(r["clean_probability"] >= 0.5 for r in control)
    assert all(0 <= r["mllm_p_yes"] <= 1 for r in asked)
    assert all(r["mllm_p_yes"] is None for r in rows if not r["mllm_group"])
    assert summary["second_opinion"]["suspect"]["asked"] == 3
    # the answers were cached as they came: asked again, nothing is put to the model
    cli.main(argv)
    assert "MLLM answers: 6 from the cache" in (folder / store.LOG).read_text().split("read back")[-1]
    again = {r["pair"]: r["mllm_p_yes"] for r in store.read_pairs(str(folder / store.PAIRS)) if r["mllm_group"]}
    assert again == {r["pair"]: r["mllm_p_yes"] for r in asked}


def test_bad_input_is_named_with_the_file_and_the_fix(noisy_run, data_root, tmp_path):
    from datasets import build_dataset
    from datasets.synthetic import make_synthetic
    from pair_audit.pairs import AuditError, split_pairs

    # a run trained without the division
    plain = tmp_path / "plain"
    plain.mkdir()
    config = open(os.path.join(noisy_run, "configs.yaml")).read().replace("division: true", "division: false")
    (plain / "configs.yaml").write_text(config)
    with pytest.raises(SystemExit) as e:
        cli.main(["--run", str(plain)])
    assert str(e.value).startswith(f"{plain / 'configs.yaml'}: this run trained without the division") \
        and "audit a run trained with it" in str(e.value)
    # a file of another dataset's format: ICFG-PEDES's (train and test only) for this CUHK-PEDES run
    icfg = make_synthetic(str(tmp_path / "icfg"), fmt="ICFG-PEDES", num_train_ids=2, num_test_ids=2, seed=1)
    with pytest.raises(SystemExit) as e:
        cli.main(["--run", noisy_run, "--anno_path", icfg])
    message = str(e.value)
    assert f"{icfg}: the 'val' split is empty" in message and "audit.py reads --anno_path's file as CUHK-PEDES" \
        in message and "python -m datasets.check" in message, message
    # an empty split: ICFG-PEDES has no val pairs to audit
    with pytest.raises(AuditError) as e:
        split_pairs(build_dataset("ICFG-PEDES", str(tmp_path / "icfg")), "val")
    assert str(e.value).startswith(f"{icfg}: the val split is empty") and "--split" in str(e.value)
    # a missing checkpoint, a missing noise file
    with pytest.raises(SystemExit, match="no such checkpoint"):
        cli.main(["--run", noisy_run, "--checkpoint", str(tmp_path / "none.pth")])
    with pytest.raises(SystemExit, match="--noisy_file .*: no such file"):
        cli.main(["--run", noisy_run, "--anno_path", os.path.join(data_root, "CUHK-PEDES", "reid_raw.json"),
                  "--noisy_file", str(tmp_path / "none.npy")])


def test_the_audit_table_ranks_its_baselines_the_same_way(noisy_run, audited):
    """bench/audit_table.py's baselines, on this run (standing in for the run without the division too)."""
    from bench.audit_table import audit_top_k, baselines, table

    found = baselines(noisy_run, noisy_run)
    truth = audited[0]["truth"]
    for name in ("clip_score", "small_loss"):
        assert found[name]["permuted"] == truth["permuted"] and 0 <= found[name]["auroc"] <= 100
        assert 0 <= found[name]["precision_at_k"] <= 100
    # the top-K cleaning drops exactly the K most suspect pairs of the run's audit
    top_k = audit_top_k(noisy_run, 5)["cleaned"]
    assert top_k["dropped"] == 5 and top_k["kept"] == truth["pairs"] - 5
    runs = {"division": {"R1_last2": 10.0, "mAP_last": 20.0}, "off": {"R1_last2": 9.0, "mAP_last": 19.0},
            "cleaned": {"kept": 30, "permuted_kept": 6, "R1_last2": 11.0, "mAP_last": 21.0},
            "cleaned_top_k": {"kept": 24, "permuted_kept": 3, "R1_last2": 12.0, "mAP_last": 22.0}}
    line = table([{"noise": 0.5, "seed": 1, "audit": truth, **found, **runs}]).splitlines()[-1]
    assert line.startswith(f"| 50% | {truth['auroc']:.1f} / {truth['precision_at_k']:.1f} ") and "| 30 (20.0) |" \
        in line and "| 24 (12.5) | 12.0 / 22.0 | 1 |" in line, line


# --------------------------------------------------------------------------- the page's Audit tab


@pytest.fixture(scope="module")
def page(noisy_run, audited):
    """(gradio_client.Client, URL) of `python app.py --run RUN_DIR`, whose Audit tab shows RUN_DIR/audit."""
    import app
    from gradio_client import Client

    blocks, url = app.main(["--run", noisy_run], block=False)
    try:
        yield Client(url, verbose=False), url
    finally:
        blocks.close()


def listing(client, show="all pairs", sort="most suspect first", threshold=0.5, identity="", text="", page=1):
    """(summary, gallery, table): the tab's listing through its API (the pairs it keeps for clicks stay in the page)"""
    return client.predict(show, sort, threshold, identity, text, page, api_name="/audit_list")


def test_the_tab_lists_filters_and_serves_only_thumbnails(page, audited, noisy_run, data_root):
    import urllib.error
    import urllib.request

    client, url = page
    _, rows = audited
    summary, gallery, table = listing(client)
    assert f"{len(rows)} pairs of the train split" in summary and "page 1 of 2" in summary
    assert [g["caption"].split(" · ")[0] for g in gallery] == [f"#{r['suspect_rank']} pair {r['pair']}" for r in rows[:24]]
    assert [row[1] for row in table["data"]] == [r["pair"] for r in rows[:24]]
    _, _, table = listing(client, page=2)
    assert [row[1] for row in table["data"]] == [r["pair"] for r in rows[24:48]]
    below = [r for r in rows if r["clean_probability"] < 0.5]
    _, gallery, _ = listing(client, show="below the threshold")
    assert len(gallery) == min(24, len(below))
    who = rows[0]["id"]
    _, _, table = listing(client, identity=str(who), sort="least similar first")
    mine = sorted((r for r in rows if r["id"] == who), key=lambda r: r["similarity"])
    assert [row[1] for row in table["data"]] == [r["pair"] for r in mine]
    summary, gallery, _ = listing(client, identity="three")
    assert "give the identity's number" in summary and not gallery
    # what is shown is a thumbnail drawn by the page; the run's and the dataset's files are not served
    from gradio_client import Client

    image = listing(Client(url, verbose=False, download_files=False))[1][0]["image"]
    image = image["path"] if isinstance(image, dict) else image.path       # the file on the server's side
    assert image.startswith(os.environ["GRADIO_TEMP_DIR"]) and image.endswith(".jpg")    # in the page's own folder
    for path in (os.path.join(noisy_run, "audit", store.PAIRS), os.path.join(noisy_run, "audit", store.ABOUT),
                 os.path.join(data_root, "CUHK-PEDES", "imgs", rows[0]["file_path"])):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/file={os.path.abspath(path)}", timeout=10)
        assert refused.value.code == 403, path


def test_the_tab_marks_and_exports_through_the_api(page, audited, noisy_run, data_root):
    from datasets import build_dataset

    client, _ = page
    _, rows = audited
    below = [r["pair"] for r in rows if r["clean_probability"] < 0.5]
    above = [r["pair"] for r in rows if r["clean_probability"] >= 0.5]
    assert "marked drop" in client.predict(above[0], api_name="/audit_drop")
    assert "marked keep" in client.predict(below[0], api_name="/audit_keep")
    assert "marked drop" in client.predict(below[1], api_name="/audit_drop")
    assert "mark cleared" in client.predict(below[1], api_name="/audit_clear")
    assert "There is no pair 999" in client.predict(999, api_name="/audit_drop")
    folder = os.path.join(noisy_run, "audit")
    about = store.read_about(folder)
    assert store.read_marks(folder, about["pairs_key"]) == {above[0]: store.DROP, below[0]: store.KEEP}
    _, gallery, table = listing(client, show="marked")
    assert sorted(row[1] for row in table["data"]) == sorted([above[0], below[0]])
    assert {row[8] for row in table["data"]} == {"drop", "keep"} and all(" · " in g["caption"] for g in gallery)
    message = client.predict(0.5, api_name="/audit_export")
    out = os.path.join(folder, store.CLEANED)
    assert f"Wrote `{out}`" in message and "--division false" in message, message
    kept = len(rows) - (len(below) - 1) - 1
    assert len(build_dataset("CUHK-PEDES", data_root, anno_path=out).train) == kept


def test_the_tab_of_an_audit_that_no_longer_matches_its_data_says_so(noisy_run, audited, tmp_path):
    from webapp.audit_tab import AuditTab

    folder = tmp_path / "audit"
    shutil.copytree(os.path.join(noisy_run, "audit"), folder)
    about = json.loads((folder / store.ABOUT).read_text())
    about["pairs_key"]["annotations"][2] += 1            # the annotation file was edited since
    (folder / store.ABOUT).write_text(json.dumps(about))
    tab, why = AuditTab.open(str(folder))
    assert tab is None and "changed since the audit" in why and "python audit.py --run" in why
    assert AuditTab.open(str(tmp_path / "nothing")) == (None, "")


def test_drop_and_export_in_a_real_browser(page, audited, noisy_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from tests.test_app import browser_paths

    chromium, driver_path = browser_paths()
    _, url = page
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    folder = os.path.join(noisy_run, "audit")
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab'][contains(., 'Audit')]"))).click()
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#audit_gallery"), "#1 pair "))
        first = re.search(r"#1 pair (\d+) ", driver.find_element(By.CSS_SELECTOR, "#audit_gallery").text)[1]
        driver.find_elements(By.CSS_SELECTOR, "#audit_gallery img")[0].click()
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#audit_status"), "(#1, id"))  # its details
        pair = int(driver.find_element(By.CSS_SELECTOR, "#audit_pair input").get_attribute("value"))
        assert pair == int(first)                           # the first tile's pair, the most suspect
        assert driver.find_element(By.CSS_SELECTOR, "#audit_status").text.startswith(f"pair {pair} (#1")
        driver.find_element(By.CSS_SELECTOR, "#audit_drop").click()
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#audit_status"), "marked drop"))
        driver.find_element(By.CSS_SELECTOR, "#audit_export").click()
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#audit_exported"), "Wrote"))
        shot = os.path.join(os.environ.get("TEST_ARTEFACTS", os.path.join("logs", "test_artefacts")), "app_audit.png")
        os.makedirs(os.path.dirname(os.path.abspath(shot)), exist_ok=True)
        driver.save_screenshot(shot)
    finally:
        driver.quit()
    about = store.read_about(folder)
    assert store.read_marks(folder, about["pairs_key"])[pair] == store.DROP
    with open(os.path.join(folder, store.CLEANED)) as f:
        written = [(r["file_path"], c) for r in json.load(f) if r["split"] == "train" for c in r["captions"]]
    dropped = next(r for r in audited[1] if r["pair"] == pair)
    assert (dropped["file_path"], dropped["caption"]) not in written
