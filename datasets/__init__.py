"""Person re-id datasets (docs/METHOD.md §1).

Kept light on purpose: this package is named `datasets`, which shadows Hugging Face's
library when the repo root is on sys.path, so nothing heavy is imported here.
Torch-dependent pieces live in `datasets.loaders`, `datasets.transforms`, `datasets.text_aug`.
"""
from typing import Optional

from .bases import DatasetError, EvalSplit, PersonDataset, TrainRecord
from .cuhkpedes import CUHKPEDES
from .icfgpedes import ICFGPEDES
from .rstpreid import RSTPReid
from .synthetic_pedes import SynthPedes
from .ufine import UFine6926

DATASETS: dict[str, type[PersonDataset]] = {
    cls.name: cls for cls in (CUHKPEDES, ICFGPEDES, RSTPReid, UFine6926, SynthPedes)
}


def build_dataset(name: str, root_dir: str, anno_path: Optional[str] = None,
                  check_images: bool = True) -> PersonDataset:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name](root_dir, anno_path=anno_path, check_images=check_images)


__all__ = ["DATASETS", "build_dataset", "DatasetError", "EvalSplit", "PersonDataset", "TrainRecord",
           "CUHKPEDES", "ICFGPEDES", "RSTPReid", "UFine6926", "SynthPedes"]
