import dataclasses
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mlic.config import DataConfig
from mlic.data.demo import LABELS
from mlic.data.formats import parse_helsinki
from mlic.data.registry import load_csv, load_dataset, load_helsinki, load_hf
from mlic.data.split import stratified_split
from mlic.errors import DataError


def _helsinki(root, images: dict[int, Image.Image], annotations: dict[str, list[str]] | None):
    (root / "images").mkdir(parents=True)
    for n, img in images.items():  # a palette image can't be JPEG: PNG bytes under a .jpg name
        img.save(root / "images" / f"im{n}.jpg", format="PNG" if img.mode == "P" else "JPEG")
    if annotations is not None:
        (root / "annotations").mkdir()
        for name, lines in annotations.items():
            (root / "annotations" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_helsinki_targets_modes_and_unlabelled_images(tmp_path):
    rgb = Image.new("RGB", (16, 16), (200, 10, 10))
    images = {1: rgb, 2: rgb.convert("L"), 3: rgb.convert("CMYK"), 4: rgb.convert("P"), 10: rgb}
    root = _helsinki(tmp_path / "d", images, {"dog": ["1", "3", ""], "cat": ["3", "10"]})
    ds = load_helsinki(root)
    assert ds.label_names == ["cat", "dog"]  # sorted file stems
    assert ds.names == ["im1.jpg", "im2.jpg", "im3.jpg", "im4.jpg", "im10.jpg"]  # number order, not text order
    np.testing.assert_array_equal(ds.targets, [[0, 1], [0, 0], [1, 1], [0, 0], [1, 0]])
    for i in range(len(ds)):
        assert ds.read(i).mode == "RGB"
    x, y, i = ds[1]  # an image in no annotation file: all-zero target, still a sample
    assert y.dtype == torch.float32 and y.tolist() == [0.0, 0.0] and i == 1


def test_a_dataset_is_immutable_and_survives_pickling(demo_dir):
    ds = load_helsinki(demo_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.targets = np.zeros_like(ds.targets)
    with pytest.raises(ValueError, match="read-only"):
        ds.targets[0, 0] = 1
    copy = pickle.loads(pickle.dumps(ds))  # DataLoader workers under the spawn start method pickle it
    assert copy.names == ds.names and np.array_equal(np.asarray(copy.read(3)), np.asarray(ds.read(3)))


def test_the_parser_returns_the_dataset_and_every_problem(tmp_path):
    images = {n: Image.new("RGB", (8, 8)) for n in (1, 2, 3)}
    root = _helsinki(tmp_path / "d", images, {"dog": ["1", "x", "0", "2", "1"], "cat": ["7"]})
    (root / "images" / "im02.jpg").write_bytes((root / "images" / "im2.jpg").read_bytes())
    ds, problems = parse_helsinki(root)
    np.testing.assert_array_equal(ds.targets, [[0, 1], [0, 1], [0, 0]])  # the good lines still count
    expected = ["im2.jpg: same image number as im02.jpg", "cat.txt:1: image im7.jpg not found",
                "dog.txt:2: 'x' is not an image number", "dog.txt:3: image number 0 out of range",
                "dog.txt:5: duplicate of line 1 (image 1)"]
    assert len(problems) == len(expected) and all(p.row is None for p in problems)
    for needle in expected:
        assert sum(needle in p.text for p in problems) == 1, (needle, problems)
    with pytest.raises(DataError, match=r"dog\.txt:2: 'x' is not an image number"):
        load_helsinki(root)  # training's loader raises on the same problems


def test_skip_bad_leaves_only_unreadable_images_out(tmp_path):
    images = {n: Image.new("RGB", (8, 8)) for n in (1, 2, 3, 4)}
    root = _helsinki(tmp_path / "d", images, {"dog": ["1", "2"]})
    (root / "images" / "im3.jpg").write_bytes(b"")
    ds, rows = load_dataset(DataConfig(root=str(root), skip_bad=False))  # images are decoded later (the cache)
    assert rows.tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match=r"im3\.jpg: cannot read image: zero-byte file"):
        ds.read(2)
    ds, rows = load_dataset(DataConfig(root=str(root), skip_bad=True))
    assert len(ds) == 4 and rows.tolist() == [0, 1, 3]
    (root / "annotations" / "dog.txt").write_text("1\n9\n")  # not an image problem: skip_bad does not skip it
    with pytest.raises(DataError, match=r"dog\.txt:2: image im9\.jpg not found"):
        load_dataset(DataConfig(root=str(root), skip_bad=True))


def test_helsinki_without_annotations_is_a_test_set(tmp_path):
    root = _helsinki(tmp_path / "t", {20001: Image.new("RGB", (8, 8)), 20002: Image.new("RGB", (8, 8))}, None)
    ds = load_helsinki(root)
    assert ds.num_labels == 0 and ds.names == ["im20001.jpg", "im20002.jpg"]


@pytest.mark.parametrize(
    ("annotations", "needle"),
    [
        ({"dog": ["1", "abc"]}, r"dog\.txt:2: 'abc' is not an image number"),
        ({"dog": ["1", "999999"]}, r"dog\.txt:2: image im999999\.jpg not found"),
        ({}, "annotations folder has no"),
    ],
)
def test_helsinki_bad_annotations_name_file_and_line(tmp_path, annotations, needle):
    root = _helsinki(tmp_path / "d", {1: Image.new("RGB", (8, 8))}, annotations)
    with pytest.raises(DataError, match=needle):
        load_helsinki(root)


def test_missing_root_and_corrupt_image_are_clear(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataConfig(root=str(tmp_path / "nope")))
    root = _helsinki(tmp_path / "d", {1: Image.new("RGB", (8, 8))}, {"dog": ["1"]})
    data = (root / "images" / "im1.jpg").read_bytes()
    (root / "images" / "im1.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"im1\.jpg: cannot read image"):
        load_helsinki(root).read(0)


def test_csv_manifest(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "labels.csv").write_text("path,labels\nimg/a.png,sea|tree\nimg/b.png,\nimg/c.png,tree\n")
    ds = load_csv(tmp_path)
    assert ds.label_names == ["sea", "tree"]
    np.testing.assert_array_equal(ds.targets, [[1, 1], [0, 0], [0, 1]])
    (tmp_path / "labels.csv").write_text("path,labels\nimg/zzz.png,sea\n")
    with pytest.raises(DataError, match=r"labels\.csv:2: image 'img/zzz\.png' not found"):
        load_csv(tmp_path)


@pytest.mark.parametrize("kind", ["classlabel", "names", "multihot"])
def test_hf_dataset_from_disk(tmp_path, kind):
    import datasets

    imgs = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    if kind == "classlabel":
        features = datasets.Features({"image": datasets.Image(),
                                      "labels": datasets.Sequence(datasets.ClassLabel(names=["x", "y", "z"]))})
        labels = [[0], [1, 2], [], [2]]
    elif kind == "names":
        features = None
        labels = [["x"], ["y", "z"], [], ["z"]]
    else:
        features = None
        labels = [[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1]]
    ds = datasets.Dataset.from_dict({"image": imgs, "labels": labels}, features=features)
    if features is None:
        ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    loaded = load_hf(str(tmp_path / "hf"), "image", "labels", "train")
    np.testing.assert_array_equal(loaded.targets, [[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1]])
    assert loaded.read(1).mode == "RGB" and len(loaded) == 4
    with pytest.raises(DataError, match="no column 'tags'"):
        load_hf(str(tmp_path / "hf"), "image", "tags", "train")


def test_stratified_split_is_fixed_by_seed_and_keeps_rare_labels(demo_dir):
    y = load_helsinki(demo_dir).targets
    tr, va = stratified_split(y, 0.2, seed=0)
    tr2, va2 = stratified_split(y, 0.2, seed=0)
    np.testing.assert_array_equal(va, va2)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert abs(len(va) - 0.2 * len(y)) <= 0.02 * len(y)
    # every label with >= 5 positives has positives on both sides
    for c in range(y.shape[1]):
        if y[:, c].sum() >= 5:
            assert y[tr, c].sum() > 0 and y[va, c].sum() > 0, LABELS[c]
    assert not np.array_equal(stratified_split(y, 0.2, seed=1)[1], va)


def test_every_format_name_has_a_parser_that_names_what_is_missing(tmp_path, capsys):
    """The names data.format and every command's --format take (mlic.data.formats.FORMATS) are the parsers':
    `mlic evaluate --format` once took 3 of the 6."""
    from mlic.cli import main
    from mlic.data.formats import FORMATS
    from mlic.data.registry import parse

    for name in FORMATS:
        dataset, problems = parse(name, tmp_path)  # an empty folder: the format's own first problem
        assert dataset is None and problems and str(tmp_path) in problems[0].text, name
        assert main(["check-data", "--format", name, str(tmp_path)]) == 1  # argparse would exit 2
        assert main(["evaluate", str(tmp_path / "no-model"), str(tmp_path), "--format", name]) == 1
        assert "invalid choice" not in capsys.readouterr().err
