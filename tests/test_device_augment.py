"""Augmentation on the device (issue 14, item 2): the loader draws each view's flip, crop and erasing rectangle,
training_view applies them to the whole batch as tensor ops.  Checked against torchvision's transforms applied to
images: exactly for given parameters, and in distribution over many draws (flip rate, crop offsets, how often and
how much is erased, the rectangles' aspect ratios)."""
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from datasets.bases import TrainRecord
from datasets.loaders import TrainPairs
from datasets.transforms import PAD, flip_pad_crop, training_view
from utils.constants import PIXEL_MEAN, PIXEL_STD

H, W = 64, 32
N = 2000                      # draws per pipeline


def normalize(images):
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def test_flip_pad_crop_equals_torchvisions_functional_ops():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, H, W), generator=g, dtype=torch.uint8)
    flip = torch.rand(50, generator=g) < 0.5
    crop = torch.randint(0, 2 * PAD + 1, (50, 2), generator=g)
    crop[0], crop[1] = torch.tensor([0, 0]), torch.tensor([2 * PAD, 2 * PAD])    # the extreme offsets
    got = flip_pad_crop(images, flip, crop)
    for k in range(50):
        x = TF.hflip(images[k]) if flip[k] else images[k]
        expect = TF.crop(TF.pad(x, PAD), int(crop[k, 0]), int(crop[k, 1]), H, W)
        assert torch.equal(got[k], expect), k
    # floats and a batch of one go through the same gather
    torch.testing.assert_close(flip_pad_crop(images[:1].float(), flip[:1], crop[:1]), got[:1].float())


def coordinate_image() -> np.ndarray:
    """[H, W, 3] uint8 whose pixel (y, x) holds (y, x, 200): where an output pixel came from can be read back."""
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    return np.stack([y, x, np.full_like(y, 200)], axis=-1).astype(np.uint8)


def read_back(views: torch.Tensor) -> dict:
    """From normalised, erased views of coordinate_image: flip, crop offsets (top, left in the padded image),
    and the erased rectangle's area fraction and aspect (height / width), None when not erased."""
    fill = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std, mean = torch.tensor(PIXEL_STD).view(3, 1, 1), torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    out = {"flip": [], "top": [], "left": [], "area": [], "aspect": []}
    for v in views:
        erased = (v == fill).all(0)                                         # [H, W]
        pixels = torch.round((v * std + mean) * 255).long()
        source = (pixels[2] == 200) & ~erased                               # neither padding nor erased
        ys, xs = torch.nonzero(source, as_tuple=True)
        sy, sx = pixels[0][ys, xs], pixels[1][ys, xs]
        row = ys == torch.bincount(ys).argmax()                            # the row with the most: x order
        flipped = bool(sx[row][-1] < sx[row][0])
        out["flip"].append(flipped)
        out["top"].append(int(sy[0] - ys[0]) + PAD)
        out["left"].append(int((W - 1 - sx[0] if flipped else sx[0]) - xs[0]) + PAD)
        if erased.any():
            rows, cols = torch.nonzero(erased.any(1)), torch.nonzero(erased.any(0))
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert int(erased.sum()) == h * w                               # one rectangle
            out["area"].append(h * w / (H * W))
            out["aspect"].append(h / w)
    return {k: np.array(v) for k, v in out.items()}


def ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.union1d(a, b)
    return float(np.abs(np.searchsorted(np.sort(a), grid, side="right") / len(a)
                        - np.searchsorted(np.sort(b), grid, side="right") / len(b)).max())


def histogram(values: np.ndarray) -> np.ndarray:
    return np.bincount(values, minlength=2 * PAD + 1) / len(values)


