"""CUHK-PEDES: `id` 1-based, `file_path` under imgs/, usually 2 captions, train/val/test."""
from .bases import PersonDataset

# Set to the annotation JSON (absolute, or relative to <root_dir>/CUHK-PEDES) to skip the name
# search below; --anno_path on the command line still wins over this.
ANNO_PATH = None


class CUHKPEDES(PersonDataset):
    name = "CUHK-PEDES"
    dataset_dir = "CUHK-PEDES"
    # The official file is reid_raw.json; many copies circulate as caption_all.json.
    anno_names = ("reid_raw.json", "caption_all.json")
    image_dir = "imgs"
    path_key = "file_path"
    splits = ("train", "val", "test")
    id_base = 1
