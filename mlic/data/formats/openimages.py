"""Open Images' layout: the image-level labels CSV (verified positives and negatives), the class
descriptions and class list files.

9 M images: the CSV is read column-wise with pyarrow (no loop over rows), the image folder is listed
once, and at most LISTED problems of one kind are listed one by one.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from mlic.data import folders
from mlic.data.datasets import (
    Format,
    MultilabelImages,
    Option,
    Parsed,
    Problem,
    example_rows,
    file_fingerprint,
    is_utf8,
    label_name_problems,
    save_jpeg,
)
from mlic.data.decode import DecodeSettings
from mlic.data.folders import DecodeFolder
from mlic.errors import some
from mlic.labels import LabelMatrix

OPENIMAGES_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")
LISTED = 1000  # problems of one kind listed one by one, then counted in one line


def parse_openimages(root, split: str | None = None, class_list: str | None = None,
                     labels: Collection[str] | None = None, settings: DecodeSettings | None = None) -> Parsed:
    """Open Images' image-level labels: ROOT/{split}-annotations-human-imagelabels.csv (or the
    oidv6-{split}-... name; default split train), columns ImageID,Source,LabelName,Confidence; images
    ROOT/{split}/{ImageID}.jpg; class names ROOT/class-descriptions.csv (or oidv6-class-descriptions.csv).

    Confidence 1 is a verified positive, 0 a verified negative, every other entry unknown (partial
    labels); a label verified both ways (two sources) counts as positive. Rows: every ImageID of the CSV,
    sorted; an image without its file is left out (a problem). Labels are the MIDs (unique, unlike
    display names; `class_descriptions(root)` maps them): with `class_list` (a file of MIDs, one per line,
    like classes-trainable.txt; relative paths may be relative to ROOT) exactly those, in its order, rows of
    other classes ignored; without, every MID of the CSV, sorted. Read column-wise with pyarrow, no loop
    over rows. At most LISTED problems of one kind are listed, the rest counted in one more line."""
    import pyarrow as pa
    import pyarrow.compute as pc

    root, split = Path(root), split or "train"
    label_file, problems = _label_file(root, split)
    if label_file is None:
        return None, problems
    table, problems = _read_label_table(label_file)
    if table is None:
        return None, problems
    image_ids, image_code = _sorted_codes(table.column("ImageID"), pa, pc)
    mids, mid_code = _sorted_codes(table.column("LabelName"), pa, pc)
    values, value_code = _sorted_codes(table.column("Confidence"), pa, pc)
    del table  # the codes hold it all now
    verdict, problems = _verdicts(label_file, values, value_code)
    label_names, col_of_mid, label_problems = _label_columns(root, label_file, mids.to_pylist(), class_list, labels)
    problems += label_problems
    images_dir = root / split
    if not images_dir.is_dir():
        return None, [*problems, Problem(f"{images_dir}: images folder not found (expected ROOT/{split}/{{ImageID}}.jpg)")]
    found, num_files, missing = _images_found(label_file, images_dir, image_ids)
    problems += missing
    if not found.any():
        return None, [*problems, Problem(f"{label_file}: no image with a file in {images_dir}")]
    target = _openimages_target(found, image_code, col_of_mid[mid_code], verdict, value_code, len(label_names))
    names = pc.binary_join_element_wise(image_ids.filter(pa.array(found)), ".jpg", "").to_pylist()
    settings = settings or DecodeSettings.from_config()
    fingerprint = _folder_fingerprint(label_file, images_dir, f"openimages|{split}", num_files, settings)
    return MultilabelImages(label_names, target, names, DecodeFolder(images_dir, names, settings), str(label_file),
                            fingerprint), problems


def _label_file(root: Path, split: str) -> tuple[Path | None, list[Problem]]:
    """The split's labels CSV, under its own or its oidv6- name; None (and a problem) when neither is there."""
    names = (f"{split}-annotations-human-imagelabels.csv", f"oidv6-{split}-annotations-human-imagelabels.csv")
    label_file = next((root / n for n in names if (root / n).is_file()), None)
    if label_file is None:
        return None, [Problem(f"{root}: no {names[0]} or {names[1]} (data.split / check-data --split names the split)")]
    return label_file, []


