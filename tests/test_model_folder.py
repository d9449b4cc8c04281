"""A model folder edited by hand or copied from elsewhere is refused in one line naming the folder and the field,
by `mlic.load_model` and by every command that loads one; and `mlic predict --out` refuses a folder whose names
cannot say which row of the results file is which image."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

import mlic
from mlic.cli import main
from mlic.errors import MlicError
from mlic.serving.inference import predict_command


@pytest.fixture(scope="module")
def model_src(trained_demo) -> Path:
    return trained_demo / "model"


@pytest.fixture(scope="module")
def clean_images(demo_dir, tmp_path_factory) -> Path:
    """Two images of the course's numbering: predict gets as far as loading the model."""
    folder = tmp_path_factory.mktemp("clean")
    for n in (1, 2):
        shutil.copy(demo_dir / "images" / f"im{n}.jpg", folder / f"im{n}.jpg")
    return folder


def _meta(edit):
    def apply(folder: Path) -> None:
        meta = json.loads((folder / "config.json").read_text())
        edit(meta)
        (folder / "config.json").write_text(json.dumps(meta))  # NaN written as JSON's NaN, which json reads back
    return apply


def _drop(*keys):
    def edit(meta):
        inner = meta
        for key in keys[:-1]:
            inner = inner[key]
        del inner[keys[-1]]
    return _meta(edit)


def _set(value, *keys):
    def edit(meta):
        inner = meta
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value(inner[keys[-1]]) if callable(value) else value
    return _meta(edit)


def _fewer_labels(meta):  # config.json agrees with itself, the weights have 14 outputs
    meta["architecture"]["num_labels"] = 3
    meta["label_names"], meta["thresholds"] = meta["label_names"][:3], meta["thresholds"][:3]


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])


