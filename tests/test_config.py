import dataclasses

import numpy as np
import pytest
import torch
import yaml

from mlic.config import Config, config_from_dict, load_config, save_resolved
from mlic.errors import ConfigError
from mlic.models import head_prefix
from tests.helpers import REPO

SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


def test_defaults_are_the_report_recipe():
    cfg = Config()
    assert cfg.optim.name == "adam" and cfg.schedule.name == "linear"
    assert cfg.schedule.start_factor == pytest.approx(1 / 3) and cfg.schedule.total_iters == 10
    assert cfg.model.dropout == 0.5 and cfg.model.head_batchnorm


_BUILT: dict[str, tuple] = {}  # one model per distinct model section: ResNet152 and ViT-B take seconds


def _model_of(cfg) -> tuple[torch.nn.Module, torch.Tensor]:
    """The config's model with random weights, and its output for two small images."""
    from mlic.models import build_model

    model_cfg = dataclasses.replace(cfg.model, pretrained=False)
    key = repr(model_cfg)
    if key not in _BUILT:
        model, _ = build_model(model_cfg, 14)
        with torch.no_grad():
            _BUILT[key] = model, model.eval()(torch.rand(2, 3, 32, 32))
    return _BUILT[key]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_builds(path):
    """Each shipped config, instantiated: its model (random weights) with the head it asks for, its loss,
    its sampler and its schedule."""
    from mlic.losses import build_loss
    from mlic.sampler import MultilabelBalancedSampler
    from mlic.training.engine import build_scheduler

    cfg = load_config(path)
    model, out = _model_of(cfg)
    assert out.shape == (2, 14) and torch.isfinite(out).all()
    head = model.get_submodule(head_prefix(model).rstrip("."))
    if cfg.model.head == "report":
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) is cfg.model.head_batchnorm
        assert [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)] == [cfg.model.dropout]
    else:
        from mlic.models.heads import MLDecoder

        assert isinstance(head, {"linear": torch.nn.Linear, "mldecoder": MLDecoder}[cfg.model.head])

    labels = (np.random.default_rng(0).random((64, 14)) < 0.3).astype(np.uint8)
    labels[np.arange(14), np.arange(14)] = 1  # every label has a positive
    loss = build_loss(cfg.loss, labels)
    assert (loss.pos_weight is None) is (cfg.loss.pos_weight == "none")
    assert float(loss(torch.zeros(64, 14), torch.from_numpy(labels).float())) > 0
    if cfg.sampler.name == "balanced":
        sampler = MultilabelBalancedSampler(labels, cfg.sampler.class_choice, cfg.sampler.num_samples,
                                            cfg.sampler.empty_share, seed=cfg.train.seed)
        order = list(sampler)
        assert len(order) == (cfg.sampler.num_samples or 64) and set(order) <= set(range(64))

    steps_per_epoch = 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(cfg.train.epochs * (steps_per_epoch if cfg.schedule.interval == "step" else 1)):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    if cfg.schedule.name == "linear":  # warm-up from lr * start_factor to lr, then flat
        assert lrs[0] == pytest.approx(cfg.optim.lr * cfg.schedule.start_factor)
        assert lrs[min(cfg.schedule.total_iters, len(lrs) - 1)] == pytest.approx(
            cfg.optim.lr * min(1.0, cfg.schedule.start_factor + (1 - cfg.schedule.start_factor)
                               * min(cfg.schedule.total_iters, len(lrs) - 1) / cfg.schedule.total_iters))
    elif cfg.schedule.name == "cosine":  # from lr down to 0 at the end of the run
        assert lrs[0] == pytest.approx(cfg.optim.lr) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
        assert all(a > b for a, b in zip(lrs, lrs[1:]))
    else:
        assert lrs == [cfg.optim.lr] * len(lrs)


def test_yaml_base_chain_and_overrides_last(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  epochs: 4\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.epochs=5", "data.root=/data/dl2021", "loss.pos_weight_clip=none"])
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 5 and cfg.data.root == "/data/dl2021"
    assert cfg.loss.pos_weight_clip is None
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    assert load_config(None, ["optim.betas=[0.8, 0.9]"]).optim.betas == [0.8, 0.9]


def test_yaml_base_list_merges_a_model_then_a_recipe(tmp_path):
    (tmp_path / "model.yaml").write_text("model:\n  name: vit\noptim:\n  lr: 2.0e-5\ntrain:\n  epochs: 10\n")
    (tmp_path / "recipe.yaml").write_text("loss:\n  name: asl\ntrain:\n  epochs: 20\n  ema_decay: 0.999\n")
    (tmp_path / "both.yaml").write_text("base: [model.yaml, recipe.yaml]\ntrain:\n  batch_size: 8\n")
    cfg = load_config(tmp_path / "both.yaml")
    assert (cfg.model.name, cfg.optim.lr, cfg.loss.name) == ("vit", 2.0e-5, "asl")
    assert (cfg.train.epochs, cfg.train.ema_decay, cfg.train.batch_size) == (20, 0.999, 8)  # later bases win
    (tmp_path / "bad.yaml").write_text("base: [model.yaml, 3]\n")
    with pytest.raises(ConfigError, match="'base' must be a file name"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nosection.x=1", "nosection"),
        ("train.epochs=two", "train.epochs"),
        ("train.epochs=1.5", "train.epochs"),
        ("sampler.name=oversample", "sampler.name"),
        ("model.pretrained=maybe", "model.pretrained"),
        ("optim=1", "optim"),
        ("justakey", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz.*x\.yaml"):
        load_config(path)


def test_resolved_config_round_trips_with_provenance(tmp_path):
    cfg = load_config(REPO / "configs" / "vit.yaml", ["train.epochs=2"])
    save_resolved(cfg, tmp_path / "config.yaml", world_size=2)
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert doc["_provenance"]["world_size"] == 2 and "torch" in doc["_provenance"]["versions"]
    assert "git_commit" in doc["_provenance"]
    assert config_from_dict(doc) == cfg
