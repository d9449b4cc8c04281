"""RunState: what a checkpoint holds, written through accelerate's `save_state`, read back by `resume`."""

import json

import pytest
import torch
from accelerate import Accelerator

from mlic.errors import ConfigError, MlicError
from mlic.run_state import STATE_FILE, RunState, complete_checkpoints, latest_checkpoint

IDENTITY = {"model": "m", "label_names": ["a", "b", "c"]}


def _prepared():
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 3, total_iters=5)
    model, opt, sched = acc.prepare(model, opt, sched)
    return acc, model, opt, sched


def _step(acc, model, opt, sched):
    acc.backward(model(torch.randn(16, 4)).square().mean())
    opt.step()
    opt.zero_grad()
    sched.step()


def test_save_then_resume_restores_the_state_and_accelerates_objects(tmp_path):
    acc, model, opt, sched = _prepared()
    for _ in range(3):
        _step(acc, model, opt, sched)
    state = RunState(epoch=2, step_in_epoch=1, global_step=3, samples_in_epoch=16, best=0.5, sampler={"epoch": 2})
    folder = state.save(acc, tmp_path / "ckpt", IDENTITY, keep=2)
    assert folder.name == "epoch0002-step00000003" and folder == latest_checkpoint(tmp_path / "ckpt")
    assert json.loads((folder / STATE_FILE).read_text())["identity"] == IDENTITY
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _step(acc, model, opt, sched)
    resumed, path = RunState.resume(acc, tmp_path / "ckpt", IDENTITY)
    assert resumed == state and path == folder
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert sched.scheduler.last_epoch == 3


def test_a_checkpoint_of_another_identity_or_format_is_refused_before_loading(tmp_path):
    acc, *_ = _prepared()
    folder = RunState(global_step=1).save(acc, tmp_path / "ckpt", IDENTITY, keep=2)
    other = {**IDENTITY, "label_names": ["a", "b"]}
    with pytest.raises(ConfigError, match=r"is for label_names=\['a', 'b', 'c'\], this run has label_names=\['a', 'b'\]"):
        RunState.resume(acc, tmp_path / "ckpt", other)
    doc = json.loads((folder / STATE_FILE).read_text())
    (folder / STATE_FILE).write_text(json.dumps({"training": doc["run"], "sampler": {}, "identity": IDENTITY}))
    with pytest.raises(ConfigError, match="written by an older mlic"):
        RunState.resume(acc, tmp_path / "ckpt", IDENTITY)


def test_a_failed_write_is_one_error_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    acc, *_ = _prepared()
    RunState(global_step=1).save(acc, tmp_path / "ckpt", IDENTITY, keep=2)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(acc, "save_state", full_disk)
    with pytest.raises(MlicError, match="writing checkpoint epoch0000-step00000002 into .* failed: .*No space left"):
        RunState(global_step=2).save(acc, tmp_path / "ckpt", IDENTITY, keep=2)
    assert latest_checkpoint(tmp_path / "ckpt").name == "epoch0000-step00000001"


def test_keep_prunes_the_oldest_and_leftovers_of_a_killed_save(tmp_path):
    acc, *_ = _prepared()
    (tmp_path / "ckpt" / ".tmp-epoch0001-step00000009").mkdir(parents=True)
    for step in (3, 4, 5):
        RunState(epoch=1, step_in_epoch=step, global_step=step).save(acc, tmp_path / "ckpt", IDENTITY, keep=2)
    assert [p.name for p in sorted((tmp_path / "ckpt").iterdir())] == ["epoch0001-step00000004", "epoch0001-step00000005"]
    assert [p.name for p in complete_checkpoints(tmp_path / "ckpt")][-1] == "epoch0001-step00000005"


def test_the_global_sample_position_maps_to_another_world_size_or_says_it_cannot():
    state = RunState(step_in_epoch=4, samples_in_epoch=4 * 16 * 2, world_size=2)  # 4 steps of 2 ranks x batch 16
    assert state.batches_to_skip(16, 1, 2) == 4
    assert state.batches_to_skip(16, 1, 1) == 8  # one rank: twice the batches, the same 128 samples
    assert state.batches_to_skip(16, 1, 4) == 2
    assert state.batches_to_skip(16, 1, 3) is None  # 128 is not a multiple of 48: the epoch must restart
    assert state.batches_to_skip(16, 3, 1) is None  # not a step boundary under accumulation of 3


def test_best_is_kept_higher_is_better_whatever_the_metric():
    state = RunState()
    assert state.improved(0.5, lower_is_better=True) and state.best == -0.5
    assert not state.improved(0.6, lower_is_better=True)
    assert state.improved(0.4, lower_is_better=True)
    f1 = RunState()
    assert f1.improved(0.4, lower_is_better=False) and not f1.improved(0.3, lower_is_better=False)
