"""The benchmark formats (coco, voc, openimages) and csv's verified negatives, each written in its own
exact layout by the test: the parsed labels (positives and known entries), label order, row names,
every documented problem, `mlic check-data` and `load_dataset` on them."""

import json

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.config import DataConfig
from mlic.data.formats.openimages import class_descriptions
from mlic.data.formats.voc import VOC_CLASSES
from mlic.data.registry import check_command, load_dataset, parse
from mlic.errors import DataError


def _jpeg(path, shade=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 100, 200)).save(path, format="JPEG")


def _texts(problems):
    return [p.text for p in problems]


def _assert_lines(problems, needles):
    """Each needle in exactly one problem line, and no other line."""
    texts = _texts(problems)
    for needle in needles:
        assert sum(needle in t for t in texts) == 1, (needle, texts)
    assert len(texts) == len(needles), texts


# ---- COCO
def _coco(root, images=None, annotations=None, files=("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
    categories = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                  {"id": 90, "name": "toothbrush"}]  # toothbrush: no annotation, still a label
    images = images or [{"id": 10 + i, "file_name": name} for i, name in enumerate("abcd")]
    for image in images:
        image["file_name"] = image["file_name"] if image["file_name"].endswith(".jpg") else image["file_name"] + ".jpg"
    annotations = annotations if annotations is not None else [
        {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 18, "iscrowd": 0},
        {"id": 3, "image_id": 10, "category_id": 1, "iscrowd": 0},
        {"id": 4, "image_id": 11, "category_id": 3, "iscrowd": 1},  # a crowd annotation counts
        {"id": 5, "image_id": 13, "category_id": 18, "iscrowd": 0}]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    for k, name in enumerate(files):
        _jpeg(root / "train2017" / name, 30 * k)
    return root


def test_coco_labels_by_category_id_and_unannotated_images(tmp_path):
    ds, problems = parse("coco", _coco(tmp_path / "coco"))
    assert problems == []
    assert ds.label_names == ["person", "car", "dog", "toothbrush"]
    assert ds.names == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    np.testing.assert_array_equal(ds.labels.dense(), [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    assert ds.labels.known_dense() is None
    assert ds.read(2).mode == "RGB" and ds.read(2).size == (8, 8)


def test_coco_problems(tmp_path):
    images = [{"id": 10, "file_name": "a"}, {"id": 11, "file_name": "b"}, {"id": 12, "file_name": "gone"}]
    annotations = [{"id": 1, "image_id": 10, "category_id": 1}, {"id": 7, "image_id": 99, "category_id": 1},
                   {"id": 8, "image_id": 11, "category_id": 77}]
    root = _coco(tmp_path / "coco", images, annotations, files=("a.jpg", "b.jpg"))
    ds, problems = parse("coco", root)
    ann = root / "annotations" / "instances_train2017.json"
    _assert_lines(problems, [f"{ann}: images[2] (id 12): image {root / 'train2017' / 'gone.jpg'} not found",
                             f"{ann}: annotations[1] (id 7): unknown image_id 99",
                             f"{ann}: annotations[2] (id 8): unknown category_id 77"])
    assert ds.names == ["a.jpg", "b.jpg"]  # the image without its file is left out
    np.testing.assert_array_equal(ds.labels.dense(), [[1, 0, 0, 0], [0, 0, 0, 0]])
    ann.write_text("{not json")
    assert _texts(parse("coco", root)[1])[0].startswith(f"{ann}: not a readable JSON file")
    ds, problems = parse("coco", root, split="val2017")
    assert ds is None and str(root / "annotations" / "instances_val2017.json") in problems[0].text
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": [], "categories": []}))
    assert _texts(parse("coco", root, split="val2017")[1]) == [f"{root / 'val2017'}: images folder not found "
                                                                "(expected ROOT/val2017/<file_name>)"]


# ---- VOC
def _voc_xml(objects):
    body = "".join(f"<object><name>{name}</name><difficult>{int(hard)}</difficult></object>" for name, hard in objects)
    return f"<annotation><folder>VOC2007</folder>{body}</annotation>"


VOC_IMAGES = {"000001": [("dog", False), ("person", False)],
              "000002": [("cat", True), ("cat", False)],  # one plain cat: positive in both modes
              "000003": [("chair", True), ("person", False)],  # chair only difficult
              "000004": []}


def _voc(root, images=VOC_IMAGES, split="trainval", listed=None):
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for k, (image_id, objects) in enumerate(images.items()):
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
        _jpeg(root / "JPEGImages" / f"{image_id}.jpg", 40 * k)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(listed or images) + "\n")
    return root


def _voc_row(*names):
    return [int(c in names) for c in VOC_CLASSES]


def test_voc_difficult_objects_unknown_or_positive(tmp_path):
    root = _voc(tmp_path / "VOC2007")
    ds, problems = parse("voc", root)
    assert problems == []
    assert ds.label_names == list(VOC_CLASSES) and ds.label_names[:3] == ["aeroplane", "bicycle", "bird"]
    assert ds.names == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    positives = [_voc_row("dog", "person"), _voc_row("cat"), _voc_row("person"), _voc_row()]
    np.testing.assert_array_equal(ds.labels.dense(), positives)
    known = np.ones((4, 20), dtype=bool)
    known[2, VOC_CLASSES.index("chair")] = False  # present only as difficult: neither positive nor negative
    np.testing.assert_array_equal(ds.labels.known_dense(), known)
    ds, problems = parse("voc", root, voc_difficult="positive")
    positives[2] = _voc_row("person", "chair")
    np.testing.assert_array_equal(ds.labels.dense(), positives)
    assert ds.labels.known_dense() is None


def test_voc_problems(tmp_path):
    images = {"000001": [("dog", False), ("unicorn", False)], "000002": [("cat", False)]}
    root = _voc(tmp_path / "VOC2007", images, split="val", listed=["000001", "000002", "000005", "000006", "000007"])
    _jpeg(root / "JPEGImages" / "000005.jpg")  # no xml
    _jpeg(root / "JPEGImages" / "000006.jpg")
    (root / "Annotations" / "000006.xml").write_text("<annotation><object>")  # not XML
    (root / "Annotations" / "000007.xml").write_text(_voc_xml([("dog", False)]))  # no image
    ds, problems = parse("voc", root, split="val")
    listing, ann = root / "ImageSets" / "Main" / "val.txt", root / "Annotations"
    _assert_lines(problems, [f"{ann / '000001.xml'}: object 2: unknown class 'unicorn'",
                             f"{listing}:3: annotation {ann / '000005.xml'} not found",
                             f"{ann / '000006.xml'}: not a readable XML file",
                             f"{listing}:5: image {root / 'JPEGImages' / '000007.jpg'} not found"])
    assert ds.names == ["000001.jpg", "000002.jpg"]
    np.testing.assert_array_equal(ds.labels.dense(), [_voc_row("dog"), _voc_row("cat")])
    ds, problems = parse("voc", root)  # default split trainval: no such file
    assert ds is None and str(root / "ImageSets" / "Main" / "trainval.txt") in problems[0].text


# ---- Open Images
OI_ROWS = ["0002b,verification,/m/dog,1", "0001a,verification,/m/cat,1", "0001a,verification,/m/dog,0",
           "0003c,crowdsource-verification,/m/car,0", "0004d,verification,/m/cat,0", "0004d,verification,/m/car,1"]
OI_DESCRIPTIONS = ['/m/car,"Car, automobile"', "/m/cat,Cat", "/m/dog,Dog", "/m/owl,Owl"]


def _openimages(root, rows=OI_ROWS, images=("0001a", "0002b", "0003c", "0004d"), labels_name="train",
                v6_descriptions=True):
    root.mkdir(parents=True)
    (root / f"{labels_name}-annotations-human-imagelabels.csv").write_text(
        "\n".join(["ImageID,Source,LabelName,Confidence", *rows]) + "\n")
    if v6_descriptions:  # V6: with a header line
        (root / "oidv6-class-descriptions.csv").write_text("\n".join(["LabelName,DisplayName", *OI_DESCRIPTIONS]) + "\n")
    else:  # older releases: none
        (root / "class-descriptions.csv").write_text("\n".join(OI_DESCRIPTIONS) + "\n")
    for k, image_id in enumerate(images):
        _jpeg(root / "train" / f"{image_id}.jpg", 50 * k)
    return root


def test_openimages_verified_positives_negatives_and_unknown(tmp_path):
    root = _openimages(tmp_path / "oi")
    ds, problems = parse("openimages", root)
    assert problems == []
    assert ds.label_names == ["/m/car", "/m/cat", "/m/dog"]  # MIDs of the CSV, sorted (owl: in no row)
    assert ds.names == ["0001a.jpg", "0002b.jpg", "0003c.jpg", "0004d.jpg"]  # ImageIDs sorted
    np.testing.assert_array_equal(ds.labels.dense(), [[0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(ds.labels.known_dense(), [[0, 1, 1], [0, 0, 1], [1, 0, 0], [1, 1, 0]])
    assert class_descriptions(root)["/m/car"] == "Car, automobile"
    assert ds.read(3).mode == "RGB"


def test_openimages_class_list_older_descriptions_and_v6_file_names(tmp_path):
    root = _openimages(tmp_path / "oi", labels_name="oidv6-train", v6_descriptions=False)
    (root / "classes-trainable.txt").write_text("/m/dog\n/m/car\n")
    ds, problems = parse("openimages", root, class_list="classes-trainable.txt")  # relative: found in ROOT
    assert problems == []
    assert ds.label_names == ["/m/dog", "/m/car"]  # the class list's order; cat rows ignored
    assert ds.names == ["0001a.jpg", "0002b.jpg", "0003c.jpg", "0004d.jpg"]
    np.testing.assert_array_equal(ds.labels.dense(), [[0, 0], [1, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(ds.labels.known_dense(), [[1, 0], [1, 0], [0, 1], [0, 1]])
    assert class_descriptions(root) == {"/m/car": "Car, automobile", "/m/cat": "Cat", "/m/dog": "Dog", "/m/owl": "Owl"}


def test_openimages_problems(tmp_path):
    rows = [*OI_ROWS, "0005e,verification,/m/dog,1", "0002b,verification,/m/cat,0.5"]
    root = _openimages(tmp_path / "oi", rows=rows)
    ds, problems = parse("openimages", root)
    csv_file = root / "train-annotations-human-imagelabels.csv"
    _assert_lines(problems, [f"{csv_file}:9: Confidence '0.5' is not 0 or 1",
                             f"{csv_file}: image 0005e: {root / 'train' / '0005e.jpg'} not found"])
    assert ds.names == ["0001a.jpg", "0002b.jpg", "0003c.jpg", "0004d.jpg"]
    assert ds.labels.known_dense()[1].tolist() == [False, False, True]  # the bad line counts as nothing
    csv_file.write_text("ImageID,LabelName,Confidence\n0001a,/m/cat,1\n")
    assert _texts(parse("openimages", root)[1]) == [
        f"{csv_file}:1: header must be ImageID,Source,LabelName,Confidence (found ImageID,LabelName,Confidence)"]
    ds, problems = parse("openimages", root, split="validation")
    assert ds is None and "validation-annotations-human-imagelabels.csv" in problems[0].text


# ---- csv verified negatives
def _csv(root, lines, name="labels.csv"):
    for k, image in enumerate("abcd"):
        _jpeg(root / f"{image}.jpg", 60 * k)
    (root / name).write_text("\n".join(["path,labels", *lines]) + "\n")
    return root


def test_csv_verified_negatives_make_partial_labels(tmp_path):
    root = _csv(tmp_path / "d", ["a.jpg,cat|-dog", "b.jpg,dog", "c.jpg,-bird", "d.jpg,"])
    ds, problems = parse("csv", root)
    assert problems == []
    assert ds.label_names == ["bird", "cat", "dog"]  # bird: only ever a negative, still a label
    np.testing.assert_array_equal(ds.labels.dense(), [[0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ds.labels.known_dense(), [[0, 1, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    root = _csv(tmp_path / "plain", ["a.jpg,cat", "b.jpg,dog|cat", "c.jpg,", "d.jpg,dog"])
    ds, _ = parse("csv", root)
    assert ds.labels.known_dense() is None  # no -name: every entry known, as before


def test_csv_negative_problems_and_split_file(tmp_path):
    root = _csv(tmp_path / "d", ["a.jpg,cat|-cat", "b.jpg,dog|-", "c.jpg,-dog", "d.jpg,"], name="val.csv")
    ds, problems = parse("csv", root)
    assert ds is None and "no labels.csv or data.csv" in problems[0].text
    ds, problems = parse("csv", root, split="val")
    manifest = root / "val.csv"
    _assert_lines(problems, [f"{manifest}:2: label 'cat' is both positive and negative",
                             f"{manifest}:3: '-' is not a label name"])
    assert ds.label_names == ["dog"]
    np.testing.assert_array_equal(ds.labels.known_dense(), [[0], [1], [1], [0]])


# ---- check-data and load_dataset
def _all_formats(tmp_path):
    return {"coco": _coco(tmp_path / "coco"), "voc": _voc(tmp_path / "voc"), "openimages": _openimages(tmp_path / "oi"),
            "csv": _csv(tmp_path / "csv", ["a.jpg,cat|-dog", "b.jpg,dog", "c.jpg,", "d.jpg,-cat"])}


def test_check_data_on_every_format(tmp_path, capsys):
    roots = _all_formats(tmp_path)
    for fmt, root in roots.items():
        assert main(["check-data", "--format", fmt, "--workers", "1", str(root)]) == 0, fmt
        out, err = capsys.readouterr()
        assert out == "", (fmt, out)
        assert ("partial labels:" in err) == (fmt != "coco"), (fmt, err)
    capsys.readouterr()
    main(["check-data", "--format", "openimages", str(roots["openimages"])])
    assert "partial labels: 3 verified positive, 3 verified negative, 6 unknown entries" in capsys.readouterr().err
    assert main(["check-data", "--format", "voc", "--voc-difficult", "positive", str(roots["voc"])]) == 0
    assert "partial labels" not in capsys.readouterr().err
    (roots["openimages"] / "dogs.txt").write_text("/m/dog\n")
    assert main(["check-data", "--format", "openimages", "--class-list", str(roots["openimages"] / "dogs.txt"),
                 str(roots["openimages"])]) == 0
    assert "of 4 images x 1 labels" in capsys.readouterr().err


def test_check_data_lists_problems_of_the_new_formats(tmp_path, capsys):
    roots = _all_formats(tmp_path)
    (roots["coco"] / "train2017" / "b.jpg").unlink()
    (roots["voc"] / "Annotations" / "000002.xml").write_text(_voc_xml([("griffin", False)]))
    (roots["openimages"] / "train" / "0003c.jpg").write_bytes(b"")  # zero-byte: found when decoding
    (roots["csv"] / "labels.csv").write_text("path,labels\na.jpg,cat|-cat\n")
    expected = {"coco": "images[1] (id 11): image", "voc": "000002.xml: object 1: unknown class 'griffin'",
                "openimages": "0003c.jpg: cannot read image: zero-byte file",
                "csv": "labels.csv:2: label 'cat' is both positive and negative"}
    for fmt, root in roots.items():
        assert main(["check-data", "--format", fmt, "--workers", "1", str(root)]) == 1, fmt
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1 and expected[fmt] in out[0], (fmt, out)


def test_load_dataset_reads_each_format_by_config(tmp_path):
    roots = _all_formats(tmp_path)
    (roots["voc"] / "ImageSets" / "Main" / "test.txt").write_text("000003\n")
    (roots["openimages"] / "dogs.txt").write_text("/m/dog\n")
    ds, rows = load_dataset(DataConfig(format="coco", root=str(roots["coco"])))
    assert ds.label_names[0] == "person" and rows.tolist() == [0, 1, 2, 3]
    ds, rows = load_dataset(DataConfig(format="voc", root=str(roots["voc"]), split="test", voc_difficult="positive"))
    assert ds.names == ["000003.jpg"] and ds.labels.dense()[0, VOC_CLASSES.index("chair")] == 1
    ds, rows = load_dataset(DataConfig(format="openimages", root=str(roots["openimages"]),
                                       class_list=str(roots["openimages"] / "dogs.txt")))
    assert ds.label_names == ["/m/dog"] and ds.labels.partial
    ds, rows = load_dataset(DataConfig(format="csv", root=str(roots["csv"])))
    assert ds.label_names == ["cat", "dog"] and ds.labels.partial and len(rows) == 4
    with pytest.raises(DataError, match="check-data --format voc --split val --voc-difficult positive"):
        load_dataset(DataConfig(format="voc", root=str(roots["voc"]), split="val", voc_difficult="positive"))


def test_check_command_names_only_the_flags_that_differ():
    assert check_command("coco", "/d") == "mlic check-data --format coco /d"
    assert check_command("coco", "/d", split="val2017") == "mlic check-data --format coco --split val2017 /d"
    assert check_command("openimages", "/d", class_list="c.txt") == "mlic check-data --format openimages --class-list c.txt /d"
    assert check_command("hf", "/d", split="train") == "mlic check-data --format hf /d"
    assert check_command("hf", "/d", split="test", image_column="pic") == "mlic check-data --format hf --split test --image-column pic /d"
