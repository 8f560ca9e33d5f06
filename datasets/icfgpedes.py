"""ICFG-PEDES: `id` 0-based, `file_path` under imgs/, 1 caption, train/test (no val)."""
from .bases import PersonDataset

# Set to the annotation JSON (absolute, or relative to <root_dir>/ICFG-PEDES) to skip the name
# search below; --anno_path on the command line still wins over this.
ANNO_PATH = None


class ICFGPEDES(PersonDataset):
    name = "ICFG-PEDES"
    dataset_dir = "ICFG-PEDES"
    anno_names = ("ICFG-PEDES.json", "ICFG_PEDES.json")  # both spellings circulate
    image_dir = "imgs"
    path_key = "file_path"
    splits = ("train", "test")
    id_base = 0
