"""The training engine behind every `train/*.py`: plain functions on top of Accelerate.

fit(cfg) -> builds everything, resumes if a checkpoint exists, then per epoch:
train_one_epoch -> evaluate -> log -> checkpoint -> export the best model.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from mlic import faults
from mlic.allocator import keep_freed_memory
from mlic.checkpoint import CheckpointWriter, TrainingState, latest_checkpoint, load_checkpoint
from mlic.config import Config, save_resolved
from mlic.data.pipeline import Data, build_data, load_split
from mlic.errors import ConfigError, MlicError
from mlic.export import export_model, recover_export
from mlic.losses import build_loss
from mlic.metrics import METRIC_KEYS, compute_metrics, heldout_tuned_f1_macro, tune_thresholds, tuned_metrics
from mlic.models import architecture, build_model, is_cnn
from mlic.preemption import StopRequested, StopSignal


def make_accelerator(cfg: Config) -> Accelerator:
    handlers = []
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed and not torch.cuda.is_available():  # DeepSpeed would ask for NCCL; gloo is the CPU backend
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=cfg.run.output_dir, logging_dir=cfg.run.output_dir),
        kwargs_handlers=handlers,
        step_scheduler_with_optimizer=False,  # the schedule's unit (epoch or step) is ours, whatever the world size
    )


def build_optimizer(cfg: Config, model: torch.nn.Module, deepspeed: bool = False) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    fused = cfg.optim.fused == "on" or (cfg.optim.fused == "auto" and not deepspeed)
    return kind(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                weight_decay=cfg.optim.weight_decay, fused=fused or None)


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    s = cfg.schedule
    if s.name == "linear":  # report §4.2: start at lr * 1/3, reach lr after `total_iters`
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=s.start_factor, total_iters=s.total_iters)
    if s.name == "cosine":
        total = cfg.train.epochs * (steps_per_epoch if s.interval == "step" else 1)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def input_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """DeepSpeed keeps half-precision weights and no autocast: its inputs must match them. Its precision
    is set in the DeepSpeed JSON (accelerate refuses `mixed_precision` beside a config file)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    for key, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if ds.get(key, {}).get("enabled") in (True, "true") or accelerator.mixed_precision == key:
            return dtype
    return None


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return hash((seed, epoch, step, rank)) & 0x7FFF_FFFF_FFFF_FFFF


