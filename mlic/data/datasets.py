"""The types every format shares: the dataset a parser produces, its problems, and the `Format` a parser
module declares (the registry of them: `mlic.data.formats`).

A dataset is built once, by its format's parser, and never changes: row i is the image `decode(i)`
(decoded by `mlic.data.decode.decode_image`) with target `targets[i]`. Splits, and the rows left out under
`data.skip_bad`, are `torch.utils.data.Subset`s of it, so a row number always means a row of the full dataset.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlic.data.decode import Decoded, DecodeReport, DecodeSettings, decode_image
from mlic.errors import DataError, some
from mlic.labels import LabelMatrix
from mlic.logs import log

IMAGE_NAME = re.compile(r"^im([0-9]+)\.jpe?g$", re.IGNORECASE)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SHOWN_PROBLEMS = 5  # a training error names this many problems; `mlic check-data` lists them all


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, as one line naming the file (and line). `row` is set when the
    problem is an unreadable image: that row can be left out (`data.skip_bad`) instead of stopping.
    `harmless`: check-data reports it, training goes on (a stray `.DS_Store`, a repeated annotation
    line: neither changes any image or target). `warning`: harmless too, but check-data lists it among its
    warnings (an error under --strict) and training says so in one line (images outside the data root, a
    label name that cannot be a file name). The text is made printable (`printable`): a file name may hold
    any byte but NUL and `/`, a newline too."""

    text: str
    row: int | None = None
    harmless: bool = False
    warning: bool = False

    def __post_init__(self):
        object.__setattr__(self, "text", printable(self.text))
        object.__setattr__(self, "harmless", self.harmless or self.warning)

    def __str__(self) -> str:
        return self.text


def printable(text: str) -> str:
    """`text` as one printable line: the bytes of a non-UTF-8 file name (surrogate-escaped by `os.fsdecode`)
    as `\\xff`, control characters (a newline in a file name) as their escapes. Any other text is unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else repr(c)[1:-1] for c in text)


def is_utf8(name: str) -> bool:
    """Whether a file name (as `os.fsdecode` gives it) is text: its bytes are UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def file_problems(paths: Iterable[Path], names: Sequence[str]) -> list[Problem]:
    """A Problem with its row for each image that is no readable file, found without opening it (a stat
    each): a broken or looping symbolic link, a folder or other non-file (a FIFO would block the decode), a
    file without read permission, a name that is not UTF-8 (results files and logs name images as text).
    Like an undecodable image, that row is left out under `data.skip_bad`."""
    problems = []
    for row, (path, name) in enumerate(zip(paths, names)):
        why = unreadable_file(path) if is_utf8(name) else "the file name is not UTF-8; rename the file"
        if why is not None:
            problems.append(Problem(f"{path}: cannot read image: {why}", row=row))
    return problems


def unreadable_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file (a stat, not an open), or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not a file"
    if not os.access(path, os.R_OK):
        return "no permission to read it"
    return None


def label_name_problems(names: Iterable[str], where: str, slash: bool = False) -> list[Problem]:
    """A warning for each label name that cannot be a file name (`{label}.txt` in the helsinki layout, a
    per-label figure): `.` or `..`, with `/` (unless
    `slash`: Open Images' MIDs are `/m/...`) or NUL or another control character. A name that is not UTF-8
    is a problem: no results file or log can hold it."""
    problems = []
    for name in names:
        if not is_utf8(name):
            problems.append(Problem(f"{where}: label name '{name}' is not UTF-8; rename it"))  # printable() shows it
        elif not name.strip():  # no name at all: no results file, model folder or figure could say which label
            problems.append(Problem(f"{where}: label name {name!r} is empty or blank (the helsinki file of label X "
                                    "is annotations/X.txt); rename it"))
        elif _not_a_file_name(name, slash):
            problems.append(Problem(f"{where}: label name {name!r} cannot be a file name ({{label}}.txt); rename "
                                    "it", warning=True))
    return problems


