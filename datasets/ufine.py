"""UFine6926: `id` 1-based, `file_path` relative to the dataset folder itself, train/test.

Its captions are long: use text_length 168 (docs/METHOD.md §1.5).
"""
from .bases import PersonDataset

# Set to the annotation JSON (absolute, or relative to <root_dir>/UFine6926) to skip the name
# search below; --anno_path on the command line still wins over this.
ANNO_PATH = None


class UFine6926(PersonDataset):
    name = "UFine6926"
    dataset_dir = "UFine6926"
    anno_names = ("UFine6926_Annotations_1024.json",)
    image_dir = ""  # images sit directly in the dataset folder
    path_key = "file_path"
    splits = ("train", "test")
    id_base = 1
