"""Search people by description in a browser, and watch THI's questions and answers.

    python app.py --run RUN_DIR                       # the run's test split; prints the page's address
    python app.py --run RUN_DIR --gallery FOLDER      # a folder of your own person crops instead
    python app.py --run RUN_DIR --mllm Qwen2-VL-7B-Instruct [--backend vllm --lora ... --rounds 5 ...]   # + THI

Its Audit tab shows the pairs `python audit.py --run RUN_DIR` ranked (RUN_DIR/audit, or --audit FOLDER).

The gallery is embedded once through retrieve.py's incremental feature index (FOLDER/.reid_index/, or
RUN_DIR/search_index/ for the test split) and scored by the same code, so the page and retrieve.py rank a query
alike.  The page binds 127.0.0.1 unless --host says otherwise and serves only thumbnails of gallery images.
"""
import argparse
import atexit
import glob
import logging
import os
import shutil
import signal
import sys
import tempfile

from mllm.backends import add_backend_args
from thi.cli import add_thi_args, check_thi_args


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder made by main.py (holds configs.yaml and *.pth)")
    p.add_argument("--gallery", help="folder of person images to search (default: the run's test split)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a path to a .pth file")
    p.add_argument("--device", help="device of the retrieval model (auto, cpu, cuda ...)")
    p.add_argument("--root_dir", help="dataset root, if it moved since training")
    p.add_argument("--audit", help="the audit folder the Audit tab shows (default RUN_DIR/audit, audit.py's)")
    p.add_argument("--topk", type=int, default=10, help="images shown per query (the page has a slider too)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--index_batch_size", type=int, help="images per batch while indexing (default: the run's)")
    p.add_argument("--num_workers", type=int, help="image loading workers while indexing (default: the run's)")
    # THI on the page: python -m thi's own options, the model folder named --mllm and optional
    add_backend_args(p, model_flags=("--mllm", "--model_dir"), required=False)
    add_thi_args(p)
    p.add_argument("--cache", help="THI's answer cache (default RUN_DIR/thi/mllm_cache.jsonl, python -m thi's)")
    args = p.parse_args(argv)
    check_thi_args(p, args)
    if not 1 <= args.topk <= 50:
        p.error("--topk must be in 1..50")
    return args


TEMP_PREFIX = "reid-search-page-"


def private_temp_dir() -> None:
    """Gradio serves its upload folder: a folder of this process's own holds only the thumbnails it draws, not the
    files of other Gradio apps sharing /tmp/gradio.  Read by Gradio at import, hence made first; made once per
    process and removed when it ends (a GRADIO_TEMP_DIR of the user's is used as it is, and kept).  Its name holds
    the process id, so that the folders of pages that could not clean up (kill -9) go at the next start."""
    if "GRADIO_TEMP_DIR" in os.environ:
        return
    remove_orphans()
    folder = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def remove_orphans() -> None:
    """This user's reid-search-page-PID-* folders whose process is gone.  A live process keeps its folder, even
    one that only reuses the number (its folder then waits for a later start)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{TEMP_PREFIX}*-*")):
        pid = os.path.basename(path)[len(TEMP_PREFIX):].split("-")[0]
        try:
            if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:   # another user's process, or the folder went meanwhile
            continue


def stop_on_sigterm(signum, frame):
    # SIGTERM (a service manager, `kill`) ends the page as Ctrl-C does: the server is closed, atexit runs
    raise SystemExit(128 + signum)


def main(argv=None, block: bool = True):
    args = parse(sys.argv[1:] if argv is None else argv)
    if block:   # the command line; not a page started inside another program (tests), whose signals are its own
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)   # Gradio's own requests to itself, one line each
    private_temp_dir()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # nothing leaves the machine
    from webapp.server import serve

    try:
        return serve(args, block)   # Ctrl-C once the page is up: Gradio closes it and serve returns
    except KeyboardInterrupt:       # Ctrl-C while it starts (indexing a large gallery): a line, not a traceback
        print("stopped (Ctrl-C) before the page was up", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
