"""One training per run folder, and a folder that survives kills: the lock, the checkpoint pair (last.pth and the
one before it), the metrics log that holds every finished epoch exactly once, and the clean-up of leftovers.

Imports nothing of the project: the trainer and main.py use it.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import itertools
import json
import os
import shutil
import sys

from .files import write_jsonl

LAST, PREVIOUS = "last.pth", "last.prev.pth"
METRICS = "metrics.jsonl"
RUN_FILES = ("configs.yaml", "train_log.txt", METRICS, "best.pth", LAST, PREVIOUS)


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def new_folder(path: str) -> str:
    """Make and return the folder `path`, or PATH_2, PATH_3, ... when it exists: two trainings named in the same
    second each get their own (mkdir is atomic, so they never both take one)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for n in itertools.count(1):
        folder = path if n == 1 else f"{path}_{n}"
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            continue


def checkpoints(run_dir: str) -> list[str]:
    """The resumable checkpoints of a run folder, newest first."""
    return [p for p in (os.path.join(run_dir, LAST), os.path.join(run_dir, PREVIOUS)) if os.path.isfile(p)]


_held: set[str] = set()     # the run folders this process holds (a POSIX lock never excludes its own process)


class RunFolder:
    """Holds a run folder for one training: an exclusive lock for the process's lifetime (a second training
    on the same folder is refused, not interleaved).

    The lock is a POSIX record lock (lockf), not flock: a flock belongs to the open file, which the DataLoader's
    forked workers share, so it outlived a kill -9 of the training for the seconds its workers take to notice;
    a POSIX lock belongs to the process and is gone the moment it dies.  Such a lock is also dropped when the
    process closes any descriptor of the file, so this process never opens a held folder's lock file again."""

    def __init__(self, run_dir: str, resume: bool = False, overwrite: bool = False, created: bool | None = None):
        """created: whether this training made the folder (default: whether it did not exist yet)."""
        self.run_dir = run_dir
        self.created = not os.path.isdir(run_dir) if created is None else created
        self._key = os.path.realpath(run_dir)
        if self._key in _held:
            raise RunFolderError(self._in_use(f"pid {os.getpid()}, this process"))
        os.makedirs(run_dir, exist_ok=True)
        self._lock = open(os.path.join(run_dir, ".lock"), "a+")
        try:
            fcntl.lockf(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            self._lock.seek(0)
            holder = live_pid(self._lock.read())
            self._lock.close()
            raise RunFolderError(self._in_use(f"pid {holder}" if holder else "another process")) from None
        _held.add(self._key)
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}")
        self._lock.flush()
        held = checkpoints(run_dir)
        if held and not resume:
            if not overwrite:
                self.release()
                raise RunFolderError(f"{run_dir} already holds a run ({os.path.basename(held[0])}); continue it "
                                     f"with `python main.py --resume {run_dir}`, start it over with --overwrite, "
                                     "or give this training another --run_dir")
            self.clear()
        self.remove_temporaries()

    def _in_use(self, holder: str) -> str:
        return (f"{self.run_dir} is in use by another training ({holder}); wait for it to finish, or give this one "
                "another --run_dir")

    def clear(self) -> None:
        """--overwrite: the old run's files go, so nothing of it is mistaken for the new one's."""
        for name in RUN_FILES:
            path = os.path.join(self.run_dir, name)
            if os.path.isfile(path):
                os.remove(path)
        for path in glob.glob(os.path.join(self.run_dir, "events.out.tfevents.*")):
            os.remove(path)

    def remove_temporaries(self) -> None:
        """Half-written files of a killed process (utils.files.atomic_open names them NAME.tmpPID); with the
        lock held, no live writer owns one."""
        for path in glob.glob(os.path.join(self.run_dir, "*.tmp*")):
            os.remove(path)

    def release(self) -> None:
        if not self._lock.closed:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            _held.discard(self._key)

    def remove_if_unused(self) -> None:
        """After a failed start: a folder this training created and that holds no checkpoint goes away."""
        self.release()
        if self.created and not checkpoints(self.run_dir):
            shutil.rmtree(self.run_dir, ignore_errors=True)


def live_pid(text: str) -> int | None:
    """The pid a lock file names ("pid N"), if that process is alive on this machine (the lock's holder may not
    have written its own pid yet: a refusal never names a process that is gone)."""
    try:
        pid = int(text.split()[-1])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return None
    except PermissionError:     # alive, another user's
        pass
    return pid


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl ([] when there is none yet); an unreadable line, the last one of a process
    killed mid-write, is skipped with a word on stderr."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    print(f"{path}:{n}: not JSON, skipped (a write cut by a kill?): {e.msg}", file=sys.stderr)
    return rows


def settle_metrics(path: str, last_epoch: int, last_record: dict | None) -> list[dict]:
    """Make the metrics log agree with the checkpoint a run resumes from: rows of epochs after it (a killed
    epoch that will be trained again) are dropped, each epoch is kept once, and the checkpoint's own epoch is
    added from the checkpoint when the process was killed before logging it.  Returns the rows."""
    by_epoch = {}
    for row in read_metrics(path):
        if row.get("epoch", 0) <= last_epoch:
            by_epoch[row["epoch"]] = row
    if last_record is not None and last_epoch not in by_epoch:
        by_epoch[last_epoch] = last_record
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    write_jsonl(path, rows)
    return rows
