"""SYNTH-PEDES: the synthetic set of `synthetic.py` in CUHK-PEDES format, generated on first use.

Lets the demo and smoke tests run with `--dataset SYNTH-PEDES` and nothing downloaded.
"""
import logging
import os
from typing import Optional

from .cuhkpedes import CUHKPEDES
from .synthetic import make_synthetic

logger = logging.getLogger(__name__)

# Set to the annotation JSON (absolute, or relative to <root_dir>/SYNTH-PEDES) to skip the name
# search below; --anno_path on the command line still wins over this.
ANNO_PATH = None


class SynthPedes(CUHKPEDES):
    name = "SYNTH-PEDES"
    dataset_dir = "SYNTH-PEDES"
    anno_names = ("reid_raw.json",)

    def __init__(self, root_dir: str, anno_path: Optional[str] = None, check_images: bool = True):
        explicit = anno_path or self.module_anno_path()
        folder = os.path.join(os.path.abspath(os.path.expanduser(root_dir)), self.dataset_dir)
        if not explicit and not any(os.path.isfile(os.path.join(folder, n)) for n in self.anno_names):
            logger.warning("SYNTH-PEDES: no annotation file in %s, generating the synthetic dataset there", folder)
            make_synthetic(root_dir, fmt=CUHKPEDES.name, dataset_dir=self.dataset_dir)
        super().__init__(root_dir, anno_path=anno_path, check_images=check_images)
