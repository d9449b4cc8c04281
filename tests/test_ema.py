"""The EMA of the weights: its update rule, its precision, and a run that evaluates, selects, exports and
resumes it (the 2-process kill and resume of an EMA run is in tests/test_resume_distributed.py)."""

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from mlic.config import load_config
from mlic.errors import ConfigError
from mlic.training.build import check_ema
from mlic.training.ema import WeightEma
from tests.helpers import fit_demo, metrics_lines

OVERRIDES = ["run.progress=false"]  # after TINY


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_decay_warms_up_to_its_value():
    ema = WeightEma(_model(), 0.999)
    assert [ema.decay_at(t) for t in (0, 1, 90)] == [pytest.approx(0.1), pytest.approx(2 / 11), pytest.approx(0.91)]
    assert ema.decay_at(10**6) == 0.999
    assert WeightEma(_model(), 0.999, warmup=False).decay_at(0) == 0.999


def test_update_moves_parameters_and_statistics_and_copies_counters():
    model = _model()
    ema = WeightEma(model, 0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    model(torch.randn(8, 4))  # BatchNorm statistics move, num_batches_tracked counts
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(0)
    now, target = ema.state_dict(), model.state_dict()
    for key, value in now.items():
        if key.endswith("num_batches_tracked"):
            assert value == target[key] == 1
        else:
            assert torch.allclose(value, 0.9 * before[key] + 0.1 * target[key]), key
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_the_average_stays_float32_and_keeps_moving_with_a_bf16_model():
    """At decay 0.9999 a bf16 average would round every update away; the float32 one moves."""
    model = torch.nn.Linear(64, 64).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.uniform_(1, 2)  # bf16's step here is 2 ** -7: an update of 0.5 * 1e-4 rounds away
    ema = WeightEma(model, 0.9999, warmup=False)
    assert ema.module.weight.dtype == torch.float32
    start = ema.module.weight.clone()
    original = model.weight.detach().clone()
    bf16_average = original.clone()
    with torch.no_grad():
        model.weight.add_(0.5)
    for t in range(20):
        ema.update(t)
        bf16_average.lerp_(model.weight.detach(), 1e-4)
    moved = ema.module.weight - start
    assert moved.mean() == pytest.approx(20 * 1e-4 * 0.5, rel=0.05)
    assert torch.equal(bf16_average, original)  # the bf16 average never moved


def test_deepspeed_is_refused_in_one_line():
    cfg = load_config(None, ["train.ema_decay=0.999"])
    with pytest.raises(ConfigError, match="not supported under DeepSpeed"):
        check_ema(cfg, SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    check_ema(cfg, SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))  # DDP: fine


def test_an_ema_run_reports_selects_exports_and_checkpoints_the_average(tmp_path):
    run = tmp_path / "run"
    fit_demo(run, *OVERRIDES, "train.epochs=2", "train.ema_decay=0.9", "train.select_metric=val_ema/mAP")
    lines = metrics_lines(run)
    assert [(x["epoch"], x["split"]) for x in lines] == [(e, s) for e in (1, 2) for s in ("train", "val", "val_ema")]
    for epoch in (1, 2):
        val, ema = (next(x for x in lines if x["epoch"] == epoch and x["split"] == s) for s in ("val", "val_ema"))
        assert val.keys() == ema.keys() and val["mAP"] != ema["mAP"]  # evaluated apart, the same report
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["weights"] == "ema"
    best = max((x for x in lines if x["split"] == "val_ema"), key=lambda x: x["mAP"])
    assert meta["epoch"] == best["epoch"] and meta["val_metrics"]["mAP"] == pytest.approx(best["mAP"])
    # the exported weights are the average that the checkpoint of that epoch holds
    checkpoint = next((run / "checkpoints").glob(f"epoch{best['epoch']:04d}-*"))
    saved = load_file(checkpoint / "ema.safetensors")  # mlic's own file: no pickle in a checkpoint of mlic's
    assert not list(checkpoint.glob("*.pkl")) or [p.name for p in checkpoint.glob("*.pkl")] == ["random_states_0.pkl"]
    exported = load_file(run / "model" / "model.safetensors")
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    state = json.loads((checkpoint / "mlic_state.json").read_text())["run"]
    assert state["ema_updates"] == state["global_step"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"])
    assert {"val_ema/mAP", "val_ema/f1_macro", "val/mAP"} <= tags


def test_val_picks_the_better_of_the_weights_and_their_average():
    from mlic.training.selection import chosen_split

    cfg = load_config(None, ["train.ema_decay=0.99", "train.select_metric=val/mAP"])
    assert chosen_split(cfg, {"val": {"mAP": 0.5}, "val_ema": {"mAP": 0.6}}) == ("val_ema", "mAP")
    assert chosen_split(cfg, {"val": {"mAP": 0.7}, "val_ema": {"mAP": 0.6}}) == ("val", "mAP")
    cfg = load_config(None, ["train.ema_decay=0.99", "train.select_metric=val/loss"])
    assert chosen_split(cfg, {"val": {"loss": 0.5}, "val_ema": {"loss": 0.4}}) == ("val_ema", "loss")


def test_val_ema_needs_an_ema_and_a_checkpoint_keeps_its_average(tmp_path):
    from mlic.training.selection import check_select_metric

    with pytest.raises(ConfigError, match="val_ema/: with train.ema_decay set"):
        check_select_metric(load_config(None, ["train.select_metric=val_ema/mAP"]))
    run = tmp_path / "run"
    fit_demo(run, *OVERRIDES, "train.epochs=1", "train.max_steps_per_epoch=2", "train.ema_decay=0.9")
    # resuming it without the average (or the other way round) would lose or invent one: refused, saying why
    with pytest.raises(ConfigError, match="ema"):
        fit_demo(run, *OVERRIDES, "train.epochs=2", "train.max_steps_per_epoch=2")
