"""Real photos for multi-label tests: mosaics of Fashion-MNIST product photos in the course layout.

Debian's `dataset-fashion-mnist` (MIT) holds 70,000 28x28 photos of 10 classes. A mosaic is a 128x128
canvas of 2x2 cells holding 0-4 tiles; its labels are the union of its tiles' classes. Class frequencies
are made imbalanced on purpose (geometric weights), and a test folder takes tiles from t10k only.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion(split: str, folder: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return (read_idx(folder / f"{prefix}-images-idx3-ubyte.gz"), read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz"))


def write_mosaics(out: str | Path, images: int, split: str = "train", seed: int = 0, labelled: bool = True,
                  folder: Path = FASHION_DIR) -> Path:
    """`images` mosaics in the helsinki layout; `labelled=False` writes a test folder (images only)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tiles, classes = load_fashion(split, folder)
    by_class = [np.flatnonzero(classes == c) for c in range(len(CLASSES))]
    rng = np.random.default_rng(seed)
    weights = 0.6 ** np.arange(len(CLASSES))  # class 0 is ~100x as frequent as class 9
    weights /= weights.sum()
    members: dict[str, list[int]] = {name: [] for name in CLASSES}
    for number in range(1, images + 1):
        canvas = np.zeros((128, 128), dtype=np.uint8) + rng.integers(0, 40, dtype=np.uint8)
        count = rng.choice(5, p=[0.1, 0.3, 0.3, 0.2, 0.1])
        labels = set()
        for cell in rng.permutation(4)[:count]:
            c = int(rng.choice(len(CLASSES), p=weights))
            tile = Image.fromarray(tiles[rng.choice(by_class[c])]).resize((56, 56), Image.Resampling.BILINEAR)
            y0, x0 = 64 * (cell // 2) + rng.integers(0, 9), 64 * (cell % 2) + rng.integers(0, 9)
            canvas[y0:y0 + 56, x0:x0 + 56] = np.maximum(canvas[y0:y0 + 56, x0:x0 + 56], np.asarray(tile))
            labels.add(CLASSES[c])
        Image.fromarray(canvas).convert("RGB").save(out / "images" / f"im{number}.jpg", quality=92)
        for name in labels:
            members[name].append(number)
    if labelled:
        (out / "annotations").mkdir(exist_ok=True)
        for name, numbers in members.items():
            (out / "annotations" / f"{name}.txt").write_text("".join(f"{n}\n" for n in numbers))
    return out
