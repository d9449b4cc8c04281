"""Decode cost of plain 8-bit RGB JPEGs: `decode_image` against the decoder it replaced, side by side.

    git archive 4b514b2 mlic | tar -x -C /tmp/before    # the tree before decode_image (its `open_rgb`)
    python benchmarks/decode_ab.py --old /tmp/before [--images 2000] [--rounds 30]

Both decoders run in this one process on the same demo JPEGs (RGB ones only: the common case),
alternating round by round (and which goes first), so a busy machine slows both alike. Prints each
side's median rate and the median per-round time ratio new/old: above 1.05 the fast path got dearer.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from mlic.data.decode import DecodeSettings, decode_image
from mlic.data.demo import write_demo_data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, help="a folder holding mlic/ from before decode_image")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("old_datasets", Path(args.old) / "mlic" / "data" / "datasets.py")
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_datasets"] = old
    spec.loader.exec_module(old)
    scratch = tempfile.TemporaryDirectory(prefix="mlic-bench-")  # removed at exit
    root = write_demo_data(Path(scratch.name) / "data", args.images, seed=0)
    files = [p for p in sorted((root / "images").iterdir()) if Image.open(p).mode == "RGB"]
    settings = DecodeSettings.from_config()

    def run_old():
        for p in files:
            old.open_rgb(p)

    def run_new():
        for p in files:
            decode_image(p, settings)

    run_old(), run_new()  # the files into the page cache
    times: dict = {run_old: [], run_new: []}
    for r in range(args.rounds):
        for fn in (run_old, run_new) if r % 2 == 0 else (run_new, run_old):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    ratios = [n / o for n, o in zip(times[run_new], times[run_old])]
    print(f"{len(files)} RGB JPEGs, {args.rounds} rounds: old {len(files) / statistics.median(times[run_old]):.0f} img/s, "
          f"new {len(files) / statistics.median(times[run_new]):.0f} img/s")
    print(f"new/old time per round: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
