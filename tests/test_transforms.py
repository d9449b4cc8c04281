import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from mlic.config import AugmentConfig
from mlic.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    per_image_transform,
)


def _batch(n=4, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


@pytest.mark.parametrize("size", [16, 64])
def test_batched_path_equals_torchvision_per_image_path(size):
    """No randomness (flips forced off, no jitter): resize + normalise agree with transforms v2, up to the
    per-image path's uint8 resize (fixed-point, rounded: at most one grey level, half of one on average)."""
    images = _batch()
    ours = DeviceTransform(size, IMAGENET_MEAN, IMAGENET_STD)(images)
    ref = per_image_transform(size, IMAGENET_MEAN, IMAGENET_STD)
    theirs = torch.stack([ref(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images])
    grey_level = 1 / 255 / min(IMAGENET_STD)
    assert torch.allclose(ours, theirs, atol=grey_level + 1e-4)
    assert (ours - theirs).abs().mean() < grey_level / 2


def test_forced_flips_match_torchvision():
    images = _batch()
    aug = AugmentConfig(hflip=1.0, vflip=1.0, brightness=0, contrast=0, saturation=0, hue=0)
    ours = DeviceTransform(32, (0, 0, 0), (1, 1, 1), aug)(images)
    theirs = TF.vertical_flip(TF.horizontal_flip(images)).float() / 255
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(
    ("ours", "theirs", "factor"),
    [(adjust_brightness, TF.adjust_brightness, 1.3), (adjust_contrast, TF.adjust_contrast, 0.6),
     (adjust_saturation, TF.adjust_saturation, 1.4), (adjust_hue, TF.adjust_hue, -0.08)],
)
def test_color_jitter_ops_match_torchvision(ours, theirs, factor):
    x = _batch().float() / 255
    got = ours(x.clone(), torch.full((4,), factor))
    want = torch.stack([theirs(img, factor) for img in x])
    assert torch.allclose(got, want, atol=1e-5)


def test_augmentation_depends_only_on_the_generator():
    images = _batch(8)
    t = DeviceTransform(32, IMAGENET_MEAN, IMAGENET_STD, AugmentConfig())
    a = t(images, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG does not matter
    b = t(images, torch.Generator().manual_seed(5))
    c = t(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
