"""Kill a 2-process run after a mid-epoch checkpoint, start it again: it must end as the uninterrupted
2-process run does (weights and validation metrics). Users resume preempted multi-GPU jobs this way.

Under DeepSpeed ZeRO-2 with the default settings; under DDP with every piece that keeps state or draws
randomness on (the EMA of the weights, ASL, RandAugment, Cutout, MixUp, CutMix, the balanced sampler's
`least_sampled` counts), on partial labels (a csv with a third of the entries unknown, masked out of the
loss and the metrics): the average must come back exactly too (YOLOX and DeiT both shipped EMA resume
bugs)."""

import json

import pytest
import yaml

from mlic.data.demo import demo_root
from tests.conftest import VAL_COMPARED, assert_same_run, run_cmd
from tests.test_partial_labels import write_csv

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
TINY = ["data.demo_images=300", "train.batch_size=16", "train.eval_batch_size=32", "train.epochs=2",
        "train.save_every_steps=4", "run.progress=false"]
RECIPE = ["train.ema_decay=0.9", "loss.name=asl", "augment.policy=randaugment", "augment.cutout=0.5",
          "augment.mixup=0.4", "augment.cutmix=1.0", "train.select_metric=val_ema/mAP", "sampler.name=balanced"]
LAUNCH = {"ddp": ("multi_cpu.yaml", {"ACCELERATE_USE_CPU": "true"}, RECIPE),
          "deepspeed": ("deepspeed_zero2_cpu.yaml", {}, [])}


def _train(kind: str, run, port: int, fault: str | None = None):
    config, env, recipe = LAUNCH[kind]
    env = {**env, **({"MLIC_FAULT": fault} if fault else {})}
    if kind == "ddp":  # partial labels: the demo corpus as a csv with a third of the entries unknown
        partial = run.parent / "partial"
        if not partial.exists():
            partial.mkdir()
            write_csv(demo_root(300, 0), partial, "labels", hide=1 / 3, seed=0)
        recipe = [*recipe, "data.format=csv", f"data.root={partial}"]
    return run_cmd(["accelerate", "launch", "--config_file", f"launch/{config}", "--main_process_port", str(port),
                    "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *recipe, f"run.output_dir={run}"],
                   timeout=900, env=env)


def _lines(run, split: str) -> list[dict]:
    return [x for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if x["split"] == split]


@pytest.mark.parametrize(("kind", "port"), [("ddp", 29541), ("deepspeed", 29543)])
def test_two_process_run_killed_after_a_mid_epoch_checkpoint_resumes_exactly(tmp_path, kind, port):
    if kind == "deepspeed":
        pytest.importorskip("deepspeed")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = _train(kind, straight, port)
    assert done.returncode == 0, done.stderr[-3000:]
    provenance = yaml.safe_load((straight / "config.yaml").read_text())["_provenance"]
    assert provenance["world_size"] == 2 and (kind == "deepspeed") == ("DEEPSPEED" in provenance["distributed_type"])
    # every rank's share counted once: whole steps of 2 x 16 in training, the whole val split in evaluation
    epoch1 = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()][:2]
    assert epoch1[0]["images"] == provenance["train_images"] // 32 * 32
    assert epoch1[1]["images"] == provenance["val_images"]
    state = json.loads(next((straight / "checkpoints").glob("epoch*/mlic_state.json")).read_text())
    assert state["identity"].get("partial_labels", False) == (kind == "ddp")  # the masked objective is on

    killed = _train(kind, resumed, port, fault="step:6")  # each rank dies at its 6th step, after the step-4 save
    assert killed.returncode != 0
    assert [p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith("epoch")] == ["epoch0001-step00000004"]
    done = _train(kind, resumed, port)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "epoch0001-step00000004" in done.stdout

    assert_same_run(straight, resumed, [1, 2])  # val lines of the weights, and the exported model
    if kind == "ddp":  # the average: its own val lines, exported, and apart from the weights
        a, b = _lines(straight, "val_ema"), _lines(resumed, "val_ema")
        assert [x["epoch"] for x in a] == [x["epoch"] for x in b] == [1, 2]
        for x, y in zip(a, b):
            for key in VAL_COMPARED:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["epoch"], key)
        assert json.loads((resumed / "model" / "config.json").read_text())["weights"] == "ema"
        assert any(abs(r["loss"] - e["loss"]) > 1e-4 for r, e in zip(_lines(straight, "val"), a))
