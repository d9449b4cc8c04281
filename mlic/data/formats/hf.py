"""A Hugging Face dataset (a `save_to_disk` folder or a hub name) with an image column and a label column."""

from __future__ import annotations

import io
from collections.abc import Collection
from pathlib import Path

import numpy as np

from mlic.data.datasets import (
    Format,
    MultilabelImages,
    Option,
    Parsed,
    Problem,
    example_rows,
    file_fingerprint,
    label_name_problems,
)
from mlic.data.decode import DecodeSettings, decode_image
from mlic.errors import DataError


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


def _parse(root, split: str | None, labels: Collection[str] | None, settings: DecodeSettings, *,
           image_column: str, label_column: str, hf_split: str) -> Parsed:
    return parse_hf(root, image_column, label_column, split or hf_split, labels, settings)


def _example(root: Path) -> dict[str, set[str]]:
    import datasets

    names = ["cat", "dog", "owl"]
    rows = example_rows(names)
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=names))})
    datasets.Dataset.from_dict({"image": [image for image, _ in rows], "labels": [positives for _, positives in rows]},
                               features=features).save_to_disk(str(root))
    return {str(k): set(positives) for k, (_, positives) in enumerate(rows)}


FORMAT = Format(
    "hf", _parse, "a datasets.save_to_disk folder or a hub name: an image column and a label column (label "
    "lists, ClassLabel ids or 0/1 multi-hot rows)", _example,
    options=(Option("image_column", "image", "the image column"),
             Option("label_column", "labels", "the label column"),
             Option("hf_split", "train", "the split of a DatasetDict (data.split, when set, wins)")),
    default_split="train", split_option="hf_split")
