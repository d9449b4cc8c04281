"""What a backbone library gives mlic (`Adapter`, the contract every `mlic/models/backbones/<library>.py` fulfils),
what a build returns (`Backbone`, `Preprocess`), and the classifier that puts mlic's head on any of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

OFFLINE = "a model folder must rebuild offline, from what it holds"


def offline_hint(what: str, where: str) -> str:
    return (
        f"cannot load pretrained {what} ({where}). Offline? Put the weights in the cache shown, or point "
        "model.weights at a local copy, or train from scratch with model.pretrained=false"
    )


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

    @classmethod
    def of_data_config(cls, data: dict[str, Any]) -> Preprocess:
        """From timm's data config (`input_size`, `mean`, `std`, `interpolation`, `crop_pct`); mlic resizes bilinear
        or bicubic."""
        interpolation = data.get("interpolation", "bilinear")
        return cls(int(data["input_size"][-1]), tuple(data["mean"]), tuple(data["std"]),
                   interpolation if interpolation == "bicubic" else "bilinear", float(data.get("crop_pct") or 1.0))


@dataclass
class Backbone:
    """A built backbone: the network without its classifier, how its inputs are preprocessed, and what
    `model/config.json` records beside the architecture's name to rebuild it offline (keys of `architecture`)."""

    module: nn.Module
    preprocess: Preprocess
    record: dict[str, Any] = field(default_factory=dict)


class Adapter:
    """One backbone library, as mlic's heads, optimizer and model folders see it. A subclass names the models it
    builds (`names`, and/or `prefix` + what follows it) and implements `build` and `pooled`; `tokens` if its
    backbones keep spatial features (ML-Decoder reads them). The other members have defaults that fit most
    libraries. Every method takes the backbone that `build` returned (`Backbone.module`)."""

    name: str = ""  # the registry's key: "timm", "torchvision"
    names: tuple[str, ...] = ()  # model names it builds as they are ("resnet152")
    prefix: str = ""  # or every name under a prefix ("timm/"): the rest is the `source` `build` gets
    source: str = ""  # what follows the prefix, for messages ("<architecture>")
    unused_parameters = True  # may hold parameters no head uses (found and frozen after a build: DDP stops on them)

    def build(self, source: str, cfg, image_size: int | None, exported: dict[str, Any] | None) -> Backbone:
        """The backbone `source` names (the model name, or what follows `prefix`) as `cfg` (a ModelConfig) asks:
        `cfg.pretrained`, `cfg.weights`, `cfg.grad_checkpointing`. `image_size` (data.image_size, or None) for a
        backbone made for one input size. `exported`: an exported model's `architecture`, holding the record this
        adapter wrote: rebuild from it alone (random weights, the folder's load after), no weights file, no hub."""
        raise NotImplementedError

    def pooled(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, width) features, for the `report` and `linear` heads."""
        raise NotImplementedError

    def tokens(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, N, width) spatial tokens, for heads that attend over them (ML-Decoder)."""
        raise NotImplementedError

    @property
    def has_tokens(self) -> bool:
        """Whether its backbones keep spatial features: it implements `tokens`."""
        return type(self).tokens is not Adapter.tokens

    def width(self, backbone: nn.Module, tokens: bool, size: int) -> int:
        """The feature width a head receives (`tokens`: from `tokens`, else `pooled`); by default one eval-mode
        forward pass of a blank size x size image tells."""
        was_training = backbone.training
        with torch.no_grad():
            features = (self.tokens if tokens else self.pooled)(backbone.eval(), torch.zeros(1, 3, size, size))
        backbone.train(was_training)
        return int(features.shape[-1])

    def layer_ids(self, backbone: nn.Module, names: list[str]) -> dict[str, int]:
        """Each parameter in `names` -> its depth (any integers, larger = nearer the output), for layer-wise
        learning-rate decay. By default the order of the top-level children, one level down into Sequentials."""
        order: dict[str, int] = {}
        for child_name, child in backbone.named_children():
            grandchildren = [g for g, _ in child.named_children()] if isinstance(child, nn.Sequential) else []
            for part in [f"{child_name}.{g}" for g in grandchildren] or [child_name]:
                order[part] = len(order)
        return {n: order.get(".".join(n.split(".")[:2]), order.get(n.split(".")[0], 0)) for n in names}

    def record_problems(self, source: str, arch: dict[str, Any]) -> list[str]:
        """What keeps an exported model's `architecture` (from model/config.json) from rebuilding offline with
        `build(exported=arch)`, one phrase per problem naming the key ("'architecture.timm' is ...")."""
        return []

    def classifier(self, backbone: nn.Module, head: nn.Module) -> nn.Module:
        """The backbone and mlic's head as one model; its parameter names are those of the exported weights."""
        return BackboneClassifier(backbone, head, self)

    def backbone_of(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The backbone inside a model `classifier` made, and the prefix of its parameter names there."""
        return getattr(model, model.backbone_name), model.backbone_name + "."


class BackboneClassifier(nn.Module):
    """An adapter's backbone into a head: pooled features for `report`/`linear`, spatial tokens (B, N, D) for
    heads that attend over them (`wants_tokens`, ML-Decoder). `backbone_name`: the attribute the backbone is
    held under, the prefix of its weights' names."""

    head_name = "head"

    def __init__(self, backbone: nn.Module, head: nn.Module, adapter: Adapter, backbone_name: str = "backbone"):
        super().__init__()
        self.backbone_name, self.adapter = backbone_name, adapter
        self.add_module(backbone_name, backbone)
        self.head = head

    @property
    def wants_tokens(self) -> bool:
        return getattr(self.head, "wants_tokens", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x) if self.wants_tokens else self.pooled(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.pooled(getattr(self, self.backbone_name), x)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.tokens(getattr(self, self.backbone_name), x)
