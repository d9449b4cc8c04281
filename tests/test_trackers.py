"""MLflow and W&B through accelerate's trackers, for real and offline (an MLflow file store, W&B offline
mode): a 2-process run killed after a checkpoint and started again continues the same tracker runs,
with each epoch published once, after its checkpoint, with the values of metrics.jsonl."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mlic.config import load_config
from tests.helpers import REPO, TINY, metrics_lines, run_cmd

OVERRIDES = ["train.eval_batch_size=32", "train.epochs=3", "train.log_every=2", "run.progress=false",
             "run.trackers=[tensorboard,mlflow,wandb]", "run.tracker_project=mlic-test"]
COMPARED = ("val/mAP", "val/f1_macro", "train/loss", "val/loss")


def _env(tmp_path: Path) -> dict[str, str]:
    # MLflow 3 keeps the file store only on request (it points to a database instead)
    return {"MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
            "WANDB_MODE": "offline", "WANDB_SILENT": "true", "ACCELERATE_USE_CPU": "true",
            # W&B writes its log every 15 s: a SIGKILL loses the newest points (README); flush at once here,
            # so that the test sees what mlic published before the kill
            "WANDB_X_TRANSACTION_LOG_FLUSH_INTERVAL": "1"}


def _train(run: Path, env: dict, fault: str | None = None):
    env = {**env, **({"MLIC_FAULT": fault} if fault else {})}
    return run_cmd(["accelerate", "launch", "--config_file", "launch/multi_cpu.yaml", "--main_process_port", "29547",
                    "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, f"run.output_dir={run}"],
                   timeout=900, env=env)


def _expected(run: Path) -> dict[tuple[str, int], float]:
    lines = metrics_lines(run)
    return {(f"{x['split']}/{k}", x["epoch"]): v for x in lines for k, v in x.items() if isinstance(v, float)}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_two_process_run_continues_its_mlflow_and_wandb_runs(tmp_path, monkeypatch):
    env, run = _env(tmp_path), tmp_path / "run"
    # publish passes: the start, epoch 1's checkpoint, epoch 2's: both ranks die after that checkpoint, before
    # publishing it
    killed = _train(run, env, fault="publish:3")
    assert killed.returncode != 0
    assert json.loads((run / "trackers.json").read_text())["epoch"] == 1
    done = _train(run, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    expected, ids = _expected(run), json.loads((run / "trackers.json").read_text())
    assert ids["epoch"] == 3

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import mlflow

    runs = mlflow.search_runs(experiment_names=["mlic-test"])
    assert list(runs["run_id"]) == [ids["mlflow"]]  # one MLflow run for both starts
    assert runs["params.train.epochs"][0] == "3" and runs["params.model.name"][0] == "cnn"
    assert runs["params.run.trackers"][0] == str(["tensorboard", "mlflow", "wandb"])
    client = mlflow.MlflowClient()
    for key in COMPARED:
        history = sorted((m.step, m.value) for m in client.get_metric_history(ids["mlflow"], key))
        assert [s for s, _ in history] == [1, 2, 3], key  # each epoch once: none lost, none twice
        for step, value in history:
            assert value == pytest.approx(expected[key, step], rel=1e-6), (key, step)
    final_step = int(sorted((run / "checkpoints").glob("epoch*"))[-1].name.split("step")[1])
    steps = sorted(m.step for m in client.get_metric_history(ids["mlflow"], "step/loss"))
    assert steps == list(range(2, final_step + 1, 2))  # every logged step once, those of the kill's window too

    folders = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(folders) == 2  # one W&B run id, a folder per start (wandb sync joins them)
    rows = [row for folder in folders for row in _wandb_history(folder / f"run-{ids['wandb']}.wandb")]
    epochs = [row for row in rows if "val/mAP" in row]
    assert sorted(int(row["epoch"]) for row in epochs) == [1, 2, 3]
    for row in epochs:
        assert row["val/mAP"] == pytest.approx(expected["val/mAP", int(row["epoch"])], rel=1e-6)
    config = {k: v for folder in folders for k, v in _wandb_records(folder / f"run-{ids['wandb']}.wandb", "config")}
    assert json.loads(config["train.epochs"]) == 3


def test_a_run_folder_whose_checkpoints_were_deleted_starts_a_new_mlflow_run(tmp_path, monkeypatch):
    """Its old MLflow run already holds epoch 1: the new start opens another one and publishes its epoch 1
    there, and metrics.jsonl keeps only the new start's lines."""
    import shutil

    import mlflow

    from mlic.training.engine import fit

    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    overrides = ["data.demo_images=100", "train.epochs=1", "train.max_steps_per_epoch=2", "train.log_every=1",
                 "run.progress=false", "run.trackers=[mlflow]", "run.tracker_project=fresh", f"run.output_dir={run}"]
    fit(load_config(REPO / "configs" / "demo.yaml", overrides))
    first = json.loads((run / "trackers.json").read_text())["mlflow"]
    shutil.rmtree(run / "checkpoints")
    fit(load_config(REPO / "configs" / "demo.yaml", overrides))
    second = json.loads((run / "trackers.json").read_text())
    assert second["mlflow"] != first and second["epoch"] == 1
    client = mlflow.MlflowClient()
    for run_id in (first, second["mlflow"]):
        assert [m.step for m in client.get_metric_history(run_id, "val/mAP")] == [1]
        assert sorted(m.step for m in client.get_metric_history(run_id, "step/loss")) == [1, 2]
    assert [x["epoch"] for x in metrics_lines(run)] == [1, 1]


