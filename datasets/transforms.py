"""Image transforms (METHOD.md section 1), the *(ref)* IRRA/RDE pipeline."""
from __future__ import annotations

from typing import Sequence, Union

import torchvision.transforms as T

# CLIP's pixel statistics: the image encoder was pre-trained on inputs normalised with these.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _hw(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def build_transforms(image_size=(384, 128), is_train: bool = False, img_aug: bool = True) -> T.Compose:
    """PIL image -> normalised FloatTensor [3, H, W]; image_size is (H, W)."""
    size = _hw(image_size)
    resize = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)
    normalize = T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)
    if not (is_train and img_aug):
        return T.Compose([resize, T.ToTensor(), normalize])
    return T.Compose([
        resize,
        T.RandomHorizontalFlip(0.5),
        T.Pad(10),
        T.RandomCrop(size),
        T.ToTensor(),
        normalize,
        # Erased pixels get the mean, i.e. zero after normalisation: a neutral value, not black.
        T.RandomErasing(p=0.5, scale=(0.02, 0.4), value=CLIP_MEAN),
    ])
