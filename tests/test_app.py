"""The search page (app.py, webapp/): through gradio_client it ranks like retrieve.py and reports the metrics
test.py computes; THI's rounds stream their questions and answers and reuse THI's answer cache; bad input gets a
message; nothing outside the gallery is served; and in a real browser (Debian's chromium + chromium-driver through
Selenium) a typed description finds its top image.

One page serves the module (a tiny trained run, conftest's run_dir, with the tiny Qwen2-VL answering Yes); while it
runs, `python -m thi` asks about the first test caption, so the page must find those answers in THI's cache.
"""
import os
import shutil
import urllib.error
import urllib.request

import pytest

import app
import retrieve
from tests.helpers import ROOT, SMALL_IMAGES, THI_DATA_SIZES, read_jsonl, write_odd_gallery_files
from tests.tiny_qwen2vl import build_tiny_qwen2vl
from thi import cli as thi_cli

DATA_SIZES = THI_DATA_SIZES   # conftest.py's data_root, trained into its run_dir
THI_OPTIONS = ["--xi", "-1", "--rounds", "2", "--max_new_tokens", "4", "--batch_size", "4", *SMALL_IMAGES]
FREE_TEXT = "a man in a red shirt, blue trousers and white shoes"


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen2vl(str(tmp_path_factory.mktemp("qwen_yes")), seed=0, favour="Yes")


@pytest.fixture(scope="module")
def thi_first_query(run_dir, tiny_qwen):
    """`python -m thi` on the first test caption, into the run's own THI folder (the page's default cache)."""
    thi_cli.main(["--run", run_dir, "--model_dir", tiny_qwen, "--limit", "1", *THI_OPTIONS])
    return read_jsonl(os.path.join(run_dir, "thi", "queries.jsonl"))[0]


@pytest.fixture(scope="module")
def page(run_dir, tiny_qwen):
    """(gradio_client.Client, URL) of `python app.py --run RUN_DIR --mllm TINY_QWEN ...`, served in this process."""
    from gradio_client import Client

    blocks, url = app.main(["--run", run_dir, "--mllm", tiny_qwen, "--topk", "5", *THI_OPTIONS], block=False)
    try:
        yield Client(url, verbose=False), url
    finally:
        blocks.close()


def split_of(data_root):
    from datasets import build_dataset
    return build_dataset("CUHK-PEDES", data_root).test


def file_identity(path) -> int:
    """The identity a synthetic image's file name gives (`test/323_0.jpg`), as its annotation record does."""
    return int(os.path.basename(path).split("_")[0])


