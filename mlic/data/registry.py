"""Every dataset format by name, and loading a dataset from a config: the one module above the parsers.

The parsers (`mlic.data.formats`: helsinki, csv, hf; `mlic.data.benchmark_formats`: coco, voc;
`mlic.data.openimages`) build on the shared types of `mlic.data.datasets` and never import this module, so
the data package imports only downwards.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from mlic.config import DATA_FORMATS
from mlic.data.benchmark_formats import parse_coco, parse_voc
from mlic.data.datasets import MultilabelImages, Parsed, decode_problems, usable_rows
from mlic.data.decode import DecodeReport, DecodeSettings
from mlic.data.demo import demo_root
from mlic.data.formats import parse_csv, parse_helsinki, parse_hf
from mlic.data.openimages import parse_openimages
from mlic.errors import DataError

FORMATS = DATA_FORMATS  # the names data.format and --format take; `parse` below has a parser for each


def parse(fmt: str, root, *, image_column: str = "image", label_column: str = "labels", split: str | None = None,
          labels: Collection[str] | None = None, settings: DecodeSettings | None = None, decode: bool = False,
          workers: int = 4, report: DecodeReport | None = None, voc_difficult: str = "ignore",
          class_list: str | None = None) -> Parsed:
    """The format's parser; with `decode`, also every image that cannot be decoded (a Problem with its
    row), and into `report` the conversions the others took. `labels`: the known label names; others
    are problems. `settings`: how images are decoded (default: DataConfig's). `split`: the split the
    format reads (hf: of a DatasetDict, default train; csv: ROOT/{split}.csv; coco, voc, openimages: their
    split files); None is the format's default. `voc_difficult`, `class_list`: voc's and openimages' own
    (DataConfig)."""
    settings = settings or DecodeSettings.from_config()
    if fmt == "helsinki":
        dataset, problems = parse_helsinki(root, labels, settings)
    elif fmt == "csv":
        dataset, problems = parse_csv(root, labels, settings, split)
    elif fmt == "hf":
        dataset, problems = parse_hf(root, image_column, label_column, split or "train", labels, settings)
    elif fmt == "coco":
        dataset, problems = parse_coco(root, split, labels, settings)
    elif fmt == "voc":
        dataset, problems = parse_voc(root, split, voc_difficult, labels, settings)
    elif fmt == "openimages":
        dataset, problems = parse_openimages(root, split, class_list, labels, settings)
    else:
        raise DataError(f"data.format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if decode and dataset is not None:
        problems += decode_problems(dataset, workers, report, known_bad=[p.row for p in problems if p.row is not None])
    return dataset, problems


def check_command(fmt: str, root, image_column: str = "image", label_column: str = "labels",
                  split: str | None = None, voc_difficult: str = "ignore", class_list: str | None = None) -> str:
    """The `mlic check-data` command that lists every problem of this dataset (split None: the format's
    default; only the flags that differ from check-data's defaults are written)."""
    flags = "" if fmt == "helsinki" else f" --format {fmt}"
    given = {"--split": split}
    if fmt == "hf":
        given.update({"--image-column": image_column, "--label-column": label_column})
        given["--split"] = None if split == "train" else split
    given["--voc-difficult"] = voc_difficult if fmt == "voc" and voc_difficult != "ignore" else None
    given["--class-list"] = class_list if fmt == "openimages" else None
    defaults = {"--image-column": "image", "--label-column": "labels"}
    flags += "".join(f" {flag} {value}" for flag, value in given.items()
                     if value is not None and value != defaults.get(flag))
    return f"mlic check-data{flags} {root}"


def load_helsinki(root: str | Path) -> MultilabelImages:
    """The helsinki parser's dataset; a DataError on any problem it finds (images are not decoded)."""
    dataset, problems = parse_helsinki(root)
    usable_rows(dataset, problems, check_command("helsinki", root))
    return dataset


def load_csv(root: str | Path) -> MultilabelImages:
    dataset, problems = parse_csv(root)
    usable_rows(dataset, problems, check_command("csv", root))
    return dataset


def load_hf(root: str, image_column: str = "image", label_column: str = "labels", split: str = "train"
            ) -> MultilabelImages:
    dataset, problems = parse_hf(root, image_column, label_column, split)
    usable_rows(dataset, problems, check_command("hf", root, image_column, label_column, split))
    return dataset


def load_dataset(cfg_data, workers: int = 4) -> tuple[MultilabelImages, np.ndarray]:
    """The dataset named by a DataConfig (`data.root` None means the embedded demo corpus) and the rows
    to use: all of them, less the unreadable images under `data.skip_bad` (found by decoding every
    image, which happens only then). Any other problem is a DataError."""
    root = cfg_data.root
    if root is None:
        root = str(demo_root(cfg_data.demo_images, cfg_data.demo_seed))
    # hf keeps its own key (data.hf_split); data.split, when set, names the split for every format
    split = (cfg_data.split or cfg_data.hf_split) if cfg_data.format == "hf" else cfg_data.split
    dataset, problems = parse(cfg_data.format, root, image_column=cfg_data.image_column,
                              label_column=cfg_data.label_column, split=split,
                              settings=DecodeSettings.from_config(cfg_data), decode=cfg_data.skip_bad,
                              workers=workers, voc_difficult=cfg_data.voc_difficult, class_list=cfg_data.class_list)
    check = check_command(cfg_data.format, root, cfg_data.image_column, cfg_data.label_column, split,
                          cfg_data.voc_difficult, cfg_data.class_list)
    return dataset, usable_rows(dataset, problems, check, skip_unreadable=cfg_data.skip_bad)
