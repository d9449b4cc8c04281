"""Any backbone by name, from the libraries that own them: `timm/<architecture>` and `hf/<hub name or
folder>`. Each is built without its classifier and yields features for mlic's heads; weights load
strictly (a file whose names do not match is an error, not a random backbone)."""

from __future__ import annotations

import difflib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlic.errors import ConfigError, MlicError

# PIL's resampling codes, as Hugging Face image processors record them (mlic resizes bilinear or bicubic)
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
# HF ViT's pooler is BERT's tanh layer; ViTForImageClassification itself bypasses it for the [CLS] token
_NO_POOLER = {"vit", "deit"}


def offline_hint(what: str, where: str) -> str:
    return (
        f"cannot load pretrained {what} ({where}). Offline? Put the weights in the cache shown, or point "
        "model.weights at a local copy, or train from scratch with model.pretrained=false"
    )


class BackboneClassifier(nn.Module):
    """A backbone's features into a head: pooled features for `report`/`linear`, spatial tokens
    (B, N, D) for heads that attend over them (`wants_tokens`, ML-Decoder)."""

    head_name = "head"

    def __init__(self, backbone: nn.Module, head: nn.Module, library: str):
        super().__init__()
        self.backbone, self.head, self.library = backbone, head, library
        if library == "hf":
            accepted = inspect.signature(backbone.forward).parameters
            self._interpolate = "interpolate_pos_encoding" in accepted
            self._image_size = getattr(backbone.config, "image_size", None)
            self._model_type = getattr(backbone.config, "model_type", "")

    @property
    def wants_tokens(self) -> bool:
        return getattr(self.head, "wants_tokens", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x) if self.wants_tokens else self.pooled(x))

    def feature_width(self, tokens: bool, size: int) -> int:
        """The width a head receives: timm says it (a pre-logits layer may widen the pooled features);
        for HF, whose configs name it differently per family, one forward pass of a blank image tells."""
        if self.library == "timm":
            pooled = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
            return self.backbone.num_features if tokens else pooled
        was_training = self.backbone.training
        with torch.no_grad():
            features = (self.tokens if tokens else self.pooled)(torch.zeros(1, 3, size, size))
        self.backbone.train(was_training)
        return int(features.shape[-1])

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.library == "timm":  # num_classes=0: timm's own pooling (avg, [CLS], attention pool ...)
            return self.backbone(x)
        out = self._hf(x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None and self._model_type not in _NO_POOLER:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=(2, 3))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.library == "timm":
            features = self.backbone.forward_features(x)
            width = self.backbone.num_features
        else:
            features = self._hf(x).last_hidden_state
            width = features.shape[1] if features.dim() == 4 else features.shape[-1]
        if features.dim() == 4:  # NCHW, or NHWC (timm's Swin)
            features = features.flatten(2).transpose(1, 2) if features.shape[1] == width else features.flatten(1, 2)
        return features

    def _hf(self, x: torch.Tensor):
        extra = {}
        if self._interpolate and self._image_size is not None:
            extra["interpolate_pos_encoding"] = x.shape[-1] != self._image_size
        return self.backbone(pixel_values=x, **extra)


# --- timm ---------------------------------------------------------------------------------------

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


# --- Hugging Face --------------------------------------------------------------------------------

def hf_from(loader, source: str, online: bool, **kwargs):
    """Local files (a folder, or the HF cache) first; the hub only where `online` (it retries for ~25 s)."""
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        if not online:
            raise
    return loader(source, **kwargs)


def build_hf(source: str, cfg, exported: dict | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """An image backbone that AutoModel loads (its vision tower, for two-tower models such as SigLIP/CLIP),
    what rebuilds it offline (its config), and its image processor's preprocessing."""
    from transformers import AutoConfig, AutoModel

    trust = cfg.trust_remote_code
    try:
        if exported is not None:  # rebuilding an exported model: its config, no hub
            config_dict = dict(exported["config"])
            config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
        else:
            config = hf_from(AutoConfig.from_pretrained, source, True, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise MlicError(offline_hint(f"Hugging Face model {source}", f"{reason}; HF cache ${{HF_HOME}}/hub")) from None
    kwargs = {"add_pooling_layer": False} if config.model_type in _NO_POOLER else {}
    try:
        if cfg.pretrained and exported is None:  # strict, as for timm: HF would initialise missing weights
            # float32 whatever the checkpoint's dtype (transformers 5 keeps it): accelerate does mixed precision
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
    full_config = model.config
    if hasattr(model, "vision_model") and hasattr(full_config, "vision_config"):
        model = model.vision_model  # SigLIP, CLIP ...: the image tower only
    preprocess = _hf_preprocess(source, model.config, cfg.pretrained and exported is None)
    return model, {"config": full_config.to_dict(), "trust_remote_code": trust}, preprocess


def _hf_preprocess(source: str, config, online: bool) -> dict[str, Any]:
    from transformers import AutoImageProcessor

    size = getattr(config, "image_size", 224)
    data = {"input_size": (3, size, size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "interpolation": "bilinear"}
    try:
        processor = hf_from(AutoImageProcessor.from_pretrained, source, online)
    except (OSError, ValueError):  # a folder without preprocessor_config.json: ImageNet's, at the config's size
        return data
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    side = (crop or {}).get("height") or processor.size.get("height") or processor.size.get("shortest_edge") or size
    data.update(input_size=(3, side, side), mean=tuple(processor.image_mean), std=tuple(processor.image_std))
    data["interpolation"] = _PIL_RESAMPLE.get(int(getattr(processor, "resample", 2)), "bilinear")
    shortest = processor.size.get("shortest_edge")
    if crop and shortest and crop.get("height"):  # resize the shorter side, then crop (ResNet, ConvNeXt ...)
        data["crop_pct"] = crop["height"] / shortest
    elif getattr(processor, "crop_pct", None):  # ConvNeXt's processor names it
        data["crop_pct"] = float(processor.crop_pct)
    return data


def layer_ids(backbone: nn.Module, library: str, skip: str = "") -> tuple[dict[str, int], int]:
    """Each backbone parameter's depth (0 = the input end) and the number of depths, for layer-wise
    learning-rate decay: timm's own grouping, HF's numbered layers, else the order of the top-level
    children, one level down into Sequentials (torchvision's DenseNet `features`, the report's CNN).
    Parameters under `skip` (a head inside the model) are left out."""
    names = [n for n, _ in backbone.named_parameters() if not (skip and n.startswith(skip))]
    if library == "timm" and hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters

        ids = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    elif library == "hf":
        import re

        numbered = re.compile(r"(?:^|\.)(?:layer|layers|stages|blocks)\.(\d+)\.")
        found = {n: int(m.group(1)) + 1 for n in names if (m := numbered.search(n))}
        top = max(found.values(), default=0) + 1
        ids = {n: found.get(n, 0 if "embed" in n else top) for n in names}
    else:
        order: dict[str, int] = {}
        for child_name, child in backbone.named_children():
            grandchildren = [g for g, _ in child.named_children()] if isinstance(child, nn.Sequential) else []
            for part in [f"{child_name}.{g}" for g in grandchildren] or [child_name]:
                order[part] = len(order)
        ids = {n: order.get(".".join(n.split(".")[:2]), order.get(n.split(".")[0], 0)) for n in names}
    ranks = {v: i for i, v in enumerate(sorted({ids[n] for n in names}))}  # compact: 0 .. depths - 1
    return {n: ranks[ids[n]] for n in names}, len(ranks)
