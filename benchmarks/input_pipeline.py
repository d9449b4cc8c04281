"""Input pipeline throughput: torchvision per-image path vs mlic's decoded cache + batched augmentation.

    python benchmarks/input_pipeline.py [--images 2000] [--size 224] [--batch 64] [--repeats 3] [--decode-only]

(a) baseline: Dataset + PIL decode + transforms v2 (flips, ColorJitter, Resize, Normalize) + DataLoader
    with one worker per core, as torchvision's reference scripts do it;
(b) cached: uint8 memory-mapped cache, one fancy index per batch (the host's whole share of the work
    when a GPU does the augmentation), and (b') the same plus the batched augmentation run on this
    CPU, for a machine without a GPU.
Also: the decode alone (the dataset's `read`, one thread: what every path above pays per image) and
the cache build, each a median over `--repeats`; `--decode-only` stops there (to compare decoders side
by side). Also: balanced-sampler draws per second, and the memory of 2 ranks reading one cache vs 1 rank
(proportional set size: shared page-cache pages are split between the processes that map them).
Figures are medians over `--repeats` runs, all in this one process, side by side.
The last line is `ratio: <(b) per core / (a) per core>`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlic.config import AugmentConfig
from mlic.data.cache import CachedImages, build_cache, collate_batch, open_cache
from mlic.data.datasets import Transformed
from mlic.data.demo import write_demo_data
from mlic.data.registry import load_helsinki
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DeviceTransform, per_image_transform
from mlic.sampler import MultilabelBalancedSampler


def rate(fn, images: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return images / statistics.median(times)


def _smaps(path: str) -> dict[str, float]:
    """Rss and Pss (MiB) of the whole process and of the mapping of `path` alone."""
    totals = {"Rss": 0.0, "Pss": 0.0, "cache_Rss": 0.0, "cache_Pss": 0.0}
    in_cache = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            parts = line.split()
            if not parts[0].endswith(":"):  # a mapping header: address range, perms, ..., path
                in_cache = parts[-1] == path
            elif parts[0] in ("Rss:", "Pss:"):
                key = parts[0][:-1]
                totals[key] += int(parts[1]) / 1024
                if in_cache:
                    totals[f"cache_{key}"] += int(parts[1]) / 1024
    return totals


def memory_worker(path: str, queue, barrier) -> None:
    torch.set_num_threads(1)
    array = open_cache(Path(path))
    total = 0
    for start in range(0, len(array), 256):  # read every image, as an epoch does
        total += int(np.asarray(array[start:start + 256]).sum(dtype=np.int64) > 0)
    barrier.wait()  # measure while every rank still maps the cache
    queue.put(_smaps(str(Path(path).resolve())))
    barrier.wait()


def memory(path: Path, ranks: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(ranks)
    procs = [ctx.Process(target=memory_worker, args=(str(path), queue, barrier)) for _ in range(ranks)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return {k: sum(r[k] for r in results) for k in results[0]}


def sampler_rate(labels: np.ndarray, policy: str, repeats: int) -> float:
    sampler = MultilabelBalancedSampler(labels, policy, num_samples=200_000)

    def draw():
        sampler._cached = None  # no memo: draw the epoch again
        sampler.order(0)

    return rate(draw, 200_000, repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--decode-only", action="store_true", help="only the decode and cache-build figures")
    args = parser.parse_args()
    cores = os.cpu_count()
    scratch = tempfile.TemporaryDirectory(prefix="mlic-bench-")  # removed at exit: data, caches, runs (GBs)
    tmp = Path(scratch.name)
    root = write_demo_data(tmp / "data", args.images, seed=0)
    ds = load_helsinki(root)
    aug = AugmentConfig()
    print(f"{args.images} images 128x128 -> {args.size} px, batch {args.batch}, {cores} cores, torch {torch.__version__}")

    def decode_all():
        for i in range(len(ds)):
            ds.read(i)

    decode_all()  # the files into the page cache
    print(f"decode only (the dataset's read, 1 thread): {rate(decode_all, len(ds), args.repeats):8.0f} img/s")
    builds = []
    for r in range(args.repeats):
        start = time.perf_counter()
        path = build_cache(ds, 128, tmp / f"cache{r}", workers=cores)
        builds.append(time.perf_counter() - start)
    build = statistics.median(builds)
    print(f"    cache built in {build:.2f} s = {len(ds) / build:.0f} img/s, {cores} threads "
          f"({path.stat().st_size / 2**20:.0f} MiB)")
    if args.decode_only:
        return

    baseline = Transformed(ds, per_image_transform(args.size, IMAGENET_MEAN, IMAGENET_STD, aug))
    loader_a = DataLoader(baseline, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                          persistent_workers=True)

    def run_a():
        for _ in loader_a:
            pass

    run_a()  # start the workers
    a = rate(run_a, len(ds), args.repeats)
    a_core = a / args.workers
    print(f"(a) PIL + transforms v2 + DataLoader({args.workers} workers): {a:8.0f} img/s  = {a_core:8.0f} img/s per core")

    # Memory first, while no process but the ranks maps the cache (this one would share its pages).
    one, two = memory(path, 1), memory(path, 2)
    print(f"memory of the cache mapping ({path.stat().st_size / 2**20:.0f} MiB file), summed over ranks: "
          f"1 rank PSS {one['cache_Pss']:.0f} MiB, 2 ranks PSS {two['cache_Pss']:.0f} MiB: "
          f"2/1 = {two['cache_Pss'] / one['cache_Pss']:.2f}x (RSS counts shared pages twice: "
          f"{one['cache_Rss']:.0f} vs {two['cache_Rss']:.0f} MiB)")
    print(f"memory of the whole processes (Python + torch each): 1 rank PSS {one['Pss']:.0f} MiB, "
          f"2 ranks {two['Pss']:.0f} MiB: 2/1 = {two['Pss'] / one['Pss']:.2f}x")
    cached = CachedImages(path, ds.targets)
    loader_b = DataLoader(cached, batch_size=args.batch, shuffle=True, num_workers=0, collate_fn=collate_batch)
    torch.set_num_threads(1)

    def run_b():
        for _ in loader_b:
            pass

    transform = DeviceTransform(args.size, IMAGENET_MEAN, IMAGENET_STD, aug)
    gen = torch.Generator().manual_seed(0)

    def run_b_aug():
        for images, _, _ in loader_b:
            transform(images, gen)

    run_b()
    b = rate(run_b, len(ds), args.repeats)
    b_aug = rate(run_b_aug, len(ds), args.repeats)
    print(f"(b) cached batch fetch, 1 thread (host work when a GPU augments): {b:8.0f} img/s per core")
    print(f"(b') cached + batched augmentation on this CPU, 1 thread:         {b_aug:8.0f} img/s per core")
    print(f"    (b')/(a) per core: {b_aug / a_core:.1f}x")

    y = ds.targets
    for policy in ("random", "cycle", "least_sampled"):
        draws = sampler_rate(y, policy, args.repeats)
        print(f"sampler {policy:13s}: {draws / 1e6:6.2f} M draws/s ({y.shape[1]} classes)")

    print(f"ratio: {b / a_core:.1f}")


if __name__ == "__main__":
    main()