def _not_a_file_name(name: str, slash: bool) -> bool:
    if not name.isprintable() or ("/" in name and not slash):  # NUL is not printable
        return True
    return name.rpartition("/")[2] in ("", ".", "..")


class DecodeFiles:
    """`decode` for file-based formats: row i is `paths[i]` (a class, not a lambda: workers may pickle it)."""

    def __init__(self, paths: Sequence[Path], settings: DecodeSettings):
        self.paths, self.settings = list(paths), settings

    def __call__(self, i: int) -> Decoded:
        return decode_image(self.paths[i], self.settings)


@dataclass(frozen=True, eq=False)
class MultilabelImages(torch.utils.data.Dataset):
    """Every row of one source, immutable: sample i = (RGB PIL image, float target row, i).

    `labels` is the (N, C) `LabelMatrix` (sparse positives, and the known entries under partial labels;
    a dense 0/1 array given here is converted); a target row is 1 / 0 / NaN for positive / negative /
    unknown (`LabelMatrix.target_rows`). `targets` is the dense uint8 matrix of the positives, for small
    data only. `names` are file names (for results files and error analysis); `decode(i)` decodes row i
    through `decode_image` (the image and the conversions it took), `read(i)` is its image;
    `fingerprint` changes when the source or the decode settings change and keys the decoded cache.
    """

    label_names: list[str]
    labels: LabelMatrix
    names: list[str]
    decode: Callable[[int], Decoded]
    source: str
    fingerprint: str

    def __post_init__(self):
        object.__setattr__(self, "labels", LabelMatrix.of(self.labels))
        object.__setattr__(self, "label_names", list(self.label_names))
        object.__setattr__(self, "names", list(self.names))
        if self.labels.shape != (len(self.names), len(self.label_names)):
            raise ValueError(f"labels of shape {self.labels.shape} for {len(self.names)} images and "
                             f"{len(self.label_names)} label names")

    @property
    def targets(self) -> np.ndarray:
        """The dense (N, C) uint8 positives, read-only (built on each call: small data only)."""
        targets = self.labels.dense()
        targets.setflags(write=False)
        return targets

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, i: int) -> Image.Image:
        return self.decode(i).image

    def __getitem__(self, i: int):
        i = int(i)
        return self.read(i), self.labels.target_row(i), i


