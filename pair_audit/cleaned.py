"""The annotation file without the dropped pairs, in the dataset's own format: every record of the file as it
was (other splits, other fields), the audited split's records without the dropped captions (and without their
entries of the per-caption lists, RDA's `diversity_captions`, CUHK-PEDES's `processed_tokens`), a record left
without captions removed.  It loads with `--anno_path`.

Under simulated noise the pairs the run saw are not the file's: pair i took the caption of pair perm[i] (RDE's noise
file).  The cleaned set keeps that convention, so it still trains on exactly the kept pairs as the run saw them and
can still be scored: beside OUT.json goes OUT.noise.npy, a permutation of the kept pairs.  Pair j of the cleaned set
is the j-th kept pair, in the original order; a kept pair that the run saw with its own caption stays in place
(perm'[j] = j: clean), and the kept permuted pairs take their captions round a cycle among themselves (perm'[j] !=
j: permuted), each caption stored in the slot its pair reads it from.  Training with `--anno_path OUT.json
--noisy_file OUT.noise.npy` then sees pair j as the run saw pair kept[j], and the truth (perm' == arange) is the
truth of those pairs.  One kept permuted pair alone cannot be put round a cycle: it then counts as clean, and the
report says so.
"""
from __future__ import annotations

import json
import os

import numpy as np

from utils.files import atomic_open, write_json
from . import store
from .pairs import AuditError, PairSource

ALIGNED = ("captions", "diversity_captions", "processed_tokens")    # per-caption lists a record may hold


def pairs_to_drop(below: np.ndarray, marks: dict[int, str]) -> set[int]:
    """The pairs below the threshold, then the page's marks: a pair marked drop goes, one marked keep stays."""
    drop = {int(i) for i in np.flatnonzero(below)} | {i for i, m in marks.items() if m == store.DROP}
    return drop - {i for i, m in marks.items() if m == store.KEEP}


def training_options(report: dict, noisy_rate: float) -> str:
    """What to add to the run's own training command to train on the cleaned file, as it is meant: the kept pairs
    as the run saw them, without the division."""
    noise = f" --noisy_rate {noisy_rate} --noisy_file {report['noise_file']}" if report.get("noise_file") else ""
    return f"--anno_path {report['file']}{noise} --division false"


def noise_file_of(out_path: str) -> str:
    """OUT.json -> OUT.noise.npy"""
    return os.path.splitext(out_path)[0] + ".noise.npy"


def cleaned_permutation(kept: list[int], permutation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(perm' over the kept pairs, content) where content[j] is the original pair whose caption the cleaned set
    stores in pair j's slot, so that pair j reads content[perm'[j]]'s caption = the caption pair kept[j] had."""
    kept = np.asarray(kept, dtype=np.int64)
    moved = np.flatnonzero(permutation[kept] != kept)      # kept pairs the run saw with another pair's caption
    new = np.arange(len(kept))
    if len(moved) > 1:
        new[moved] = np.roll(moved, -1)                     # pair moved[t] reads the slot of moved[t + 1]
    content = np.empty(len(kept), dtype=np.int64)
    content[new] = permutation[kept]                        # the slot pair j reads holds the caption it had
    return new, content


def write_cleaned(anno_file: str, sources: list[PairSource], drop: set[int], out_path: str,
                  permutation: np.ndarray | None = None) -> dict:
    """Writes OUT.json (and OUT.noise.npy under simulated noise); returns what was written, for the report."""
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and os.path.samefile(out_path, anno_file):
        raise AuditError(f"--write_clean {out_path} is the annotation file being audited: write the cleaned file "
                         "elsewhere (the original stays as it is)")
    if not out_path.endswith(".json"):
        raise AuditError(f"--write_clean {out_path}: give a .json path (the annotation format)")
    with open(anno_file, encoding="utf-8") as f:
        raw = json.load(f)
    kept = [i for i in range(len(sources)) if i not in drop]
    if not kept:
        raise AuditError(f"--write_clean would drop every one of the {len(sources)} pairs: lower the threshold or "
                         "mark pairs to keep")
    permutation = np.arange(len(sources)) if permutation is None else np.asarray(permutation)
    new_perm, content = cleaned_permutation(kept, permutation)
    slots: dict[int, list[tuple[int, int]]] = {}            # record -> [(caption index, source pair)] in order
    for j, pair in enumerate(kept):
        slots.setdefault(sources[pair].record, []).append((sources[pair].caption, int(content[j])))
    audited = {s.record for s in sources}
    records, removed = [], 0
    for index, record in enumerate(raw):
        if index not in audited:
            records.append(record)
            continue
        if index not in slots:
            removed += 1
            continue
        record = dict(record)
        for key in ALIGNED:
            if key not in record:
                continue
            values = []
            for _, src in slots[index]:
                source_record = raw[sources[src].record]
                if key not in source_record:      # that caption comes with no such entry: the list would not align
                    values = None
                    break
                values.append(source_record[key][sources[src].caption])
            if values is None:
                del record[key]
            else:
                record[key] = values
        records.append(record)
    write_json(out_path, records, indent=None)
    moved = int((new_perm != np.arange(len(kept))).sum())
    report = {"file": out_path, "kept": len(kept), "dropped": len(sources) - len(kept), "records_removed": removed,
              "noise_file": None}
    if not np.array_equal(permutation, np.arange(len(sources))):
        noise_file = noise_file_of(out_path)
        with atomic_open(noise_file, "wb") as f:
            np.save(f, new_perm)
        report.update(noise_file=noise_file, permuted_kept=int((permutation[kept] != np.asarray(kept)).sum()),
                      permuted_marked=moved)
    return report
