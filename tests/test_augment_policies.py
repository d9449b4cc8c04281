"""The batched policies (mlic/data/policies.py) against torchvision, and their randomness: per image,
from the passed generator only, the same for the same seed."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mlic.config import AugmentConfig, load_config
from mlic.data.policies import (
    NUM_BINS,
    OPS,
    apply_ops,
    magnitude_table,
    mix_batch,
    rand_augment,
    random_erasing,
    trivial_augment_wide,
)
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DeviceTransform, per_image_transform
from mlic.errors import ConfigError

GEOMETRIC = {"Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def _uint8(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _torchvision_op(name, img, mag):
    """What torchvision's RandAugment / TrivialAugmentWide do for op `name` at magnitude `mag`, through the
    public functional API (the same calls as their _apply_image_or_video_transform)."""
    calls = {
        "Identity": lambda: img,
        "ShearX": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                                    shear=[math.degrees(math.atan(mag)), 0.0], center=[0, 0]),
        "ShearY": lambda: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                                    shear=[0.0, math.degrees(math.atan(mag))], center=[0, 0]),
        "TranslateX": lambda: TF.affine(img, angle=0.0, translate=[int(mag), 0], scale=1.0, shear=[0.0, 0.0]),
        "TranslateY": lambda: TF.affine(img, angle=0.0, translate=[0, int(mag)], scale=1.0, shear=[0.0, 0.0]),
        "Rotate": lambda: TF.rotate(img, angle=mag),
        "Brightness": lambda: TF.adjust_brightness(img, 1 + mag),
        "Color": lambda: TF.adjust_saturation(img, 1 + mag),
        "Contrast": lambda: TF.adjust_contrast(img, 1 + mag),
        "Sharpness": lambda: TF.adjust_sharpness(img, 1 + mag),
        # on the uint8 image the per-image path sees (torchvision's float posterize is another op)
        "Posterize": lambda: TF.to_dtype(TF.posterize(TF.to_dtype(img, torch.uint8, scale=True), int(mag)),
                                         torch.float32, scale=True),
        "Solarize": lambda: TF.solarize(img, mag),
        "AutoContrast": lambda: TF.autocontrast(img),
        "Equalize": lambda: TF.equalize(img),
    }
    return calls[name]()


@pytest.mark.parametrize("wide", [False, True], ids=["randaugment", "trivialaugment"])
@pytest.mark.parametrize("size", [(40, 56), (33, 33)])
def test_each_op_matches_torchvision_at_every_magnitude(wide, size):
    """Every op, bin and sign, on a non-square and an odd square image. Measured: the geometric ops,
    posterize, solarize, autocontrast and equalize are identical to torchvision, borders included (the
    same sampling grid, nearest, fill 0); brightness / colour / contrast / sharpness differ by <= 2e-7
    (float rounding of the blend), so the tolerance is 1e-6."""
    x = TF.to_dtype(_uint8((3, *size)), torch.float32, scale=True)  # as posterize's uint8 round trip
    table, signed = magnitude_table(wide, *size, torch.device("cpu"))
    for i, name in enumerate(OPS):
        mags = [float(m) * s for m in table[i] for s in ((1, -1) if signed[i] else (1,))]
        ours = apply_ops(x.expand(len(mags), -1, -1, -1), torch.full((len(mags),), i), torch.tensor(mags))
        for got, mag in zip(ours, mags):
            want = _torchvision_op(name, x, mag)
            if name in GEOMETRIC or name in ("Posterize", "Solarize", "AutoContrast", "Equalize"):
                assert torch.equal(got, want), (name, mag)
            else:
                assert torch.allclose(got, want, atol=1e-6, rtol=0), (name, mag)


def test_magnitude_table_is_torchvisions():
    """Drift check (reads torchvision's private table, in this test only): the op order, signs and bins."""
    for wide, policy in ((False, v2.RandAugment), (True, v2.TrivialAugmentWide)):
        table, signed = magnitude_table(wide, 24, 40, torch.device("cpu"))
        space = policy._AUGMENTATION_SPACE
        assert tuple(space) == OPS
        for i, (fn, is_signed) in enumerate(space.values()):
            want = fn(NUM_BINS, 24, 40)
            assert bool(signed[i]) == is_signed
            assert torch.equal(table[i], torch.zeros(NUM_BINS) if want is None else want.float())


def test_masked_and_subset_paths_agree():
    """The accelerator path (every op on the whole batch, then torch.where) and the CPU path (each op on
    the images that chose it) give the same images."""
    x = _uint8((64, 3, 24, 24)).float() / 255
    before = x.clone()
    for policy in (lambda g, m: rand_augment(x, g, 3, 12, masked=m), lambda g, m: trivial_augment_wide(x, g, masked=m)):
        masked, subset = policy(_gen(1), True), policy(_gen(1), False)
        assert torch.allclose(masked, subset, atol=1e-6, rtol=0)
        assert not torch.equal(masked, x)
    assert torch.equal(x, before)  # not inplace: the caller's batch is kept


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_each_image_draws_its_own_ops(policy):
    """A batch of one image repeated comes out as many different images (flips off)."""
    aug = AugmentConfig(policy=policy, hflip=0, vflip=0)
    images = _uint8((1, 3, 32, 32)).expand(32, -1, -1, -1)
    out = DeviceTransform(32, IMAGENET_MEAN, IMAGENET_STD, aug)(images, _gen(0))
    distinct = torch.unique(out.flatten(1), dim=0)
    assert len(distinct) >= 16  # RandAugment: 14 x 14 op pairs and signs; TrivialAugment: 14 ops x 31 bins


@pytest.mark.parametrize("policy", ["report", "randaugment", "trivialaugment"])
def test_depends_only_on_the_generator(policy):
    aug = AugmentConfig(policy=policy, cutout=0.5)
    images = _uint8((8, 3, 40, 40))
    t = DeviceTransform(32, IMAGENET_MEAN, IMAGENET_STD, aug)
    state = torch.random.get_rng_state()
    a = t(images, _gen(5))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not drawn from
    torch.manual_seed(123)
    b, c = t(images, _gen(5)), t(images, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_randaugment_zero_magnitude_leaves_magnitude_ops_at_identity():
    """At bin 0 every op with a magnitude is the identity, as in torchvision (shear, translation, rotation
    0; factors 1; 8 bits; solarize above every value < 1); autocontrast and equalize still change it."""
    x = _uint8((3, 16, 16)).float() / 256  # every value < 1
    zero_bin = magnitude_table(False, 16, 16, torch.device("cpu"))[0][:, 0]
    out = apply_ops(x.expand(len(OPS), -1, -1, -1), torch.arange(len(OPS)), zero_bin)
    for name, img in zip(OPS, out):
        assert torch.equal(img, x) == (name not in ("AutoContrast", "Equalize")), name
        assert torch.equal(img, _torchvision_op(name, x, float(zero_bin[OPS.index(name)]))) or name not in GEOMETRIC


def test_randaugment_draws_ops_uniformly_and_signs_per_image():
    """One op at magnitude 30 on a flat grey: only Brightness changes its centre, to 0.5 * 1.9 or 0.5 * 0.1,
    each for 1/14 x 1/2 of the images. And at magnitude 0 only AutoContrast and Equalize change a
    random image: 2/14 of them."""
    grey = torch.full((4000, 3, 9, 9), 0.5)
    centre = rand_augment(grey, _gen(0), num_ops=1, magnitude=30)[:, 0, 4, 4]
    expected = 4000 / 28
    assert abs(int((centre - 0.95).abs().lt(1e-4).sum()) - expected) < 4 * math.sqrt(expected)
    assert abs(int((centre - 0.05).abs().lt(1e-4).sum()) - expected) < 4 * math.sqrt(expected)
    x = _uint8((2000, 3, 8, 8)).float() / 256
    changed = (rand_augment(x, _gen(1), num_ops=1, magnitude=0) != x).flatten(1).any(1).float().mean()
    assert abs(float(changed) - 2 / 14) < 0.03


def _rectangles(erased: torch.Tensor):
    """(heights, widths) of the erased rectangles (True pixels) of (N, H, W); each must be one rectangle."""
    rows, cols = erased.any(2).sum(1), erased.any(1).sum(1)
    assert torch.equal(rows * cols, erased.sum((1, 2)))  # every erased set is a full rectangle
    return rows, cols


def test_cutout_probability_area_and_aspect():
    """Random erasing: ~p of the images, one rectangle each, area share in the scale range and aspect in
    (0.3, 3.3) up to rounding the sides to pixels (1 px on ~7-26 px sides: the 15% slack), and the same
    mean area as torchvision's RandomErasing, which retries up to 10 times for a rectangle that fits."""
    n, size, scale = 3000, 48, (0.02, 0.33)
    out = random_erasing(torch.ones(n, 1, size, size), _gen(0), p=0.6, scale=scale)
    erased = out[:, 0] == 0
    hit = erased.flatten(1).any(1)
    assert abs(float(hit.float().mean()) - 0.6) < 0.03
    rows, cols = _rectangles(erased[hit])
    share = (rows * cols).float() / size**2
    assert scale[0] * 0.85 <= share.min() and share.max() <= scale[1] * 1.15
    assert share.min() < scale[0] * 1.5 and share.max() > scale[1] * 0.8  # spans the range
    aspect = rows.float() / cols
    assert aspect.min() >= 0.3 * 0.8 and aspect.max() <= 3.3 * 1.25
    torch.manual_seed(0)
    theirs = v2.RandomErasing(p=1, scale=scale, value=0)
    reference = torch.stack([theirs(torch.ones(1, size, size)) for _ in range(2000)])[:, 0] == 0
    mean_ref = reference.flatten(1).float().mean()
    assert abs(float(share.mean()) - float(mean_ref)) < 0.1 * float(mean_ref)


def test_cutout_keeps_the_image_when_no_try_fits():
    """Near-whole-image rectangles fit only with an aspect near 1: like torchvision, an image whose 10
    tries all miss is kept (not erased by a rectangle clipped to the image)."""
    n, size, scale = 2000, 48, (0.9, 1.0)
    erased = random_erasing(torch.ones(n, 1, size, size), _gen(0), p=1.0, scale=scale)[:, 0] == 0
    hit = erased.flatten(1).any(1)
    rows, cols = _rectangles(erased[hit])
    assert rows.max() < size and cols.max() < size
    torch.manual_seed(0)
    theirs = v2.RandomErasing(p=1, scale=scale, value=0)
    rate_ref = np.mean([bool((theirs(torch.ones(1, size, size)) == 0).any()) for _ in range(n)])
    assert 0.05 < rate_ref < 0.6 and abs(float(hit.float().mean()) - rate_ref) < 0.05


def test_device_transform_erases_after_normalising():
    """The erased rectangle is 0 in the normalised output (the mean colour); the rest is untouched."""
    still = {"hflip": 0, "vflip": 0, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
    images = _uint8((16, 3, 32, 32))
    plain = DeviceTransform(32, IMAGENET_MEAN, IMAGENET_STD, AugmentConfig(**still))(images, _gen(0))
    out = DeviceTransform(32, IMAGENET_MEAN, IMAGENET_STD, AugmentConfig(**still, cutout=1.0))(images, _gen(0))
    erased = (out != plain).any(1)
    _rectangles(erased)
    assert bool(erased.flatten(1).any(1).all()) and bool((out.permute(1, 0, 2, 3)[:, erased] == 0).all())


def _halves(n, shape=(1, 4, 4)):
    """Images 0 .. n/2-1 all 0, the rest all 1 (each one's partner, the flipped batch, is the other kind),
    and targets: label 0 on the first half, label 1 on the second."""
    x = torch.cat([torch.zeros(n // 2, *shape), torch.ones(n // 2, *shape)])
    target = torch.zeros(n, 2)
    target[: n // 2, 0] = 1
    target[n // 2 :, 1] = 1
    return x, target


@pytest.mark.parametrize("alpha", [0.4, 4.0])
def test_mixup_mixes_targets_with_the_pixels_weight(alpha):
    x, target = _halves(2000)
    mixed, mixed_target = mix_batch(x, target, _gen(0), mixup_alpha=alpha)
    lam = 1 - mixed[:1000].mean((1, 2, 3))  # image i = lam * 0 + (1 - lam) * 1
    assert torch.allclose(mixed[:1000], (1 - lam).view(-1, 1, 1, 1).expand(-1, 1, 4, 4), atol=1e-6)
    assert torch.allclose(mixed_target[:1000], torch.stack([lam, 1 - lam], 1), atol=1e-6)
    assert abs(float(lam.std()) - math.sqrt(1 / (4 * (2 * alpha + 1)))) < 0.02  # Beta(alpha, alpha)'s spread
    assert abs(float(lam.mean()) - 0.5) < 0.03


def test_cutmix_weights_targets_by_the_pasted_area():
    x, target = _halves(1000, (1, 16, 16))
    mixed, mixed_target = mix_batch(x, target, _gen(0), cutmix_alpha=1.0)
    pasted = mixed[:500, 0] == 1
    _rectangles(pasted)
    share = pasted.flatten(1).float().mean(1)
    assert torch.allclose(mixed_target[:500], torch.stack([1 - share, share], 1), atol=1e-6)
    assert set(mixed.unique().tolist()) <= {0.0, 1.0}
    # a box of side sqrt(1 - lambda) is clipped when its centre is near an edge (timm's rand_bbox), so the
    # pasted share is ~0.27 on average here, not E[1 - lambda] = 0.5
    assert 0.15 < float(share.mean()) < 0.45 and float(share.max()) > 0.6 and float(share.min()) == 0


def test_mixup_and_cutmix_each_image_takes_one():
    x, target = _halves(2000, (1, 16, 16))  # large enough that few CutMix boxes are empty (<~3%)
    mixed, mixed_target = mix_batch(x, target, _gen(3), mixup_alpha=1.0, cutmix_alpha=1.0)
    flat = mixed.flatten(1)
    binary = ((flat == 0) | (flat == 1)).all(1)
    constant = (flat == flat[:, :1]).all(1)
    assert bool((binary | constant).all())  # a pasted box or an even blend, never both
    cut, mix = binary & ~constant, constant & ~binary
    assert 0.44 < float(cut.float().mean()) < 0.56 and 0.44 < float(mix.float().mean()) < 0.56
    # the target follows what each image took: the partner's share of pixels either way
    partner_share = torch.where(torch.arange(2000) < 1000, flat.mean(1), 1 - flat.mean(1))
    assert torch.allclose(mixed_target.sum(1), torch.ones(2000), atol=1e-6)
    assert torch.allclose(mixed_target[:1000, 1], partner_share[:1000], atol=1e-6)


def test_mixing_is_deterministic_and_leaves_the_global_rng_alone():
    x, target = _halves(64, (3, 8, 8))
    state = torch.random.get_rng_state()
    a = mix_batch(x, target, _gen(7), mixup_alpha=0.2, cutmix_alpha=1.0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = mix_batch(x, target, _gen(7), mixup_alpha=0.2, cutmix_alpha=1.0)
    c = mix_batch(x, target, _gen(8), mixup_alpha=0.2, cutmix_alpha=1.0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert mix_batch(x, target, _gen(7)) == (x, target)  # both alphas 0: untouched


@pytest.mark.parametrize("policy", ["report", "randaugment", "trivialaugment"])
def test_per_image_transform_offers_every_policy(policy):
    aug = AugmentConfig(policy=policy, cutout=1.0, cutout_scale=[0.1, 0.2])
    t = per_image_transform(24, IMAGENET_MEAN, IMAGENET_STD, aug)
    names = [type(step).__name__ for step in t.transforms]
    want = {"report": "ColorJitter", "randaugment": "RandAugment", "trivialaugment": "TrivialAugmentWide"}[policy]
    assert want in names and names[-1] == "RandomErasing"
    out = t(Image.fromarray(_uint8((40, 40, 3)).numpy()))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    erased = (out == 0).all(0)
    assert 0.1 * 0.7 <= float(erased.float().mean()) <= 0.2 * 1.3


@pytest.mark.parametrize(("key", "value"), [("randaugment_m", 31), ("randaugment_n", -1), ("cutout", 1.5),
                                            ("cutout_scale", [0.5, 0.1]), ("mixup", -0.2), ("hue", 0.6)])
def test_bad_ranges_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        load_config(None, [f"augment.{key}={value}"])
