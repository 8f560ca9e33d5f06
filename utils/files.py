"""Files written atomically: into a temporary file beside the target, then renamed over it, so that a reader,
a concurrent run or a run killed mid-write never sees half a file."""
from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager


@contextmanager
def atomic_open(path: str, mode: str = "w"):
    """open(path, mode) for writing, made visible under `path` only once the block has finished."""
    # one temporary per process and thread: concurrent writers never share it
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        # a failed write (a full disk) takes its partial file with it, so the space it held is free again
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj, indent: int | None = 1) -> None:
    """indent=None: compact, for large files (annotations)."""
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)


def write_jsonl(path: str, records: list[dict]) -> None:
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
