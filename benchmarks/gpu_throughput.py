"""Training throughput on one GPU, `fit` beside a bare loop: the report's models and timm's ViT-B/16 at 224 px.

    python benchmarks/gpu_throughput.py [--rows vit:compiled:bf16 resnet152:eager:fp16 ...] [--batch 128]
        [--profile FILE] [--json FILE] [--device cuda|cpu] [--image-size 224] [--compile-backend inductor]

A row is MODEL:MODE:PRECISION, MODE eager or compiled (`train.compile`, in place as mlic compiles), PRECISION
bf16, fp16 (autocast; fp16 with a loss scaler) or no. Per row, printed as it finishes:
- **bare**: a loop built from mlic's parts (the uint8 cache of the demo images at 128 px, its loader, the
  on-device augmentation to 224, fused Adam): wall-clock windows of `--steps` steps after `--warmup`, the
  device synchronised only at a window's ends, the median of `--windows`. Data wait: the share of a window
  the training thread spent getting the next batch.
- **fit**: `python train/<model>.py` (`train/any.py` for timm/ and hf/ names), the real loop with its loader,
  transform, sampler and logging, two epochs of `--fit-steps` steps on the same demo corpus; its own
  `images_per_s` and `data_wait` of epoch 2's training line in metrics.jsonl (epoch 1 compiles and tunes).
  `fit/bare` is their ratio.
- MFU: training FLOPs = 3 x forward (forward GMACs at 224 px: ResNet152 11.56, DenseNet161 7.79, ViT-B/16
  17.58, 1 GMAC = 2 FLOPs) over `--peak-tflops` (dense bf16/fp16 of H100/H200: 989).
- `--profile FILE`: a torch.profiler table per row appended to FILE, the 25 kernels with the most device time
  over 5 bare steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlic.config import AugmentConfig, load_config
from mlic.data.cache import CachedImages, build_cache, collate_batch
from mlic.data.demo import write_demo_data
from mlic.data.registry import load_helsinki
from mlic.data.transforms import DeviceTransform
from mlic.models import build_model, is_cnn
from mlic.training.engine import build_optimizer

REPO = Path(__file__).resolve().parent.parent
GMACS = {"resnet152": 11.56, "densenet161": 7.79, "vit": 17.58, "timm/vit_base_patch16_224": 17.58}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}
DEFAULT_ROWS = ["vit:eager:bf16", "vit:compiled:bf16", "resnet152:eager:bf16", "resnet152:compiled:bf16",
                "resnet152:compiled:fp16", "densenet161:compiled:bf16", "timm/vit_base_patch16_224:compiled:bf16"]


def bare_model(name: str, mode: str, args, device):
    cfg = load_config(None, [f"model.name={name}", "model.pretrained=false", f"data.image_size={args.image_size}",
                             "train.compile=true", f"train.compile_backend={args.compile_backend}",
                             f"train.compile_mode={args.compile_mode}"])
    model, pre = build_model(cfg.model, 14)
    cnn = is_cnn(model)
    model = model.to(device, memory_format=torch.channels_last if cnn and device.type == "cuda" else torch.preserve_format)
    if mode == "compiled":
        from mlic.training.build import compile_model
        compile_model(cfg, argparse.Namespace(distributed_type="NO"), model)
    transform = DeviceTransform(args.image_size, pre.mean, pre.std, AugmentConfig(),
                                channels_last=cnn and device.type == "cuda").to(device)
    return model.train(), transform, build_optimizer(cfg, model)  # as mlic builds it: fused Adam


def bare(name: str, mode: str, precision: str, loader, args, device) -> dict:
    model, transform, opt = bare_model(name, mode, args, device)
    loss_fn, gen = torch.nn.BCEWithLogitsLoss(), torch.Generator(device).manual_seed(0)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
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
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model(x).float(), target)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # compilation, cudnn autotuning, allocator growth
        step(*batch())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    windows, waits = [], []
    for _ in range(args.windows):  # no host sync inside a window: the CPU queues work ahead as in training
        sync(device)
        start, waited = time.perf_counter(), 0.0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            images, target = batch()
            waited += time.perf_counter() - t0
            step(images, target)
        sync(device)
        windows.append(time.perf_counter() - start)
        waits.append(waited / windows[-1])
    if args.profile is not None:
        write_profile(args.profile, f"{name}:{mode}:{precision}", lambda: step(*batch()), device)
    ips = args.batch / (statistics.median(windows) / args.steps)
    return {"images_per_s": ips, "data_wait": statistics.median(waits),
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_profile(path: Path, row: str, step, device, steps: int = 5) -> None:
    """The kernels with the most device time (self CPU time on a CPU) over `steps` steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with path.open("a") as fh:
        fh.write(f"## {row}: {steps} steps\n{prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)}\n")


