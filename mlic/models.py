"""Models by name: the report's small CNN, torchvision ResNet/DenseNet and Hugging Face ViT, each with
the report's classification head (Figure 6: Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

    def __init__(self, num_labels: int, widths=(32, 64, 128, 256), batchnorm: bool = True, dropout: float = 0.5):
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
        self.head = Head(in_ch, num_labels, batchnorm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Preprocess:
    """What the exported model needs to see an image as in training."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


# torchvision models the report used or tried: builder, weights enum name, classifier attribute
TORCHVISION = {
    "resnet18": ("resnet18", "ResNet18_Weights", "fc"),  # small: benchmarks and quick trials
    "resnet50": ("resnet50", "ResNet50_Weights", "fc"),
    "resnet152": ("resnet152", "ResNet152_Weights", "fc"),
    "densenet121": ("densenet121", "DenseNet121_Weights", "classifier"),
    "densenet161": ("densenet161", "DenseNet161_Weights", "classifier"),
}


def _offline_hint(what: str, where: str) -> str:
    return (
        f"cannot load pretrained {what} ({where}). Offline? Put the weights in the cache shown, or point "
        "model.weights at a local copy, or train from scratch with model.pretrained=false"
    )


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
        raise MlicError(_offline_hint(f"{name} IMAGENET1K_V1 weights", f"{exc}; cache file {cache}")) from None


def build_torchvision(name: str, num_labels: int, cfg) -> nn.Module:
    import torchvision.models as tvm

    builder, _, attr = TORCHVISION[name]
    net = getattr(tvm, builder)(weights=None)
    if cfg.pretrained:
        net.load_state_dict(_torchvision_state_dict(name, cfg.weights))
    old = getattr(net, attr)
    setattr(net, attr, Head(old.in_features, num_labels, cfg.head_batchnorm, cfg.dropout))
    net.head_name = attr
    return net


class ViTClassifier(nn.Module):
    """Hugging Face ViT; the report's head on the final [CLS] representation (as ViTForImageClassification)."""

    def __init__(self, backbone: nn.Module, num_labels: int, batchnorm: bool = True, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.head = Head(backbone.config.hidden_size, num_labels, batchnorm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        other_size = x.shape[-1] != self.backbone.config.image_size  # e.g. small demo images
        return self.head(self.backbone(pixel_values=x, interpolate_pos_encoding=other_size).last_hidden_state[:, 0])


def _hf_from(loader: Callable, source: str, online: bool, **kwargs):
    """Local files (a folder, or the HF cache) first; the hub only where `online` (it retries for ~25 s)."""
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        if not online:
            raise
    return loader(source, **kwargs)


def build_vit(num_labels: int, cfg, vit_config: dict | None = None) -> tuple[nn.Module, Preprocess]:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    source = cfg.weights or DEFAULT_VIT
    if vit_config is not None:  # rebuilding an exported model: no hub access needed
        config = ViTConfig.from_dict(vit_config)
        config._attn_implementation = "sdpa"
        backbone = ViTModel(config, add_pooling_layer=False)
    elif cfg.pretrained:
        try:
            backbone = _hf_from(ViTModel.from_pretrained, source, True, add_pooling_layer=False, attn_implementation="sdpa")
        except OSError as exc:
            reason = str(exc).splitlines()[0]
            raise MlicError(_offline_hint(f"ViT {source}", f"{reason}; HF cache ${{HF_HOME}}/hub")) from None
        config = backbone.config
    else:
        try:
            config = _hf_from(ViTConfig.from_pretrained, source, False)
        except OSError:  # not cached: ViTConfig's defaults are ViT-B/16 at 224, the report's model
            config = ViTConfig()
        config._attn_implementation = "sdpa"
        backbone = ViTModel(config, add_pooling_layer=False)
    try:
        processor = _hf_from(ViTImageProcessor.from_pretrained, source, cfg.pretrained and vit_config is None)
        size = processor.size.get("height", config.image_size)
        preprocess = Preprocess(int(size), tuple(processor.image_mean), tuple(processor.image_std))
    except OSError:  # the in21k checkpoints normalise with mean = std = 0.5
        preprocess = Preprocess(config.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return ViTClassifier(backbone, num_labels, cfg.head_batchnorm, cfg.dropout), preprocess


def build_model(cfg, num_labels: int, vit_config: dict | None = None) -> tuple[nn.Module, Preprocess]:
    """The model named by `cfg.name` (a ModelConfig) and how its inputs are preprocessed."""
    if cfg.name == "cnn":
        model = SmallCNN(num_labels, batchnorm=cfg.head_batchnorm, dropout=cfg.dropout)
        preprocess = Preprocess(128, IMAGENET_MEAN, IMAGENET_STD)
    elif cfg.name in TORCHVISION:
        model = build_torchvision(cfg.name, num_labels, cfg)
        preprocess = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD)
    elif cfg.name == "vit":
        model, preprocess = build_vit(num_labels, cfg, vit_config)
    else:
        raise ConfigError(f"config key 'model.name': unknown model {cfg.name!r}; known: {', '.join(MODELS)}")
    if cfg.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head_prefix(model))
    return model, preprocess


def head_prefix(model: nn.Module) -> str:
    return getattr(model, "head_name", "head") + "."


def is_cnn(name: str) -> bool:
    return name != "vit"


def architecture(model: nn.Module, cfg, num_labels: int) -> dict[str, Any]:
    """Enough to rebuild the model offline (for `model/config.json`)."""
    arch = {"name": cfg.name, "num_labels": num_labels, "head_batchnorm": cfg.head_batchnorm, "dropout": cfg.dropout}
    if isinstance(model, ViTClassifier):
        arch["vit_config"] = model.backbone.config.to_dict()
    return arch


MODELS: dict[str, Callable] = {"cnn": SmallCNN, **dict.fromkeys(TORCHVISION, build_torchvision), "vit": build_vit}
