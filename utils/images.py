"""Reading an image file, with the error that names it: the same failure in training, evaluation, THI and RDA."""
from __future__ import annotations

import os
import stat

from PIL import Image

# A folder of one's own (retrieve.py --images, app.py --gallery) may hold anything; what a person crop cannot be is
# skipped before it is decoded (the header gives the size).  Dataset images are read without these limits.
MAX_PIXELS = 50_000_000   # 150 MB as RGB in each loader worker; a person crop is a few hundred thousand at most
MAX_ASPECT = 20           # longer side over shorter side; person crops are about 1:3, a resize beyond this is a smear


class ImageDecodeError(RuntimeError):
    """An image file that PIL cannot read; the message names the path (also through DataLoader workers), `reason`
    says why without it."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def why_no_bytes(path: str) -> str | None:
    """Why `path` has no bytes to decode (a dangling symlink, missing, not a file, empty), or None."""
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            return f"dangling symlink to {os.readlink(path)}"
        return f"cannot open: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):    # a named pipe would block the reader for ever
        return "not a regular file"
    return "empty file, 0 bytes" if st.st_size == 0 else None


def read_image(path: str, limits: bool = False) -> Image.Image:
    """The image as RGB; ImageDecodeError naming the file and why otherwise.  limits: refuse, before decoding, an
    image over MAX_PIXELS or with an aspect ratio over MAX_ASPECT (a gallery folder's rule)."""
    reason = why_no_bytes(path)
    if reason is None:
        try:
            with Image.open(path) as img:
                w, h = img.size
                if limits and w * h > MAX_PIXELS:
                    reason = f"too large: {w}x{h} is {w * h / 1e6:.0f} megapixels, over {MAX_PIXELS / 1e6:.0f}"
                elif limits and max(w, h) > MAX_ASPECT * min(w, h):
                    reason = (f"too odd: {w}x{h} is {max(w, h) / max(1, min(w, h)):.0f}:1, over the {MAX_ASPECT}:1 "
                              "a person crop may have")
                else:
                    return img.convert("RGB")
        except Image.DecompressionBombError as e:
            reason = f"too large: {e}"
        except Image.UnidentifiedImageError:
            reason = "not an image PIL can read"
        except OSError as e:
            reason = f"cannot open: {e.strerror}" if e.strerror else f"damaged: {e}"
        except Exception as e:  # noqa: BLE001 - PIL raises ValueError, SyntaxError... depending on the damage
            reason = f"damaged: {type(e).__name__}: {e}"
    raise ImageDecodeError(f"cannot decode image {path}: {reason}", reason)
