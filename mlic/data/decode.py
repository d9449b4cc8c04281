"""One image file to 8-bit sRGB, decoded the same way by training, the cache, inference and check-data.

The common case, a plain 8-bit RGB JPEG, costs only the decode: every other case (16-bit pixels,
transparency, an EXIF orientation, an embedded ICC profile, a second frame) is recognised by a cheap
look at the opened image (its mode, `info`, EXIF orientation) before any work is done for it. Each
conversion made is named in `Decoded.conversions`, so `mlic check-data` can say what it had to convert.
"""

from __future__ import annotations

import functools
import io
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageColor, ImageOps

from mlic.errors import ConfigError, DataError

# What each conversion does, as check-data's warnings say it: "N image(s) <text>: files".
CONVERSIONS = {
    "16-bit": "had 16-bit pixels, scaled to 8 bit (v * 255 / 65535)",
    "alpha": "had transparency, composited onto data.background",
    "exif-rotated": "were turned upright by their EXIF orientation",
    "icc": "were converted from their embedded ICC profile to sRGB",
    "icc-ignored": "have an embedded ICC profile that cannot be used (broken or not for the image's mode): "
                   "colours left as stored",
    "animated": "are animated or multi-page: the first frame is used",
}
SHOWN_FILES = 3  # files named per kind of conversion in check-data's warnings
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
BACKGROUND = "white"  # data.background's default
MAX_PIXELS = 89_478_485  # data.max_pixels' default: Pillow's own decompression-bomb limit


@dataclass(frozen=True)
class DecodeSettings:
    """`data.background` as an RGB triple and `data.max_pixels`: everything that changes decoded pixels."""

    background: tuple[int, int, int]
    max_pixels: int

    @classmethod
    def from_config(cls, cfg_data=None) -> DecodeSettings:
        """From a DataConfig's `background` and `max_pixels`; None: their defaults."""
        background = BACKGROUND if cfg_data is None else cfg_data.background
        max_pixels = MAX_PIXELS if cfg_data is None else cfg_data.max_pixels
        try:
            rgb = ImageColor.getrgb(background)
        except ValueError:
            raise ConfigError(f"config key 'data.background': {background!r} is not a colour "
                              "(a name such as white or black, or '#rrggbb' in quotes)") from None
        if max_pixels < 1:
            raise ConfigError(f"config key 'data.max_pixels': {max_pixels} must be at least 1")
        return cls(tuple(rgb[:3]), max_pixels)

    @property
    def key(self) -> str:
        """Part of the cache key: other settings, other pixels, another cache file."""
        return "bg{},{},{}-max{}".format(*self.background, self.max_pixels)


class Decoded(NamedTuple):
    image: Image.Image  # mode RGB, 8 bit, sRGB, upright
    conversions: tuple[str, ...]  # keys of CONVERSIONS, in the order they were made


def decode_image(source: str | Path | IO[bytes], settings: DecodeSettings, name: str | None = None) -> Decoded:
    """Decode an image fully to RGB: the first frame, upright, 16-bit scaled, transparency composited
    onto the background, an embedded ICC profile converted to sRGB. A DataError naming the file when it
    cannot be read or has more than `settings.max_pixels` pixels."""
    name = name or str(source)
    _let_pillow_open(settings.max_pixels)
    try:
        with Image.open(source) as img:  # lazy: only the header is read so far
            _refuse_too_large(img.size, settings.max_pixels, name)
            img.load()
            return _to_srgb(img, settings, name)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning, if made an error
        # Pillow checks in Image.open, before mlic sees the header: say it as mlic's own check does
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise DataError(_too_large(name, f"{int(found[1]):,}" if found else "more", settings.max_pixels)) from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise DataError(f"{name}: cannot read image: {_why_unreadable(source, exc)}") from None


def decoded_rgb(img: Image.Image, settings: DecodeSettings, name: str = "image") -> Image.Image:
    """An image already in memory (a PIL image users hand to `predict`) converted as `decode_image`
    converts a file: upright, 8-bit sRGB, transparency on the background."""
    img.load()
    return _to_srgb(img, settings, name).image


_pillow_limit = threading.Lock()


