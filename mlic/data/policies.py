"""Batched augmentation on the device: float (B, 3, H, W) images in [0, 1], each image with its own
parameters, all drawn from a passed `torch.Generator` (never the global RNG, so that a resumed run
repeats them). The report's ColorJitter ops, RandAugment and TrivialAugmentWide with the ops and
magnitude bins of torchvision.transforms.v2 (which draws per image on the host, one image at a time),
random erasing, RandomResizedCrop, and MixUp / CutMix for multi-hot targets.

torchvision's functional ops take one factor per call, so the per-image ones are written here;
equalize is torchvision's own, which is batched already (its autocontrast is too, but reads a value
back to the host).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor.view(-1, 1, 1, 1))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor.view(-1, 1, 1, 1))


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` (in turns, per image), via HSV with torchvision's formulas."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64) % 6
    v = maxc
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    sector = [i == k for k in range(6)]

    def pick(*planes: torch.Tensor) -> torch.Tensor:
        # planes[k] where the hue is in sector k: the values torchvision's one-hot sum gives, bit for bit,
        # without building 18 planes (the hue was ~85% of the jitter's time; this takes a third off it)
        out = planes[5]
        for k in range(5):
            out = torch.where(sector[k], planes[k], out)
        return out

    return torch.stack((pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)), dim=1)


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's: blend with a 3x3 smoothing of the interior; the one-pixel border keeps its values."""
    if min(x.shape[-2:]) <= 2:
        return x
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)  # made on the device: a host copy would wait for it
    kernel[1, 1] = 5.0
    kernel /= 13
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = F.conv2d(x, kernel.expand(x.shape[1], 1, 3, 3), groups=x.shape[1])
    return _blend(x, degenerate, factor.view(-1, 1, 1, 1))


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` (per image) of each 8-bit value: torchvision's uint8 posterize, the one the
    per-image path applies (its float version rounds to 2**bits levels of [0, 1], a different image).
    8 bits is the identity, as there (not a rounding of values between the 8-bit levels)."""
    bits = bits.to(torch.int64).clamp(0, 8)
    mask = torch.bitwise_left_shift(torch.full_like(bits, 255), 8 - bits).bitwise_and_(255).to(torch.uint8)
    kept = TF.to_dtype(TF.to_dtype(x, torch.uint8, scale=True) & mask.view(-1, 1, 1, 1), x.dtype, scale=True)
    return torch.where((bits == 8).view(-1, 1, 1, 1), x, kept)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 1 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """torchvision's float autocontrast (each channel stretched to [0, 1]; a flat channel kept), with
    torch.where where it assigns through a boolean mask, which reads a scalar back (a host sync)."""
    low, high = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    flat = high == low
    low = torch.where(flat, torch.zeros_like(low), low)
    return (x - low).div_(torch.where(flat, torch.ones_like(high), high - low)).clamp_(0, 1)


def _warp(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample each image through its (2, 3) inverse map (output pixel -> input pixel, pixel units,
    origin at the centre) as torchvision's F.affine does on tensors: the same grid, built in the same
    order (F.affine_grid rounds differently, which moves nearest-neighbour ties), then grid_sample,
    nearest, 0 outside (torchvision's fill=None)."""
    n, _, height, width = x.shape
    xs = torch.linspace((1 - width) / 2, (width - 1) / 2, width, dtype=x.dtype, device=x.device)
    ys = torch.linspace((1 - height) / 2, (height - 1) / 2, height, dtype=x.dtype, device=x.device)
    base = torch.stack([xs.expand(height, width), ys.view(-1, 1).expand(height, width),
                        torch.ones(height, width, dtype=x.dtype, device=x.device)], dim=-1)
    half = torch.full((2,), width / 2, dtype=x.dtype, device=x.device)  # filled on the device: no host copy
    half[1] = height / 2
    grid = base.view(1, -1, 3).expand(n, -1, -1).bmm(inverse.to(x.dtype).transpose(1, 2) / half)
    return F.grid_sample(x, grid.view(n, height, width, 2), mode="nearest", padding_mode="zeros", align_corners=False)


# torchvision's op order and names (RandAugment._AUGMENTATION_SPACE, TrivialAugmentWide's likewise)
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NUM_BINS = 31  # torchvision's num_magnitude_bins: magnitude m is bin m of 0..30


@functools.cache
def magnitude_table(wide: bool, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(OPS), NUM_BINS) magnitudes and (len(OPS),) signed flags of RandAugment (wide=False) or
    TrivialAugmentWide, as torchvision.transforms.v2 defines them; kept on the device (a fresh copy
    from the host each step would wait for the device)."""
    if wide:
        shear, tx, ty, rotate, enhance, posterize_div = 0.99, 32.0, 32.0, 135.0, 0.99, 6
    else:
        shear, tx, ty, rotate, enhance, posterize_div = 0.3, 150 / 331 * width, 150 / 331 * height, 30.0, 0.9, 4

    def lin(hi: float) -> torch.Tensor:
        return torch.linspace(0.0, hi, NUM_BINS)
    none = torch.zeros(NUM_BINS)
    bits = (8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / posterize_div))).round().float()
    rows = [none, lin(shear), lin(shear), lin(tx), lin(ty), lin(rotate), lin(enhance), lin(enhance),
            lin(enhance), lin(enhance), bits, torch.linspace(1.0, 0.0, NUM_BINS), none, none]
    signed = torch.tensor([name not in ("Identity", "Posterize", "Solarize", "AutoContrast", "Equalize") for name in OPS])
    return torch.stack(rows).to(device), signed.to(device)


def _affine_inverse(op: torch.Tensor, mag: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per image, the (2, 3) inverse map that torchvision's F.affine / F.rotate build for the geometric
    ops (pixels, origin at the image centre); identity for the other ops. Shears are about the top-left
    corner (torchvision's center=[0, 0]), translations int(magnitude) pixels, rotations about the centre,
    counter-clockwise. In float64, as torchvision computes it, so that the rounded map is the same."""
    is_op = {name: op == OPS.index(name) for name in OPS[1:6]}
    mag = mag.double()
    one, zero = torch.ones_like(mag), torch.zeros_like(mag)
    shift = mag.trunc()
    angle = torch.deg2rad(torch.remainder(mag, 360))  # torchvision's angle % 360 first: same rounding
    cos, sin = angle.cos(), angle.sin()
    rot = is_op["Rotate"]
    m0 = torch.where(rot, cos, one)
    m1 = torch.where(is_op["ShearX"], mag, torch.where(rot, -sin, zero))
    m2 = torch.where(is_op["ShearX"], mag * height / 2, torch.where(is_op["TranslateX"], -shift, zero))
    m3 = torch.where(is_op["ShearY"], mag, torch.where(rot, sin, zero))
    m5 = torch.where(is_op["ShearY"], mag * width / 2, torch.where(is_op["TranslateY"], -shift, zero))
    return torch.stack((m0, m1, m2, m3, m0, m5), dim=1).view(-1, 2, 3)


def _on_chosen(x: torch.Tensor, chosen: torch.Tensor, op, *params: torch.Tensor, masked: bool) -> torch.Tensor:
    """op(images, *per-image params) on the images that `chosen`, the others unchanged. masked: run the op
    on the whole batch and keep what was chosen (no host sync); else only on the chosen images, which
    needs their indices on the host (free on the CPU, a stall on an accelerator), written back into `x`
    in place (a copy of the whole batch per op cost more than the ops)."""
    if masked:
        return torch.where(chosen.view(-1, 1, 1, 1), op(x, *params), x)
    idx = chosen.nonzero().squeeze(1)
    if len(idx) == 0:
        return x
    return x.index_copy_(0, idx, op(x.index_select(0, idx), *(p.index_select(0, idx) for p in params)))


def apply_ops(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor, masked: bool | None = None,
              inplace: bool = False) -> torch.Tensor:
    """Image i gets op OPS[op[i]] at its (signed) magnitude mag[i], as torchvision applies it. masked:
    None is True on an accelerator (no host sync), False on the CPU (less work); see `_on_chosen`.
    inplace: the CPU path may write into `x` (else it works on a copy: the caller's batch is kept)."""
    masked = x.device.type != "cpu" if masked is None else masked
    if not masked and not inplace:
        x = x.clone()
    height, width = x.shape[-2:]
    is_op = {name: op == i for i, name in enumerate(OPS)}
    geometric = (op >= OPS.index("ShearX")) & (op <= OPS.index("Rotate"))
    x = _on_chosen(x, geometric, _warp, _affine_inverse(op, mag, height, width), masked=masked)
    for name, fn in (("Brightness", adjust_brightness), ("Color", adjust_saturation),
                     ("Contrast", adjust_contrast), ("Sharpness", adjust_sharpness)):
        x = _on_chosen(x, is_op[name], fn, 1 + mag, masked=masked)
    x = _on_chosen(x, is_op["Posterize"], posterize, mag, masked=masked)
    x = _on_chosen(x, is_op["Solarize"], solarize, mag, masked=masked)
    x = _on_chosen(x, is_op["AutoContrast"], autocontrast, masked=masked)
    return _on_chosen(x, is_op["Equalize"], TF.equalize, masked=masked)


def _signed(mag: torch.Tensor, signed: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    negate = torch.rand(mag.shape, device=mag.device, generator=generator) <= 0.5  # torchvision's test
    return torch.where(signed & negate, -mag, mag)


def rand_augment(x: torch.Tensor, generator: torch.Generator | None, num_ops: int = 2, magnitude: int = 9,
                 masked: bool | None = None, inplace: bool = False) -> torch.Tensor:
    """RandAugment: `num_ops` times, each image draws one op (and a sign) and applies it at bin `magnitude`.
    masked, inplace: as in `apply_ops`."""
    n, dev = x.shape[0], x.device
    table, signed = magnitude_table(False, x.shape[-2], x.shape[-1], dev)
    for i in range(num_ops):
        op = torch.randint(len(OPS), (n,), device=dev, generator=generator)
        mag = _signed(table[op, magnitude], signed[op], generator)
        x = apply_ops(x, op, mag, masked, inplace=inplace or i > 0)  # one copy at most
    return x


def trivial_augment_wide(x: torch.Tensor, generator: torch.Generator | None, masked: bool | None = None,
                         inplace: bool = False) -> torch.Tensor:
    """TrivialAugmentWide: each image draws one op, a magnitude bin and a sign. masked, inplace: as in
    `apply_ops`."""
    n, dev = x.shape[0], x.device
    table, signed = magnitude_table(True, x.shape[-2], x.shape[-1], dev)
    op = torch.randint(len(OPS), (n,), device=dev, generator=generator)
    level = torch.randint(NUM_BINS, (n,), device=dev, generator=generator)
    return apply_ops(x, op, _signed(table[op, level], signed[op], generator), masked, inplace)


def _box_mask(top: torch.Tensor, left: torch.Tensor, bottom: torch.Tensor, right: torch.Tensor,
              height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W): True inside rows [top, bottom) and columns [left, right) of each image."""
    rows = torch.arange(height, device=top.device).view(1, -1, 1)
    cols = torch.arange(width, device=top.device).view(1, 1, -1)
    inside = (rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1))
    return (inside & (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1))).unsqueeze(1)


def random_erasing(x: torch.Tensor, generator: torch.Generator | None, p: float, scale=(0.02, 0.33),
                   ratio=(0.3, 3.3), value: float = 0.0, attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomErasing per image: with probability p one rectangle of `value`, its area a
    uniform share `scale` of the image, its aspect ratio log-uniform in `ratio`. Like torchvision, up to
    10 tries for a rectangle that fits, the first that fits is erased, none: the image is kept; the
    tries are drawn for every image at once."""
    n, _, height, width = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, device=dev, generator=generator)

    erase = rand(n) < p
    area = height * width * (scale[0] + rand(n, attempts) * (scale[1] - scale[0]))
    log_lo, log_hi = float(np.log(ratio[0])), float(np.log(ratio[1]))
    aspect = torch.exp(log_lo + rand(n, attempts) * (log_hi - log_lo))
    tall, wide = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (tall < height) & (wide < width)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 if none does)
    tall, wide = tall.gather(1, first).squeeze(1), wide.gather(1, first).squeeze(1)
    top = (rand(n) * (height - tall + 1)).floor()
    left = (rand(n) * (width - wide + 1)).floor()
    box = _box_mask(top, left, top + tall, left + wide, height, width)
    return x.masked_fill(box & (erase & fits.any(1)).view(-1, 1, 1, 1), value)


def _crop_boxes(n: int, height: int, width: int, generator: torch.Generator | None, device: torch.device,
                scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10) -> tuple[torch.Tensor, ...]:
    """torchvision's RandomResizedCrop.get_params for n images at once, as float (n,) tensors
    (top, left, h, w) on `device`. Each image gets `attempts` tries drawn together and keeps the first
    that fits; where none fits, torchvision's central fallback, which depends only on the image shape and
    `ratio`, so it is worked out on the host and selected with torch.where: no read-back from the device."""

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, device=device, generator=generator)

    area = height * width * (scale[0] + rand(n, attempts) * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + rand(n, attempts) * (log_hi - log_lo))
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 if none does)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    top, left = (rand(n) * (height - h + 1)).floor(), (rand(n) * (width - w + 1)).floor()
    fall_h, fall_w = height, width  # the image's own ratio lies in `ratio`: the whole image
    if width / height < min(ratio):
        fall_h = round(width / min(ratio))
    elif width / height > max(ratio):
        fall_w = round(height * max(ratio))
    found = fits.any(1)
    return (torch.where(found, top, float((height - fall_h) // 2)),
            torch.where(found, left, float((width - fall_w) // 2)),
            torch.where(found, h, float(fall_h)), torch.where(found, w, float(fall_w)))


def random_resized_crop(x: torch.Tensor, generator: torch.Generator | None, size: int, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), interpolation: str = "bilinear", attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop for a float (N, C, H, W) batch in [0, 1]: each image its own box
    (RandomResizedCrop.get_params, see `_crop_boxes`), resized to (N, C, size, size) in one call.

    The crop and resize are torchvision.ops.roi_align (aligned=True: a box edge at pixel edges, as
    resized_crop samples), which takes a box per image, so one kernel serves the whole batch. Its
    sampling_ratio=0 averages ceil(box side / size) bilinear samples per output pixel along each axis:
    a box filter when the crop shrinks, standing in for resized_crop's antialias, and exactly one sample
    (plain bilinear) when it does not, so a whole-image crop at the image's size returns the image (a
    fixed 2 would blur it). roi_align has no bicubic: "bicubic" falls back to this same sampling.
    Half types are sampled in float32 (roi_align lacks bfloat16 on the CPU).
    """
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"random_resized_crop: interpolation {interpolation!r} is not supported; "
                         f"use 'bilinear' or 'bicubic' (which samples bilinearly)")
    n, _, height, width = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    top, left, h, w = _crop_boxes(n, height, width, generator, x.device, scale, ratio, attempts)
    index = torch.arange(n, device=x.device, dtype=top.dtype)
    boxes = torch.stack([index, left, top, left + w, top + h], 1).to(work.dtype)
    out = roi_align(work, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return out.clamp_(0, 1).to(x.dtype)


def mix_batch(x: torch.Tensor, target: torch.Tensor, generator: torch.Generator, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp / CutMix of a normalised (B, C, H, W) batch and its float (B, L) multi-hot targets.

    Image i is mixed with image B-1-i (the batch flipped, timm's pairing; the sampler already shuffles)
    at its own weight lambda ~ Beta(alpha, alpha). MixUp: lambda * x + (1 - lambda) * partner, and the
    targets likewise. CutMix: a box of area share about 1 - lambda, centred uniformly and clipped to the
    image (timm's rand_bbox), comes from the partner, and the targets are weighted by the area actually
    kept. With both alphas > 0 each image takes one of them with probability 1/2.

    torch's Beta sampler takes no generator, so these draws come from a NumPy generator seeded by
    `generator.initial_seed()` (a host int: no device sync): deterministic given the seed, and new each
    step because the engine seeds a fresh generator per step (reusing one seeded generator across calls
    repeats the draws).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, target
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    rng = np.random.default_rng([generator.initial_seed(), 0x6D6978])  # its own stream beside the device's
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = rng.random(n) < 0.5
    else:
        use_cutmix = np.full(n, cutmix_alpha > 0)

    def beta(alpha: float) -> np.ndarray:
        return rng.beta(alpha, alpha, n) if alpha > 0 else np.ones(n)

    lam = np.where(use_cutmix, beta(cutmix_alpha), beta(mixup_alpha))
    cut = np.sqrt(1 - lam)
    half_h, half_w = (height * cut).astype(np.int64) // 2, (width * cut).astype(np.int64) // 2
    cy, cx = rng.integers(0, height, n), rng.integers(0, width, n)
    top, bottom = np.clip(cy - half_h, 0, height), np.clip(cy + half_h, 0, height)
    left, right = np.clip(cx - half_w, 0, width), np.clip(cx + half_w, 0, width)
    bottom = np.where(use_cutmix, bottom, top)  # MixUp images get an empty box
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    blend = np.where(use_cutmix, 1.0, lam)  # CutMix images keep their own pixels outside the box
    on_device = _to_device(np.stack([blend, np.where(use_cutmix, kept, lam), top, bottom, left, right]), x.device)
    blend, weight, top, bottom, left, right = on_device.unbind(0)
    partner = x.flip(0)
    mixed = torch.lerp(partner, x, blend.to(x.dtype).view(-1, 1, 1, 1)) if mixup_alpha > 0 else x
    if cutmix_alpha > 0:
        mixed = torch.where(_box_mask(top, left, bottom, right, height, width), partner, mixed)
    weight = weight.to(target.dtype).view(-1, 1)
    return mixed, torch.lerp(target.flip(0), target, weight)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array.astype(np.float32))
    if device.type == "cuda":  # from pageable memory the copy would wait for the stream; pinned, it queues
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