def _read_label_table(label_file: Path):
    """The CSV's ImageID, LabelName and Confidence columns as a pyarrow table, dictionary-coded; None (and a
    problem) when the header is not OPENIMAGES_COLUMNS or the file does not parse."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with label_file.open(errors="replace") as fh:
        header = fh.readline().strip().split(",")
    if header != list(OPENIMAGES_COLUMNS):
        return None, [Problem(f"{label_file}:1: header must be {','.join(OPENIMAGES_COLUMNS)} (found {','.join(header)})")]
    text = pa.dictionary(pa.int32(), pa.string())  # few distinct values per column: read as codes
    try:
        with contextlib.ExitStack() as opened:  # pyarrow opens UTF-8 paths only: else the file, opened here
            source = str(label_file) if is_utf8(str(label_file)) else opened.enter_context(label_file.open("rb"))
            return pacsv.read_csv(source, convert_options=pacsv.ConvertOptions(
                column_types={"ImageID": text, "LabelName": text, "Confidence": text},
                include_columns=["ImageID", "LabelName", "Confidence"])).unify_dictionaries(), []
    except (pa.ArrowInvalid, OSError) as exc:
        return None, [Problem(f"{label_file}: not a readable CSV file ({exc})")]


def _sorted_codes(column, pa, pc):
    """(sorted distinct values, int32 code of each row into them) of a dictionary-typed column."""
    if column.num_chunks == 0:
        return pa.array([], type=pa.string()), np.zeros(0, dtype=np.int32)
    dictionary = column.chunk(0).dictionary  # one dictionary for all chunks after unify_dictionaries
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in column.chunks])
    order = pc.array_sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order))
    return dictionary.take(pa.array(order)), rank[codes]


def _verdicts(label_file: Path, values, value_code: np.ndarray) -> tuple[np.ndarray, list[Problem]]:
    """Each distinct Confidence's verdict (1 positive, 0 negative, -1 neither), and a problem per CSV line
    whose Confidence is neither."""
    verdict = np.array([_confidence(v) for v in values.to_pylist()], dtype=np.int8)
    bad_lines = np.flatnonzero(verdict[value_code] < 0)
    return verdict, _listed([f"{label_file}:{i + 2}: Confidence {values[int(value_code[i])].as_py()!r} is not 0 or 1"
                             for i in bad_lines[:LISTED]], len(bad_lines), f"{label_file}: lines with another Confidence")


def _confidence(value: str | None) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -1
    return int(number) if number in (0.0, 1.0) else -1


def _listed(lines: list[str], total: int, what: str) -> list[Problem]:
    problems = [Problem(line) for line in lines]
    if total > len(lines):
        problems.append(Problem(f"{what}: {total - len(lines)} more not listed"))
    return problems


def _label_columns(root: Path, label_file: Path, mid_list: list[str], class_list: str | None,
                   labels: Collection[str] | None) -> tuple[list[str], np.ndarray, list[Problem]]:
    """The label names (the class list's MIDs, or else every MID of the CSV) and the column of each of the
    CSV's MIDs (-1: not a label), with the problems of the descriptions, the class list and `labels`."""
    descriptions, problems = _descriptions(root)
    label_names = mid_list
    if class_list is not None:
        label_names, listed_problems = _class_list(root, class_list)
        problems += listed_problems
    col_of_label = {m: c for c, m in enumerate(label_names)}
    col_of_mid = np.array([col_of_label.get(m, -1) for m in mid_list], dtype=np.int64)
    if descriptions:
        undescribed = [m for m in label_names if m not in descriptions]
        if undescribed:
            problems.append(Problem(f"{root}: {len(undescribed)} label(s) without a display name in the class "
                                    f"descriptions: {some(undescribed)}", harmless=True))
    problems += folders.unknown_labels(label_file, label_names, labels) + label_name_problems(label_names, str(label_file),
                                                                                       slash=True)
    return label_names, col_of_mid, problems


def _images_found(label_file: Path, images_dir: Path, image_ids) -> tuple[np.ndarray, int, list[Problem]]:
    """Which ImageIDs have their {ImageID}.jpg in the folder (one scandir, matched column-wise), the number
    of the folder's entries, and a problem per image without its file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    with os.scandir(images_dir) as entries:
        files = pa.array([e.name for e in entries if is_utf8(e.name)], type=pa.string())  # ImageIDs are UTF-8
    stems = pc.utf8_slice_codeunits(files.filter(pc.ends_with(files, ".jpg")), 0, -4)
    found = pc.is_in(image_ids, value_set=stems).to_numpy(zero_copy_only=False)
    missing = np.flatnonzero(~found)
    return found, len(files), _listed(
        [f"{label_file}: image {image_ids[int(i)].as_py()}: {images_dir / image_ids[int(i)].as_py()}.jpg not found"
         for i in missing[:LISTED]], len(missing), f"{label_file}: images not found")


def _openimages_target(found: np.ndarray, image_code: np.ndarray, col: np.ndarray, verdict: np.ndarray,
                       value_code: np.ndarray, num_labels: int) -> LabelMatrix:
    """One row per image with a file (in ImageID order): the CSV lines of a label (`col` >= 0) verified 1 are
    its positives, those verified 1 or 0 its known entries; lines of other Confidences count as nothing."""
    row_of = np.cumsum(found) - 1  # rows of the images with a file
    use = (col >= 0) & found[image_code]  # a class of the label set, an image with a file
    rows, col, use_verdict = row_of[image_code[use]], col[use], verdict[value_code[use]]
    return LabelMatrix.from_pairs(rows[use_verdict == 1], col[use_verdict == 1], int(found.sum()), num_labels,
                                  rows[use_verdict == 0], col[use_verdict == 0])


def _folder_fingerprint(label_file: Path, images_dir: Path, extra: str, num_files: int,
                        settings: DecodeSettings) -> str:
    """9 M images cannot be stat'ed each time the dataset is opened: the folder's mtime (it changes when a
    file is added, removed or renamed into it) and its number of files stand for them."""
    folder = images_dir.stat()
    return file_fingerprint([label_file], f"{extra}|{folder.st_mtime_ns}|{num_files}|{settings.key}")


def _descriptions_file(root: Path) -> Path | None:
    return next((root / n for n in ("class-descriptions.csv", "oidv6-class-descriptions.csv")
                 if (root / n).is_file()), None)


def _descriptions(root: Path) -> tuple[dict[str, str], list[Problem]]:
    """MID -> display name, with or without the header line LabelName,DisplayName (V6 has it, older not)."""
    path = _descriptions_file(root)
    if path is None:
        return {}, [Problem(f"{root}: no class-descriptions.csv or oidv6-class-descriptions.csv: labels are "
                            "shown as MIDs", harmless=True)]
    problems, names = [], {}
    with path.open(newline="", errors="replace") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if lineno == 1 and row == ["LabelName", "DisplayName"]:
                continue
            if len(row) != 2:
                problems.append(Problem(f"{path}:{lineno}: expected LabelName,DisplayName", harmless=True))
            else:
                names[row[0]] = row[1]
    return names, problems


def class_descriptions(root) -> dict[str, str]:
    """Open Images' MID -> display name (e.g. '/m/0bt9lr' -> 'Dog') from ROOT's class descriptions file."""
    return _descriptions(Path(root))[0]


def _class_list(root: Path, class_list: str) -> tuple[list[str], list[Problem]]:
    """The MIDs of a class list file, in its order (a repeated one once: a harmless problem)."""
    path = Path(class_list)
    if not path.is_file() and not path.is_absolute() and (root / path).is_file():
        path = root / path
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return [], [Problem(f"{path}: class list not readable ({exc.strerror or exc}; data.class_list / --class-list)")]
    mids, seen, problems = [], {}, []
    for lineno, line in enumerate(lines, start=1):
        mid = line.strip()
        if mid in seen:
            problems.append(Problem(f"{path}:{lineno}: duplicate of line {seen[mid]} ({mid})", harmless=True))
        elif mid:
            seen[mid] = lineno
            mids.append(mid)
    return mids, problems


def _parse(root, split: str | None, labels: Collection[str] | None, settings: DecodeSettings, *,
           class_list: str | None) -> Parsed:
    return parse_openimages(root, split, class_list, labels, settings)


def _example(root: Path) -> dict[str, set[str]]:
    mids = {"/m/01yrx": "Cat", "/m/0bt9lr": "Dog", "/m/09d5_": "Owl"}
    lines, expected = ["ImageID,Source,LabelName,Confidence"], {}
    for k, (image, positives) in enumerate(example_rows(list(mids))):
        image_id = f"{k:016x}"
        save_jpeg(image, root / "train" / f"{image_id}.jpg")
        lines += [f"{image_id},verification,{mid},{int(mid in positives)}" for mid in mids]  # every entry verified
        expected[f"{image_id}.jpg"] = set(positives)
    (root / "train-annotations-human-imagelabels.csv").write_text("\n".join(lines) + "\n")
    (root / "oidv6-class-descriptions.csv").write_text(
        "\n".join(["LabelName,DisplayName", *(f"{mid},{name}" for mid, name in mids.items())]) + "\n")
    return expected


FORMAT = Format("openimages", _parse, "ROOT/{split}-annotations-human-imagelabels.csv and ROOT/{split}/{ImageID}.jpg "
                "(split train), class descriptions beside them", _example,
                options=(Option("class_list", None, "a file of class ids (MIDs), one per line: these labels only"),))
