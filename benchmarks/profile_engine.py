"""Where a `fit()` spends its time on this CPU: cProfile of a short run, split into the model's own work
(forward, backward, optimizer step) and everything mlic adds around it.

    python benchmarks/profile_engine.py [--model resnet18] [--epochs 2] [--top 25]

The run: 2,000 demo images at 64 px, batch 64, 2 threads, no augmentation, the default config otherwise
(checkpoint every epoch, evaluation, TensorBoard). A first one-epoch run warms caches and is not
profiled. Prints the split, then the `--top` functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch

from mlic.config import load_config
from mlic.data.demo import write_demo_data
from mlic.training.engine import fit

PARTS = {  # (file suffix, function name) -> part; cumulative times, not overlapping within the loop
    ("torch/autograd/__init__.py", "backward"): "backward",
    ("torch/optim/optimizer.py", "wrapper"): "optimizer step",
    ("mlic/training/engine.py", "train_one_epoch"): "training loop (all)",
    ("mlic/training/engine.py", "evaluate"): "evaluation",
    ("mlic/training/engine.py", "save_checkpoint"): "checkpoint",
    ("mlic/training/engine.py", "export_best"): "export of the best model",
    ("mlic/training/run_log.py", "_data_figures"): "figures 1-3 (once per run)",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(2)
    scratch = tempfile.TemporaryDirectory(prefix="mlic-profile-")  # removed at exit: data, caches, runs (GBs)
    tmp = Path(scratch.name)
    root = write_demo_data(tmp / "data", 2000, seed=0)

    def cfg(out: str, epochs: int):
        return load_config(None, [
            f"model.name={args.model}", "model.pretrained=false", f"data.root={root}", f"data.cache_dir={tmp / 'cache'}",
            "data.cache_size=64", "data.image_size=64", "data.num_workers=0", "augment.enabled=false",
            "data.val_fraction=0.05", "train.batch_size=64", f"train.epochs={epochs}", "optim.lr=1e-3",
            f"run.output_dir={tmp / out}", "run.progress=false", "eval.thresholds=fixed",
        ])

    fit(cfg("warm", 1))
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    fit(cfg("run", args.epochs))
    profile.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profile)
    found: dict[str, float] = {}
    forward = 0.0
    for (path, _, func), (_, _, _, cumulative, callers) in stats.stats.items():
        for (suffix, name), part in PARTS.items():
            if path.endswith(suffix) and func == name:
                found[part] = found.get(part, 0.0) + cumulative
        # forward: the nn.Module calls made by the training loop itself (model, loss, device transform)
        if path.endswith("torch/nn/modules/module.py") and func == "_wrapped_call_impl":
            forward += sum(c[3] for (caller, _, caller_func), c in callers.items()
                           if caller.endswith("mlic/training/engine.py") and caller_func == "train_one_epoch")
    loop = found.get("training loop (all)", 0.0)
    model_work = found.get("backward", 0.0) + found.get("optimizer step", 0.0) + forward
    print(f"{args.model}, {args.epochs} epochs, fit() {total:.2f} s (profiled)")
    print(f"  training loop             {loop:7.2f} s")
    print(f"    forward: model, loss,   {forward:7.2f} s")
    print("      device transform")
    for part in ("backward", "optimizer step"):
        print(f"    {part:23s} {found.get(part, 0.0):7.2f} s")
    print(f"    the rest of the loop    {loop - model_work:7.2f} s  ({(loop - model_work) / loop:.1%}: sampler, loader, "
          f"seeding, finiteness flag, output buffers, metrics, logging)")
    for part in ("evaluation", "checkpoint", "export of the best model", "figures 1-3 (once per run)"):
        print(f"  {part:25s} {found.get(part, 0.0):7.2f} s")
    print()
    stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
