"""RunState: what a checkpoint holds, written through accelerate's `save_state`, read back by `resume`."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from mlic.disk import DiskFull
from mlic.errors import ConfigError, MlicError
from mlic.training.ema import WeightEma
from mlic.training.manifest import damage, unsafe_pickle, write_manifest
from mlic.training.run_state import STATE_FILE, RunState, complete_checkpoints, latest_checkpoint

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
    write_manifest(folder)  # a whole checkpoint of an older format, not a damaged one
    with pytest.raises(ConfigError, match="written by an older mlic"):
        RunState.resume(acc, tmp_path / "ckpt", IDENTITY)


def test_a_full_disk_is_one_error_and_leaves_the_previous_checkpoint_newest(tmpfs):
    """A real full disk (a tmpfs filled by a ballast file), not a faked OSError: torch.save's zip writer and
    safetensors fail with their own errors, and each is the one DiskFull line."""
    acc, *_ = _prepared()
    folder = tmpfs.path / "ckpt"
    RunState(global_step=1).save(acc, folder, IDENTITY, keep=2)
    for point in ("checkpoint", "checkpoint-files"):  # in accelerate's files, then in mlic's own
        os.environ["MLIC_FAULT"] = f"fill-{point}:1"
        try:
            with pytest.raises(DiskFull, match=rf"^no space left on {tmpfs.path} \(tmpfs\) writing checkpoint "
                                               r"epoch0000-step00000002 \(needs ~\d+ MB\); free some space"):
                RunState(global_step=2).save(acc, folder, IDENTITY, keep=2)
        finally:
            del os.environ["MLIC_FAULT"]
        assert tmpfs.free_ballast() == 1
        assert [p.name for p in folder.iterdir()] == ["epoch0000-step00000001"]  # no .tmp- left behind
    assert RunState(global_step=2).save(acc, folder, IDENTITY, keep=2).name == "epoch0000-step00000002"


def _ema_checkpoints(tmp_path, count=2):
    """`count` checkpoints of a run with an EMA (ema.safetensors), each after one more step."""
    acc, model, opt, sched = _prepared()
    ema = WeightEma(acc.unwrap_model(model), 0.9)
    for step in range(1, count + 1):
        _step(acc, model, opt, sched)
        ema.update(step)
        RunState(global_step=step, ema_updates=step).save(acc, tmp_path / "ckpt", IDENTITY, keep=count, ema=ema)
    return acc, model, ema, complete_checkpoints(tmp_path / "ckpt")


DAMAGES = {
    "truncated": lambda b: b[: len(b) // 2],
    "emptied": lambda b: b"",
    "64 bytes flipped": lambda b: b[:len(b) // 3] + bytes(x ^ 0xFF for x in b[len(b) // 3:len(b) // 3 + 64]) + b[len(b) // 3 + 64:],
}


@pytest.mark.parametrize("how", DAMAGES)
def test_every_damaged_file_is_named_and_the_resume_falls_back(tmp_path, how, capsys):
    acc, model, ema, (older, newest) = _ema_checkpoints(tmp_path)
    names = sorted(p.name for p in newest.iterdir())
    assert names == ["ema.safetensors", "manifest.json", "mlic_state.json", "model.safetensors", "optimizer.bin",
                     "random_states_0.pkl", "scheduler.bin"]
    for name in names:
        original = (newest / name).read_bytes()
        (newest / name).write_bytes(DAMAGES[how](original))
        why = damage(newest)
        assert why and (name in why or name == "manifest.json" and "manifest" in why), (name, why)
        (newest / name).write_bytes(original)
    assert damage(newest) is None and damage(older) is None

    (newest / "optimizer.bin").write_bytes(DAMAGES[how]((newest / "optimizer.bin").read_bytes()))
    weights = load_file(str(older / "model.safetensors"))
    state, path = RunState.resume(acc, tmp_path / "ckpt", IDENTITY, ema=ema)
    assert path == older and state.global_step == 1 and state.ema_updates == 1
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "epoch0000-step00000002 is unusable: optimizer.bin" in warnings[0]
    assert all(torch.equal(acc.unwrap_model(model).state_dict()[k], v) for k, v in weights.items())
    averaged = load_file(str(older / "ema.safetensors"))
    assert all(torch.equal(ema.module.state_dict()[k], v) for k, v in averaged.items())
    # set aside for a look, so that `keep` never prunes a good checkpoint in favour of it
    assert not newest.exists() and (newest.parent / f".unusable-{newest.name}").is_dir()
    assert complete_checkpoints(tmp_path / "ckpt") == [older]

    (older / "scheduler.bin").write_bytes(b"")
    with pytest.raises(MlicError, match=r"^no usable checkpoint in .* \(1 damaged or unsafe, named above\)"):
        RunState.resume(acc, tmp_path / "ckpt", IDENTITY, ema=ema)


class _Payload:
    """What an attacker plants: unpickling it runs a command (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planted_pickles_never_run_even_with_the_manifest_rewritten_to_match(tmp_path, capsys):
    acc, model, ema, (older, newest) = _ema_checkpoints(tmp_path)
    marker = tmp_path / "PAYLOAD_RAN"
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"):
        torch.save({"state": _Payload(marker)}, newest / name)  # torch's own format, as a forger would
    write_manifest(newest)  # the attacker can write the manifest too: it verifies
    why = damage(newest)
    assert why.startswith("custom_checkpoint_0.pkl holds objects that a weights-only load refuses"), why
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        assert unsafe_pickle(newest / name) is not None
    state, path = RunState.resume(acc, tmp_path / "ckpt", IDENTITY, ema=ema)
    assert path == older and not marker.exists()
    pickle_file = older / "optimizer.bin"  # a plain pickle, not torch's zip format
    pickle_file.write_bytes(pickle.dumps(_Payload(marker)))
    write_manifest(older)
    with pytest.raises(MlicError, match="no usable checkpoint"):
        RunState.resume(acc, tmp_path / "ckpt", IDENTITY, ema=ema)
    assert not marker.exists() and older.is_dir()  # with none usable, nothing is set aside
    assert capsys.readouterr().out.count("warning:") == 2


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
