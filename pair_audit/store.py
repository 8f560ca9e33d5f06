"""An audit's folder (RUN_DIR/audit by default) and what lies in it, written atomically, read back by later runs of
the audit (which continue from its stages), by --write_clean and by the page's Audit tab:

    pairs.csv          one row a pair, most suspect first (COLUMNS, then one column per signal)
    summary.json/.txt  how many pairs are below the threshold, by identity and caption length; the truth metrics
    audit.json         what was audited: run, checkpoint, annotation file, split, noise file, the signals
    scores.npz         stage 1, the division's verdict; identity.npz, stage 2, the identity ranks: each keyed by
                       what it was computed from, so that a rerun reads it instead of computing it again
    mllm_cache.jsonl   stage 3, the MLLM's answers (mllm/cache.py)
    marks.json         keep / drop marks made in the page, keyed by the audited pairs
    audit_log.txt      the log
"""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from utils.files import atomic_open, write_json

PAIRS, SUMMARY, SUMMARY_TEXT, ABOUT = "pairs.csv", "summary.json", "summary.txt", "audit.json"
SCORES, IDENTITY, MLLM_CACHE, MARKS, LOG = "scores.npz", "identity.npz", "mllm_cache.jsonl", "marks.json", "audit_log.txt"
CLEANED = "cleaned.json"     # where the page exports (the command line writes where --write_clean says)
KEEP, DROP = "keep", "drop"

# the columns every pairs.csv has, in order; then the optional ones and one p_clean/<signal>, loss/<signal> each
COLUMNS = ("suspect_rank", "pair", "file_path", "caption", "id", "clean_probability", "similarity", "identity_rank",
           "identity_captions", "votes_clean", "words")
INTEGER = {"suspect_rank", "pair", "id", "identity_rank", "identity_captions", "words", "permuted"}


def default_folder(run_dir: str, anno_path: str | None, split: str) -> str:
    """RUN/audit for the run's own training pairs; RUN/audit_<file>_<split> for another file or split, so that
    auditing them never overwrites the run's audit (nor its marks)."""
    if not anno_path and split == "train":
        return os.path.join(run_dir, "audit")
    stem = os.path.splitext(os.path.basename(anno_path))[0] if anno_path else "run"
    return os.path.join(run_dir, f"audit_{stem}_{split}")


def fingerprint(path: str | None) -> list | None:
    """What a stage depends on in a file: its absolute path, size and modification time."""
    if not path:
        return None
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def save_stage(path: str, key: dict, **arrays) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), **arrays)


def load_stage(path: str, key: dict) -> dict | None:
    """The stage's arrays when the file holds them for this key, else None (absent, of another key, unreadable)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {name: f[name] for name in f.files if name != "key"}
    except (OSError, ValueError, KeyError):
        return None


def write_pairs(path: str, rows: list[dict], columns: list[str]) -> None:
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_pairs(path: str) -> list[dict]:
    """pairs.csv's rows, numbers as numbers (an empty cell: None)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k, v in row.items():
            if k in INTEGER:
                row[k] = int(v) if v != "" else None
            elif k not in ("file_path", "caption", "votes_clean", "mllm_group") and v != "":
                row[k] = float(v)
            elif v == "" and k not in ("caption", "file_path"):
                row[k] = None
    return rows


def write_about(folder: str, about: dict) -> None:
    write_json(os.path.join(folder, ABOUT), about)


def read_about(folder: str) -> dict:
    with open(os.path.join(folder, ABOUT), encoding="utf-8") as f:
        return json.load(f)


def read_marks(folder: str, pairs_key: dict) -> dict[int, str]:
    """{pair: 'keep' | 'drop'} made in the page for these pairs (marks of other pairs are not theirs: none)."""
    path = os.path.join(folder, MARKS)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("pairs") != pairs_key:
        return {}
    return {int(k): v for k, v in saved["marks"].items() if v in (KEEP, DROP)}


def write_marks(folder: str, pairs_key: dict, marks: dict[int, str]) -> None:
    write_json(os.path.join(folder, MARKS), {"pairs": pairs_key, "marks": {str(k): v for k, v in sorted(marks.items())}})
