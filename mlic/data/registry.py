"""Loading a dataset by format name: `parse` (the registered format's parser, and optionally a decode of every
image), `load_dataset` (from a DataConfig) and the check-data command a problem points to. The formats
themselves are `mlic.data.formats` (one module each, and the registry).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from mlic.data.datasets import MultilabelImages, Parsed, decode_problems, usable_rows
from mlic.data.decode import DecodeReport, DecodeSettings
from mlic.data.demo import demo_root
from mlic.data.formats import FORMATS, format_named, option_values
from mlic.errors import ConfigError


def parse(fmt: str, root, *, split: str | None = None, labels: Collection[str] | None = None,
          settings: DecodeSettings | None = None, decode: bool = False, workers: int = 4,
          report: DecodeReport | None = None, **options) -> Parsed:
    """The format's parser; with `decode`, also every image that cannot be decoded (a Problem with its
    row), and into `report` the conversions the others took. `labels`: the known label names; others
    are problems. `settings`: how images are decoded (default: DataConfig's). `split`: the split the
    format reads (hf: of a DatasetDict, default train; csv: ROOT/{split}.csv; coco, voc, openimages: their
    split files); None is the format's default. `options`: the format's own (voc_difficult, class_list,
    image_column ...); one left out takes its default."""
    found = format_named(fmt)
    unknown = sorted(set(options) - {o.key for o in found.options})
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not an option of format {fmt} (its options: "
                          f"{', '.join(o.key for o in found.options) or 'none'})")
    given = {o.key: options.get(o.key, o.default) for o in found.options}
    dataset, problems = found.parse(root, split, labels, settings or DecodeSettings.from_config(), **given)
    if decode and dataset is not None:
        problems += decode_problems(dataset, workers, report, known_bad=[p.row for p in problems if p.row is not None])
    return dataset, problems


def check_command(fmt: str, root, split: str | None = None, **options) -> str:
    """The `mlic check-data` command that lists every problem of this dataset (split None: the format's
    default; only the flags that differ from the defaults are written)."""
    found = FORMATS[fmt]
    flags = "" if fmt == "helsinki" else f" --format {fmt}"
    if split is not None and split != found.default_split:
        flags += f" --split {split}"
    for option in found.options:
        value = options.get(option.key, option.default)
        if option.key == found.split_option and split is not None:
            continue  # the split given wins over it
        if value is not None and value != option.default:
            flags += f" {option.flag} {value}"
    return f"mlic check-data{flags} {root}"


def load_helsinki(root: str | Path) -> MultilabelImages:
    """The helsinki parser's dataset; a DataError on any problem it finds (images are not decoded)."""
    dataset, problems = parse("helsinki", root)
    usable_rows(dataset, problems, check_command("helsinki", root))
    return dataset


def load_csv(root: str | Path) -> MultilabelImages:
    dataset, problems = parse("csv", root)
    usable_rows(dataset, problems, check_command("csv", root))
    return dataset


def load_hf(root: str, image_column: str = "image", label_column: str = "labels", split: str = "train"
            ) -> MultilabelImages:
    columns = {"image_column": image_column, "label_column": label_column}
    dataset, problems = parse("hf", root, split=split, **columns)
    usable_rows(dataset, problems, check_command("hf", root, split, **columns))
    return dataset


def load_dataset(cfg_data, workers: int = 4) -> tuple[MultilabelImages, np.ndarray]:
    """The dataset named by a DataConfig (`data.root` None means the embedded demo corpus) and the rows
    to use: all of them, less the unreadable images under `data.skip_bad` (found by decoding every
    image, which happens only then). Any other problem is a DataError."""
    root = cfg_data.root
    if root is None:
        root = str(demo_root(cfg_data.demo_images, cfg_data.demo_seed))
    fmt = format_named(cfg_data.format)
    options = option_values(fmt, cfg_data)
    dataset, problems = parse(fmt.name, root, split=cfg_data.split, settings=DecodeSettings.from_config(cfg_data),
                              decode=cfg_data.skip_bad, workers=workers, **options)
    check = check_command(fmt.name, root, cfg_data.split, **options)
    return dataset, usable_rows(dataset, problems, check, skip_unreadable=cfg_data.skip_bad)
