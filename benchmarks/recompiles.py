"""Does `train.compile=true` compile once, or again every epoch? Counts TorchDynamo compilations per epoch.

    python benchmarks/recompiles.py [--model cnn] [--epochs 3] [--backend inductor]

A `fit()` of the demo corpus (small images, a few steps per epoch: what is counted is compilations, not
speed). Training and evaluation are different graphs (train vs eval mode, a smaller last eval batch), so
epoch 1 compiles a few; a healthy loop compiles nothing after it. The last line is
`compiles after epoch 1: <n>`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch._dynamo.utils as dynamo_utils

import mlic.training.engine as engine
import mlic.training.evaluation as evaluation
from mlic.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", default="inductor", help="train.compile_backend: inductor (what users get), aot_eager or eager")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="mlic-recompiles-")  # removed at exit: data, caches, runs (GBs)
    tmp = Path(scratch.name)
    per_epoch: list[int] = []
    original_evaluate = evaluation.evaluate_epoch

    def counted_evaluate(*a, **kw):  # the epoch's training and evaluation both done
        result = original_evaluate(*a, **kw)
        per_epoch.append(dynamo_utils.counters["stats"]["unique_graphs"] - sum(per_epoch))
        return result

    engine.evaluate_epoch = counted_evaluate
    try:
        engine.fit(load_config(None, [
            f"model.name={args.model}", "model.pretrained=false", "data.demo_images=300", "data.image_size=32",
            "data.num_workers=0", "train.batch_size=16", "train.eval_batch_size=40", f"train.epochs={args.epochs}",
            "train.compile=true", f"train.compile_backend={args.backend}", f"run.output_dir={tmp / 'run'}",
            "run.progress=false",
        ]))
    finally:
        engine.evaluate_epoch = original_evaluate
    print(f"torch {torch.__version__}, backend {args.backend}: graphs compiled per epoch {per_epoch}")
    print(f"compiles after epoch 1: {sum(per_epoch[1:])}")


if __name__ == "__main__":
    main()
