"""Augmentation and normalisation: batched on the device (fast path) and per image with torchvision
transforms v2 (for datasets too big to cache). Both apply the report's augmentations (§3.1): random
horizontal and vertical flips and ColorJitter, then resize to the model's input and normalise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def per_image_transform(size: int, mean, std, aug=None, interpolation: str = "bilinear") -> v2.Compose:
    """The torchvision-reference path: PIL image -> normalised float tensor, augmented if `aug`."""
    steps: list = [v2.ToImage()]  # uint8 ops, float last: torchvision's usual (and fastest) order
    if aug is not None and aug.enabled:
        steps += [
            v2.RandomHorizontalFlip(aug.hflip),
            v2.RandomVerticalFlip(aug.vflip),
            v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue),
        ]
    mode = v2.InterpolationMode(interpolation)
    steps += [v2.Resize((size, size), interpolation=mode, antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


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
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(1, -1, 1, 1)  # (N, 6, H, W)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    a4 = torch.stack((a1, a2, a3), dim=1)  # (N, 3, 6, H, W)
    return (a4 * mask.unsqueeze(1)).sum(dim=2)


class DeviceTransform(torch.nn.Module):
    """uint8 (B, 3, H, W) batch on the device -> augmented, resized, normalised float batch.

    Each image gets its own flips and jitter factors, drawn from `generator`: the result depends only
    on the batch and the generator's seed, not on the global RNG (so a resumed run sees the same
    augmentations). ColorJitter applies brightness, contrast, saturation, hue in that fixed order
    (torchvision permutes the order per image).
    """

    def __init__(self, size: int, mean, std, aug=None, channels_last: bool = False, interpolation: str = "bilinear"):
        super().__init__()
        self.size = size
        self.interpolation = interpolation
        self.aug = aug if aug is not None and aug.enabled else None
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        shrink = x.shape[-1] > self.size  # jitter the smaller picture: same distribution, less work
        if shrink:
            x = self._resize(x)
        if self.aug is not None:
            x = self._augment(x, generator)
        if not shrink:
            x = self._resize(x)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, antialias=True, align_corners=False)
        # bicubic overshoots [0, 1]; the per-image path resizes uint8, which clamps: match it
        return x.clamp_(0, 1) if self.interpolation == "bicubic" else x

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        a, n, dev = self.aug, x.shape[0], x.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

        flip_h = torch.rand(n, device=dev, generator=generator) < a.hflip
        flip_v = torch.rand(n, device=dev, generator=generator) < a.vflip
        x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(-1), x)
        x = torch.where(flip_v.view(-1, 1, 1, 1), x.flip(-2), x)
        if a.brightness > 0:
            x = adjust_brightness(x, uniform(max(0.0, 1 - a.brightness), 1 + a.brightness))
        if a.contrast > 0:
            x = adjust_contrast(x, uniform(max(0.0, 1 - a.contrast), 1 + a.contrast))
        if a.saturation > 0:
            x = adjust_saturation(x, uniform(max(0.0, 1 - a.saturation), 1 + a.saturation))
        if a.hue > 0:
            x = adjust_hue(x, uniform(-a.hue, a.hue))
        return x
