"""The backbone adapter contract (mlic.models.backbones.adapter), checked on every registered adapter and on a toy one
that this file defines and registers without touching any other module: build, pooled features as wide as it
says, spatial tokens, layer ids for every parameter, valid preprocessing, and an exported model that rebuilds
from its record alone to the same outputs. Then a run trains the toy backbone. Tiny builds, no network."""

import json

import pytest
import torch
from torch import nn

from mlic.config import ModelConfig, load_config
from mlic.errors import ConfigError
from mlic.models import architecture, backbone_depths, build_model, head_prefix
from mlic.models.backbones import ADAPTERS, Adapter, Backbone, Preprocess, adapter_for, layer_ids, register
from mlic.models.export import export_model, load_exported
from mlic.models.model_folder import ModelFolderError
from tests.helpers import REPO
from tests.test_backbones import tiny_hf


class ToyAdapter(Adapter):
    """`toy/8x16`: one strided conv-BN-ReLU stage per width. The widths are recorded, and a rebuild reads them
    from the record, not the name. `model.weights`: a state dict file, loaded strictly."""

    name, prefix, source = "toy", "toy/", "<width>x<width>..."

    def build(self, source, cfg, image_size, exported) -> Backbone:
        widths = exported["toy"]["widths"] if exported else [int(w) for w in source.split("x")]
        stages, channels = [], 3
        for width in widths:
            stages.append(nn.Sequential(nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width),
                                        nn.ReLU()))
            channels = width
        net = nn.Sequential(*stages)
        if cfg.pretrained and cfg.weights and exported is None:
            net.load_state_dict(torch.load(cfg.weights, weights_only=True))
        return Backbone(net, Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), {"toy": {"widths": widths}})

    def tokens(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H * W, C)

    def pooled(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(backbone, x).mean(dim=1)

    def record_problems(self, source, arch) -> list[str]:
        widths = (arch.get("toy") or {}).get("widths")
        if isinstance(widths, list) and widths and all(isinstance(w, int) and w > 0 for w in widths):
            return []
        return [f"'architecture.toy.widths' is {widths!r}, not a list of positive whole numbers"]


TOY = ToyAdapter()


@pytest.fixture
def toy():
    """The toy adapter registered for one test: nothing else in the suite sees it."""
    register(TOY)
    yield TOY
    del ADAPTERS[TOY.name]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return tiny_hf(tmp_path_factory.mktemp("hf") / "vit")


def smallest(adapter: str, hf_folder) -> tuple[ModelConfig, int | None]:
    """The smallest build of each adapter (a new adapter adds its own line), not pretrained, and the
    data.image_size it is built for."""
    tiny = {"cnn": ("cnn", {}, None), "torchvision": ("resnet18", {}, None),
            "vit": ("vit", {"weights": str(hf_folder)}, None), "timm": ("timm/test_vit", {}, 64),
            "hf": (f"hf/{hf_folder}", {}, None), "toy": ("toy/8x16", {}, None)}
    assert adapter in tiny, f"adapter {adapter!r} is registered: give its smallest build here"
    name, keys, image_size = tiny[adapter]
    return ModelConfig(name=name, pretrained=False, **keys), image_size


def check_backbone(adapter: Adapter, cfg: ModelConfig, image_size: int | None) -> None:
    """The adapter's own members on its bare backbone."""
    found, source = adapter_for(cfg.name)
    assert found is adapter
    built = adapter.build(source, cfg, image_size, None)
    backbone, pre = built.module.eval(), built.preprocess
    assert pre.size >= 1 and len(pre.mean) == len(pre.std) == 3 and min(pre.std) > 0 and 0 < pre.crop_pct <= 1
    assert pre.interpolation in ("bilinear", "bicubic")
    x = torch.rand(2, 3, pre.size, pre.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert adapter.pooled(backbone, x).shape == (2, adapter.width(backbone, False, pre.size))
        if adapter.has_tokens:
            tokens = adapter.tokens(backbone, x)
            assert tokens.dim() == 3 and tokens.shape[0] == 2 and tokens.shape[1] >= 1
            assert tokens.shape[2] == adapter.width(backbone, True, pre.size)
    names = [n for n, _ in backbone.named_parameters()]
    assert set(adapter.layer_ids(backbone, names)) == set(names)
    depth, depths = layer_ids(backbone, adapter.name)
    assert set(depth) == set(names) and depths >= 2 and set(depth.values()) == set(range(depths))
    assert isinstance(built.record, dict) and json.dumps(built.record)  # config.json can hold it


def check_model(adapter: Adapter, cfg: ModelConfig, image_size: int | None, tmp_path) -> None:
    """Through mlic: a model with each head the adapter can feed, its layer decay groups, and its export
    rebuilt from the record alone (the folder's checks included) to the same outputs."""
    for head in ("linear", "mldecoder") if adapter.has_tokens else ("report",):
        cfg.head, cfg.mldecoder_dim = head, 16
        model, pre = build_model(cfg, 5, image_size=image_size)
        x = torch.rand(2, 3, pre.size, pre.size, generator=torch.Generator().manual_seed(1))
        out = model.eval()(x)
        assert out.shape == (2, 5)
        depth, _ = backbone_depths(model, cfg.name)
        assert set(depth) == {n for n, _ in model.named_parameters() if not n.startswith(head_prefix(model))}
        arch = architecture(model, cfg, 5)
        assert adapter.record_problems(adapter_for(cfg.name)[1], arch) == []
        folder = tmp_path / head
        export_model(model.state_dict(), folder, json.loads(json.dumps({"architecture": arch,
                                                                         "preprocess": pre.to_dict()})))
        loaded, _ = load_exported(folder)
        assert list(loaded.state_dict()) == list(model.state_dict())
        assert torch.equal(loaded(x), out)


@pytest.mark.parametrize("name", [*ADAPTERS, "toy"])
def test_every_adapter_keeps_the_contract(name, hf_folder, tmp_path, request):
    if name == "toy":
        request.getfixturevalue("toy")
    adapter = ADAPTERS[name]
    cfg, image_size = smallest(name, hf_folder)
    check_backbone(adapter, cfg, image_size)
    check_model(adapter, cfg, image_size, tmp_path)


def test_the_toy_registers_once_and_its_record_is_checked_in_a_model_folder(toy, tmp_path):
    with pytest.raises(ValueError, match="'toy'"):
        register(ToyAdapter())  # the same name and prefix again
    with pytest.raises(ConfigError, match="'toy/' names no model after 'toy/'"):
        build_model(ModelConfig(name="toy/"), 3)
    cfg = ModelConfig(name="toy/8", head="linear")
    model, pre = build_model(cfg, 3)
    arch = architecture(model, cfg, 3) | {"toy": {"widths": "8"}}  # a record edited by hand
    export_model(model.state_dict(), tmp_path / "model", {"architecture": arch, "preprocess": pre.to_dict()})
    with pytest.raises(ModelFolderError, match=r"config.json 'architecture.toy.widths' is '8', not a list"):
        load_exported(tmp_path / "model")


def test_a_run_trains_the_toy_backbone_with_layer_decay_and_exports_it(toy, tmp_path):
    from mlic.training.engine import fit

    run = tmp_path / "run"
    fit(load_config(REPO / "configs" / "demo.yaml", [
        "model.name=toy/8x16", "model.head=mldecoder", "model.mldecoder_dim=16", "model.mldecoder_groups=4",
        "optim.layer_decay=0.5", "data.demo_images=48", "data.image_size=32", "train.epochs=1",
        "train.batch_size=16", "run.progress=false", "run.trackers=[]", f"run.output_dir={run}"]))
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["architecture"]["toy"] == {"widths": [8, 16]} and meta["preprocess"]["size"] == 32
    loaded, _ = load_exported(run / "model")
    assert loaded(torch.rand(1, 3, 32, 32)).shape == (1, 14)
