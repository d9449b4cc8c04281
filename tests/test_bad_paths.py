"""Bad paths are data problems, never tracebacks (issue: every bad input is one line): broken and looping
links, non-files, non-UTF-8 names and data roots, one file named twice, images outside the data root, label
names that cannot be file names, and NaN (unknown) in a dense label array."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.config import DataConfig
from mlic.data.datasets import label_name_problems
from mlic.data.formats import parse_helsinki
from mlic.data.registry import load_dataset
from mlic.data.split import rarest_label_split, stratified_split
from mlic.errors import DataError
from mlic.labels import LabelMatrix
from mlic.sampler import MultilabelBalancedSampler
from tests.helpers import REPO


def _non_utf8(folder: Path, name: bytes) -> Path:
    """folder/name for a name that is not UTF-8 (a str as os.fsdecode gives it: surrogate-escaped)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def _dangling(root: Path) -> str:
    (root / "images" / "im5.jpg").unlink()
    os.symlink("nowhere.jpg", root / "images" / "im5.jpg")
    return "im5.jpg: cannot read image: a broken symbolic link (to nowhere.jpg)"


def _looping(root: Path) -> str:
    (root / "images" / "im7.jpg").unlink()
    os.symlink("im7.jpg", root / "images" / "im7.jpg")  # ln -s loop loop
    return "im7.jpg: cannot read image: a symbolic link loop"


def _folder(root: Path) -> str:
    (root / "images" / "im9.jpg").unlink()
    (root / "images" / "im9.jpg").mkdir()
    return "im9.jpg: cannot read image: not a file"


def _in_non_utf8_root(demo_copy: Path) -> Path:
    return Path(shutil.move(demo_copy, _non_utf8(demo_copy.parent, b"demo\xff")))


def _train(root: Path, out: Path, *extra: str) -> int:
    return main(["train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), f"data.root={root}", "train.epochs=1",
                 "train.max_steps_per_epoch=1", "run.progress=false", "run.trackers=[]", f"run.output_dir={out}", *extra])


@pytest.mark.parametrize("damage", [_dangling, _looping, _folder])
@pytest.mark.parametrize("non_utf8_root", [False, True])
def test_a_bad_link_or_non_file_is_one_check_data_line(demo_copy, capfd, damage, non_utf8_root):
    """capfd: its stderr replaces what it cannot encode, as a terminal's (backslashreplace) does; capsys's
    raises, and the CLI's summary line names ROOT."""
    root = _in_non_utf8_root(demo_copy) if non_utf8_root else demo_copy
    needle = damage(root)
    assert main(["check-data", str(root)]) == 1
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].endswith(needle), lines
    assert lines[0].startswith(str(demo_copy.parent / "demo\\xff") if non_utf8_root else str(root))


@pytest.mark.parametrize("damage", [_dangling, _looping])
def test_training_skips_a_bad_link_under_skip_bad_and_stops_in_one_line_without(demo_copy, tmp_path, capsys, damage):
    root = _in_non_utf8_root(demo_copy) if damage is _looping else demo_copy
    needle = damage(root)
    assert _train(root, tmp_path / "stopped") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and needle in err, err
    assert _train(root, tmp_path / "run", "data.skip_bad=true") == 0
    assert "Traceback" not in capsys.readouterr().err
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert next(x for x in lines if x["split"] == "train")["skipped_images"] == 1


def test_a_clean_dataset_in_a_non_utf8_root_checks_and_trains(demo_copy, tmp_path, capfd):
    root = _in_non_utf8_root(demo_copy)
    assert main(["check-data", str(root)]) == 0
    assert capfd.readouterr().out == ""
    assert _train(root, tmp_path / "run") == 0


