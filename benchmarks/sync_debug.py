"""Does a training step wait on the GPU? A real `fit` (loader, on-device augmentation, model, loss, optimizer,
EMA, the step bookkeeping) with `torch.cuda.set_sync_debug_mode("error")` over a window of its steps.

    python benchmarks/sync_debug.py [--model vit] [--steps 40] [--window 10 30] [--compile] [--device cuda|cpu]

The window opens at the start of step `--window[0]`'s forward pass and closes at the start of step
`--window[1]`'s, so it holds whole steps: each one's forward and backward passes, optimizer step, EMA update,
bookkeeping, and the fetch of the next batch (accelerate's host-to-device copy). Log steps, which read the loss
back by design every `train.log_every` steps, are kept outside it (log_every is set past the window). Any
synchronising CUDA call inside raises, and the script exits 1 with the traceback that names it.

On a CPU (`--device cpu`, the suite's run) nothing can wait on a device: the same window instead refuses
reading a tensor's value on the host (`.item()`, `bool(t)`, `int(t)`: aten._local_scalar_dense), the
commonest host sync, through a TorchDispatchMode. It proves the harness and the loop's Python, not the copies.
The recipe turns on every piece that runs per step: RandAugment, Cutout, MixUp, CutMix, ASL, the EMA and the
balanced sampler. The last line is `sync-debug: <n> steps in the window, no host sync` or the error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mlic.training.engine as engine
from mlic.config import load_config

RECIPE = ["augment.policy=randaugment", "augment.cutout=0.5", "augment.mixup=0.4", "augment.cutmix=1.0",
          "loss.name=asl", "train.ema_decay=0.99", "sampler.name=balanced"]  # sampler.num_samples: the steps


class HostReads(TorchDispatchMode):
    """On the CPU: refuse reading a tensor's value on the host (what `.item()` is on a GPU: a sync)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("a tensor's value was read on the host inside the window (.item(), bool(), int(), "
                               "float() of a tensor): on a GPU this waits for every queued kernel")
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--window", type=int, nargs=2, default=(10, 30), metavar=("FIRST", "END"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--compile", action="store_true", help="train.compile=true (the window then runs the graphs)")
    parser.add_argument("--out", type=Path, help="the run folder (default: a temporary one)")
    args = parser.parse_args(argv)
    first, end = args.window
    if not 1 <= first < end <= args.steps:
        parser.error("--window FIRST END needs 1 <= FIRST < END <= --steps")
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    scratch = tempfile.TemporaryDirectory(prefix="mlic-sync-")
    out = args.out or Path(scratch.name) / "run"
    cfg = load_config(None, [
        f"model.name={args.model}", "model.pretrained=false", f"data.image_size={args.image_size}",
        "data.demo_images=400", f"sampler.num_samples={args.batch * args.steps}", f"train.batch_size={args.batch}",
        f"train.eval_batch_size={args.batch}", "train.epochs=1", f"train.max_steps_per_epoch={args.steps}",
        f"train.log_every={args.steps + 1}", f"train.compile={str(args.compile).lower()}",
        f"run.output_dir={out}", "run.progress=false", "run.trackers=[]", *RECIPE])
    calls, window = 0, {"mode": None}
    forward_backward = engine.forward_backward

    def opening(mode) -> None:
        if args.device == "cuda":
            torch.cuda.set_sync_debug_mode(mode)
        elif mode == "error":
            window["mode"] = HostReads()
            window["mode"].__enter__()
        else:
            window["mode"].__exit__(None, None, None)

    def watched(*a, **kw):
        nonlocal calls
        calls += 1
        if calls == first:
            opening("error")
        elif calls == end:
            opening("default")
        return forward_backward(*a, **kw)

    engine.forward_backward = watched
    try:
        engine.fit(cfg)
    finally:
        engine.forward_backward = forward_backward
        if args.device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        elif window["mode"] is not None and calls < end:  # stopped inside the window: leave no mode behind
            window["mode"].__exit__(None, None, None)
    if calls < end:
        print(f"sync-debug: the run took {calls} steps, fewer than the window's end {end}", file=sys.stderr)
        return 1
    print(f"sync-debug: {end - first} steps in the window ({args.model}, {args.device}, "
          f"compile {args.compile}), no host sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
