"""The production sbatch files, unchanged, on a real Slurm cluster of two nodes started for these tests
(tests/cluster/slurm_cluster.sh): one run over 2 nodes, preemption and the time limit with requeue,
a node that dies, a requeue onto fewer nodes, DeepSpeed across nodes, and a report table as a job array.

Run alone with `pytest -m cluster`. Needs root and Debian's slurmctld slurmd slurm-client munge (.ci/run
installs them); skipped with the reason otherwise, except under CI=true, where it must run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, assert_same_run, val_lines

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
CLUSTER = REPO / "tests" / "cluster" / "slurm_cluster.sh"
# What a small CPU-only cluster needs (README, "Small or CPU-only clusters"): no GPU gres, one CPU per
# task; the jobs run with ACCELERATE_USE_CPU=true (DDP on the CPU over gloo).
CPU_SBATCH = ["--gres=none", "--cpus-per-task=1"]
RECIPE = ["--config", "configs/demo.yaml", "data.demo_images=1000", "train.epochs=2", "train.save_every_steps=4",
          "run.progress=false"]
JOB_TIMEOUT = 300


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the throw-away Slurm cluster needs root"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "unshare") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run `{CLUSTER.relative_to(REPO)} install` (Debian packages)"
    return None


def _processes():
    """(pid, command line, environment) of every process this one can read, but itself."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            yield int(proc.name), (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        except OSError:
            continue


def _leftovers(folder: Path) -> list[str]:
    """Processes still tied to this cluster: its daemons, or anything started by its jobs."""
    mark = str(folder).encode()
    return [f"{pid}: {b' '.join(cmdline.split(bytes(1))).decode(errors='replace')[:120]}"
            for pid, cmdline, environ in _processes() if mark in cmdline or mark in environ]


class Cluster:
    def __init__(self, folder: Path, base_env: dict[str, str]):
        self.folder, self.env = folder, base_env

    def run(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr}")
        return done.stdout

    def sbatch(self, script: str, *args: str, sbatch_args: tuple[str, ...] = (), env: dict | None = None) -> str:
        """Submit from the checkout, as users do; the job log goes to the cluster's folder."""
        log = self.folder / "jobs" / "%x-%j.out"
        log.parent.mkdir(exist_ok=True)
        done = subprocess.run(["sbatch", "--parsable", f"--output={log}", *CPU_SBATCH, *sbatch_args, script, *args],
                              cwd=REPO, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def log(self, job_id: str) -> str:
        path = next((self.folder / "jobs").glob(f"*-{job_id}.out"), None)
        return path.read_text(errors="replace") if path else ""

    def story(self, job_id: str) -> str:
        """A failure message on a job: the end of its log, and slurmctld's own lines about it (why Slurm
        requeued, signalled or ended it)."""
        path = self.folder / "slurmctld.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        ctld = "\n".join(line for line in text.splitlines() if re.search(rf"\b{job_id}\b", line))
        return f"its log ends:\n{self.log(job_id)[-3000:]}\nslurmctld on it:\n{ctld[-3000:]}"

    def wait_for(self, what: str, ready, job_id: str, timeout: float = JOB_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            time.sleep(0.5)
        info = self.job(job_id)
        self.run("scancel", job_id, check=False)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: job {job_id} is "
                             f"{info.get('JobState')} ({info.get('Reason')}); {self.story(job_id)}")

    def wait_done(self, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
        """Wait until the job has ended for good (a requeued job comes back PENDING first)."""
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        return self.wait_for("the job to end", lambda: (info := self.job(job_id)).get("JobState") in ended and info,
                             job_id, timeout)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm cluster tests: {reason}")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "MLIC_VENV": sys.prefix,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        started = subprocess.run(["bash", str(CLUSTER), "start", str(folder)], env=env, capture_output=True,
                                 text=True, timeout=120)
        assert started.returncode == 0, f"the cluster did not start:\n{started.stdout}\n{started.stderr}"
        yield Cluster(folder, env)
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], env=env, timeout=120)
        left = _leftovers(folder)
        for line in left:
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes left behind by the cluster or its jobs: {left}"


