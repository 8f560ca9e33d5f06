"""Image transforms (METHOD.md section 1), the published IRRA/RDE pipeline, split between the CPU and the device.

The published order is resize, flip, pad + crop, to tensor, normalise, random erasing with value = mean, so an
erased pixel reads (0.481, 0.458, 0.408) in *normalised* units.  Here the CPU does everything up to the uint8
tensor and draws the erasing rectangle with the same random calls as torchvision's RandomErasing; the device
normalises (model.clip.VisionTransformer.normalize, with utils.constants) and then fills the rectangle (`erase`), so the pixels equal
the published pipeline's while a batch crosses to the GPU as uint8, a quarter of the bytes.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torchvision.transforms as T

from utils.constants import PIXEL_MEAN

ERASE_P, ERASE_SCALE, ERASE_RATIO = 0.5, (0.02, 0.4), (0.3, 3.3)   # torchvision's RandomErasing defaults
NO_BOX = (0, 0, 0, 0)


def _hw(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


class EraseBox:
    """Draws RandomErasing's rectangle on a [3, H, W] tensor without erasing: returns (top, left, height, width),
    all 0 when this image is not erased.  The random calls are torchvision's, in its order."""

    def __call__(self, image: torch.Tensor) -> tuple[int, int, int, int]:
        if torch.rand(1) >= ERASE_P:
            return NO_BOX
        top, left, h, w, v = T.RandomErasing.get_params(image, scale=ERASE_SCALE, ratio=ERASE_RATIO,
                                                        value=list(PIXEL_MEAN))
        return NO_BOX if v is image else (top, left, h, w)   # no rectangle fitted in 10 tries: no erasing


class TrainTransform:
    """PIL image -> (uint8 tensor [3, H, W], erasing rectangle (top, left, height, width); all 0 for none)."""

    def __init__(self, size: tuple[int, int], img_aug: bool):
        steps = [T.Resize(size)]                     # torchvision's default interpolation, bilinear, as published
        if img_aug:
            steps += [T.RandomHorizontalFlip(0.5), T.Pad(10), T.RandomCrop(size)]
        self.geometric = T.Compose(steps + [T.PILToTensor()])
        self.draw_box = EraseBox() if img_aug else None

    def __call__(self, img):
        image = self.geometric(img)
        return image, (self.draw_box(image) if self.draw_box else NO_BOX)


def build_transforms(image_size=(384, 128), is_train: bool = False, img_aug: bool = True):
    """Test: PIL image -> uint8 tensor [3, H, W].  Train: a TrainTransform (image and erasing rectangle);
    image_size is (H, W)."""
    size = _hw(image_size)
    if is_train:
        return TrainTransform(size, img_aug)
    return T.Compose([T.Resize(size), T.PILToTensor()])


def erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Fill each normalised image's rectangle with the mean, as the published RandomErasing(value=mean) does
    after the normalisation.  images [B, 3, H, W] float, boxes [B, 4] (top, left, height, width)."""
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    top, left, height, width = (boxes.to(images.device).view(-1, 4, 1, 1).unbind(1))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)     # [B, H, W]
    fill = torch.tensor(PIXEL_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(inside.unsqueeze(1), fill, images)


def training_view(batch: dict, view: int, normalize) -> torch.Tensor:
    """View `view` of a training batch's images as the model takes them, on the batch's device: uint8 straight
    from the loader, or normalised (`normalize`, the model's) and then randomly erased, the published order.
    A batch made without the training transform (the benchmarks) has no "erase" and is passed on as it is."""
    images = batch["images"][:, view]
    if "erase" not in batch:
        return images
    return erase(normalize(images), batch["erase"][:, view])
