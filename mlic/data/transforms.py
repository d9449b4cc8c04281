"""Augmentation and normalisation: batched on the device (fast path) and per image with torchvision
transforms v2 (for datasets too big to cache). Both apply random horizontal and vertical flips, then the
`augment.policy`: the report's ColorJitter (§3.1), RandAugment or TrivialAugmentWide; resize to the
model's input, normalise, and optionally erase one rectangle per image (`augment.cutout`). MixUp and
CutMix mix whole batches: `mlic.data.policies.mix_batch`, called by the engine on either path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import v2

from mlic.data.policies import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    rand_augment,
    random_erasing,
    random_resized_crop,
    trivial_augment_wide,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _policy(aug) -> v2.Transform:
    if aug.policy == "randaugment":
        return v2.RandAugment(num_ops=aug.randaugment_n, magnitude=aug.randaugment_m)
    if aug.policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    return v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)


class Letterbox:
    """data.resize=pad on the per-image path: the longer side to `size`, centred on `background` (as the cache)."""

    def __init__(self, size: int, background: str):
        self.size, self.background = size, background

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.pad(img, (self.size, self.size), Image.Resampling.BILINEAR, color=self.background)


def per_image_evaluating(preprocess: dict, cfg_data) -> v2.Compose:
    """The per-image evaluation path of an exported model (`preprocess` of its config.json, its run's DataConfig;
    folders from before `interpolation` or `crop_pct` were recorded: bilinear, 1.0)."""
    return per_image_transform(preprocess["size"], preprocess["mean"], preprocess["std"], None,
                               preprocess.get("interpolation", "bilinear"), cfg_data.resize,
                               preprocess.get("crop_pct", 1.0), cfg_data.background)


def per_image_transform(size: int, mean, std, aug=None, interpolation: str = "bilinear", resize: str = "squash",
                        crop_pct: float = 1.0, background: str = "white") -> v2.Compose:
    """The torchvision-reference path: PIL image -> normalised float tensor, augmented if `aug`; a non-square
    image becomes the input square by `resize` (see `mlic.data.cache.Square`), or in training by a random
    resized crop (`augment.random_resized_crop`)."""
    augment = aug is not None and aug.enabled
    mode = v2.InterpolationMode(interpolation)
    rrc = augment and aug.random_resized_crop
    steps: list = [Letterbox(size, background)] if resize == "pad" and not rrc else []
    steps.append(v2.ToImage())  # uint8 ops, float last: torchvision's usual (and fastest) order
    if rrc:
        steps.append(v2.RandomResizedCrop(size, tuple(aug.crop_scale), tuple(aug.crop_ratio), mode, antialias=True))
    if augment:
        steps += [v2.RandomHorizontalFlip(aug.hflip), v2.RandomVerticalFlip(aug.vflip), _policy(aug)]
    if resize == "crop" and not rrc:  # timm's evaluation: the shorter side to size / crop_pct, centre crop
        steps += [v2.Resize(math.floor(size / crop_pct), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    elif not rrc:
        steps.append(v2.Resize((size, size), interpolation=mode, antialias=True))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if augment and aug.cutout > 0:  # after Normalize, value 0 is the mean colour, as on the device
        steps.append(v2.RandomErasing(p=aug.cutout, scale=tuple(aug.cutout_scale), value=0))
    return v2.Compose(steps)


class DeviceTransform(torch.nn.Module):
    """uint8 (B, 3, H, W) batch on the device -> augmented, resized, normalised float batch.

    Each image gets its own flips, policy parameters (jitter factors; RandAugment's or TrivialAugment's
    ops, signs and magnitudes) and erased rectangle, drawn from `generator`: the result depends only on
    the batch and the generator's seed, not on the global RNG (so a resumed run sees the same
    augmentations). ColorJitter applies brightness, contrast, saturation, hue in that fixed order
    (torchvision permutes the order per image).
    """

    def __init__(self, size: int, mean, std, aug=None, channels_last: bool = False, interpolation: str = "bilinear",
                 resize: str = "squash", crop_pct: float = 1.0):
        super().__init__()
        self.size, self.resize, self.crop_pct = size, resize, crop_pct
        self.interpolation = interpolation
        self.aug = aug if aug is not None and aug.enabled else None
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        # augment the smaller picture: less work, the same distribution (but TrivialAugment's translations
        # are in pixels, so they move a picture further at the smaller size)
        shrink = x.shape[-1] > self.size
        if shrink:
            x = self._to_input(x, generator)
        if self.aug is not None:
            x = self._augment(x, generator)
        if not shrink:
            x = self._to_input(x, generator)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.aug is not None and self.aug.cutout > 0:  # 0 after normalising: the mean colour, as torchvision's
            x = random_erasing(x, generator, self.aug.cutout, tuple(self.aug.cutout_scale))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @classmethod
    def evaluating(cls, preprocess: dict, resize: str = "squash") -> DeviceTransform:
        """The evaluation transform of an exported model (`preprocess` of its config.json; folders from before
        `interpolation`, `crop_pct` or `data.resize` were recorded: bilinear, 1.0, squash)."""
        return cls(preprocess["size"], preprocess["mean"], preprocess["std"],
                   interpolation=preprocess.get("interpolation", "bilinear"), resize=resize,
                   crop_pct=preprocess.get("crop_pct", 1.0))

    def _to_input(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The cached square to the input square: in training a random resized crop (augment.random_resized_crop),
        else with data.resize=crop timm's evaluation crop (to size / crop_pct, centre crop), else a resize."""
        if self.aug is not None and self.aug.random_resized_crop:
            return random_resized_crop(x, generator, self.size, tuple(self.aug.crop_scale), tuple(self.aug.crop_ratio),
                                       self.interpolation)
        if self.resize != "crop" or self.crop_pct >= 1:
            return self._resize(x, self.size)
        x = self._resize(x, math.floor(self.size / self.crop_pct))
        top = int(round((x.shape[-2] - self.size) / 2.0))  # torchvision's CenterCrop offsets
        left = int(round((x.shape[-1] - self.size) / 2.0))
        return x[..., top:top + self.size, left:left + self.size]

    def _resize(self, x: torch.Tensor, side: int) -> torch.Tensor:
        if x.shape[-2:] == (side, side):
            return x
        x = F.interpolate(x, size=(side, side), mode=self.interpolation, antialias=True, align_corners=False)
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
        # x is this transform's own (the flips made it), so the policies may write into it
        if a.policy == "randaugment":
            return rand_augment(x, generator, a.randaugment_n, a.randaugment_m, inplace=True)
        if a.policy == "trivialaugment":
            return trivial_augment_wide(x, generator, inplace=True)
        if a.brightness > 0:
            x = adjust_brightness(x, uniform(max(0.0, 1 - a.brightness), 1 + a.brightness))
        if a.contrast > 0:
            x = adjust_contrast(x, uniform(max(0.0, 1 - a.contrast), 1 + a.contrast))
        if a.saturation > 0:
            x = adjust_saturation(x, uniform(max(0.0, 1 - a.saturation), 1 + a.saturation))
        if a.hue > 0:
            x = adjust_hue(x, uniform(-a.hue, a.hue))
        return x
