"""Models: shapes, the report's head, and pretrained weights through the real loading code, offline."""

import pytest
import torch

from mlic.config import ModelConfig
from mlic.errors import MlicError
from mlic.models import Head, build_model


def _one_step(model, size):
    model.train()
    x = torch.randn(2, 3, size, size)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.ones(2, 14))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_cnn_and_head_switches():
    model, pre = build_model(ModelConfig(name="cnn"), 14)
    assert model(torch.randn(3, 3, 64, 64)).shape == (3, 14) and pre.size == 128
    kinds = [type(m) for m in Head(8, 2, batchnorm=True, dropout=0.5)]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Dropout, torch.nn.Linear]
    assert torch.nn.BatchNorm1d not in [type(m) for m in Head(8, 2, batchnorm=False)]
    no_bn, _ = build_model(ModelConfig(name="cnn", head_batchnorm=False, dropout=0.1), 3)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in no_bn.head)
    assert next(m for m in no_bn.head if isinstance(m, torch.nn.Dropout)).p == 0.1


@pytest.mark.parametrize(("name", "width", "file"), [
    ("resnet152", 2048, "resnet152-394f9c45.pth"),
    ("densenet161", 2208, "densenet161-8d451a50.pth"),
])
def test_torchvision_weights_load_from_the_hub_cache(name, width, file, tmp_path, monkeypatch):
    """A random state dict saved under the real IMAGENET1K_V1 file name in TORCH_HOME is what loads.
    TORCH_HOME is this test's own: no other test can find the fake weights."""
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = getattr(tvm, name)(weights=None)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(cache.parent)
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / file)
    model, pre = build_model(ModelConfig(name=name, freeze_backbone=True), 14)
    assert pre.size == 224
    head = model.fc if name.startswith("resnet") else model.classifier
    assert head[0].in_features == width == head[0].out_features  # Figure 6: 2048x2048 / 2208x2208
    first_conv = next(k for k in reference.state_dict() if "conv" in k)
    assert torch.equal(model.state_dict()[first_conv], reference.state_dict()[first_conv])
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith(("fc.", "classifier.")))
    _one_step(model, 64)


def test_offline_without_cache_says_how_to_proceed(monkeypatch):
    import torchvision.models as tvm

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvm.ResNet152_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline, raising=False)
    with pytest.raises(MlicError, match="model.pretrained=false"):
        build_model(ModelConfig(name="resnet152"), 14)
    with pytest.raises(MlicError, match="model.pretrained=false"):
        build_model(ModelConfig(name="vit"), 14)  # HF_HUB_OFFLINE=1 and an empty cache


def test_vit_loads_a_local_checkpoint_with_its_processor(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    saved = ViTModel(config, add_pooling_layer=False)
    saved.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path / "vit")
    model, pre = build_model(ModelConfig(name="vit", weights=str(tmp_path / "vit")), 14)
    assert (pre.size, pre.mean) == (32, (0.5, 0.5, 0.5))
    assert model.backbone.config._attn_implementation == "sdpa"
    key = "embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.backbone.state_dict()[key], saved.state_dict()[key])
    assert model.head[0].in_features == 32
    _one_step(model, 32)


def test_vit_from_scratch_offline_is_vit_base():
    model, pre = build_model(ModelConfig(name="vit", pretrained=False), 14)
    assert model.backbone.config.hidden_size == 768 and pre.size == 224
