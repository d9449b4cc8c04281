"""The batched RandomResizedCrop (mlic/data/policies.py) against torchvision: its boxes follow
RandomResizedCrop.get_params, its resize follows resized_crop, and its randomness comes from the passed
generator only."""

import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from mlic.data.policies import _crop_boxes, random_resized_crop

CPU = torch.device("cpu")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ramp(height, width, channels=3):
    """A smooth image: bilinear sampling reproduces it exactly, so only the edge handling can differ."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1) / height
    cols = torch.arange(width, dtype=torch.float32).view(1, -1) / width
    return (0.05 + 0.3 * rows + 0.6 * cols).expand(channels, height, width).contiguous()


def _ours(n, height, width, scale, ratio, seed=0):
    top, left, h, w = _crop_boxes(n, height, width, _gen(seed), CPU, scale, ratio)
    return torch.stack([top, left, h, w], 1)


def _torchvision(n, height, width, scale, ratio, seed=0):
    """n draws of torchvision's get_params; it draws from the global RNG, which is restored afterwards."""
    img = torch.zeros(1, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        boxes = [RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]
    return torch.tensor(boxes, dtype=torch.float32)


def _summary(boxes, height, width):
    top, left, h, w = boxes.unbind(1)
    return {"area_share": (h * w / (height * width)).mean().item(), "log_aspect": (w / h).log().mean().item(),
            "centre_y": ((top + h / 2) / height).mean().item(), "centre_x": ((left + w / 2) / width).mean().item()}


def test_the_same_seed_repeats_a_new_seed_changes_and_the_global_rng_is_untouched():
    x = torch.rand(4, 3, 40, 50, generator=_gen(9))
    before = torch.get_rng_state()
    first, again = random_resized_crop(x, _gen(1), 24), random_resized_crop(x, _gen(1), 24)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, again)
    assert not torch.allclose(first, random_resized_crop(x, _gen(2), 24))


def test_the_global_rng_seed_does_not_change_the_output():
    x = torch.rand(4, 3, 40, 50, generator=_gen(9))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first = random_resized_crop(x, _gen(1), 24)
        torch.manual_seed(12345)
        second = random_resized_crop(x, _gen(1), 24)
    assert torch.equal(first, second)


def test_boxes_lie_in_the_image_and_in_scale_and_ratio_up_to_rounding():
    height, width, scale, ratio = 200, 300, (0.08, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = _ours(20_000, height, width, scale, ratio).unbind(1)
    for value in (top, left, h, w):
        assert torch.equal(value, value.round())
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # w and h are rounded: the drawn area and aspect lie within half a pixel of each side
    area = height * width
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * area).all() and ((w - 0.5) * (h - 0.5) <= scale[1] * area).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all() and ((w - 0.5) / (h + 0.5) <= ratio[1]).all()


@pytest.mark.parametrize(("height", "width", "scale", "ratio"), [
    (200, 300, (0.08, 1.0), (3 / 4, 4 / 3)),
    (300, 200, (0.3, 0.9), (1 / 2, 3 / 2)),
])
def test_boxes_follow_torchvisions_distribution(height, width, scale, ratio):
    """Means over 20,000 boxes: their standard errors are a few thousandths, the tolerance is about four."""
    ours = _summary(_ours(20_000, height, width, scale, ratio), height, width)
    theirs = _summary(_torchvision(20_000, height, width, scale, ratio), height, width)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=0.012), key


@pytest.mark.parametrize(("scale", "expected"), [((0.5, 1.0), 1.0), ((0.08, 1.0), None)])
def test_the_fallback_is_torchvisions_central_crop_as_often_as_torchvision(scale, expected):
    """ratio (10, 12) on a square image: with scale from 0.5 no try fits, from 0.08 a few do. The fallback
    is the full-width central strip of height side / 10."""
    side, ratio, n = 64, (10.0, 12.0), 4_000
    fallback = torch.tensor([(side - round(side / 10)) // 2, 0, round(side / 10), side], dtype=torch.float32)
    ours = (_ours(n, side, side, scale, ratio) == fallback).all(1).float().mean().item()
    theirs = (_torchvision(n, side, side, scale, ratio) == fallback).all(1).float().mean().item()
    assert ours == pytest.approx(theirs, abs=0.03)
    if expected is not None:
        assert ours == expected
    else:
        assert 0.05 < ours < 0.95  # a case that tells "first fit" from "always fall back"


def test_the_fallback_is_the_whole_image_when_its_own_ratio_is_in_ratio():
    boxes = _ours(100, 50, 60, scale=(2.0, 3.0), ratio=(3 / 4, 4 / 3))  # no area this large fits
    assert torch.equal(boxes, torch.tensor([0.0, 0.0, 50.0, 60.0]).expand(100, 4))


def test_a_whole_image_box_at_the_image_size_returns_the_image():
    x = torch.rand(3, 3, 32, 32, generator=_gen(4))
    out = random_resized_crop(x, _gen(0), 32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (out - x).abs().max() < 1e-5


@pytest.mark.parametrize("size", [16, 40, 120])
def test_a_ramp_matches_torchvisions_resized_crop(size):
    """The same boxes through torchvision's resized_crop (bilinear, antialias). On a ramp both are exact
    inside the crop; they differ only at its edges, where resized_crop repeats the crop's edge pixels
    (and renormalises its antialias filter) while roi_align reads the pixels just outside the crop.
    Tolerance 0.01 max abs."""
    height, width, n = 60, 90, 32
    image = _ramp(height, width)
    out = random_resized_crop(image.expand(n, -1, -1, -1).contiguous(), _gen(3), size)
    boxes = _ours(n, height, width, (0.08, 1.0), (3 / 4, 4 / 3), seed=3).long().tolist()
    ref = torch.stack([TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
                       for top, left, h, w in boxes])
    assert (out - ref).abs().max() < 0.01


@pytest.mark.parametrize(("n", "height", "width", "dtype"), [
    (1, 32, 32, torch.float32), (5, 24, 70, torch.float32), (3, 81, 17, torch.float64), (2, 30, 40, torch.float16),
    (2, 30, 40, torch.bfloat16),
])
def test_shape_dtype_device_and_range_are_kept(n, height, width, dtype):
    x = torch.rand(n, 3, height, width, generator=_gen(5)).to(dtype)
    out = random_resized_crop(x, _gen(6), 28)
    assert out.shape == (n, 3, 28, 28) and out.dtype == dtype and out.device == x.device
    assert (out >= 0).all() and (out <= 1).all()


def test_bicubic_samples_like_bilinear_and_other_modes_are_refused():
    x = torch.rand(2, 3, 20, 20, generator=_gen(7))
    assert torch.equal(random_resized_crop(x, _gen(1), 12, interpolation="bicubic"),
                       random_resized_crop(x, _gen(1), 12))
    with pytest.raises(ValueError, match="nearest"):
        random_resized_crop(x, _gen(1), 12, interpolation="nearest")


@pytest.mark.gpu
def test_on_cuda_without_a_host_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.rand(8, 3, 64, 48, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = random_resized_crop(x, generator, 32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    again = random_resized_crop(x, torch.Generator(device="cuda").manual_seed(0), 32)
    assert out.device == x.device and out.shape == (8, 3, 32, 32) and torch.equal(out, again)
    assert math.isfinite(out.sum().item())
