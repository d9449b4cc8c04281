"""From a config to a prepared run: the Accelerator, data, model, loss, optimizer and schedule."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    broadcast_object_list,
)

from mlic.config import Config
from mlic.data.pipeline import Data, build_data, load_split
from mlic.data.resolution import resolve_cache_size, started_side, with_cache_size
from mlic.errors import ConfigError
from mlic.logs import log
from mlic.losses import build_loss
from mlic.models import Preprocess, backbone_depths, build_model, head_prefix, is_cnn, probe
from mlic.training.ema import WeightEma
from mlic.training.run_state import check_pickle_trust, latest_checkpoint
from mlic.training.selection import check_select_metric
from mlic.training.stepping import OverflowGuard
from mlic.training.trackers import check_trackers, make_trackers


@dataclass
class Run:
    """Everything a run trains with, built once and prepared by accelerate."""

    cfg: Config
    accelerator: Accelerator
    out: Path
    data: Data
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    train_loader: Any
    val_loader: Any
    preprocess: Preprocess  # `size` is the model's input side, `data.image_size` applied
    identity: dict[str, Any]  # what a checkpoint must match to be resumed by this run
    cast: torch.dtype | None  # input dtype under DeepSpeed half precision
    steps_per_epoch: int  # optimizer steps of an epoch on each rank (train.max_steps_per_epoch applied)
    overflow: OverflowGuard | None = None  # fp16 loss-scale overflows; its count in a row spans epochs
    compiling: bool = False  # train.compile on and no step taken yet: the first step's time is said once
    ema: WeightEma | None = None  # train.ema_decay: the average of the weights, evaluated beside them
    tracking: Any = None  # mlic.training.trackers.Publisher, set when the run folder starts

    @property
    def partial_labels(self) -> bool:
        """Some targets are unknown (NaN in a batch's target rows): the loss gets a `known` mask."""
        return self.data.dataset.labels.partial


def base_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP / DeepSpeed / torch.compile wrappers: its tensors are the trained ones."""
    unwrapped = accelerator.unwrap_model(model)
    return getattr(unwrapped, "_orig_mod", unwrapped)


def steps_per_epoch(cfg: Config, batches_per_rank: int) -> int:
    """Optimizer steps in an epoch: accelerate ends an accumulation at the loader's end, and
    `train.max_steps_per_epoch` caps the count."""
    steps = math.ceil(batches_per_rank / cfg.train.grad_accum)
    return min(steps, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch else steps


def check_ema(cfg: Config, accelerator: Accelerator) -> None:
    """DeepSpeed holds the weights in its own engine (sharded from ZeRO-3 on): no average of them here."""
    if cfg.train.ema_decay is not None and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError("config key 'train.ema_decay': an EMA of the weights is not supported under DeepSpeed; "
                          "unset it (train.ema_decay=null) or train with DDP (a launch/ config without deepspeed)")


def check_accumulation(cfg: Config, accelerator: Accelerator) -> None:
    """Steps, windows and the weights of a last, partial window (`mlic.training.stepping.loss_weight`) are counted in
    `train.grad_accum` micro-batches: accelerate and DeepSpeed must accumulate as many, and divide by it."""
    theirs = {"accelerate's (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, from the launch config)":
              accelerator.gradient_accumulation_steps}
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        theirs["the DeepSpeed config's gradient_accumulation_steps"] = ds.get("gradient_accumulation_steps", "auto")
    for whose, steps in theirs.items():
        if steps not in ("auto", cfg.train.grad_accum):
            raise ConfigError(f"config key 'train.grad_accum': {cfg.train.grad_accum}, but {whose} is {steps}; set "
                              "train.grad_accum alone (\"auto\" in a DeepSpeed config, nothing in the launch config)")


def preflight(cfg: Config) -> Accelerator:
    """The checks a config's own ranges cannot make, all before any data is read: the metric to select on
    (it depends on the EMA and thresholds), the trackers' libraries and MLflow's store, the launcher's world
    size, what DeepSpeed refuses (an EMA; its pickled checkpoints unless trusted). Returns the run's Accelerator.
    Every process sees the same: an error is printed once."""
    try:
        check_select_metric(cfg)
        check_trackers(cfg)
        accelerator = make_accelerator(cfg)
        check_world_size(accelerator)
        check_accumulation(cfg, accelerator)
        check_ema(cfg, accelerator)
        check_compile_owner()
        check_pickle_trust(accelerator, Path(cfg.run.output_dir) / "checkpoints", cfg.train.trust_checkpoint_pickles)
    except ConfigError as exc:
        exc.same_on_every_rank = True
        raise
    return accelerator


def check_compile_owner() -> None:
    """accelerate compiles a model itself when the launch config has a `dynamo_config` (wrapping it as
    `_orig_mod`, which checkpoints and exports would then carry): mlic compiles it with `train.compile`."""
    backend = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no")
    if backend.lower() != "no":
        raise ConfigError(f"the launch config asks accelerate to compile the model (dynamo_backend: {backend}); mlic "
                          "compiles it itself: remove dynamo_config from the launch config (or pass --dynamo_backend no) "
                          "and set train.compile=true, train.compile_mode and train.compile_backend instead")


def compiles(cfg: Config, accelerator: Accelerator) -> bool:
    """`train.compile` resolved: "auto" compiles when the run trains on a CUDA device."""
    return accelerator.device.type == "cuda" if cfg.train.compile == "auto" else cfg.train.compile


def compile_model(cfg: Config, accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Compile the prepared model in place (`nn.Module.compile`): under DDP the wrapper itself, so TorchDynamo
    splits the graph at DDP's gradient buckets (its DDPOptimizer) and the all-reduce still overlaps the backward
    pass; under DeepSpeed the engine compiles its module. Nothing is wrapped: the state_dict keys that
    checkpoints, the EMA and the exported model hold stay the module's own (no `_orig_mod.`). TorchDynamo
    traces on the first forward pass; the engine says how long the first step took."""
    quiet_known_compile_notes()
    t = cfg.train
    mode = {"mode": t.compile_mode} if t.compile_backend == "inductor" and t.compile_mode != "default" else {}
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        model.compile(backend=t.compile_backend, compile_kwargs=mode)
    else:
        model.compile(backend=t.compile_backend, **mode)


class _KnownNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Profiler record function" not in record.getMessage()


def quiet_known_compile_notes() -> None:
    """Two notes TorchDynamo prints on every process when it traces DDP's forward: DDP's buffer broadcast and
    its profiler label run eagerly around the compiled graph, exactly as in an eager run."""
    warnings.filterwarnings("ignore", message=r"Dynamo does not know how to trace the builtin `torch\._C\._distributed_c10d"
                            r"\..*_broadcast_coalesced")
    logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_KnownNote())


