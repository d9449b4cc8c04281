"""No silent misconfiguration: a launch whose processes would not train together stops, a run folder
has one live writer, and a plain CPU run prints nothing of DeepSpeed."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, TINY, run_cmd

OVERRIDES = ["run.progress=false"]


def _train(run, *extra):
    return [sys.executable, "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, f"run.output_dir={run}",
            *extra]


def _launch_two(run, port: int, env: dict, *extra):
    return ["accelerate", "launch", "--config_file", "launch/multi_cpu.yaml", "--main_process_port", str(port),
            "train/cnn.py", "--config", "configs/demo.yaml", *TINY, *OVERRIDES, f"run.output_dir={run}", *extra]


@pytest.mark.multiprocess
def test_a_launch_whose_processes_would_train_alone_stops_with_one_line(tmp_path):
    """multi_cpu.yaml without ACCELERATE_USE_CPU on a machine with no GPU: torchrun starts 2 processes,
    each Accelerator sees a world of 1. They must not both train into one folder."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"
    start = time.time()
    done = subprocess.run(_launch_two(tmp_path / "run", 29561, env), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: the launcher started 2 processes")]
    assert errors and "ACCELERATE_USE_CPU=true" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()
    assert time.time() - start < 120


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_second_run_on_a_live_run_folder_exits_1_and_a_dead_ones_folder_is_taken(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_train(run, "train.epochs=50"), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while f"pid {first.pid}" not in ((run / ".lock").read_text() if (run / ".lock").exists() else ""):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = run_cmd(_train(run, "train.epochs=1"), timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"error: run folder {run} is in use by another live run (pid {first.pid} on {os.uname().nodename}); "
            "wait for it, stop it, or use another run.output_dir"]
        # two ranks: both learn it from rank 0 (no rank waits in a barrier), one line is printed
        two = run_cmd(_launch_two(run, 29562, {}), timeout=300, env={"ACCELERATE_USE_CPU": "true"})
        assert two.returncode != 0
        assert two.stderr.count("is in use by another live run") == 1, two.stderr[-3000:]
        assert first.poll() is None  # the live run was left alone
    finally:
        first.send_signal(signal.SIGKILL)  # as a preempted node dies: the kernel drops its lock
        first.wait(timeout=60)
    again = run_cmd(_train(run, "train.epochs=1", "train.max_steps_per_epoch=2"), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_a_plain_cpu_run_prints_nothing_of_deepspeed(tmp_path):
    pytest.importorskip("deepspeed")  # installed (the dev extra): accelerate imports it whenever it is there
    done = run_cmd(_train(tmp_path / "run", "train.epochs=1", "train.max_steps_per_epoch=2"), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()  # unwrap_model ran (the export)
    assert "accelerator" not in output.lower() and "deepspeed" not in output.lower(), output[-2000:]
