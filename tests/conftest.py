"""Shared fixtures. Everything runs offline on a CPU: caches point into a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# real ImageNet weights and photos (tests/pretrained.py), for every test module
from tests.pretrained import imagenet_photos_fixture, lite0_original_fixture, lite0_weights_fixture  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    home = tmp_path_factory.mktemp("caches")
    os.environ["MLIC_CACHE"] = str(home / "mlic")
    os.environ["TORCH_HOME"] = str(home / "torch")
    os.environ["HF_HOME"] = str(home / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # pytest-xdist: torch was imported before OMP_NUM_THREADS was set, and each worker's in-process trainings
        # would take every core; on 2 cores, two workers of 2 threads each ran those tests 2.5-4x slower.
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))  # the cores this job may use
    yield


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo corpus (300 images) for data and sampler tests."""
    from mlic.data.demo import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo") / "demo", images=300, seed=0)


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory) -> Path:
    """A run folder of the shipped demo config (300 images, 2 epochs), shared by the tests that only read a
    finished run: evaluate, predict, analyze, report, load_model. None of them changes what another reads."""
    from mlic.config import load_config
    from mlic.engine import fit

    run = tmp_path_factory.mktemp("trained") / "run"
    fit(load_config(REPO / "configs" / "demo.yaml", ["data.demo_images=300", "train.batch_size=16", "train.epochs=2",
                                                     "run.progress=false", f"run.output_dir={run}"]))
    return run


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(demo_dir, tmp_path / "demo"))


def run_cmd(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root with this interpreter's environment."""
    full_env = {**os.environ, **(env or {})}
    bin_dir = str(Path(sys.executable).parent)
    full_env["PATH"] = bin_dir + os.pathsep + full_env.get("PATH", "")
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


VAL_COMPARED = ("loss", "accuracy", "subset_accuracy", "f1_micro", "f1_macro", "precision_macro", "recall_macro", "mAP")


def val_lines(run: Path) -> list[dict]:
    """The validation lines of a run folder's metrics.jsonl."""
    return [x for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if x["split"] == "val"]


def assert_same_run(a: Path, b: Path, epochs: list[int]) -> None:
    """An interrupted run equals an uninterrupted one: the validation metrics of every epoch (rel. 1e-5) and
    the exported weights (atol 1e-6) — the kill harness's tolerance."""
    import torch
    from safetensors.torch import load_file

    va, vb = val_lines(a), val_lines(b)
    assert [x["epoch"] for x in va] == [x["epoch"] for x in vb] == epochs
    for x, y in zip(va, vb):
        for key in VAL_COMPARED:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["epoch"], key)
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def pytest_runtest_logreport(report):
    """With MLIC_CLUSTER_RECORD=FILE, one line per cluster test that ran ("NODEID passed|failed"), so that
    .ci/run can check the real-cluster tests executed instead of being skipped. Under pytest-xdist the hook
    runs in the worker and again in the controller: only the controller writes."""
    record = os.environ.get("MLIC_CLUSTER_RECORD")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if record and report.when == "call" and "cluster" in report.keywords:
        with open(record, "a") as fh:
            fh.write(f"{report.nodeid} {report.outcome}\n")


class Tmpfs:
    """A real tmpfs (a small disk that fills up for real), mounted by the `tmpfs` fixture."""

    def __init__(self, path: Path):
        self.path = path

    def resize(self, megabytes: int) -> None:
        """Grow it in place (unmounting would erase it)."""
        subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(self.path)], check=True)

    def free_ballast(self) -> int:
        """Delete the ballast files that `MLIC_FAULT=fill-...` left (as a user frees space); returns how many."""
        found = list(self.path.rglob(".ballast-*"))
        for path in found:
            path.unlink()
        return len(found)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.path).free


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MB tmpfs at tmp_path/fs. Mounting needs root (CI runs as root): elsewhere the test skips, and under
    CI=true it fails, since a faked full disk is what this replaces."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the full-disk tests mount a real tmpfs and need root")
        pytest.skip("the full-disk tests mount a real tmpfs and need root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield Tmpfs(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