def test_a_run_folder_without_checkpoints_starts_new_tracker_runs(tmp_path):
    from mlic.training.trackers import make_trackers, write_state

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run.output_dir={run}", "run.trackers=[mlflow,wandb]"])
    write_state(run, {"mlflow": "abc", "wandb": "w1", "epoch": 0, "step": 0})  # nothing published yet
    mlflow_tracker, wandb_tracker = make_trackers(cfg, resumable=False)
    assert mlflow_tracker.run_id == "abc" and wandb_tracker.init_kwargs["id"] == "w1"
    write_state(run, {"mlflow": "abc", "wandb": "w1", "epoch": 2, "step": 20})  # published, checkpoints gone
    mlflow_tracker, wandb_tracker = make_trackers(cfg, resumable=False)
    assert mlflow_tracker.run_id is None and wandb_tracker.init_kwargs["id"] != "w1"
    mlflow_tracker, _ = make_trackers(cfg, resumable=True)
    assert mlflow_tracker.run_id == "abc"


def test_a_missing_tracker_library_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from mlic.errors import ConfigError
    from mlic.training.engine import fit

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run.output_dir={tmp_path / 'run'}", "run.trackers=[wandb]"])
    with pytest.raises(ConfigError, match=r"pip install 'mlic\[wandb\]'"):
        fit(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_optional_libraries_are_not_imported_by_a_default_run(tmp_path):
    """The base install stays as it is: a run with the default trackers and evaluate import none of mlflow,
    wandb, onnx, onnxruntime. (DeepSpeed's autotuner, which accelerate imports when DeepSpeed is installed,
    imports mlflow itself whenever it can: not mlic's doing, and not in the base install.)"""
    code = f"""
import sys
from mlic.config import load_config
from mlic.training.engine import fit
from mlic.cli import main
fit(load_config({str(REPO / 'configs' / 'demo.yaml')!r}, ["data.demo_images=100", "train.epochs=1", "train.max_steps_per_epoch=2",
    "run.output_dir={tmp_path / 'run'}", "run.progress=false"]))
assert main(["evaluate", {str(tmp_path / 'run' / 'model')!r}]) == 0
optional = ("wandb", "onnx", "onnxruntime", "onnxscript") + (() if "deepspeed" in sys.modules else ("mlflow",))
print(sorted(m for m in optional if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "[]"


def _wandb_history(path: Path) -> list[dict]:
    return [{k: json.loads(v) for k, v in items} for items in _wandb_records(path, "history", flat=False)]


def _wandb_records(path: Path, kind: str, flat: bool = True):
    """The `kind` records of a W&B offline run file (a LevelDB-style log of protobuf records: 7-byte file
    header, 32 KiB blocks, each chunk behind a 7-byte header of crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buffer, found = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header: zero padding
            pos += room
            continue
        _, length, chunk_type = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and chunk_type == 0:
            pos += room
            continue
        buffer += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if chunk_type in (1, 4):  # full, or the last piece of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buffer)
            buffer = b""
            if record.WhichOneof("record_type") == kind:
                body = getattr(record, kind)
                items = [(i.key or "/".join(i.nested_key), i.value_json) for i in
                         (body.item if kind == "history" else body.update)]
                found.extend(items) if flat else found.append(items)
    return found


def test_an_unusable_mlflow_store_is_a_config_error_before_anything_loads(tmp_path, monkeypatch):
    """MLflow 3 refuses a plain folder unless asked to keep it: said at once, naming what to set."""
    from mlic.errors import ConfigError
    from mlic.training.engine import fit

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run.output_dir={tmp_path / 'run'}", "run.trackers=[mlflow]"])
    with pytest.raises(ConfigError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        fit(cfg)
    assert not (tmp_path / "run").exists()
