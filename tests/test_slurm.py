"""The sbatch files with a fake SLURM on PATH: the exact `accelerate launch` line per node, pass-through
overrides, and preemption (USR1 -> stop file -> clean exit -> requeue)."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

FAKE_SRUN = """#!/usr/bin/env bash
# fake srun: run the step once per node, as SLURM would, with that node's SLURM_NODEID
while [ "${1#--}" != "$1" ]; do shift; done
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" || exit $?; done
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-node-001\\ngpu-node-002\\ngpu-node-003\\n' | head -n "$SLURM_NNODES"; fi
"""
FAKE_ACCELERATE = """#!/usr/bin/env bash
echo "node=$SLURM_NODEID endpoint=$PET_RDZV_ENDPOINT $*" >> "$FAKE_LOG"
if [ -n "${FAKE_WAIT_FOR_STOP:-}" ]; then
  touch "$FAKE_LOG.started"
  while [ ! -f "$MLIC_STOP_FILE" ]; do sleep 0.05; done
fi
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("accelerate", FAKE_ACCELERATE)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def env(nodes: int, **extra) -> dict:
        return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "MLIC_REPO": str(REPO),
                "MLIC_VENV": str(tmp_path / "novenv"), "SLURM_JOB_ID": "4242", "SLURM_NNODES": str(nodes),
                "SLURM_JOB_NODELIST": f"gpu-node-[001-00{nodes}]", "SLURM_GPUS_ON_NODE": "4",
                "MLIC_STOP_FILE": str(tmp_path / "stop"), **extra}

    return env, log


def _launch_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("node=")]


@pytest.mark.parametrize("nodes", [1, 2])
def test_exact_accelerate_command_per_node(fake_slurm, nodes):
    env, log = fake_slurm
    done = subprocess.run(["bash", "slurm/resnet152.sh", "train.epochs=3", "optim.lr=3e-4"], cwd=REPO,
                          env=env(nodes), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = _launch_lines(log)
    port = re.search(r"--main_process_port (\d+) ", lines[0]).group(1)  # free on the first node, one for all
    expected = [
        f"node={rank} endpoint=gpu-node-001:{port} launch --config_file launch/multi_gpu.yaml --num_processes {4 * nodes} --num_machines {nodes} "
        f"--machine_rank {rank} --rdzv_backend c10d --rdzv_conf is_host={int(rank == 0)} --main_process_ip gpu-node-001 --main_process_port {port} "
        "train/resnet152.py run.output_dir=runs/resnet152 train.epochs=3 optim.lr=3e-4"
        for rank in range(nodes)
    ]
    assert lines == expected and 1024 <= int(port) < 65536
    assert "requeue" not in log.read_text()


@pytest.mark.parametrize("script", ["cnn", "densenet161", "vit"])
def test_every_model_script_and_deepspeed_config(fake_slurm, script):
    env, log = fake_slurm
    done = subprocess.run(["bash", f"slurm/{script}.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=env(2, ACCELERATE_CONFIG="launch/deepspeed_zero2.yaml", RUN_DIR="runs/x"))
    assert done.returncode == 0, done.stderr
    line = _launch_lines(log)[1]
    assert re.match(r"node=1 endpoint=gpu-node-001:\d+ launch --config_file launch/deepspeed_zero2.yaml "
                    r"--num_processes 8 --num_machines 2 ", line)
    # several nodes under DeepSpeed: torchrun's rendezvous, not pdsh
    assert line.endswith(f"--deepspeed_multinode_launcher standard train/{script}.py run.output_dir=runs/x")


def test_table_array_task_picks_its_run(fake_slurm):
    env, log = fake_slurm
    runs = sorted((REPO / "configs" / "tables" / "table2").glob("*.yaml"))
    done = subprocess.run(["bash", "slurm/tables.sh", "2", "train.epochs=1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env(1, SLURM_ARRAY_TASK_ID="1"))
    assert done.returncode == 0, done.stderr
    line = _launch_lines(log)[0]
    assert f"--config configs/tables/table2/{runs[1].name} run.output_dir=runs/tables/table2/{runs[1].stem} train.epochs=1" in line


def test_usr1_stops_the_run_and_requeues_the_job(fake_slurm):
    env, log = fake_slurm
    proc = subprocess.Popen(["bash", "slurm/vit.sh"], cwd=REPO, env=env(1, FAKE_WAIT_FOR_STOP="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not Path(f"{log}.started").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` delivers
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "USR1 received" in out
    assert "scontrol requeue 4242" in log.read_text()


def test_scripts_are_shellcheck_clean():
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / "slurm").glob("*.sh"))
    for script in scripts:
        assert subprocess.run(["bash", "-n", script], cwd=REPO).returncode == 0
    shellcheck = subprocess.run(["which", "shellcheck"], capture_output=True)
    if shellcheck.returncode != 0:
        pytest.skip("shellcheck not installed (.ci/run installs Debian's)")
    done = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
