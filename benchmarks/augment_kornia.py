"""Batched augmentation: mlic's own ops vs kornia, and what each `augment` setting costs per batch.

    pip install kornia   # not a dependency of mlic: for this comparison only
    python benchmarks/augment_kornia.py [--batch 64] [--sizes 128 224] [--repeats 7] [--device cpu]

(a) ColorJitter (brightness/contrast/saturation 0.2, hue 0.02, the report's): mlic's batched ops vs
    kornia.augmentation.ColorJitter (same ranges, p=1), with kornia's random per-batch order and with
    the order fixed to mlic's (brightness, contrast, saturation, hue);
(b) RandAugment (n=2, m=9) and TrivialAugmentWide: mlic's batched policies vs kornia.augmentation.auto's
    and vs torchvision.transforms.v2 looped over the images (uint8, as the per-image path runs them);
(c) the whole DeviceTransform per batch for each policy, cutout, and mix_batch (MixUp, CutMix).
Every figure is the median of --repeats timed calls after one warm-up, all in this one process, side
by side, interleaved (each round times every candidate once). Then the semantics that matter to mlic, checked by running kornia: per-sample parameters,
one op order / op choice per batch, and whether its draws come from a passed torch.Generator.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from torchvision.transforms import v2

from mlic.config import AugmentConfig
from mlic.data.policies import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    mix_batch,
    rand_augment,
    trivial_augment_wide,
)
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD, DeviceTransform

try:
    import kornia
    import kornia.augmentation as KA
    from kornia.augmentation.auto import RandAugment as KorniaRandAugment
    from kornia.augmentation.auto import TrivialAugment as KorniaTrivialAugment
except ImportError as exc:  # not a dependency of mlic
    raise SystemExit(f"{exc}: pip install kornia (this benchmark only)") from None

JITTER = (0.2, 0.2, 0.2, 0.02)


def median_ms(fns: dict, repeats: int, sync) -> dict[str, float]:
    """Each fn once per round, the rounds' order rotated: a load that comes and goes (a shared machine)
    falls on every candidate alike instead of on whichever ran then."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        fns[name]()
    sync()
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(times[name]) for name in names}


