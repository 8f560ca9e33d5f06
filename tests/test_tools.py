"""The user-facing tools: retrieve.py, test.py --visualize, reports.curves, datasets.check, checkpoint checks."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image

import main as train_main
import retrieve
import test as test_main
import inference.retrieval_index as ri
from datasets.check import main as check_main
from inference.runs import load_run
from model.clip import checkpoint as clip_checkpoint
from model.clip import CLIP, CLIPConfig, load_state_dict_file
from reports.curves import main as plot_main, panels, plot_run, read_metrics
from reports.ranklists import first_correct_ranks, load_thi_similarity, pick_queries
from tests.helpers import tiny_args as training_tiny_args, write_odd_gallery_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARCH = dict(embed_dim=32, vision_width=32, vision_layers=1, vision_heads=2,
                 text_width=32, text_layers=1, text_heads=2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


DATA_SIZES = dict(num_train_ids=8, num_test_ids=6, num_val_ids=2, seed=5)   # data_root's (conftest.py)


def tiny_args(data_root, run_dir, *extra):
    return training_tiny_args(data_root, run_dir, "--num_epoch", "1", *extra)   # later values win


@pytest.fixture(scope="module")
def single_run(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("single") / "run"
    train_main.main(tiny_args(data_root, run, "--division", "false"))
    return str(run)


@pytest.fixture(scope="module")
def twin_run(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("twin") / "run"
    train_main.main(tiny_args(data_root, run, "--twin", "--division", "false"))
    return str(run)


def gallery_folder(run_dir, dest):
    """The run's test gallery copied into one folder as 000.jpg, 001.jpg ... (row i of the evaluator)."""
    split = load_run(run_dir).dataset.test
    os.makedirs(dest, exist_ok=True)
    for i, p in enumerate(split.img_paths):
        shutil.copy(p, os.path.join(dest, f"{i:03d}.jpg"))
    return split


