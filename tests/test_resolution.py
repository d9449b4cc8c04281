"""Real photos at the resolution their backbones expect: `data.cache_size: auto` from the model and the image
headers, `data.resize` squash / crop / pad alike in training, evaluation, `predict` and ONNX, and timm ViTs at
another input size than their weights'."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import mlic
from mlic.cli import main
from mlic.config import ModelConfig, load_config
from mlic.data.cache import Square, cache_path
from mlic.data.pipeline import load_split
from mlic.data.resolution import resolve_cache_size
from mlic.errors import MlicError
from mlic.models import Preprocess, build_model
from mlic.serving.inference import evaluate_model
from tests.helpers import REPO, val_lines

COURSE = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.name != "finetune.yaml" and p.parent.name != "gpu"
                and p.name != "gpu.yaml")


def _preprocess(cfg) -> Preprocess:
    """The model's preprocessing as build_run completes it (the models are the report's: built without weights)."""
    import dataclasses

    _, pre = build_model(dataclasses.replace(cfg.model, pretrained=False), 14)
    return dataclasses.replace(pre, size=cfg.data.image_size or pre.size, crop_pct=cfg.data.crop_pct or pre.crop_pct)


def test_every_course_and_table_config_caches_at_128_in_the_same_file_as_before(demo_dir):
    """The course corpus is 128 x 128 (here its stand-in, the demo corpus): auto must not move any report run."""
    assert len(COURSE) >= 15
    by_model: dict[str, Preprocess] = {}
    for path in COURSE:
        cfg = load_config(path, [f"data.root={demo_dir}"])
        assert cfg.data.cache_size in ("auto", 128) and cfg.data.resize == "squash", path  # demo.yaml: 128
        split = load_split(cfg)
        pre = by_model.setdefault(f"{cfg.model.name}-{cfg.data.image_size}", _preprocess(cfg))
        resolved, _ = resolve_cache_size(cfg, split.dataset, np.union1d(split.train_idx, split.val_idx), pre)
        assert resolved.data.cache_size == 128, path
        square = Square(128, resolved.data.resize, resolved.data.background)
        assert cache_path(split.dataset, square, "c") == cache_path(split.dataset, 128, "c"), path  # today's file


def _photos(out: Path, demo: Path, size: tuple[int, int]) -> Path:
    """The demo corpus with every image resized to `size` (W, H): non-square photos larger than 128."""
    shutil.copytree(demo / "annotations", out / "annotations")
    (out / "images").mkdir(parents=True)
    for path in sorted((demo / "images").iterdir()):
        Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out / "images" / path.name, quality=95)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory, demo_dir):
    return _photos(tmp_path_factory.mktemp("photos") / "wide", demo_dir, (160, 96))


def test_auto_caches_at_the_input_side_or_the_crop_source_but_never_above_the_images(photos):
    cfg = load_config(None, [f"data.root={photos}", "model.name=timm/mobilenetv3_small_050", "model.pretrained=false"])
    split = load_split(cfg)
    rows = np.union1d(split.train_idx, split.val_idx)
    pre = Preprocess(64, (0.5,) * 3, (0.5,) * 3, crop_pct=0.8)
    assert resolve_cache_size(cfg, split.dataset, rows, pre)[0].data.cache_size == 64  # the input side
    crop = load_config(None, [f"data.root={photos}", "data.resize=crop"])
    assert resolve_cache_size(crop, split.dataset, rows, pre)[0].data.cache_size == 80  # 64 / 0.8
    big = Preprocess(224, (0.5,) * 3, (0.5,) * 3)
    capped, note = resolve_cache_size(cfg, split.dataset, rows, big)
    assert capped.data.cache_size == 96 and "at most 96 px on their shorter side" in note  # the images' 96
    fixed, note = resolve_cache_size(load_config(None, ["data.cache_size=128"]), split.dataset, rows, big)
    assert fixed.data.cache_size == 128 and "data.cache_size=128" in note
    assert resolve_cache_size(load_config(None, ["data.cache_size=128"]), split.dataset, rows, pre)[1] is None


@pytest.mark.slow
def test_a_timm_backbone_on_larger_photos_caches_at_its_input_and_records_the_number(photos, tmp_path):
    run = tmp_path / "run"
    code = main(["train", "timm/mobilenetv3_small_050", f"data.root={photos}", "model.pretrained=false",
                 "data.image_size=80", "train.epochs=1", "train.batch_size=16", "train.max_steps_per_epoch=2",
                 "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}", "run.progress=false",
                 f"run.output_dir={run}"])
    assert code == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]["cache_size"]
    meta = json.loads((run / "model" / "config.json").read_text())
    assert recorded == meta["config"]["data"]["cache_size"] == 80  # the input side; never "auto"
    assert [p.name.split("-")[1] for p in (tmp_path / "cache").glob("*.u8")] == ["300x80.u8"]


def _train(root: Path, run: Path, resize: str, *extra: str) -> None:
    code = main(["train", "cnn", "--config", "configs/demo.yaml", f"data.root={root}", f"data.resize={resize}",
                 "data.image_size=48", "data.crop_pct=0.75", "data.cache_size=auto", "train.epochs=1", "train.batch_size=16",
                 "train.max_steps_per_epoch=3", "run.progress=false", f"run.output_dir={run}", *extra])
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_each_resize_policy_is_the_same_in_training_evaluate_predict_and_onnx(photos, tmp_path, resize):
    run = tmp_path / "run"
    _train(photos, run, resize, "data.background='#204060'")
    meta = json.loads((run / "model" / "config.json").read_text())
    side = 64 if resize == "crop" else 48  # a crop samples from 48 / 0.75
    assert meta["config"]["data"]["resize"] == resize and meta["config"]["data"]["cache_size"] == side
    summary, _, probs, _, dataset, rows = evaluate_model(run / "model", None, "val")
    line = val_lines(run)[-1]  # the engine's own evaluation of its val split
    for key in ("mAP", "f1_macro", "f1_micro", "accuracy"):
        assert summary[key] == pytest.approx(line[key], abs=1e-5), key
    paths = [dataset.decode.paths[r] for r in rows[:12]]
    model = mlic.load_model(run / "model", device="cpu")
    np.testing.assert_allclose(model.predict(paths).probabilities, probs[:12], atol=1e-5)
    if resize != "crop":
        return
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from PIL import ImageOps

    assert main(["export", str(run / "model"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    contract = json.loads(session.get_modelmeta().custom_metadata_map["mlic.input"])
    assert contract["resize"] == "crop" and "ImageOps.fit" in contract["prepare"]
    squares = np.stack([np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (side, side), Image.Resampling.BILINEAR))
                        .transpose(2, 0, 1) for p in paths])  # what the contract says the caller does
    onnx_probs = session.run(None, {"images": squares})[0]
    np.testing.assert_allclose(onnx_probs, probs[:12], atol=1e-4)


@pytest.mark.slow
def test_a_timm_vit_fine_tunes_and_predicts_at_320_from_224_weights_loaded_strictly(tmp_path, demo_dir):
    import timm

    weights = tmp_path / "vit224.safetensors"
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    cfg = ModelConfig(name="timm/vit_tiny_patch16_224", weights=str(weights), head="linear")
    model, pre = build_model(cfg, 14, image_size=320)
    assert pre.size == 320 and model.backbone.pos_embed.shape == (1, 401, 192)  # 20 x 20 patches + the class token
    ours, theirs = model.backbone.state_dict(), source.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k != "pos_embed")  # every other weight, as saved
    grid = theirs["pos_embed"][:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    resampled = torch.nn.functional.interpolate(grid, size=(20, 20), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(ours["pos_embed"][:, 1:], resampled.permute(0, 2, 3, 1).reshape(1, 400, 192), atol=1e-4,
                               rtol=1e-4)  # timm's resample_abs_pos_embed: bicubic over the patch grid
    bad = tmp_path / "bad.safetensors"
    save_file({k: v for k, v in theirs.items() if k != "blocks.0.norm1.weight"}, str(bad))
    with pytest.raises(MlicError, match="1 of its keys missing"):
        build_model(ModelConfig(name="timm/vit_tiny_patch16_224", weights=str(bad), head="linear"), 14, image_size=320)

    run = tmp_path / "run"
    code = main(["train", "timm/vit_tiny_patch16_224", f"data.root={demo_dir}", f"model.weights={weights}",
                 "model.head=linear", "data.image_size=320", "train.epochs=1", "train.batch_size=8",
                 "train.eval_batch_size=32", "train.max_steps_per_epoch=2", "data.num_workers=0", "run.progress=false",
                 f"run.output_dir={run}"])
    assert code == 0
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["preprocess"]["size"] == 320 and meta["architecture"]["timm"]["kwargs"] == {"img_size": 320}
    assert load_file(run / "model" / "model.safetensors")["backbone.pos_embed"].shape == (1, 401, 192)
    _, _, probs, _, dataset, rows = evaluate_model(run / "model", None, "val")
    paths = [dataset.decode.paths[r] for r in rows[:4]]
    predicted = mlic.load_model(run / "model", device="cpu").predict(paths)
    np.testing.assert_allclose(predicted.probabilities, probs[:4], atol=1e-5)  # rebuilt at 320 from the record
    pytest.importorskip("onnxruntime")
    import onnxruntime

    assert main(["export", str(run / "model"), "--onnx", str(tmp_path / "vit.onnx")]) == 0  # 128-px squares in
    squares = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])  # already 128
    onnx_probs = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx")).run(None, {"images": squares})[0]
    np.testing.assert_allclose(onnx_probs, probs[:4], atol=1e-4)  # resized to 320 inside the graph


def test_random_resized_crop_draws_per_image_from_the_step_generator_on_both_paths():
    from mlic.config import AugmentConfig
    from mlic.data.transforms import DeviceTransform, per_image_transform

    aug = AugmentConfig(random_resized_crop=True, crop_scale=[0.2, 0.5], hflip=0, vflip=0, brightness=0, contrast=0,
                        saturation=0, hue=0)
    images = (torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    crops = DeviceTransform(48, (0.5,) * 3, (0.5,) * 3, aug)
    a, b = (crops(images, torch.Generator().manual_seed(s)) for s in (1, 1))
    assert a.shape == (4, 3, 48, 48) and torch.equal(a, b)  # the step's generator alone decides (exact resume)
    assert not torch.equal(a, crops(images, torch.Generator().manual_seed(2)))
    plain = DeviceTransform(48, (0.5,) * 3, (0.5,) * 3, AugmentConfig(hflip=0, vflip=0, brightness=0, contrast=0,
                                                                       saturation=0, hue=0))
    assert (a - plain(images, torch.Generator().manual_seed(1))).abs().mean() > 0.1  # a crop, not the whole square
    per_image = per_image_transform(48, (0.5,) * 3, (0.5,) * 3, aug)
    assert per_image(Image.new("RGB", (160, 96), "red")).shape == (3, 48, 48)


def test_a_resumed_run_keeps_the_cache_side_it_started_with(photos, tmp_path, capsys):
    """A run folder from before auto recorded 128; auto would now resolve another side. Halfway through a run the
    model's inputs must not change."""
    run = tmp_path / "run"
    _train(photos, run, "squash")
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["cache_size"] == 48
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("cache_size: 48", "cache_size: 64"))  # as an older start wrote
    _train(photos, run, "squash", "train.epochs=2")
    out = capsys.readouterr().out
    assert "resumed from" in out and "keeps the 64 px this run started with" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["cache_size"] == 64  # what this start used
