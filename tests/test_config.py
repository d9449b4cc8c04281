import pytest
import yaml

from mlic.config import Config, config_from_dict, load_config, save_resolved
from mlic.errors import ConfigError
from tests.conftest import REPO

SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


def test_defaults_are_the_report_recipe():
    cfg = Config()
    assert cfg.optim.name == "adam" and cfg.schedule.name == "linear"
    assert cfg.schedule.start_factor == pytest.approx(1 / 3) and cfg.schedule.total_iters == 10
    assert cfg.model.dropout == 0.5 and cfg.model.head_batchnorm


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.name in {"cnn", "resnet50", "resnet152", "densenet121", "densenet161", "vit"}


def test_yaml_base_chain_and_overrides_last(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  epochs: 4\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.epochs=5", "data.root=/data/dl2021", "loss.pos_weight_clip=none"])
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 5 and cfg.data.root == "/data/dl2021"
    assert cfg.loss.pos_weight_clip is None
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    assert load_config(None, ["optim.betas=[0.8, 0.9]"]).optim.betas == [0.8, 0.9]


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