def seed_step(device: torch.device, seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """All randomness of a step depends on (seed, epoch, step, rank) only, so a run resumed mid-epoch
    repeats it exactly: the global RNG (dropout) is reseeded, and the augmentations get a generator.
    (Without the reseed, a DataLoader iterator created after resuming draws its worker seed from the
    global RNG and shifts every dropout mask that follows.)"""
    value = step_seed(seed, epoch, step, rank)
    torch.random.default_generator.manual_seed(value)  # not torch.manual_seed: it probes every backend (~0.1 ms)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)
    return torch.Generator(device).manual_seed(value ^ 0x5DEECE66D)


def _gather_padded(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    return accelerator.gather(accelerator.pad_across_processes(tensor, dim=0, pad_index=-1))


def train_one_epoch(
    model, loader, optimizer, scheduler, loss_fn, accelerator: Accelerator, data: Data, cfg: Config,
    state: TrainingState, save_fn, stop: StopSignal | None = None,
) -> dict[str, float]:
    """One pass over the (sampled) training set. Outputs stay on the device until the epoch ends:
    the only host syncs are the loss logs every `train.log_every` steps and mid-epoch checkpoints."""
    model.train()
    device, cast = accelerator.device, input_dtype(accelerator)
    probs, targets, losses = [], [], []
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, on the device
    seen = 0
    micro_step = state.step_in_epoch * cfg.train.grad_accum  # batches of this epoch already done
    start = time.perf_counter()
    show = accelerator.is_main_process and cfg.run.progress
    bar = tqdm(loader, desc=f"epoch {state.epoch} train", disable=None if show else True, leave=False,
               initial=state.step_in_epoch)  # disable=None: no bar when stderr is not a terminal
    for images, target, _ in bar:
        gen = seed_step(device, cfg.train.seed, state.epoch, micro_step, accelerator.process_index)
        micro_step += 1
        x = data.train_transform(images, gen)
        if cast is not None:
            x = x.to(cast)
        with accelerator.accumulate(model):
            logits = model(x).float()
            loss = loss_fn(logits, target)
            if faults.hit("nan"):
                loss = loss * float("nan")
            accelerator.backward(loss)
            finite = torch.isfinite(loss.detach())
            if accelerator.sync_gradients and cfg.train.clip_grad_norm is not None:
                finite &= torch.isfinite(accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm))
            skip = cfg.train.skip_nonfinite and _any_rank(accelerator, ~finite)  # one host sync per step
            if skip:
                state.skipped_steps += 1
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seen += len(target)
        if not cfg.train.skip_nonfinite:
            first_bad = torch.where((first_bad < 0) & ~finite, state.global_step + 1, first_bad)
        if not (cfg.train.skip_nonfinite and skip):  # a skipped step's outputs stay out of the metrics
            probs.append(torch.sigmoid(logits.detach()))
            targets.append(target)
            losses.append(loss.detach())
        if not accelerator.sync_gradients:
            continue
        state.step_in_epoch += 1
        state.global_step += 1
        if cfg.schedule.interval == "step":
            scheduler.step()
        faults.kill_point("step")
        if cfg.train.log_every and state.global_step % cfg.train.log_every == 0:
            _check_finite(accelerator, first_bad, state)
            accelerator.log({"train/loss_step": loss.item(), "lr": optimizer.param_groups[0]["lr"]}, step=state.global_step)
        stopping = (stop is not None and state.global_step % cfg.train.stop_check_every == 0
                    and stop.requested(accelerator))
        if stopping or (cfg.train.save_every_steps and state.global_step % cfg.train.save_every_steps == 0):
            _check_finite(accelerator, first_bad, state)  # never checkpoint a diverged model
            state.partial = _merge_partial(state.partial, _gather_outputs(accelerator, probs, targets, losses, data.dataset.num_labels))
            probs, targets, losses = [], [], []
            save_fn(blocking=stopping)  # a stop waits for its checkpoint
            if stopping:
                raise StopRequested(f"epoch {state.epoch}, step {state.step_in_epoch} of it")
        if cfg.train.max_steps_per_epoch and state.step_in_epoch >= cfg.train.max_steps_per_epoch:
            break
    elapsed = time.perf_counter() - start
    _check_finite(accelerator, first_bad, state)
    outputs = _merge_partial(state.partial, _gather_outputs(accelerator, probs, targets, losses, data.dataset.num_labels))
    state.partial = {}
    if cfg.schedule.interval == "epoch":
        scheduler.step()
    metrics = compute_metrics(outputs["targets"].numpy(), outputs["probs"].numpy())
    metrics["loss"] = float(outputs["losses"].mean())
    metrics["images"] = len(outputs["targets"])
    metrics["skipped_steps"] = state.skipped_steps
    metrics["skipped_images"] = data.skipped_images
    metrics["images_per_s"] = seen * accelerator.num_processes / max(elapsed, 1e-9)
    return metrics


class NonFiniteError(MlicError):
    pass


def _any_rank(accelerator, flag: torch.Tensor) -> bool:
    flag = flag.float().reshape(1)
    return bool((accelerator.reduce(flag, reduction="sum") if accelerator.num_processes > 1 else flag).item() > 0)


def _check_finite(accelerator, first_bad: torch.Tensor, state: TrainingState) -> None:
    """Called where the loop syncs anyway (loss logs, checkpoints, epoch end): all ranks agree."""
    bad = accelerator.gather(first_bad.reshape(1)) if accelerator.num_processes > 1 else first_bad.reshape(1)
    bad = bad[bad >= 0]
    if bad.numel():
        raise NonFiniteError(f"non-finite loss or gradient norm at step {int(bad.min())} (epoch {state.epoch})")


def _gather_outputs(accelerator, probs, targets, losses, num_labels: int) -> dict[str, torch.Tensor]:
    """One gather per call for the whole epoch (padded rows carry -1 and are dropped)."""
    device = accelerator.device
    p = torch.cat(probs) if probs else torch.empty(0, num_labels, device=device)
    t = torch.cat(targets).to(p.dtype) if targets else torch.empty(0, num_labels, device=device)
    loss = torch.stack(losses).float() if losses else torch.empty(0, device=device)
    p, t, loss = (_gather_padded(accelerator, v.contiguous()) for v in (p, t, loss))
    keep = t[:, 0] >= 0 if t.numel() else torch.zeros(0, dtype=torch.bool, device=t.device)
    return {"probs": p[keep].cpu(), "targets": t[keep].cpu(), "losses": loss[loss >= 0].cpu()}


def _merge_partial(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not old:
        return new
    return {k: torch.cat([old[k], new[k]]) for k in new}


@torch.no_grad()
def predict(model, loader, transform, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, targets and sample indices over exactly the loader's dataset.

    Accelerate pads the last batches so that every rank gets the same number; the indices travel with
    the outputs and one gather at the end drops every duplicate."""
    model.eval()
    cast = input_dtype(accelerator)
    logits_all, targets_all, index_all = [], [], []
    for images, target, index in loader:
        x = transform(images)
        if cast is not None:
            x = x.to(cast)
        logits_all.append(model(x).float())
        faults.kill_point("eval")
        targets_all.append(target.float())
        index_all.append(index.to(accelerator.device))
    logits = _gather_padded(accelerator, torch.cat(logits_all)).cpu()
    targets = _gather_padded(accelerator, torch.cat(targets_all)).cpu()
    index = _gather_padded(accelerator, torch.cat(index_all)).cpu().numpy()
    valid = index >= 0
    index, first = np.unique(index[valid], return_index=True)
    logits, targets = logits[valid][first], targets[valid][first]
    return torch.sigmoid(logits).numpy(), targets.numpy(), index


def evaluate(model, loader, transform, loss_fn, accelerator, tune_thresholds_: bool = False, default: float = 0.5):
    """Metrics at `default`; with `tune_thresholds_`, also `*_tuned` at per-label thresholds chosen on
    this very split (optimistic there: they are meant for the test set). Returns (metrics, thresholds)."""
    start = time.perf_counter()
    probs, targets, index = predict(model, loader, transform, accelerator)
    elapsed = time.perf_counter() - start
    logits = torch.logit(torch.from_numpy(probs).double(), eps=1e-7).float()
    metrics = compute_metrics(targets, probs, default)
    metrics["images"] = len(index)
    metrics["images_per_s"] = len(index) / max(elapsed, 1e-9)
    weight = getattr(loss_fn, "pos_weight", None)
    metrics["loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(targets), pos_weight=None if weight is None else weight.cpu()))
    thresholds = np.full(targets.shape[1], default)
    if tune_thresholds_:
        thresholds = tune_thresholds(targets, probs, default)
        metrics.update(tuned_metrics(targets, probs, thresholds))
        metrics["f1_macro_tuned_heldout"] = heldout_tuned_f1_macro(targets, probs, default)
    return metrics, thresholds


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """On resume, drop lines of epochs after the checkpoint (they will be written again)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= last_epoch]
        path.write_text("".join(ln + "\n" for ln in lines))


def check_select_metric(name: str) -> None:
    split, _, key = name.partition("/")
    known = {*METRIC_KEYS, "loss"} | {f"{k}_tuned" for k in METRIC_KEYS if k != "mAP"}
    if split not in ("train", "val") or key not in known:
        raise ConfigError(f"config key 'train.select_metric': {name!r} is not a metric; use train/ or val/ with one "
                          f"of {', '.join(sorted(known))}")


def fit(cfg: Config) -> dict[str, dict[str, float]]:
    """Train per `cfg`; returns the last epoch's {"train": ..., "val": ...} metrics."""
    check_select_metric(cfg.train.select_metric)
    accelerator = make_accelerator(cfg)
    if accelerator.device.type == "cpu" and cfg.train.keep_host_memory:
        keep_freed_memory()
    out = Path(cfg.run.output_dir)
    set_seed(cfg.train.seed)
    say = accelerator.print
    split = load_split(cfg)  # data errors surface before the model is built
    num_labels = split[0].num_labels
    model, preprocess = build_model(cfg.model, num_labels)
    channels_last = is_cnn(cfg.model.name) and cfg.model.channels_last and torch.cuda.is_available()
    data = build_data(cfg, accelerator, split, preprocess, channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss.pos_weight, data.train.targets, cfg.loss.pos_weight_clip)
    optimizer = build_optimizer(cfg, model, accelerator.distributed_type == DistributedType.DEEPSPEED)
    steps_per_epoch = math.ceil(len(data.train_loader) / accelerator.num_processes / cfg.train.grad_accum)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    if cfg.train.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, data.train_loader, data.val_loader, scheduler
    )
    loss_fn = loss_fn.to(accelerator.device)
    data.train_transform.to(accelerator.device)
    data.eval_transform.to(accelerator.device)
    state = TrainingState()
    identity = {"model": cfg.model.name, "label_names": data.dataset.label_names}

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recover_export(out / "model")
        save_resolved(cfg, out / "config.yaml", world_size=accelerator.num_processes,
                      mixed_precision=accelerator.mixed_precision, distributed_type=str(accelerator.distributed_type),
                      label_names=data.dataset.label_names, train_images=len(data.train), val_images=len(data.val),
                      cached=data.cached)
    accelerator.init_trackers("tensorboard", config=_flat_hparams(cfg))
    if accelerator.is_main_process and not (out / "figures").exists():
        _data_figures(accelerator, out, data, loss_fn)
    resume = latest_checkpoint(out / "checkpoints")
    if resume is not None:
        load_checkpoint(accelerator, resume, state, data.sampler, identity)
        say(f"resumed from {resume} (epoch {state.epoch}, step {state.step_in_epoch} of it)")
        if accelerator.is_main_process:
            _trim_metrics(out / "metrics.jsonl", state.epoch - 1)

    writer = CheckpointWriter(accelerator, model, optimizer, scheduler, out / "checkpoints", identity,
                              cfg.train.keep_checkpoints, background=cfg.train.async_save)

    def save(blocking: bool = False) -> None:
        writer.save(state, data.sampler, blocking)

    last: dict[str, dict[str, float]] = {}
    stop = StopSignal()
    try:
        while state.epoch <= cfg.train.epochs:
            epoch = state.epoch
            train_loader.set_epoch(epoch)
            loader = train_loader
            if state.step_in_epoch:  # resumed mid-epoch: the same order, minus the batches already done
                loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch * cfg.train.grad_accum)
                loader.set_epoch(epoch)  # a new loader counts epochs from 0: the sampler must see this one
            train_metrics = train_one_epoch(model, loader, optimizer, scheduler, loss_fn, accelerator, data, cfg, state,
                                            save, stop)
            val_metrics, thresholds = evaluate(model, val_loader, data.eval_transform, loss_fn, accelerator,
                                               cfg.eval.thresholds == "per_label", cfg.eval.threshold)
            last = {"train": train_metrics, "val": val_metrics}
            _log_epoch(accelerator, out, epoch, cfg, last, optimizer)
            score = {**{f"train/{k}": v for k, v in train_metrics.items()}, **{f"val/{k}": v for k, v in val_metrics.items()}}
            value = score[cfg.train.select_metric] * (-1 if cfg.train.select_metric.endswith("loss") else 1)
            if state.best is None or value > state.best:  # `best` is stored as higher-is-better
                state.best = value
                _export(accelerator, model, out / "model", cfg, data, preprocess, thresholds, epoch, val_metrics, num_labels)
            state.epoch += 1
            state.step_in_epoch = 0
            save()
            if state.epoch <= cfg.train.epochs and stop.requested(accelerator):
                raise StopRequested(f"the end of epoch {epoch}")
        writer.wait()  # the last checkpoint is on disk before fit returns
    except NonFiniteError as exc:
        writer.wait()
        last = latest_checkpoint(out / "checkpoints")
        raise MlicError(f"{exc}; last good checkpoint: {last or 'none yet'}. Lower optim.lr, set "
                        "train.clip_grad_norm, or skip such steps with train.skip_nonfinite=true") from None
    except StopRequested as exc:
        writer.wait()
        accelerator.print(f"stopped at {exc}: checkpoint saved in {out / 'checkpoints'}; "
                          "run the same command again to resume")
        accelerator.end_training()
        raise
    finally:
        stop.restore()
        writer.close()
    accelerator.end_training()
    return last