class CountingEncoder:
    """Counts the images that really go through the image encoder (independently of the index's report)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = ri.Encoders.encode_images

        def counting(enc, images):
            self.count += images.shape[0]
            return real(enc, images)

        monkeypatch.setattr(ri.Encoders, "encode_images", counting)

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


# --------------------------------------------------------------------------- retrieve.py


def test_retrieve_index_is_cached_and_refreshed_incrementally(single_run, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    split = gallery_folder(single_run, folder / "sub")  # a subfolder: the scan is recursive
    n = len(split.img_paths)
    counter = CountingEncoder(monkeypatch)
    query = ["--run", single_run, "--images", str(folder), "--query", split.captions[0], "--topk", "5"]

    first = retrieve.main(query)
    assert counter.take() == n
    caches = list((folder / ".reid_index").glob("*.pt"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns

    second = retrieve.main(query)
    assert counter.take() == 0                          # nothing re-embedded
    assert caches[0].stat().st_mtime_ns == stamp       # and the cache not rewritten
    assert second == first

    # add one, remove one, change one: exactly the added and the changed file are embedded
    shutil.copy(split.img_paths[0], folder / "new.jpg")
    os.remove(folder / "sub" / "001.jpg")
    Image.open(split.img_paths[5]).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(folder / "sub" / "002.jpg")
    enc = ri.load_encoders(single_run)
    index, report = ri.open_index(str(folder), enc, progress=False)
    assert counter.take() == 2
    assert sorted(report.embedded) == ["new.jpg", os.path.join("sub", "002.jpg")]
    assert report.removed == [os.path.join("sub", "001.jpg")] and report.kept == n - 2
    assert len(index.paths) == n and os.path.join("sub", "001.jpg") not in index.paths
    # the refreshed index holds the same features a fresh build would
    fresh = ri._embed([os.path.join(folder, p) for p in index.paths], enc, 16, 0, False)[0]
    torch.testing.assert_close(index.features, fresh, atol=1e-5, rtol=1e-4)
    counter.take()
    # a copy of image 0 scores exactly like image 0
    hits = dict(ri.search(index, enc, [split.captions[0]], topk=n)[0])
    assert hits["new.jpg"] == pytest.approx(hits[os.path.join("sub", "000.jpg")], abs=1e-5)

    # an unreadable file is skipped and not retried until it changes
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    _, report = ri.open_index(str(folder), enc, progress=False)
    assert report.failed == ["broken.jpg"] and counter.take() == 0      # read, skipped: never in a batch
    _, report = ri.open_index(str(folder), enc, progress=False)
    assert report.embedded == [] and report.failed == [] and counter.take() == 0


def test_retrieve_skips_each_odd_file_alone_and_the_others_get_a_clean_folders_features(single_run, tmp_path,
                                                                                         caplog, capsys):
    """Loader workers (the default path of a real run) and batches of 4: an empty, dangling, undecodable,
    truncated, too large and too odd file among the images is skipped with a line naming it and why, and the
    other images' saved features are bit for bit those of a folder without them (a bad file's placeholder once
    turned its whole batch to float, which CLIP took as already normalised)."""
    clean = tmp_path / "clean"
    split = gallery_folder(single_run, clean)
    odd = tmp_path / "odd"
    shutil.copytree(clean, odd)
    why = write_odd_gallery_files(odd, split.img_paths[0])
    enc = ri.load_encoders(single_run)
    reference, _ = ri.open_index(str(clean), enc, batch_size=4, num_workers=2, progress=False)
    caplog.set_level("WARNING", logger=ri.__name__)
    index, report = ri.open_index(str(odd), enc, batch_size=4, num_workers=2, progress=False)
    assert index.paths == reference.paths and index.features.dtype == torch.float32
    assert torch.equal(index.features, reference.features)
    assert sorted(report.skipped) == sorted(why) and sorted(report.failed) == sorted(set(why) - {"001_dangling.jpg"})
    lines = [r.getMessage() for r in caplog.records]
    for name, reason in why.items():
        (line,) = [m for m in lines if name in m]           # one line per file: its name and why
        assert reason in line and reason in report.skipped[name], (line, report.skipped[name])
    # the saved index: read again, nothing re-embedded, every odd file still named; the features as saved
    caplog.clear()
    again, report = ri.open_index(str(odd), enc, batch_size=4, num_workers=2, progress=False)
    assert report.embedded == [] and sorted(report.skipped) == sorted(why)
    assert torch.equal(again.features, reference.features)
    assert sum(name in r.getMessage() for r in caplog.records for name in why) == len(why)
    # retrieve.py itself, with two loader workers
    (result,) = retrieve.main(["--run", single_run, "--images", str(odd), "--query", split.captions[0],
                               "--topk", "3", "--num_workers", "2", "--batch_size", "4"])
    assert f"{len(reference.paths)} images" in capsys.readouterr().out and result["hits"][0][0] in reference.paths


def test_retrieve_rebuilds_an_index_saved_by_the_old_format(single_run, tmp_path, caplog):
    """Format 1 indexes (before each file was read alone) may hold rows computed next to an unreadable file, and
    which ones cannot be told afterwards: they are rebuilt, not reused."""
    folder = tmp_path / "photos"
    gallery_folder(single_run, folder)
    enc = ri.load_encoders(single_run)
    index, _ = ri.open_index(str(folder), enc, progress=False)
    old = {"format": 1, "identity": enc.identity, "paths": index.paths, "stats": [list(s) for s in index.stats],
           "features": torch.rand_like(index.features), "failed": {}}
    torch.save(old, ri.index_path(str(folder), enc))
    caplog.set_level("INFO", logger=ri.__name__)
    rebuilt, report = ri.open_index(str(folder), enc, progress=False)
    assert report.kept == 0 and len(report.embedded) == len(index.paths)
    assert torch.equal(rebuilt.features, index.features)
    assert any("older" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("which", ["single", "twin"])
def test_retrieve_ranks_like_the_evaluator_fused_row(which, single_run, twin_run, tmp_path):
    run_dir = single_run if which == "single" else twin_run
    folder = tmp_path / "gallery"
    split = gallery_folder(run_dir, folder)
    run = load_run(run_dir)
    run.load_weights("best")
    rows = run.evaluator("test").similarity_rows(run.models)
    assert list(rows)[-1] == ("BGE+TSE" if which == "single" else "ensemble")
    fused = list(rows.values())[-1]

    picks = [0, 3, len(split.captions) - 1]
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(split.captions[q] for q in picks) + "\n\n")
    png = tmp_path / "ranked.png"
    k = 8
    results = retrieve.main(["--run", run_dir, "--images", str(folder), "--queries", str(queries), "--topk", str(k),
                             "--save", str(png), "--device", "cpu"])
    assert [r["query"] for r in results] == [split.captions[q] for q in picks]
    for q, r in zip(picks, results):
        got = torch.tensor([s for _, s in r["hits"]])
        rows_of = [int(p[:3]) for p, _ in r["hits"]]
        # the k best fused scores of the evaluator, and each returned file has the evaluator's score
        torch.testing.assert_close(got, fused[q].topk(k).values, atol=1e-5, rtol=0)
        torch.testing.assert_close(got, fused[q, rows_of], atol=1e-5, rtol=0)
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as img:
        assert img.width > k * 64 and img.height > 3 * 128  # three query rows of k thumbnails


def test_retrieve_picture_names_the_files(single_run, tmp_path, monkeypatch):
    folder = tmp_path / "gallery"
    split = gallery_folder(single_run, folder)
    os.makedirs(folder / "a" / "much_longer_sub_folder_name_that_does_not_fit_under_one_thumbnail")
    shutil.move(folder / "000.jpg", folder / "a" / "much_longer_sub_folder_name_that_does_not_fit_under_one_thumbnail")
    texts = drawn_text(monkeypatch)
    png = tmp_path / "ranked.png"
    (result,) = retrieve.main(["--run", single_run, "--images", str(folder), "--query", split.captions[0],
                               "--topk", str(len(split.img_paths)), "--save", str(png), "--device", "cpu"])
    # every hit's path relative to --images, by its rank, under the row of thumbnails
    assert [t for t in texts if t.startswith("#") and "  " in t] == [
        f"#{k}  {path}" for k, (path, _) in enumerate(result["hits"], 1)]


def test_vector_search_torch_matches_brute_force():
    g = torch.nn.functional.normalize(torch.randn(1000, 24), dim=1)
    q = torch.randn(7, 24)
    scores, ids = ri.VectorSearch(g, use_faiss=False).search(q, 5, chunk=3)
    ref = (q @ g.t()).topk(5)
    torch.testing.assert_close(scores, ref.values)
    assert torch.equal(ids, ref.indices)
    assert ri.VectorSearch(g[:3], use_faiss=False).search(q, 5)[0].shape == (7, 3)  # k clamps to the folder


# --------------------------------------------------------------------------- test.py --visualize


def test_first_correct_ranks_and_worst_pick():
    torch.manual_seed(0)
    sims = torch.randn(40, 30)
    qp, gp = torch.randint(0, 6, (40,)), torch.randint(0, 6, (30,))
    gp[:6] = torch.arange(6)  # every query has a match
    ranks = first_correct_ranks(sims, qp.tolist(), gp.tolist(), chunk=7)
    for q in range(40):
        order = sims[q].argsort(descending=True)
        assert ranks[q] == 1 + (gp[order] == qp[q]).int().argmax()
    worst = pick_queries(ranks, 5, "worst")
    assert sorted(ranks[worst].tolist(), reverse=True) == sorted(ranks.tolist(), reverse=True)[:5]
    assert pick_queries(ranks, 5, "random") == pick_queries(ranks, 5, "random")  # seeded


def test_visualize_writes_n_pictures_worst_first_and_thi_side_by_side(single_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(single_run, run_dir)
    test_main.main(["--run", run_dir, "--checkpoint", "best", "--visualize", "3", "--visualize_mode", "worst"])
    out = os.path.join(run_dir, "visualize")
    files = sorted(os.listdir(out))
    assert len(files) == 3 and all(f.startswith("worst_") and f.endswith(".png") for f in files)

    # the chosen queries are the three with the worst first-correct rank, computed here by a full sort
    run = load_run(run_dir)
    run.load_weights("best")
    evaluator = run.evaluator("test")
    fused = list(evaluator.similarity_rows(run.models).values())[-1]
    qp, gp = torch.tensor(evaluator.split.caption_pids), torch.tensor(evaluator.split.image_pids)
    ranks = torch.stack([(gp[fused[q].argsort(descending=True)] == qp[q]).int().argmax() + 1
                         for q in range(len(qp))])
    picked = [int(f.split("query")[1][:-4]) for f in files]
    assert sorted(ranks[picked].tolist()) == sorted(ranks.tolist())[-3:]
    with Image.open(os.path.join(out, files[0])) as img:
        single_width = img.width
        colours = {c for _, c in img.getcolors(1 << 20)}
    assert (215, 40, 40) in colours  # a worst query has wrong images: red frames

    shutil.rmtree(out)
    os.makedirs(os.path.join(run_dir, "thi"))
    torch.save(torch.randn(fused.shape), os.path.join(run_dir, "thi", "final_similarity.pt"))
    test_main.main(["--run", run_dir, "--checkpoint", "best", "--visualize", "2"])
    files = sorted(os.listdir(out))
    assert len(files) == 2 and all(f.startswith("random_") for f in files)
    with Image.open(os.path.join(out, files[0])) as img:
        assert img.width > 2 * single_width - 20  # before | after

    torch.save(torch.randn(3, 3), os.path.join(run_dir, "thi", "final_similarity.pt"))
    with pytest.raises(SystemExit, match=r"final_similarity\.pt.*\(3, 3\)"):
        load_thi_similarity(run_dir, fused.shape)


def drawn_text(monkeypatch) -> list[str]:
    """Every string PIL draws from now on (the pictures' text cannot be read back from the pixels)."""
    from PIL import ImageDraw

    texts, real = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **kw: (texts.append(text), real(self, xy, text, *a, **kw))[1])
    return texts


