import hashlib

import numpy as np
from PIL import Image

from mlic.data.demo import LABELS, write_demo_data
from mlic.data.registry import load_helsinki


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    a = write_demo_data(tmp_path / "a", images=40, seed=3)
    b = write_demo_data(tmp_path / "b", images=40, seed=3)
    c = write_demo_data(tmp_path / "c", images=40, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_course_character(demo_dir, tmp_path):
    root = write_demo_data(tmp_path / "big", images=2000, seed=0)
    ds = load_helsinki(root)
    y = ds.targets
    assert ds.label_names == LABELS
    counts = y.sum(0)
    assert counts.max() >= 30 * counts.min()
    assert counts[LABELS.index("people")] == counts.max()
    empty = (y.sum(1) == 0).mean()
    assert 0.07 <= empty <= 0.13
    people = y[:, LABELS.index("people")]
    for implies in ("portrait", "female", "male", "baby"):
        assert (people[y[:, LABELS.index(implies)] == 1] == 1).all()
    modes = {Image.open(root / "images" / f"im{n}.jpg").mode for n in range(1, 301)}
    assert modes == {"RGB", "L"}
    first = Image.open(root / "images" / "im1.jpg")
    assert first.size == (128, 128) and first.format == "JPEG"
    assert np.asarray(first).std() > 5  # not blank
