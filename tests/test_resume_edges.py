"""Edges of the loop that a second reading found: a stop asked at an epoch's last step, a non-finite
micro-step inside a gradient accumulation, select metrics the run never reports, an unwritable run
folder. Each went wrong before (a checkpoint no rerun could resume, NaN weights, a KeyError after the
first epoch, a rank left waiting)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from mlic.errors import ConfigError, MlicError
from tests.helpers import fit_demo, val_lines

# after TINY. 235 training images at batch 16: 14 steps an epoch; stop checks at step 7 and at step 14, the last
OVERRIDES = ["train.epochs=2", "train.stop_check_every=7", "run.progress=false"]


@pytest.mark.slow
def test_a_stop_asked_during_an_epochs_last_steps_is_honoured_after_the_epoch_and_resumes(tmp_path, monkeypatch):
    from mlic.training.preemption import StopSignal

    straight = tmp_path / "straight"
    fit_demo(straight, *OVERRIDES)
    calls = []
    real = StopSignal.requested

    def from_the_second_check(self, accelerator):
        calls.append(real(self, accelerator))
        return len(calls) >= 2  # step 7 says no; from step 14 on, yes (before: a checkpoint at step 14 of 14)

    monkeypatch.setattr(StopSignal, "requested", from_the_second_check)
    run = tmp_path / "run"
    assert fit_demo(run, *OVERRIDES) == {"stopped": {"epoch": 2, "step_in_epoch": 0}}  # after epoch 1 and its checkpoint
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch0001-step00000014"]
    monkeypatch.setattr(StopSignal, "requested", real)
    last = fit_demo(run, *OVERRIDES)
    assert last["train"]["images"] == 14 * 16
    for x, y in zip(val_lines(straight), val_lines(run), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["mAP"] == pytest.approx(y["mAP"], rel=1e-5)
    wa, wb = load_file(straight / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_an_epoch_that_trained_nothing_reports_nan_over_zero_images():
    from accelerate import Accelerator

    from mlic.training.engine import EpochOutputs

    metrics = EpochOutputs(Accelerator(cpu=True), track_finite=True).metrics(14)
    assert metrics["images"] == 0 and math.isnan(metrics["loss"]) and math.isnan(metrics["f1_macro"])


def test_a_non_finite_micro_step_skips_its_whole_accumulation(tmp_path, monkeypatch):
    """The NaN comes in the first micro-step of an accumulation of 2; the second is finite. The step must
    be skipped (before: the NaN gradient stayed accumulated and the finite micro-step applied it)."""
    monkeypatch.setenv("MLIC_FAULT", "nan:3")
    last = fit_demo(tmp_path / "run", *OVERRIDES, "train.epochs=1", "train.grad_accum=2", "train.skip_nonfinite=true")
    assert last["train"]["skipped_steps"] == 1
    assert last["train"]["images"] == (7 - 1) * 2 * 16 and math.isfinite(last["train"]["loss"])
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("overrides", [["train.select_metric=train/f1_macro_tuned"],
                                       ["train.select_metric=val/f1_macro_tuned", "eval.thresholds=fixed"]])
def test_a_select_metric_the_run_never_reports_is_refused_before_training(tmp_path, overrides):
    with pytest.raises(ConfigError, match=r"train\.select_metric.*is not a metric of this run"):
        fit_demo(tmp_path / "run", *OVERRIDES, *overrides)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unwritable_run_folder_is_one_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(MlicError, match=r"run folder .*file/run: cannot write into it"):
        fit_demo(tmp_path / "file" / "run", *OVERRIDES)
