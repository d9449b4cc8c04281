"""The engine's overhead: mlic's training loop vs a bare PyTorch loop, same model, batch and data.

    python benchmarks/engine_overhead.py [--models cnn resnet18] [--epochs 4] [--images 2000]

Both loops train on the same in-memory uint8 images (64 px, decoded once), with the same model, batch
size, Adam and BCE, on 2 CPU threads, augmentation off in both (it is the same code in both anyway).
mlic's loop is `fit()` as users run it: sampler, per-step seeding, device-side metric buffers, the loss
log every `train.log_every` steps, the end-of-epoch gather + scikit-learn metrics, TensorBoard, and a
checkpoint every epoch. Throughput counts the training loop plus its checkpoint (evaluation, which the
bare loop does not do, is left out). The two loops alternate in rounds in this one process (this
machine is shared and noisy: alternating spreads its noise over both); figures are medians over the
epochs after the first of each round. The last line is `ratio: <mlic/bare images/s>` (the lowest of
the models).
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
from mlic.data.datasets import load_helsinki, stratified_split
from mlic.data.demo import write_demo_data
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.models import build_model

BATCH = 64


def bare_epoch_rates(model_name: str, images: torch.Tensor, targets: torch.Tensor, epochs: int) -> list[float]:
    """The textbook loop: forward, BCE, backward, Adam step; data already in memory."""
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.name={model_name}", "model.pretrained=false"])
    model, _ = build_model(cfg.model, targets.shape[1])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rates = []
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        start = time.perf_counter()
        steps = len(images) // BATCH
        for i in range(steps):
            idx = order[i * BATCH:(i + 1) * BATCH]
            x = (images[idx].float() / 255 - mean) / std
            loss = loss_fn(model(x), targets[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        rates.append(steps * BATCH / (time.perf_counter() - start))
    return rates


def mlic_epoch_rates(model_name: str, root: Path, cache_dir: Path, out: Path, epochs: int,
                     overrides: tuple[str, ...] = ()) -> tuple[list[float], list[float]]:
    """Per epoch: images/s of the training loop plus its checkpoint, and of the loop alone."""
    from mlic.engine import fit

    cfg = load_config(None, [
        f"model.name={model_name}", "model.pretrained=false", f"data.root={root}", f"data.cache_dir={cache_dir}",
        "data.cache_size=64", "data.image_size=64", "data.num_workers=0", "augment.enabled=false",
        "data.val_fraction=0.05", f"train.batch_size={BATCH}", f"train.epochs={epochs}", "optim.lr=1e-3",
        f"run.output_dir={out}", "run.progress=false", "eval.thresholds=fixed", *overrides,
    ])
    stamps: list[float] = []
    import mlic.engine as engine

    original_train, original_save = engine.train_one_epoch, engine.save_checkpoint

    def timed_train(*args, **kwargs):
        stamps.append(time.perf_counter())
        result = original_train(*args, **kwargs)
        stamps.append(time.perf_counter())
        return result

    def timed_save(*args, **kwargs):
        start = time.perf_counter()
        result = original_save(*args, **kwargs)
        checkpoint_times.append(time.perf_counter() - start)
        return result

    checkpoint_times: list[float] = []
    engine.train_one_epoch, engine.save_checkpoint = timed_train, timed_save
    try:
        fit(cfg)
    finally:
        engine.train_one_epoch, engine.save_checkpoint = original_train, original_save
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    loop = [stamps[2 * i + 1] - stamps[2 * i] for i in range(len(lines))]
    return ([line["images"] / (loop[i] + checkpoint_times[i]) for i, line in enumerate(lines)],
            [line["images"] / loop[i] for i, line in enumerate(lines)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=3, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for mlic's runs (e.g. train.eval_batch_size=64)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="mlic-overhead-"))
    root = write_demo_data(tmp / "data", args.images, seed=0)
    ds = load_helsinki(root)
    train_idx, _ = stratified_split(ds.targets, 0.05, 0)
    cache = open_cache(build_cache(ds, 64, tmp / "cache"))
    images = torch.from_numpy(np.ascontiguousarray(cache[ds.indices[train_idx]]))
    targets = torch.from_numpy(ds.targets[train_idx].astype(np.float32))
    print(f"{len(images)} training images at 64 px, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    ratios = []
    for name in args.models:
        bare, ours, loop_only = [], [], []
        for r in range(args.rounds):
            bare += bare_epoch_rates(name, images, targets, args.epochs)[1:]
            with_ckpt, without = mlic_epoch_rates(name, root, tmp / "cache", tmp / f"run-{name}-{r}", args.epochs,
                                                  tuple(args.overrides))
            ours += with_ckpt[1:]
            loop_only += without[1:]
        b, m, lo = statistics.median(bare), statistics.median(ours), statistics.median(loop_only)
        ratios.append(m / b)
        print(f"{name:9s} bare {b:7.1f} img/s   mlic {m:7.1f} img/s   ratio {m / b:.3f}   "
              f"(loop without its checkpoint: {lo:.1f} img/s, ratio {lo / b:.3f}; per epoch bare "
              f"{', '.join(f'{r:.0f}' for r in bare)}; mlic {', '.join(f'{r:.0f}' for r in ours)})")
    print(f"ratio: {min(ratios):.3f}")


if __name__ == "__main__":
    main()
