"""Background checkpoint writes: the same files as accelerate's `save_state`, a snapshot of the state at
the moment of `save`, and write errors that reach the training thread."""

import time

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import mlic.checkpoint as checkpoint
from mlic.checkpoint import CheckpointWriter, TrainingState, latest_checkpoint
from mlic.errors import MlicError
from mlic.sampler import ShuffleSampler


def _trained(steps: int = 3):
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 3, total_iters=5)
    model, opt, sched = acc.prepare(model, opt, sched)
    for _ in range(steps):
        _step(acc, model, opt)
        sched.step()
    return acc, model, opt, sched


def _step(acc, model, opt):
    acc.backward(model(torch.randn(16, 4)).square().mean())
    opt.step()
    opt.zero_grad()


def _state(step: int) -> TrainingState:
    state = TrainingState()
    state.epoch, state.global_step = 2, step
    return state


def _tensors(obj, prefix=""):
    """Flatten a nested state dict to {path: tensor or value}."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _tensors(value, f"{prefix}/{key}").items()}
    if isinstance(obj, list | tuple):
        return {k: v for i, value in enumerate(obj) for k, v in _tensors(value, f"{prefix}/{i}").items()}
    return {prefix: obj}


def _same(a, b):
    fa, fb = _tensors(a), _tensors(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if isinstance(fa[key], torch.Tensor):
            assert torch.equal(fa[key], fb[key]), key
        elif isinstance(fa[key], np.ndarray):  # numpy's RNG state
            assert np.array_equal(fa[key], fb[key]), key
        else:
            assert fa[key] == fb[key], key


def test_background_write_has_the_files_and_contents_of_save_state(tmp_path):
    acc, model, opt, sched = _trained()
    sampler = ShuffleSampler(10, seed=0)
    reference = tmp_path / "reference"
    acc.save_state(str(reference))  # the RNG is not drawn from between the two saves
    writer = CheckpointWriter(acc, model, opt, sched, tmp_path / "ckpt", {"model": "m"}, keep=2)
    assert writer.background
    folder = writer.save(_state(3), sampler)
    writer.wait()
    assert folder == latest_checkpoint(tmp_path / "ckpt") and folder.name == "epoch0001-step00000003"
    ours = {p.name for p in folder.iterdir()} - {checkpoint.STATE}
    assert ours == {p.name for p in reference.iterdir()}
    assert _tensors(load_file(folder / "model.safetensors")).keys() == _tensors(load_file(reference / "model.safetensors")).keys()
    _same(load_file(folder / "model.safetensors"), load_file(reference / "model.safetensors"))
    for name in ours - {"model.safetensors"}:
        _same(torch.load(folder / name, weights_only=False), torch.load(reference / name, weights_only=False))


def test_the_state_is_the_one_at_save_time_and_load_state_restores_it(tmp_path, monkeypatch):
    acc, model, opt, sched = _trained()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = _tensors(opt.state_dict())
    expected_opt = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in expected_opt.items()}
    slow_save = checkpoint.save

    def slow(*args, **kwargs):  # the thread writes after training went on
        time.sleep(0.3)
        slow_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", slow)
    writer = CheckpointWriter(acc, model, opt, sched, tmp_path / "ckpt", {"model": "m"}, keep=2)
    folder = writer.save(_state(3), ShuffleSampler(10, seed=0))
    assert not folder.exists()  # still being written while training goes on
    for _ in range(3):
        _step(acc, model, opt)
    writer.wait()
    weights = load_file(folder / "model.safetensors")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert not all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)  # it did move on
    acc.load_state(str(folder))
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    restored = _tensors(opt.state_dict())
    for key, value in expected_opt.items():
        assert torch.equal(restored[key], value) if isinstance(value, torch.Tensor) else restored[key] == value, key


def test_a_failed_write_reaches_the_training_thread_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    acc, model, opt, sched = _trained()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    writer = CheckpointWriter(acc, model, opt, sched, tmp_path / "ckpt", {"model": "m"}, keep=2)
    writer.save(_state(3), ShuffleSampler(10, seed=0))
    with pytest.raises(MlicError, match="writing checkpoint epoch0001-step00000003 into .* failed: .*No space left"):
        writer.wait()
    assert latest_checkpoint(tmp_path / "ckpt") is None
    writer.wait()  # reported once


def test_keep_prunes_old_checkpoints_and_synchronous_mode_is_save_state(tmp_path):
    acc, model, opt, sched = _trained()
    for background in (True, False):
        folder = tmp_path / f"ckpt-{background}"
        writer = CheckpointWriter(acc, model, opt, sched, folder, {"model": "m"}, keep=2, background=background)
        for step in (3, 4, 5):
            writer.save(_state(step), ShuffleSampler(10, seed=0))
        writer.wait()
        assert [p.name for p in sorted(folder.iterdir())] == ["epoch0001-step00000004", "epoch0001-step00000005"]
