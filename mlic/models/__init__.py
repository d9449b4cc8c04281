"""Models by name: a backbone from its library's adapter (mlic.models.backbones: the report's small CNN, torchvision
ResNet/DenseNet, Hugging Face ViT, any `timm/<architecture>` or `hf/<name>`) with a head chosen by
`model.head`: the report's (Figure 6: Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear), a linear
layer, or ML-Decoder (cross-attention from label queries to the spatial features)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlic.errors import ConfigError
from mlic.logs import log
from mlic.models.backbones import Preprocess, adapter_for, layer_ids


class Head(nn.Sequential):
    """Figure 6: the first Linear keeps the backbone's width (2048 for ResNet152, 2208 for DenseNet161)."""

    def __init__(self, in_features: int, num_labels: int, batchnorm: bool = True, dropout: float = 0.5):
        layers: list[nn.Module] = [nn.Linear(in_features, in_features)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(in_features))
        layers += [nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(in_features, num_labels)]
        super().__init__(*layers)


def make_head(cfg, in_features: int, num_labels: int) -> nn.Module:
    if cfg.head == "report":
        return Head(in_features, num_labels, cfg.head_batchnorm, cfg.dropout)
    if cfg.head == "linear":
        return nn.Linear(in_features, num_labels)
    from mlic.models.heads import MLDecoder

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
    """The model named by `cfg.name` (a ModelConfig) and how its inputs are preprocessed: the backbone its
    library's adapter builds (`mlic.models.backbones`), with the head `cfg.head`. `exported` (an exported model's
    architecture record) rebuilds it without weights files or hub access. `image_size` (data.image_size) builds
    a backbone made for one input size (a timm ViT) at that size."""
    adapter, source = adapter_for(cfg.name)
    if cfg.head == "mldecoder" and not adapter.has_tokens:
        raise ConfigError(f"config key 'model.head': mldecoder needs a backbone's spatial features; {cfg.name} "
                          f"pools them away. Use timm's build of it (model.name=timm/{cfg.name}) or model.head=report")
    built = adapter.build(source, cfg, image_size, exported)
    width = adapter.width(built.module, cfg.head == "mldecoder", built.preprocess.size)
    model = adapter.classifier(built.module, make_head(cfg, width, num_labels))
    model.record = built.record  # what `architecture` writes into model/config.json
    if cfg.freeze_backbone:
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(head_prefix(model))
    if adapter.unused_parameters and exported is None:  # training builds it; inference has no DDP
        freeze_unused(model, built.preprocess.size)
    return model, built.preprocess


def backbone_depths(model: nn.Module, name: str) -> tuple[dict[str, int], int]:
    """Each backbone parameter of `model` (built for model.name `name`) by its name in the model -> its depth
    (0 = the input end), and the number of depths: the layer-wise learning-rate decay's grouping."""
    adapter, _ = adapter_for(name)
    backbone, prefix = adapter.backbone_of(model)
    depth, depths = layer_ids(backbone, adapter.name, skip=head_prefix(model) if backbone is model else "")
    return {prefix + n: d for n, d in depth.items()}, depths


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
    if unused:
        head = type(model.get_submodule(head_prefix(model)[:-1])).__name__
        log.info(f"mlic: {len(unused)} backbone parameter(s) unused with the {head} head are frozen (e.g. {unused[0]})")


def head_prefix(model: nn.Module) -> str:
    return getattr(model, "head_name", "head") + "."


def is_cnn(model: nn.Module) -> bool:
    """Convolutions past the stem (a transformer's patch embedding is one): channels_last pays off."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def architecture(model: nn.Module, cfg, num_labels: int) -> dict[str, Any]:
    """Enough to rebuild the model offline (for `model/config.json`)."""
    arch = {"name": cfg.name, "num_labels": num_labels, "head": cfg.head, "head_batchnorm": cfg.head_batchnorm,
            "dropout": cfg.dropout, "mldecoder_groups": cfg.mldecoder_groups, "mldecoder_dim": cfg.mldecoder_dim}
    arch.update(getattr(model, "record", {}))  # the adapter's own: timm's kwargs, an HF config
    return arch
