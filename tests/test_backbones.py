"""Any backbone by name (timm/, hf/), the heads on it, strict weights, the fine-tuning optimizer groups and
the offline rebuild of an exported model. Fast: tiny or small models, no training."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlic.config import ModelConfig, load_config
from mlic.errors import ConfigError, MlicError
from mlic.models import Preprocess, architecture, build_model
from mlic.models.backbones import layer_ids
from mlic.models.export import export_model, load_exported
from mlic.models.heads import MLDecoder
from mlic.training.build import param_groups


def tiny_hf(folder, kind: str = "vit"):
    """A tiny Hugging Face backbone saved as a hub repository would be (no hub involved)."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(**sizes)) if kind == "vit" else Dinov2Model(Dinov2Config(**sizes))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2],
                      resample=3).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head", ["report", "linear", "mldecoder"])
def test_timm_backbone_takes_every_head_and_its_pretrained_preprocessing(head):
    model, pre = build_model(ModelConfig(name="timm/tf_efficientnet_lite0", pretrained=False, head=head), 14)
    assert pre == Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875)  # timm's pretrained_cfg
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 14)
    assert isinstance(model.head, {"report": torch.nn.Sequential, "linear": torch.nn.Linear, "mldecoder": MLDecoder}[head])
    if head == "mldecoder":  # fed the 2x2 map of a 64-px image as 4 tokens of the backbone's width
        assert model.tokens(torch.rand(1, 3, 64, 64)).shape == (1, 4, 1280)


def test_unknown_names_and_a_pooled_backbone_under_mldecoder_are_config_errors():
    with pytest.raises(ConfigError, match="timm has no model 'tf_efficientnet_lite9'.*similar: .*tf_efficientnet_lite0"):
        build_model(ModelConfig(name="timm/tf_efficientnet_lite9", pretrained=False), 3)
    with pytest.raises(ConfigError, match="model.head.*timm/resnet152"):
        build_model(ModelConfig(name="resnet152", pretrained=False, head="mldecoder"), 3)
    with pytest.raises(ConfigError, match="unknown model 'convnext'.*timm/<architecture>"):
        build_model(ModelConfig(name="convnext", pretrained=False), 3)


def test_parameters_no_head_uses_are_frozen_so_ddp_can_run():
    """ConvNeXt's pre-logits norm is skipped by ML-Decoder, DINOv2's mask token by every head: DDP would stop
    on them. After building, every trainable parameter gets a gradient."""
    model, _ = build_model(ModelConfig(name="timm/convnext_atto", pretrained=False, head="mldecoder"), 5)
    assert not model.backbone.head.norm.weight.requires_grad
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_layer_decay_and_head_lr_give_one_group_per_rate():
    cfg = load_config(None, ["model.name=timm/tf_efficientnet_lite0", "model.pretrained=false",
                             "optim.lr=1e-3", "optim.layer_decay=0.5", "optim.head_lr=1e-2"])
    model, _ = build_model(cfg.model, 14)
    groups = param_groups(cfg, model)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(lr_of) == len(trainable)  # each parameter in exactly one group
    lr = {n: lr_of[id(p)] for n, p in trainable}
    assert {lr[n] for n in lr if n.startswith("head.")} == {1e-2}
    stem, last_block, top = lr["backbone.conv_stem.weight"], lr["backbone.blocks.6.0.conv_pwl.weight"], lr["backbone.bn2.weight"]
    assert stem < lr["backbone.blocks.0.0.conv_dw.weight"] < last_block <= top == pytest.approx(1e-3 * 0.5)
    _, depths = layer_ids(model.backbone, "timm")
    assert depths == len({v for k, v in lr.items() if not k.startswith("head.")}) >= 10
    assert stem == pytest.approx(1e-3 * 0.5 ** depths)  # the input end, decayed once per depth
    # unset, nothing changes: one group at optim.lr, as every run before these keys
    plain = load_config(None, ["model.name=timm/tf_efficientnet_lite0"])
    assert [len(g["params"]) for g in param_groups(plain, model)] == [len(trainable)]


