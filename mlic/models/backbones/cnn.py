"""The report's small CNN (Figure 4): conv-BN-ReLU-maxpool blocks, then global average pooling."""

from __future__ import annotations

import torch
from torch import nn

from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.models.backbones.adapter import Adapter, Backbone, BackboneClassifier, Preprocess

WIDTHS = (32, 64, 128, 256)


def small_cnn() -> nn.Sequential:
    blocks: list[nn.Module] = []
    in_ch = 3
    for width in WIDTHS:
        blocks += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        in_ch = width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class CnnAdapter(Adapter):
    """Nothing to record: the architecture is fixed. No tokens: its features are pooled inside it."""

    name, names = "cnn", ("cnn",)
    unused_parameters = False

    def build(self, source, cfg, image_size, exported) -> Backbone:
        return Backbone(small_cnn(), Preprocess(128, IMAGENET_MEAN, IMAGENET_STD))

    def pooled(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone(x)

    def width(self, backbone: nn.Module, tokens: bool, size: int) -> int:
        return WIDTHS[-1]

    def classifier(self, backbone: nn.Module, head: nn.Module) -> nn.Module:
        return BackboneClassifier(backbone, head, self, backbone_name="features")  # the weights' names since 0.1


ADAPTER = CnnAdapter()
