"""Decode once: a uint8 (N, 3, S, S) memory-mapped cache of a dataset's images.

Ranks on one node map the same file, so the page cache holds one copy for all of them. The file is
named by the dataset's fingerprint (file names, sizes, mtimes, decode settings: `data.background`,
`data.max_pixels`), the side S, the resize policy (`data.resize`: a squashed cache keeps the name it had before
the policy existed) and the rows left out (unreadable images under `data.skip_bad`, stored as zeros): a changed
source, decode setting, side, policy or set of rows gets a new cache.

Building (one process per node: the caller wraps it in `local_main_process_first`) decodes with a pool of
worker processes, one per core (PIL holds the GIL for part of each decode, so threads do not scale), from
POOL_MIN_ROWS images up (below, a few threads: a worker takes seconds to start), into
`NAME.u8.partial`; `NAME.u8.done` holds one byte per row, set once that row is on disk. An interrupted or
failed build leaves both, and the next build with the same arguments decodes only the rows not done, then
renames the file into place: a reader never sees half a cache. `NAME.u8.lock` (flock) keeps two builders
(two nodes sharing `data.cache_dir`) from writing the same file; the second waits, then finds it built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from mlic import faults
from mlic.data.datasets import MultilabelImages
from mlic.disk import space_line, writing
from mlic.errors import DataError
from mlic.labels import LabelMatrix
from mlic.logs import log, note

CHUNK_ROWS = 256  # rows per worker task and per progress record: a task's overhead is small next to its decoding
# Fewer rows to decode: threads of this process. A worker process starts in seconds (spawned one after the
# other, each importing torch), so below this many rows the pool costs more than it saves; more threads than
# IN_PROCESS_THREADS were slower (docs/PERFORMANCE.md, "The image cache build").
POOL_MIN_ROWS = 100_000
IN_PROCESS_THREADS = 4


class NoSpaceForCache(DataError):
    """The cache does not fit on its disk: said before any image is decoded."""


def default_workers() -> int:
    """The cores this process may run on (a job's CPU set, not the whole machine's)."""
    return len(os.sched_getaffinity(0))


def _left_out(n: int, rows: np.ndarray | None) -> np.ndarray:
    return np.zeros(0, dtype=np.int64) if rows is None else np.setdiff1d(np.arange(n), rows)


def cache_path(dataset: MultilabelImages, size: int | Square, cache_dir: str | Path,
               rows: np.ndarray | None = None) -> Path:
    """The cache file of `dataset` decoded at `size` (a side, squashed, or a `Square`), holding `rows` (None:
    every row). A squashed cache keeps the name it had before `data.resize` existed."""
    square = Square.of(size)
    name = f"{dataset.fingerprint}-{len(dataset)}x{square.side}"
    if square.resize != "squash":  # pad's background is in the fingerprint (a decode setting)
        name += f"-{square.resize}"
    left_out = _left_out(len(dataset), rows)
    if len(left_out):  # a cache with zeros in place of these rows must not serve a run that wants them
        name += f"-without{hashlib.sha1(left_out.astype('<i8').tobytes()).hexdigest()[:12]}"
    return Path(cache_dir) / f"{name}.u8"


@dataclass(frozen=True)
class Square:
    """How an image becomes a cached square of side `side` (`data.cache_size`), per `data.resize`: squash
    (both sides resized to it), crop (the shorter side resized to it, the longer centre-cropped: timm's
    evaluation crop, whose crop_pct the evaluation transform then applies) or pad (the longer side resized to
    it, letterboxed onto `background`). PIL's bilinear filter, no reducing_gap: the pixels the ONNX contract
    and `mlic predict` reproduce."""

    side: int
    resize: str = "squash"
    background: str = "white"

    def __call__(self, img: Image.Image) -> np.ndarray:
        """An RGB image as the cache stores it: uint8 (3, side, side)."""
        size, bilinear = (self.side, self.side), Image.Resampling.BILINEAR
        if img.size != size:
            if self.resize == "crop":
                img = ImageOps.fit(img, size, bilinear, centering=(0.5, 0.5))
            elif self.resize == "pad":
                img = ImageOps.pad(img, size, bilinear, color=self.background, centering=(0.5, 0.5))
            else:
                img = img.resize(size, bilinear, reducing_gap=None)
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))

    @classmethod
    def of(cls, size: int | Square) -> Square:
        return size if isinstance(size, Square) else cls(size)

    @classmethod
    def of_data(cls, cfg_data) -> Square:
        """A run's squares: its DataConfig's (resolved) `cache_size`, `resize` and `background`."""
        return cls(cfg_data.cache_size, cfg_data.resize, cfg_data.background)


def square_pixels(img: Image.Image, size: int | Square) -> np.ndarray:
    """An RGB image as the cache stores it: uint8 (3, S, S); an int S squashes (mlic's only way before
    `data.resize`)."""
    return Square.of(size)(img)


def decode_square(dataset: MultilabelImages, row: int, size: int | Square) -> np.ndarray:
    return square_pixels(dataset.read(row), size)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


class _RowWriter:
    """Decodes rows into the partial file and makes them durable (`fdatasync`) before returning, so a row
    is never marked done before it is on disk, even if the machine goes down."""

    def __init__(self, decode: Callable, square: Square, path: Path, data_offset: int):
        self.decode, self.square, self.data_offset = decode, square, data_offset
        self.fd = os.open(path, os.O_WRONLY)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        row_bytes = 3 * self.square.side ** 2
        for row in rows.tolist():
            os.pwrite(self.fd, self.square(self.decode(row).image), self.data_offset + row * row_bytes)
        os.fdatasync(self.fd)
        return rows

    def close(self) -> None:
        os.close(self.fd)


_worker_writer: _RowWriter | None = None  # one per pool worker process


def _start_worker(decode_pickle: bytes, square: Square, path: Path, data_offset: int) -> None:
    global _worker_writer
    _worker_writer = _RowWriter(pickle.loads(decode_pickle), square, path, data_offset)


def _worker_write(rows: np.ndarray) -> np.ndarray:
    return _worker_writer(rows)


@contextlib.contextmanager
def _build_lock(path: Path):
    """Exclusive while building `path`; released by the kernel if the builder dies."""
    with open(path.with_name(f"{path.name}.lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another process building the image cache {path}", every_rank=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning(f"warning: {path.parent}: this file system cannot lock files ({exc.strerror}); nodes sharing "
                        "data.cache_dir may each build the same cache", main_process_only=False)
        yield


def _done_rows(partial: Path, done: Path, n: int, size: int) -> np.ndarray | None:
    """Which rows an earlier build finished (bool per row), or None when there is nothing to resume."""
    if not (partial.exists() and done.exists()) or done.stat().st_size != n:
        return None
    try:
        array = np.load(partial, mmap_mode="r")
    except (OSError, ValueError):  # killed while the header was being written
        return None
    if array.shape != (n, 3, size, size) or array.dtype != np.uint8:
        return None
    return np.fromfile(done, dtype=np.uint8).astype(bool)


def _check_space(cache_dir: Path, needed: int, size: int, partial: Path) -> None:
    free = shutil.disk_usage(cache_dir).free
    if needed <= free:
        return
    others = [p for p in cache_dir.glob("*.u8.partial") if p != partial]
    held = sum(p.stat().st_blocks * 512 for p in others)
    stale = (f" ({len(others)} other unfinished cache(s) there hold {_gib(held)}: `*.u8.partial`, delete those "
             "whose dataset has changed)") if others else ""
    raise NoSpaceForCache(
        f"{space_line('the image cache', cache_dir, needed)}: it needs {_gib(needed)} more in {cache_dir} but only {_gib(free)} is free{stale}: set "
        f"data.cache=off (decode per image) or a smaller data.cache_size (now {size}), or data.cache_dir on a "
        "larger disk")


def _chunks(rows: np.ndarray) -> list[np.ndarray]:
    return [rows[i:i + CHUNK_ROWS] for i in range(0, len(rows), CHUNK_ROWS)]


def _mark_done(fd: int, rows: np.ndarray) -> None:
    for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):  # runs of consecutive rows
        os.pwrite(fd, b"\x01" * len(run), int(run[0]))


def _pickled_for_workers(decode: Callable) -> bytes | None:
    """`decode` pickled once here, not once per worker (it can hold a million file names); None if it cannot be."""
    try:
        return pickle.dumps(decode)
    except Exception as exc:  # pickle raises many types
        log.warning(f"warning: the dataset's decoder cannot go to worker processes ({type(exc).__name__}: {exc}); "
                    "decoding the cache in this process only", main_process_only=False)
        return None


def _decode_rows(decode: Callable, square: Square, partial: Path, data_offset: int, chunks: list[np.ndarray],
                 workers: int, decode_pickle: bytes | None, done_fd: int, bar) -> None:
    """Decode `chunks` (with threads of this process when `decode_pickle` is None, else with worker processes),
    marking each chunk done once it is on disk."""
    if decode_pickle is None:  # PIL releases the GIL for part of a decode: a few threads still help
        writer, threads = _RowWriter(decode, square, partial, data_offset), min(workers, IN_PROCESS_THREADS)
        try:
            if threads == 1:  # in order: an error stops at its chunk
                for rows in chunks:
                    _mark_done(done_fd, writer(rows))
                    bar.update(len(rows))
            else:
                pool = ThreadPoolExecutor(threads)
                _collect(pool, [pool.submit(writer, rows) for rows in chunks], done_fd, bar, wait=True)
        finally:
            writer.close()
        return
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),  # fork is unsafe once torch runs
                               initializer=_start_worker, initargs=(decode_pickle, square, partial, data_offset))
    # wait=False: the workers' exit (~1 s: torch's teardown) need not hold us, nor running chunks an interrupt
    _collect(pool, [pool.submit(_worker_write, rows) for rows in chunks], done_fd, bar, wait=False)


def _collect(pool, futures: list, done_fd: int, bar, wait: bool) -> None:
    """Marks each chunk done as it comes back. The first error is raised after the chunks in flight are
    finished and marked (the queued ones are cancelled), so a rerun repeats as little as possible. `wait`:
    whether an interrupt waits for the running chunks (threads must: they write through this process's file)."""
    error = None
    try:
        for future in as_completed(futures):
            if future.cancelled():
                continue
            if future.exception() is None:
                rows = future.result()
                _mark_done(done_fd, rows)
                bar.update(len(rows))
            elif error is None:
                error = future.exception()
                for other in futures:
                    other.cancel()
    except BaseException:  # an interrupt: do not wait for the queued chunks
        pool.shutdown(wait=wait, cancel_futures=True)
        raise
    pool.shutdown(wait=wait)
    if error is not None:
        raise error


def build_cache(dataset: MultilabelImages, size: int | Square, cache_dir: str | Path, workers: int | None = None,
                rows: np.ndarray | None = None) -> Path:
    """Decode `rows` of the full dataset (None: every row) once, with `workers` processes (None: one per
    core); reuse the file afterwards. The file has a slot for every row of the dataset; the rows left out
    stay zero and no split serves them. An interrupted build is finished by the next call, not restarted."""
    path = cache_path(dataset, size, cache_dir, rows)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(path):
        if not path.exists():  # else another process built it while this one waited
            _build(dataset, Square.of(size), path, default_workers() if workers is None else max(1, workers), rows)
    return path


def _build(dataset: MultilabelImages, square: Square, path: Path, workers: int, rows: np.ndarray | None) -> None:
    n, size = len(dataset), square.side
    row_bytes = 3 * size * size
    wanted = np.arange(n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    partial, done_path = path.with_name(f"{path.name}.partial"), path.with_name(f"{path.name}.done")
    done = _done_rows(partial, done_path, n, size)
    todo = wanted if done is None else wanted[~done[wanted]]
    needed = len(todo) * row_bytes + (n if done is None else 0)
    faults.fill_point("cache", path.parent)
    _check_space(path.parent, needed, size, partial)
    with writing("the image cache", path.parent, needed, point="cache-rows"):  # the disk filled up meanwhile
        _decode_all(dataset, square, path, workers, wanted, todo, done, partial, done_path, rows)


def _decode_all(dataset: MultilabelImages, square: Square, path: Path, workers: int, wanted: np.ndarray,
                todo: np.ndarray, done: np.ndarray | None, partial: Path, done_path: Path,
                rows: np.ndarray | None) -> None:
    n, size = len(dataset), square.side
    row_bytes = 3 * size * size
    finished = len(wanted) - len(todo)
    chunks = _chunks(todo)
    workers = max(1, min(workers, len(chunks)))
    pooled = workers > 1 and len(todo) >= POOL_MIN_ROWS
    decode_pickle = _pickled_for_workers(dataset.decode) if pooled else None
    threads = min(workers, IN_PROCESS_THREADS)
    how = f"{workers} processes" if decode_pickle is not None else f"{threads} thread{'s' if threads > 1 else ''}"
    resuming = f" (resuming: {finished:,} done)" if done is not None else ""
    note(f"building the image cache: {len(wanted):,} images x 3x{size}x{size} = {_gib(len(wanted) * row_bytes)} "
         f"at {path}{resuming}, {how}", every_rank=True)
    if done is None:  # the partial file first: a done record without its partial file is never trusted
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))  # sparse: zeros
        done_path.write_bytes(bytes(n))
    data_offset = np.load(partial, mmap_mode="r").offset
    done_fd = os.open(done_path, os.O_WRONLY)
    bar = tqdm(total=len(wanted), initial=finished, desc="image cache", unit="img", leave=False,
               disable=None)  # disable=None: no bar when stderr is not a terminal
    try:
        _decode_rows(dataset.decode, square, partial, data_offset, chunks, workers, decode_pickle, done_fd, bar)
    except DataError as exc:  # an unreadable image: what is decoded stays, for a rerun on the same data
        kept = int(np.fromfile(done_path, dtype=np.uint8)[wanted].sum())
        if not kept:
            partial.unlink()
            done_path.unlink()
            raise
        raise DataError(f"{exc} (the {kept:,} images decoded so far stay in {partial}: a rerun on the same data "
                        "resumes from them; delete it if the dataset changes)") from None
    finally:
        os.close(done_fd)
        bar.close()
    os.replace(partial, path)
    path.with_suffix(".json").write_text(json.dumps({"source": dataset.source, "images": n, "size": size,
                                                     "resize": square.resize,
                                                     "left_out": _left_out(n, rows).tolist()}))
    done_path.unlink()


def open_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


class CachedImages(torch.utils.data.Dataset):
    """Every row of a cached dataset: sample `row` = (uint8 image, float target row, row), the target 1 / 0 /
    NaN for positive / negative / unknown (`LabelMatrix.target_rows`). Splits are `Subset`s of it;
    `__getitems__` (which `Subset` forwards) fetches a whole batch with one fancy index."""

    def __init__(self, path: Path, labels: LabelMatrix):
        self.path = path
        self._array: np.ndarray | None = None  # opened lazily: DataLoader workers map it themselves
        self.labels = LabelMatrix.of(labels)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = open_cache(self.path)
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, row: int):
        row = int(row)
        return torch.from_numpy(self.array[row].copy()), self.labels.target_row(row), row

    def __getitems__(self, rows: list[int]):
        rows = np.asarray(rows, dtype=np.int64)
        images = torch.from_numpy(self.array[rows])  # one copy out of the page cache
        return images, self.labels.target_rows(rows), torch.from_numpy(rows)


def collate_batch(batch):
    """`CachedImages.__getitems__` already returns a batch."""
    return batch