def _export(accelerator, model, out: Path, cfg, data, preprocess, thresholds, epoch, val_metrics, num_labels) -> None:
    state_dict = accelerator.get_state_dict(model)  # every rank: DeepSpeed gathers shards
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        meta = {
            "architecture": architecture(getattr(unwrapped, "_orig_mod", unwrapped), cfg.model, num_labels),
            "label_names": data.dataset.label_names,
            "thresholds": [float(t) for t in thresholds],
            "preprocess": {**preprocess.to_dict(), "size": cfg.data.image_size or preprocess.size},
            "epoch": epoch,
            "val_metrics": val_metrics,
            "cached": data.cached,
            "config": cfg.to_dict(),
        }
        state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        export_model(state_dict, out, meta)
    accelerator.wait_for_everyone()


def _data_figures(accelerator, out: Path, data: Data, loss_fn) -> None:
    """Figures 1-3 of the report, once per run: PNG in RUN/figures and images in TensorBoard."""
    from mlic.figures import data_figures, save_figures
    from mlic.losses import pos_weight

    targets = data.train.targets
    weights = getattr(loss_fn, "pos_weight", None)
    weights = pos_weight(targets) if weights is None else weights.cpu()
    order = np.asarray(list(data.sampler))  # epoch 0 of the sampler: the global order, no side effects
    figures = data_figures(targets, data.dataset.label_names, order, weights.numpy())
    save_figures(figures, out / "figures", accelerator.get_tracker("tensorboard").writer)


def _log_epoch(accelerator, out: Path, epoch: int, cfg: Config, metrics: dict, optimizer) -> None:
    scalars = {f"{split}/{k}": v for split, values in metrics.items() for k, v in values.items()}
    scalars["lr"] = optimizer.param_groups[0]["lr"]
    if torch.cuda.is_available():
        scalars["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    accelerator.log(scalars, step=epoch)
    if not accelerator.is_main_process:
        return
    with (out / "metrics.jsonl").open("a") as fh:
        for split, values in metrics.items():
            fh.write(json.dumps({"epoch": epoch, "split": split, **values}) + "\n")
    faults.kill_point("metrics")  # lines written, checkpoint not yet: the resume trims them
    t, v = metrics["train"], metrics["val"]
    accelerator.print(
        f"epoch {epoch}/{cfg.train.epochs}  train loss {t['loss']:.4f} f1_macro {t['f1_macro']:.3f}  |  "
        f"val loss {v['loss']:.4f} f1_micro {v['f1_micro']:.3f} f1_macro {v['f1_macro']:.3f} mAP {v['mAP']:.3f}  |  "
        f"{t['images_per_s']:.0f} img/s"
    )
