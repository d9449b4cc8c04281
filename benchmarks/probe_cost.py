"""What the build's input check costs: one eval-mode forward pass of one image (`mlic.models.probe`), which
names a size a network cannot take before any data is loaded, beside the build of the model itself.

    python benchmarks/probe_cost.py [--models cnn resnet152 densenet161 vit] [--size 224] [--repeats 5]

Random weights (`model.pretrained=false`), one process on the CPU, the threads torch chooses. Medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mlic.config import ModelConfig
from mlic.models import build_model, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet152", "densenet161", "vit"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| model | build s | probe s (one image) | probe / build |")
    print("|---|---|---|---|")
    for name in args.models:
        builds, probes = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model, _ = build_model(ModelConfig(name=name, pretrained=False), 14)
            builds.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert probe(model, args.size) is None
            probes.append(time.perf_counter() - start)
        build, cost = statistics.median(builds), statistics.median(probes)
        print(f"| {name} | {build:.2f} | {cost:.3f} | {cost / build:.2f} |")


if __name__ == "__main__":
    main()
