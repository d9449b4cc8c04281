"""One dataset interface for every format: sample i = (image, multi-hot float target, i)."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mlic.errors import DataError

IMAGE_NAME = re.compile(r"^im(\d+)\.jpe?g$", re.IGNORECASE)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully and convert it to RGB (grayscale, CMYK, palette and alpha images too)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); run `mlic check-data` on the dataset") from None


class MultilabelImages(torch.utils.data.Dataset):
    """Images with multi-hot targets, whatever their source.

    `targets` is an (N, C) uint8 array (all zeros for an image with no label); `names` are file names
    (for results files and error analysis); `read(i)` returns image i as an RGB PIL image. `indices`
    restricts the dataset to a subset without copying anything.
    """

    def __init__(
        self,
        label_names: Sequence[str],
        targets: np.ndarray,
        names: Sequence[str],
        read: Callable[[int], Image.Image],
        source: str,
        fingerprint: str,
        indices: np.ndarray | None = None,
        transform: Callable | None = None,
    ):
        self.label_names = list(label_names)
        self.all_targets = targets.astype(np.uint8, copy=False)
        self.all_names = list(names)
        self.read_base = read
        self.source = source
        self.fingerprint = fingerprint  # changes when the source changes: keys the decoded cache
        self.indices = np.arange(len(names)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.skipped: list[int] = []  # rows left out as unreadable (data.skip_bad)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> np.ndarray:
        return self.all_targets[self.indices]

    @property
    def names(self) -> list[str]:
        return [self.all_names[i] for i in self.indices]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def read(self, i: int) -> Image.Image:
        return self.read_base(int(self.indices[i]))

    def subset(self, indices: np.ndarray, transform: Callable | None = None) -> MultilabelImages:
        return MultilabelImages(
            self.label_names, self.all_targets, self.all_names, self.read_base, self.source,
            self.fingerprint, self.indices[np.asarray(indices)], transform,
        )

    def __getitem__(self, i: int):
        image = self.read(i)
        x = self.transform(image) if self.transform is not None else image
        return x, torch.from_numpy(self.all_targets[self.indices[i]].astype(np.float32)), i


def _file_fingerprint(paths: Sequence[Path], extra: str) -> str:
    import hashlib

    h = hashlib.sha1(extra.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def image_number(name: str) -> int | None:
    m = IMAGE_NAME.match(name)
    return int(m.group(1)) if m else None


def list_helsinki_images(images_dir: Path) -> list[Path]:
    """The corpus images in image-number order (im1.jpg, im2.jpg, ... im20001.jpg for the test set)."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found (expected ROOT/images/im{{N}}.jpg)")
    files = [p for p in images_dir.iterdir() if image_number(p.name) is not None]
    if not files:
        raise DataError(f"{images_dir}: no images named im{{N}}.jpg")
    return sorted(files, key=lambda p: image_number(p.name))


def annotation_lines(path: Path) -> Iterator[tuple[int, str, int | None]]:
    """(line number, text, image number or None when not an integer) for each non-blank line."""
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = line.strip()
        if text:
            try:
                yield lineno, text, int(text)
            except ValueError:
                yield lineno, text, None


def read_annotation(path: Path, known_numbers: set[int]) -> set[int]:
    numbers = set()
    for lineno, text, number in annotation_lines(path):
        if number is None:
            raise DataError(f"{path}:{lineno}: {text!r} is not an image number")
        if number not in known_numbers:
            raise DataError(f"{path}:{lineno}: image im{number}.jpg not found in images/")
        numbers.add(number)
    return numbers


