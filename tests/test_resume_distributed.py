"""Kill a 2-process run after a mid-epoch checkpoint, start it again: it must end as the uninterrupted
2-process run does (weights and validation metrics), under DDP and under DeepSpeed ZeRO-2, with the
default settings. Users resume preempted multi-GPU jobs this way."""

import json

import pytest
import yaml

from tests.conftest import assert_same_run, run_cmd

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
TINY = ["data.demo_images=300", "train.batch_size=16", "train.eval_batch_size=32", "train.epochs=2",
        "train.save_every_steps=4", "run.progress=false"]
LAUNCH = {"ddp": ("multi_cpu.yaml", {"ACCELERATE_USE_CPU": "true"}), "deepspeed": ("deepspeed_zero2_cpu.yaml", {})}


def _train(kind: str, run, port: int, fault: str | None = None):
    config, env = LAUNCH[kind]
    env = {**env, **({"MLIC_FAULT": fault} if fault else {})}
    return run_cmd(["accelerate", "launch", "--config_file", f"launch/{config}", "--main_process_port", str(port),
                    "train/cnn.py", "--config", "configs/demo.yaml", *TINY, f"run.output_dir={run}"], timeout=900, env=env)


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

    killed = _train(kind, resumed, port, fault="step:6")  # each rank dies at its 6th step, after the step-4 save
    assert killed.returncode != 0
    assert [p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith("epoch")] == ["epoch0001-step00000004"]
    done = _train(kind, resumed, port)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "epoch0001-step00000004" in done.stdout

    assert_same_run(straight, resumed, [1, 2])
