"""The pairs an audit scores, numbered as the training set numbers them (and RDE's noise files index them): one pair
per caption of the split's records, in file order, each with where it stands in the annotation file."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from datasets.bases import DatasetError, PersonDataset, TrainRecord, build_pairs


class AuditError(SystemExit):
    """Input the audit cannot work with; the message names the file and the fix (a SystemExit: no traceback)."""


@dataclass(frozen=True)
class PairSource:
    record: int       # index of its record in the annotation file's list
    caption: int      # index of its caption in that record's `captions`
    identity: int     # the identity as the file writes it
    file_path: str    # the image path as the file writes it


def split_pairs(dataset: PersonDataset, split: str) -> tuple[list[TrainRecord], list[PairSource]]:
    """(pairs, their sources) of one split of the dataset's annotation file."""
    try:
        records = dataset.read_records(dataset.anno_file)
    except DatasetError as e:
        raise AuditError(str(e)) from None
    chosen = [r for r in records if r.split == split]
    if not chosen:
        present = Counter(r.split for r in records)
        held = ", ".join(f"{s} {n} records" for s, n in sorted(present.items()))
        raise AuditError(f"{dataset.anno_file}: the {split} split is empty, there is nothing to audit (the file holds "
                         f"{held}); choose one of them with --split, or give the annotation file whose {split} pairs "
                         "you mean with --anno_path")
    sources = [PairSource(r.index, k, r.pid, r.rel_path) for r in chosen for k in range(len(r.captions))]
    return build_pairs(chosen), sources
