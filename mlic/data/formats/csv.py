"""A CSV manifest: ROOT/labels.csv (or ROOT/{split}.csv) with columns path,labels; `-name` a verified negative."""

from __future__ import annotations

import csv
import functools
import os
import stat
from collections.abc import Collection
from pathlib import Path

from mlic.data.datasets import (
    DecodeFiles,
    Format,
    MultilabelImages,
    Parsed,
    Problem,
    example_rows,
    file_fingerprint,
    file_problems,
    label_name_problems,
    save_jpeg,
)
from mlic.data.decode import DecodeSettings
from mlic.errors import some
from mlic.labels import LabelMatrix


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


def _parse(root, split: str | None, labels: Collection[str] | None, settings: DecodeSettings) -> Parsed:
    return parse_csv(root, labels, settings, split)


def _example(root: Path) -> dict[str, set[str]]:
    expected, lines = {}, ["path,labels"]
    for k, (image, positives) in enumerate(example_rows(["cat", "dog", "owl"])):
        save_jpeg(image, root / "images" / f"{k}.jpg")
        expected[f"images/{k}.jpg"] = set(positives)
        lines.append(f"images/{k}.jpg,{'|'.join(positives)}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return expected


FORMAT = Format("csv", _parse, "ROOT/labels.csv (or data.csv, or ROOT/{split}.csv): path,labels with labels "
                "'|'-separated, '-name' a verified negative; paths relative to the CSV", _example)
