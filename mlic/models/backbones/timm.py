"""`timm/<architecture>`: any timm model without its classifier, its weights from timm (the HF hub cache) or a
local file loaded strictly (a file whose names do not match is an error, not a random backbone)."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.errors import ConfigError, MlicError
from mlic.models.backbones.adapter import OFFLINE, Adapter, Backbone, Preprocess, offline_hint


class TimmAdapter(Adapter):
    name, prefix, source = "timm", "timm/", "<architecture>"

    def build(self, source, cfg, image_size, exported) -> Backbone:
        """Records the keyword arguments that rebuild the model (its `img_size` where data.image_size asked for
        another than a fixed-size model's own)."""
        model, data, kwargs = build_timm(source, cfg, exported and exported.get("timm"), image_size)
        return Backbone(model, Preprocess.of_data_config(data), {"timm": {"kwargs": kwargs}})

    def pooled(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone(x)  # num_classes=0: timm's own pooling (avg, [CLS], attention pool ...)

    def tokens(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        features = backbone.forward_features(x)
        if features.dim() == 4:  # NCHW, or NHWC (timm's Swin)
            nchw = features.shape[1] == backbone.num_features
            features = features.flatten(2).transpose(1, 2) if nchw else features.flatten(1, 2)
        return features

    def width(self, backbone: nn.Module, tokens: bool, size: int) -> int:
        """timm says it: a pre-logits layer may widen the pooled features (MobileNetV3)."""
        pooled = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        return backbone.num_features if tokens else pooled

    def layer_ids(self, backbone: nn.Module, names: list[str]) -> dict[str, int]:
        """timm's own grouping (`group_matcher`: stem, each block, head), where the model has one."""
        if not hasattr(backbone, "group_matcher"):
            return super().layer_ids(backbone, names)
        from timm.models import group_parameters

        ids = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
        return {n: ids[n] for n in names}

    def record_problems(self, source: str, arch: dict[str, Any]) -> list[str]:
        if source.startswith("hf-hub:"):
            return [f"'architecture.name' 'timm/{source}' is a Hugging Face hub model, whose definition timm fetches "
                    f"from the network; {OFFLINE} (re-export it under its timm architecture name)"]
        record = arch.get("timm", {})
        if not isinstance(record, dict) or not isinstance(record.get("kwargs", {}), dict):
            return [f"'architecture.timm' is {record!r}, not an object with a 'kwargs' object"]
        return []


def build_timm(arch: str, cfg, exported: dict | None = None,
               image_size: int | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """timm's model `arch` without classifier (num_classes=0), its data config, and the keyword arguments that
    rebuild it. `image_size` (data.image_size) other than a fixed-size model's own (a ViT's) builds it at that
    size, its position embeddings resampled from the weights' as timm does at load."""
    import timm

    kwargs = dict(exported.get("kwargs", {})) if exported else _size_kwargs(arch, image_size)
    try:
        model = _create_timm(arch, cfg.pretrained and not cfg.weights and exported is None, kwargs)
    except RuntimeError as exc:
        if "No pretrained weights" in str(exc):
            raise ConfigError(f"config key 'model.pretrained': timm has no pretrained weights for {arch!r}; pick a "
                              f"tag (timm.list_pretrained('{arch.split('.')[0]}*')) or set model.pretrained=false") from None
        if "Unknown model" not in str(exc):
            raise
        close = difflib.get_close_matches(arch.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"config key 'model.name': timm has no model {arch!r}; similar: {', '.join(close) or '-'} "
                          "(timm.list_models() lists them)") from None
    except Exception as exc:  # hub download errors (offline, no cache): all mean "could not fetch"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MlicError(offline_hint(f"timm {arch}", f"{reason}; HF cache ${{HF_HOME}}/hub")) from None
    if cfg.pretrained and cfg.weights and exported is None:
        load_strictly(model, weights_file(cfg.weights), allowed=_classifier_prefixes(model),
                      adapt=getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None))
    if cfg.grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError):
            raise ConfigError(f"config key 'model.grad_checkpointing': timm {arch} does not support it") from None
    data = timm.data.resolve_model_data_config(model)  # the weights' pretrained_cfg: their own input size
    if "img_size" in kwargs:
        data["input_size"] = (3, kwargs["img_size"], kwargs["img_size"])
    return model, data, kwargs


def _create_timm(arch: str, download: bool, kwargs: dict[str, Any]) -> nn.Module:
    """With `download` the full model loads timm's weights strictly, then the classifier goes. `kwargs` loses an
    `img_size` the architecture does not take (it takes any size)."""
    import timm

    try:
        if download:
            model = timm.create_model(arch, pretrained=True, **kwargs)
            model.reset_classifier(0)
            return model
        return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc) or "img_size" not in kwargs:
            raise
        kwargs.pop("img_size")
        return _create_timm(arch, download, kwargs)


def _size_kwargs(arch: str, image_size: int | None) -> dict[str, Any]:
    """{"img_size": image_size} when another size than the weights' own is asked for; `build_timm` drops it for
    an architecture that takes any size (a CNN: timm refuses the keyword)."""
    import timm

    if image_size is None or not timm.is_model(arch.split(".")[0]):
        return {}
    default = timm.get_pretrained_cfg(arch.split(".")[0], allow_unregistered=True)
    return {} if default is not None and default.input_size[-1] == image_size else {"img_size": image_size}


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))


def weights_file(path: str) -> Path:
    """A weights file, or a folder holding one (model.safetensors / pytorch_model.bin, as hub repos do)."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name
        raise ConfigError(f"model.weights {path}: a folder without model.safetensors or pytorch_model.bin")
    if not p.is_file():
        raise ConfigError(f"model.weights {path}: file not found")
    return p


def load_strictly(model: nn.Module, path: Path, allowed: tuple[str, ...], adapt=None) -> None:
    """Every parameter and buffer of `model` must come from the file; extra keys only under `allowed`
    (the pretrained classifier that mlic replaces). timm's own file loading with num_classes=0 is
    lenient: a file in another naming would leave the backbone random with only a logged warning. `adapt`:
    the architecture's `checkpoint_filter_fn`, which timm runs on its own downloads (a ViT's position
    embeddings resampled to the model's size)."""
    import timm.models

    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise MlicError(f"model.weights {path}: cannot read it ({str(exc).splitlines()[0]})") from None
    if adapt is not None:
        state = adapt(state, model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # the names match, some shapes do not (another variant of the architecture)
        mismatch = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
        raise MlicError(f"model.weights {path}: not this backbone's weights: {mismatch}") from None
    unexpected = [k for k in unexpected if not k.startswith(allowed)]
    if missing or unexpected:
        raise MlicError(
            f"model.weights {path}: not this backbone's weights: {len(missing)} of its keys missing "
            f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unknown in the file "
            f"(e.g. {', '.join(unexpected[:3]) or '-'}); rename the file's keys to the model's (docs/MODELS.md)")


ADAPTER = TimmAdapter()
