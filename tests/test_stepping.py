"""What an optimizer step gets (issue 28), seen through real `fit` runs: a last, partial accumulation window
steps with the mean gradient of its micro-batches (straight, resumed mid-epoch, capped by
train.max_steps_per_epoch), and fp16 loss-scale overflows are skipped steps with the scaler updated, not
divergence, unless they never end.

No GPU here: accelerate runs fp16 on the CPU without a GradScaler or autocast, so `fp16_on_cpu` hands it
the scaler it makes on a GPU (`torch.amp.GradScaler("cpu")`) before `prepare`, and turns on its native AMP
(CPU autocast to float16): the same code path as a GPU run's."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from mlic.config import load_config
from mlic.errors import MlicError
from tests.helpers import REPO, TINY, fit_demo, metrics_lines

INIT_SCALE = 2.0**24  # the demo CNN's float16 gradients overflow above ~2^18: the first steps overflow
# after TINY (batch 32: demo.yaml's own, where a test sets none). 236 training images
OVERRIDES = ["train.batch_size=32", "train.epochs=1", "run.progress=false", "data.image_size=32", "eval.thresholds=fixed"]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture
def gradients(monkeypatch):
    """The gradient of each micro-batch's own loss, computed apart at the weights it trains with, and the
    gradient each Adam step gets (both flattened over the trainable parameters, in one order)."""
    import mlic.training.engine as engine

    seen = {"micro": [], "steps": []}
    real_forward_backward, real_step = engine.forward_backward, torch.optim.Adam.step

    def forward_backward(run, images, target, generator, *args, **kwargs):
        params = [p for p in run.model.parameters() if p.requires_grad]
        own = torch.Generator(generator.device).set_state(generator.get_state())  # the same augmentation draw
        loss = run.loss_fn(run.model(run.data.train_transform(images, own)).float(), target, None)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        seen["micro"].append(_flat(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)))
        return real_forward_backward(run, images, target, generator, *args, **kwargs)

    def step(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"]]
        seen["steps"].append(_flat(torch.zeros_like(p) if p.grad is None else p.grad for p in params))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(engine, "forward_backward", forward_backward)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return seen


@pytest.fixture
def vit(tmp_path):
    """A tiny ViT: LayerNorm only, no dropout, so that a micro-batch's gradient depends on it alone."""
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(tmp_path / "vit")
    return ["model.name=vit", "model.pretrained=false", f"model.weights={tmp_path / 'vit'}", "model.head_batchnorm=false",
            "model.dropout=0", "augment.enabled=false", "schedule.name=none", "train.batch_size=16", "train.grad_accum=4"]


def _windows_step_with_their_mean(seen, first_micro_step: int, micro_steps: int, grad_accum: int = 4) -> list[int]:
    """Each recorded step's gradient is the mean of its window's micro-batch gradients; returns the window sizes."""
    sizes = []
    for k, stepped in enumerate(seen["steps"]):
        start = k * grad_accum
        window = seen["micro"][start:min(start + grad_accum, micro_steps - first_micro_step)]
        sizes.append(len(window))
        torch.testing.assert_close(stepped, torch.stack(window).mean(0), rtol=1e-4, atol=1e-7,
                                   msg=f"step {k} (window of {len(window)})")
    assert sum(sizes) == len(seen["micro"]) == micro_steps - first_micro_step
    return sizes


def test_the_last_partial_window_steps_with_the_mean_of_its_micro_batches(tmp_path, vit, gradients):
    """236 images in batches of 16: 14 micro-batches, windows of 4, 4, 4 and 2. Before issue 28 the last
    window stepped with 2/4 of its mean gradient."""
    fit_demo(tmp_path / "run", *OVERRIDES, *vit)
    assert _windows_step_with_their_mean(gradients, 0, 14) == [4, 4, 4, 2]
    small = torch.stack(gradients["micro"][12:]).mean(0)
    assert float((gradients["steps"][3] - small / 2).abs().max()) > 1e-4 * float(small.abs().max())  # can fail


def test_a_run_resumed_mid_epoch_weighs_its_windows_by_their_place_in_the_epoch(tmp_path, vit, gradients, monkeypatch):
    """Stopped after step 1 (SIGTERM), resumed: the resumed loop counts micro-steps from 4, not 0, and its
    last window (micro-batches 12 and 13) still steps with their mean."""
    monkeypatch.setenv("MLIC_FAULT", "term-step:1")
    assert "stopped" in fit_demo(tmp_path / "run", *OVERRIDES, *vit, "train.stop_check_every=1")
    monkeypatch.delenv("MLIC_FAULT")
    gradients["micro"].clear()
    gradients["steps"].clear()
    fit_demo(tmp_path / "run", *OVERRIDES, *vit)
    assert _windows_step_with_their_mean(gradients, 4, 14) == [4, 4, 2]


