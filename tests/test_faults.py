"""Reliability: kills anywhere, clean stops, non-finite steps, bad data, bad configs, fuzzed inputs."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from mlic.config import load_config
from mlic.errors import ConfigError, DataError, MlicError
from tests.helpers import REPO, TINY, assert_same_run, fit_demo, metrics_lines

OVERRIDES = ["train.epochs=3", "train.save_every_steps=5", "run.progress=false"]  # after TINY
ONE_EPOCH = [*OVERRIDES, "train.epochs=1"]  # the fits in this process, below


def _cmd(run: Path, extra=()):
    return [sys.executable, "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, f"run.output_dir={run}",
            *extra]


def _same_result(a: Path, b: Path):
    """Same lines, same validation metrics, same exported weights. Train lines are compared by (epoch, split)
    only: the train metrics of an epoch interrupted and resumed are an estimate over the part trained after
    the resume, while the weights (hence every val line) must be those of the uninterrupted run."""
    assert [(x["epoch"], x["split"]) for x in metrics_lines(a)] == [(x["epoch"], x["split"]) for x in metrics_lines(b)]
    assert_same_run(a, b, [1, 2, 3])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_cmd(run), cwd=REPO, check=True, capture_output=True)
    return run


# Each restart dies at the next point: during a step, an evaluation, between the metrics lines and the
# checkpoint, inside a checkpoint write (after save_state, before the rename) and inside a model export.
# Counts are per process: a restart resumes from the newest complete checkpoint and dies at its point.
KILL_POINTS = ["step:3", "checkpoint:1", "eval:1", "metrics:1", "export:1", "checkpoint:1", "step:4", "eval:2",
               "metrics:1", "export:1", "checkpoint:2", "step:5", "eval:1"]


@pytest.mark.slow
def test_killed_at_thirteen_points_the_run_still_ends_as_an_uninterrupted_one(straight, tmp_path):
    run = tmp_path / "run"
    killed = 0
    for point in KILL_POINTS:
        done = subprocess.run(_cmd(run), cwd=REPO, capture_output=True, text=True, env={**os.environ, "MLIC_FAULT": point})
        if done.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert done.returncode == 0, done.stderr[-2000:]
        assert not list((run / "checkpoints").glob("epoch*-step*/.tmp*"))
        for ckpt in (run / "checkpoints").glob("epoch*-step*"):  # complete, or not named like one
            assert (ckpt / "mlic_state.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert killed >= 10, killed
    done = subprocess.run(_cmd(run), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _same_result(straight, run)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "stop file"])
def test_asked_to_stop_it_saves_exits_0_and_resumes(straight, tmp_path, how):
    run, stop_file = tmp_path / "run", tmp_path / "STOP"
    env = {**os.environ, "MLIC_STOP_FILE": str(stop_file)}
    proc = subprocess.Popen(_cmd(run), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("epoch*")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    if how == "stop file":
        stop_file.touch()
    else:
        proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped at" in out and "run the same command again" in out
    stop_file.unlink(missing_ok=True)
    done = subprocess.run(_cmd(run), cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stderr[-2000:]
    _same_result(straight, run)


def test_sigusr1_and_sigterm_set_the_stop_request():
    from mlic.training.preemption import StopSignal

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        stop = StopSignal(stop_file="")
        try:
            assert not stop.local()
            os.kill(os.getpid(), sig)
            time.sleep(0.01)
            assert stop.local() and stop.received == sig.name
        finally:
            stop.restore()


def test_non_finite_loss_stops_naming_the_step_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIC_FAULT", "nan:7")
    with pytest.raises(MlicError, match=r"non-finite loss or gradient norm at step 7 .*last good checkpoint: .*epoch0001-step00000005"):
        fit_demo(tmp_path / "run", *ONE_EPOCH, "train.log_every=1")


def test_non_finite_steps_can_be_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIC_FAULT", "nan:4")
    last = fit_demo(tmp_path / "run", *ONE_EPOCH, "train.skip_nonfinite=true")
    assert last["train"]["skipped_steps"] == 1
    assert math.isfinite(last["train"]["loss"])  # the skipped step's NaN loss is left out of the mean
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "run" / "model" / "model.safetensors").values())


def test_unreadable_image_stops_before_training_unless_skipped(demo_copy, tmp_path):
    (demo_copy / "images" / "im7.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(DataError, match=r"im7\.jpg: cannot read image"):
        fit_demo(tmp_path / "run", *ONE_EPOCH, f"data.root={demo_copy}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    last = fit_demo(tmp_path / "skip", *ONE_EPOCH, f"data.root={demo_copy}", "data.skip_bad=true")
    assert last["train"]["skipped_images"] == 1
    assert json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[0])["skipped_images"] == 1


@pytest.mark.parametrize(("override", "needle"), [
    ("data.labels=[dog, cat]", "data.labels"),
    ("model.num_labels=3", "model.num_labels"),
    ("train.select_metric=val/f2", "train.select_metric"),
    ("train.epochs=ten", "train.epochs"),
])
def test_bad_configuration_is_one_error_before_training(tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle):
        fit_demo(tmp_path / "run", *ONE_EPOCH, override)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    fit_demo(tmp_path / "run", *ONE_EPOCH)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"checkpoint \S+epoch0001-step\d+ is for model='cnn', this run has "
                                          r"model='resnet50'; use another run\.output_dir"):
        fit_demo(tmp_path / "run", *ONE_EPOCH, "model.name=resnet50", "model.pretrained=false", "data.image_size=32",
                 "train.epochs=2")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # refused before any work


def test_a_checkpoint_of_another_label_set_is_refused(demo_copy, tmp_path):
    fit_demo(tmp_path / "run", *ONE_EPOCH, f"data.root={demo_copy}")
    old = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["label_names"]
    (demo_copy / "annotations" / "baby.txt").rename(demo_copy / "annotations" / "infant.txt")
    new = sorted(["infant" if x == "baby" else x for x in old])
    with pytest.raises(ConfigError, match=rf"is for label_names={re.escape(repr(old))}, this run has "
                                          rf"label_names={re.escape(repr(new))}; use another run\.output_dir"):
        fit_demo(tmp_path / "run", *ONE_EPOCH, f"data.root={demo_copy}", "train.epochs=2")


def test_exported_model_is_loaded_without_pickle(tmp_path, monkeypatch):
    fit_demo(tmp_path / "run", *ONE_EPOCH)
    from mlic.models.export import load_exported

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used for exported models")

    monkeypatch.setattr(torch, "load", no_pickle)
    model, meta = load_exported(tmp_path / "run" / "model")
    assert len(meta["label_names"]) == 14
    ckpt = next((tmp_path / "run" / "checkpoints").iterdir())
    assert not list(ckpt.glob("custom_checkpoint_*"))  # no pickled custom objects in checkpoints


def test_half_done_export_is_recovered(tmp_path):
    from mlic.models.export import export_model, recover_export

    out = tmp_path / "model"
    export_model({"w": torch.ones(2)}, out, {"v": 1})
    export_model({"w": torch.zeros(2)}, out, {"v": 2})
    out.rename(out.with_name("model.old"))  # killed after the old copy moved aside...
    export_model({"w": torch.full((2,), 3.0)}, tmp_path / "model.tmp", {"v": 3})  # ...with the new one complete
    recover_export(out)
    assert json.loads((out / "config.json").read_text()) == {"v": 3}
    assert not (tmp_path / "model.old").exists() and not (tmp_path / "model.tmp").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.integers(-5, 15).map(str), st.text(max_size=6)), max_size=8))
def test_fuzzed_annotation_files_are_accepted_or_a_data_error(tmp_path, lines):
    from PIL import Image

    from mlic.data.registry import load_helsinki

    root = tmp_path / "fuzz"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for n in (1, 2, 3):
        if not (root / "images" / f"im{n}.jpg").exists():
            Image.new("RGB", (4, 4)).save(root / "images" / f"im{n}.jpg")
    (root / "annotations" / "x.txt").write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        ds = load_helsinki(root)
    except DataError:
        return
    assert ds.targets.shape == (3, 1)


def _has_type(value, hint) -> bool:
    """Whether `value` is of the config field type `hint` (bool is not an int, an int is not a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in args)
    if origin is typing.Literal:
        return value in args and type(value) is str
    if origin is list:
        return type(value) is list and all(_has_type(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    return type(value) is hint


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["data.root", "data.val_fraction", "train.epochs", "optim.lr", "sampler.name", "model.dropout",
                        "optim.betas", "loss.pos_weight_clip", "nosuch.key", "train", "data.cache", "eval.threshold"]),
       st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                 st.lists(st.integers(), max_size=3)))
def test_fuzzed_config_values_are_accepted_or_a_config_error(key, value):
    """Accepted values land in the field with its declared type; anything else is a ConfigError naming the key."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    try:
        cfg = load_config(None, [f"{key}={text}"])
    except ConfigError as exc:
        assert key.split(".")[0] in str(exc)
        return
    assert key not in ("nosuch.key", "train"), f"{key}={text} was accepted"
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    hint = typing.get_type_hints(type(getattr(cfg, section)))[name]
    assert _has_type(got, hint), (key, text, got, hint)
    parsed = yaml.safe_load(text)
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):  # numbers keep their value
        assert got == parsed, (key, text, got)
    if isinstance(parsed, list):
        assert got == parsed, (key, text, got)
