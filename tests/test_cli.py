"""`mlic demo-data` and `mlic train` as a user types them: the console script, in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlic import cli
from tests.helpers import REPO


def _mlic(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["mlic", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.mark.slow
def test_demo_data_command_writes_a_deterministic_corpus(tmp_path):
    for name in ("a", "b"):
        done = _mlic(tmp_path, "demo-data", name, "--images", "40", "--seed", "3")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("wrote 40 images and 14 annotation files to ")
    assert len(list((tmp_path / "a" / "images").glob("*.jpg"))) == 40
    assert len(list((tmp_path / "a" / "annotations").glob("*.txt"))) == 14
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


@pytest.mark.slow
def test_train_command_with_config_and_overrides_from_another_folder(tmp_path):
    """`mlic train cnn --config FILE key=value ...`: overrides after --config reach the run."""
    done = _mlic(tmp_path, "train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"), "train.epochs=1",
                 "data.demo_images=300", "data.image_size=32", "train.batch_size=16", "train.eval_batch_size=64",
                 "train.max_steps_per_epoch=2", "run.output_dir=out", "run.progress=false")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(x["epoch"], x["split"]) for x in lines if x["split"] in ("train", "val")] == [(1, "train"), (1, "val")]
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_command_without_config_reads_the_shipped_default(tmp_path):
    """No --config: configs/cnn.yaml, found from any folder (an unknown key fails after reading it)."""
    done = _mlic(tmp_path, "train", "cnn", "train.no_such_key=1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown config key 'train.no_such_key'" in done.stderr


def test_missing_default_config_says_in_one_line_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "CONFIGS", tmp_path)
    assert cli.main(["train", "vit"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and str(tmp_path / "vit.yaml") in err and "--config" in err
