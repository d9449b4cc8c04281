"""Kill a 2-process run after a mid-epoch checkpoint, start it again: it must end as the uninterrupted
2-process run does (weights and validation metrics). Users resume preempted multi-GPU jobs this way.

Under DeepSpeed ZeRO-2 with the default settings; under DDP with every piece that keeps state or draws
randomness on (the EMA of the weights, ASL, RandAugment, Cutout, MixUp, CutMix, random resized crops, the balanced sampler's
`least_sampled` counts), on partial labels (a csv with a third of the entries unknown, masked out of the
loss and the metrics): the average must come back exactly too (YOLOX and DeiT both shipped EMA resume
bugs). There, the two newest checkpoints are spoiled before the resume (pickles planted in both ranks'
files with the manifest rewritten; rank 1's random states truncated): it falls back to the third. DeepSpeed
resumes only with train.trust_checkpoint_pickles. A full disk under 2 processes: every rank stops within
seconds, with one line."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlic.data.demo import demo_root
from tests.helpers import REPO, TINY, VAL_COMPARED, assert_same_run, metrics_lines, run_cmd
from tests.test_durability import plant
from tests.test_partial_labels import write_csv

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
OVERRIDES = ["train.eval_batch_size=32", "train.epochs=2", "train.save_every_steps=4", "run.progress=false"]
RECIPE = ["train.ema_decay=0.9", "loss.name=asl", "augment.policy=randaugment", "augment.cutout=0.5",
          "augment.mixup=0.4", "augment.cutmix=1.0", "train.select_metric=val_ema/mAP", "sampler.name=balanced",
          "augment.random_resized_crop=true"]  # from the 128-px cache to the demo's 64-px input
LAUNCH = {"ddp": ("multi_cpu.yaml", {"ACCELERATE_USE_CPU": "true"}, RECIPE),
          "deepspeed": ("deepspeed_zero2_cpu.yaml", {}, [])}


def _train(kind: str, run, port: int, fault: str | None = None, *extra: str):
    config, env, recipe = LAUNCH[kind]
    env = {**env, **({"MLIC_FAULT": fault} if fault else {})}
    if kind == "ddp":  # partial labels: the demo corpus as a csv with a third of the entries unknown
        partial = run.parent / "partial"
        if not partial.exists():
            partial.mkdir()
            write_csv(demo_root(300, 0), partial, "labels", hide=1 / 3, seed=0)
        recipe = [*recipe, "data.format=csv", f"data.root={partial}"]
    return run_cmd(["accelerate", "launch", "--config_file", f"launch/{config}", "--main_process_port", str(port),
                    "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, *recipe, f"run.output_dir={run}",
                    *extra], timeout=900, env=env)


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
    epoch1 = metrics_lines(straight)[:2]
    assert epoch1[0]["images"] == provenance["train_images"] // 32 * 32
    assert epoch1[1]["images"] == provenance["val_images"]
    state = json.loads(next((straight / "checkpoints").glob("epoch*/mlic_state.json")).read_text())
    assert state["identity"].get("partial_labels", False) == (kind == "ddp")  # the masked objective is on

    if kind == "deepspeed":
        killed = _train(kind, resumed, port, "step:6")  # each rank dies at its 6th step, after the step-4 save
        assert killed.returncode != 0
        assert [p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith("epoch")] == ["epoch0001-step00000004"]
        # DeepSpeed can only unpickle its engine state: resumed only with the opt-in that names the risk
        refused = _train(kind, resumed, port)
        assert refused.returncode != 0 and f'File "{REPO}/mlic' not in refused.stderr, refused.stderr[-3000:]
        assert refused.stderr.count("train.trust_checkpoint_pickles=true") == 1, refused.stderr[-3000:]
        done = _train(kind, resumed, port, None, "train.trust_checkpoint_pickles=true")
        newest = "epoch0001-step00000004"
    else:
        keep3 = "train.keep_checkpoints=3"
        killed = _train(kind, resumed, port, "step:13", keep3)  # saves at 4, 7 (epoch 1's end), 8, 12; then dies
        assert killed.returncode != 0
        kept = sorted(p.name for p in (resumed / "checkpoints").iterdir() if p.name.startswith("epoch"))
        assert kept == ["epoch0001-step00000007", "epoch0002-step00000008", "epoch0002-step00000012"]
        marker = tmp_path / "PAYLOAD_RAN"
        plant(resumed / "checkpoints" / kept[2], marker)  # both ranks' files, the manifest rewritten to match
        rng = resumed / "checkpoints" / kept[1] / "random_states_1.pkl"  # rank 1's own file, truncated
        rng.write_bytes(rng.read_bytes()[:100])
        done = _train(kind, resumed, port, None, keep3)
        assert not marker.exists()
        warnings = [x for x in done.stdout.splitlines() if x.startswith("warning: checkpoint")]
        assert len(warnings) == 2, done.stdout[-3000:]
        assert kept[2] in warnings[0] and "holds objects that a weights-only load refuses" in warnings[0]
        assert kept[1] in warnings[1] and "random_states_1.pkl has 100 bytes" in warnings[1]
        newest = kept[0]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and newest in done.stdout
    assert done.stdout.count("resumed from") == 1  # a run-level event: the main process says it, once per run

    assert_same_run(straight, resumed, [1, 2])  # val lines of the weights, and the exported model
    if kind == "ddp":  # the average: its own val lines, exported, and apart from the weights
        a, b = metrics_lines(straight, "val_ema"), metrics_lines(resumed, "val_ema")
        assert [x["epoch"] for x in a] == [x["epoch"] for x in b] == [1, 2]
        for x, y in zip(a, b):
            for key in VAL_COMPARED:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["epoch"], key)
        assert json.loads((resumed / "model" / "config.json").read_text())["weights"] == "ema"
        assert any(abs(r["loss"] - e["loss"]) > 1e-4 for r, e in zip(metrics_lines(straight, "val"), a))


def test_a_full_disk_under_two_processes_stops_every_rank_with_one_line_and_the_same_command_resumes(tmpfs):
    """The disk fills up right before the second checkpoint (the main process writes the shared files, each
    rank its random states): every rank learns it at the same point, the launcher ends within seconds with
    the error printed once, and after the disk grows the same command resumes from the first checkpoint."""
    run = tmpfs.path / "run"
    cmd = ["accelerate", "launch", "--config_file", "launch/multi_cpu.yaml", "--main_process_port", "29571",
           "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, f"run.output_dir={run}",
           f"data.cache_dir={tmpfs.path / 'cache'}"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "MLIC_FAULT": "fill-checkpoint:2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    ended = time.time()
    ballast = min(p.stat().st_mtime for p in tmpfs.path.rglob(".ballast-*"))  # when the disk became full
    assert proc.returncode != 0
    assert err.count("error: no space left on") == 1 and "writing checkpoint epoch0001-step00000007" in err, err[-3000:]
    assert f'File "{REPO}/mlic' not in err, err[-3000:]  # no traceback from the ranks (the launcher prints its own)
    print(f"from the full disk to the launcher's exit: {ended - ballast:.1f} s")  # docs/RELIABILITY.md
    assert ended - ballast < 30, ended - ballast  # every rank gone within seconds, no collective timeout
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("epoch")] == ["epoch0001-step00000004"]
    tmpfs.resize(160)  # grown in place, the ballast still there
    env.pop("MLIC_FAULT")
    done = run_cmd(cmd, timeout=600, env={"ACCELERATE_USE_CPU": "true", "MLIC_FAULT": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "epoch0001-step00000004" in done.stdout
    assert [x["epoch"] for x in metrics_lines(run, "val")] == [1, 2]
