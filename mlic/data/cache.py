"""Decode once: a uint8 (N, 3, S, S) memory-mapped cache of a dataset's images.

Ranks on one node map the same file, so the page cache holds one copy for all of them. The file is
named by the dataset's fingerprint (file names, sizes, mtimes) and the side S: a changed source gets a
new cache. One process per node builds it (the caller wraps this in `local_main_process_first`), into a
temporary file renamed into place, so a reader never sees half a cache.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlic.data.datasets import MultilabelImages


def cache_path(dataset: MultilabelImages, size: int, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{dataset.fingerprint}-{len(dataset.all_names)}x{size}.u8"


def decode_square(dataset: MultilabelImages, i: int, size: int) -> np.ndarray:
    img = dataset.read_base(i)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def build_cache(dataset: MultilabelImages, size: int, cache_dir: str | Path, workers: int = 4,
                skip: set[int] = frozenset()) -> Path:
    """Decode every image of the full dataset (not only this subset) once; reuse the file afterwards.
    Rows in `skip` (unreadable images left out of training) stay zero and are never served."""
    path = cache_path(dataset, size, cache_dir)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(dataset.all_names)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))

    def fill(i: int) -> None:
        if i not in skip:
            array[i] = decode_square(dataset, i, size)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        list(pool.map(fill, range(n)))
    array.flush()
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({"source": dataset.source, "images": n, "size": size}))
    return path


def open_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class CachedImages(torch.utils.data.Dataset):
    """A subset of a cached dataset; `__getitems__` fetches a whole batch with one fancy index."""

    def __init__(self, dataset: MultilabelImages, path: Path):
        self.path = path
        self._array: np.ndarray | None = None  # opened lazily: DataLoader workers map it themselves
        self.indices = dataset.indices
        self.targets = torch.from_numpy(dataset.targets.astype(np.float32))

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = open_cache(self.path)
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.ascontiguousarray(self.array[self.indices[i]])), self.targets[i], i

    def __getitems__(self, batch: list[int]):
        rows = np.asarray(batch, dtype=np.int64)
        images = torch.from_numpy(self.array[self.indices[rows]])  # one copy out of the page cache
        return images, self.targets[rows], torch.from_numpy(rows)


def collate_batch(batch):
    """`CachedImages.__getitems__` already returns a batch."""
    return batch
