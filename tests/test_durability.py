"""A run as a hostile or careless world leaves it: planted pickles (with the manifest rewritten to match),
truncated, emptied and bit-flipped checkpoint files, a torn metrics.jsonl line, a stop during evaluation
(a full disk: tests/test_disk_full.py). Each restart is the user's same command; the run must end as the
uninterrupted one did."""

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlic.training.manifest import write_manifest
from tests.helpers import REPO, TINY, assert_same_run, metrics_lines

pytestmark = pytest.mark.slow
OVERRIDES = ["train.eval_batch_size=8", "train.epochs=3", "train.save_every_steps=5", "train.log_every=5",  # after TINY
             "train.stop_check_every=2", "train.ema_decay=0.9", "run.progress=false"]


def _run(run: Path, fault: str | None = None, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLIC_FAULT"}
    if fault:
        env["MLIC_FAULT"] = fault
    return subprocess.run([sys.executable, "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES,
                           f"run.output_dir={run}", *extra], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


def straight_run(tmp_path_factory) -> Path:
    """The uninterrupted run of TINY and OVERRIDES, to compare with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    done = _run(run)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return straight_run(tmp_path_factory)


def _newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("epoch*"), key=lambda p: p.name.split("-step")[1])[-1]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(folder: Path, marker: Path) -> None:
    """A pickle that runs a command in every file accelerate unpickles (every rank's), one more it would,
    and a manifest that matches them all: what someone who can write the run folder can do."""
    names = ["optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", *(p.name for p in folder.glob("random_states_*"))]
    for name in names:
        torch.save({"state": _Payload(marker)}, folder / name)
    (folder / "ema.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    write_manifest(folder)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _warnings(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("warning:")]


def test_planted_damaged_and_torn_files_fall_back_and_the_run_ends_as_the_uninterrupted_one(straight, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "PAYLOAD_RAN"
    killed = _run(run, "step:12")  # checkpoints at steps 5 and 10, then a dead node
    assert killed.returncode == -signal.SIGKILL
    # Each restart finds its newest checkpoint spoiled one way, says so in one line, resumes from the one
    # before and dies again later; the last one finishes.
    spoil = [
        ("step:14", lambda c: plant(c, marker), "holds objects that a weights-only load refuses"),
        ("step:8", lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:1000]),
         "model.safetensors has 1000 bytes"),
        ("step:9", lambda c: (c / "ema.safetensors").write_bytes(b""), "ema.safetensors has 0 bytes"),
        ("step:6", lambda c: _flip(c / "optimizer.bin"), "optimizer.bin does not match its hash"),
        (None, lambda c: (c / "mlic_state.json").write_text((c / "mlic_state.json").read_text()[:-20]),
         "mlic_state.json has"),
    ]
    for fault, damage, why in spoil:
        newest = _newest(run)
        damage(newest)
        with (run / "metrics.jsonl").open("a") as fh:  # what a kill in the middle of an append leaves
            fh.write('{"epoch": 9, "split": "tra')
        done = _run(run, fault)
        assert done.returncode == (-signal.SIGKILL if fault else 0), done.stderr[-3000:]
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        warnings = _warnings(done)
        assert len(warnings) == 2, done.stdout[-3000:]
        assert f"checkpoint {newest} is unusable: " in warnings[0] and why in warnings[0], warnings
        assert "trying the one before it" in warnings[0]
        assert "a torn last line" in warnings[1] and "dropped" in warnings[1]
        assert "resumed from" in done.stdout
        assert not marker.exists()
    assert_same_run(straight, run, [1, 2, 3])
    assert [(x["epoch"], x["split"]) for x in metrics_lines(run)] == \
        [(e, s) for e in (1, 2, 3) for s in ("train", "val", "val_ema")]


def test_a_stop_during_evaluation_saves_the_trained_epoch_and_the_resume_only_evaluates_it(straight, tmp_path):
    run = tmp_path / "run"
    stopped = _run(run, "term-eval:3")  # SIGTERM at the 3rd evaluation batch of epoch 1, checked every 2
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped at the evaluation of epoch 1 (its training is saved)" in stopped.stdout
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()
    state = json.loads((_newest(run) / "mlic_state.json").read_text())["run"]
    assert state["epoch"] == 1 and state["global_step"] == state["step_in_epoch"] > 10  # the whole epoch
    assert state["train_metrics"]["images"] == 16 * state["global_step"]
    resumed = _run(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(epoch 1, its training done, its evaluation next)" in resumed.stdout
    # Not trained again: every line equals the uninterrupted run's, train lines included (a retrained epoch 1
    # would have moved the weights on), and the last checkpoint is at the same step.
    ignore = {"images_per_s", "data_wait"}  # timings
    a, b = ([{k: v for k, v in x.items() if k not in ignore} for x in metrics_lines(r)] for r in (straight, run))
    assert a == b
    assert _newest(run).name == _newest(straight).name
