from mlic.cli import main


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
