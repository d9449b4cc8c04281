import contextlib
import io
from types import SimpleNamespace

import pytest

from mlic.cli import main
from mlic.config import DataConfig, load_config
from mlic.data.pipeline import build_data, load_split
from mlic.data.registry import load_dataset
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.errors import DataError
from mlic.models import Preprocess
from tests.helpers import REPO


def _one_process():
    return SimpleNamespace(num_processes=1, local_main_process_first=contextlib.nullcontext)


def _preprocess(size=32):
    return Preprocess(size, IMAGENET_MEAN, IMAGENET_STD)


def test_clean_demo_data_exits_0(demo_dir, capsys):
    assert main(["check-data", str(demo_dir)]) == 0
    assert capsys.readouterr().out == ""


def test_every_injected_fault_is_reported(demo_copy, capsys):
    images, ann = demo_copy / "images", demo_copy / "annotations"
    data = (images / "im1.jpg").read_bytes()
    (images / "im1.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (images / "im2.jpg").write_bytes(b"")  # zero-byte
    (images / "im3.jpg").write_text("this is not a picture")  # text named .jpg
    dog = ann / "dog.txt"
    first = dog.read_text().splitlines()[0]
    dog.write_text(dog.read_text() + "abc\n999999\n" + first + "\n")
    assert main(["check-data", str(demo_copy)]) == 1
    out = capsys.readouterr().out.splitlines()
    n = len((ann / "dog.txt").read_text().splitlines())
    expected = [
        "im1.jpg: cannot read image: truncated image",
        "im2.jpg: cannot read image: zero-byte file",
        "im3.jpg: cannot read image: not a readable image",
        f"dog.txt:{n - 2}: 'abc' is not an image number",
        f"dog.txt:{n - 1}: image im999999.jpg not found",
        f"dog.txt:{n}: duplicate of line 1",
    ]
    for needle in expected:
        assert sum(needle in line for line in out) == 1, (needle, out)
    assert len(out) == len(expected)


def test_unknown_labels_and_csv(tmp_path, demo_dir, capsys):
    assert main(["check-data", str(demo_dir), "--labels", "dog,cat"]) == 1
    assert "unknown label 'baby'" in capsys.readouterr().out
    (tmp_path / "labels.csv").write_text("path,labels\nmissing.jpg,dog\n")
    assert main(["check-data", "--format", "csv", str(tmp_path)]) == 1
    assert "labels.csv:2: image 'missing.jpg' not found" in capsys.readouterr().out


def _hf_folder(path, columns=("picture", "tags"), broken_row=None):
    import datasets
    from PIL import Image

    images = []
    for i in range(4):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(buf, format="PNG")
        images.append({"bytes": b"not an image" if i == broken_row else buf.getvalue(), "path": None})
    features = datasets.Features({columns[0]: datasets.Image(), columns[1]: datasets.Sequence(datasets.Value("string"))})
    datasets.Dataset.from_dict({columns[0]: images, columns[1]: [["x"], ["y", "z"], [], ["z"]]},
                               features=features).save_to_disk(str(path))
    return path


def test_hf_columns_are_flags(tmp_path, capsys):
    root = str(_hf_folder(tmp_path / "hf"))
    assert main(["check-data", "--format", "hf", "--image-column", "picture", "--label-column", "tags", root]) == 0
    assert capsys.readouterr().out == ""
    assert main(["check-data", "--format", "hf", root]) == 1  # the default columns image/labels are not there
    assert "no column 'image' (has picture, tags)" in capsys.readouterr().out
    broken = str(_hf_folder(tmp_path / "broken", broken_row=2))
    assert main(["check-data", "--format", "hf", "--image-column", "picture", "--label-column", "tags", broken]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{broken}: row 2: cannot read image: not a readable image"), out


def _bad_line(root):
    (root / "annotations" / "dog.txt").write_text("1\nabc\n")


def _duplicate_line(root):
    (root / "annotations" / "dog.txt").write_text("4\n1\n4\n")


def _unknown_image(root):
    (root / "annotations" / "dog.txt").write_text("1\n999999\n")


def _stray_file(root):
    (root / "images" / "notes.txt").write_text("hello")


def _truncated_image(root):
    data = (root / "images" / "im5.jpg").read_bytes()
    (root / "images" / "im5.jpg").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_bad_line, _unknown_image, _truncated_image])
def test_check_data_lines_are_the_errors_training_raises(demo_copy, tmp_path, capsys, damage):
    """One parser feeds both: each line check-data prints is the text training stops with."""
    damage(demo_copy)
    assert main(["check-data", str(demo_copy)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.root={demo_copy}", f"data.cache_dir={tmp_path}"])
    with pytest.raises(DataError) as raised:
        split = load_split(cfg)  # problems of the files and annotations stop here
        build_data(cfg, _one_process(), split, _preprocess(), False)  # images are decoded here (into the cache)
    assert str(raised.value).startswith(lines[0]) and "\n" not in str(raised.value)


@pytest.mark.parametrize("damage", [_duplicate_line, _stray_file])
def test_harmless_problems_are_reported_but_do_not_stop_training(demo_copy, capsys, damage):
    """A stray file or a repeated annotation line changes no image and no target: check-data names it,
    training goes on with the same data as without it."""
    clean = load_dataset(DataConfig(root=str(demo_copy)))[0]
    damage(demo_copy)
    assert main(["check-data", str(demo_copy)]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 1
    dataset, rows = load_dataset(DataConfig(root=str(demo_copy)))
    assert len(rows) == len(dataset) == len(clean)
    dog = dataset.label_names.index("dog")
    if damage is _duplicate_line:
        assert dataset.targets[:, dog].nonzero()[0].tolist() == [0, 3]
    else:
        assert (dataset.targets == clean.targets).all()


def test_training_names_the_first_problems_and_how_to_list_them_all(demo_copy):
    (demo_copy / "annotations" / "dog.txt").write_text("".join(f"x{i}\n" for i in range(8)))
    with pytest.raises(DataError) as raised:
        load_dataset(DataConfig(root=str(demo_copy)))
    lines = str(raised.value).split("; ")  # one line: the first five problems, how many more, how to list them
    assert "\n" not in str(raised.value)
    assert [line.split("dog.txt:")[1] for line in lines[:5]] == [f"{i + 1}: 'x{i}' is not an image number" for i in range(4)] + [
        "5: 'x4' is not an image number and 3 more"]
    assert lines[5] == f"`mlic check-data {demo_copy}` lists every problem"
