"""The engine on a CPU: a smoke fit of the shipped demo config, the big models one step each, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mlic.config import load_config
from mlic.errors import ConfigError
from mlic.metrics import METRIC_KEYS
from tests.helpers import REPO, fit_demo, metrics_lines

SPEC_KEYS = {"epoch", "split", "loss", "images_per_s", *METRIC_KEYS}


def test_demo_fit_writes_the_run_folder(tmp_path):
    run = tmp_path / "run"
    last = fit_demo(run, "train.epochs=2")
    lines = metrics_lines(run)
    assert [(x["epoch"], x["split"]) for x in lines] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    for line in lines:
        assert SPEC_KEYS <= set(line), SPEC_KEYS - set(line)
    assert lines[-1]["f1_macro"] == pytest.approx(last["val"]["f1_macro"])
    assert "f1_macro_tuned" in lines[-1] and lines[-1]["f1_macro_tuned"] >= lines[-1]["f1_macro"] - 1e-12
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert lines[1]["images"] == cfg["_provenance"]["val_images"] == 300 - cfg["_provenance"]["train_images"]
    assert cfg["_provenance"]["world_size"] == 1 and cfg["train"]["epochs"] == 2
    assert cfg["_provenance"]["label_names"][0] == "baby"
    steps = cfg["_provenance"]["train_images"] // 16  # drop_last
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"epoch0001-step{steps:08d}", f"epoch0002-step{2 * steps:08d}"]
    meta = json.loads((run / "model" / "config.json").read_text())
    assert len(meta["thresholds"]) == 14 and meta["preprocess"]["size"] == 64
    assert load_file(run / "model" / "model.safetensors")
    for stem in ("label_distribution", "sampled_label_distribution", "class_weights"):  # Figures 1-3
        assert (run / "figures" / f"{stem}.png").stat().st_size > 5000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/f1_macro", "val/f1_macro", "val/mAP", "lr", "train/images_per_s"} <= tags
    assert "figures/class_weights" in events.Tags()["images"]


@pytest.mark.slow
def test_demo_recipe_beats_trivial_baselines(tmp_path):
    """The shipped demo config, as the README runs it: val macro-F1 well above the best data-blind predictor
    (all-negative, all-positive, or each label drawn at its prior rate)."""
    run = tmp_path / "run"
    from mlic.training.engine import fit

    last = fit(load_config(REPO / "configs" / "demo.yaml", [f"run.output_dir={run}"]))
    from mlic.data.demo import demo_root
    from mlic.data.registry import load_helsinki
    from mlic.metrics import compute_metrics

    y = load_helsinki(demo_root()).targets
    all_negative = compute_metrics(y, np.zeros(y.shape))["f1_macro"]
    all_positive = compute_metrics(y, np.ones(y.shape))["f1_macro"]
    rng = np.random.default_rng(0)
    prior = np.mean([compute_metrics(y, rng.random(y.shape) < y.mean(0))["f1_macro"] for _ in range(5)])
    assert all_negative == 0.0 and 0.0 < prior < all_positive  # F1 of the prior rate p is ~p < 2p/(1+p)
    best = max(all_negative, all_positive, prior)
    assert last["val"]["f1_macro"] > best + 0.25, (last["val"]["f1_macro"], all_negative, all_positive, prior)


@pytest.mark.parametrize("name", [pytest.param("resnet152", marks=pytest.mark.slow),
                                  pytest.param("densenet161", marks=pytest.mark.slow), "vit"])
def test_pretrained_models_train_a_step_through_the_engine(tmp_path, monkeypatch, name):
    import torchvision.models as tvm
    from transformers import ViTConfig, ViTModel

    overrides = ["train.batch_size=4", "data.image_size=32", "train.max_steps_per_epoch=1", "train.epochs=1",
                 "data.cache=off", "eval.thresholds=fixed"]
    if name == "vit":
        config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8)
        ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
        overrides.append(f"model.weights={tmp_path / 'vit'}")
    else:
        file = Path(getattr(tvm, {"resnet152": "ResNet152_Weights", "densenet161": "DenseNet161_Weights"}[name])
                    .IMAGENET1K_V1.url).name
        # Fake ImageNet weights in a private TORCH_HOME: the session's stays free of them for later tests.
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        assert cache.is_relative_to(tmp_path)
        cache.mkdir(parents=True)
        torch.save(getattr(tvm, name)(weights=None).state_dict(), cache / file)
    last = fit_demo(tmp_path / "run", *overrides, config=f"configs/{name}.yaml")
    assert last["train"]["images"] == 4
    assert last["val"]["images"] == yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["_provenance"]["val_images"]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_config_errors_come_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="model.num_labels"):
        fit_demo(tmp_path, "model.num_labels=5")
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("setting, deepspeed, fused", [("auto", False, True), ("auto", True, False), ("off", False, False),
                                                       ("on", True, True)])
def test_optimizer_is_fused_unless_deepspeed_or_turned_off(setting, deepspeed, fused):
    from mlic.training.engine import build_optimizer

    cfg = load_config(None, [f"optim.fused={setting}", "optim.name=adamw"])
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2), deepspeed=deepspeed)
    assert isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults["fused"]) is fused
