"""Real 2-process runs on the CPU (gloo) through `accelerate launch` and the shipped launch configs."""

import json

import numpy as np
import pytest
import yaml

from mlic.sampler import MultilabelBalancedSampler
from tests.helpers import TINY, metrics_lines, run_cmd

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def _launch(config: str, script: list[str], port: int):
    # multi_cpu.yaml needs ACCELERATE_USE_CPU=true; under DeepSpeed that variable would turn DeepSpeed off.
    env = {} if "deepspeed" in config else {"ACCELERATE_USE_CPU": "true"}
    return run_cmd(["accelerate", "launch", "--config_file", f"launch/{config}", "--main_process_port", str(port),
                    *script], timeout=900, env=env)


def test_balanced_sampler_is_split_across_two_ranks_without_overlap_or_loss(tmp_path):
    done = _launch("multi_cpu.yaml", ["tests/scripts/sampler_shards.py", str(tmp_path)], 29531)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    rng = np.random.default_rng(0)
    labels = (rng.random((203, 5)) < [0.6, 0.2, 0.1, 0.05, 0.02]).astype(np.uint8)
    labels[:5, 4] = 1
    reference = MultilabelBalancedSampler(labels, "least_sampled", num_samples=200, seed=4)
    for epoch in ("0", "1"):
        reference.set_epoch(int(epoch))
        order = list(reference)
        a, b = ranks[0]["record"][epoch], ranks[1]["record"][epoch]
        assert len(a) == len(b) == 100
        dealt = [i for k in range(10) for i in a[10 * k:10 * k + 10] + b[10 * k:10 * k + 10]]
        assert dealt == order  # the union is the global order; no overlap, nothing lost


def test_two_process_training_evaluates_exactly_the_val_set(tmp_path):
    run = tmp_path / "run"
    done = _launch("multi_cpu.yaml", ["train/cnn.py", "--config", "configs/demo.yaml", *TINY,
                                      "train.eval_batch_size=32", "train.epochs=1", f"run.output_dir={run}"], 29532)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["_provenance"]["world_size"] == 2
    lines = metrics_lines(run)
    assert [x["split"] for x in lines] == ["train", "val"]  # one writer: the main process
    assert lines[1]["images"] == cfg["_provenance"]["val_images"]
    steps = cfg["_provenance"]["train_images"] // 16 // 2
    assert lines[0]["images"] == steps * 16 * 2
    assert (run / "model" / "model.safetensors").exists()
    # evaluate under accelerate launch: each rank scores a share, one gather, the same figures as 1 process
    done = _launch("multi_cpu.yaml", ["-m", "mlic.cli", "evaluate", str(run / "model"), "--json", str(tmp_path / "two.json")],
                   29534)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_cmd(["mlic", "evaluate", str(run / "model"), "--json", str(tmp_path / "one.json")]).returncode == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["summary"] for n in ("one", "two"))
    assert two["images"] == one["images"] == lines[1]["images"]
    assert two["f1_macro"] == pytest.approx(one["f1_macro"], abs=1e-9) and two["mAP"] == pytest.approx(one["mAP"], abs=1e-9)
