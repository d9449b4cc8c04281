"""Evaluation: the model's outputs over a loader, gathered once across ranks, and the epoch's metrics by
split (the weights, and their average with an EMA), at the default and per-label tuned thresholds. A stop
request is honoured between batches and between blocks of labels of the metrics (a minute or more at
OpenImages size): `fit` then saves the trained epoch and the resume evaluates it."""

from __future__ import annotations

import time

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast

from mlic import faults
from mlic.errors import DivergedError
from mlic.metrics import label_stats, split_known, stats_metrics
from mlic.training.build import Run, input_dtype
from mlic.training.preemption import StopSignal


def share_buffers(accelerator: Accelerator, model) -> None:
    """Give every rank the main process's buffers (BatchNorm statistics) under DeepSpeed.

    DDP broadcasts them at every forward; DeepSpeed leaves each rank its own, while a checkpoint and the
    exported model hold the main process's. Done before every evaluation and checkpoint, so that each
    rank evaluates the model that is saved, and a resumed run (all ranks load the main process's) goes
    on exactly as the uninterrupted one."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            broadcast(buffer, from_process=0)


@torch.no_grad()
def predict_logits(model, loader, transform, accelerator: Accelerator, stop: StopSignal | None = None,
                   check_every: int = 10) -> tuple[torch.Tensor, torch.Tensor, np.ndarray] | None:
    """Logits, targets (on the host) and sample indices over exactly the loader's dataset; None when `stop`
    was requested (checked every `check_every` batches: every rank has as many batches).

    Accelerate pads the last batches so that every rank gets the same number; the indices travel with
    the outputs, one gather at the end, and the padding and every duplicate are dropped by index."""
    model.eval()
    cast = input_dtype(accelerator)
    logits, targets, index = [], [], []
    for batch, (images, target, idx) in enumerate(loader, 1):
        if stop is not None and batch % check_every == 0 and stop.requested(accelerator):
            return None
        x = transform(images)
        if cast is not None:
            x = x.to(cast)
        # a copy: under train.compile_mode=reduce-overhead / max-autotune (CUDA graphs) the next batch's replay
        # overwrites the graph's output, and .float() of a float32 output is that same tensor
        logits.append(model(x).float().clone())
        faults.kill_point("eval")
        targets.append(target.float())
        index.append(idx.to(accelerator.device))
    index = _gather_padded(accelerator, torch.cat(index), pad=-1).cpu().numpy()
    logits, targets = (_gather_padded(accelerator, torch.cat(v), pad=0).cpu() for v in (logits, targets))
    valid = index >= 0
    index, first = np.unique(index[valid], return_index=True)
    keep = torch.from_numpy(np.flatnonzero(valid)[first])
    return logits[keep], targets[keep], index


def _gather_padded(accelerator: Accelerator, tensor: torch.Tensor, pad: int) -> torch.Tensor:
    return accelerator.gather(accelerator.pad_across_processes(tensor.contiguous(), dim=0, pad_index=pad))


def evaluate(model, loader, transform, loss_fn, accelerator, tune: bool = False, default: float = 0.5,
             stop: StopSignal | None = None, check_every: int = 10):
    """Metrics at `default` and the loss by `loss_fn`, the training's own; with `tune`, also `*_tuned` at
    per-label thresholds chosen on this very split (optimistic there: they are meant for the test set).
    Returns (metrics, thresholds), or None when `stop` was requested meanwhile."""
    start = time.perf_counter()
    share_buffers(accelerator, model)
    predicted = predict_logits(model, loader, transform, accelerator, stop, check_every)
    if predicted is None:
        return None
    logits, targets, index = predicted
    elapsed = time.perf_counter() - start
    if not torch.isfinite(logits).all():  # gathered: every rank sees the same and raises alike
        raise DivergedError("the model's outputs on the validation split are not finite: its weights diverged in the "
                            "epoch's last steps. Lower optim.lr or set train.clip_grad_norm, and start again or resume "
                            "from an earlier checkpoint")
    probs = torch.sigmoid(logits).numpy()  # float32: the metrics keep it so (half the memory of float64)
    y, known = split_known(targets.numpy())  # unknown entries (partial labels) count nowhere
    del targets
    mask = None if known is None else torch.from_numpy(known).to(accelerator.device)
    loss = float(loss_fn(logits.to(accelerator.device), torch.from_numpy(y).float().to(accelerator.device), mask))
    del logits, mask
    computed = split_metrics(y, probs, known, default, tune, stop, accelerator)
    if computed is None:
        return None
    metrics, thresholds = computed
    metrics.update(images=len(index), images_per_s=len(index) / max(elapsed, 1e-9), loss=loss)
    return metrics, thresholds


def split_metrics(y, probs, known, default: float, tune: bool, stop: StopSignal | None, accelerator):
    """(metrics, thresholds) of a whole split, one block of labels at a time; None when `stop` was requested
    between two blocks. Every rank computes them from the same gathered outputs, so every rank has as many
    blocks and checks at the same ones: all agree. One block (any run of < ~4 M entries) checks nothing."""
    stats = label_stats(y, probs, default, known, tune=tune)
    for i, cols in enumerate(stats.blocks()):
        if i and stop is not None and stop.requested(accelerator):
            return None
        stats.add(cols)
    return stats_metrics(stats)


def evaluate_epoch(run: Run, train_metrics: dict[str, float],
                   stop: StopSignal | None = None) -> tuple[dict[str, dict], dict[str, np.ndarray]] | None:
    """The epoch's metrics by split ("train", "val", and "val_ema" with an EMA) and each val split's
    thresholds; None when `stop` was requested meanwhile. The average runs under the training's autocast,
    as the prepared model does."""
    acc, cfg = run.accelerator, run.cfg
    every = cfg.train.stop_check_every
    args = (run.val_loader, run.data.eval_transform, run.loss_fn, acc, cfg.eval.thresholds == "per_label",
            cfg.eval.threshold, stop, every)
    metrics, thresholds = {"train": train_metrics}, {}
    val = evaluate(run.model, *args)
    if val is None:
        return None
    metrics["val"], thresholds["val"] = val
    if run.ema is not None:
        run.ema.share_buffers(acc)
        with acc.autocast():
            val = evaluate(run.ema.module, *args)
        if val is None:
            return None
        metrics["val_ema"], thresholds["val_ema"] = val
    return metrics, thresholds
