"""The report's `vit`: Hugging Face ViT (google/vit-base-patch16-224-in21k, or `model.weights`: a folder or hub
name), the head on the final [CLS] representation as ViTForImageClassification does."""

from __future__ import annotations

from typing import Any

from mlic.errors import MlicError
from mlic.models.backbones.adapter import OFFLINE, Backbone, Preprocess, offline_hint
from mlic.models.backbones.hf import HfAdapter, hf_from

DEFAULT_VIT = "google/vit-base-patch16-224-in21k"


class VitAdapter(HfAdapter):
    """An HF backbone of one family, under a fixed name: features, tokens and layer ids as for `hf/`. Records
    ViT's own config (`vit_config`), the report's recipe since 0.1."""

    name, names, prefix, source = "vit", ("vit",), "", ""
    unused_parameters = False  # no pooler (add_pooling_layer=False): the [CLS] token and every token are used

    def build(self, source, cfg, image_size, exported) -> Backbone:
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        source = cfg.weights or DEFAULT_VIT
        if exported is not None:  # rebuilding an exported model: no hub access needed
            config = ViTConfig.from_dict(exported["vit_config"])
            config._attn_implementation = "sdpa"
            backbone = ViTModel(config, add_pooling_layer=False)
        elif cfg.pretrained:
            try:
                backbone = hf_from(ViTModel.from_pretrained, source, True, add_pooling_layer=False,
                                   attn_implementation="sdpa")
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
            processor = hf_from(ViTImageProcessor.from_pretrained, source, cfg.pretrained and exported is None)
            size = processor.size.get("height", config.image_size)
            preprocess = Preprocess(int(size), tuple(processor.image_mean), tuple(processor.image_std))
        except OSError:  # the in21k checkpoints normalise with mean = std = 0.5
            preprocess = Preprocess(config.image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return Backbone(backbone, preprocess, {"vit_config": config.to_dict()})

    def width(self, backbone, tokens: bool, size: int) -> int:
        return backbone.config.hidden_size

    def record_problems(self, source: str, arch: dict[str, Any]) -> list[str]:
        if not isinstance(arch.get("vit_config"), dict):
            return [f"'architecture.vit_config' is missing or not an object: it is ViT's own config, without which the "
                    f"backbone would be looked up by name; {OFFLINE}"]
        return []


ADAPTER = VitAdapter()
