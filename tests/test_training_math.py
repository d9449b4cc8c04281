"""What a training step computes, seen through `fit` only: gradient accumulation, clipping, the per-step
cosine schedule, best-model selection, and the csv / hf dataset formats end to end."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mlic.config import load_config
from tests.helpers import REPO, fit_demo, metrics_lines

OVERRIDES = ["train.epochs=1", "run.progress=false", "data.image_size=32"]  # after TINY


def _provenance(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["_provenance"]


def _exported(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(run / "model" / "model.safetensors"), json.loads((run / "model" / "config.json").read_text())


@pytest.fixture
def record_adam_steps(monkeypatch):
    """Every Adam step as the optimizer sees it: the lr it uses and the total norm of the gradients it gets."""
    steps: list[dict[str, float]] = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        steps.append({"lr": self.param_groups[0]["lr"], "grad_norm": float(norm)})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return steps


def test_grad_accum_2_at_batch_16_is_one_step_at_batch_32(tmp_path):
    """Without BatchNorm or dropout, two accumulated batches of 16 give the update of one batch of 32 (the
    same 32 images: one seeded order, drop_last). The CNN has BatchNorm in every block, so a tiny ViT
    (LayerNorm only) with the head's BatchNorm and dropout off. A huge Adam eps makes the first step
    ~ -lr/eps * gradient instead of ~ -lr * sign(gradient), so a gradient off by a factor (the loss not
    divided by grad_accum) would show too."""
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(tmp_path / "vit")
    common = ["model.name=vit", "model.pretrained=false", f"model.weights={tmp_path / 'vit'}",
              "model.head_batchnorm=false", "model.dropout=0", "augment.enabled=false", "schedule.name=none",
              "optim.lr=0.1", "optim.eps=10", "train.max_steps_per_epoch=1", "eval.thresholds=fixed"]
    runs = {"32x1": ["train.batch_size=32", "train.grad_accum=1"], "16x2": ["train.batch_size=16", "train.grad_accum=2"],
            "16x1": ["train.batch_size=16", "train.grad_accum=1"]}
    weights = {}
    for name, extra in runs.items():
        last = fit_demo(tmp_path / name, *OVERRIDES, *common, *extra)
        assert last["train"]["images"] == (16 if name == "16x1" else 32)
        weights[name], meta = _exported(tmp_path / name)
        assert meta["epoch"] == 1
    assert weights["32x1"].keys() == weights["16x2"].keys()
    for key in weights["32x1"]:
        torch.testing.assert_close(weights["16x2"][key], weights["32x1"][key], rtol=0, atol=1e-6, msg=key)
    moved = max(float((weights["16x1"][k] - weights["32x1"][k]).abs().max()) for k in weights["32x1"])
    assert moved > 1e-4  # the comparison can fail: half the batch gives another update


def test_clip_grad_norm_bounds_the_gradient_the_optimizer_sees(tmp_path, record_adam_steps):
    """Adam's update barely depends on the gradient's scale, so clipping is checked where it acts: the total
    gradient norm handed to the optimizer."""
    common = ["train.max_steps_per_epoch=3", "eval.thresholds=fixed"]
    fit_demo(tmp_path / "free", *OVERRIDES, *common)
    free = [s["grad_norm"] for s in record_adam_steps]
    record_adam_steps.clear()
    fit_demo(tmp_path / "clipped", *OVERRIDES, *common, "train.clip_grad_norm=0.01")
    clipped = [s["grad_norm"] for s in record_adam_steps]
    assert len(free) == len(clipped) == 3
    assert max(free) > 0.02, free  # without clipping the bound would not be reached: the test can fail
    assert all(n <= 0.01 * (1 + 1e-4) for n in clipped), clipped
    assert all(n >= 0.01 * (1 - 1e-4) for n in clipped), clipped  # clipped to the bound, not zeroed


def test_cosine_with_interval_step_anneals_every_step_to_zero(tmp_path, record_adam_steps):
    """`schedule.interval=step`: the lr changes at every optimizer step and follows one cosine over all the
    steps of all epochs (ignoring `interval` would hold it for a whole epoch)."""
    run = tmp_path / "run"
    fit_demo(run, *OVERRIDES, "schedule.name=cosine", "schedule.interval=step", "train.epochs=2", "eval.thresholds=fixed")
    steps_per_epoch = _provenance(run)["train_images"] // 16  # drop_last
    total = 2 * steps_per_epoch
    lrs = [s["lr"] for s in record_adam_steps]
    assert len(lrs) == total
    expected = [1e-3 * (1 + math.cos(math.pi * k / total)) / 2 for k in range(total)]  # configs/cnn.yaml: lr 1e-3
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    from mlic.training.engine import build_scheduler

    cfg = load_config(REPO / "configs" / "demo.yaml", ["schedule.name=cosine", "schedule.interval=step", "train.epochs=2"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    for _ in range(total):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # after the last step of the last epoch


# A high lr makes validation loss and macro-F1 move both ways: measured, val loss 6.74 2.02 0.996 1.048 and
# macro-F1 .208 .239 .305 .273, so the best epoch is neither the first nor the last.
SCRIPTED = {"loss": [3.0, 1.0, 2.0], "f1_macro": [0.3, 0.1, 0.2]}  # validation figures of epochs 1-3


def test_best_model_is_the_lowest_loss_or_the_highest_f1(tmp_path, monkeypatch):
    """`train.select_metric` on a loss selects its minimum (the sign flip), on a score its maximum; the
    exported model is the one of that epoch. The validation figures are scripted, so that the right
    choice is neither the wrong sign's nor the last epoch's, whatever training does."""
    import mlic.training.evaluation as evaluation

    real_evaluate = evaluation.evaluate
    for metric, expected in (("val/loss", 2), ("val/f1_macro", 1)):
        calls = []

        def scripted(*args, calls=calls, **kwargs):
            metrics, thresholds = real_evaluate(*args, **kwargs)
            metrics.update({key: values[len(calls)] for key, values in SCRIPTED.items()})
            calls.append(1)
            return metrics, thresholds

        monkeypatch.setattr(evaluation, "evaluate", scripted)
        run = tmp_path / metric.replace("/", "_")
        fit_demo(run, *OVERRIDES, "train.epochs=3", "train.max_steps_per_epoch=2", "eval.thresholds=fixed",
             f"train.select_metric={metric}")
        val = {x["epoch"]: x[metric.removeprefix("val/")] for x in metrics_lines(run) if x["split"] == "val"}
        assert val == dict(enumerate(SCRIPTED[metric.removeprefix("val/")], start=1))
        _, meta = _exported(run)
        assert meta["epoch"] == expected, (metric, val, meta["epoch"])
        assert meta["val_metrics"][metric.removeprefix("val/")] == val[expected]


def _demo_rows(demo_dir: Path) -> list[tuple[str, list[str]]]:
    """(image file name, label names) of each demo image, from its annotation files."""
    labels: dict[str, list[str]] = {p.name: [] for p in sorted((demo_dir / "images").iterdir())}
    for ann in sorted((demo_dir / "annotations").glob("*.txt")):
        for line in ann.read_text().split():
            labels[f"im{int(line)}.jpg"].append(ann.stem)
    return sorted(labels.items(), key=lambda kv: int(kv[0][2:-4]))


def _check_one_epoch(run: Path, images: int, label_names: list[str]) -> None:
    lines = metrics_lines(run)
    assert [(x["epoch"], x["split"]) for x in lines] == [(1, "train"), (1, "val")]
    provenance = _provenance(run)
    assert provenance["train_images"] + provenance["val_images"] == images
    assert lines[1]["images"] == provenance["val_images"] > 0
    assert lines[0]["images"] == provenance["train_images"] // 16 * 16
    _, meta = _exported(run)
    assert meta["label_names"] == provenance["label_names"] == label_names
    assert len(meta["thresholds"]) == len(label_names)


def test_csv_dataset_through_a_whole_fit(demo_dir, tmp_path):
    root = tmp_path / "csv"
    root.mkdir()
    os.symlink(demo_dir / "images", root / "images")
    rows = _demo_rows(demo_dir)[:160]
    rename = {"people": "person"}  # names come from the CSV, not from the demo's label list
    with (root / "labels.csv").open("w") as fh:
        fh.write("path,labels\n")
        for name, labels in rows:
            fh.write(f"images/{name},{'|'.join(rename.get(x, x) for x in labels)}\n")
    expected = sorted({rename.get(x, x) for _, labels in rows for x in labels})
    assert "person" in expected and "people" not in expected
    fit_demo(tmp_path / "run", *OVERRIDES, "data.format=csv", f"data.root={root}")
    _check_one_epoch(tmp_path / "run", len(rows), expected)


def test_hf_dataset_through_a_whole_fit(demo_dir, tmp_path):
    import datasets

    rows = _demo_rows(demo_dir)[:120]
    table = datasets.Dataset.from_dict({"picture": [str(demo_dir / "images" / n) for n, _ in rows],
                                        "tags": [labels for _, labels in rows]})
    table = table.cast_column("picture", datasets.Image())
    datasets.DatasetDict({"labelled": table}).save_to_disk(str(tmp_path / "hf"))
    expected = sorted({x for _, labels in rows for x in labels})
    fit_demo(tmp_path / "run", *OVERRIDES, "data.format=hf", f"data.root={tmp_path / 'hf'}", "data.image_column=picture",
         "data.label_column=tags", "data.hf_split=labelled")
    _check_one_epoch(tmp_path / "run", len(rows), expected)
    assert np.isfinite(metrics_lines(tmp_path / "run")[1]["loss"])