CASES = {  # id: (tampering, what the line must say)
    "invalid_json": (lambda f: (f / "config.json").write_text('{"label_names": ["a",'), "config.json is not valid JSON"),
    "not_an_object": (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json holds a list, not an object"),
    **{f"no_{key}": (_drop(key), f"config.json has no '{key}'")
       for key in ("architecture", "label_names", "thresholds", "preprocess", "config")},
    "no_architecture_name": (_drop("architecture", "name"), "no 'architecture.name'"),
    "no_num_labels": (_drop("architecture", "num_labels"), "no 'architecture.num_labels'"),
    "no_preprocess_std": (_drop("preprocess", "std"), "no 'preprocess.std'"),
    "no_preprocess_size": (_drop("preprocess", "size"), "no 'preprocess.size'"),
    "architecture_type": (_set("cnn", "architecture"), "'architecture' is a string, not an object"),
    "num_labels_type": (_set("14", "architecture", "num_labels"), "'architecture.num_labels' is '14'"),
    "head_unknown": (_set("big", "architecture", "head"), "'architecture.head' is 'big'"),
    "model_unknown": (_set("resnet9000", "architecture", "name"), "'resnet9000' is not a model mlic knows"),
    "label_names_type": (_set({"a": 1}, "label_names"), "'label_names' is {\"a\": 1}, not a list of label names"),
    "label_names_length": (_set(lambda v: v[:-1], "label_names"), "'label_names' has 13 names for the model's 14 outputs"),
    "label_names_repeated": (_set(lambda v: ["dog", *v[1:]], "label_names"), "'label_names' repeats dog"),
    "thresholds_type": (_set("0.5", "thresholds"), "'thresholds' is \"0.5\", not a list of numbers"),
    "thresholds_element_type": (_set(lambda v: [*v[:2], "high", *v[3:]], "thresholds"), "not numbers: car='high'"),
    "thresholds_length": (_set(lambda v: v[:3], "thresholds"), "'thresholds' has 3 values for 14 labels"),
    "thresholds_nan": (_set(lambda v: [*v[:2], math.nan, *v[3:]], "thresholds"), "'thresholds' outside [0, 1]: car=nan"),
    "thresholds_above_1": (_set(lambda v: [*v[:2], 1.5, *v[3:]], "thresholds"), "outside [0, 1]: car=1.5"),
    "thresholds_negative": (_set(lambda v: [-0.1, *v[1:]], "thresholds"), "outside [0, 1]: baby=-0.1"),
    "thresholds_all_bad": (_set([2] * 14, "thresholds"), "baby=2, bird=2, car=2, clouds=2, dog=2 and 9 more"),
    "preprocess_type": (_set([64], "preprocess"), "'preprocess' is a list, not an object"),
    "size_type": (_set("64", "preprocess", "size"), "'preprocess.size' is '64'"),
    "std_zero": (_set([0, 0.2, 0.2], "preprocess", "std"), "'preprocess.std' is [0, 0.2, 0.2], not 3 positive numbers"),
    "std_negative": (_set([0.2, -0.2, 0.2], "preprocess", "std"), "'preprocess.std' is [0.2, -0.2, 0.2]"),
    "std_nan": (_set([0.2, math.nan, 0.2], "preprocess", "std"), "'preprocess.std' is [0.2, NaN, 0.2]"),
    "mean_length": (_set([0.5, 0.5], "preprocess", "mean"), "'preprocess.mean' is [0.5, 0.5], not 3 finite numbers"),
    "interpolation": (_set("nearest", "preprocess", "interpolation"), "'preprocess.interpolation' is 'nearest'"),
    "cached_type": (_set("yes", "cached"), "'cached' is 'yes', not true or false"),
    "config_type": (_set(3, "config"), "'config' is a number, not the run's config"),
    "config_value": (_set("big", "config", "data", "cache_size"), "'config' (the run's training config): config key "
                                                                  "'data.cache_size'"),
    "several": (_meta(lambda m: (m.pop("preprocess"), m.update(thresholds=[0.5]))),
                "config.json has no 'preprocess'; config.json 'thresholds' has 1 value for 14 labels"),
    "timm_hf_hub": (_set("timm/hf-hub:org/model", "architecture", "name"),
                    "'timm/hf-hub:org/model' is a Hugging Face hub model, whose definition timm fetches from the "
                    "network; a model folder must rebuild offline"),
    "hf_hub_id": (_set("hf/org/model", "architecture", "name"),
                  "hf/org/model would be rebuilt from the Hugging Face hub (org/model); a model folder must rebuild "
                  "offline"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors: not an exported model"),
    "truncated_weights": (_truncate, "model.safetensors cannot be read as safetensors"),
    "weights_of_other_head": (_meta(_fewer_labels), "model.safetensors does not fit the architecture in config.json "
                                                    "(cnn, 3 outputs): tensors 2 of another shape: head.4.weight"),
    "weights_of_other_model": (_set("resnet18", "architecture", "name"),
                               "model.safetensors does not fit the architecture in config.json (resnet18, 14 outputs)"),
}


@pytest.fixture(params=sorted(CASES))
def tampered(request, model_src, tmp_path) -> tuple[Path, str]:
    """(a copy of the trained model folder with one thing wrong, the phrase its refusal must hold)."""
    folder = Path(shutil.copytree(model_src, tmp_path / "model"))
    edit, expected = CASES[request.param]
    edit(folder)
    return folder, expected


def _one_error_line(err: str, folder: Path, expected: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: model folder {folder}: ") and expected in errors[0], errors[0]


def test_load_model_refuses_in_one_line(tampered):
    folder, expected = tampered
    with pytest.raises(MlicError) as info:
        mlic.load_model(folder, device="cpu")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"model folder {folder}: "), message
    assert expected in message, message


def test_predict_evaluate_and_export_refuse_in_one_error_line(tampered, clean_images, tmp_path, capsys):
    folder, expected = tampered
    out = tmp_path / "results.txt"
    assert main(["predict", str(folder), str(clean_images), "--out", str(out)]) == 1
    _one_error_line(capsys.readouterr().err, folder, expected)
    assert not out.exists()
    assert main(["evaluate", str(folder)]) == 1
    _one_error_line(capsys.readouterr().err, folder, expected)
    if importlib.util.find_spec("onnxscript") and importlib.util.find_spec("onnxruntime"):
        onnx = tmp_path / "m.onnx"
        assert main(["export", str(folder), "--onnx", str(onnx)]) == 1
        _one_error_line(capsys.readouterr().err, folder, expected)
        assert not onnx.exists()


def _images(folder: Path, demo_dir: Path, names: list[str]) -> Path:
    folder.mkdir()
    for k, name in enumerate(names, start=1):
        Image.open(demo_dir / "images" / f"im{k}.jpg").save(folder / name)
    return folder


def test_predict_out_refuses_names_that_do_not_number_the_rows(model_src, demo_dir, tmp_path, capsys):
    folder = _images(tmp_path / "photos", demo_dir, ["im1.jpg", "im01.jpg", "im3.jpg", "cat.png"])
    out = tmp_path / "results.txt"
    assert main(["predict", str(model_src), str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "1 not named im<N>.<ext>: cat.png" in line and "im01.jpg and im1.jpg (1)" in line

    many = _images(tmp_path / "many", demo_dir, ["im1.jpg", *(f"{c}.png" for c in "abcdefg")])
    assert main(["predict", str(model_src), str(many), "--out", str(out)]) == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "7 not named im<N>.<ext>: a.png, b.png, c.png, d.png, e.png and 2 more" in line


def test_predict_out_warns_of_gaps_in_the_numbering(model_src, demo_dir, tmp_path, capsys):
    model = Path(shutil.copytree(model_src, tmp_path / "model"))  # as exported before `cached`, `interpolation`
    _meta(lambda m: (m.pop("cached"), m["preprocess"].pop("interpolation"), m["architecture"].pop("head")))(model)
    folder = _images(tmp_path / "test", demo_dir, ["im20001.jpg", "im20002.jpg", "im20005.jpg", "im20007.jpg"])
    out = tmp_path / "results.txt"
    assert main(["predict", str(model), str(folder), "--out", str(out)]) == 0  # optional fields default
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "no image for im20003-im20004, im20006 between im20001.jpg and im20007.jpg" in warnings[0]
    assert len(out.read_text().splitlines()) == 4


def test_without_out_every_photo_is_predicted_and_named(model_src, demo_dir, tmp_path, monkeypatch, capsys):
    """--probs alone: any names, each row named, im<N> of any image type in number order; results.txt beside it
    only when the numbering is clean. Neither --out nor --probs: results.txt as before when the numbering is
    clean, refused when it is not."""
    monkeypatch.chdir(tmp_path)
    folder = _images(tmp_path / "photos", demo_dir, ["im10.jpg", "im2.png", "im01.jpg", "cat.png", "im1.jpg"])
    probs = tmp_path / "probs.csv"
    assert predict_command(str(model_src), str(folder), None, str(probs), False, 8, 0) == 0
    rows = [line.split(",")[0] for line in probs.read_text().splitlines()[1:]]
    assert rows == ["im01.jpg", "im1.jpg", "im2.png", "im10.jpg", "cat.png"]
    assert not (tmp_path / "results.txt").exists()
    assert "results.txt not written" in capsys.readouterr().err

    with pytest.raises(MlicError, match=r"leave out --out and write --probs FILE.*results\.txt is written when --out"):
        predict_command(str(model_src), str(folder), None, None, False, 8, 0)
    clean = _images(tmp_path / "clean", demo_dir, ["im1.jpg", "im2.jpg"])
    assert predict_command(str(model_src), str(clean), None, None, False, 8, 0) == 0
    assert len((tmp_path / "results.txt").read_text().splitlines()) == 2
    (tmp_path / "results.txt").unlink()
    assert predict_command(str(model_src), str(clean), None, str(probs), False, 8, 0) == 0
    assert len((tmp_path / "results.txt").read_text().splitlines()) == 2  # beside --probs, as before
    digits = _images(tmp_path / "digits", demo_dir, ["im1.jpg", "im\u0661\u0662.jpg"])  # Arabic-Indic 12: no number
    with pytest.raises(MlicError, match="not named im<N>"):
        predict_command(str(model_src), str(digits), str(tmp_path / "r.txt"), None, False, 8, 0)


def test_a_training_key_out_of_todays_range_does_not_lock_an_old_folder(model_src, tmp_path):
    """The saved training config is read for types only: a range tightened later (train.log_every=0 was
    allowed once) must not make a model folder of an older run unreadable."""
    folder = Path(shutil.copytree(model_src, tmp_path / "model"))
    _set(0, "config", "train", "log_every")(folder)
    assert mlic.load_model(folder, device="cpu").label_names


def test_a_size_the_network_cannot_take_is_one_line(model_src, tmp_path):
    folder = Path(shutil.copytree(model_src, tmp_path / "model"))
    _set(1, "preprocess", "size")(folder)
    with pytest.raises(MlicError, match=r"cannot take the 1x1 images of config.json 'preprocess.size'") as info:
        mlic.load_model(folder, device="cpu")
    assert "\n" not in str(info.value)
