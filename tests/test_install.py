"""`pip install .` (not editable): the installed `mlic` works from any folder, shipped configs included.

The fresh venv borrows torch & co. from this interpreter through a .pth line, so the test needs no
network and no 5 GB install; mlic itself is built from a copy of the checkout and installed as a wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.helpers import REPO, TINY, metrics_lines

# after TINY (whose data.demo_images goes unused: these runs read data.root)
OVERRIDES = ["train.epochs=1", "train.max_steps_per_epoch=2", "data.image_size=32", "data.num_workers=0",
             "run.progress=false"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A venv holding a non-editable install of this checkout; its bin folder and an environment for it."""
    root = tmp_path_factory.mktemp("install")
    src = Path(shutil.copytree(REPO, root / "src", symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "logs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".cache",
        ".hypothesis")))  # another xdist worker may be renaming files in .hypothesis
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    bin_dir = root / "venv" / "bin"
    site = Path(subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, pip, setuptools, ...
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", str(src)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shutil.rmtree(src)  # nothing may come from the checkout any more
    return bin_dir, env


def _site_packages(bin_dir: Path) -> Path:
    return next((bin_dir.parent / "lib").glob("python3.*/site-packages"))


@pytest.mark.slow
def test_wheel_ships_every_config_and_nothing_but_mlic(installed):
    site = _site_packages(installed[0])
    shipped = {p.relative_to(site / "mlic" / "configs") for p in (site / "mlic" / "configs").rglob("*.yaml")}
    assert shipped == {p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml")}
    assert not (site / "mlic" / "configs").is_symlink()  # real files, not a link back into a checkout
    assert not any((site / name).exists() for name in ("tests", "benchmarks", "train", "configs"))


def _pyproject_project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; CI's full suite runs on 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_dependencies_are_ranges_that_admit_the_clusters_torch():
    """No pins (a cluster keeps its own CUDA torch); the GPU machines' and CI's versions are inside."""
    project = _pyproject_project()
    deps = {(r := Requirement(d)).name: r.specifier for d in project["dependencies"]}
    assert not [name for name, spec in deps.items() if any(s.operator in ("==", "===") for s in spec)]
    for versions in ({"torch": "2.11.0", "torchvision": "0.26.0", "transformers": "5.17.0", "accelerate": "1.15.0"},
                     {"torch": "2.14.1", "torchvision": "0.29.1", "transformers": "5.24.0", "accelerate": "1.15.0"}):
        for name, version in versions.items():
            assert deps[name].contains(version), (name, version, deps[name])
    python = SpecifierSet(project["requires-python"])
    assert all(python.contains(v) for v in ("3.10.0", "3.11.7", "3.12.1", "3.13.0")) and not python.contains("3.14.0")


def test_ci_installs_with_the_constraints_and_runs_the_readme_commands():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", (REPO / "constraints.txt").read_text(), re.M))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, re.M)
    assert len(commands) == 2 and all("pip install -c constraints.txt -e \".[dev]\"" in c for c in commands)
    assert commands[1] in ci.splitlines()  # the test command, literally
    assert ci.splitlines()[-2:] == ["smoke 3.10", "smoke 3.13"]  # oldest and newest Python, own steps
    smoke = ci[ci.index("smoke() {"):]
    assert "pip install --quiet -c \"$REPO/constraints.txt\" \"$REPO\"" in smoke  # not editable
    assert 'mlic" train cnn --config "$REPO/configs/demo.yaml" train.epochs=1' in smoke


def _mlic(installed, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    bin_dir, env = installed
    return subprocess.run([str(bin_dir / "mlic"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_mlic_trains_from_any_folder_with_shipped_configs(installed, tmp_path):
    bin_dir, env = installed
    where = subprocess.run([str(bin_dir / "python"), "-c", "import mlic.cli; print(mlic.cli.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(bin_dir.parent), where  # the wheel's copy, not the checkout

    done = _mlic(installed, tmp_path, "demo-data", "data", "--images", "300")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "data").rglob("*.jpg"))) == 300

    # `--config` with a file of the checkout, as the README writes it
    done = _mlic(installed, tmp_path, "train", "cnn", "--config", str(REPO / "configs" / "demo.yaml"),
                 "data.root=data", "run.output_dir=run-demo", *TINY, *OVERRIDES)
    assert done.returncode == 0, done.stderr
    lines = metrics_lines(tmp_path / "run-demo")
    assert {(x["epoch"], x["split"]) for x in lines} >= {(1, "train"), (1, "val")}
    assert (tmp_path / "run-demo" / "model" / "config.json").is_file()

    # no --config: the configs/cnn.yaml shipped in the wheel (its lr and pos_weight are not the defaults)
    done = _mlic(installed, tmp_path, "train", "cnn", "data.root=data", "run.output_dir=run-default", *TINY,
                 *OVERRIDES)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load((tmp_path / "run-default" / "config.yaml").read_text())
    assert resolved["loss"]["pos_weight"] == "auto" and resolved["optim"]["lr"] == pytest.approx(1e-3)

    # the table configs (with their `base: ../../x.yaml` chains) are in the wheel too
    done = _mlic(installed, tmp_path, "tables", "5", "--dry-run")
    assert done.returncode == 0, done.stderr
    launches = [x for x in done.stdout.splitlines() if x.startswith("accelerate launch")]
    assert len(launches) == 3 and all("-m mlic.cli train vit --config " + str(bin_dir.parent) in x for x in launches)
