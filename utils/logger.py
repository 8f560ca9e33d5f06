"""Run-folder logging: a text log mirrored on the console, and one JSON object per epoch."""
from __future__ import annotations

import json
import logging
import os
import sys


def setup_logger(run_dir: str | None = None, name: str = "reid", filename: str = "train_log.txt",
                 quiet: bool = False) -> logging.Logger:
    """quiet: warnings only (the other processes of a torchrun job).  The file also takes DEBUG records, which
    the console does not show (the traceback of a collective that failed because another process died)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    handlers[0].setLevel(logging.INFO)
    unwritable = None
    if run_dir:
        try:
            handlers.append(logging.FileHandler(os.path.join(run_dir, filename)))
        except OSError as e:      # someone else's run folder, read-only: evaluating it still works
            unwritable = f"cannot write {os.path.join(run_dir, filename)} ({e.strerror}): logging to the console only"
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    if unwritable:
        logger.warning("%s", unwritable)
    return logger


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
