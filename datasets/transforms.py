"""Image transforms (METHOD.md section 1), the *(ref)* IRRA/RDE pipeline, ending in uint8 tensors.

Normalisation with CLIP's statistics happens in the model, on the device (model.clip.VisionTransformer): the
CPU then only decodes and crops, and a batch crosses to the GPU in a quarter of the bytes.
"""
from __future__ import annotations

from typing import Sequence, Union

import torchvision.transforms as T

from model.clip import PIXEL_MEAN

# Erased pixels get the mean, i.e. (within 1/255) zero after normalisation: a neutral value, not black.
ERASE_VALUE = tuple(round(255 * m) for m in PIXEL_MEAN)


def _hw(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def build_transforms(image_size=(384, 128), is_train: bool = False, img_aug: bool = True) -> T.Compose:
    """PIL image -> uint8 tensor [3, H, W]; image_size is (H, W)."""
    size = _hw(image_size)
    resize = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)
    if not (is_train and img_aug):
        return T.Compose([resize, T.PILToTensor()])
    return T.Compose([
        resize,
        T.RandomHorizontalFlip(0.5),
        T.Pad(10),
        T.RandomCrop(size),
        T.PILToTensor(),
        T.RandomErasing(p=0.5, scale=(0.02, 0.4), value=ERASE_VALUE),
    ])
