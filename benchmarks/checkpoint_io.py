"""What a verified checkpoint costs: save, manifest (hash + fsync), verify and load of a ResNet152-size state.

    python benchmarks/checkpoint_io.py [--model resnet152] [--repeats 3] [--dir /scratch]

A torchvision ResNet152 (60 M parameters) with Adam after one step (two moments per weight): ~0.7 GB in
model.safetensors + optimizer.bin. Each repeat times, on one process, accelerate's `save_state` alone (a
checkpoint before manifests: no hash, no fsync), then `RunState.save` as a run calls it
(accelerate's `save_state`, then mlic's files and the manifest: every file hashed with SHA-256 and fsynced,
the folder renamed), the manifest alone (`write_manifest` again on the saved folder: the hashing and fsync
share), `damage` (what a resume verifies: every hash, and the weights-only scan of the pickled files), and
`accelerator.load_state`. Medians over the repeats; the page cache is warm (the files were just written),
as on a resume right after a stop.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from mlic.training.manifest import damage, manifest_bytes, write_manifest
from mlic.training.run_state import RunState, complete_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder in /tmp)")
    args = parser.parse_args()
    import torchvision

    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = getattr(torchvision.models, args.model)(num_classes=14)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model, opt = acc.prepare(model, opt)
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    opt.step()
    times: dict[str, list[float]] = {"save_state alone (before)": [], "save (all)": [], "manifest (hash + fsync)": [],
                                     "verify": [], "load_state": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "checkpoints"
        for step in range(1, args.repeats + 1):
            start = time.perf_counter()  # what a checkpoint cost before it was verified: no manifest, no fsync
            acc.save_state(str(Path(tmp) / "plain"))
            times["save_state alone (before)"].append(time.perf_counter() - start)
            shutil.rmtree(Path(tmp) / "plain")
            start = time.perf_counter()
            path = RunState(global_step=step).save(acc, folder, {"model": args.model}, keep=2)
            times["save (all)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            write_manifest(path)
            times["manifest (hash + fsync)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            assert damage(path) is None
            times["verify"].append(time.perf_counter() - start)
            start = time.perf_counter()
            acc.load_state(str(path))
            times["load_state"].append(time.perf_counter() - start)
        size = manifest_bytes(complete_checkpoints(folder)[-1])
    print(f"{args.model}: checkpoint of {size / 1e9:.2f} GB, {args.repeats} repeats, torch {torch.__version__}")
    for name, values in times.items():
        print(f"{name:26s} median {statistics.median(values):6.2f} s  ({size / 1e6 / statistics.median(values):6.0f} MB/s)  "
              f"all: {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