def _let_pillow_open(max_pixels: int) -> None:
    """Pillow refuses (or warns about) images above its own process-wide `MAX_IMAGE_PIXELS`; mlic checks
    `data.max_pixels` itself from the header. When a user raises `data.max_pixels` above Pillow's limit,
    Pillow's is raised to match, once, under a lock and never lowered, so no decoding thread ever sees a
    smaller limit than it had. Below it nothing global changes."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        with _pillow_limit:
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
                Image.MAX_IMAGE_PIXELS = max_pixels


def _refuse_too_large(size: tuple[int, int], max_pixels: int, name: str) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise DataError(_too_large(name, f"{size[0]}x{size[1]} = {pixels:,}", max_pixels))


def _too_large(name: str, pixels: str, max_pixels: int) -> str:
    return (f"{name}: cannot read image: {pixels} pixels, more than data.max_pixels={max_pixels:,} (a guard "
            "against decompression bombs; raise data.max_pixels for real images this large)")


def _why_unreadable(source, exc: Exception) -> str:
    if isinstance(source, (str, Path)) and os.path.isfile(source) and os.path.getsize(source) == 0:
        return "zero-byte file"
    text = str(exc)
    if "truncated" in text:  # only a full decode shows it: Image.open alone reads the header
        return f"truncated image ({text})"
    return f"not a readable image ({type(exc).__name__}: {text})"


def _to_srgb(img: Image.Image, settings: DecodeSettings, name: str) -> Decoded:
    """The loaded first frame of `img` as upright 8-bit sRGB, and the conversions that took."""
    done = []
    if getattr(img, "is_animated", False):  # GIF, TIFF, WebP, APNG, MPO: Image.open loaded frame 0
        done.append("animated")
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        img = ImageOps.exif_transpose(img)
        done.append("exif-rotated")
    profile = img.info.get("icc_profile")
    if img.mode == "RGB" and not profile and "transparency" not in img.info:
        return Decoded(img, tuple(done))  # the common case: nothing to convert
    img, alpha = _split_alpha(img)
    if img.mode in SIXTEEN_BIT:
        img = _to_8bit(img, name)
        done.append("16-bit")
    if profile:
        img, outcome = _apply_profile(img, profile)
        done += [outcome] if outcome else []
    img = img if img.mode == "RGB" else img.convert("RGB")
    if alpha is not None:
        canvas = Image.new("RGB", img.size, settings.background)
        canvas.paste(img, mask=alpha)  # alpha blend in sRGB: the background is exactly the configured colour
        img = canvas
        done.append("alpha")
    return Decoded(img, tuple(done))


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(the colour part, the alpha band or None) for RGBA, LA, P with transparency and the like."""
    if img.mode in ("RGBA", "LA"):
        return img.convert(img.mode[:-1]), img.getchannel("A")
    if img.mode in ("PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")  # a palette entry or colour key marked transparent becomes alpha 0
        return rgba.convert("RGB"), rgba.getchannel("A")
    return img, None


def _to_8bit(img: Image.Image, name: str) -> Image.Image:
    """16-bit grayscale (modes I;16*, and I holding 0..65535) to L, v * 255 / 65535 rounded: never clipped."""
    values = np.asarray(img)
    if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"{name}: cannot read image: 32-bit integer pixels from {values.min()} to {values.max()}, "
                        "outside 0..65535; mlic cannot tell their range: save it as 8 or 16 bit")
    # round(v / 257) == (v + 128) // 257 exactly: v / 257 is never halfway between two integers
    return Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8))


def _apply_profile(img: Image.Image, profile: bytes) -> tuple[Image.Image, str | None]:
    """`img` converted from its embedded ICC profile to sRGB, and "icc"; unchanged, and None for an sRGB
    profile or "icc-ignored" for one that cannot be used (a broken profile is not worth a lost image)."""
    transform, outcome = _profile_transform(profile, img.mode)
    if transform is None:
        return img, outcome
    try:
        return ImageCms.applyTransform(img, transform), outcome
    except (ImageCms.PyCMSError, ValueError, OSError):
        return img, "icc-ignored"


@functools.lru_cache(maxsize=32)  # images from one camera or export share a profile: built once
def _profile_transform(profile: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform | None, str | None]:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        description = source.profile.profile_description or ""
        space = source.profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return None, "icc-ignored"
    if "srgb" in description.lower():  # already what the model sees; converting would only round
        return None, None
    if {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}.get(space) != mode:
        return None, "icc-ignored"
    try:  # NOCACHE: no per-transform pixel cache, so one transform is safe to share between threads
        return ImageCms.buildTransform(source, _srgb(), mode, "RGB", flags=ImageCms.Flags.NOCACHE), "icc"
    except ImageCms.PyCMSError:
        return None, "icc-ignored"


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass
class DecodeReport:
    """What decoding a dataset converted: how many images of each kind, and the first few of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, conversions: tuple[str, ...]) -> None:
        for kind in conversions:
            self.counts[kind] += 1
            shown = self.examples.setdefault(kind, [])
            if len(shown) < SHOWN_FILES:
                shown.append(name)

    def lines(self) -> list[str]:
        """One warning line per kind, in CONVERSIONS order."""
        out = []
        for kind, text in CONVERSIONS.items():
            n = self.counts[kind]
            if n:
                more = f" and {n - len(self.examples[kind])} more" if n > len(self.examples[kind]) else ""
                out.append(f"warning: {n} image(s) {text}: {', '.join(self.examples[kind])}{more}")
        return out
