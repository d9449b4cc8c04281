"""After training: evaluate, predict and analyze on a model trained with the shipped demo config."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.data.demo import LABELS
from mlic.data.registry import load_helsinki
from mlic.metrics import compute_metrics


@pytest.fixture(scope="module")
def trained(trained_demo):
    return trained_demo


def test_evaluate_reproduces_the_runs_val_line(trained, tmp_path, capsys):
    assert main(["evaluate", str(trained / "model"), "--json", str(tmp_path / "ev.json")]) == 0
    assert "f1_macro" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ev.json").read_text())["summary"]
    epoch = json.loads((trained / "model" / "config.json").read_text())["epoch"]
    line = next(x for x in map(json.loads, (trained / "metrics.jsonl").read_text().splitlines())
                if x["epoch"] == epoch and x["split"] == "val")
    for key in ("accuracy", "subset_accuracy", "precision_micro", "recall_micro", "f1_micro", "precision_macro",
                "recall_macro", "f1_macro", "mAP", "f1_macro_tuned"):
        assert summary[key] == pytest.approx(line[key], abs=1e-6), key
    assert summary["images"] == line["images"]


def test_predict_writes_the_results_file_and_matches_evaluate(trained, demo_dir, tmp_path):
    ds = load_helsinki(demo_dir)
    picks = list(range(10))
    labelled = tmp_path / "labelled"
    (labelled / "images").mkdir(parents=True)
    (labelled / "annotations").mkdir()
    for k, i in enumerate(picks, start=1):  # course test numbering: im20001.jpg first
        shutil.copy(demo_dir / "images" / ds.names[i], labelled / "images" / f"im{20000 + k}.jpg")
    for c, name in enumerate(ds.label_names):
        rows = [20000 + k for k, i in enumerate(picks, start=1) if ds.targets[i, c]]
        (labelled / "annotations" / f"{name}.txt").write_text("".join(f"{n}\n" for n in rows))
    out, probs = tmp_path / "results.txt", tmp_path / "probs.csv"
    assert main(["predict", str(trained / "model"), str(labelled / "images"), "--out", str(out), "--probs", str(probs)]) == 0
    rows = [list(map(int, line.split())) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and all(len(r) == 14 and set(r) <= {0, 1} for r in rows)
    header, first = probs.read_text().splitlines()[:2]
    assert header.split(",")[1:] == ds.label_names and first.startswith("im20001.jpg,")
    truth = load_helsinki(labelled).targets
    ev = tmp_path / "ev.json"
    assert main(["evaluate", str(trained / "model"), str(labelled), "--split", "all", "--json", str(ev)]) == 0
    summary = json.loads(ev.read_text())["summary"]
    assert compute_metrics(truth, np.array(rows))["f1_macro"] == pytest.approx(summary["f1_macro_tuned"], abs=1e-9)


def test_unreadable_images_stop_predict_unless_allowed(trained, demo_dir, tmp_path, capsys):
    folder = tmp_path / "test"
    folder.mkdir()
    for n in (1, 2, 3):
        shutil.copy(demo_dir / "images" / f"im{n}.jpg", folder / f"im{20000 + n}.jpg")
    (folder / "im20002.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "results.txt"
    assert main(["predict", str(trained / "model"), str(folder), "--out", str(out)]) == 1
    assert "im20002.jpg" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(trained / "model"), str(folder), "--out", str(out), "--allow-bad"]) == 0
    assert out.read_text().splitlines()[1] == " ".join(["0"] * 14)


@pytest.mark.slow
def test_analyze_writes_every_figure(trained):
    assert main(["analyze", str(trained)]) == 0
    expected = ["label_distribution", "sampled_label_distribution", "class_weights", "confusion_matrices",
                "pr_curves", "training_curves"] + [f"errors_{name}" for name in LABELS]
    for stem in expected:
        image = np.asarray(Image.open(trained / "analysis" / f"{stem}.png").convert("L"), dtype=np.float32)
        assert image.std() > 5, stem  # opens, and is not blank
