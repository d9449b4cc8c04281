"""Issue 28's acceptance: a csv run of 100,080 labels (OpenImages' full class list) trains one epoch and
evaluates in minutes, and a SIGTERM during its evaluation's metrics stops it with a checkpoint.

    python benchmarks/labels_100k.py [--train 300] [--val 1000] [--labels 100080] [--sigterm-after 2] [--out DIR]

Both runs are in this process (fit on the main thread, as `mlic train` runs it). Run 1 trains and evaluates
epoch 1 and times each phase. Run 2 is the same run from scratch; --sigterm-after seconds into its evaluation's metric
computation a timer thread sends this process SIGTERM; the figure is the time from the signal to fit's
return, its checkpoint saved (the trained epoch: a resume evaluates it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import mlic.training.engine
import mlic.training.evaluation
from mlic.config import load_config

REPO = Path(__file__).resolve().parent.parent


def write_split(root: Path, name: str, images: int, labels: int, seed: int) -> None:
    """ROOT/NAME.csv: every label positive in two images (so each split holds every label), 16x16 images."""
    rng = np.random.default_rng(seed)
    positives: list[list[int]] = [[] for _ in range(images)]
    for k in range(labels):
        positives[k % images].append(k)
        positives[(7 * k + 1) % images].append(k)
    (root / name).mkdir(parents=True)
    lines = ["path,labels"]
    for i in range(images):
        path = f"{name}/{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / path)
        lines.append(f"{path},{'|'.join(f'/m/{k:06x}' for k in sorted(set(positives[i])))}")
    (root / f"{name}.csv").write_text("\n".join(lines) + "\n")


def timed(module, name: str, times: dict, on_start=None):
    """Wrap module.name to record its wall time in `times[name]`."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        if on_start is not None:
            on_start()
        try:
            return original(*args, **kwargs)
        finally:
            times.setdefault(name, []).append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    return original


def run(root: Path, out: Path, sigterm_after: float | None) -> dict:
    times: dict = {}
    sent: dict = {}

    def send() -> None:
        sent["at"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(sigterm_after or 0, send)

    originals = [(mlic.training.engine, "train_one_epoch", timed(mlic.training.engine, "train_one_epoch", times)),
                 (mlic.training.engine, "evaluate_epoch", timed(mlic.training.engine, "evaluate_epoch", times)),
                 (mlic.training.evaluation, "split_metrics", timed(mlic.training.evaluation, "split_metrics", times,
                                                          timer.start if sigterm_after is not None else None))]
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "data.format=csv", f"data.root={root}", "data.split=train", "data.val_split=val", "data.image_size=32",
        "train.epochs=1", "train.batch_size=32", "eval.thresholds=per_label", "run.progress=false",
        f"run.output_dir={out}"])
    start = time.perf_counter()
    try:
        result = mlic.training.engine.fit(cfg)
    finally:
        timer.cancel()  # fit returned first: no signal after its handlers are gone
        for module, name, original in originals:
            setattr(module, name, original)
    end = time.perf_counter()
    report = {"total_s": end - start, **{k: v[0] for k, v in times.items()}, "stopped": "stopped" in result,
              "checkpoints": sorted(p.name for p in (out / "checkpoints").glob("*"))}
    if "at" in sent:
        report["sigterm_to_return_s"] = end - sent["at"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=100_080)
    parser.add_argument("--sigterm-after", type=float, default=2.0, help="seconds into run 2's metrics")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="labels100k-"))
    try:
        start = time.perf_counter()
        write_split(work / "data", "train", args.train, args.labels, seed=0)
        write_split(work / "data", "val", args.val, args.labels, seed=1)
        print(f"data: {args.train} + {args.val} images x {args.labels:,} labels in {time.perf_counter() - start:.1f} s")
        print("run 1 (train + evaluate):", run(work / "data", work / "run1", None))
        print(f"run 2 (SIGTERM {args.sigterm_after:g} s into the metrics):",
              run(work / "data", work / "run2", args.sigterm_after))
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