class Transformed(torch.utils.data.Dataset):
    """`dataset` with a per-image transform applied as it is read (the per-image path); same rows."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int):
        image, target, row = self.dataset[row]
        return self.transform(image), target, row


def decode_problems(dataset: MultilabelImages, workers: int = 4, report: DecodeReport | None = None,
                    known_bad: Iterable[int] = ()) -> list[Problem]:
    """Decode every row once, but the rows of `known_bad` (a problem of theirs is already listed); a
    Problem (with its row) for each image that cannot be read. `report`, when given, collects the
    conversions the readable ones took."""
    known_bad = set(known_bad)

    def decode(i: int) -> Problem | tuple[str, ...] | None:
        if i in known_bad:
            return None
        try:
            return dataset.decode(i).conversions
        except DataError as exc:
            return Problem(str(exc), row=i)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        outcomes = list(pool.map(decode, range(len(dataset))))
    if report is not None:  # in row order, so the files a warning names do not depend on thread timing
        for name, outcome in zip(dataset.names, outcomes):
            if isinstance(outcome, tuple):
                report.add(name, outcome)
    return [p for p in outcomes if isinstance(p, Problem)]


def usable_rows(dataset: MultilabelImages | None, problems: Sequence[Problem], check: str,
                skip_unreadable: bool = False) -> np.ndarray:
    """The rows to use: every row, less the unreadable images when `skip_unreadable`. Any other problem
    (or an unreadable image without `skip_unreadable`) is a DataError naming the first few; `check` is
    the command that lists them all. Warnings (an image outside the data root...) are one line on stderr."""
    warnings = [p.text for p in problems if p.warning]
    if warnings:  # every process reads the data: the main one says so
        log.warning(printable(f"warning: {warnings[0]}" if len(warnings) == 1 else f"warning: {len(warnings)} warnings "
                              f"about the data (`{check}` lists them): {some(warnings, 2, '; ')}"))
    blocking = [p for p in problems if not p.harmless and not (skip_unreadable and p.row is not None)]
    if blocking or dataset is None:
        hint = printable(f"`{check}` lists every problem")  # ROOT may be any bytes
        if any(p.row is not None for p in blocking):
            hint += "; data.skip_bad=true leaves unreadable images out of training"
        raise DataError(f"{some([p.text for p in blocking], SHOWN_PROBLEMS, '; ')}; {hint}")
    skipped = {p.row for p in problems if p.row is not None}
    return np.array([i for i in range(len(dataset)) if i not in skipped], dtype=np.int64)


def image_number(name: str) -> int | None:
    m = IMAGE_NAME.match(name)
    return int(m.group(1)) if m else None


Parsed = tuple[MultilabelImages | None, list[Problem]]  # what a format's parser returns


@dataclass(frozen=True)
class Option:
    """A key a format reads besides the shared ones (root, split, known labels, decode settings): in the config
    `data.<key>` for the built-in formats' keys that DataConfig holds flat (`data.voc_difficult`:
    `mlic.data.formats.FLAT_KEYS`), else `data.options.<key>`; check-data's flag `--<key with dashes>`. Its value is text (a name, a path) or,
    with `choices`, one of them; None when it may be left unset."""

    key: str
    default: str | None
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.default is None else "must be set"
        if not isinstance(value, str) or not value.strip():
            return "is not a name or path"
        if self.choices and value not in self.choices:
            return f"is not one of {', '.join(self.choices)}"
        return None


@dataclass(frozen=True)
class Format:
    """One dataset layout, declared once by its module (`mlic/data/formats/<name>.py`) and registered by name.

    `parse(root, split, labels, settings, **options) -> (dataset or None, problems)`: `split` None is the
    format's `default_split`; `labels` the known label names (others are problems) or None; `settings` the
    decode settings; one keyword per `Option`. It collects every problem it can instead of stopping at the
    first: training raises on them (or leaves unreadable images out under `data.skip_bad`), check-data lists
    them. `layout`: one line saying what ROOT holds (help texts, docs/EXTENDING.md)."""

    name: str
    parse: Callable[..., Parsed]
    layout: str
    # example(root) writes a tiny labelled dataset in this exact layout (its default split) and returns each row
    # name's positive labels: the contract tests parse it, check it and train on it (tests/test_format_contract.py).
    example: Callable[[Path], dict[str, set[str]]]
    options: tuple[Option, ...] = ()
    default_split: str | None = None  # written in a check-data command only when another split is read
    # The option that names the split when data.split does not (hf: data.hf_split): data.split, when set, wins.
    split_option: str | None = None

    def option(self, key: str) -> Option | None:
        return next((o for o in self.options if o.key == key), None)


def example_rows(labels: Sequence[str], count: int = 24) -> list[tuple[Image.Image, list[str]]]:
    """Images and positive labels for a format's `example`: 32 x 32 pictures whose colour and stripes follow
    their labels, every combination of the labels (empty included) in turn."""
    rows = []
    for i in range(count):
        positives = [name for c, name in enumerate(labels) if (i + 1) >> c & 1]
        image = Image.new("RGB", (32, 32), tuple(60 + 150 * (name in positives) for name in (list(labels) * 3)[:3]))
        for c, name in enumerate(labels):
            if name in positives:
                image.paste((255 - 40 * c, 40 * c, 128), (0, 8 * c, 32, 8 * c + 4))
        rows.append((image, positives))
    return rows


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=95)


def file_fingerprint(paths: Sequence[Path], extra: str) -> str:
    """Changes when a file's size or mtime does. Any path is hashed (as its bytes: a name need not be
    UTF-8); one that cannot be stat'ed (a broken link, a problem of its own) counts as size -1."""
    h = hashlib.sha1(os.fsencode(extra))
    for p in paths:
        try:
            st = os.stat(p)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        h.update(os.fsencode(p) + f"|{size}|{mtime}\n".encode())
    return h.hexdigest()[:16]
