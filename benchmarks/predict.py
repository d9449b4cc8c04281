"""Inference throughput of an exported model: `mlic.load_model(...).predict(paths)` (what `mlic predict`
does), the loader path `mlic evaluate` uses (DataLoader + accelerate), and the ONNX export in onnxruntime.

    python benchmarks/predict.py [--images 1000] [--model cnn|resnet18] [--repeats 3] [--threads 1,2,4]

A model of `--model` is trained for one step on the demo corpus (the figures do not depend on its
weights), exported, and then each path predicts the same `--images` JPEGs (128 px, the files in the page
cache). "predict" is the whole call, decoding included; "onnxruntime" gets the decoded uint8 squares
(`Predictor.prepare`, timed apart) and runs the graph alone. Prints the median images/s of `--repeats`
calls per path, and the largest difference of probabilities between the paths.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def median_rate(fn, n: int, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times), out


def train_tiny(model: str, root: Path, images: int) -> Path:
    from mlic.config import load_config
    from mlic.training.engine import fit

    repo = Path(__file__).resolve().parent.parent
    run = root / "run"
    overrides = [f"data.demo_images={images}", "train.epochs=1", "train.max_steps_per_epoch=1", "run.progress=false",
                 f"run.output_dir={run}", f"model.name={model}", "model.pretrained=false"]
    fit(load_config(repo / "configs" / "demo.yaml", overrides))
    return run / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2,4", help="decode threads of load_model(..., workers=N)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    import mlic
    from mlic.data.demo import demo_root
    from mlic.serving.inference import evaluate_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = train_tiny(args.model, Path(tmp), args.images)
        paths = sorted((demo_root(args.images, 0) / "images").glob("*.jpg"))[: args.images]
        print(f"{len(paths)} images, model {args.model}, torch threads {torch.get_num_threads()}")
        results = {}
        for workers in map(int, args.threads.split(",")):
            model = mlic.load_model(model_dir, device="cpu", batch_size=64, workers=workers)
            rate, out = median_rate(lambda m=model: m.predict(paths), len(paths), args.repeats)
            results[f"predict, {workers} decode thread(s)"] = (rate, out.probabilities)
        rate, out = median_rate(lambda: evaluate_model(str(model_dir), None, "all", batch_size=64, workers=2),
                                len(paths), args.repeats)
        results["mlic evaluate --split all (loader, 2 workers; load and metrics in)"] = (rate, None)
        onnx_rates(model_dir, paths, args.repeats, results)
        reference = next(iter(results.values()))[1]
        for name, (rate, probs) in results.items():
            diff = "" if probs is None else f"  max |diff| {np.abs(probs - reference).max():.1e}"
            print(f"{name:55s} {rate:9.0f} images/s{diff}")


def onnx_rates(model_dir: Path, paths, repeats: int, results: dict) -> None:
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: pip install 'mlic[onnx]'")
        return
    import mlic
    from mlic.serving.onnx_export import export_onnx_command

    onnx_file = model_dir.parent / "model.onnx"
    export_onnx_command(str(model_dir), str(onnx_file), 18, True)
    model = mlic.load_model(model_dir, device="cpu", workers=2)
    rate, batch = median_rate(lambda: torch.stack([model.prepare(p) for p in paths]).numpy(), len(paths), repeats)
    results["decode only (Predictor.prepare, 1 thread)"] = (rate, None)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def run() -> np.ndarray:
        return np.concatenate([session.run(None, {"images": batch[i:i + 64]})[0] for i in range(0, len(batch), 64)])

    rate, probs = median_rate(run, len(paths), repeats)
    results["onnxruntime on decoded squares (batch 64)"] = (rate, probs)
    torch_model = mlic.load_model(model_dir, device="cpu")
    tensor = torch.from_numpy(batch)
    rate, probs = median_rate(lambda: np.concatenate([torch_model._forward(tensor[i:i + 64])
                                                      for i in range(0, len(tensor), 64)]), len(paths), repeats)
    results["torch on decoded squares (batch 64)"] = (rate, probs)


if __name__ == "__main__":
    main()
