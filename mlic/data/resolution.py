"""`data.cache_size: auto`: the side the training needs, never more than the images have.

The cache stores each image once as a square; the model takes its input from that square. Too small a square
throws away detail the backbone was trained to see (a 640 x 480 photo squashed to 128 and upsampled to 224);
larger than the images is upsampling stored on disk. So auto is the model's input side, or the side a crop
samples from (the input / crop_pct, timm's evaluation resize, under `data.resize=crop` or
`augment.random_resized_crop`), capped by the largest shorter side among the images (their headers, for up to
HEADERS of them, seeded). The course corpus (128 x 128) therefore caches at 128 as it always did.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mlic.data.datasets import MultilabelImages

HEADERS = 1024  # images whose size is read: enough to find the large ones, seconds on any disk


def needed_side(cfg, preprocess) -> int:
    """The side the model's input is taken from: the input, or input / crop_pct when it is cropped."""
    crops = cfg.data.resize == "crop" or (cfg.augment.enabled and cfg.augment.random_resized_crop)
    return math.floor(preprocess.size / preprocess.crop_pct) if crops else preprocess.size


def shorter_side(dataset: MultilabelImages, row: int) -> int | None:
    """The image's shorter side: from the file's header where the format reads files, else decoded; None when
    it cannot be read (check-data and the cache build name it)."""
    paths = getattr(dataset.decode, "paths", None)
    try:
        if paths is not None:
            with Image.open(paths[row]) as img:
                return min(img.size)
        return min(dataset.read(row).size)
    except Exception:  # an unreadable image: not this function's to report
        return None


def largest_side(dataset: MultilabelImages, rows: np.ndarray, seed: int) -> int | None:
    """The largest shorter side among up to HEADERS of `rows` (the same ones for the same data and seed)."""
    if len(rows) > HEADERS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, HEADERS, replace=False))
    sides = [s for s in (shorter_side(dataset, int(r)) for r in rows) if s is not None]
    return max(sides) if sides else None


def started_side(run_dir: Path) -> int | None:
    """The cache side the run in `run_dir` started with (its config.yaml), if it started."""
    try:
        side = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["cache_size"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return side if isinstance(side, int) and not isinstance(side, bool) and side >= 1 else None


def with_cache_size(cfg, side: int):
    """`cfg` with `data.cache_size` the number `side`."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_size=side))


def resolve_cache_size(cfg, dataset: MultilabelImages, rows: np.ndarray, preprocess,
                       started: int | None = None):
    """(cfg with data.cache_size a number, a note when it is not what the run would expect, else None). `started`: the
    side a resumed run began with (`started_side`); auto keeps it, so a run never changes what its model sees
    halfway (a run folder from before auto existed recorded 128)."""
    need, auto = needed_side(cfg, preprocess), cfg.data.cache_size == "auto"
    have = largest_side(dataset, rows, cfg.data.seed) if auto else None
    side = min(need, have or need) if auto else cfg.data.cache_size
    if auto and started is not None:
        return with_cache_size(cfg, started), (
            f"note: data.cache_size=auto keeps the {started} px this run started with (its config.yaml)"
            if started != side else None)
    if side >= preprocess.size:
        return with_cache_size(cfg, side), None
    why = (f"the images are at most {have} px on their shorter side" if auto else
           f"data.cache_size={side} (auto would take up to {need})")
    return with_cache_size(cfg, side), (f"note: {why}: the image cache holds {side} x {side} squares and the model "
                                        f"sees them resized up to its {preprocess.size} x {preprocess.size} input")