def load_helsinki(root: str | Path) -> MultilabelImages:
    """ROOT/images/im{N}.jpg and ROOT/annotations/{label}.txt (1-based image numbers).

    Without an annotations folder the images are a test set: no labels, all-zero targets.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found")
    files = list_helsinki_images(root / "images")
    numbers = [image_number(p.name) for p in files]
    row_of = {n: i for i, n in enumerate(numbers)}
    ann_dir = root / "annotations"
    label_names: list[str] = []
    targets = np.zeros((len(files), 0), dtype=np.uint8)
    ann_files: list[Path] = []
    if ann_dir.exists():
        ann_files = sorted(ann_dir.glob("*.txt"))
        if not ann_files:
            raise DataError(f"{ann_dir}: annotations folder has no {{label}}.txt files")
        label_names = [p.stem for p in ann_files]
        targets = np.zeros((len(files), len(ann_files)), dtype=np.uint8)
        known = set(numbers)
        for c, path in enumerate(ann_files):
            for n in read_annotation(path, known):
                targets[row_of[n], c] = 1
    return MultilabelImages(
        label_names, targets, [p.name for p in files], lambda i: open_rgb(files[i]), str(root),
        _file_fingerprint(files + ann_files, "helsinki"),
    )


def load_csv(root: str | Path) -> MultilabelImages:
    """ROOT/labels.csv (or data.csv) with columns path,labels; labels '|'-separated, may be empty."""
    root = Path(root)
    manifest = next((root / n for n in ("labels.csv", "data.csv") if (root / n).is_file()), None)
    if manifest is None:
        raise DataError(f"{root}: no labels.csv or data.csv")
    rows: list[tuple[Path, list[str]]] = []
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{manifest}:1: header must have columns path,labels (found {reader.fieldnames})")
        for lineno, row in enumerate(reader, start=2):
            path = root / (row["path"] or "").strip()
            if not row["path"] or not path.is_file():
                raise DataError(f"{manifest}:{lineno}: image {row['path']!r} not found")
            labels = [s.strip() for s in (row["labels"] or "").split("|") if s.strip()]
            rows.append((path, labels))
    if not rows:
        raise DataError(f"{manifest}: no rows")
    label_names = sorted({label for _, labels in rows for label in labels})
    col = {name: c for c, name in enumerate(label_names)}
    targets = np.zeros((len(rows), len(label_names)), dtype=np.uint8)
    for i, (_, labels) in enumerate(rows):
        targets[i, [col[label] for label in labels]] = 1
    paths = [p for p, _ in rows]
    return MultilabelImages(
        label_names, targets, [str(p.relative_to(root)) for p in paths], lambda i: open_rgb(paths[i]),
        str(manifest), _file_fingerprint([manifest, *paths], "csv"),
    )


def load_hf(root: str, image_column: str, label_column: str, split: str) -> MultilabelImages:
    """A Hugging Face dataset (a `save_to_disk` folder or a hub name) with an image column and either a
    list-of-labels column (class ids or names) or a multi-hot column."""
    import datasets

    try:
        if Path(root).is_dir():
            ds = datasets.load_from_disk(root)
        else:
            ds = datasets.load_dataset(root, split=split)
    except Exception as exc:  # datasets raises many types for a missing or offline dataset
        raise DataError(
            f"data.root {root}: cannot load the Hugging Face dataset ({exc}). Give a `save_to_disk` folder "
            "or a hub name reachable from here (HF_HUB_OFFLINE=1 uses the local cache only)."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"data.root {root}: no split {split!r} (has {', '.join(ds)}); set data.hf_split")
        ds = ds[split]
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise DataError(f"data.root {root}: no column {column!r} (has {', '.join(ds.column_names)})")
    label_names, targets = _hf_targets(ds[label_column], ds.features[label_column], f"{root}:{label_column}")
    images = ds.cast_column(image_column, datasets.Image(decode=True))

    def read(i: int) -> Image.Image:
        return images[int(i)][image_column].convert("RGB")

    names = [f"{i}" for i in range(len(ds))]
    return MultilabelImages(label_names, targets, names, read, str(root), f"hf-{ds._fingerprint}")


def _hf_targets(raw: list, feature, where: str) -> tuple[list[str], np.ndarray]:
    """Label lists (ClassLabel ids or names) or multi-hot rows -> (label names, (N, C) uint8)."""
    import datasets

    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:  # datasets may give a plain list
        inner = feature[0]
    if isinstance(inner, datasets.ClassLabel):
        names, col = list(inner.names), None
    elif any(r and isinstance(r[0], str) for r in raw):
        names = sorted({name for labels in raw for name in labels})
        col = {name: c for c, name in enumerate(names)}
    else:
        widths = {len(r) for r in raw}
        if len(widths) != 1 or not all(set(r) <= {0, 1} for r in raw):
            raise DataError(f"{where}: neither label lists nor equal-length 0/1 multi-hot rows")
        return [f"label_{c}" for c in range(widths.pop())], np.asarray(raw, dtype=np.uint8)
    targets = np.zeros((len(raw), len(names)), dtype=np.uint8)
    for i, labels in enumerate(raw):
        targets[i, [col[x] for x in labels] if col else list(labels)] = 1
    return names, targets


def load_dataset(cfg_data) -> MultilabelImages:
    """The dataset named by a DataConfig (`data.root` None means the embedded demo corpus)."""
    root = cfg_data.root
    if root is None:
        from mlic.data.demo import demo_root

        root = str(demo_root(cfg_data.demo_images, cfg_data.demo_seed))
    if cfg_data.format == "helsinki":
        return load_helsinki(root)
    if cfg_data.format == "csv":
        return load_csv(root)
    return load_hf(root, cfg_data.image_column, cfg_data.label_column, cfg_data.hf_split)


def stratified_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Iterative stratification (Sechidis et al. 2011) for multi-label data, fixed by `seed`."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    n = len(targets)
    # Images with no label form one more "class" so they are spread evenly too.
    y = np.concatenate([targets, (targets.sum(1, keepdims=True) == 0)], axis=1).astype(int)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros((n, 1)), y))
    return np.sort(train_idx), np.sort(val_idx)
