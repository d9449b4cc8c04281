"""`hf/<hub name or folder>`: any image backbone that transformers' AutoModel loads (the vision tower of a
two-tower model such as SigLIP or CLIP), its weights loaded strictly, rebuilt offline from its recorded config."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.errors import ConfigError, MlicError
from mlic.models.backbones.adapter import OFFLINE, Adapter, Backbone, Preprocess, offline_hint

# PIL's resampling codes, as Hugging Face image processors record them (mlic resizes bilinear or bicubic)
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
# HF ViT's pooler is BERT's tanh layer; ViTForImageClassification itself bypasses it for the [CLS] token
_NO_POOLER = {"vit", "deit"}
_NUMBERED = re.compile(r"(?:^|\.)(?:layer|layers|stages|blocks)\.(\d+)\.")
_TAKES_INTERPOLATION: dict[type, bool] = {}  # per backbone class: its forward takes interpolate_pos_encoding


def hf_from(loader, source: str, online: bool, **kwargs):
    """Local files (a folder, or the HF cache) first; the hub only where `online` (it retries for ~25 s)."""
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        if not online:
            raise
    return loader(source, **kwargs)


def numbered_layer_ids(names: list[str]) -> dict[str, int]:
    """HF's numbered layers (`encoder.layer.3.`, `stages.1.`): embeddings first, then each layer, then the rest."""
    found = {n: int(m.group(1)) + 1 for n in names if (m := _NUMBERED.search(n))}
    top = max(found.values(), default=0) + 1
    return {n: found.get(n, 0 if "embed" in n else top) for n in names}


def hf_outputs(backbone: nn.Module, x: torch.Tensor):
    """The backbone's outputs, at any input size where its forward can interpolate position embeddings."""
    kind = type(backbone)
    if kind not in _TAKES_INTERPOLATION:  # filled at build (the width's forward pass), before any compile
        _TAKES_INTERPOLATION[kind] = "interpolate_pos_encoding" in inspect.signature(backbone.forward).parameters
    image_size = getattr(backbone.config, "image_size", None)
    takes = _TAKES_INTERPOLATION[kind] and image_size is not None
    return backbone(pixel_values=x, **({"interpolate_pos_encoding": x.shape[-1] != image_size} if takes else {}))


class HfAdapter(Adapter):
    name, prefix, source = "hf", "hf/", "<hub name or folder>"

    def build(self, source, cfg, image_size, exported) -> Backbone:
        """`model.weights` (a folder or hub name) replaces the name's source. Records the config (the whole
        model's, for a two-tower one) and trust_remote_code: `exported` rebuilds from them."""
        source = cfg.weights or source
        config = _config(source, cfg, exported and exported.get("hf"))
        model = _model(source, config, cfg, pretrained=cfg.pretrained and exported is None)
        full_config = model.config
        if hasattr(model, "vision_model") and hasattr(full_config, "vision_config"):
            model = model.vision_model  # SigLIP, CLIP ...: the image tower only
        preprocess = _preprocess(source, model.config, cfg.pretrained and exported is None)
        return Backbone(model, preprocess, {"hf": {"config": full_config.to_dict(), "trust_remote_code": cfg.trust_remote_code}})

    def pooled(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = hf_outputs(backbone, x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None and backbone.config.model_type not in _NO_POOLER:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=(2, 3))

    def tokens(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        features = hf_outputs(backbone, x).last_hidden_state
        return features.flatten(2).transpose(1, 2) if features.dim() == 4 else features  # NCHW: a CNN's map

    def layer_ids(self, backbone: nn.Module, names: list[str]) -> dict[str, int]:
        return numbered_layer_ids(names)

    def record_problems(self, source: str, arch: dict[str, Any]) -> list[str]:
        record = arch.get("hf")
        config = record.get("config") if isinstance(record, dict) else None
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            where = "the local folder" if Path(source).is_dir() else "the Hugging Face hub"
            return [f"'architecture.hf.config' is missing or has no model_type: hf/{source} would be rebuilt from "
                    f"{where} ({source}); {OFFLINE}"]
        if "auto_map" in config:
            return [f"'architecture.hf.config' has an auto_map: the backbone's code comes from {source}, outside the "
                    f"folder; {OFFLINE}"]
        return []


def _config(source: str, cfg, record: dict | None):
    from transformers import AutoConfig

    try:
        if record is not None:  # rebuilding an exported model: its config, no hub
            config_dict = dict(record["config"])
            return AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        return hf_from(AutoConfig.from_pretrained, source, True, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise MlicError(offline_hint(f"Hugging Face model {source}", f"{reason}; HF cache ${{HF_HOME}}/hub")) from None


def _model(source: str, config, cfg, pretrained: bool) -> nn.Module:
    """Loaded strictly where `pretrained`, as timm's weights are: HF would initialise missing weights."""
    from transformers import AutoModel

    kwargs = {"add_pooling_layer": False} if config.model_type in _NO_POOLER else {}
    trust = cfg.trust_remote_code
    try:
        if pretrained:  # float32 whatever the checkpoint's dtype (transformers 5 keeps it): accelerate does mixed precision
            model, info = hf_from(AutoModel.from_pretrained, source, True, trust_remote_code=trust, dtype=torch.float32,
                                  output_loading_info=True, **kwargs)
            if info["missing_keys"]:
                missing = sorted(info["missing_keys"])
                raise MlicError(f"{source}: not this backbone's weights: {len(missing)} of its keys missing "
                                f"(e.g. {', '.join(missing[:3])}); point model.name=hf/... at the model's own folder")
        else:
            model = AutoModel.from_config(config, trust_remote_code=trust, **kwargs)
    except OSError as exc:
        raise MlicError(offline_hint(f"Hugging Face model {source}", str(exc).splitlines()[0])) from None
    except RuntimeError as exc:  # shapes that do not match the config
        raise MlicError(f"{source}: weights do not fit its config.json: {str(exc).splitlines()[0]}") from None
    if cfg.grad_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise ConfigError(f"config key 'model.grad_checkpointing': {source} does not support it")
        # transformers renames it (5.x warns); the older name for the releases before
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return model


def _preprocess(source: str, config, online: bool) -> Preprocess:
    """The image processor's input side, normalisation, resampling and crop; ImageNet's at the config's size
    for a folder without preprocessor_config.json."""
    from transformers import AutoImageProcessor

    size = getattr(config, "image_size", 224)
    data = {"input_size": (3, size, size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "interpolation": "bilinear"}
    try:
        processor = hf_from(AutoImageProcessor.from_pretrained, source, online)
    except (OSError, ValueError):
        return Preprocess.of_data_config(data)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    side = (crop or {}).get("height") or processor.size.get("height") or processor.size.get("shortest_edge") or size
    data.update(input_size=(3, side, side), mean=tuple(processor.image_mean), std=tuple(processor.image_std))
    data["interpolation"] = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 2)), "bilinear")
    shortest = processor.size.get("shortest_edge")
    if crop and shortest and crop.get("height"):  # resize the shorter side, then crop (ResNet, ConvNeXt ...)
        data["crop_pct"] = crop["height"] / shortest
    elif getattr(processor, "crop_pct", None):  # ConvNeXt's processor names it
        data["crop_pct"] = float(processor.crop_pct)
    return Preprocess.of_data_config(data)


ADAPTER = HfAdapter()
