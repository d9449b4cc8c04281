"""`train.compile`: the prepared model compiled in place, so checkpoints, the EMA and the export keep plain keys
and a compiled run resumes like an eager one. Breadth on the aot_eager backend (TorchDynamo and AOTAutograd,
no code generation); inductor, what users get, on the small CNN once."""

import json
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlic.cli import main
from mlic.config import ModelConfig, load_config
from mlic.errors import ConfigError
from mlic.models import build_model
from mlic.training.build import check_compile_owner, compile_model, compiles
from tests.helpers import TINY, assert_same_run, run_cmd, val_lines
from tests.test_backbones import tiny_hf


@pytest.mark.parametrize(("value", "device", "expected"), [
    ("auto", "cuda", True), ("auto", "cpu", False), ("true", "cpu", True), ("false", "cuda", False)])
def test_compile_auto_is_on_under_cuda_only(value, device, expected):
    cfg = load_config(None, [f"train.compile={value}"])
    assert compiles(cfg, types.SimpleNamespace(device=torch.device(device))) is expected


def test_compile_settings_are_checked_and_the_launch_config_cannot_compile_behind_them(monkeypatch):
    assert load_config(None, []).train.compile == "auto"
    with pytest.raises(ConfigError, match="train.compile_mode"):
        load_config(None, ["train.compile_mode=fast"])
    with pytest.raises(ConfigError, match="train.compile'"):
        load_config(None, ["train.compile=sometimes"])
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")  # what `dynamo_config` in a launch file sets
    with pytest.raises(ConfigError, match="remove dynamo_config from the launch config"):
        check_compile_owner()
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    check_compile_owner()


@pytest.mark.parametrize(("name", "head", "size"), [
    ("cnn", "report", 32), ("resnet18", "report", 32), pytest.param("vit", "report", 32, marks=pytest.mark.slow),
    pytest.param("timm/convnext_atto", "mldecoder", 32, marks=pytest.mark.slow),
    pytest.param("timm/mobilenetv3_small_050", "linear", 32, marks=pytest.mark.slow), ("hf", "mldecoder", 32)])
def test_every_backbone_family_and_head_compiles_to_the_eager_outputs_with_plain_keys(name, head, size, tmp_path):
    if name == "hf":  # a Hugging Face backbone from a local folder (the tests are offline)
        name = f"hf/{tiny_hf(tmp_path / 'vit')}"
    model, _ = build_model(ModelConfig(name=name, pretrained=False, head=head), 5)
    keys = list(model.state_dict())
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    eager = model.eval()(x)
    cfg = load_config(None, ["train.compile=true", "train.compile_backend=aot_eager"])
    compile_model(cfg, types.SimpleNamespace(distributed_type="NO"), model)
    torch.testing.assert_close(model(x), eager, rtol=1e-5, atol=1e-5)
    model.train()(x).sum().backward()  # the training graph too: every trainable tensor gets a finite gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert list(model.state_dict()) == keys  # in place: no `_orig_mod.` for checkpoints or the export


@pytest.mark.slow
def test_an_inductor_compiled_runs_exported_model_predicts_what_an_eager_rebuild_predicts(tmp_path, capsys):
    """The run's val line was computed by the compiled model; `mlic evaluate` rebuilds the exported one eagerly."""
    run = tmp_path / "run"
    code = main(["train", "cnn", "--config", "configs/demo.yaml", "data.demo_images=300", "train.batch_size=16",
                 "train.epochs=1", "train.compile=true", "run.progress=false", f"run.output_dir={run}"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("train.compile: the first step took") == 1 and "compiling with inductor" in out
    for folder in (run / "model", next((run / "checkpoints").glob("epoch*"))):
        assert not [k for k in load_file(folder / "model.safetensors") if "_orig_mod" in k or k.startswith("module.")]
    assert main(["evaluate", str(run / "model"), "--json", str(tmp_path / "ev.json")]) == 0
    summary, line = json.loads((tmp_path / "ev.json").read_text())["summary"], val_lines(run)[-1]
    for key in ("f1_macro", "f1_micro", "mAP", "accuracy"):
        assert summary[key] == pytest.approx(line[key], rel=1e-5, abs=1e-5), key
    assert summary["images"] == line["images"]


# after TINY; the last two ask for the average
OVERRIDES = ["train.eval_batch_size=32", "train.epochs=2", "train.save_every_steps=4", "run.progress=false",
             "train.compile=true", "train.compile_backend=aot_eager", "train.ema_decay=0.9",
             "train.select_metric=val_ema/mAP"]


def _train(run: Path, fault: str | None = None):
    env = {"ACCELERATE_USE_CPU": "true", **({"MLIC_FAULT": fault} if fault else {})}
    return run_cmd(["accelerate", "launch", "--config_file", "launch/multi_cpu.yaml", "--main_process_port", "29561",
                    "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, f"run.output_dir={run}"],
                   timeout=900, env=env)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_compiled_two_process_run_killed_mid_epoch_resumes_equal_to_the_uninterrupted_one(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = _train(straight)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]  # stdout: where a rank stopped
    assert done.stdout.count("train.compile: the first step took") == 1  # printed once, not per rank
    killed = _train(resumed, "step:6")  # each rank dies at its 6th step, after the step-4 checkpoint
    assert killed.returncode != 0
    checkpoint = resumed / "checkpoints" / "epoch0001-step00000004"
    weights, state = load_file(checkpoint / "model.safetensors"), load_file(checkpoint / "ema.safetensors")
    assert weights.keys() == state.keys() and not [k for k in weights if "_orig_mod" in k or k.startswith("module.")]
    done = _train(resumed)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]  # stdout: where a rank stopped
    assert "resumed from" in done.stdout and checkpoint.name in done.stdout
    assert_same_run(straight, resumed, [1, 2])
    assert json.loads((resumed / "model" / "config.json").read_text())["weights"] == "ema"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_compiled_deepspeed_run_trains_and_exports_plain_keys(tmp_path):
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    done = run_cmd(["accelerate", "launch", "--config_file", "launch/deepspeed_zero2_cpu.yaml", "--main_process_port",
                    "29563", "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES[:-2], "train.epochs=1",
                    "train.save_every_steps=100", f"run.output_dir={run}"], timeout=900)  # [:-2]: without the average
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]  # stdout: where a rank stopped
    assert done.stdout.count("train.compile: the first step took") == 1
    assert not [k for k in load_file(run / "model" / "model.safetensors") if "_orig_mod" in k]
    assert len(val_lines(run)) == 1
