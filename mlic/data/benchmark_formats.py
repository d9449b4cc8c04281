"""The public benchmarks' own layouts: COCO (`instances_*.json`) and Pascal VOC 2007 (XML + ImageSets/Main);
Open Images (the image-level labels CSV, verified positives and negatives) is `mlic.data.openimages`, its
names importable from here too. Same contract as `mlic.data.formats`: `parse_<format>(root, ...) ->
(dataset or None, problems)`, every problem collected.

The image files are not stat'ed one by one to see whether they exist: one `os.scandir` of the image
folder gives the names, and the annotations are matched against that set (9 M images for Open Images).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from mlic.data.datasets import (
    DecodeFiles,
    MultilabelImages,
    Parsed,
    Problem,
    file_fingerprint,
    file_problems,
    label_name_problems,
)
from mlic.data.decode import DecodeSettings
from mlic.errors import some
from mlic.labels import LabelMatrix

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")  # the devkit's order
class FolderPaths(Sequence):
    """`folder / names[i]`, made when asked: 9 M `Path` objects would cost gigabytes in every worker."""

    def __init__(self, folder: Path, names: Sequence[str]):
        self.folder, self.names = str(folder), names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        return Path(self.folder, self.names[i])


class DecodeFolder(DecodeFiles):
    """`DecodeFiles` over `folder / names[i]`, without a list of paths."""

    def __init__(self, folder: Path, names: Sequence[str], settings: DecodeSettings):
        self.paths, self.settings = FolderPaths(folder, names), settings


def _listing(folder: Path) -> set[str]:
    with os.scandir(folder) as entries:
        return {e.name for e in entries}


def _links(folder: Path) -> set[str]:
    """The names of the folder's symbolic links (from the listing's file types: no stat per file)."""
    with os.scandir(folder) as entries:
        return {e.name for e in entries if e.is_symlink()}


def _unknown_labels(source: Path, label_names: Sequence[str], labels: Collection[str] | None) -> list[Problem]:
    return [Problem(f"{source}: unknown label {name!r} (known: {some(sorted(labels))})")
            for name in label_names if labels is not None and name not in labels]


# ---- COCO
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
    problems += _unknown_labels(ann_file, label_names, labels) + label_name_problems(label_names, str(ann_file))
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
    listing, same_files = _listing(images_dir), _SameFiles(images_dir, images_dir.parent)
    for k, image in enumerate(images):
        if (not isinstance(image, dict) or not isinstance(image.get("id"), (int, str))
                or not isinstance(image.get("file_name"), str)):
            problems.append(Problem(f"{ann_file}: images[{k}]: needs an 'id' and a 'file_name'"))
        elif image["id"] in row_of:
            problems.append(Problem(f"{ann_file}: images[{k}]: repeats image id {image['id']}"))
        elif not _in_folder(images_dir, image["file_name"], listing):
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
        self.links, self.first, self.outside = _links(images_dir), {}, []

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


def _in_folder(folder: Path, name: str, listing: set[str]) -> bool:
    return name in listing or (("/" in name or os.sep in name) and (folder / name).is_file())


# ---- Pascal VOC
def parse_voc(root, split: str | None = None, voc_difficult: str = "ignore", labels: Collection[str] | None = None,
              settings: DecodeSettings | None = None) -> Parsed:
    """The VOC2007 folder (VOCdevkit/VOC2007): ROOT/ImageSets/Main/{split}.txt (default trainval) lists the
    image ids; ROOT/Annotations/{id}.xml their objects; ROOT/JPEGImages/{id}.jpg the images.

    Rows in the split file's order; the 20 VOC classes are the labels, in the devkit's order. An image's
    positives are the classes of its objects. `voc_difficult`: "ignore" (VOC2007's classification
    protocol) makes a class present only as `difficult` objects unknown (neither positive nor negative;
    the dataset then has partial labels); "positive" counts difficult objects like the others."""
    if voc_difficult not in ("ignore", "positive"):
        raise ValueError(f"voc_difficult must be 'ignore' or 'positive', got {voc_difficult!r}")
    root, split = Path(root), split or "trainval"
    split_file, jpeg_dir = root / "ImageSets" / "Main" / f"{split}.txt", root / "JPEGImages"
    try:
        lines = split_file.read_text(errors="replace").splitlines()
    except OSError as exc:
        return None, [Problem(f"{split_file}: image list not readable ({exc.strerror or exc}); expected "
                              "ROOT/ImageSets/Main/{split}.txt under the VOC2007 folder (data.split / --split)")]
    if not jpeg_dir.is_dir():
        return None, [Problem(f"{jpeg_dir}: images folder not found (expected ROOT/JPEGImages/{{id}}.jpg)")]
    listing = _listing(jpeg_dir)
    col_of = {name: c for c, name in enumerate(VOC_CLASSES)}
    problems: list[Problem] = []
    ids: list[str] = []
    seen: dict[str, int] = {}
    positive: list[list[int]] = []
    difficult_only: list[list[int]] = []
    for lineno, line in enumerate(lines, start=1):
        image_id = line.strip()
        where = f"{split_file}:{lineno}"
        if not image_id:
            continue
        if image_id in seen:
            problems.append(Problem(f"{where}: duplicate of line {seen[image_id]} ({image_id})", harmless=True))
            continue
        seen[image_id] = lineno
        xml = root / "Annotations" / f"{image_id}.xml"
        objects = _voc_objects(xml, where, col_of, problems)
        if f"{image_id}.jpg" not in listing:
            problems.append(Problem(f"{where}: image {jpeg_dir / f'{image_id}.jpg'} not found"))
            continue
        if objects is None:
            continue
        plain = {c for c, difficult in objects if not difficult or voc_difficult == "positive"}
        ids.append(image_id)
        positive.append(sorted(plain))
        difficult_only.append(sorted({c for c, _ in objects} - plain))
    problems += _unknown_labels(split_file, VOC_CLASSES, labels)
    if not ids:
        return None, [*problems, Problem(f"{split_file}: no image with an annotation and a file")]
    target = _voc_target(positive, difficult_only)
    names = [f"{i}.jpg" for i in ids]
    settings = settings or DecodeSettings.from_config()
    xmls = [root / "Annotations" / f"{i}.xml" for i in ids]
    problems += file_problems(FolderPaths(jpeg_dir, names), names)
    fingerprint = file_fingerprint([split_file, *xmls, *FolderPaths(jpeg_dir, names)], f"voc|{settings.key}")
    return MultilabelImages(list(VOC_CLASSES), target, names, DecodeFolder(jpeg_dir, names, settings), str(root),
                            fingerprint), problems


def _voc_target(positive: list[list[int]], difficult_only: list[list[int]]) -> LabelMatrix:
    """The images' positives over VOC_CLASSES; the classes of `difficult_only` unknown (partial labels) when
    there are any, else every entry known."""
    n, c = len(positive), len(VOC_CLASSES)
    if not any(difficult_only):
        return LabelMatrix.from_lists(positive, c)
    unknown = np.zeros((n, c), dtype=bool)
    for i, cols in enumerate(difficult_only):
        unknown[i, cols] = True
    return LabelMatrix.of(LabelMatrix.from_lists(positive, c), known=~unknown)


def _voc_objects(xml: Path, where: str, col_of: dict[str, int], problems: list[Problem]
                 ) -> list[tuple[int, bool]] | None:
    """(class id, difficult) of each object of one annotation file; None (and a problem) when unreadable."""
    try:
        tree = ElementTree.parse(xml)
    except FileNotFoundError:
        problems.append(Problem(f"{where}: annotation {xml} not found"))
        return None
    except (OSError, ElementTree.ParseError) as exc:
        problems.append(Problem(f"{xml}: not a readable XML file ({exc})"))
        return None
    objects = []
    for k, obj in enumerate(tree.getroot().iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip()
        if name not in col_of:
            problems.append(Problem(f"{xml}: object {k}: unknown class {name!r} (VOC's 20: {', '.join(VOC_CLASSES)})"))
        elif difficult not in ("0", "1"):
            problems.append(Problem(f"{xml}: object {k}: <difficult> is {difficult!r}, expected 0 or 1"))
        else:
            objects.append((col_of[name], difficult == "1"))
    return objects