def test_max_steps_per_epoch_leaves_only_full_windows(tmp_path, vit, gradients):
    fit_demo(tmp_path / "run", *OVERRIDES, *vit, "train.max_steps_per_epoch=3")
    assert _windows_step_with_their_mean(gradients, 0, 12) == [4, 4, 4]


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """Runs get accelerate's fp16 path on the CPU: a GradScaler and autocast. Returns the scales the scaler
    had after each update. accelerate's state outlives an Accelerator: it is reset before (an earlier test's
    "no" would stay) and after (fp16 would)."""
    from accelerate.state import AcceleratorState

    import mlic.training.engine as engine

    scales: list[float] = []
    real_preflight = engine.preflight

    def preflight(cfg):
        accelerator = real_preflight(cfg)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
        accelerator.native_amp = True
        real_update = accelerator.scaler.update

        def update(*args, **kwargs):
            real_update(*args, **kwargs)
            scales.append(accelerator.scaler.get_scale())

        accelerator.scaler.update = update
        return accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr(engine, "preflight", preflight)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield scales
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("extra", [["train.clip_grad_norm=1.0"], ["train.clip_grad_norm=1.0", "train.skip_nonfinite=true"],
                                   []], ids=["clip", "clip-skip_nonfinite", "no-clip"])
@pytest.mark.slow
def test_fp16_overflows_are_skipped_steps_with_the_scaler_updated(tmp_path, fp16_on_cpu, extra):
    """Before issue 28: with clipping the first overflow stopped the run as non-finite; with skip_nonfinite
    the scaler was never updated and the next unscale_ raised."""
    last = fit_demo(tmp_path / "run", *OVERRIDES, "train.batch_size=16", "train.max_steps_per_epoch=10", *extra)
    scales = fp16_on_cpu
    assert len(scales) == 10  # the scaler saw every step
    overflows = sum(b < a for a, b in zip([INIT_SCALE, *scales], scales))  # each overflow halves the scale
    assert 1 <= overflows < 10, scales
    assert last["train"]["skipped_steps"] == overflows
    lines = metrics_lines(tmp_path / "run")
    assert lines[0]["skipped_steps"] == overflows and lines[1]["split"] == "val"


@pytest.mark.slow
def test_fp16_overflowing_forever_still_stops_as_non_finite(tmp_path, fp16_on_cpu, monkeypatch):
    """A gradient that is inf whatever the scale: the 50th overflow in a row is divergence (59 steps)."""
    import mlic.training.engine as engine
    from mlic.training.stepping import OVERFLOWS_IN_A_ROW

    real = engine.forward_backward

    def inf_gradient(run, *args, **kwargs):
        out = real(run, *args, **kwargs)
        next(run.model.parameters()).grad.fill_(float("inf"))
        return out

    monkeypatch.setattr(engine, "forward_backward", inf_gradient)
    with pytest.raises(MlicError, match=rf"non-finite loss or gradient norm at step {OVERFLOWS_IN_A_ROW} "):
        fit_demo(tmp_path / "run", *OVERRIDES, "train.batch_size=4", "train.clip_grad_norm=1.0", "train.log_every=1")
    assert len(fp16_on_cpu) == OVERFLOWS_IN_A_ROW and fp16_on_cpu[-1] == INIT_SCALE / 2**OVERFLOWS_IN_A_ROW


class _Outputs:
    """The two things of `EpochOutputs` the guard uses."""

    def __init__(self):
        self.window_finite, self.track_finite, self.noted = torch.ones((), dtype=torch.bool), True, []

    def note_finite(self, finite, step):
        self.noted.append((bool(finite), step))
        self.window_finite = self.window_finite & finite


@pytest.mark.parametrize(("norm", "skipped", "counted", "finite"), [
    (None, True, 1, True),  # DeepSpeed fp16 overflow: no norm
    (float("inf"), True, 1, True),  # DeepSpeed fp16 overflow: an inf norm
    (float("inf"), False, 0, False),  # not skipped by DeepSpeed (bf16 / fp32): divergence
    (2.5, False, 0, True),
])
def test_deepspeed_norms_are_host_numbers_or_none(norm, skipped, counted, finite):
    """Under DeepSpeed `clip_grad_norm_` returns a float or None (torch.isfinite raised TypeError) and the
    overflow is DeepSpeed's own flag, `step_was_skipped`."""
    from mlic.training.stepping import OverflowGuard

    accelerator = SimpleNamespace(scaler=None, distributed_type=DistributedType.DEEPSPEED, device=torch.device("cpu"),
                                  clip_grad_norm_=lambda params, limit: norm)
    run = SimpleNamespace(accelerator=accelerator, optimizer=SimpleNamespace(step_was_skipped=skipped),
                          model=torch.nn.Linear(2, 2), cfg=SimpleNamespace(train=SimpleNamespace(clip_grad_norm=1.0)))
    guard, outputs = OverflowGuard(accelerator), _Outputs()
    guard.clip_and_check(run, outputs, 7)
    assert int(guard.take()) == counted and int(guard.take()) == 0
    assert bool(outputs.window_finite) == finite


def test_an_accumulation_set_outside_train_grad_accum_is_refused_at_start(tmp_path, monkeypatch):
    """The window arithmetic divides by train.grad_accum: a launch config's gradient_accumulation_steps
    (accelerate would silently take it instead) is one error before any data is read."""
    from mlic.errors import ConfigError
    from mlic.training.build import preflight

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    overrides = [*TINY, *OVERRIDES, "train.grad_accum=2", f"run.output_dir={tmp_path}"]
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    with pytest.raises(ConfigError, match=r"'train.grad_accum': 2, but accelerate's .* is 3"):
        preflight(cfg)
