"""Annotation parsing shared by every person re-id dataset (docs/METHOD.md §1.1-§1.2).

All four public datasets are a JSON list of records with an id, an image path, a
list of captions and a split name; they differ only in file name, image folder,
path key, id base and which splits exist. Those differences are class attributes
of the concrete datasets, so this module is the one place that reads and checks
annotation files. Every problem is raised as `DatasetError` while the dataset is
built, i.e. before any training step runs.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

# Split names accepted in annotation files, mapped to ours. Real files use the
# first three; the others are cheap tolerance for hand-made annotations.
_SPLIT_ALIASES = {"train": "train", "val": "val", "test": "test",
                  "valid": "val", "validation": "val", "query": "test"}
_ALL_PATH_KEYS = ("file_path", "img_path")


# every dataset folder read in this process: the image cache keys images by their path inside one and keeps its
# files in FOLDER/.cache (datasets.image_cache)
DATASET_ROOTS: set[str] = set()


class DatasetError(Exception):
    """A data problem, with a message that names the file and says the fix."""


@dataclass
class TrainRecord:
    """One training sample: one caption of one image."""
    pid: int            # remapped identity, 0..P-1 in order of first appearance
    image_id: int       # index of the image, 0..I-1 (records sharing a file share it)
    img_path: str       # absolute
    caption: str
    # RDA: the `diversity_captions` entry aligned with this caption: a str, or a
    # list of groups, each a list of alternative sentences. None without RDA.
    diversity: object = None


@dataclass
class EvalSplit:
    """Gallery = images, queries = captions; a match is equal pids."""
    img_paths: list[str]
    image_pids: list[int]
    captions: list[str]
    caption_pids: list[int]
    raw_pids: dict[int, int] = field(default_factory=dict)   # pid -> the identity the annotation file gives

    @property
    def num_ids(self) -> int:
        return len(set(self.image_pids))

    def as_written(self, pids) -> list[int]:
        """The identity numbers of the annotation file (and of its file names) for these pids: what a person
        reading the data knows them by; pids themselves are renumbered 0..P-1."""
        return [self.raw_pids.get(p, p) for p in pids]


@dataclass
class _Record:
    """A validated annotation record (internal)."""
    index: int          # position in the file, for error messages
    pid: int            # raw id as written in the file
    img_path: str       # absolute
    captions: list[str]
    diversity: Optional[list]
    split: str
    rel_path: str = ""  # as written in the file, for messages


class PersonDataset:
    """Base of the concrete datasets; subclasses only set the class attributes."""

    name: str = ""
    dataset_dir: str = ""               # folder under root_dir
    anno_names: tuple[str, ...] = ()    # annotation file names, tried in order
    image_dir: str = "imgs"             # image folder inside dataset_dir ('' = the folder itself)
    path_key: str = "file_path"         # record key holding the image path
    splits: tuple[str, ...] = ("train", "val", "test")  # splits that must be non-empty
    id_base: int = 1                    # first id in the real files (only make_synthetic uses it)

    def __init__(self, root_dir: str, anno_path: Optional[str] = None, check_images: bool = True):
        self.root_dir = os.path.abspath(os.path.expanduser(root_dir))
        self.dataset_root = os.path.join(self.root_dir, self.dataset_dir)
        DATASET_ROOTS.add(os.path.normpath(self.dataset_root))
        self.anno_file = self._resolve_anno_file(anno_path)
        records = self.read_records(self.anno_file)
        self._check_splits(records)
        self._check_contents(records)
        if check_images:
            self._check_images(records)

        train = [r for r in records if r.split == "train"]
        self.train: list[TrainRecord] = build_pairs(train)
        self.num_train_pids = len({r.pid for r in self.train})
        self.num_train_images = len({r.image_id for r in self.train})
        val = [r for r in records if r.split == "val"]
        self.val: Optional[EvalSplit] = _build_eval(val) if val else None
        self.test: EvalSplit = _build_eval([r for r in records if r.split == "test"])
        self.has_rda = any(r.diversity is not None for r in self.train)

    # ---- locating the annotation file -------------------------------------------------
    @classmethod
    def module_anno_path(cls) -> Optional[str]:
        """The `ANNO_PATH` constant at the top of the subclass's module (read now, so edits count)."""
        return getattr(sys.modules.get(cls.__module__), "ANNO_PATH", None)

    def _resolve_anno_file(self, anno_path: Optional[str]) -> str:
        explicit = anno_path if anno_path else self.module_anno_path()
        if explicit:
            path = os.path.expanduser(str(explicit))
            candidates = [path] if os.path.isabs(path) else [os.path.join(self.dataset_root, path), os.path.abspath(path)]
            for cand in candidates:
                if os.path.isfile(cand):
                    return cand
            source = "--anno_path" if anno_path else f"ANNO_PATH in {sys.modules[type(self).__module__].__file__}"
            raise DatasetError(
                f"{self.name}: annotation file {path!r} (from {source}) not found; looked at "
                f"{', '.join(candidates)}. Give an absolute path, or one relative to the dataset folder "
                f"{self.dataset_root}.")
        tried = [os.path.join(self.dataset_root, n) for n in self.anno_names]
        for cand in tried:
            if os.path.isfile(cand):
                return cand
        hint = "" if os.path.isdir(self.dataset_root) else f" (the folder {self.dataset_root} does not exist)"
        raise DatasetError(
            f"{self.name}: no annotation file found in {self.dataset_root}{hint}; tried "
            f"{', '.join(self.anno_names)}. Point --root_dir at the folder that contains "
            f"{self.dataset_dir}/, or pass --anno_path to the JSON file.")

    # ---- parsing and validation -------------------------------------------------------
    def read_records(self, path: str) -> list[_Record]:
        """Every record of an annotation file in file order, parsed and checked (tools that rewrite the file
        pair their output with these, e.g. python -m rda)."""
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}. "
                               f"Fix or re-download the annotation file.") from e
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text ({e}). Is this really the JSON annotation file?") from e
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of records, got a {type(data).__name__}. "
                               f"Use the original {self.name} annotation file.")
        if not data:
            raise DatasetError(f"{path}: the list of records is empty.")
        return [self._parse_record(i, raw, path) for i, raw in enumerate(data)]

    def _parse_record(self, i: int, raw: Any, path: str) -> _Record:
        where = f"{path}: record {i}"
        if not isinstance(raw, dict):
            raise DatasetError(f"{where} is a {type(raw).__name__}, expected an object with "
                               f"id, {self.path_key}, captions, split.")
        # Tolerate the other dataset's path key (hand-converted files mix them up).
        path_keys = (self.path_key,) + tuple(k for k in _ALL_PATH_KEYS if k != self.path_key)
        img_key = next((k for k in path_keys if k in raw), None)
        for field, present in (("id", "id" in raw), (self.path_key, img_key is not None),
                               ("captions", "captions" in raw), ("split", "split" in raw)):
            if not present:
                raise DatasetError(f"{where} has no field '{field}' (it has: {', '.join(sorted(raw)) or 'none'}). "
                                   f"Every {self.name} record needs id, {self.path_key}, captions, split.")

        pid = raw["id"]
        if isinstance(pid, str) and pid.strip().lstrip("-").isdigit():
            pid = int(pid)
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise DatasetError(f"{where}: 'id' must be an integer, got {raw['id']!r}.")

        rel = raw[img_key]
        if not isinstance(rel, str) or not rel:
            raise DatasetError(f"{where}: '{img_key}' must be a non-empty string, got {rel!r}.")

        captions = raw["captions"]
        if (not isinstance(captions, list) or not captions
                or not all(isinstance(c, str) for c in captions)):
            raise DatasetError(f"{where}: 'captions' must be a non-empty list of strings, got {captions!r:.200}.")

        split = _SPLIT_ALIASES.get(str(raw["split"]).strip().lower())
        if split is None:
            raise DatasetError(f"{where}: unknown split {raw['split']!r}; expected one of train, val, test.")

        diversity = raw.get("diversity_captions")
        if diversity is not None:
            _check_diversity(diversity, len(captions), where)

        return _Record(index=i, pid=pid, img_path=os.path.join(self.dataset_root, self.image_dir, rel),
                       captions=captions, diversity=diversity, split=split, rel_path=rel)

    def _check_splits(self, records: list[_Record]) -> None:
        present = {r.split for r in records}
        for split in self.splits:
            if split not in present:
                raise DatasetError(
                    f"{self.anno_file}: the '{split}' split is empty (splits present: "
                    f"{', '.join(sorted(present))}). {self.name} needs {', '.join(self.splits)}; "
                    f"check the 'split' values or that this is the {self.name} file.")

    def content_problems(self, records: list[_Record]) -> list[tuple[str, str, list[str]]]:
        """(kind, fix, one line per record) for records that parse but must not be trained on; datasets.check
        reports the same list.

        Paths are compared after normalising '..' but without resolving symlinks: an image folder that is a
        link to another disk is a normal set-up, while a record that climbs out with '..' or is absolute
        reads files nobody meant to be part of the dataset.
        """
        root = os.path.normpath(self.dataset_root)
        outside, empty = [], []
        for r in records:
            target = os.path.normpath(r.img_path)
            if os.path.commonpath([root, target]) != root:
                outside.append(f"record {r.index}: {r.rel_path!r} -> {target}")
            empty += [f"record {r.index} ({r.rel_path}), caption {k}: {c!r}"
                      for k, c in enumerate(r.captions) if not c.strip()]
        return [("image paths leading outside the dataset folder",
                 f"paths are relative to {os.path.join(self.dataset_root, self.image_dir)} and must stay inside "
                 f"{self.dataset_root}: fix the record, or move the image into the dataset folder", outside),
                ("empty captions", "write the caption, or remove it from the record's 'captions' list", empty)]

    def _check_contents(self, records: list[_Record]) -> None:
        parts = []
        for kind, fix, lines in self.content_problems(records):
            if lines:
                shown = "\n  ".join(lines[:5]) + (f"\n  ... and {len(lines) - 5} more" if len(lines) > 5 else "")
                parts.append(f"{len(lines)} {kind} ({fix}):\n  {shown}")
        if parts:
            raise DatasetError(f"{self.anno_file}: " + "\n".join(parts) +
                               f"\nEvery problem of the file: python -m datasets.check --dataset_name {self.name} "
                               f"--root_dir {self.root_dir} --anno_path {self.anno_file}")

    def _check_images(self, records: list[_Record]) -> None:
        missing = [r.img_path for r in records if not os.path.isfile(r.img_path)]
        if not missing:
            return
        first = "\n  ".join(missing[:5])
        raise DatasetError(
            f"{self.anno_file}: {len(missing)} of {len(records)} image files are missing, first ones:\n  {first}\n"
            f"Images are looked up as {os.path.join(self.dataset_root, self.image_dir, '<' + self.path_key + '>')}; "
            f"check --root_dir and that the images were extracted there (or pass check_images=False to skip).")

    # ---- reporting --------------------------------------------------------------------
    def summary(self) -> str:
        from prettytable import PrettyTable  # lazy: only the trainer prints this

        table = PrettyTable(["subset", "ids", "images", "captions"])
        table.add_row(["train", self.num_train_pids, self.num_train_images, len(self.train)])
        for name, split in (("val", self.val), ("test", self.test)):
            if split is not None:
                table.add_row([name, split.num_ids, len(split.img_paths), len(split.captions)])
        return f"{self.name} ({self.anno_file})\n{table}"


