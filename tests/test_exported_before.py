"""Model folders exported before the backbone adapters (tests/fixtures/exported_0088e5a, made by that commit's
code: its README) load, predict and evaluate through today's code as they did then: the same logits, the same
weight names and shapes, the same architecture records written. Each folder is its config.json as exported then,
with weights made from the recorded names and shapes (synthetic.py): the logits of then were computed by that
commit's code on exactly these weights (outputs.py)."""

import json

import pytest
import torch

import mlic
from mlic.cli import main
from mlic.config import ModelConfig
from mlic.data.demo import write_demo_data
from mlic.models import architecture, build_model
from mlic.models.export import INFERENCE, load_exported
from tests.fixtures.exported_0088e5a.synthetic import model_folder
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "exported_0088e5a"
FOLDERS = ("cnn", "timm_test_vit", "hf_vit", "vit")  # exported after 1 epoch on 32 demo images (make.py)
HEAD_KEYS = ("head", "head_batchnorm", "dropout", "mldecoder_groups", "mldecoder_dim")


def rebuilt_config(arch: dict) -> ModelConfig:
    return ModelConfig(name=arch["name"], pretrained=False, **{k: arch[k] for k in HEAD_KEYS})


def written(model, arch: dict) -> dict:
    """The architecture record today's code writes for `model`, as config.json holds it (JSON's string keys)."""
    return json.loads(json.dumps(architecture(model, rebuilt_config(arch), arch["num_labels"])))


@pytest.mark.parametrize("name", FOLDERS)
def test_a_folder_exported_before_gives_the_logits_it_gave_then_and_predicts(name, tmp_path):
    folder = model_folder(name, tmp_path / name)
    model, meta = load_exported(folder, INFERENCE)
    side = meta["preprocess"]["size"]
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    then = torch.tensor(json.loads((FIXTURES / "outputs.json").read_text())[name])
    with torch.no_grad():
        torch.testing.assert_close(model(x), then, rtol=1e-5, atol=1e-5)
    # the record today's code writes for the rebuilt model is the one written then
    assert written(model, meta["architecture"]) == meta["architecture"]
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    predictions = mlic.load_model(folder, device="cpu", workers=0).predict([image, image.flip(-1)])
    assert predictions.probabilities.shape == (2, 14) and predictions.label_names == meta["label_names"]


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "vit"])
def test_the_models_too_large_to_keep_rebuild_with_the_weight_names_of_then(name):
    """torchvision's and ViT-B's folders were not kept (45-330 MB): their records and every weight's name and
    shape as that code built them are, and today's rebuild from the record has exactly these."""
    then = json.loads((FIXTURES / "layouts.json").read_text())[name]
    arch = then["architecture"]
    model, preprocess = build_model(rebuilt_config(arch), arch["num_labels"], exported=arch)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == then["weights"]
    assert preprocess.to_dict() == then["preprocess"]
    assert written(model, arch) == arch


def test_mlic_evaluate_reads_a_folder_exported_before(tmp_path):
    data = write_demo_data(tmp_path / "demo", images=16, seed=0)
    out = tmp_path / "eval.json"
    folder = model_folder("timm_test_vit", tmp_path / "timm_test_vit")
    assert main(["evaluate", str(folder), str(data), "--split", "all", "--json", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())["summary"]["mAP"] <= 1