def check_model_inputs(cfg: Config, model: torch.nn.Module, size: int) -> None:
    """Before any data is loaded into it: the model takes size x size images (one eval-mode forward pass), and
    a BatchNorm over features (the report's head) gets more than one image per process to normalise over."""
    if (problem := probe(model, size)) is not None:
        raise ConfigError(f"config key 'data.image_size': {cfg.model.name} cannot take {size}x{size} images "
                          f"({problem}); set another data.image_size")
    if cfg.train.batch_size < 2 and any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()):
        raise ConfigError("config key 'train.batch_size': 1 image per process cannot train this model's BatchNorm1d "
                          "layers (they normalise each feature over the batch); use 2 or more (train.grad_accum "
                          "keeps the effective batch)" + (", or model.head_batchnorm=false" if cfg.model.head == "report"
                                                          and cfg.model.head_batchnorm else ""))


def make_accelerator(cfg: Config) -> Accelerator:
    handlers = []
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not torch.cuda.is_available():
        # accelerate imports deepspeed whenever it is installed; unset, deepspeed warns on every process
        # that it falls back to the CPU. Saying so up front keeps it quiet.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if deepspeed:  # DeepSpeed would ask for NCCL; gloo is the CPU backend
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    else:
        # Every batch has the same shape (fixed squares at the model's input side): cuDNN's per-shape autotuning
        # pays from the second step on (the ragged last evaluation batch tunes once more).
        torch.backends.cudnn.benchmark = True
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        # pinned batches (mlic.data.pipeline) copied without waiting: the step queues behind its copy on the GPU
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        # run.trackers=[]: None, or accelerate warns that no tracker is installed
        log_with=make_trackers(cfg, resumable=latest_checkpoint(Path(cfg.run.output_dir) / "checkpoints") is not None) or None,
        project_config=ProjectConfiguration(project_dir=cfg.run.output_dir, logging_dir=cfg.run.output_dir),
        kwargs_handlers=handlers,
        step_scheduler_with_optimizer=False,  # the schedule's unit (epoch or step) is ours, whatever the world size
    )
    return accelerator


