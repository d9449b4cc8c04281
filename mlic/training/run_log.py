"""What a run writes for people: config.yaml, metrics.jsonl, the trackers' scalars (TensorBoard, MLflow,
W&B: `mlic.training.trackers`) and Figures 1-3."""

from __future__ import annotations

import json
import shutil
import socket
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from mlic import faults
from mlic.config import Config, save_resolved
from mlic.disk import writing
from mlic.errors import MlicError
from mlic.jsonl import trim_jsonl
from mlic.logs import log
from mlic.models.export import recover_export
from mlic.ranks import on_main
from mlic.training.build import Run
from mlic.training.trackers import Publisher

METRICS_FILE = "metrics.jsonl"


def start_run_folder(run: Run) -> None:
    """The resolved config; then `resume`, then `start_tracking`."""
    acc, data = run.accelerator, run.data
    hosts = sorted(set(gather_object([socket.gethostname()])))  # the machines this run spans

    def write() -> None:
        with writing("config.yaml", run.out, point="config"):
            run.out.mkdir(parents=True, exist_ok=True)
            recover_export(run.out / "model")
            save_resolved(run.cfg, run.out / "config.yaml", world_size=acc.num_processes, machines=len(hosts),
                          hosts=hosts, mixed_precision=acc.mixed_precision, distributed_type=acc.distributed_type.value,
                          label_names=data.dataset.label_names, train_images=len(data.train),
                          val_images=len(data.val), cached=data.cached)

    on_main(acc, write)


def start_tracking(run: Run, epochs_done: int, global_step: int) -> None:
    """After the resume (a checkpoint that cannot be resumed has stopped the run before any tracker run
    was opened): start the trackers, publish what the resumed checkpoint covers and a killed start did
    not publish, and draw the data figures once per run folder."""
    run.tracking = Publisher(run.accelerator, run.out, global_step)
    run.tracking.start(_flat_hparams(run.cfg))
    publish(run, epochs_done, global_step)
    on_main(run.accelerator, lambda: _data_figures(run) if not (run.out / "figures").exists() else None)


def trim_metrics(run: Run, last_epoch: int) -> None:
    """On resume, drop lines of epochs after the checkpoint (they will be written again)."""

    def trim() -> None:
        with writing(METRICS_FILE, run.out, point="metrics-trim"):
            trim_jsonl(run.out / METRICS_FILE, "epoch", last_epoch)

    on_main(run.accelerator, trim)


def log_epoch(run: Run, epoch: int, metrics: dict[str, dict[str, float]]) -> None:
    """metrics.jsonl and the console now; the trackers get the lines once the epoch's checkpoint is saved
    (`publish`). The train line also carries the learning rate (and the GPU memory peak)."""
    acc = run.accelerator
    extra = {"lr": current_lr(run)}
    if torch.cuda.is_available():
        extra["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    text = "".join(json.dumps({"epoch": epoch, "split": split, **values, **(extra if split == "train" else {})}) + "\n"
                   for split, values in metrics.items())

    def append() -> None:
        with writing(METRICS_FILE, run.out, len(text), point="metrics"), (run.out / METRICS_FILE).open("a") as fh:
            fh.write(text)  # one write: a kill or a full disk tears at most the last line, which readers drop

    on_main(acc, append)
    if not acc.is_main_process:
        return
    faults.kill_point("metrics")  # lines written, checkpoint not yet: the resume trims them
    t, v = metrics["train"], metrics["val"]
    ema = f" (EMA {metrics['val_ema']['f1_macro']:.3f} / {metrics['val_ema']['mAP']:.3f})" if "val_ema" in metrics else ""
    log.info(
        f"epoch {epoch}/{run.cfg.train.epochs}  train loss {t['loss']:.4f} f1_macro {t['f1_macro']:.3f}  |  "
        f"val loss {v['loss']:.4f} f1_micro {v['f1_micro']:.3f} f1_macro {v['f1_macro']:.3f} mAP {v['mAP']:.3f}{ema}  |  "
        f"{t['images_per_s']:.0f} img/s"
    )


def log_step(run: Run, step: int, loss: torch.Tensor) -> None:
    run.tracking.step(step, {"step/loss": loss.item(), "step/lr": current_lr(run)})


def publish(run: Run, epochs_done: int, global_step: int) -> None:
    """After a checkpoint: hand the trackers what it covers (see `mlic.training.trackers`)."""
    faults.kill_point("publish")  # checkpoint saved, trackers not told: the resume publishes it
    on_main(run.accelerator, lambda: run.tracking.checkpoint_saved(epochs_done, global_step, run.out / METRICS_FILE))


def current_lr(run: Run) -> float:
    """optim.lr as scheduled now: with head_lr / layer_decay the groups run at fixed multiples of it."""
    group = run.optimizer.param_groups[0]
    return run.cfg.optim.lr * group["lr"] / group.get("initial_lr", group["lr"]) if group.get("initial_lr") else group["lr"]


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _data_figures(run: Run) -> None:
    """Figures 1-3 of the report: PNG in RUN/figures and images in TensorBoard."""
    from mlic.figures import data_figures, save_figures
    from mlic.losses import pos_weight

    data, labels = run.data, run.data.train_labels
    weights = getattr(run.loss_fn, "pos_weight", None)
    weights = pos_weight(labels) if weights is None else weights.cpu()
    order = np.asarray(list(data.sampler))  # epoch 0 of the sampler: the global order, no side effects
    figures = data_figures(labels, data.dataset.label_names, order, weights.numpy())
    writer = run.accelerator.get_tracker("tensorboard").writer if "tensorboard" in run.cfg.run.trackers else None
    try:
        with writing("figures", run.out, 1 << 20, point="figures"):
            save_figures(figures, run.out / "figures", writer)
    except MlicError:
        shutil.rmtree(run.out / "figures", ignore_errors=True)  # half of them: the resumed run draws them all
        raise