def test_a_non_utf8_file_name_is_listed_printably(demo_copy, capsys):
    """A stray file in images/ is not an image of the dataset (harmless, as a .DS_Store): check-data lists
    it with its byte escaped, training goes on."""
    shutil.copy(demo_copy / "images" / "im1.jpg", _non_utf8(demo_copy / "images", b"im\xff.jpg"))
    assert main(["check-data", str(demo_copy)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{demo_copy}/images/im\\xff.jpg: unexpected file name (expected im{{N}}.jpg)"]
    assert len(load_dataset(DataConfig(root=str(demo_copy)))[1]) == 300


def test_a_non_utf8_annotation_file_name_is_a_problem(demo_copy, tmp_path, capsys):
    (demo_copy / "annotations" / "baby.txt").rename(_non_utf8(demo_copy / "annotations", b"b\xffby.txt"))
    assert main(["check-data", str(demo_copy)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{demo_copy}/annotations/b\\xffby.txt: label name 'b\\xffby' is not UTF-8; rename it"]
    assert _train(demo_copy, tmp_path / "run", "data.skip_bad=true") == 1  # a label, not an image: not skipped
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "b\\xffby" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_problem_with_its_row(demo_copy):
    (demo_copy / "images" / "im3.jpg").chmod(0)
    problems = parse_helsinki(demo_copy)[1]
    assert [(p.text.split("/")[-1], p.row) for p in problems] == [("im3.jpg: cannot read image: no permission to read it", 2)]


def _csv_root(root: Path, lines: list[str]) -> Path:
    (root / "a").mkdir(parents=True)
    for n in (1, 2, 3):
        Image.new("RGB", (8, 8), (n * 60, 0, 0)).save(root / "a" / f"x{n}.jpg")
    (root / "labels.csv").write_text("path,labels\n" + "".join(f"{line}\n" for line in lines))
    return root


@pytest.mark.parametrize("spelling", ["a/./x1.jpg", "a/../a/x1.jpg", "./a//x1.jpg", "link.jpg"])
def test_one_file_named_twice_in_a_csv_is_a_duplicate(tmp_path, capsys, spelling):
    root = _csv_root(tmp_path / "d", ["a/x1.jpg,dog", f"{spelling},cat", "a/x2.jpg,dog", "a/x3.jpg,cat"])
    os.symlink("a/x1.jpg", root / "link.jpg")
    assert main(["check-data", "--format", "csv", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{root}/labels.csv:3: duplicate of line 2 ({spelling}, the same file as a/x1.jpg)"]


def test_an_image_outside_the_data_root_is_a_warning(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "y.jpg")
    root = _csv_root(tmp_path / "d", ["a/x1.jpg,dog", "../other/y.jpg,cat", f"{other}/y.jpg,dog", "out.jpg,cat",
                                      "a/x2.jpg,dog|cat"])
    os.symlink(other / "y.jpg", root / "out.jpg")
    assert main(["check-data", "--format", "csv", str(root)]) == 1  # one file thrice: duplicates
    captured = capsys.readouterr()
    assert [line.split("labels.csv:")[1] for line in captured.out.splitlines()] == [
        "4: duplicate of line 3 (" + f"{other}/y.jpg, the same file as ../other/y.jpg)",
        "5: duplicate of line 3 (out.jpg, the same file as ../other/y.jpg)"]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {root}/labels.csv: 1 image(s) outside {root}: ../other/y.jpg (line 3)"]
    (root / "labels.csv").write_text("path,labels\na/x1.jpg,dog\n../other/y.jpg,cat\na/x2.jpg,dog|cat\n")
    assert main(["check-data", "--format", "csv", str(root)]) == 0
    assert "1 image(s) outside" in capsys.readouterr().err
    assert main(["check-data", "--strict", "--format", "csv", str(root)]) == 1
    capsys.readouterr()
    dataset, rows = load_dataset(DataConfig(format="csv", root=str(root)))  # training still reads it
    assert dataset.names == ["a/x1.jpg", "../other/y.jpg", "a/x2.jpg"] and len(rows) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {root}/labels.csv: 1 image(s) outside {root}: ../other/y.jpg (line 3)"]
    (root / "images").symlink_to(other)  # a folder of the data kept on another disk: the data's own
    (root / "labels.csv").write_text("path,labels\na/x1.jpg,dog\nimages/y.jpg,cat\na/x2.jpg,dog|cat\n")
    assert main(["check-data", "--strict", "--format", "csv", str(root)]) == 0


def test_label_names_that_cannot_be_file_names_are_warnings(demo_copy, tmp_path, capsys):
    """A name that cannot be a file name is a warning; no name at all (blank, or the file `.txt`) is a problem:
    the exported model, results and figures could not say which label it is."""
    (demo_copy / "annotations" / "a.b.txt").write_text("3\n")  # fine: the label 'a.b'
    (demo_copy / "annotations" / "...txt").write_text("3\n")  # the label '..'
    assert main(["check-data", str(demo_copy)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split("annotations/")[1] for line in err if "cannot be a file name" in line] == [
        "...txt: label name '..' cannot be a file name ({label}.txt); rename it"]
    assert main(["check-data", "--strict", str(demo_copy)]) == 1
    (demo_copy / "annotations" / " .txt").write_text("1\n")
    (demo_copy / "annotations" / ".txt").write_text("2\n")  # the label ''
    assert main(["check-data", str(demo_copy)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split("annotations/", 1)[1] for line in out if "empty or blank" in line] == [
        " .txt: label name ' ' is empty or blank (the helsinki file of label X is annotations/X.txt); rename it",
        ".txt: label name '' is empty or blank (the helsinki file of label X is annotations/X.txt); rename it"]
    with pytest.raises(DataError, match="empty or blank"):
        load_dataset(DataConfig(root=str(demo_copy)))
    root = _csv_root(tmp_path / "d", ["a/x1.jpg,..", "a/x2.jpg,dog"])
    assert main(["check-data", "--strict", "--format", "csv", str(root)]) == 1
    assert "label name '..' cannot be a file name" in capsys.readouterr().err


def test_which_label_names_cannot_be_file_names():
    blank, bad = ["", " ", "\t"], [".", "..", "a/b", "a\0b", "two\nlines"]
    good = ["dog", "a b", ".hidden", ".txt", "x.txt", "café", "..x"]  # .txt: the file .txt.txt
    flagged = label_name_problems(blank + bad + good, "f")
    assert [p.warning for p in flagged] == [False] * len(blank) + [True] * len(bad)
    assert all("\n" not in p.text for p in flagged)
    assert all("cannot be a file name" in p.text for p in flagged[len(blank):])
    assert not label_name_problems(["/m/0bt9lr"], "f", slash=True)  # Open Images' MIDs


def test_known_label_lists_in_messages_are_capped(demo_dir, capsys):
    assert main(["check-data", str(demo_dir), "--labels", ",".join(f"l{i:02d}" for i in range(20))]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("(known: l00, l01, l02, l03, l04 and 15 more)"), first


# ---- NaN in a dense float label array is unknown, not positive
NAN_LABELS = np.array([[1, np.nan], [0, 1], [1, 0]])


def test_nan_is_an_unknown_entry_of_a_label_matrix():
    m = LabelMatrix.of(NAN_LABELS)
    assert m.positive_counts().tolist() == [2, 1] and m.known_counts().tolist() == [3, 2]
    assert np.isnan(m.target_rows([0]).numpy()[0, 1])
    both = LabelMatrix.of(NAN_LABELS, known=np.array([[1, 1], [0, 1], [1, 1]], dtype=bool))  # and a mask
    assert both.known_counts().tolist() == [2, 2] and both.positive_counts().tolist() == [2, 1]


def test_the_sampler_never_draws_an_image_for_its_unknown_label():
    sampler = MultilabelBalancedSampler(NAN_LABELS, "cycle", num_samples=60, empty_share=0.0, seed=0)
    order = sampler.order(0).numpy()
    assert set(order[1::2].tolist()) == {1}  # class 1's only positive is row 1; row 0's NaN is not one


def test_the_split_stratifies_by_the_positives_only():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 4)) < 0.2).astype(float)
    y[rng.random(y.shape) < 0.3] = np.nan
    zeros, ones = np.nan_to_num(y, nan=0.0), np.nan_to_num(y, nan=1.0)
    for split in (lambda labels: stratified_split(labels, 0.25, seed=1),
                  lambda labels: rarest_label_split(LabelMatrix.of(labels), 0.25, seed=1)):
        train, val = split(y)
        expected = split(zeros)
        assert train.tolist() == expected[0].tolist() and val.tolist() == expected[1].tolist()
        assert split(ones)[1].tolist() != val.tolist()  # NaN read as positive would split otherwise


def test_coco_names_one_file_twice_or_one_outside_root(tmp_path):
    from mlic.data.registry import parse
    from tests.test_formats_standard import _coco

    other = tmp_path / "elsewhere.jpg"
    Image.new("RGB", (8, 8)).save(other)
    images = [{"id": 10, "file_name": "a"}, {"id": 11, "file_name": "sub/../a"}, {"id": 12, "file_name": "out"},
              {"id": 13, "file_name": "gone"}]
    root = _coco(tmp_path / "coco", images, [], files=("a.jpg", "b.jpg"))
    (root / "train2017" / "sub").mkdir()
    os.symlink(other, root / "train2017" / "out.jpg")
    os.symlink("nowhere.jpg", root / "train2017" / "gone.jpg")
    ds, problems = parse("coco", root)
    ann = root / "annotations" / "instances_train2017.json"
    assert [(p.text, p.warning, p.row) for p in problems] == [
        (f"{ann}: images[1]: sub/../a.jpg is the file of images[0] too", False, None),
        (f"{ann}: 1 image(s) outside {root}: out.jpg (images[2])", True, None),
        (f"{root}/train2017/gone.jpg: cannot read image: a broken symbolic link (to nowhere.jpg)", False, 3)]


def test_a_split_that_holds_out_nothing_is_one_line(tmp_path, monkeypatch, capsys):
    """Iterative stratification over many rare labels can hold out no image at all: refused at build, not a
    torch.cat() error at the first evaluation."""
    root = tmp_path / "rare"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    positives: dict[int, list[int]] = {}
    for label in range(1200):
        for image in rng.choice(150, 2, replace=False):
            positives.setdefault(int(image), []).append(label)
    for image in range(150):
        Image.new("RGB", (8, 8), (image, 0, 0)).save(root / "img" / f"{image}.png")
    (root / "labels.csv").write_text("path,labels\n" + "".join(
        f"img/{i}.png,{'|'.join(f'l{k}' for k in positives.get(i, []))}\n" for i in range(150)))
    monkeypatch.chdir(tmp_path)
    code = main(["train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), "--dry-run", "data.format=csv",
                 f"data.root={root}", "data.num_workers=0", "run.trackers=[]", "run.output_dir=run"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "no validation image" in errors[0], errors
