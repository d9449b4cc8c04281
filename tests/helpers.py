"""What the tests share besides fixtures (those, and pytest's hooks, stay in conftest.py): the repository root,
a command runner, the demo config shrunk for a test, and readers of a run folder's metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The demo config shrunk for a test (300 images). A file that needs other values appends its own overrides after
# these (of two values of one key, the later wins).
TINY = ["data.demo_images=300", "train.batch_size=16", "train.eval_batch_size=64"]

VAL_COMPARED = ("loss", "accuracy", "subset_accuracy", "f1_micro", "f1_macro", "precision_macro", "recall_macro", "mAP")


def run_cmd(args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root with this interpreter's environment."""
    full_env = {**os.environ, **(env or {})}
    bin_dir = str(Path(sys.executable).parent)
    full_env["PATH"] = bin_dir + os.pathsep + full_env.get("PATH", "")
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def fit_demo(run: Path, *overrides: str, config: str | Path = "configs/demo.yaml") -> dict:
    """Train in this process: `config` (relative to the repository) with TINY, the run folder, then `overrides`;
    returns what mlic.training.engine.fit returns."""
    from mlic.config import load_config
    from mlic.training.engine import fit

    return fit(load_config(REPO / config, [*TINY, f"run.output_dir={run}", *overrides]))


def metrics_lines(run: Path, split: str | None = None) -> list[dict]:
    """The lines of a run folder's metrics.jsonl, in order; with `split`, only that split's ("train", "val", ...)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return lines if split is None else [x for x in lines if x["split"] == split]


def val_lines(run: Path) -> list[dict]:
    """The validation lines of a run folder's metrics.jsonl."""
    return metrics_lines(run, "val")


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
