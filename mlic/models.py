"""Models by name: the report's small CNN, torchvision ResNet/DenseNet and Hugging Face ViT, and any
`timm/<architecture>` or `hf/<name>` backbone (mlic.backbones); each with a head chosen by
`model.head`: the report's (Figure 6: Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear), a linear
layer, or ML-Decoder (cross-attention from label queries to the spatial features)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.backbones import BackboneClassifier, build_hf, build_timm, hf_from, offline_hint
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.errors import ConfigError, MlicError

DEFAULT_VIT = "google/vit-base-patch16-224-in21k"


class Head(nn.Sequential):
    """Figure 6: the first Linear keeps the backbone's width (2048 for ResNet152, 2208 for DenseNet161)."""

    def __init__(self, in_features: int, num_labels: int, batchnorm: bool = True, dropout: float = 0.5):
        layers: list[nn.Module] = [nn.Linear(in_features, in_features)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(in_features))
        layers += [nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(in_features, num_labels)]
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """The report's CNN (Figure 4): conv-BN-ReLU-maxpool blocks, global average pooling, then the head."""

    def __init__(self, num_labels: int, widths=(32, 64, 128, 256), batchnorm: bool = True, dropout: float = 0.5,
                 head: Callable[[int], nn.Module] | None = None):
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            blocks += [
                nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head(in_ch) if head is not None else Head(in_ch, num_labels, batchnorm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Preprocess:
    """What the exported model needs to see an image as in training."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # timm's pretrained_cfg says bicubic for most of its weights
    crop_pct: float = 1.0  # data.resize=crop: the input's share of the resized side (timm's; torchvision's 224/256)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "crop_pct": self.crop_pct}


# torchvision models the report used or tried: builder, weights enum name, classifier attribute
TORCHVISION = {
    "resnet18": ("resnet18", "ResNet18_Weights", "fc"),  # small: benchmarks and quick trials
    "resnet50": ("resnet50", "ResNet50_Weights", "fc"),
    "resnet152": ("resnet152", "ResNet152_Weights", "fc"),
    "densenet121": ("densenet121", "DenseNet121_Weights", "classifier"),
    "densenet161": ("densenet161", "DenseNet161_Weights", "classifier"),
}


def _torchvision_state_dict(name: str, weights_path: str | None) -> dict[str, torch.Tensor]:
    import torchvision.models as tvm

    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise ConfigError(f"model.weights {weights_path}: file not found")
        return torch.load(weights_path, map_location="cpu", weights_only=True)
    weights = getattr(tvm, TORCHVISION[name][1]).IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False)  # reads the hub cache first, downloads otherwise
    except Exception as exc:  # URLError, socket timeouts, HTTP errors: all mean "could not fetch"
        raise MlicError(offline_hint(f"{name} IMAGENET1K_V1 weights", f"{exc}; cache file {cache}")) from None


def build_torchvision(name: str, num_labels: int, cfg) -> nn.Module:
    import torchvision.models as tvm

    builder, _, attr = TORCHVISION[name]
    net = getattr(tvm, builder)(weights=None)
    if cfg.pretrained:
        net.load_state_dict(_torchvision_state_dict(name, cfg.weights))
    old = getattr(net, attr)
    setattr(net, attr, make_head(cfg, old.in_features, num_labels))
    net.head_name = attr
    return net


class ViTClassifier(nn.Module):
    """Hugging Face ViT; the report's head on the final [CLS] representation (as ViTForImageClassification)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.wants_tokens = getattr(head, "wants_tokens", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other_size = x.shape[-1] != self.backbone.config.image_size  # e.g. small demo images
        tokens = self.backbone(pixel_values=x, interpolate_pos_encoding=other_size).last_hidden_state
        return self.head(tokens if self.wants_tokens else tokens[:, 0])


def build_vit(num_labels: int, cfg, vit_config: dict | None = None) -> tuple[nn.Module, Preprocess]:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    source = cfg.weights or DEFAULT_VIT
    if vit_config is not None:  # rebuilding an exported model: no hub access needed
        config = ViTConfig.from_dict(vit_config)
        config._attn_implementation = "sdpa"
        backbone = ViTModel(config, add_pooling_layer=False)
    elif cfg.pretrained:
        try:
            backbone = hf_from(ViTModel.from_pretrained, source, True, add_pooling_layer=False, attn_implementation="sdpa")
        except OSError as exc:
            reason = str(exc).splitlines()[0]
            raise MlicError(offline_hint(f"ViT {source}", f"{reason}; HF cache ${{HF_HOME}}/hub")) from None
        config = backbone.config
    else:
        try:
            config = hf_from(ViTConfig.from_pretrained, source, False)
        except OSError:  # not cached: ViTConfig's defaults are ViT-B/16 at 224, the report's model
            config = ViTConfig()
        config._attn_implementation = "sdpa"
        backbone = ViTModel(config, add_pooling_layer=False)
    try:
        processor = hf_from(ViTImageProcessor.from_pretrained, source, cfg.pretrained and vit_config is None)
        size = processor.size.get("height", config.image_size)
        preprocess = Preprocess(int(size), tuple(processor.image_mean), tuple(processor.image_std))
    except OSError:  # the in21k checkpoints normalise with mean = std = 0.5
        preprocess = Preprocess(config.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return ViTClassifier(backbone, make_head(cfg, config.hidden_size, num_labels)), preprocess


def make_head(cfg, in_features: int, num_labels: int) -> nn.Module:
    if cfg.head == "report":
        return Head(in_features, num_labels, cfg.head_batchnorm, cfg.dropout)
    if cfg.head == "linear":
        return nn.Linear(in_features, num_labels)
    from mlic.heads import MLDecoder

    return MLDecoder(in_features, num_labels, num_groups=cfg.mldecoder_groups,
                     embed_dim=min(cfg.mldecoder_dim, in_features) // 8 * 8)


def probe(model: nn.Module, size: int) -> str | None:
    """Why `model` cannot take one size x size image (a timm ViT built for another size, a network whose
    pooling leaves nothing of a small image), or None. One forward pass on one image in eval mode: no
    BatchNorm statistics change, nothing is trained. Weights that DeepSpeed ZeRO-3 already partitioned at
    build (`zero3_init_flag`) cannot run outside its engine: not probed."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return None
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as exc:  # what torch and timm raise
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    finally:
        model.train(training)
    return None


def build_model(cfg, num_labels: int, exported: dict | None = None,
                image_size: int | None = None) -> tuple[nn.Module, Preprocess]:
    """The model named by `cfg.name` (a ModelConfig) and how its inputs are preprocessed; `exported`
    (an exported model's architecture record) rebuilds it without weights files or hub access. `image_size`
    (data.image_size) builds a timm model made for one input size (a ViT) at that size."""
    if cfg.head == "mldecoder" and (cfg.name == "cnn" or cfg.name in TORCHVISION):
        raise ConfigError(f"config key 'model.head': mldecoder needs a backbone's spatial features; {cfg.name} "
                          f"pools them away. Use timm's build of it (model.name=timm/{cfg.name}) or model.head=report")
    if cfg.name == "cnn":
        model = SmallCNN(num_labels, head=lambda width: make_head(cfg, width, num_labels))
        preprocess = Preprocess(128, IMAGENET_MEAN, IMAGENET_STD)
    elif cfg.name in TORCHVISION:
        model = build_torchvision(cfg.name, num_labels, cfg)
        preprocess = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875)  # the references' resize 256, crop 224
    elif cfg.name == "vit":
        model, preprocess = build_vit(num_labels, cfg, exported and exported.get("vit_config"))
    elif cfg.name.startswith(("timm/", "hf/")):
        model, preprocess = _build_library(cfg, num_labels, exported, image_size)
    else:
        raise ConfigError(f"config key 'model.name': unknown model {cfg.name!r}; known: {', '.join(MODELS)}, "
                          "timm/<architecture>, hf/<hub name or folder>")
    if cfg.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head_prefix(model))
    if isinstance(model, BackboneClassifier) and exported is None:  # training builds it; inference has no DDP
        freeze_unused(model, preprocess.size)
    return model, preprocess


def _build_library(cfg, num_labels: int, exported: dict | None, image_size: int | None) -> tuple[nn.Module, Preprocess]:
    library, source = cfg.name.split("/", 1)
    if not source:
        raise ConfigError(f"config key 'model.name': {cfg.name!r} names no model after '{library}/'")
    if library == "timm":
        backbone, data, kwargs = build_timm(source, cfg, exported and exported.get("timm"), image_size)
        record = {"kwargs": kwargs}
    else:
        backbone, record, data = build_hf(cfg.weights or source, cfg, exported and exported.get("hf"))
    interpolation = data.get("interpolation", "bilinear")  # mlic resizes bilinear or bicubic
    preprocess = Preprocess(int(data["input_size"][-1]), tuple(data["mean"]), tuple(data["std"]),
                            interpolation if interpolation == "bicubic" else "bilinear", float(data.get("crop_pct") or 1.0))
    model = BackboneClassifier(backbone, nn.Identity(), library)
    width = model.feature_width(cfg.head == "mldecoder", preprocess.size)
    model.head = make_head(cfg, width, num_labels)
    model.record = {library: record}  # what `architecture` writes into model/config.json
    return model, preprocess


def freeze_unused(model: nn.Module, size: int) -> None:
    """A head on the spatial features leaves the backbone's own pooling layers (a final norm, an attention
    pool) out of the graph, and some backbones carry parameters for other tasks (DINOv2's mask token);
    DDP stops on parameters that get no gradient, so they are frozen. Found by one backward pass of a
    blank image at the model's input size (some hybrids take no other), whatever the backbone."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    with torch.inference_mode(False), torch.enable_grad():
        out = model.eval()(torch.zeros(1, 3, size, size)).float().sum()
        grads = torch.autograd.grad(out, [p for _, p in trainable], allow_unused=True)
    model.train(was_training)
    unused = [name for (name, param), grad in zip(trainable, grads) if grad is None]
    for name in unused:
        model.get_parameter(name).requires_grad = False
    if unused and os.environ.get("RANK", "0") == "0":
        print(f"mlic: {len(unused)} backbone parameter(s) unused with the {type(model.head).__name__} head are "
              f"frozen (e.g. {unused[0]})")


def head_prefix(model: nn.Module) -> str:
    return getattr(model, "head_name", "head") + "."


def is_cnn(model: nn.Module) -> bool:
    """Convolutions past the stem (a transformer's patch embedding is one): channels_last pays off."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def architecture(model: nn.Module, cfg, num_labels: int) -> dict[str, Any]:
    """Enough to rebuild the model offline (for `model/config.json`)."""
    arch = {"name": cfg.name, "num_labels": num_labels, "head": cfg.head, "head_batchnorm": cfg.head_batchnorm,
            "dropout": cfg.dropout, "mldecoder_groups": cfg.mldecoder_groups, "mldecoder_dim": cfg.mldecoder_dim}
    if isinstance(model, ViTClassifier):
        arch["vit_config"] = model.backbone.config.to_dict()
    arch.update(getattr(model, "record", {}))
    return arch


MODELS: dict[str, Callable] = {"cnn": SmallCNN, **dict.fromkeys(TORCHVISION, build_torchvision), "vit": build_vit}
