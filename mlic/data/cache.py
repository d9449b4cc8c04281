"""Decode once: a uint8 (N, 3, S, S) memory-mapped cache of a dataset's images.

Ranks on one node map the same file, so the page cache holds one copy for all of them. The file is
named by the dataset's fingerprint (file names, sizes, mtimes, decode settings: `data.background`,
`data.max_pixels`), the side S, and the rows left out (unreadable images under `data.skip_bad`, stored as
zeros): a changed source, decode setting, side or set of rows gets a new cache. One process per node builds it (the caller wraps this in `local_main_process_first`), into
a temporary file renamed into place, so a reader never sees half a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlic.data.datasets import MultilabelImages


def _left_out(n: int, rows: np.ndarray | None) -> np.ndarray:
    return np.zeros(0, dtype=np.int64) if rows is None else np.setdiff1d(np.arange(n), rows)


def cache_path(dataset: MultilabelImages, size: int, cache_dir: str | Path, rows: np.ndarray | None = None) -> Path:
    """The cache file of `dataset` decoded at `size`, holding `rows` (None: every row)."""
    name = f"{dataset.fingerprint}-{len(dataset)}x{size}"
    left_out = _left_out(len(dataset), rows)
    if len(left_out):  # a cache with zeros in place of these rows must not serve a run that wants them
        name += f"-without{hashlib.sha1(left_out.astype('<i8').tobytes()).hexdigest()[:12]}"
    return Path(cache_dir) / f"{name}.u8"


def decode_square(dataset: MultilabelImages, row: int, size: int) -> np.ndarray:
    img = dataset.read(row)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def build_cache(dataset: MultilabelImages, size: int, cache_dir: str | Path, workers: int = 4,
                rows: np.ndarray | None = None) -> Path:
    """Decode `rows` of the full dataset (None: every row) once; reuse the file afterwards. The file has a
    slot for every row of the dataset; the rows left out stay zero and no split serves them."""
    path = cache_path(dataset, size, cache_dir, rows)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))

    def fill(row: int) -> None:
        array[row] = decode_square(dataset, row, size)

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
            list(pool.map(fill, range(n) if rows is None else (int(r) for r in rows)))
        array.flush()
    except BaseException:
        tmp.unlink(missing_ok=True)  # an unreadable image (or an interrupt) leaves no half-written file
        raise
    os.replace(tmp, path)
    left_out = _left_out(n, rows).tolist()
    path.with_suffix(".json").write_text(json.dumps({"source": dataset.source, "images": n, "size": size,
                                                     "left_out": left_out}))
    return path


def open_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class CachedImages(torch.utils.data.Dataset):
    """Every row of a cached dataset: sample `row` = (uint8 image, float target, row). Splits are
    `Subset`s of it; `__getitems__` (which `Subset` forwards) fetches a whole batch with one fancy index."""

    def __init__(self, path: Path, targets: np.ndarray):
        self.path = path
        self._array: np.ndarray | None = None  # opened lazily: DataLoader workers map it themselves
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.float32))

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = open_cache(self.path)
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, row: int):
        row = int(row)
        return torch.from_numpy(np.ascontiguousarray(self.array[row])), self.targets[row], row

    def __getitems__(self, rows: list[int]):
        rows = np.asarray(rows, dtype=np.int64)
        images = torch.from_numpy(self.array[rows])  # one copy out of the page cache
        return images, self.targets[rows], torch.from_numpy(rows)


def collate_batch(batch):
    """`CachedImages.__getitems__` already returns a batch."""
    return batch