def check_world_size(accelerator: Accelerator) -> None:
    """The launcher's process count (torchrun's WORLD_SIZE) must be the Accelerator's: otherwise every
    process trains alone and they all write the same run folder."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        hint = (" On a machine without a GPU, a MULTI_GPU config runs its processes on the CPU only with "
                "ACCELERATE_USE_CPU=true (ACCELERATE_USE_CPU=true accelerate launch --config_file "
                "launch/multi_cpu.yaml ...).") if not torch.cuda.is_available() else ""
        raise ConfigError(f"the launcher started {launched} processes (WORLD_SIZE={launched}) but this one trains "
                          f"in a world of {accelerator.num_processes}: they would not train together.{hint}")


def build_optimizer(cfg: Config, model: torch.nn.Module, deepspeed: bool = False) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    fused = cfg.optim.fused == "on" or (cfg.optim.fused == "auto" and not deepspeed)
    return kind(param_groups(cfg, model), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                weight_decay=cfg.optim.weight_decay, fused=fused or None)


def param_groups(cfg: Config, model: torch.nn.Module) -> list[dict[str, Any]]:
    """One group, or with `optim.head_lr` / `optim.layer_decay` one per learning rate: the head at
    head_lr (default lr), backbone depth i of n at lr * layer_decay ** (n - i). Schedulers scale each
    group's rate, so the ratios hold through warm-up and decay."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    o = cfg.optim
    if o.head_lr is None and o.layer_decay is None:
        return [{"params": [p for _, p in trainable]}]
    head = head_prefix(model)
    depth, depths = backbone_depths(model, cfg.model.name) if o.layer_decay is not None else ({}, 1)
    lrs: dict[float, list] = {}
    for name, param in trainable:
        if name.startswith(head):
            lr = o.head_lr if o.head_lr is not None else o.lr
        else:
            i = depth.get(name, depths - 1)
            lr = o.lr * (o.layer_decay ** (depths - i) if o.layer_decay is not None else 1.0)
        lrs.setdefault(lr, []).append(param)
    return [{"params": params, "lr": lr} for lr, params in sorted(lrs.items())]


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


def resolved_cache_size(cfg: Config, accelerator: Accelerator, split, preprocess) -> Config:
    """`data.cache_size` as a number (`mlic.data.resolution`), read from the image headers by the main process
    and the same on every rank (a read that failed on one rank alone must not give it another cache). A run
    that resumes from a checkpoint keeps the side it started with."""
    out = Path(cfg.run.output_dir)
    side, note = cfg.data.cache_size, None
    if accelerator.is_main_process:
        started = started_side(out) if latest_checkpoint(out / "checkpoints") is not None else None
        resolved, note = resolve_cache_size(cfg, split.dataset, np.union1d(split.train_idx, split.val_idx), preprocess,
                                            started)
        side = resolved.data.cache_size
    if note:
        log.info(note)
    return with_cache_size(cfg, broadcast_object_list([side])[0])


def build_run(cfg: Config, accelerator: Accelerator) -> Run:
    split = load_split(cfg)  # data errors surface before the model is built
    dataset = split[0]
    model, preprocess = build_model(cfg.model, dataset.num_labels, image_size=cfg.data.image_size)
    preprocess = dataclasses.replace(preprocess, size=cfg.data.image_size or preprocess.size,
                                     crop_pct=cfg.data.crop_pct or preprocess.crop_pct)
    check_model_inputs(cfg, model, preprocess.size)
    cfg = resolved_cache_size(cfg, accelerator, split, preprocess)
    channels_last = cfg.model.channels_last and torch.cuda.is_available() and is_cnn(model)
    data = build_data(cfg, accelerator, split, preprocess, channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.loss, data.train_labels)
    optimizer = build_optimizer(cfg, model, accelerator.distributed_type == DistributedType.DEEPSPEED)
    # accelerate deals each rank the same number of whole batches (the loader drops the last partial one)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch(cfg, len(data.train_loader) // accelerator.num_processes))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, data.train_loader, data.val_loader, scheduler
    )
    compiling = compiles(cfg, accelerator)
    if compiling:
        compile_model(cfg, accelerator, model)
    data.train_transform.to(accelerator.device)
    data.eval_transform.to(accelerator.device)
    identity = {"model": cfg.model.name, "label_names": dataset.label_names}
    if dataset.labels.partial:  # masked (unknown entries out of the loss): a different objective
        identity["partial_labels"] = True
    if cfg.loss.name == "asl" and cfg.loss.asl_detach_focusing:
        # Another gradient than mlic's ASL had before this key: a checkpoint without it (written then) names this
        # key on refusal, and resumes with loss.asl_detach_focusing=false (which adds nothing here).
        identity["loss.asl_detach_focusing"] = True
    ema = None
    if cfg.train.ema_decay is not None:
        ema = WeightEma(base_model(accelerator, model), cfg.train.ema_decay, cfg.train.ema_warmup)
        identity["ema"] = True  # a checkpoint with the average resumes only into a run with one, and back
    return Run(cfg, accelerator, Path(cfg.run.output_dir), data, model, optimizer, scheduler,
               loss_fn.to(accelerator.device), train_loader, val_loader, preprocess, identity,
               input_dtype(accelerator), steps_per_epoch(cfg, len(train_loader)), OverflowGuard(accelerator),
               compiling, ema)


def dry_run(cfg: Config) -> dict[str, Any]:
    """`mlic train --dry-run`: the preflight and the whole build (data, model, `prepare`), then what the run
    would train, without training or writing the run folder."""
    run = build_run(cfg, preflight(cfg))
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    return {"model": cfg.model.name, "train_images": len(run.data.train), "val_images": len(run.data.val),
            "labels": run.data.dataset.num_labels, "epochs": cfg.train.epochs, "steps_per_epoch": run.steps_per_epoch,
            "trainable_parameters": trainable, "processes": run.accelerator.num_processes}
