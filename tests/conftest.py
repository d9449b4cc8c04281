"""Shared fixtures and pytest hooks; the other helpers are in tests/helpers.py. Everything runs offline on a CPU:
caches point into a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Before anything imports huggingface_hub (timm, transformers, datasets): it reads these once, at its import,
# and a test module's top-level `import timm` is collected before any fixture runs. Set later, the suite used
# the real ~/.cache/huggingface and an "offline" test waited on the network (24 s instead of 1.5 s).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mlic-tests-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from tests.helpers import fit_demo  # noqa: E402

# real ImageNet weights and photos (tests/pretrained.py), for every test module
from tests.pretrained import imagenet_photos_fixture, lite0_original_fixture, lite0_weights_fixture  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    home = tmp_path_factory.mktemp("caches")
    os.environ["MLIC_CACHE"] = str(home / "mlic")
    os.environ["TORCH_HOME"] = str(home / "torch")
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
    run = tmp_path_factory.mktemp("trained") / "run"
    fit_demo(run, "train.eval_batch_size=256", "train.epochs=2", "run.progress=false")  # 256: the config's, not TINY's
    return run


@pytest.fixture
def demo_copy(demo_dir, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(demo_dir, tmp_path / "demo"))


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