@pytest.fixture(scope="module")
def draws(tmp_path_factory):
    """(ours, torchvision's): read_back of N views each; ours through the loader and training_view."""
    folder = tmp_path_factory.mktemp("augment")
    path = str(folder / "coords.png")
    Image.fromarray(coordinate_image()).save(path)
    records = [TrainRecord(pid=0, image_id=0, img_path=path, caption="a person") for _ in range(N // 2)]
    pairs = TrainPairs(records, (H, W), text_length=8, num_views=2, seed=11, cache_dir=str(folder / "cache"))
    batch = pairs.__getitems__(list(range(len(records))))
    ours = torch.cat([training_view(batch, view, normalize) for view in range(2)])

    published = T.Compose([T.RandomHorizontalFlip(0.5), T.Pad(PAD), T.RandomCrop((H, W)), T.ToTensor(),
                           T.Normalize(PIXEL_MEAN, PIXEL_STD), T.RandomErasing(scale=(0.02, 0.4), value=PIXEL_MEAN)])
    image = Image.open(path).convert("RGB")
    torch.manual_seed(12345)
    theirs = torch.stack([published(image) for _ in range(N)])
    return read_back(ours), read_back(theirs)


def test_flip_rate(draws):
    ours, theirs = draws
    assert abs(ours["flip"].mean() - 0.5) < 0.045 and abs(theirs["flip"].mean() - 0.5) < 0.045   # 4 sd
    assert abs(ours["flip"].mean() - theirs["flip"].mean()) < 0.06


def test_crop_offsets(draws):
    ours, theirs = draws
    for key in ("top", "left"):
        assert set(ours[key]) == set(range(2 * PAD + 1))                  # every offset 0..20 occurs
        # total variation distance between the offset histograms (expected ~0.05 for two uniform samples of N)
        assert 0.5 * np.abs(histogram(ours[key]) - histogram(theirs[key])).sum() < 0.12, key
        assert 0.5 * np.abs(histogram(ours[key]) - 1 / (2 * PAD + 1)).sum() < 0.09, key
    # top and left are drawn independently
    assert abs(np.corrcoef(ours["top"], ours["left"])[0, 1]) < 0.1


def test_random_erasing(draws):
    ours, theirs = draws
    erased_ours, erased_theirs = len(ours["area"]) / N, len(theirs["area"]) / N
    # p 0.5, times the chance that one of 10 tries fits the image
    assert 0.42 < erased_ours < 0.56 and abs(erased_ours - erased_theirs) < 0.05
    assert ours["area"].min() >= 0.015 and ours["area"].max() <= 0.42          # scale 0.02-0.4, rounded sides
    assert abs(ours["area"].mean() - theirs["area"].mean()) < 0.02
    assert ks(ours["area"], theirs["area"]) < 0.1
    log_aspect = np.log(ours["aspect"])
    assert log_aspect.min() > np.log(0.3) - 0.35 and log_aspect.max() < np.log(3.3) + 0.35
    assert ks(log_aspect, np.log(theirs["aspect"])) < 0.1


def test_twin_views_draw_independently(draws):
    ours, _ = draws
    first, second = slice(0, N // 2), slice(N // 2, N)        # view 0 and view 1 of the same samples
    assert np.mean(ours["flip"][first] == ours["flip"][second]) < 0.6
    assert np.mean(ours["top"][first] == ours["top"][second]) < 0.15
    assert abs(np.corrcoef(ours["left"][first], ours["left"][second])[0, 1]) < 0.1


def test_training_view_runs_on_the_batch_device():
    """Every step is a tensor op on the batch's device (here the CPU; the GPU path is the same code)."""
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randint(0, 256, (4, 3, H, W), generator=g, dtype=torch.uint8),
             "flip": torch.tensor([[True, False]] * 4), "crop": torch.full((4, 2, 2), PAD, dtype=torch.int32),
             "erase": torch.zeros(4, 2, 4, dtype=torch.int32)}
    view0, view1 = (training_view(batch, v, normalize) for v in range(2))
    torch.testing.assert_close(view1, normalize(batch["image"]))                   # no flip, no shift, no erasing
    torch.testing.assert_close(view0, normalize(batch["image"].flip(-1)))          # flipped only
