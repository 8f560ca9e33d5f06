"""Reading an image file, with the error that names it: the same failure in training, evaluation, THI and RDA."""
from __future__ import annotations

from PIL import Image


class ImageDecodeError(RuntimeError):
    """An image file that PIL cannot read; the message names the path (also through DataLoader workers)."""


def read_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... depending on the damage
        raise ImageDecodeError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
