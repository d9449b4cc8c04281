"""`mlic check-data`: every problem of a dataset in one pass, one line each, naming the file (and line)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from mlic.data.datasets import IMAGE_SUFFIXES, annotation_lines, image_number


def image_problem(path: Path) -> str | None:
    """Why `path` is not a usable image, or None. Decodes it fully: truncation shows only then."""
    try:
        if path.stat().st_size == 0:
            return f"{path}: zero-byte file"
        with Image.open(path) as img:
            img.load()
    except Image.DecompressionBombError as exc:
        return f"{path}: {exc}"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        text = str(exc)
        if "truncated" in text:
            return f"{path}: truncated image ({text})"
        return f"{path}: not a readable image ({type(exc).__name__}: {text})"
    return None


def _images(paths: Iterable[Path], workers: int) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return [p for p in pool.map(image_problem, paths) if p]


def check_helsinki(root: Path, labels: set[str] | None = None, workers: int = 4) -> list[str]:
    problems: list[str] = []
    images_dir, ann_dir = root / "images", root / "annotations"
    if not images_dir.is_dir():
        return [f"{images_dir}: images folder not found (expected ROOT/images/im{{N}}.jpg)"]
    files = sorted(images_dir.iterdir())
    numbers = {}
    for p in files:
        n = image_number(p.name)
        if n is None:
            problems.append(f"{p}: unexpected file name (expected im{{N}}.jpg)")
        else:
            numbers[n] = p
    problems += _images([p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES], workers)
    if not ann_dir.exists():
        return problems  # a test set: images only
    ann_files = sorted(ann_dir.glob("*.txt"))
    if not ann_files:
        problems.append(f"{ann_dir}: annotations folder has no {{label}}.txt files")
    for other in sorted(set(ann_dir.iterdir()) - set(ann_files)):
        problems.append(f"{other}: not an annotation file (expected {{label}}.txt)")
    for path in ann_files:
        if labels is not None and path.stem not in labels:
            problems.append(f"{path}: unknown label {path.stem!r} (known: {', '.join(sorted(labels))})")
        seen: dict[int, int] = {}
        for lineno, text, n in annotation_lines(path):
            if n is None:
                problems.append(f"{path}:{lineno}: {text!r} is not an image number")
                continue
            if n < 1:
                problems.append(f"{path}:{lineno}: image number {n} out of range (numbers start at 1)")
            elif n not in numbers:
                problems.append(f"{path}:{lineno}: image im{n}.jpg not found in {images_dir}")
            if n in seen:
                problems.append(f"{path}:{lineno}: duplicate of line {seen[n]} (image {n})")
            else:
                seen[n] = lineno
    return problems


def check_csv(root: Path, labels: set[str] | None = None, workers: int = 4) -> list[str]:
    manifest = next((root / n for n in ("labels.csv", "data.csv") if (root / n).is_file()), None)
    if manifest is None:
        return [f"{root}: no labels.csv or data.csv"]
    problems: list[str] = []
    paths: list[Path] = []
    seen: dict[str, int] = {}
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
            return [f"{manifest}:1: header must have columns path,labels (found {reader.fieldnames})"]
        for lineno, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip()
            path = root / rel
            if not rel or not path.is_file():
                problems.append(f"{manifest}:{lineno}: image {rel!r} not found")
            else:
                paths.append(path)
            if rel in seen:
                problems.append(f"{manifest}:{lineno}: duplicate of line {seen[rel]} ({rel})")
            seen.setdefault(rel, lineno)
            for label in (row.get("labels") or "").split("|"):
                if labels is not None and label.strip() and label.strip() not in labels:
                    problems.append(f"{manifest}:{lineno}: unknown label {label.strip()!r}")
    return problems + _images(paths, workers)


def check_data(root: str | Path, fmt: str = "helsinki", labels: set[str] | None = None, workers: int = 4) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: folder not found"]
    if fmt == "csv":
        return check_csv(root, labels, workers)
    if fmt == "helsinki":
        return check_helsinki(root, labels, workers)
    from mlic.data.datasets import load_hf
    from mlic.errors import DataError

    try:
        ds = load_hf(str(root), "image", "labels", "train")
    except DataError as exc:
        return [str(exc)]
    problems = []
    for i in range(len(ds)):
        try:
            ds.read(i)
        except Exception as exc:
            problems.append(f"{root}: row {i}: not a readable image ({exc})")
    return problems
