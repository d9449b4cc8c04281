"""Random overrides of every config key through `mlic train` itself, past the whole build (data, model,
accelerate's `prepare`; `--dry-run` stops there): each case builds a run that would train at least one step, or
exits 1 with one `error:` line. Never a traceback, never exit 0 without a step to train."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import types
import typing
from typing import Any, Literal

import pytest

from mlic.cli import main
from mlic.config import Config, load_config
from mlic.ranges import Range, undeclared
from tests.helpers import REPO

# keys whose generic candidates would be slow, unsafe or meaningless here, and what to try instead
SPECIAL: dict[str, list] = {
    "model.name": ["cnn", "resnet152", "vit", "timm/resnet18", "hf/nonexistent/model", "timm/nonexistent", "bogus",
                   "", "timm/"],
    "model.weights": [None, "", "missing.pt"],
    "data.root": [None, "", "missing"],
    "data.demo_images": [-1, 0, 1, 2, 5, 40],
    "data.cache_size": [-1, 0, 1, 2, 16, 64],
    "data.image_size": [None, -1, 0, 1, 16, 32, 64],
    "data.max_pixels": [0, 1, 100, 10**9],
    "data.background": ["white", "#ff0000", "nocolour", ""],
    "data.labels": [None, [], ["a", "a"], ["x"], [" "]],
    "model.mldecoder_groups": [-1, 0, 1, 3, 64],
    "model.mldecoder_dim": [-1, 0, 1, 8, 64],
    "run.output_dir": ["", " ", "run2"],
    "run.trackers": [[], ["tensorboard"], ["tensorboard", "tensorboard"], ["bogus"]],
    "train.select_metric": ["val/mAP", "val_ema/mAP", "val/f1_macro_tuned", "train/loss", "bogus", ""],
    "sampler.num_samples": [None, -1, 0, 1, 5, 1000],
}
INTS = [-1, 0, 1, 2, 3, 1000]
FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-9, 0.3, 1.0, 1.5, 1e6]
TEXTS = ["", " ", "x", "a/b"]
BASE = ["data.demo_images=60", "data.num_workers=0", "run.progress=false", "run.trackers=[]", "run.output_dir=run"]


def every_key() -> list[tuple[str, Any, Any]]:
    """(dotted key, type hint, default) of every config key."""
    cfg = Config()
    keys = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(obj))
        keys += [(f"{section.name}.{f.name}", hints[f.name], getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    return keys


def candidates(key: str, hint: Any, default: Any) -> list:
    if key in SPECIAL:
        return SPECIAL[key]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return [None, "abc"] + [v for a in args if a is not type(None) for v in candidates(key, a, default)]
    if origin is Literal:
        return [*args, "bogus", 3]
    if origin is list:
        item = candidates(key, args[0], None)
        return [[], [default[0]] if default else [item[0]], default, [item[0], item[-1]], [item[-1], item[0], 0.5]]
    if hint is bool:
        return [True, False, "maybe", 2]
    if hint is int:
        return [*INTS, default, 0.5, "abc"]
    if hint is float:
        return [*FLOATS, default, "abc"]
    return [*TEXTS, default, 3]


def as_yaml(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, list):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    return "null" if value is None else json.dumps(value)


def cases(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    keys = every_key()
    return [[f"{key}={as_yaml(rng.choice(candidates(key, hint, default)))}"
             for key, hint, default in rng.sample(keys, rng.choice([1, 1, 2, 3]))] for _ in range(n)]


def test_every_number_key_declares_a_range():
    assert undeclared(Config()) == []


@pytest.mark.slow
def test_random_overrides_build_or_fail_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative folders the overrides name land here
    import torchvision.models

    def offline(*args, **kwargs):  # torchvision's download would wait on a network that may drop packets
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)  # the hub: HF_HUB_OFFLINE=1
    outcomes = {0: 0, 1: 0}
    for overrides in cases(200, seed=27):
        try:
            code = main(["train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), "--dry-run",
                         *BASE, *overrides])
        except BaseException as exc:  # noqa: BLE001 - anything but mlic's one line is the failure to report
            pytest.fail(f"{overrides}: {type(exc).__name__}: {exc}")
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        if code == 1:
            assert len(errors) == 1 and len(errors[0]) < 2000, (overrides, err)
        else:
            assert code == 0 and not errors, (overrides, code, err)
            plan = {k: int(v.replace(",", "")) for k, v in re.findall(r"(\w+) (\d+(?:,\d{3})*)", out)}
            assert plan["epochs"] >= 1 and plan["steps_per_epoch"] >= 1, (overrides, out)
        outcomes[code] += 1
    assert outcomes[0] >= 20 and outcomes[1] >= 20, outcomes  # the mix is broad enough to mean something


@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=-1", "train.batch_size=0", "train.grad_accum=0",
                                      "data.cache_size=0", "train.ema_decay=1.5", "model.dropout=2", "train.seed=-1",
                                      "train.epochs=0", "train.epochs=-1", "data.image_size=0", "augment.hflip=5"])
def test_the_reported_values_are_one_line(override):
    with pytest.raises(Exception) as caught:
        load_config(REPO / "configs" / "demo.yaml", [override])
    assert type(caught.value).__name__ == "ConfigError" and override.split("=")[0] in str(caught.value)
    assert "\n" not in str(caught.value)


def edges() -> dict[str, str]:
    """Every ranged number key at its lowest and its highest bounded allowed value, one override each."""
    out = {}
    cfg = Config()
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(obj))
        for key, rule in getattr(obj, "RANGES", {}).items():
            if not isinstance(rule, Range):
                continue
            integer = int in (hints[key], *typing.get_args(hints[key]))
            for bound, is_open, step in ((rule.low, rule.low_open, 1), (rule.high, rule.high_open, -1)):
                if bound is not None:
                    value = bound + step * (1 if integer else 1e-6) if is_open else bound
                    out[f"{section.name}.{key}={value}"] = f"{section.name}.{key}={value}"
    return out


# Edges that leave nothing to train on the 60-image demo data, and the one line each must stop with.
REFUSED_EDGES = {
    "data.max_pixels=1": "more than data.max_pixels",  # every image refused as a decompression bomb
    "data.demo_images=1": "too few to hold out",
    "data.val_fraction=0.999999": "too few to hold out",
    "model.num_labels=1": "model.num_labels",
    "train.batch_size=1": "BatchNorm1d",  # the report's head
    "sampler.num_samples=1": "sampler.num_samples",  # one draw per epoch: not one batch
}
EDGE_KEYS = {"sampler.": ["sampler.name=balanced", "data.demo_images=300"]}  # keys that act only beside another


@pytest.mark.slow
@pytest.mark.parametrize("edge", sorted(edges()))
def test_every_allowed_edge_trains(edge, tmp_path, monkeypatch, capsys):
    """The ranges are not too loose (a value they allow crashes later) nor too strict (a value they allow
    cannot train): each key's edge alone trains two steps, evaluates and exports, except the edges that leave
    nothing to train on the demo data, which stop with their one line."""
    monkeypatch.chdir(tmp_path)
    extra = next((v for k, v in EDGE_KEYS.items() if edge.startswith(k)), [])
    code = main(["train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), *BASE, "train.epochs=1",
                 "train.max_steps_per_epoch=2", *extra, edge])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if edge in REFUSED_EDGES:
        assert code == 1 and len(errors) == 1 and REFUSED_EDGES[edge] in errors[0], (edge, err)
    else:
        assert code == 0 and not errors, (edge, err)
        assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(("overrides", "expected"), [
    (["optim.lr=1000000"], "outputs on the validation split are not finite"),  # diverged at the last step
    (["train.batch_size=1"], "cannot train this model's BatchNorm1d layers"),
    (["sampler.name=balanced", "data.demo_images=300", "sampler.num_samples=5", "train.batch_size=8"],
     "sampler.num_samples"),  # an epoch of no step: was exit 0 with nothing trained
    (["data.cache=off", "data.num_workers=1", "data.max_pixels=1"], "more than data.max_pixels"),  # in a worker
])
def test_what_only_training_finds_is_one_line(overrides, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), *BASE, "train.epochs=1",
                 "train.max_steps_per_epoch=2", *overrides])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and [x for x in err.splitlines() if x.startswith("error:")] == [
        next(x for x in err.splitlines() if expected in x)], err  # a worker's traceback is not in the line either
