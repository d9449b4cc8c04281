"""Pascal VOC 2007's layout (VOCdevkit/VOC2007): ImageSets/Main/{split}.txt, Annotations/*.xml, JPEGImages/."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from xml.etree import ElementTree

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
    file_problems,
    save_jpeg,
)
from mlic.data.decode import DecodeSettings
from mlic.data.folders import DecodeFolder, FolderPaths
from mlic.labels import LabelMatrix

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")  # the devkit's order


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
    listing = folders.listing(jpeg_dir)
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
    problems += folders.unknown_labels(split_file, VOC_CLASSES, labels)
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


def _parse(root, split: str | None, labels: Collection[str] | None, settings: DecodeSettings, *,
           voc_difficult: str) -> Parsed:
    return parse_voc(root, split, voc_difficult, labels, settings)


def _example(root: Path) -> dict[str, set[str]]:
    expected, ids = {}, []
    (root / "Annotations").mkdir(parents=True)
    for k, (image, positives) in enumerate(example_rows(["dog", "person", "car"])):
        image_id = f"{k + 1:06d}"
        save_jpeg(image, root / "JPEGImages" / f"{image_id}.jpg")
        objects = "".join(f"<object><name>{name}</name><difficult>0</difficult></object>" for name in positives)
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation><folder>VOC2007</folder>{objects}</annotation>")
        ids.append(image_id)
        expected[f"{image_id}.jpg"] = set(positives)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return expected


FORMAT = Format("voc", _parse, "VOCdevkit/VOC2007: ImageSets/Main/{split}.txt, Annotations/*.xml, JPEGImages/ "
                "(split trainval)", _example,
                options=(Option("voc_difficult", "ignore", "a class seen only in difficult objects is unknown "
                                "(ignore) or positive", choices=("ignore", "positive")),))
