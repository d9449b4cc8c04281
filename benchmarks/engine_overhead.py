"""The engine's overhead: mlic's training loop vs a bare PyTorch loop, same model, batch and data.

    python benchmarks/engine_overhead.py [--models cnn resnet18] [--epochs 12] [--images 2000]

Both loops train on the same in-memory uint8 images (64 px, decoded once), with the same model, batch
size, Adam and BCE, on 2 CPU threads, augmentation off in both (it is the same code in both anyway).
mlic's loop is `fit()` as users run it, default config: sampler, per-step seeding, device-side metric
buffers, the loss log every `train.log_every` steps, the end-of-epoch gather + scikit-learn metrics,
TensorBoard, the optimizer as mlic builds it, and a synchronous checkpoint every epoch. Its throughput counts the
training loop plus its checkpoint (evaluation, which the bare loops do not do, is left out).

Two bare loops: the textbook one (`torch.optim.Adam(params, lr)`, PyTorch's default implementation)
and the same loop with mlic's optimizer implementation (`fused=True`), which isolates what the engine
itself costs. The loops are interleaved epoch by epoch in this one process (one epoch of each bare loop
next to each of mlic's, inside the same `fit()`, alternately after and before it): this machine is shared
and noisy, neighbours in time see the same noise, and the order costs each loop the same. Figures are medians over the epochs after the first; ratios are medians of the
per-epoch ratios of neighbouring epochs. The last line is `ratio: <mlic/bare images/s>` against the
textbook loop (the lowest over the models).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlic.config import load_config
from mlic.data.cache import build_cache, open_cache
from mlic.data.demo import write_demo_data
from mlic.data.registry import load_helsinki
from mlic.data.split import stratified_split
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.models import build_model

BATCH = 64


class BareLoop:
    """The textbook loop: forward, BCE, backward, Adam step; data already in memory."""

    def __init__(self, cfg, images: torch.Tensor, targets: torch.Tensor, mlic_optimizer: bool):
        """The model of mlic's run `cfg`; PyTorch's default Adam, or the optimizer mlic builds for `cfg`."""
        from mlic.training.engine import build_optimizer

        torch.manual_seed(0)
        self.model, _ = build_model(cfg.model, targets.shape[1])
        self.opt = (build_optimizer(cfg, self.model) if mlic_optimizer
                    else torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr))
        self.images, self.targets, self.epoch = images, targets, 0
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def epoch_rate(self) -> tuple[float, float]:
        """Images per wall-clock second and per CPU second of this process."""
        self.model.train()
        self.epoch += 1
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.epoch))
        steps = len(self.images) // BATCH
        start = now()
        for i in range(steps):
            idx = order[i * BATCH:(i + 1) * BATCH]
            x = (self.images[idx].float() / 255 - self.mean) / self.std
            loss = self.loss_fn(self.model(x), self.targets[idx])
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        wall, cpu = since(start)
        return steps * BATCH / wall, steps * BATCH / cpu


def interleaved(model_name: str, root: Path, cache_dir: Path, out: Path, epochs: int, images: torch.Tensor,
                targets: torch.Tensor, overrides: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """Per epoch, images/s of: the textbook loop, the bare loop with mlic's optimizer, and mlic's loop plus
    its checkpoint. One `fit()`; the bare epochs run just after its odd training epochs and just before its
    even ones, so that each loop follows the others as often.

    mlic's time for an epoch: its training loop plus its checkpoint (`engine.save_checkpoint`, accelerate's
    `save_state`, synchronous), timed apart so that the report can show what the checkpoint costs."""
    import mlic.training.engine as engine

    cfg = load_config(None, [
        f"model.name={model_name}", "model.pretrained=false", f"data.root={root}", f"data.cache_dir={cache_dir}",
        "data.cache_size=64", "data.image_size=64", "data.num_workers=0", "augment.enabled=false",
        "data.val_fraction=0.05", f"train.batch_size={BATCH}", f"train.epochs={epochs}", "optim.lr=1e-3",
        f"run.output_dir={out}", "run.progress=false", "eval.thresholds=fixed", *overrides,
    ])
    textbook, same_opt = BareLoop(cfg, images, targets, False), BareLoop(cfg, images, targets, True)
    rates: dict[str, list[float]] = {"textbook": [], "same_optimizer": [], "textbook_cpu": [], "same_optimizer_cpu": []}
    seconds: dict[str, list[float]] = {"loop": [], "save": [], "loop_cpu": [], "save_cpu": []}
    original_train, original_save = engine.train_one_epoch, engine.save_checkpoint

    def bare_epochs():
        for key, loop in (("textbook", textbook), ("same_optimizer", same_opt)):
            wall, cpu = loop.epoch_rate()
            rates[key].append(wall)
            rates[f"{key}_cpu"].append(cpu)

    def timed_train(*args, **kwargs):
        bare_first = len(seconds["loop"]) % 2 == 1  # alternate: a loop that follows another runs on cold caches
        if bare_first:
            bare_epochs()
        start = now()
        result = original_train(*args, **kwargs)
        wall, cpu = since(start)
        seconds["loop"].append(wall)
        seconds["loop_cpu"].append(cpu)
        if not bare_first:
            bare_epochs()
        return result

    def timed_save(*args, **kwargs):
        start = now()
        result = original_save(*args, **kwargs)
        wall, cpu = since(start)
        seconds["save"].append(wall)
        seconds["save_cpu"].append(cpu)
        return result

    engine.train_one_epoch, engine.save_checkpoint = timed_train, timed_save
    try:
        engine.fit(cfg)
    finally:
        engine.train_one_epoch, engine.save_checkpoint = original_train, original_save
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    for suffix in ("", "_cpu"):
        rates[f"mlic{suffix}"] = [line["images"] / (loop + save) for line, loop, save
                                  in zip(lines, seconds[f"loop{suffix}"], seconds[f"save{suffix}"], strict=True)]
    rates["save_s"] = seconds["save"]
    return rates


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process, a background write included) since `start`."""
    return time.perf_counter() - start[0], time.process_time() - start[1]