def copy_of_split(split, folder):
    """The test split's images alone in a folder, at the paths the page names them by (relative to their root)."""
    root = os.path.commonpath([os.path.dirname(p) for p in split.img_paths])
    for p in split.img_paths:
        dest = folder / os.path.relpath(p, root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
    return folder


def test_page_ranks_like_retrieve_py_and_scores_a_test_caption_like_test_py(page, run_dir, data_root, tmp_path):
    from inference.runs import load_run
    from thi.rerank import RunSimilarity
    from utils.metrics import rank_metrics

    client, url = page
    assert url.startswith("http://127.0.0.1:")
    split = split_of(data_root)
    folder = copy_of_split(split, tmp_path / "gallery")
    k = len(split.img_paths)          # the whole gallery: every rank, not only the first few
    (expected,) = retrieve.main(["--run", run_dir, "--images", str(folder), "--query", FREE_TEXT, "--topk", str(k)])
    summary, grid, table = client.predict(FREE_TEXT, None, k, api_name="/search")
    assert [row[2] for row in table["data"]] == [p for p, _ in expected["hits"]]
    assert [row[1] for row in table["data"]] == pytest.approx([s for _, s in expected["hits"]], abs=1e-4)
    assert [g["caption"].split()[2] for g in grid] == [p for p, _ in expected["hits"]]   # '#1 0.1234 NAME ...'
    assert "no R1 / AP" in summary and "id " in grid[0]["caption"]

    # a picked test caption: R1 / AP are rank_metrics on test.py's fused similarity row of that caption
    q = 3
    caption = client.predict(q, api_name="/pick")
    assert caption == split.captions[q]
    summary, grid, table = client.predict(caption, q, k, api_name="/search")
    run = load_run(run_dir)
    run.load_weights("best")
    base = RunSimilarity(run).base[q:q + 1]
    m = rank_metrics(base, split.caption_pids[q:q + 1], split.image_pids, device="cpu")
    assert f"R1 {m['R1']:.0f}, AP {m['mAP']:.2f}" in summary, summary
    # identities as the dataset numbers them (the file name and the annotation file), not the split's renumbering
    assert all(row[3] == file_identity(row[2]) for row in table["data"])
    pid = file_identity(next(p for p, i in zip(split.img_paths, split.image_pids) if i == split.caption_pids[q]))
    assert pid != split.caption_pids[q] and f"identity {pid}:" in summary
    matches = [row[4] == "yes" for row in table["data"]]
    assert matches == [row[3] == pid for row in table["data"]] and any(matches)
    assert [g["caption"].endswith("✓") for g in grid] == matches     # the true identity's images are marked
    first_true = matches.index(True) + 1
    assert f"images rank {first_true}" in summary
    assert (m["R1"] == 100.0) == matches[0]


def test_bad_input_gets_a_message_and_only_thumbnails_are_served(page, run_dir):
    client, url = page
    summary, grid, table = client.predict("   ", None, 5, api_name="/search")
    assert "Type a description" in summary and not grid
    # what the page shows is served; the run's files and the rest of the disk are not
    from gradio_client import Client

    _, grid, _ = Client(url, verbose=False, download_files=False).predict(FREE_TEXT, None, 2, api_name="/search")
    image = grid[0]["image"]
    image = image["path"] if isinstance(image, dict) else image.path     # the file on the server's side
    assert image.startswith(os.environ["GRADIO_TEMP_DIR"]) and image.endswith(".jpg")   # a thumbnail, in the page's folder
    served = urllib.request.urlopen(f"{url}gradio_api/file={image}", timeout=10)
    assert served.status == 200 and served.headers["content-type"].startswith("image/")
    from PIL import Image
    import io
    assert Image.open(io.BytesIO(served.read())).height == 256          # webapp.page.THUMB_HEIGHT
    for path in (os.path.abspath(os.path.join(run_dir, "configs.yaml")), os.path.abspath(os.path.join(run_dir,
                 "best.pth")), "/etc/passwd", os.path.abspath(__file__)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert refused.value.code == 403, path


def test_the_page_says_when_a_query_was_cut_or_held_no_word(page, run_dir, data_root, tmp_path, capsys):
    client, _ = page
    long = " ".join([FREE_TEXT, "with a black backpack"] * 3)             # ~50 tokens; the run reads 38 (40 - 2)
    summary, grid, _ = client.predict(long, None, 3, api_name="/search")
    assert "tokens long" in summary and "the first 38" in summary and "was not read" in summary, summary
    assert "black backpack" in summary.split("was not read")[0].split("the first 38")[1]   # the cut-off words
    assert len(grid) == 3                                                   # searched all the same
    summary, _, _ = client.predict("🙂🙂 👕 !!", None, 3, api_name="/search")
    assert "holds no word" in summary, summary
    summary, _, _ = client.predict(FREE_TEXT, None, 3, api_name="/search")
    assert "Note" not in summary
    # retrieve.py says the same under the query (one check for both: inference.retrieval_index.query_notes)
    folder = copy_of_split(split_of(data_root), tmp_path / "gallery")
    retrieve.main(["--run", run_dir, "--images", str(folder), "--query", long, "--topk", "1"])
    assert "was not read" in capsys.readouterr().out


def test_the_page_takes_no_file_and_no_oversized_request(page):
    """All the page takes is a description and two numbers, as JSON: an upload of any type is refused before
    its body is read, and so is any request body over the limit."""
    from webapp.server import MAX_REQUEST_BYTES

    _, url = page
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 415 and b"takes no files" in refused.value.read()
    big = b'{"data": ["' + b"a" * MAX_REQUEST_BYTES + b'"], "fn_index": 0, "session_hash": "x"}'
    request = urllib.request.Request(f"{url}gradio_api/queue/join", data=big, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 413 and b"too large" in refused.value.read()


def test_a_folder_gallery_without_images_then_with_a_broken_one(run_dir, data_root, tmp_path):
    """--gallery FOLDER: no images is a message on the page (not a crash), an undecodable file is named and
    skipped, and after 'Re-scan gallery' the page ranks the folder as retrieve.py does."""
    from inference.retrieval_index import load_encoders
    from webapp.gallery import Gallery
    from webapp.page import Page, on_page

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    page = Page(Gallery(load_encoders(run_dir), str(folder), "my folder"), "test")
    assert "no readable images" in page.rescan()
    summary, grid, table = on_page(3)(page.search)(FREE_TEXT, None, 5)
    assert "Nothing to search" in summary and "Re-scan gallery" in summary and grid is None
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    assert "no readable images" in page.rescan()
    for i, p in enumerate(split_of(data_root).img_paths[:4]):
        shutil.copy2(p, folder / f"crop{i}.jpg")
    status = page.rescan()
    assert "4 images" in status and "broken.jpg (not an image" in status and "skipped" in status
    summary, grid, table = on_page(3)(page.search)(FREE_TEXT, None, 3)
    (expected,) = retrieve.main(["--run", run_dir, "--images", str(folder), "--query", FREE_TEXT, "--topk", "3"])
    assert [row[2] for row in table] == [p for p, _ in expected["hits"]]
    assert all(row[3] == "" for row in table)          # a folder of one's own: identities unknown


def test_a_gallery_of_odd_files_with_loader_workers(run_dir, data_root, tmp_path):
    """`app.py --gallery` on a folder of every odd file, with two loader workers: the page starts, names each
    skipped file and why, saves the good images' features exactly as for a clean folder; an image replaced since
    it was indexed by a 10000x10 one, or by a 20:1 one, still gets a thumbnail (of a size JPEG can hold)."""
    from gradio_client import Client
    from PIL import Image
    import torch
    from inference.retrieval_index import index_path, load_encoders, open_index
    from utils.safe_load import load as safe_load
    from webapp.page import THUMB_HEIGHT, THUMB_MAX_WIDTH

    split = split_of(data_root)
    clean = tmp_path / "clean"
    for i, p in enumerate(split.img_paths):
        clean.mkdir(exist_ok=True)
        shutil.copy2(p, clean / f"{i:03d}.jpg")
    odd = tmp_path / "odd"
    shutil.copytree(clean, odd)
    why = write_odd_gallery_files(odd, split.img_paths[0])
    loader = ["--num_workers", "2", "--index_batch_size", "4"]
    blocks, url = app.main(["--run", run_dir, "--gallery", str(odd), *loader], block=False)
    try:
        client = Client(url, verbose=False)
        status = client.predict(api_name="/rescan")
        assert f"{len(split.img_paths)} images" in status, status
        for name, reason in why.items():
            assert f"{name} ({reason}" in status, status
        enc = load_encoders(run_dir)
        reference, _ = open_index(str(clean), enc, batch_size=4, num_workers=2, progress=False)
        saved = safe_load(index_path(str(odd), enc), "retrieval index")
        assert saved["paths"] == reference.paths and torch.equal(saved["features"], reference.features)

        Image.new("RGB", (10000, 10), (0, 90, 200)).save(odd / "001.jpg", format="PNG")   # changed on disk
        Image.new("RGB", (2000, 100), (0, 200, 90)).save(odd / "002.jpg", format="PNG")
        summary, grid, table = client.predict(FREE_TEXT, None, len(split.img_paths), api_name="/search")
        assert "Searched" in summary and len(grid) == len(split.img_paths)
        tiles = {g["caption"].split()[2]: Image.open(g["image"]["path"] if isinstance(g["image"], dict)
                                                     else g["image"]) for g in grid}
        assert all(t.height <= THUMB_HEIGHT and t.width <= THUMB_MAX_WIDTH for t in tiles.values())
        assert tiles["002.jpg"].width == THUMB_MAX_WIDTH                      # the 20:1 image, scaled to fit
        assert tiles["001.jpg"].size == (THUMB_HEIGHT // 2, THUMB_HEIGHT)     # the 10000x10: its reason, drawn
    finally:
        blocks.close()


def test_the_page_removes_its_temporary_folder_on_exit(run_dir, tmp_path):
    """Real `python app.py` processes stopped by Ctrl-C (SIGINT: the page's normal end, main() returns) and by
    SIGTERM leave no reid-search-page-* folder behind (an error at start leaves by the same atexit), and remove
    the folder of a page killed with -9 when they start; the running page refuses an upload.  The two start side
    by side: most of the time is their imports."""
    import signal
    import subprocess
    import sys
    import threading

    gone = subprocess.Popen(["true"])
    gone.wait()                                                  # a process id that no longer runs
    procs = {}
    for how in ("SIGINT", "SIGTERM"):
        tmp = tmp_path / how
        tmp.mkdir()
        (tmp / f"reid-search-page-{gone.pid}-killed").mkdir()   # left by a page killed with -9
        env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
        env.update(TMPDIR=str(tmp), PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        procs[how] = subprocess.Popen([sys.executable, "app.py", "--run", run_dir], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = [threading.Timer(180, p.kill) for p in procs.values()]   # a hanging page fails, not the suite
    for w in watchdog:
        w.start()
    try:
        for how, proc in procs.items():
            url = None
            for line in proc.stdout:
                if line.startswith("search page: "):
                    url = line.split()[-1]
                    break
            assert url, f"{how}: the page did not start"
            (mine,) = (tmp_path / how).glob("reid-search-page-*")     # its own; the orphan is gone
            assert mine.name.startswith(f"reid-search-page-{proc.pid}-")
            request = urllib.request.Request(f"{url}gradio_api/upload", data=b"--x--\r\n", method="POST",
                                             headers={"Content-Type": "multipart/form-data; boundary=x"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 415
            proc.send_signal(getattr(signal, how))
        for how, proc in procs.items():
            out = proc.communicate(timeout=120)[0]
            # Ctrl-C: 0 once Gradio's loop runs, 130 if it came a moment before; SIGTERM: 143
            expected = {"SIGINT": (0, 128 + signal.SIGINT), "SIGTERM": (128 + signal.SIGTERM,)}[how]
            assert proc.returncode in expected and "Traceback" not in out, (how, proc.returncode, out)
            assert not list((tmp_path / how).glob("reid-search-page-*")), (how, out)
    finally:
        for w in watchdog:
            w.cancel()
        for p in procs.values():
            p.kill()


def test_thi_panel_streams_rounds_and_reuses_thi_cache(page, thi_first_query, data_root):
    client, _ = page
    split = split_of(data_root)
    # the first test caption: every answer was cached by `python -m thi`; the page asks nothing and agrees with it
    job = client.submit(split.captions[0], 0, 5, api_name="/thi")
    job.result()
    logs = [out[0] for out in job.outputs()]
    final = logs[-1]
    assert len(logs) >= 4, logs                                      # streamed: one update per step
    assert f"Round 1: candidate {os.path.basename(thi_first_query['anchor_image'])}" in final
    assert "Does this description accurately describe the person in the image?" in final
    p_yes = thi_first_query["yes_prob"][0]
    assert f"answer: **Yes (P(yes) = {p_yes:.3f}); accepted" in final
    assert thi_first_query["refined"] in final
    assert "3 read from THI's cache" in final and ", 0 asked" in final
    assert any("Round 1" in text and "VQA" not in text for text in logs[:-1])   # round 1 shown before the VQA
    # free text: asked now, then read back on the second click
    first = [out[0] for out in client.submit(FREE_TEXT, None, 5, api_name="/thi")][-1]
    # (the VQA question does not depend on the caption: when the anchor is the same image, that answer is cached)
    assert ", 0 asked" not in first and "Aggregation" in first
    again = client.predict(FREE_TEXT, None, 5, api_name="/thi")[0]
    assert "3 read from THI's cache" in again and ", 0 asked" in again
    grid = client.predict(FREE_TEXT, None, 5, api_name="/thi")[1]
    assert len(grid) == 5 and all(g["caption"].startswith(f"#{i} (base #") for i, g in enumerate(grid, 1))
    assert sum("ASKED" in g["caption"] for g in grid) == 1                 # the accepted image, marked


def test_a_thumbnail_handed_out_is_never_rewritten(monkeypatch, tmp_path):
    """The same picture in two answers is one file, written once: a client still fetching it from the first answer
    must not see it cut by the second (Gradio's own PIL path rewrites it in place: a truncated download)."""
    from PIL import Image
    from webapp.gallery import Hit
    from webapp.page import thumbnail, thumbnail_file

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "page"))
    Image.new("RGB", (64, 128), (10, 200, 30)).save(tmp_path / "a.jpg")
    hit = Hit(rank=1, name="a.jpg", path=str(tmp_path / "a.jpg"), score=0.5, identity=3, match=True)
    first = thumbnail_file(thumbnail(hit))
    stamp = os.stat(first).st_mtime_ns, os.stat(first).st_ino
    again = thumbnail_file(thumbnail(hit))
    assert again == first and (os.stat(again).st_mtime_ns, os.stat(again).st_ino) == stamp
    assert first.startswith(str(tmp_path / "page")) and Image.open(first).size == (128, 256)
    unframed = thumbnail_file(thumbnail(Hit(rank=1, name="a.jpg", path=hit.path, score=0.5, identity=3, match=False)))
    assert unframed != first
    assert sorted(os.listdir(os.path.dirname(first))) == sorted({os.path.basename(first), os.path.basename(unframed)})


def test_thi_panel_without_a_model_says_how_to_enable_it():
    from webapp.page import THI_OFF, Page

    (message,) = [m for m, _ in Page(None, "test").run_thi("a man", None, 5)]
    assert message == THI_OFF and "--mllm" in message


def test_the_page_binds_localhost_unless_told():
    args = app.parse(["--run", "R"])
    assert args.host == "127.0.0.1" and args.model_dir is None
    args = app.parse(["--run", "R", "--host", "0.0.0.0", "--mllm", "M", "--rounds", "3", "--backend", "vllm"])
    assert (args.host, args.model_dir, args.rounds, args.backend) == ("0.0.0.0", "M", 3, "vllm")


# --------------------------------------------------------------------------- a real browser


def browser_paths():
    """Debian's chromium and chromium-driver (.ci/run installs them with apt-get).  Outside CI a machine without
    them skips the test; in CI (CI=true) their absence is a failure, so the test cannot skip itself green."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        message = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + "; CI must run the browser test")
        pytest.skip(message)
    return found


def search_in_browser(url: str, description: str, expected: str, screenshot: str, timeout: float = 60,
                      window: str = "1400,1000") -> str:
    """Opens the page in headless chromium, types `description`, presses Search, waits until `expected` (a file
    name) is in the results, saves a screenshot; returns the results' text.  Also makes the README's picture."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={window}"):
        options.add_argument(flag)
    # both paths given: Selenium's manager downloads nothing
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#query textarea")))
        box.send_keys(description)
        driver.find_element(By.CSS_SELECTOR, "#search").click()
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#results"), expected))
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        text = driver.find_element(By.CSS_SELECTOR, "#results").text
        os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
        driver.save_screenshot(screenshot)
        return text
    finally:
        driver.quit()


def test_search_in_a_real_browser(page, run_dir, data_root, tmp_path):
    browser_paths()
    client, url = page
    _, _, table = client.predict(FREE_TEXT, None, 5, api_name="/search")
    top = table["data"][0][2]
    # the artefact: TEST_ARTEFACTS or logs/test_artefacts (CI can collect it)
    shot = os.path.join(os.environ.get("TEST_ARTEFACTS", os.path.join("logs", "test_artefacts")), "app_search.png")
    text = search_in_browser(url, FREE_TEXT, top, shot)
    assert "#1 " in text and top in text.split("#2")[0]          # the expected file is the first result shown
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_app_runs_on_a_small_gallery(run_dir, tmp_path):
    """bench/app.py (the README's latency figure) with tiny sizes: it draws, indexes and times every way."""
    from bench import app as bench_app

    payload = bench_app.main(["--run", run_dir, "--gallery_size", "12", "--gallery_dir", str(tmp_path / "g"),
                              "--queries", "2", "--no-http", "--device", "cpu"])
    assert [r["way"] for r in payload["rows"]] == ["index build", "index refresh", "rank", "handler"]
    assert len(os.listdir(tmp_path / "g")) == 12 + 1                    # the images and their index folder
    assert all(r["median_ms"] > 0 for r in payload["rows"])
