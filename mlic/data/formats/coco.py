"""COCO's layout: ROOT/annotations/instances_{split}.json and the images ROOT/{split}/{file_name}.

The image folder is listed once (`os.scandir`) and the annotations matched against that set: no stat per image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

from mlic.data import folders
from mlic.data.datasets import (
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
from mlic.data.folders import DecodeFolder, FolderPaths
from mlic.errors import some
from mlic.labels import LabelMatrix


def parse_coco(root, split: str | None = None, labels: Collection[str] | None = None,
               settings: DecodeSettings | None = None) -> Parsed:
    """ROOT/annotations/instances_{split}.json (default split train2017) and the images ROOT/{split}/{file_name}.

    One row per image entry, in the file's order; one label per category, named by its `name`, in category
    id order (every category of the file, with annotations or not). An image's labels are the categories
    of its annotations, crowd (`iscrowd`) annotations included: the object is in the picture. An image
    without annotations is an image with no label. A missing image file leaves its row out (a problem)."""
    root, split = Path(root), split or "train2017"
    ann_file, images_dir = root / "annotations" / f"instances_{split}.json", root / split
    data, problems = _read_coco(ann_file)
    if data is None:
        return None, problems
    if not images_dir.is_dir():
        return None, [Problem(f"{images_dir}: images folder not found (expected ROOT/{split}/<file_name>)")]
    col_of, label_names = _coco_columns(ann_file, data["categories"], problems)
    row_of, files = _coco_rows(ann_file, data["images"], images_dir, problems)
    annotations = data.get("annotations") or []  # image_info_test files have none: unlabelled images
    rows, cols = _coco_pairs(ann_file, annotations, row_of, col_of, problems)
    problems += folders.unknown_labels(ann_file, label_names, labels) + label_name_problems(label_names, str(ann_file))
    if not files:
        return None, [*problems, Problem(f"{ann_file}: no images with a file in {images_dir}")]
    settings = settings or DecodeSettings.from_config()
    target = LabelMatrix.from_pairs(rows, cols, len(files), len(label_names))
    paths = FolderPaths(images_dir, files)
    problems += file_problems(paths, files)
    fingerprint = file_fingerprint([ann_file, *paths], f"coco|{split}|{settings.key}")
    return MultilabelImages(label_names, target, files, DecodeFolder(images_dir, files, settings), str(ann_file),
                            fingerprint), problems


def _read_coco(ann_file: Path) -> tuple[dict | None, list[Problem]]:
    """The instances file's JSON, with its 'images' and 'categories' lists; None (and a problem) when it is
    missing, unreadable or not such a file."""
    try:
        with ann_file.open("rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None, [Problem(f"{ann_file}: annotation file not found (expected ROOT/annotations/instances_{{split}}"
                              ".json; data.split / check-data --split names the split)")]
    except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, [Problem(f"{ann_file}: not a readable JSON file ({exc})")]
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        return None, [Problem(f"{ann_file}: not a COCO instances file (needs 'images' and 'categories' lists)")]
    return data, []


def _coco_columns(ann_file: Path, categories: list, problems: list[Problem]) -> tuple[dict[int, int], list[str]]:
    """(category id -> column, label names): one column per category, in id order; a malformed or repeated
    category is a problem and gets none."""
    col_of: dict[int, int] = {}
    label_names: list[str] = []
    names_seen: set[str] = set()
    for k, cat in sorted(enumerate(categories), key=lambda kc: _sort_key(kc[1])):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            problems.append(Problem(f"{ann_file}: categories[{k}]: needs an integer 'id' and a 'name'"))
        elif cat["id"] in col_of or cat["name"] in names_seen:
            problems.append(Problem(f"{ann_file}: categories[{k}]: repeats category id {cat['id']} or name "
                                    f"{cat['name']!r}"))
        else:
            col_of[cat["id"]] = len(label_names)
            label_names.append(cat["name"])
            names_seen.add(cat["name"])
    return col_of, label_names


def _coco_rows(ann_file: Path, images: list, images_dir: Path, problems: list[Problem]
               ) -> tuple[dict[int | str, int], list[str]]:
    """(image id -> row, file names): one row per image entry whose file is in `images_dir`, in the file's
    order; an image without its file keeps its id with row -1 (a problem), a malformed one is left out. A
    file named twice (however spelt: `a/./x.jpg`, a link to it) is a problem; those outside ROOT one warning."""
    row_of: dict[int | str, int] = {}
    files: list[str] = []
    listing, same_files = folders.listing(images_dir), _SameFiles(images_dir, images_dir.parent)
    for k, image in enumerate(images):
        if (not isinstance(image, dict) or not isinstance(image.get("id"), (int, str))
                or not isinstance(image.get("file_name"), str)):
            problems.append(Problem(f"{ann_file}: images[{k}]: needs an 'id' and a 'file_name'"))
        elif image["id"] in row_of:
            problems.append(Problem(f"{ann_file}: images[{k}]: repeats image id {image['id']}"))
        elif not folders.in_folder(images_dir, image["file_name"], listing):
            problems.append(Problem(f"{ann_file}: images[{k}] (id {image['id']}): image "
                                    f"{images_dir / image['file_name']} not found"))
            row_of[image["id"]] = -1  # known, but without a row
        else:
            problems += same_files.check(f"{ann_file}: images[{k}]", image["file_name"], f"images[{k}]")
            row_of[image["id"]] = len(files)
            files.append(image["file_name"])
    if same_files.outside:
        problems.append(Problem(f"{ann_file}: {len(same_files.outside)} image(s) outside {same_files.real_root}: "
                                f"{some(same_files.outside)}", warning=True))
    return row_of, files


class _SameFiles:
    """The image files a manifest has named, resolved: `check` says whether a name is a file named before
    (a problem) or outside ROOT (`outside`: one warning for all). Cheap for 100,000s: a plain name that is no link (the folder's
    listing says which are) is a file of the folder; only other names are resolved."""

    def __init__(self, images_dir: Path, root: Path):
        self.images_dir, self.real_dir, self.real_root = images_dir, os.path.realpath(images_dir), os.path.realpath(root)
        self.links, self.first, self.outside = folders.links(images_dir), {}, []

    def check(self, where: str, name: str, entry: str) -> list[Problem]:
        plain = "/" not in name and os.sep not in name and name not in self.links
        key = os.path.join(self.real_dir, name) if plain else os.path.realpath(self.images_dir / name)
        if key in self.first:
            return [Problem(f"{where}: {name} is the file of {self.first[key]} too")]
        self.first[key] = entry
        if not plain and not Path(key).is_relative_to(self.real_root):
            self.outside.append(f"{name} ({entry})")
        return []


def _coco_pairs(ann_file: Path, annotations: list, row_of: dict[int | str, int], col_of: dict[int, int],
                problems: list[Problem]) -> tuple[list[int], list[int]]:
    """(rows, columns) of the positives: one pair per annotation of an image with a row; an unknown image or
    category id is a problem."""
    rows, cols = [], []
    for k, ann in enumerate(annotations):
        ann = ann if isinstance(ann, dict) else {}
        row, col = row_of.get(_hashable(ann.get("image_id"))), col_of.get(_hashable(ann.get("category_id")))
        if row is None:
            problems.append(Problem(f"{ann_file}: annotations[{k}] (id {ann.get('id')}): unknown image_id "
                                    f"{ann.get('image_id')!r}"))
        if col is None:
            problems.append(Problem(f"{ann_file}: annotations[{k}] (id {ann.get('id')}): unknown category_id "
                                    f"{ann.get('category_id')!r}"))
        if row is not None and row >= 0 and col is not None:
            rows.append(row)
            cols.append(col)
    return rows, cols


def _sort_key(cat) -> tuple:
    """Categories by id; malformed entries last (reported, not used)."""
    return (0, cat["id"]) if isinstance(cat, dict) and isinstance(cat.get("id"), int) else (1, 0)


def _hashable(value):
    return value if isinstance(value, (int, str)) else None



def _parse(root, split: str | None, labels: Collection[str] | None, settings: DecodeSettings) -> Parsed:
    return parse_coco(root, split, labels, settings)


def _example(root: Path) -> dict[str, set[str]]:
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    images, annotations, expected = [], [], {}
    for k, (image, positives) in enumerate(example_rows(["person", "car", "dog"])):
        name = f"{k:012d}.jpg"
        save_jpeg(image, root / "train2017" / name)
        images.append({"id": 100 + k, "file_name": name, "width": 32, "height": 32})
        annotations += [{"id": len(annotations) + 1, "image_id": 100 + k, "category_id": c["id"], "iscrowd": 0}
                        for c in categories if c["name"] in positives]
        expected[name] = set(positives)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return expected


FORMAT = Format("coco", _parse, "ROOT/annotations/instances_{split}.json and ROOT/{split}/ (split train2017)", _example)