def mlic_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What DeviceTransform(policy=report) does between flips and normalising: per-image factors."""
    n, dev = x.shape[0], x.device
    b, c, s, h = JITTER

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

    x = adjust_brightness(x, uniform(1 - b, 1 + b))
    x = adjust_contrast(x, uniform(1 - c, 1 + c))
    x = adjust_saturation(x, uniform(1 - s, 1 + s))
    return adjust_hue(x, uniform(-h, h))


def loop(transform, images: torch.Tensor) -> list[torch.Tensor]:
    return [transform(img) for img in images]


def timings(batch: int, size: int, repeats: int, device: torch.device) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    uint8 = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)).to(device)
    x = uint8.float() / 255
    g = torch.Generator(device).manual_seed(0)
    k_jitter = KA.ColorJitter(*JITTER, p=1.0)
    k_jitter_fixed = KA.ColorJitter(*JITTER, p=1.0, order=[0, 1, 2, 3])
    k_ra, k_ta = KorniaRandAugment(n=2, m=9), KorniaTrivialAugment()
    tv_ra, tv_ta = v2.RandAugment(num_ops=2, magnitude=9), v2.TrivialAugmentWide()
    cpu_uint8 = uint8.cpu()
    t = {
        "jitter/mlic": lambda: mlic_jitter(x, g),
        "jitter/kornia (random order per batch)": lambda: k_jitter(x),
        "jitter/kornia (fixed order, mlic's)": lambda: k_jitter_fixed(x),
        "randaugment/mlic (subsets: CPU path)": lambda: rand_augment(x, g, 2, 9, masked=False),
        "randaugment/mlic (masked: accelerator path)": lambda: rand_augment(x, g, 2, 9, masked=True),
        "randaugment/kornia": lambda: k_ra(x),
        "randaugment/torchvision loop (uint8, per image)": lambda: loop(tv_ra, cpu_uint8),
        "trivialaugment/mlic (subsets: CPU path)": lambda: trivial_augment_wide(x, g, masked=False),
        "trivialaugment/mlic (masked: accelerator path)": lambda: trivial_augment_wide(x, g, masked=True),
        "trivialaugment/kornia": lambda: k_ta(x),
        "trivialaugment/torchvision loop (uint8, per image)": lambda: loop(tv_ta, cpu_uint8),
    }
    for name, cfg in (("report", {}), ("randaugment", {"policy": "randaugment"}),
                      ("trivialaugment", {"policy": "trivialaugment"}), ("report + cutout 0.5", {"cutout": 0.5})):
        transform = DeviceTransform(size, IMAGENET_MEAN, IMAGENET_STD, AugmentConfig(**cfg)).to(device)
        t[f"DeviceTransform/{name}"] = lambda tr=transform: tr(uint8, g)
    normalised = DeviceTransform(size, IMAGENET_MEAN, IMAGENET_STD).to(device)(uint8)
    target = torch.from_numpy(rng.integers(0, 2, (batch, 20))).float().to(device)
    t["mix_batch/mixup 0.2"] = lambda: mix_batch(normalised, target, g, mixup_alpha=0.2)
    t["mix_batch/cutmix 1.0"] = lambda: mix_batch(normalised, target, g, cutmix_alpha=1.0)
    t["mix_batch/both"] = lambda: mix_batch(normalised, target, g, mixup_alpha=0.2, cutmix_alpha=1.0)
    return median_ms(t, repeats, sync)


def semantics() -> list[str]:
    """What kornia draws, and from where, found by running it."""
    lines = []
    same = torch.rand(1, 3, 32, 32).expand(16, -1, -1, -1).contiguous()
    jitter = KA.ColorJitter(*JITTER, p=1.0)
    out = jitter(same)
    lines.append(f"ColorJitter per-sample factors: {len(torch.unique(out.flatten(1), dim=0))} distinct images of 16 "
                 f"identical inputs; brightness factors drawn: {tuple(jitter._params['brightness_factor'].shape)}")
    orders = set()
    for _ in range(20):
        jitter(same)
        orders.add(tuple(jitter._params["order"].tolist()))  # kornia keeps the last draw in _params (documented)
    lines.append(f"ColorJitter order: one per call, shape {tuple(jitter._params['order'].shape)} for a batch of 16; "
                 f"{len(orders)} distinct orders over 20 calls")
    ra = KorniaRandAugment(n=2, m=9)
    chosen = [[p.name for p in ra.forward_parameters(same.shape)] for _ in range(5)]
    lines.append(f"RandAugment ops: one list per batch of 16, e.g. {chosen[:3]} (per-image ops: no)")
    ta = KorniaTrivialAugment()
    lines.append(f"TrivialAugment ops: one per batch of 16, e.g. {[p.name for p in ta.forward_parameters(same.shape)]}")
    try:
        KA.ColorJitter(*JITTER, p=1.0, generator=torch.Generator().manual_seed(0))
        lines.append("generator=: accepted at construction")
    except TypeError as exc:
        lines.append(f"generator= at construction: {type(exc).__name__}: {exc}")
    state = torch.random.get_rng_state()
    jitter(same)
    moved = not torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(1)
    a = jitter(same)
    torch.manual_seed(1)
    b = jitter(same)
    lines.append(f"draws from the global RNG: {moved} (global state moved by a call); reseeding it repeats the "
                 f"output: {torch.equal(a, b)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}, medians of {args.repeats}")
    for size in args.sizes:
        t = timings(args.batch, size, args.repeats, device)
        print(f"\n3x{size}x{size}: ms per batch of {args.batch}")
        for name, ms in t.items():
            print(f"  {name:55s} {ms:9.1f}")
        fixed = t["jitter/kornia (fixed order, mlic's)"]
        print(f"  ratio jitter kornia/mlic: {t['jitter/kornia (random order per batch)'] / t['jitter/mlic']:.2f} "
              f"(fixed order {fixed / t['jitter/mlic']:.2f})")
        mlic_ra = t["randaugment/mlic (subsets: CPU path)"]
        print(f"  ratio randaugment kornia/mlic: {t['randaugment/kornia'] / mlic_ra:.2f}, "
              f"torchvision loop/mlic: {t['randaugment/torchvision loop (uint8, per image)'] / mlic_ra:.2f}")
        mlic_ta = t["trivialaugment/mlic (subsets: CPU path)"]
        print(f"  ratio trivialaugment kornia/mlic: {t['trivialaugment/kornia'] / mlic_ta:.2f}, "
              f"torchvision loop/mlic: {t['trivialaugment/torchvision loop (uint8, per image)'] / mlic_ta:.2f}")
    print("\nkornia's semantics:")
    for line in semantics():
        print(f"  {line}")


if __name__ == "__main__":
    main()