def test_visualize_marks_queries_thi_did_not_rerank(single_run, tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    shutil.copytree(single_run, run_dir)
    run = load_run(run_dir)
    run.load_weights("best")
    fused = list(run.evaluator("test").similarity_rows(run.models).values())[-1].cpu()
    # what `python -m thi --limit 2` leaves: query 0 re-ranked, query 1 asked but not refined, the rest untouched
    final = fused.clone()
    final[0] = torch.flip(fused[0], [0])
    os.makedirs(os.path.join(run_dir, "thi"))
    torch.save(final, os.path.join(run_dir, "thi", "final_similarity.pt"))
    with open(os.path.join(run_dir, "thi", "queries.jsonl"), "w") as f:
        f.write(json.dumps({"query": 0, "refined": "a refined text", "error": None}) + "\n")
        f.write(json.dumps({"query": 1, "refined": None, "error": None}) + "\n")
    texts = drawn_text(monkeypatch)
    n = len(fused)
    test_main.main(["--run", run_dir, "--checkpoint", "best", "--visualize", str(n)])   # every query, once
    widths = {}
    for name in os.listdir(os.path.join(run_dir, "visualize")):
        with Image.open(os.path.join(run_dir, "visualize", name)) as img:
            widths[int(name.split("query")[1][:-4])] = img.width
    assert sorted(widths) == list(range(n))
    assert all(widths[0] > 2 * widths[q] - 20 for q in range(1, n))   # before | after for query 0 only
    text = " ".join(texts)
    assert "before THI: query 0," in text and "after THI: query 0," in text
    assert "THI kept the base ranking (no candidate accepted by the gate): query 1," in text
    assert all(f"not asked by THI (past thi --limit): query {q}," in text for q in range(2, n))
    assert not any(f"THI: query {q}," in text for q in range(1, n))


# --------------------------------------------------------------------------- reports.curves


@pytest.mark.parametrize("backend", ["pil", "matplotlib"])
def test_plot_writes_curves_png(single_run, tmp_path, backend):
    if backend == "matplotlib":
        pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [json.loads(line) for line in open(os.path.join(single_run, "metrics.jsonl"))]
    records.append({**records[-1], "epoch": records[-1]["epoch"] + 1, "R1": 12.5})
    for r in records:
        r.update({"division/kept": 0.8, "division/noise_precision": 0.5, "note": "text is not plotted"})
    # the partial last line of a killed run is skipped, not fatal
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 3, "lo')
    data = panels(read_metrics(str(run_dir / "metrics.jsonl")))
    assert list(data) == ["losses", "learning rate", "retrieval (%)", "division: pairs",
                          "division: noisy pairs found (%)"]
    assert data["retrieval (%)"]["R1"][1][-1] == 12.5 and "loss/bge_TAL" in data["losses"]
    path = plot_run(str(run_dir), backend=backend)
    assert path == str(run_dir / "curves.png")
    with Image.open(path) as img:  # five panels: a row of three above a row of two
        assert img.format == "PNG" and img.width > 3 * 300 and img.height > 2 * 250
    with pytest.raises(SystemExit, match="metrics.jsonl"):
        plot_run(str(tmp_path))


@pytest.mark.parametrize("backend", ["pil", "matplotlib"])
def test_plot_division_scales_apart_and_no_absolute_path(tmp_path, monkeypatch, backend):
    if backend == "matplotlib":
        pytest.importorskip("matplotlib")
    import reports.curves as plot

    run_dir = tmp_path / "20261123_101500_RDE"
    run_dir.mkdir()
    rows = [{"epoch": e, "loss/bge_TAL": 1.0 / e, "R1": 10.0 * e, "division/kept": 900 + 20 * e,
             "division/total": 1000, "division/mean_weight": 0.9 + 0.02 * e, "division/noise_precision": 80.0,
             "division/noise_recall": 70.0 + e, "division/mean_weight_clean": 0.99,
             "division/mean_weight_noisy": 0.1} for e in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = panels(rows)
    # the 0-1 weights and the percentages have panels of their own, not the pair-count axis
    assert set(data["division: pairs"]) == {"division/kept", "division/total"}
    assert set(data["division: noisy pairs found (%)"]) == {"division/noise_precision", "division/noise_recall"}
    assert set(data["division: mean weight (0-1)"]) == {"division/mean_weight", "division/mean_weight_clean",
                                                        "division/mean_weight_noisy"}
    drawn = {}
    real = getattr(plot, f"plot_{backend}")
    monkeypatch.setattr(plot, f"plot_{backend}", lambda d, path, title: (drawn.update(title=title, panels=list(d)),
                                                                        real(d, path, title)))
    plot_run(str(run_dir), backend=backend)
    assert drawn["title"] == "20261123_101500_RDE: metrics.jsonl" and str(tmp_path) not in drawn["title"]
    assert not any(os.sep + "tmp" in name for name in drawn["panels"])
    with Image.open(run_dir / "curves.png") as img:
        assert img.width > 3 * 300 and img.height > 2 * 250   # 5 panels: 3 + 2


def test_plot_command_line(single_run, tmp_path):
    out = tmp_path / "c.png"
    assert plot_main([single_run, "--out", str(out), "--backend", "pil"]) == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- datasets.check


def test_check_passes_good_data(data_root, capsys):
    assert check_main(["--dataset_name", "CUHK-PEDES", "--root_dir", data_root, "--decode"]) == 0
    out = capsys.readouterr().out
    assert "reid_raw.json" in out and "OK" in out and "opened" in out
    assert "train" in out and "test" in out


def test_check_names_every_problem(data_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    anno = root / "CUHK-PEDES" / "reid_raw.json"
    records = json.loads(anno.read_text())
    imgs = root / "CUHK-PEDES" / "imgs"
    os.remove(imgs / records[0]["file_path"])                       # missing image
    jpeg = (imgs / records[1]["file_path"]).read_bytes()
    (imgs / records[1]["file_path"]).write_bytes(jpeg[: len(jpeg) // 2])  # truncated JPEG: valid header
    records[3]["file_path"] = records[2]["file_path"]              # duplicate path
    records[4]["captions"][0] = "   "                              # empty caption
    shutil.copy(imgs / records[7]["file_path"], root / "outside.jpg")
    records[7]["file_path"] = "../../outside.jpg"                   # leaves the dataset folder
    anno.write_text(json.dumps(records))

    assert check_main(["--dataset_name", "CUHK-PEDES", "--root_dir", str(root), "--decode"]) == 1
    out = capsys.readouterr().out
    assert "1 missing images" in out and records[0]["file_path"] in out
    assert "1 undecodable images" in out and records[1]["file_path"] in out
    assert "1 image paths listed by more than one record" in out and "records 2, 3" in out
    assert "1 empty captions" in out and "record 4" in out
    assert "1 image paths leading outside the dataset folder" in out and "record 7: '../../outside.jpg'" in out

    # without --decode the truncated file is not opened, the rest is still found
    assert check_main(["--dataset_name", "CUHK-PEDES", "--root_dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "undecodable" not in out and "missing images" in out

    # bad records are all listed, not only the first
    records[5].pop("split")
    records[6]["id"] = "x"
    anno.write_text(json.dumps(records))
    assert check_main(["--dataset_name", "CUHK-PEDES", "--root_dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "2 malformed records" in out and "record 5 has no field 'split'" in out and "record 6" in out


def test_check_missing_annotation_names_what_was_tried(tmp_path, capsys):
    assert check_main(["--dataset_name", "CUHK-PEDES", "--root_dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "reid_raw.json" in out and "caption_all.json" in out


def test_check_module_entry_point_exit_code(tmp_path):
    done = subprocess.run([sys.executable, "-m", "datasets.check", "--dataset_name", "RSTPReid",
                           "--root_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "data_captions.json" in done.stdout


# --------------------------------------------------------------------------- weights


def test_vit_b16_sha256_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    torch.manual_seed(0)
    weights = tmp_path / "full.pt"
    torch.save(CLIP(CLIPConfig(**TINY_ARCH, image_size=(64, 32))).state_dict(), weights)
    data = weights.read_bytes()
    fake = tmp_path / "ViT-B-16.pt"
    fake.write_bytes(data[: len(data) // 2])  # like an interrupted download
    with pytest.raises(ValueError, match=r"ViT-B-16\.pt.*SHA-256.*5806e77cd80f.*truncated or corrupted"):
        load_state_dict_file(fake)
    assert json.loads((tmp_path / "ViT-B-16.pt.sha256.json").read_text())["size"] == len(data) // 2

    # the verdict is cached per (size, mtime): no hashing the second time, hashing again once the file changes
    hashed = []
    real_sha256 = clip_checkpoint.hashlib.sha256
    monkeypatch.setattr(clip_checkpoint.hashlib, "sha256", lambda *a: hashed.append(1) or real_sha256(*a))
    with pytest.raises(ValueError, match="SHA-256"):
        load_state_dict_file(fake)
    assert hashed == []
    fake.write_bytes(data)  # now complete, but still not OpenAI's file; a plain state dict only warns
    with pytest.warns(UserWarning, match="not OpenAI's ViT-B-16.pt"):
        assert "visual.conv1.weight" in load_state_dict_file(fake)
    assert hashed == [1]

    # a file whose digest matches the published one loads silently
    monkeypatch.setitem(clip_checkpoint.OPENAI_SHA256, "ViT-B-16.pt", real_sha256(data).hexdigest())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "visual.conv1.weight" in load_state_dict_file(fake)
    # other names are not checked
    other = tmp_path / "my_clip.pt"
    other.write_bytes(data[:100])
    with pytest.raises(ValueError, match="my_clip.pt.*not a readable checkpoint"):
        load_state_dict_file(other)


def test_truncated_run_checkpoint_is_named(single_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single_run, run_dir)
    data = (run_dir / "best.pth").read_bytes()
    (run_dir / "best.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(SystemExit, match=r"best\.pth is not a readable checkpoint"):
        test_main.main(["--run", str(run_dir), "--checkpoint", "best"])
    with pytest.raises(SystemExit, match=r"best\.pth is not a readable checkpoint"):
        retrieve.main(["--run", str(run_dir), "--images", str(tmp_path), "--query", "a man"])


def test_mismatched_keys_are_named_on_resume_test_and_pretrain(data_root, single_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single_run, run_dir)
    ckpt = torch.load(run_dir / "last.pth", weights_only=False)
    state = ckpt["models"][0]
    missing = sorted(k for k in state if k.startswith("embeddings."))[0]
    del state[missing]
    state["embeddings.extra.weight"] = torch.zeros(2)
    torch.save(ckpt, run_dir / "last.pth")
    with pytest.raises(ValueError, match=rf"last\.pth.*missing \['{missing}'\].*unexpected \['embeddings\.extra\.weight'\]"):
        train_main.main(["--resume", str(run_dir)])
    with pytest.raises(SystemExit, match=rf"missing \['{missing}'\].*embeddings\.extra\.weight"):
        test_main.main(["--run", str(run_dir), "--checkpoint", "last"])

    # a '+pre' ReID-pretrained CLIP file (--pretrain_path) missing a weight: the key is named, nothing is
    # silently left random; '+pre' without a file is refused
    torch.manual_seed(0)
    sd = CLIP(CLIPConfig(**{**TINY_ARCH, "vision_width": 64, "vision_heads": 1, "text_width": 64, "text_heads": 1},
                         image_size=(64, 32))).state_dict()
    del sd["visual.ln_post.bias"]
    partial = tmp_path / "partial_clip.pt"
    torch.save(sd, partial)
    with pytest.raises(RuntimeError, match=r"partial_clip\.pt.*visual\.ln_post\.bias"):
        train_main.main(tiny_args(data_root, tmp_path / "pre", "--loss_names", "TAL+pre",
                                  "--pretrain_path", str(partial)))
    with pytest.raises(SystemExit, match="pretrain_path"):
        train_main.main(tiny_args(data_root, tmp_path / "pre2", "--loss_names", "TAL+pre"))
