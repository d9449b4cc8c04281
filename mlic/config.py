"""Typed experiment config: defaults live here once, YAML files hold differences, CLI overrides last."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from PIL import ImageColor

from mlic.config_values import apply_values, parse_override, read_yaml  # noqa: F401 - parse_override: public here
from mlic.data.decode import BACKGROUND, MAX_PIXELS
from mlic.data.formats import option_problems
from mlic.disk import replace_text
from mlic.errors import ConfigError
from mlic.ranges import PROBABILITY, SEED, Items, Rule, Text, above, at_least, between, check_config

# The experiment configs: the top-level configs/ of a checkout, reached through the symlink mlic/configs, and a
# real folder inside an installed wheel. Either way next to this package.
CONFIGS = (Path(__file__).resolve().parent / "configs").resolve()

@dataclass
class DataConfig:
    format: str = "helsinki"  # a registered format (mlic.data.formats): helsinki, csv, hf, coco, voc, openimages
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
    # The options of a format that has no key of its own above (one added later: docs/EXTENDING.md), by name.
    options: dict[str, str] = field(default_factory=dict)
    cache: Literal["auto", "on", "off"] = "auto"  # decoded uint8 cache + on-device augmentation
    cache_dir: str | None = None  # default: ~/.cache/mlic/images
    # Side of the cached square images. auto: the side the training needs (the model's input, or input / crop_pct
    # when it crops: data.resize=crop, augment.random_resized_crop) but never more than the images' own shorter
    # side (read from the headers of up to 1,024 of them): the course corpus (128 x 128) caches at 128. The
    # resolved number is what config.yaml and model/ record.
    cache_size: int | Literal["auto"] = "auto"
    # A non-square image into the square: squash (resize both sides), crop (the shorter side, centre crop; then
    # timm's evaluation crop by crop_pct) or pad (letterbox onto data.background).
    resize: Literal["squash", "crop", "pad"] = "squash"
    crop_pct: float | None = None  # data.resize=crop: input side / resized side; None: the weights' own
    image_size: int | None = None  # model input side; None: the model's own (224 for the pretrained ones)
    num_workers: int = 2
    labels: list[str] | None = None  # expected label names: the data must have exactly these
    skip_bad: bool = False  # drop unreadable images (counted in metrics.jsonl) instead of stopping
    background: str = BACKGROUND  # fills transparent pixels: a colour name or '#rrggbb' (PIL.ImageColor)
    # Larger images are refused as decompression bombs (like unreadable ones, skippable under skip_bad).
    # Pillow's own default limit; raise it for real scans this large.
    max_pixels: int = MAX_PIXELS
    demo_images: int = 2000
    demo_seed: int = 0

    RANGES: ClassVar[dict[str, Rule]] = {
        "format": Text(), "root": Text(), "split": Text(), "val_split": Text(), "class_list": Text(), "cache_dir": Text(),
        "image_column": Text(), "label_column": Text(), "hf_split": Text(), "background": Text(),
        "val_fraction": between(0, 1, low_open=True, high_open=True), "seed": SEED, "demo_seed": SEED,
        "cache_size": at_least(1), "image_size": at_least(32), "num_workers": at_least(0),
        "crop_pct": between(0, 1, low_open=True),
        "labels": Items(Text(), unique=True, at_least_one=True), "max_pixels": at_least(1),
        "demo_images": at_least(1),
    }

    def combinations(self) -> list[str]:
        try:
            ImageColor.getrgb(self.background)
        except ValueError:
            return [f"config key 'data.background': {self.background!r} is not a colour (a name such as white or "
                    "black, or '#rrggbb' in quotes)"]
        return option_problems(self)  # the format's name and its own keys' values


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
    # Scale augmentation (torchvision's RandomResizedCrop, per image on the device): a box of crop_scale of the
    # cached square's area and crop_ratio aspect, resized to the input. Best from a cache larger than the input.
    random_resized_crop: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])

    RANGES: ClassVar[dict[str, Rule]] = {
        "hflip": PROBABILITY, "vflip": PROBABILITY, "cutout": PROBABILITY,
        "brightness": at_least(0), "contrast": at_least(0), "saturation": at_least(0), "hue": between(0, 0.5),
        "randaugment_n": at_least(0), "randaugment_m": between(0, 30),  # torchvision's 31 magnitude bins
        "cutout_scale": Items(between(0, 1, low_open=True), length=2, ascending=True),
        "mixup": at_least(0), "cutmix": at_least(0),  # a Beta(alpha, alpha); 0 is off
        "crop_scale": Items(between(0, 1, low_open=True), length=2, ascending=True),
        "crop_ratio": Items(above(0), length=2, ascending=True),
    }


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

    RANGES: ClassVar[dict[str, Rule]] = {
        "name": Text(), "weights": Text(), "mldecoder_groups": at_least(1), "mldecoder_dim": at_least(8),
        "dropout": between(0, 1, high_open=True), "num_labels": at_least(1),
    }


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw"] = "adam"  # report §4.1
    lr: float = 1e-4
    weight_decay: float = 0.0  # report §3.2: any decay hurt
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # One fused kernel per step instead of a loop over parameters (the faster step on CPU and on CUDA).
    # auto: on, except under DeepSpeed, which steps its own flat fp32 partitions.
    fused: Literal["auto", "on", "off"] = "auto"
    # Fine-tuning: the head's own learning rate, and layer-wise decay (backbone layer i of n trains at
    # lr * layer_decay ** (n - i); BEiT's recipe). Unset: one learning rate for every parameter.
    head_lr: float | None = None
    layer_decay: float | None = None

    RANGES: ClassVar[dict[str, Rule]] = {
        "lr": above(0), "head_lr": above(0), "weight_decay": at_least(0), "eps": above(0),
        "betas": Items(between(0, 1, high_open=True), length=2), "layer_decay": between(0, 1, low_open=True),
    }


@dataclass
class ScheduleConfig:
    name: Literal["linear", "cosine", "none"] = "linear"  # report §4.2: LinearLR warm-up
    start_factor: float = 1 / 3
    total_iters: int = 10
    interval: Literal["epoch", "step"] = "epoch"

    RANGES: ClassVar[dict[str, Rule]] = {"start_factor": between(0, 1, low_open=True), "total_iters": at_least(1)}


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
    # asl: the focusing weights are constants to autograd, as in the paper's training code
    # (disable_torch_grad_focal_loss=True). false: they keep their own gradient, as mlic did before (a checkpoint
    # written then resumes only with false). focal always keeps it (the focal paper's).
    asl_detach_focusing: bool = True

    RANGES: ClassVar[dict[str, Rule]] = {
        "pos_weight_clip": above(0), "focal_gamma": at_least(0), "gamma_neg": at_least(0), "gamma_pos": at_least(0),
        "asl_clip": between(0, 1, high_open=True),
    }


@dataclass
class SamplerConfig:
    name: Literal["none", "balanced"] = "none"  # report §2.1 oversampling
    class_choice: Literal["random", "cycle", "least_sampled"] = "least_sampled"
    empty_share: float | None = None  # None: the share of unlabelled images in the data
    num_samples: int | None = None  # draws per epoch; None: the training split's size

    RANGES: ClassVar[dict[str, Rule]] = {"empty_share": between(0, 1, high_open=True), "num_samples": at_least(1)}


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # per process
    eval_batch_size: int = 256  # per process
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    log_every: int = 50  # steps between loss logs (the only host sync in the loop)
    # torch.compile: "auto" compiles under CUDA only (on the CPU the first steps' compilation rarely pays).
    # The prepared model (DDP's wrapper included) is compiled in place: checkpoints and exports keep its keys.
    compile: bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"  # aot_eager / eager: to debug a compile
    select_metric: str = "val/f1_macro"
    save_every_steps: int | None = None
    keep_checkpoints: int = 2  # at least 2: a damaged newest checkpoint falls back to the one before
    # DeepSpeed reads its engine state only by unpickling it, which runs whatever code the file names: resume
    # DeepSpeed checkpoints only from a run folder you trust (nothing else in a checkpoint is unpickled).
    trust_checkpoint_pickles: bool = False
    keep_host_memory: bool = True  # CPU runs: reuse freed tensor memory, no page faults per step (mlic/training/allocator.py)
    seed: int = 0
    max_steps_per_epoch: int | None = None  # for smoke tests and benchmarks
    skip_nonfinite: bool = False  # skip steps with a non-finite loss/gradient (one host sync per step)
    stop_check_every: int = 10  # steps between checks for a stop request (SIGTERM/SIGUSR1/stop file)
    # An exponential moving average of the weights, evaluated beside them every epoch ("val_ema"): None is
    # off. With ema_warmup the decay starts low and grows to ema_decay as min(decay, (1 + t) / (10 + t)).
    ema_decay: float | None = None
    ema_warmup: bool = True

    RANGES: ClassVar[dict[str, Rule]] = {
        "epochs": at_least(1), "batch_size": at_least(1), "eval_batch_size": at_least(1), "grad_accum": at_least(1),
        "clip_grad_norm": above(0), "log_every": at_least(1), "select_metric": Text(), "save_every_steps": at_least(1),
        "keep_checkpoints": at_least(2, why=" (a run keeps at least two checkpoints, so that a damaged newest one "
                                            "falls back to the one before)"),
        "seed": SEED, "max_steps_per_epoch": at_least(1), "stop_check_every": at_least(1),
        "ema_decay": between(0, 1, low_open=True, high_open=True),
    }


@dataclass
class EvalConfig:
    threshold: float = 0.5
    thresholds: Literal["fixed", "per_label"] = "per_label"

    RANGES: ClassVar[dict[str, Rule]] = {"threshold": PROBABILITY}


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    progress: bool = True
    # accelerate's integrations: tensorboard (RUN/tensorboard), mlflow (MLFLOW_TRACKING_URI), wandb (RUN/wandb)
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "mlic"  # the MLflow experiment / W&B project; the run is named after output_dir
    # What the console shows of the run's messages (epoch lines, resume and stop notes: info; warnings); RUN/train.log
    # keeps info and above whatever this says.
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    RANGES: ClassVar[dict[str, Rule]] = {"output_dir": Text(), "tracker_project": Text(), "trackers": Items(unique=True)}


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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (with its `base` chain), then `key=value` overrides, every value checked
    for type and range. Every process of a launch reads the same: its error is printed once."""
    try:
        return _load(path, overrides)
    except ConfigError as exc:
        exc.same_on_every_rank = True
        raise


def _load(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> Config:
    cfg = Config()
    if path is not None:
        apply_values(cfg, read_yaml(Path(path)), "", str(path))
    for text in overrides:
        key, value = parse_override(text)
        nested: dict[str, Any] = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        apply_values(cfg, nested, "", f"override {text!r}")
    check_config(cfg)
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
    # Types only: a range tightened later must not make older run and model folders unreadable.
    apply_values(cfg, {k: v for k, v in doc.items() if not k.startswith("_")}, "", "saved config")
    return cfg
