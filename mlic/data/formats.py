"""The helsinki, csv and hf parsers: `parse_<format>(root, ...) -> (dataset or None, problems)` (coco and voc:
`mlic.data.benchmark_formats`; openimages: `mlic.data.openimages`; all by name: `mlic.data.registry`).

Training raises on the problems (`registry.load_dataset`, which may leave unreadable images out under
`data.skip_bad`); `mlic check-data` prints them. A parser collects every problem it can instead of
stopping at the first; the dataset is None only when nothing usable could be built.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import stat
from collections.abc import Collection
from pathlib import Path

import numpy as np

from mlic.data.datasets import (
    DecodeFiles,
    MultilabelImages,
    Parsed,
    Problem,
    file_fingerprint,
    file_problems,
    image_number,
    label_name_problems,
    unreadable_file,
)
from mlic.data.decode import DecodeSettings, decode_image
from mlic.errors import DataError, some
from mlic.labels import LabelMatrix


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


def parse_csv(root, labels: Collection[str] | None = None, settings: DecodeSettings | None = None,
              split: str | None = None) -> Parsed:
    """ROOT/labels.csv (or data.csv; ROOT/{split}.csv when `split` is given) with columns path,labels;
    labels '|'-separated, may be empty; paths relative to the CSV.

    `-name` in `labels` is a verified negative (`cat|-dog`). A file with one makes the dataset partially
    labelled: listed names positive, `-name`s negative, every other entry unknown. Without any, every
    entry is known (unlisted = negative). Labels are every name of the file, positive or negative, sorted."""
    root = Path(root)
    if not root.is_dir():
        return None, [Problem(f"{root}: folder not found")]
    candidates = ("labels.csv", "data.csv") if split is None else (f"{split}.csv",)
    manifest = next((root / n for n in candidates if (root / n).is_file()), None)
    if manifest is None:
        return None, [Problem(f"{root}: no {' or '.join(candidates)}")]
    rows, problems = _csv_rows(manifest, root, labels)
    if rows is None:
        return None, problems
    if not rows:
        return None, [*problems, Problem(f"{manifest}: no rows with an image")]
    label_names = sorted({name for _, pos, neg in rows for name in pos + neg})
    problems += label_name_problems(label_names, str(manifest))
    col = {name: c for c, name in enumerate(label_names)}
    positives = [[col[name] for name in pos] for _, pos, _ in rows]
    if any(neg for _, _, neg in rows):
        target = LabelMatrix.from_lists(positives, len(label_names), [[col[name] for name in neg] for _, _, neg in rows])
    else:
        target = LabelMatrix.from_lists(positives, len(label_names))
    paths = [root / rel for rel, _, _ in rows]
    problems += file_problems(paths, [rel for rel, _, _ in rows])
    settings = settings or DecodeSettings.from_config()
    dataset = MultilabelImages(label_names, target, [rel for rel, _, _ in rows], DecodeFiles(paths, settings),
                               str(manifest), file_fingerprint([manifest, *paths], f"csv|{settings.key}"))
    return dataset, problems


def _csv_rows(manifest: Path, root: Path, labels: Collection[str] | None):
    """([(path, positives, negatives)] of the lines with an image, problems); None for the rows when the
    header is wrong. Two lines naming one file are a duplicate however the path is spelt (`a/./x.jpg`,
    `a/../a/x.jpg`, a symbolic link to it): paths are compared resolved. A path written to leave ROOT
    (`../x.jpg`, an absolute path elsewhere) is a warning, one line for all: the data is more than ROOT (links
    are not followed for this: an images/ folder linked to another disk is the data's own).
    One lstat per line; folders are resolved once each, so a manifest of millions of lines stays cheap."""
    problems: list[Problem] = []
    rows: list[tuple[str, list[str], list[str]]] = []  # path, positives, negatives
    seen: dict[str, tuple[int, str]] = {}  # resolved path -> (line, path as written)
    inside, outside = os.path.abspath(root), []
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
    try:
        with manifest.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
                return None, [Problem(f"{manifest}:1: header must have columns path,labels (found {reader.fieldnames})")]
            for lineno, row in enumerate(reader, start=2):
                rel, where = (row.get("path") or "").strip(), f"{manifest}:{lineno}"
                positives, negatives, label_problems = _csv_labels(row.get("labels") or "", where, labels)
                problems += label_problems
                path = os.path.normpath(os.path.join(inside, rel))
                link = _lstat_link(path) if rel else None  # a broken link is found (and unreadable)
                found = link is not None
                if not found:
                    problems.append(Problem(f"{where}: image {rel!r} not found"))
                resolved = (os.path.realpath(path) if link else
                            os.path.join(real_folder(os.path.dirname(path)), os.path.basename(path)))
                if found and resolved not in seen and not Path(path).is_relative_to(inside):
                    outside.append(f"{rel} (line {lineno})")
                if resolved in seen:
                    line, first = seen[resolved]
                    same = "" if first == rel else f", the same file as {first}"
                    problems.append(Problem(f"{where}: duplicate of line {line} ({rel}{same})"))
                elif found:
                    rows.append((rel, positives, negatives))
                seen.setdefault(resolved, (lineno, rel))
    except (csv.Error, UnicodeDecodeError) as exc:
        problems.append(Problem(f"{manifest}: not a readable CSV file ({exc})"))
    if outside:
        problems.append(Problem(f"{manifest}: {len(outside)} image(s) outside {root}: {some(outside)}", warning=True))
    return rows, problems


def _lstat_link(path: str) -> bool | None:
    """Whether `path` is a symbolic link; None when there is nothing at all (one lstat)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return None


def _csv_labels(text: str, where: str, labels: Collection[str] | None) -> tuple[list[str], list[str], list[Problem]]:
    """(positive names, negative names, problems) of one `labels` cell such as `cat|-dog`. A name given both
    ways is neither (a problem)."""
    positives, negatives, problems = [], [], []
    for token in (t.strip() for t in text.split("|")):
        name = token[1:].strip() if token.startswith("-") else token
        if not name:
            if token:
                problems.append(Problem(f"{where}: {token!r} is not a label name (a verified negative is -name)"))
            continue
        if labels is not None and name not in labels:
            problems.append(Problem(f"{where}: unknown label {name!r}"))
        (negatives if token.startswith("-") else positives).append(name)
    both = sorted(set(positives) & set(negatives))
    problems += [Problem(f"{where}: label {name!r} is both positive and negative ({name} and -{name})")
                 for name in both]
    return ([n for n in positives if n not in both], [n for n in negatives if n not in both], problems)


class DecodeHf:
    """`decode` for a Hugging Face dataset: the image column's bytes (or file), through `decode_image`."""

    def __init__(self, ds, column: str, root: str, settings: DecodeSettings):
        import datasets

        self.images = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        self.column, self.root, self.settings = column, root, settings

    def __call__(self, i: int):
        value = self.images[int(i)][self.column]
        name = f"{self.root}: row {i}"
        if not value or not (value.get("bytes") or value.get("path")):
            raise DataError(f"{name}: cannot read image: no image in column {self.column!r}")
        if value.get("bytes"):
            return decode_image(io.BytesIO(value["bytes"]), self.settings, name)
        return decode_image(value["path"], self.settings, name)


def _load_hf(root: str, split: str):
    """The split of a `save_to_disk` folder or hub dataset, or a Problem saying why not."""
    import datasets

    try:
        ds = datasets.load_from_disk(root) if Path(root).is_dir() else datasets.load_dataset(root, split=split)
    except Exception as exc:  # datasets raises many types for a missing or offline dataset
        return Problem(f"{root}: cannot load the Hugging Face dataset ({exc}). Give a `save_to_disk` folder or a "
                       "hub name reachable from here (HF_HUB_OFFLINE=1 uses the local cache only).")
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            return Problem(f"{root}: no split {split!r} (has {', '.join(ds)}); set data.hf_split (check-data: --split)")
        ds = ds[split]
    return ds


def parse_hf(root: str, image_column: str = "image", label_column: str = "labels", split: str = "train",
             labels: Collection[str] | None = None, settings: DecodeSettings | None = None) -> Parsed:
    """A Hugging Face dataset (a `save_to_disk` folder or a hub name) with an image column and either a
    list-of-labels column (ClassLabel ids or names) or a multi-hot column."""
    root = str(root)
    ds = _load_hf(root, split)
    if isinstance(ds, Problem):
        return None, [ds]
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        return None, [Problem(f"{root}: no column {c!r} (has {', '.join(ds.column_names)}); set data.image_column "
                              "and data.label_column (check-data: --image-column, --label-column)") for c in missing]
    try:
        label_names, targets = _hf_targets(ds[label_column], ds.features[label_column])
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        return None, [Problem(f"{root}:{label_column}: neither label lists nor equal-length 0/1 multi-hot rows "
                              f"({type(exc).__name__}: {exc})")]
    try:
        settings = settings or DecodeSettings.from_config()
        decode = DecodeHf(ds, image_column, root, settings)
    except (ValueError, TypeError) as exc:  # datasets cannot cast the column to images
        return None, [Problem(f"{root}:{image_column}: not an image column ({exc})")]
    problems = [Problem(f"{root}:{label_column}: unknown label {name!r}")
                for name in label_names if labels is not None and name not in labels]
    problems += label_name_problems(label_names, f"{root}:{label_column}")
    files = [Path(f["filename"]) for f in ds.cache_files]  # the dataset's arrow files: key the decoded cache
    fingerprint = file_fingerprint(files, f"hf|{root}|{split}|{image_column}|{label_column}|{settings.key}")
    return MultilabelImages(label_names, targets, [f"{i}" for i in range(len(ds))], decode, root, fingerprint), problems


def _hf_targets(raw: list, feature) -> tuple[list[str], np.ndarray]:
    """Label lists (ClassLabel ids or names) or multi-hot rows -> (label names, (N, C) uint8);
    ValueError (or the error of the first row that is neither) otherwise."""
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
            raise ValueError("rows of different lengths or values other than 0/1")
        return [f"label_{c}" for c in range(widths.pop())], np.asarray(raw, dtype=np.uint8)
    targets = np.zeros((len(raw), len(names)), dtype=np.uint8)
    for i, labels in enumerate(raw):
        targets[i, [col[x] for x in labels] if col else list(labels)] = 1
    return names, targets
