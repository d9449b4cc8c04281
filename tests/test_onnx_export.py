"""`mlic export --onnx`: the ONNX file, fed as its metadata says, gives `mlic predict`'s probabilities and
decisions, for the demo CNN, a ResNet and a ViT (tiny, barely trained: agreement is what is tested)."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.config import load_config
from tests.helpers import REPO, TINY, fit_demo

TOLERANCE = 1e-4  # on probabilities; probs.csv rounds to 6 decimals (5e-7 of it)
IMAGES = 12
OVERRIDES = ["train.epochs=1", "train.max_steps_per_epoch=2"]  # after TINY


def _vit_folder(folder):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8).save_pretrained(folder)
    return folder


def _overrides(name, tmp):
    if name == "cnn":  # demo.yaml as shipped: cache 128, model input 64 (the graph resizes)
        return []
    if name == "cnn-uncached":  # the per-image path: the caller resizes to the model's 64
        return ["data.cache=off"]
    if name == "resnet18":
        return ["model.name=resnet18", "model.pretrained=false", "data.image_size=32"]
    return ["model.name=vit", "model.pretrained=false", f"model.weights={_vit_folder(tmp / 'vit')}"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The first validation images of the runs below (the demo corpus of 300, the run's own split), as
    im1.jpg ... in image-number order, as predict writes its rows."""
    from mlic.data.pipeline import load_split

    dataset, _, val_rows = load_split(load_config(REPO / "configs" / "demo.yaml", [*TINY, *OVERRIDES]))
    folder = tmp_path_factory.mktemp("predict") / "images"
    folder.mkdir()
    for n, row in enumerate(val_rows[:IMAGES], start=1):
        shutil.copy(dataset.decode.paths[row], folder / f"im{n}.jpg")
    return folder


def _model_dir(name, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(name)
    fit_demo(tmp / "run", *OVERRIDES, *_overrides(name, tmp))
    return tmp / "run" / "model"


@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory):
    return _model_dir("cnn", tmp_path_factory)


def _onnx_input(folder, contract, interpolation):
    """The graph's input made as `mlic.input` says, with PIL or torchvision only (no mlic)."""
    side = contract["shape"][-1]
    batch = []
    for n in range(1, IMAGES + 1):
        img = Image.open(folder / f"im{n}.jpg").convert("RGB")
        if "torchvision" in contract["prepare"]:
            from torchvision.transforms import v2

            chw = v2.functional.pil_to_tensor(img)
            batch.append(v2.functional.resize(chw, [side, side], v2.InterpolationMode(interpolation), antialias=True).numpy())
        else:
            if img.size != (side, side):
                img = img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=None)
            batch.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch))


def _predict(model_dir, folder, tmp_path):
    out, probs = tmp_path / "results.txt", tmp_path / "probs.csv"
    assert main(["predict", str(model_dir), str(folder), "--out", str(out), "--probs", str(probs)]) == 0
    with open(probs) as fh:
        rows = list(csv.reader(fh))
    assert [r[0] for r in rows[1:]] == [f"im{n}.jpg" for n in range(1, IMAGES + 1)]
    decisions = np.array([list(map(int, line.split())) for line in out.read_text().splitlines()])
    return rows[0][1:], np.array([list(map(float, r[1:])) for r in rows[1:]]), decisions


def _assert_onnx_matches_predict(model_dir, folder, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    file = tmp_path / "model.onnx"
    assert main(["export", str(model_dir), "--onnx", str(file)]) == 0
    line = capsys.readouterr().out
    assert str(file) in line and "MiB" in line and "max |diff|" in line  # the check ran and said so
    meta = json.loads((model_dir / "config.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(file)).metadata_props}
    names, thresholds = json.loads(props["mlic.label_names"]), np.array(json.loads(props["mlic.thresholds"]))
    assert names == meta["label_names"] and thresholds.tolist() == meta["thresholds"]
    contract = json.loads(props["mlic.input"])
    side = meta["config"]["data"]["cache_size"] if meta["cached"] else meta["preprocess"]["size"]
    assert (contract["name"], contract["dtype"], contract["shape"]) == ("images", "uint8", ["N", 3, side, side])

    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    batch = _onnx_input(folder, contract, json.loads(props["mlic.preprocess"])["interpolation"])
    (probs,) = session.run(["probabilities"], {"images": batch})
    single = np.concatenate([session.run(["probabilities"], {"images": batch[i:i + 1]})[0] for i in range(len(batch))])
    np.testing.assert_allclose(single, probs, rtol=0, atol=1e-5)  # batch 1 and batch 12 agree

    header, want, decisions = _predict(model_dir, folder, tmp_path)
    assert header == names and probs.shape == want.shape
    diff = float(np.abs(probs - want).max())
    assert diff <= TOLERANCE, diff
    clear = np.abs(probs - thresholds) > TOLERANCE  # near a threshold the 6-decimal file cannot decide
    assert clear.mean() > 0.5
    np.testing.assert_array_equal((probs >= thresholds)[clear], decisions.astype(bool)[clear])
    return diff


def test_cnn_onnx_matches_predict_and_resizes_in_the_graph(cnn_model, images, tmp_path, capsys):
    _assert_onnx_matches_predict(cnn_model, images, tmp_path, capsys)


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=pytest.mark.slow), "vit", "cnn-uncached"])
def test_onnx_matches_predict(name, images, tmp_path_factory, tmp_path, capsys):
    _assert_onnx_matches_predict(_model_dir(name, tmp_path_factory), images, tmp_path, capsys)


def test_opset_below_18_is_refused_when_the_graph_resizes(cnn_model, tmp_path, capsys):
    assert main(["export", str(cnn_model), "--onnx", str(tmp_path / "m.onnx"), "--opset", "17"]) == 1
    assert "--opset 18" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_missing_onnx_extra_is_named_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec answers None: as if not installed
    assert main(["export", str(tmp_path / "no-model"), "--onnx", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "onnxscript" in err and "pip install 'mlic[onnx]'" in err and "no-model" not in err


def test_base_install_imports_no_onnx_package():
    code = ("import sys, mlic.cli, mlic.serving.onnx_export, mlic.serving.inference; "
            "print([m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
