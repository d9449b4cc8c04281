"""Training throughput on one GPU: ResNet152, DenseNet161 and ViT-B/16 at 224 px, bf16 autocast,
channels_last for the CNNs, with and without torch.compile.

    python benchmarks/gpu_throughput.py [--models resnet152 densenet161 vit] [--batch 128] [--steps 20]

Per model and mode it prints images/s, model FLOPs utilisation (training FLOPs = 3 x forward; forward
GMACs at 224 px: ResNet152 11.56, DenseNet161 7.79, ViT-B/16 17.58; 1 GMAC = 2 FLOPs; peak dense bf16
989 TFLOP/s for H100/H200, --peak-tflops to change), the time of one epoch of 20,000 images, peak
memory, and the share of step time spent waiting for data. The data path is mlic's: the uint8 cache
(demo images, 128 px), the loader, and the batched augmentation on the GPU; fused Adam as mlic builds it.
Timing: wall-clock windows of `--steps` steps after `--warmup` steps, the device synchronised only at the ends of a window
(a per-step sync would stop the CPU from queueing work ahead and inflate both step time and data wait);
medians over `--windows` windows. Data wait: the share of a window's wall time the training thread spent
getting the next batch (an upper bound on the GPU's idle time from input). Meant to run in < 5 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mlic.config import AugmentConfig, load_config
from mlic.data.cache import CachedImages, build_cache, collate_batch
from mlic.data.datasets import load_helsinki
from mlic.data.demo import write_demo_data
from mlic.data.transforms import DeviceTransform
from mlic.engine import build_optimizer
from mlic.models import build_model, is_cnn

GMACS = {"resnet152": 11.56, "densenet161": 7.79, "vit": 17.58}


def bench(name: str, compile_: bool, loader, args, device) -> dict:
    cfg = load_config(None, [f"model.name={name}", "model.pretrained=false"])
    model, pre = build_model(cfg.model, 14)
    cnn = is_cnn(model)
    model = model.to(device, memory_format=torch.channels_last if cnn else torch.preserve_format).train()
    if compile_:
        model = torch.compile(model)
    transform = DeviceTransform(224, pre.mean, pre.std, AugmentConfig(), channels_last=cnn).to(device)
    opt = build_optimizer(cfg, model)  # as mlic builds it: fused Adam
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    it = iter(loader)

    def batch():
        nonlocal it
        try:
            images, target, _ = next(it)
        except StopIteration:
            it = iter(loader)
            images, target, _ = next(it)
        return images.to(device, non_blocking=True), target.to(device, non_blocking=True)

    def step(images, target):
        x = transform(images, gen)
        with autocast:
            loss = loss_fn(model(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):  # compilation, cudnn autotuning, allocator growth
        step(*batch())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    windows, waits = [], []
    for _ in range(args.windows):  # no host sync inside a window: the CPU queues work ahead as in training
        sync()
        start, waited = time.perf_counter(), 0.0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            images, target = batch()
            waited += time.perf_counter() - t0
            step(images, target)
        sync()
        windows.append(time.perf_counter() - start)
        waits.append(waited / windows[-1])
    seconds = statistics.median(windows) / args.steps
    ips = args.batch / seconds
    flops = 3 * 2 * GMACS.get(name, 0) * 1e9 * ips
    return {"images_per_s": ips, "mfu": flops / (args.peak_tflops * 1e12), "epoch_s": 20_000 / ips,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
            "data_wait": statistics.median(waits)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet152", "densenet161", "vit"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    scratch = tempfile.TemporaryDirectory(prefix="mlic-gpu-")  # removed at exit: data, caches, runs (GBs)
    tmp = Path(scratch.name)
    ds = load_helsinki(write_demo_data(tmp / "data", max(2000, args.batch * 4), seed=0))
    data = CachedImages(build_cache(ds, 128, tmp / "cache", workers=8), ds.targets)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, collate_fn=collate_batch,
                                         pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"{name}, torch {torch.__version__}, batch {args.batch}, {precision}, {args.windows} windows of {args.steps} steps")
    print(f"{'model':12s} {'compile':7s} {'img/s':>8s} {'MFU':>6s} {'epoch s':>8s} {'peak GB':>8s} {'data wait':>9s}")
    for model_name in args.models:
        for compile_ in ([False] if args.no_compile else [False, True]):
            r = bench(model_name, compile_, loader, args, device)
            print(f"{model_name:12s} {str(compile_):7s} {r['images_per_s']:8.0f} {r['mfu']:6.1%} {r['epoch_s']:8.1f} "
                  f"{r['peak_gb']:8.1f} {r['data_wait']:9.1%}", flush=True)
            torch.cuda.empty_cache() if device.type == "cuda" else None


if __name__ == "__main__":
    main()