def _provenance(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["_provenance"]


def _cnn_job(cluster: Cluster, run: Path, *sbatch_args: str, nodes: int = 2, extra: tuple[str, ...] = (),
             env: dict | None = None) -> str:
    """`slurm/cnn.sh` with the demo recipe into `run`, on a CPU cluster (ACCELERATE_USE_CPU=true)."""
    return cluster.sbatch("slurm/cnn.sh", *RECIPE, *extra, sbatch_args=(f"--nodes={nodes}", *sbatch_args),
                          env={"ACCELERATE_USE_CPU": "true", "RUN_DIR": str(run), **(env or {})})


def _first_checkpoint(cluster: Cluster, run: Path, job_id: str) -> None:
    cluster.wait_for("the first checkpoint", lambda: any((run / "checkpoints").glob("epoch*")), job_id)


class Straight:
    """The uninterrupted 2-node run every interrupted one must equal: submitted once, waited for when
    first compared, so that it trains while the first interrupted job waits for its requeue."""

    def __init__(self, cluster: Cluster, run: Path):
        self.cluster, self.run_dir, self.job = cluster, run, _cnn_job(cluster, run)
        self.info: dict[str, str] | None = None

    def run(self) -> Path:
        if self.info is None:
            self.info = self.cluster.wait_done(self.job)
        assert self.info["JobState"] == "COMPLETED", self.cluster.story(self.job)
        return self.run_dir


@pytest.fixture(scope="module")
def straight(cluster, tmp_path_factory) -> Straight:
    return Straight(cluster, tmp_path_factory.mktemp("straight") / "run")


def test_preempted_job_requeues_and_resumes_exactly(cluster, straight, tmp_path):
    run = tmp_path / "run"
    job = _cnn_job(cluster, run)
    _first_checkpoint(cluster, run, job)
    cluster.run("scancel", "--batch", "--signal=USR1", job)  # what a preemption (or the time limit) sends
    info = cluster.wait_done(job)
    log = cluster.log(job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", cluster.story(job)
    assert "USR1 received" in log and "stopped at" in log and "requeueing job" in log and "resumed from" in log
    assert_same_run(straight.run(), run, [1, 2])


def test_one_run_over_two_nodes(cluster, straight):
    run = straight.run()
    provenance = _provenance(run)
    assert provenance["world_size"] == 2 and provenance["machines"] == 2
    assert provenance["hosts"] == ["node1", "node2"] and provenance["distributed_type"] == "MULTI_CPU"
    log = cluster.log(straight.job)
    assert "mlic: node 0 of 2 (node1)" in log and "mlic: node 1 of 2 (node2)" in log
    assert "resumed from" not in log and [x["epoch"] for x in val_lines(run)] == [1, 2]


def test_time_limit_signal_requeues_and_resumes(cluster, tmp_path):
    """--time=1 --signal=B:USR1@50: Slurm's own warning before the time limit. slurmctld checks limits
    about every 30 s, so the signal comes 10-40 s after the start: this run is made to train longer
    than that (2,000 images at 96 pixels, 8 epochs), so the stop lands in the middle of its training.
    (With 2 epochs, once the jitter got faster, a run on a quiet machine finished first; with 4, one did
    too, at 230 images/s.)"""
    run = tmp_path / "run"
    job = _cnn_job(cluster, run, "--time=1", "--signal=B:USR1@50",
                        extra=("data.demo_images=2000", "data.image_size=96", "train.epochs=8", "train.stop_check_every=2"))
    cluster.wait_for("the requeue", lambda: cluster.job(job).get("Restarts") == "1", job)
    # The requeued job would get the same minute and the same early signal: give it room to finish
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    info = cluster.wait_done(job)
    log = cluster.log(job)
    why = cluster.story(job)
    assert info["JobState"] == "COMPLETED", why
    # mid-epoch, during an epoch's evaluation, or at the end of an epoch when that check saw the stop first
    stopped = re.search(r"stopped at (epoch \d+, step \d+ of it|the evaluation of epoch \d+ \(its training is "
                        r"saved\)|the end of epoch \d+): checkpoint saved", log)
    assert "USR1 received" in log and stopped and "requeueing job" in log, why
    assert "resumed from" in log and "DUE TO TIME LIMIT" not in log, why
    assert [x["epoch"] for x in val_lines(run)] == list(range(1, 9)) and (run / "model" / "model.safetensors").is_file()


def _worker_pids(job_id: str, node_id: str) -> list[int]:
    """The training processes (torchrun's workers, not the launcher) of a job on one node."""
    pids = []
    for pid, cmdline, environ in _processes():
        env = dict(kv.split(b"=", 1) for kv in environ.split(b"\0") if b"=" in kv)
        if (env.get(b"SLURM_JOB_ID") == job_id.encode() and env.get(b"SLURM_NODEID") == node_id.encode()
                and b"LOCAL_RANK" in env and b"train/cnn.py" in cmdline):
            pids.append(pid)
    return pids


def test_a_node_dies_the_job_ends_and_the_next_submission_resumes(cluster, straight, tmp_path):
    run = tmp_path / "run"
    job = _cnn_job(cluster, run)
    _first_checkpoint(cluster, run, job)
    victims = cluster.wait_for("node 2's training process", lambda: _worker_pids(job, "1"), job)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    info = cluster.wait_done(job, timeout=120)  # no hung rank on node 1: the whole job ends
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", cluster.story(job)
    again = _cnn_job(cluster, run)  # the same command, as a user resubmits it
    info = cluster.wait_done(again)
    log = cluster.log(again)
    assert info["JobState"] == "COMPLETED" and "resumed from" in log, cluster.story(again)
    assert_same_run(straight.run(), run, [1, 2])


def test_preempted_on_two_nodes_resumes_on_one_at_the_same_global_sample(cluster, tmp_path):
    """A 2-node job preempted, then run on the 1 node that is free: it resumes at the same position of
    the epoch's global order (not at step_in_epoch batches per rank), and trains the rest of that epoch
    once. (Slurm 22.05 will not shrink the requeued job itself: `scontrol update NumNodes=1` on it
    leaves it pending with BadConstraints, as --ntasks-per-node=1 pins its task count; so the pending
    job is cancelled and the same command submitted on one node, as a user does.)"""
    run = tmp_path / "run"
    every_step = ("train.stop_check_every=1",)  # the stop lands mid-epoch, however fast the steps are
    job = _cnn_job(cluster, run, extra=every_step)
    _first_checkpoint(cluster, run, job)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    cluster.wait_for("the requeued job to pend", lambda: cluster.job(job).get("JobState") == "PENDING", job)
    cluster.run("scancel", job)
    job = _cnn_job(cluster, run, nodes=1, extra=every_step)
    info = cluster.wait_done(job)
    log = cluster.log(job)
    assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "1", cluster.story(job)
    resumed = re.search(r"resumed from \S+ \(epoch (\d+), sample (\d+) of its global order: step (\d+) at 1 process",
                        log)
    assert resumed, cluster.story(job)
    epoch, sample, step = map(int, resumed.groups())
    assert sample > 0 and step == sample // 32  # per-rank batch 32: one process now walks 32 samples a step
    provenance = _provenance(run)
    assert provenance["world_size"] == 1 and provenance["machines"] == 1
    train = {x["epoch"]: x for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if x["split"] == "train"}
    # the rest of the epoch's global order, once, in whole batches of 32 (its train metrics cover that part)
    assert train[epoch]["images"] == (provenance["train_images"] - sample) // 32 * 32


def test_deepspeed_zero2_across_two_nodes(cluster, tmp_path):
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    # ACCELERATE_USE_CPU leaks in from the CPU recipe: the script must not let it turn DeepSpeed off
    job = _cnn_job(cluster, run, extra=("train.epochs=1",),
                   env={"ACCELERATE_CONFIG": "launch/deepspeed_zero2_cpu.yaml"})
    info = cluster.wait_done(job)
    log = cluster.log(job)
    assert info["JobState"] == "COMPLETED", cluster.story(job)
    assert "ignoring ACCELERATE_USE_CPU=true" in log
    provenance = _provenance(run)
    assert provenance["distributed_type"] == "DEEPSPEED" and provenance["world_size"] == 2
    assert provenance["machines"] == 2
    assert [x["epoch"] for x in val_lines(run)] == [1] and (run / "model" / "model.safetensors").is_file()


def test_tables_submit_as_a_job_array_then_collect(cluster, tmp_path):
    env = {**cluster.env, "ACCELERATE_USE_CPU": "true"}
    mlic = [sys.executable, "-m", "mlic.cli", "tables", "2", "--scale", "demo", "--runs", str(tmp_path)]
    # tables.sh asks 4 GPUs and 32 CPUs a task: a small CPU cluster overrides both
    submitted = subprocess.run([*mlic, "--submit", "--sbatch=--gres=none", "--sbatch=--cpus-per-task=1",
                                f"--sbatch=--output={cluster.folder}/jobs/%x-%A_%a.out"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"submitted job array (\d+)", submitted.stdout).group(1)
    cluster.wait_for("the job array to end", lambda: not cluster.run("squeue", "-h", "-j", job, check=False).strip(),
                     job)
    states = cluster.run("scontrol", "show", "job", "-o", job)
    assert states.count("JobState=COMPLETED") == 3, states
    table = subprocess.run([*mlic, "--collect"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| Macro F1 score")]
    assert len(rows) == 1 and len(re.findall(r"\d\.\d\d \(", rows[0])) == 3, table.stdout
