"""Issue 28: `mlic analyze` and `mlic report` on an OpenImages-format run of 1,200 labels: label MIDs
(/m/0000x) and names equal once made file names give distinct safe files, and the per-label figures are
capped (the labels with the most errors) while the table lists every label."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.figures import file_stems
from mlic.reporting.analyze import FIGURE_LABELS
from tests.helpers import REPO

LABELS = 1200
IMAGES = 150
# MIDs, and names that only differ in what a file name cannot hold
TRICKY = ["/m/0000x", "/m/0000X", "/m/a b", "/m/a:b", "/m/café", "/m/日本"]


def test_file_stems_are_safe_and_unique():
    names = [*TRICKY, "cat", "Cat", "..", "", "x" * 300, "a_b_c1", "a/b"]
    stems = file_stems(names, "errors_")
    assert len({s.casefold() for s in stems}) == len(names)
    assert all("/" not in s and not s.startswith(".") and len(s.encode()) < 200 for s in stems)
    assert stems[6] == "errors_cat" and stems[4] == "errors__m_café_c4"


def _write_split(root, split: str, mids: list[str], images: int, seed: int) -> None:
    """ROOT/{split}-annotations-human-imagelabels.csv and ROOT/{split}/*.jpg: each image 16 verified negatives
    and the positives that give every label two."""
    rng = np.random.default_rng(seed)
    positives = {i: set() for i in range(images)}
    for k in range(len(mids)):
        positives[k % images].add(k)
        positives[(7 * k + 3) % images].add(k)
    rows = ["ImageID,Source,LabelName,Confidence"]
    (root / split).mkdir(parents=True)
    for i in range(images):
        negatives = set(rng.choice(len(mids), 16, replace=False).tolist()) - positives[i]
        rows += [f"{split}{i:04d},verification,{mids[k]},1" for k in sorted(positives[i])]
        rows += [f"{split}{i:04d},verification,{mids[k]},0" for k in sorted(negatives)]
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / split / f"{split}{i:04d}.jpg")
    (root / f"{split}-annotations-human-imagelabels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def _openimages_root(root):
    """OpenImages' layout, a train and a validation split (a stratified split of 150 images over 1,200 labels of
    two positives each holds out no image)."""
    mids = TRICKY + [f"/m/{k:05x}" for k in range(LABELS - len(TRICKY))]
    _write_split(root, "train", mids, IMAGES, seed=0)
    _write_split(root, "validation", mids, IMAGES // 2, seed=1)
    (root / "oidv6-class-descriptions.csv").write_text(
        "\n".join(["LabelName,DisplayName", *(f'"{m}",label {k}' for k, m in enumerate(mids))]) + "\n",
        encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def openimages_run(tmp_path_factory):
    from mlic.config import load_config
    from mlic.training.engine import fit

    tmp = tmp_path_factory.mktemp("oi")
    root, run = _openimages_root(tmp / "oi"), tmp / "run"
    fit(load_config(REPO / "configs" / "demo.yaml", [
        "data.format=openimages", f"data.root={root}", "data.val_split=validation", "data.image_size=32", "train.epochs=1", "train.batch_size=16",
        "eval.thresholds=per_label", "run.progress=false", f"run.output_dir={run}"]))
    return run


@pytest.mark.slow
def test_analyze_draws_the_most_erring_labels_under_safe_names(openimages_run):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["analyze", str(openimages_run)]) == 0
    out = openimages_run / "analysis"
    assert not [p for p in out.rglob("*") if p.is_dir()], "a label name became a folder"
    errors = sorted(p.name for p in out.glob("errors_*.png"))
    assert len(errors) == FIGURE_LABELS
    assert all(re.fullmatch(r"errors_[\w.\-]+\.png", name) for name in errors), errors


@pytest.mark.slow
def test_report_lists_every_label_and_draws_the_capped_figures(openimages_run):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(openimages_run)]) == 0
    page = (openimages_run / "report.html").read_text(encoding="utf-8")
    assert f"Per label ({LABELS} labels)" in page and "/m/0000x" in page
    assert len(re.findall(r"<figcaption>Misclassified ", page)) == FIGURE_LABELS