def paired_ratio(ours: list[float], bare: list[float]) -> float:
    return statistics.median(o / b for o, b in zip(ours[1:], bare[1:], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=12, help="the first is left out as warm-up")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for mlic's run (e.g. optim.fused=off)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    scratch = tempfile.TemporaryDirectory(prefix="mlic-overhead-")  # removed at exit: data, caches, runs (GBs)
    tmp = Path(scratch.name)
    root = write_demo_data(tmp / "data", args.images, seed=0)
    ds = load_helsinki(root)
    train_idx, _ = stratified_split(ds.targets, 0.05, 0)
    cache = open_cache(build_cache(ds, 64, tmp / "cache"))
    images = torch.from_numpy(np.ascontiguousarray(cache[train_idx]))
    targets = torch.from_numpy(ds.targets[train_idx].astype(np.float32))
    print(f"{len(images)} training images at 64 px, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.epochs} interleaved epochs per model")
    ratios = []
    for name in args.models:
        r = interleaved(name, root, tmp / "cache", tmp / f"run-{name}", args.epochs, images, targets,
                        tuple(args.overrides))
        med = {k: statistics.median(v[1:] or v) for k, v in r.items()}
        ratio = paired_ratio(r["mlic"], r["textbook"])
        ratios.append(ratio)
        print(f"{name}: images/s (median)  textbook bare {med['textbook']:.1f}  bare with mlic's optimizer "
              f"{med['same_optimizer']:.1f}  mlic {med['mlic']:.1f}  (checkpoint: {med['save_s']:.3f} s/epoch, "
              f"counted in mlic's rate)")
        print(f"{name}: ratio mlic/textbook {ratio:.3f}   mlic/same-optimizer bare "
              f"{paired_ratio(r['mlic'], r['same_optimizer']):.3f}   (per CPU second of the process, less exposed "
              f"to neighbours: {paired_ratio(r['mlic_cpu'], r['textbook_cpu']):.3f} and "
              f"{paired_ratio(r['mlic_cpu'], r['same_optimizer_cpu']):.3f})")
        for key in ("textbook", "same_optimizer", "mlic"):
            print(f"  per epoch {key}: {', '.join(f'{v:.0f}' for v in r[key])}")
    print(f"ratio: {min(ratios):.3f}")


if __name__ == "__main__":
    main()