@pytest.mark.parametrize("name", ["resnet18", "cnn"])
def test_layer_decay_on_models_without_a_backbone_attribute(name):
    """torchvision's and the report's CNN: the head keeps lr, the last backbone layer gets lr * decay."""
    cfg = load_config(None, [f"model.name={name}", "model.pretrained=false", "optim.lr=1", "optim.layer_decay=0.5"])
    model, _ = build_model(cfg.model, 3)
    lr = {id(p): g["lr"] for g in param_groups(cfg, model) for p in g["params"]}
    head = {lr[id(p)] for n, p in model.named_parameters() if n.startswith(("fc.", "head."))}
    backbone = sorted({lr[id(p)] for n, p in model.named_parameters() if not n.startswith(("fc.", "head."))})
    assert head == {1.0} and backbone[-1] == 0.5 and len(backbone) >= 8  # per block, not per top-level child


def test_timm_pre_logits_width_and_a_no_weights_architecture():
    """MobileNetV3's pooled features pass a wider pre-logits layer: the head is sized to what it receives."""
    model, _ = build_model(ModelConfig(name="timm/mobilenetv3_small_050", pretrained=False, head="linear"), 5)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ConfigError, match="no pretrained weights for 'efficientnet_b0_gn'.*model.pretrained=false"):
        build_model(ModelConfig(name="timm/efficientnet_b0_gn"), 5)


def test_report_vit_takes_layer_decay_too():
    cfg = load_config(None, ["model.name=vit", "model.pretrained=false", "optim.layer_decay=0.9"])
    model, _ = build_model(cfg.model, 3)
    lrs = {g["lr"] for g in param_groups(cfg, model)}
    assert len(lrs) == 12 + 2 + 1  # embeddings, 12 layers, final norm, head


def test_hf_backbone_from_a_folder_loads_strictly_and_rebuilds_offline(tmp_path):
    folder = tiny_hf(tmp_path / "vit")
    cfg = ModelConfig(name=f"hf/{folder}", head="mldecoder")
    model, pre = build_model(cfg, 5)
    assert pre == Preprocess(32, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2), "bicubic")  # the image processor's
    from transformers import ViTModel

    saved = ViTModel.from_pretrained(folder, add_pooling_layer=False).state_dict()  # transformers' own loading
    mine = model.backbone.state_dict()
    assert mine.keys() == saved.keys() and all(torch.equal(mine[k], saved[k]) for k in mine)
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 5)  # other sizes: position embeddings interpolated

    # exported, the folder gone: the recorded config rebuilds it (HF_HUB_OFFLINE=1 in the tests)
    out = tmp_path / "model"
    meta = {"architecture": architecture(model, cfg, 5), "preprocess": pre.to_dict()}
    export_model(model.state_dict(), out, json.loads(json.dumps(meta)))
    for path in folder.iterdir():
        path.unlink()
    loaded, _ = load_exported(out)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_hf_weights_missing_keys_are_refused_and_half_precision_ones_load_as_float32(tmp_path):
    folder = tiny_hf(tmp_path / "vit")
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v.bfloat16() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model, _ = build_model(ModelConfig(name=f"hf/{folder}", head="linear"), 5)  # a bf16 checkpoint
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model(torch.rand(1, 3, 32, 32)).isfinite().all()
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MlicError, match=r"not this backbone's weights: 1 of its keys missing \(e.g. layers\.1\."):
        build_model(ModelConfig(name=f"hf/{folder}"), 5)


def test_grad_checkpointing_gives_the_same_gradients(tmp_path):
    folder = tiny_hf(tmp_path / "dinov2", "dinov2")
    for name in ("timm/tf_efficientnet_lite0", f"hf/{folder}"):
        grads = []
        for checkpointing in (False, True):
            torch.manual_seed(0)
            model, _ = build_model(ModelConfig(name=name, pretrained=name.startswith("hf/"), head="linear",
                                               grad_checkpointing=checkpointing), 3)
            model.train()(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))).sum().backward()
            grads.append([p.grad for p in model.parameters() if p.requires_grad])
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads)), name
