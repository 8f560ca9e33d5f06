"""RSTPReid: `id` 0-based, `img_path` (not file_path) under imgs/, 2 captions, train/val/test."""
from .bases import PersonDataset

# Set to the annotation JSON (absolute, or relative to <root_dir>/RSTPReid) to skip the name
# search below; --anno_path on the command line still wins over this.
ANNO_PATH = None


class RSTPReid(PersonDataset):
    name = "RSTPReid"
    dataset_dir = "RSTPReid"
    anno_names = ("data_captions.json",)
    image_dir = "imgs"
    path_key = "img_path"
    splits = ("train", "val", "test")
    id_base = 0