def fit_row(name: str, mode: str, precision: str, args, scratch: Path) -> dict:
    """`fit` through the real command, in a process of its own (accelerate's state is one per process)."""
    run = scratch / f"fit-{name.replace('/', '_')}-{mode}-{precision}"
    script = ["train/any.py", name] if name.startswith(("timm/", "hf/")) else [f"train/{name}.py"]
    overrides = [
        "model.pretrained=false", f"data.image_size={args.image_size}", f"data.demo_images={args.demo_images}",
        f"data.num_workers={args.workers}", f"train.batch_size={args.batch}", f"train.eval_batch_size={args.batch}",
        "train.epochs=2", f"train.max_steps_per_epoch={args.fit_steps}", f"train.log_every={args.fit_steps}",
        "sampler.name=balanced", f"sampler.num_samples={args.batch * args.fit_steps}",
        f"train.compile={str(mode == 'compiled').lower()}", f"train.compile_backend={args.compile_backend}",
        f"train.compile_mode={args.compile_mode}", f"run.output_dir={run}", "run.progress=false", "run.trackers=[]"]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # gpu_run.sh's wheels too
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": precision, "PYTHONPATH": path}
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    done = subprocess.run([sys.executable, *script, *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=args.fit_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"fit of {name} failed: {done.stderr[-2000:]}")
    line = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"split": "train"' in x][-1]
    return {"images_per_s": line["images_per_s"], "data_wait": line["data_wait"]}


def loader_for(args, scratch: Path):
    ds = load_helsinki(write_demo_data(scratch / "data", args.demo_images, seed=0))
    data = CachedImages(build_cache(ds, 128, scratch / "cache", workers=min(8, os.cpu_count() or 1)), ds.targets)
    return torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True,
                                       num_workers=args.workers, collate_fn=collate_batch,
                                       pin_memory=args.device == "cuda", persistent_workers=args.workers > 0)


def _cells(row: str, part: str, result: dict, flops: float) -> str:
    r = result[part]
    ratio = f"{r['images_per_s'] / result['bare']['images_per_s']:8.3f}" if part == "fit" else f"{'':8s}"
    peak = f"{r['peak_gb']:7.1f}" if part == "bare" else ""
    return f"{row:40s} {part:4s} {r['images_per_s']:8.0f} {r['images_per_s'] * flops:6.1%} {r['data_wait']:6.1%} {ratio} {peak}"


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, help="MODEL:MODE:PRECISION, in the order to run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="per timed window of the bare loop")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--fit-steps", type=int, default=60, help="steps of each of fit's two epochs")
    parser.add_argument("--fit-timeout", type=int, default=400)
    parser.add_argument("--demo-images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--no-fit", action="store_true", help="the bare loop only")
    parser.add_argument("--fit-rows", type=int, default=99, help="only the first N rows also run fit")
    parser.add_argument("--profile", type=Path, help="append a profiler table per row to this file")
    parser.add_argument("--json", type=Path, help="append each row as a JSON line")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as mlic.training.build sets it under CUDA
    scratch = tempfile.TemporaryDirectory(prefix="mlic-gpu-")  # removed at exit: data, caches, runs (GBs)
    os.environ.setdefault("MLIC_CACHE", str(Path(scratch.name) / "mlic-cache"))  # fit's subprocesses share it
    loader = loader_for(args, Path(scratch.name))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, batch {args.batch} at {args.image_size} px, bare: {args.windows} windows "
          f"of {args.steps} steps; fit: epoch 2 of 2 x {args.fit_steps} steps; compile {args.compile_backend}")
    print(f"{'row':40s} {'part':4s} {'img/s':>8s} {'MFU':>6s} {'wait':>6s} {'fit/bare':>8s} {'peak GB':>7s}", flush=True)
    failed = 0
    for i, row in enumerate(args.rows):
        model_name, mode, precision = row.rsplit(":", 2)
        flops = 3 * 2 * GMACS.get(model_name, 0) * 1e9 * (args.image_size / 224) ** 2 / (args.peak_tflops * 1e12)
        result = {"row": row, "device": name, "torch": torch.__version__, "mfu_per_image": flops}
        for part in ("bare", "fit"):  # each part printed (and kept) as soon as it is measured
            if part == "fit" and (args.no_fit or i >= args.fit_rows):
                continue
            try:
                result[part] = bare(model_name, mode, precision, loader, args, device) if part == "bare" else \
                    fit_row(model_name, mode, precision, args, Path(scratch.name))
            except Exception as exc:  # one row's failure (memory, a compile error) leaves the others' figures
                failed += 1
                print(f"{row:40s} {part} failed: {str(exc).splitlines()[-1][:300] if str(exc) else type(exc).__name__}",
                      flush=True)
                break
            finally:
                torch.cuda.empty_cache() if device.type == "cuda" else None
            print(_cells(row, part, result, flops), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
