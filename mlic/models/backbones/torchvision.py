"""torchvision's ResNets and DenseNets, the report's resnet152 and densenet161 among them, with their
IMAGENET1K_V1 weights (torch hub cache) or a local state dict (`model.weights`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.errors import ConfigError, MlicError
from mlic.models.backbones.adapter import Adapter, Backbone, Preprocess, offline_hint

# torchvision models the report used or tried: builder, weights enum name, classifier attribute
TORCHVISION = {
    "resnet18": ("resnet18", "ResNet18_Weights", "fc"),  # small: benchmarks and quick trials
    "resnet50": ("resnet50", "ResNet50_Weights", "fc"),
    "resnet152": ("resnet152", "ResNet152_Weights", "fc"),
    "densenet121": ("densenet121", "DenseNet121_Weights", "classifier"),
    "densenet161": ("densenet161", "DenseNet161_Weights", "classifier"),
}


def _state_dict(name: str, weights_path: str | None) -> dict[str, torch.Tensor]:
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


class TorchvisionAdapter(Adapter):
    """The net itself is the backbone: its classifier (`fc`, `classifier`) is an Identity until mlic's head takes
    its place. No tokens: the net pools its features (timm/<name> builds the same networks with them)."""

    name, names = "torchvision", tuple(TORCHVISION)
    unused_parameters = False

    def build(self, source, cfg, image_size, exported) -> Backbone:
        import torchvision.models as tvm

        builder, _, attr = TORCHVISION[source]
        net = getattr(tvm, builder)(weights=None)
        if cfg.pretrained:
            net.load_state_dict(_state_dict(source, cfg.weights))
        net.num_features, net.head_name = getattr(net, attr).in_features, attr  # timm's name for the width
        setattr(net, attr, nn.Identity())
        return Backbone(net, Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875))  # resize 256, crop 224

    def pooled(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone(x)

    def width(self, backbone: nn.Module, tokens: bool, size: int) -> int:
        return backbone.num_features

    def classifier(self, backbone: nn.Module, head: nn.Module) -> nn.Module:
        """The head where the classifier was: the exported weights' names are torchvision's own."""
        setattr(backbone, backbone.head_name, head)
        return backbone

    def backbone_of(self, model: nn.Module) -> tuple[nn.Module, str]:
        return model, ""


ADAPTER = TorchvisionAdapter()