def _check_diversity(diversity: Any, num_captions: int, where: str) -> None:
    if not isinstance(diversity, list) or len(diversity) != num_captions:
        got = len(diversity) if isinstance(diversity, list) else type(diversity).__name__
        raise DatasetError(f"{where}: 'diversity_captions' must be a list aligned with 'captions' "
                           f"({num_captions} entries), got {got}. Regenerate the RDA annotations.")
    for k, entry in enumerate(diversity):
        if isinstance(entry, str):
            continue
        ok = isinstance(entry, list) and entry and all(
            isinstance(g, str) or (isinstance(g, list) and g and all(isinstance(s, str) for s in g))
            for g in entry)
        if not ok:
            raise DatasetError(f"{where}: diversity_captions[{k}] must be a string or a non-empty list of groups, "
                               f"each a non-empty list of sentences; got {entry!r:.200}.")


def _remap(values) -> dict:
    """Consecutive ids 0..n-1 in order of first appearance (files are 0- or 1-based, or sparse)."""
    mapping: dict = {}
    for v in values:
        mapping.setdefault(v, len(mapping))
    return mapping


def build_pairs(records: list[_Record]) -> list[TrainRecord]:
    """One pair per caption of these records (one split's), in file order: the training set's numbering, which
    RDE's noise files index; pids and image ids renumbered from 0 in order of first appearance."""
    pid_of = _remap(r.pid for r in records)
    image_of = _remap(r.img_path for r in records)
    out = []
    for r in records:
        for k, caption in enumerate(r.captions):
            out.append(TrainRecord(pid=pid_of[r.pid], image_id=image_of[r.img_path], img_path=r.img_path,
                                   caption=caption, diversity=r.diversity[k] if r.diversity else None))
    return out


def _build_eval(records: list[_Record]) -> EvalSplit:
    pid_of = _remap(r.pid for r in records)
    split = EvalSplit(img_paths=[], image_pids=[], captions=[], caption_pids=[],
                      raw_pids={pid: raw for raw, pid in pid_of.items()})
    for r in records:
        split.img_paths.append(r.img_path)
        split.image_pids.append(pid_of[r.pid])
        split.captions.extend(r.captions)
        split.caption_pids.extend([pid_of[r.pid]] * len(r.captions))
    return split
