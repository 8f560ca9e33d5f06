"""Image transforms (docs/METHOD.md §1.6), the published IRRA/RDE pipeline, split between the CPU and the device.

The published order is resize, flip, pad + crop, to tensor, normalise, random erasing with value = mean, so an
erased pixel reads (0.481, 0.458, 0.408) in *normalised* units.  Here the resize is done once per dataset
(datasets.image_cache); for each sample and view the CPU only *draws* the flip, the crop offsets and the erasing
rectangle (`ViewDraws`: torchvision's own random calls, in the published order); the batch crosses to the device
as uint8 with those parameters and `training_view` flips, pads + crops (one gather), normalises
(model.clip.VisionTransformer.normalize, with utils.constants) and fills the rectangle (`erase`) there, as
tensor ops on the whole batch.  The pixels equal the published pipeline's (tests/test_published.py).

`TrainTransform` is the same pipeline on one PIL image, on the CPU (image and rectangle): the reference the
device path is tested against.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torchvision.transforms as T

from utils.constants import PIXEL_MEAN

ERASE_P, ERASE_SCALE, ERASE_RATIO = 0.5, (0.02, 0.4), (0.3, 3.3)   # torchvision's RandomErasing defaults
FLIP_P, PAD = 0.5, 10                                               # RandomHorizontalFlip(0.5), Pad(10)
NO_BOX = (0, 0, 0, 0)


def image_size_hw(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
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


class ViewDraws:
    """One view's random parameters, drawn from torch's global generator exactly as the published transforms
    draw them on an image of `size` (H, W): RandomHorizontalFlip(0.5), then RandomCrop(size) of the image padded
    by PAD, then RandomErasing(p 0.5, scale, ratio) on the [3, H, W] crop.  Returns (flip, (top, left) of the
    crop in the padded image, (top, left, height, width) of the erased rectangle or NO_BOX).

    No pixel is touched, so a draw costs a few random numbers.  The torch calls are torchvision's own, in its
    order and with its arguments (RandomHorizontalFlip.forward, RandomCrop.get_params, RandomErasing.forward and
    get_params, torchvision 0.2x), written out here without their per-call overhead (shape checks, API-usage
    logging, re-made constant tensors): half the CPU time of a twin pair.  tests/test_published.py checks the
    pixels against torchvision's transforms for the same seeds, so a torchvision that draws differently fails
    there."""

    def __init__(self, size: tuple[int, int]):
        self.size = image_size_hw(size)
        h, w = self.size
        self.area = h * w
        log_ratio = torch.log(torch.tensor(ERASE_RATIO))                 # as get_params computes it, float32
        self.log_ratio = (log_ratio[0], log_ratio[1])
        self.uniform = torch.empty(1)                                    # get_params' torch.empty(1), kept

    def __call__(self) -> tuple[bool, tuple[int, int], tuple[int, int, int, int]]:
        h, w = self.size
        # float32 draws compared with 0.5 (exact in float32): as the tensor comparisons of torchvision
        flip = torch.rand(1).item() < FLIP_P                                           # RandomHorizontalFlip
        top = torch.randint(0, 2 * PAD + 1, size=(1,)).item()                          # RandomCrop.get_params
        left = torch.randint(0, 2 * PAD + 1, size=(1,)).item()
        if torch.rand(1).item() >= ERASE_P:                                            # RandomErasing.forward
            return flip, (top, left), NO_BOX
        uniform = self.uniform
        for _ in range(10):                                                            # RandomErasing.get_params
            erase_area = self.area * uniform.uniform_(ERASE_SCALE[0], ERASE_SCALE[1]).item()
            aspect_ratio = torch.exp(uniform.uniform_(self.log_ratio[0], self.log_ratio[1])).item()
            eh = int(round(math.sqrt(erase_area * aspect_ratio)))
            ew = int(round(math.sqrt(erase_area / aspect_ratio)))
            if not (eh < h and ew < w):
                continue
            i = torch.randint(0, h - eh + 1, size=(1,)).item()
            j = torch.randint(0, w - ew + 1, size=(1,)).item()
            return flip, (top, left), (i, j, eh, ew)
        return flip, (top, left), NO_BOX                  # no rectangle fitted in 10 tries: not erased


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
    size = image_size_hw(image_size)
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


def flip_pad_crop(images: torch.Tensor, flip: torch.Tensor, crop: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Each image flipped (where `flip`), zero-padded by `pad` and cropped back to its size at `crop`'s (top, left)
    in the padded image: RandomHorizontalFlip + Pad(pad) + RandomCrop on a batch, as one gather on its device.
    images [B, C, H, W] (any dtype), flip bool [B], crop int [B, 2]."""
    b, c, h, w = images.shape
    device = images.device
    crop = crop.to(device=device, dtype=torch.long)
    rows = crop[:, :1] - pad + torch.arange(h, device=device)                    # [B, H] rows of the image
    cols = crop[:, 1:] - pad + torch.arange(w, device=device)                    # [B, W] columns of the flipped image
    inside = (((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1))   # [B, H, W]
    cols = torch.where(flip.to(device).view(b, 1), w - 1 - cols, cols)           # the flipped image's column c
    index = rows.clamp(0, h - 1).unsqueeze(2) * w + cols.clamp(0, w - 1).unsqueeze(1)               # [B, H, W]
    out = images.reshape(b, c, h * w).gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    return out * inside.unsqueeze(1).to(out.dtype)


def training_view(batch: dict, view: int, normalize) -> torch.Tensor:
    """View `view` of a training batch's images as the model takes them, on the batch's device: the pair's
    uint8 image flipped, padded + cropped (flip_pad_crop), normalised (`normalize`, the model's) and randomly
    erased, the published order, with the view's parameters drawn by the loader (TrainPairs).

    A batch of ready views ("images" [B, V, 3, H, W], the benchmarks' and older tests') is passed on as it is,
    erased after the normalisation when it has "erase"."""
    if "image" in batch:
        images = flip_pad_crop(batch["image"], batch["flip"][:, view], batch["crop"][:, view])
        return erase(normalize(images), batch["erase"][:, view])
    images = batch["images"][:, view]
    if "erase" not in batch:
        return images
    return erase(normalize(images), batch["erase"][:, view])
