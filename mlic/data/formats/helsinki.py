"""The course's layout: ROOT/images/im{N}.jpg and ROOT/annotations/{label}.txt (1-based image numbers)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from mlic.data.datasets import (
    DecodeFiles,
    Format,
    MultilabelImages,
    Parsed,
    Problem,
    example_rows,
    file_fingerprint,
    file_problems,
    image_number,
    label_name_problems,
    save_jpeg,
    unreadable_file,
)
from mlic.data.decode import DecodeSettings
from mlic.errors import some


def parse_helsinki(root, labels: Collection[str] | None = None, settings: DecodeSettings | None = None) -> Parsed:
    """ROOT/images/im{N}.jpg and ROOT/annotations/{label}.txt (1-based image numbers, one per line).

    Rows are in image-number order. Without an annotations folder the images are a test set: no labels,
    all-zero targets."""
    root = Path(root)
    images_dir = root / "images"
    if not root.is_dir():
        return None, [Problem(f"{root}: folder not found")]
    if not images_dir.is_dir():
        return None, [Problem(f"{images_dir}: images folder not found (expected ROOT/images/im{{N}}.jpg)")]
    problems: list[Problem] = []
    files: dict[int, Path] = {}
    for p in sorted(images_dir.iterdir()):
        n = image_number(p.name)
        if n is None:
            problems.append(Problem(f"{p}: unexpected file name (expected im{{N}}.jpg)", harmless=True))
        elif n in files:
            problems.append(Problem(f"{p}: same image number as {files[n].name}"))
        else:
            files[n] = p
    if not files:
        return None, [*problems, Problem(f"{images_dir}: no images named im{{N}}.jpg")]
    paths = [files[n] for n in sorted(files)]
    row_of = {n: i for i, n in enumerate(sorted(files))}
    label_names: list[str] = []
    targets = np.zeros((len(paths), 0), dtype=np.uint8)
    ann_files: list[Path] = []
    if (root / "annotations").is_dir():
        ann_files, targets, ann_problems = _annotations(root / "annotations", row_of, labels)
        label_names = [p.name[:-len(".txt")] for p in ann_files]  # not .stem: `.txt` is the label ''
        problems += ann_problems
        for path, name in zip(ann_files, label_names):
            problems += label_name_problems([name], str(path))
    problems += file_problems(paths, [p.name for p in paths])
    settings = settings or DecodeSettings.from_config()
    dataset = MultilabelImages(label_names, targets, [p.name for p in paths], DecodeFiles(paths, settings),
                               str(root), file_fingerprint(paths + ann_files, f"helsinki|{settings.key}"))
    return dataset, problems


def _annotations(ann_dir: Path, row_of: dict[int, int], labels: Collection[str] | None):
    """(annotation files, (N, C) targets, problems) of ROOT/annotations/{label}.txt. An annotation file that
    cannot be read (a broken link, no permission) keeps its label, with no positive, and is a problem."""
    problems: list[Problem] = []
    ann_files = sorted(p for p in ann_dir.glob("*.txt") if p.is_file() or not p.exists())  # broken links too
    if not ann_files:
        problems.append(Problem(f"{ann_dir}: annotations folder has no {{label}}.txt files"))
    for other in sorted(set(ann_dir.iterdir()) - set(ann_files)):
        problems.append(Problem(f"{other}: not an annotation file (expected {{label}}.txt)", harmless=True))
    targets = np.zeros((len(row_of), len(ann_files)), dtype=np.uint8)
    for c, path in enumerate(ann_files):
        name = path.name[:-len(".txt")]
        if labels is not None and name not in labels:
            problems.append(Problem(f"{path}: unknown label {name!r} (known: {some(sorted(labels))})"))
        try:
            why = unreadable_file(path)
            lines = [] if why else path.read_text(errors="replace").splitlines()
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why:
            problems.append(Problem(f"{path}: cannot read annotation file: {why}"))
            continue
        _annotation_lines(path, lines, targets[:, c], row_of, problems)
    return ann_files, targets, problems


def _annotation_lines(path: Path, lines: list[str], column: np.ndarray, row_of: dict[int, int],
                      problems: list[Problem]) -> None:
    """Sets `column` (one label's targets) from its file's lines, a problem for each bad line."""
    images_dir = path.parent.parent / "images"
    seen: dict[int, int] = {}
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            n = int(text)
        except ValueError:
            problems.append(Problem(f"{path}:{lineno}: {text!r} is not an image number"))
            continue
        if n < 1:
            problems.append(Problem(f"{path}:{lineno}: image number {n} out of range (numbers start at 1)"))
        elif n not in row_of:
            problems.append(Problem(f"{path}:{lineno}: image im{n}.jpg not found in {images_dir}"))
        else:
            column[row_of[n]] = 1
        if n in seen:
            problems.append(Problem(f"{path}:{lineno}: duplicate of line {seen[n]} (image {n})", harmless=True))
        seen.setdefault(n, lineno)


def _parse(root, split: str | None, labels: Collection[str] | None, settings: DecodeSettings) -> Parsed:
    return parse_helsinki(root, labels, settings)  # one folder, no splits


def _example(root: Path) -> dict[str, set[str]]:
    rows = example_rows(["baby", "car", "tree"])
    (root / "annotations").mkdir(parents=True)
    for n, (image, _) in enumerate(rows, 1):
        save_jpeg(image, root / "images" / f"im{n}.jpg")
    for label in ("baby", "car", "tree"):
        numbers = [str(n) for n, (_, positives) in enumerate(rows, 1) if label in positives]
        (root / "annotations" / f"{label}.txt").write_text("\n".join(numbers) + "\n")
    return {f"im{n}.jpg": set(positives) for n, (_, positives) in enumerate(rows, 1)}


FORMAT = Format("helsinki", _parse, "ROOT/images/im{N}.jpg and ROOT/annotations/{label}.txt (the course's layout)",
                _example)
