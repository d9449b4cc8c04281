"""Build rate of the decoded-image cache on real JPEGs: one process, a thread pool, a process pool.

    python benchmarks/cache_build.py --images 2000 [--image-side 512] [--workers 16] [--repeats 3]

The demo corpus's JPEGs (128 px; `--image-side` re-saves them larger, quality 90, so each decode also
resizes to `--cache-size`, as a photo dataset does). Every build starts from an empty cache folder with
the files already in the page cache. "threads" is the build before the process pool (`decode_square`
into the memory-mapped file from a `ThreadPoolExecutor`); "processes" is `build_cache` with its pool
forced on whatever the size (the library decodes in-process below `POOL_MIN_ROWS`), its start included.
Prints the median wall time of `--repeats` builds per mode, the pool's start alone, and the process
pool's rate without it (what a large build sees). The load average is printed: on a shared machine the
figures mean little above it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mlic.data import cache
from mlic.data.demo import write_demo_data
from mlic.data.registry import load_helsinki


def thread_build(dataset, size: int, out: Path, workers: int) -> None:
    array = np.lib.format.open_memmap(out / "threads.u8", mode="w+", dtype=np.uint8,
                                      shape=(len(dataset), 3, size, size))

    def fill(row: int) -> None:
        array[row] = cache.decode_square(dataset, row, size)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, range(len(dataset))))
    array.flush()


def pool_start(workers: int) -> float:
    """Seconds to start `workers` spawned processes that import the cache module (what a build's pool pays)."""
    start = time.perf_counter()
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"))
    for future in [pool.submit(cache.default_workers) for _ in range(workers)]:
        future.result()
    seconds = time.perf_counter() - start
    pool.shutdown()  # not timed: the build does not wait for its workers to exit either
    return seconds

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-side", type=int, default=0, help="re-save the JPEGs at this side (0: as made)")
    parser.add_argument("--cache-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=cache.default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="mlic-cache-bench-")  # removed at exit: data, caches, runs (GBs)
    tmp = Path(scratch.name)
    root = write_demo_data(tmp / "data", args.images, seed=0)
    if args.image_side:
        for file in (root / "images").iterdir():
            with Image.open(file) as img:
                img.resize((args.image_side, args.image_side), Image.Resampling.BICUBIC).save(file, quality=90)
    dataset = load_helsinki(root)
    for row in range(len(dataset)):  # the files into the page cache
        dataset.read(row)
    size, w = args.cache_size, args.workers
    cache.POOL_MIN_ROWS = 0  # the process pool even for a small benchmark
    modes = {
        "1 process": lambda out: cache.build_cache(dataset, size, out, workers=1),
        f"threads x{w}": lambda out: thread_build(dataset, size, out, w),
        f"processes x{w}": lambda out: cache.build_cache(dataset, size, out, workers=w),
    }
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(args.repeats):
        for mode, build in modes.items():
            out = tmp / f"cache-{r}-{len(times[mode])}-{mode.split()[0]}"
            out.mkdir()
            start = time.perf_counter()
            build(out)
            times[mode].append(time.perf_counter() - start)
    start = statistics.median(pool_start(w) for _ in range(args.repeats))
    side = args.image_side or 128
    print(f"\n{args.images} JPEGs {side}x{side} -> cache {size}x{size}, median of {args.repeats}, "
          f"{cache.default_workers()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':24s} {'seconds':>8s} {'images/s':>9s} {'after pool start':>17s}")
    for mode, ts in times.items():
        t = statistics.median(ts)
        steady = f"{args.images / (t - start):17.0f}" if mode.startswith("processes") and t > start else ""
        print(f"{mode:24s} {t:8.2f} {args.images / t:9.0f} {steady}")
    print(f"pool start alone (spawn {w} workers, each importing mlic.data.cache): {start:.2f} s")

if __name__ == "__main__":
    main()
