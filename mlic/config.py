"""Typed experiment config: defaults live here once, YAML files hold differences, CLI overrides last."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mlic.disk import replace_text
from mlic.errors import ConfigError


@dataclass
class DataConfig:
    format: Literal["helsinki", "csv", "hf", "coco", "voc", "openimages"] = "helsinki"
    root: str | None = None  # None: the embedded demo dataset, generated on first use
    # The split file a format reads (coco: train2017 -> annotations/instances_train2017.json; voc: trainval ->
    # ImageSets/Main/trainval.txt; openimages: train -> train-annotations-human-imagelabels.csv; csv: NAME ->
    # NAME.csv). None: the format's default (coco train2017, voc trainval, openimages train, csv labels.csv).
    split: str | None = None
    # Validate on this split of the same root (coco val2017, voc test, openimages validation, csv val) instead
    # of holding out data.val_fraction of the training split.
    val_split: str | None = None
    # Partial labels (openimages' verified negatives, csv's '-label', voc's difficult objects): an entry that
    # is neither a verified positive nor a verified negative is unknown. ignore: masked out of the loss,
    # pos_weight, the sampler's counts and the metrics; negative: read as a negative (the common baseline).
    unknown_as: Literal["ignore", "negative"] = "ignore"
    voc_difficult: Literal["ignore", "positive"] = "ignore"  # a class seen only in difficult objects
    class_list: str | None = None  # openimages: a file of class ids (MIDs), one per line: train on these only
    val_fraction: float = 0.2
    seed: int = 0  # fixes the train/val split
    image_column: str = "image"  # hf only
    label_column: str = "labels"  # hf only
    hf_split: str = "train"  # hf only
    cache: Literal["auto", "on", "off"] = "auto"  # decoded uint8 cache + on-device augmentation
    cache_dir: str | None = None  # default: ~/.cache/mlic/images
    cache_size: int = 128  # side of the cached square images (the course corpus is 128x128)
    image_size: int | None = None  # model input side; None: the model's own (224 for the pretrained ones)
    num_workers: int = 2
    labels: list[str] | None = None  # expected label names: the data must have exactly these
    skip_bad: bool = False  # drop unreadable images (counted in metrics.jsonl) instead of stopping
    background: str = "white"  # fills transparent pixels: a colour name or '#rrggbb' (PIL.ImageColor)
    # Larger images are refused as decompression bombs (like unreadable ones, skippable under skip_bad).
    # Pillow's own default limit; raise it for real scans this large.
    max_pixels: int = 89_478_485
    demo_images: int = 2000
    demo_seed: int = 0


@dataclass
class AugmentConfig:
    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    # report: flips + ColorJitter (above). randaugment / trivialaugment: flips + that policy instead of
    # the jitter, drawn per image (RandAugment: `randaugment_n` ops at magnitude `randaugment_m` of 30).
    policy: Literal["report", "randaugment", "trivialaugment"] = "report"
    randaugment_n: int = 2
    randaugment_m: int = 9
    cutout: float = 0.0  # probability that an image gets one random rectangle erased (random erasing)
    cutout_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])  # erased area, a share of the image
    # Mixing images and their multi-hot targets in the batch: Beta(alpha, alpha) weights; 0 turns it off.
    # MixUp mixes targets convexly, CutMix by the pasted area; with both on each image takes one of them.
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass
class ModelConfig:
    name: str = "cnn"  # or timm/<architecture>, hf/<hub name or folder>
    pretrained: bool = True
    weights: str | None = None  # local weights: a file (torchvision, timm) or a folder / hub name (vit, hf/)
    head: Literal["report", "linear", "mldecoder"] = "report"  # report: Figure 6's head
    mldecoder_groups: int = 100  # ML-Decoder queries; more labels than this share queries (group decoding)
    mldecoder_dim: int = 768
    head_batchnorm: bool = True  # report §4.3
    dropout: float = 0.5  # report §3.3
    freeze_backbone: bool = False
    num_labels: int | None = None  # None: from the data; set, it must agree with the data
    channels_last: bool = True  # CNNs only, on CUDA
    grad_checkpointing: bool = False  # timm/ and hf/ backbones: recompute activations in backward
    trust_remote_code: bool = False  # hf/: run the model code a hub repository ships (only if you trust it)


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"  # report §4.1
    lr: float = 1e-4
    weight_decay: float = 0.0  # report §3.2: any decay hurt
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # One fused kernel per step instead of a loop over parameters (~4.5x faster on CPU, the fastest on
    # CUDA). auto: on, except under DeepSpeed, which steps its own flat fp32 partitions.
    fused: Literal["auto", "on", "off"] = "auto"
    # Fine-tuning: the head's own learning rate, and layer-wise decay (backbone layer i of n trains at
    # lr * layer_decay ** (n - i); BEiT's recipe). Unset: one learning rate for every parameter.
    head_lr: float | None = None
    layer_decay: float | None = None


@dataclass
class ScheduleConfig:
    name: Literal["linear", "cosine", "none"] = "linear"  # report §4.2: LinearLR warm-up
    start_factor: float = 1 / 3
    total_iters: int = 10
    interval: Literal["epoch", "step"] = "epoch"


@dataclass
class LossConfig:
    name: Literal["bce", "focal", "asl"] = "bce"
    pos_weight: Literal["none", "auto"] = "none"  # report §2.1 "weighted loss" (weighs every loss's positive term)
    pos_weight_clip: float | None = None
    focal_gamma: float = 2.0  # focal: (1 - p_t) ** gamma (Lin et al. 2017)
    # asl: Ridnik et al. 2021, the paper's defaults. Negatives' probabilities are shifted down by asl_clip
    # (easy negatives contribute nothing) and weighted by p ** gamma_neg; positives by (1 - p) ** gamma_pos.
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    asl_clip: float = 0.05


@dataclass
class SamplerConfig:
    name: Literal["none", "balanced"] = "none"  # report §2.1 oversampling
    class_choice: Literal["random", "cycle", "least_sampled"] = "least_sampled"
    empty_share: float | None = None  # None: the share of unlabelled images in the data
    num_samples: int | None = None  # draws per epoch; None: the training split's size


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # per process
    eval_batch_size: int = 256  # per process
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    log_every: int = 50  # steps between loss logs (the only host sync in the loop)
    compile: bool = False
    select_metric: str = "val/f1_macro"
    save_every_steps: int | None = None
    keep_checkpoints: int = 2  # at least 2: a damaged newest checkpoint falls back to the one before
    # DeepSpeed reads its engine state only by unpickling it, which runs whatever code the file names: resume
    # DeepSpeed checkpoints only from a run folder you trust (nothing else in a checkpoint is unpickled).
    trust_checkpoint_pickles: bool = False
    keep_host_memory: bool = True  # CPU runs: reuse freed tensor memory, no page faults per step (mlic/allocator.py)
    seed: int = 0
    max_steps_per_epoch: int | None = None  # for smoke tests and benchmarks
    skip_nonfinite: bool = False  # skip steps with a non-finite loss/gradient (one host sync per step)
    stop_check_every: int = 10  # steps between checks for a stop request (SIGTERM/SIGUSR1/stop file)
    # An exponential moving average of the weights, evaluated beside them every epoch ("val_ema"): None is
    # off. With ema_warmup the decay starts low and grows to ema_decay as min(decay, (1 + t) / (10 + t)).
    ema_decay: float | None = None
    ema_warmup: bool = True


@dataclass
class EvalConfig:
    threshold: float = 0.5
    thresholds: Literal["fixed", "per_label"] = "per_label"


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    progress: bool = True
    # accelerate's integrations: tensorboard (RUN/tensorboard), mlflow (MLFLOW_TRACKING_URI), wandb (RUN/wandb)
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "mlic"  # the MLflow experiment / W&B project; the run is named after output_dir


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NONE_WORDS = {"null", "none", "None", "~", ""}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint; ints are accepted for floats. Raises ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        if type(None) in options and isinstance(value, str) and value in _NONE_WORDS:
            return None
        raise ConfigError(f"config key '{key}': {value!r} is not a {_type_name(hint)}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': {value!r} is not a list")
        return [_coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                if float(value) == value:  # an int beyond 2**53 would silently become another number
                    return float(value)
            except OverflowError:
                pass
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': {value!r} is not a {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _apply(obj: Any, updates: dict[str, Any], prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"unknown config key '{key}' (in {source}); known: {', '.join(sorted(names))}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' (in {source}) is a section: give a mapping, not {value!r}")
            _apply(current, value, f"{key}.", source)
        else:
            setattr(obj, name, _coerce(value, hints[name], key))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; a top-level `base: other.yaml` (relative to the file) is read first. A list of
    bases (`base: [vit.yaml, modern.yaml]`: a model, then a recipe) is merged in order, later ones winning."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path}: 'base' chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    merged: dict[str, Any] = {}
    for one in base if isinstance(base, list) else [base]:
        if not isinstance(one, str):
            raise ConfigError(f"config {path}: 'base' must be a file name or a list of them, not {one!r}")
        _deep_merge(merged, _read_yaml(path.parent / one, (*seen, path)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (with its `base` chain), then `key=value` overrides."""
    cfg = Config()
    if path is not None:
        _apply(cfg, _read_yaml(Path(path)), "", str(path))
    for text in overrides:
        key, value = parse_override(text)
        nested: dict[str, Any] = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _apply(cfg, nested, "", f"override {text!r}")
    if cfg.train.keep_checkpoints < 2:
        raise ConfigError(f"config key 'train.keep_checkpoints': {cfg.train.keep_checkpoints} is less than 2; a run "
                          "keeps at least two checkpoints, so that a damaged newest one falls back to the one before")
    return cfg


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for name in ("mlic", "torch", "torchvision", "accelerate", "transformers", "timm", "deepspeed"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def save_resolved(cfg: Config, path: Path, **extra: Any) -> None:
    """Write the resolved config plus provenance (git commit, library versions, anything in `extra`)."""
    doc = cfg.to_dict()
    doc["_provenance"] = {"git_commit": git_commit(), "versions": library_versions(), **extra}
    replace_text(path, yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False))


def config_from_dict(doc: dict[str, Any]) -> Config:
    """Rebuild a Config from a saved config.yaml (provenance ignored)."""
    cfg = Config()
    _apply(cfg, {k: v for k, v in doc.items() if not k.startswith("_")}, "", "saved config")
    return cfg
