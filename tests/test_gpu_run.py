"""The prepared GPU script runs here first, tiny and on the CPU, so that no GPU minute is lost to a bug in it;
and its sync-debug window does refuse a host read."""

import importlib.util
import json

import pytest
import torch

import mlic.training.engine as engine
from tests.helpers import REPO, run_cmd


def _sync_debug():
    spec = importlib.util.spec_from_file_location("sync_debug", REPO / "benchmarks" / "sync_debug.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_WINDOW = ["--device", "cpu", "--model", "cnn", "--batch", "8", "--image-size", "32", "--steps", "8",
               "--window", "2", "6"]


def test_the_sync_debug_window_refuses_a_host_read_inside_it_and_none_outside(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    sync_debug, weight = _sync_debug(), engine.loss_weight
    reads = []

    def reading(micro_step, *a):  # a planted `.item()` in the loop: the mistake the window exists to catch
        reads.append(micro_step)
        return weight(micro_step, *a) * float(torch.ones(()).sum()) if micro_step == 4 else weight(micro_step, *a)

    monkeypatch.setattr(engine, "loss_weight", reading)
    with pytest.raises(RuntimeError, match="read on the host inside the window"):
        sync_debug.main([*TINY_WINDOW, "--out", str(tmp_path / "run")])
    assert reads[-1] == 4  # it stopped at the planted read, the 5th step (the window opened at the 2nd)
    monkeypatch.setattr(engine, "loss_weight", weight)
    torch.ones(()).item()  # the mode is gone after the error: reads outside a window are free
    assert sync_debug.main([*TINY_WINDOW, "--out", str(tmp_path / "clean")]) == 0


@pytest.mark.slow
def test_gpu_run_sh_passes_on_the_cpu_with_tiny_models(tmp_path):
    done = run_cmd(["bash", "benchmarks/gpu_run.sh", str(tmp_path / "out"), "--device", "cpu", "--tiny"], timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu_run: every step passed" in done.stdout
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["host.txt", "profiles.txt", "resume.txt", "sync_debug.txt", "throughput.jsonl", "throughput.txt"]
    assert "no host sync" in (tmp_path / "out" / "sync_debug.txt").read_text()
    assert "gpu_resume: all checks passed" in (tmp_path / "out" / "resume.txt").read_text()
    rows = [json.loads(x) for x in (tmp_path / "out" / "throughput.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == ["cnn:eager:no", "cnn:compiled:no"]
    assert all(r["fit"]["images_per_s"] > 0 and 0 <= r["fit"]["data_wait"] < 1 for r in rows)
    assert (tmp_path / "out" / "profiles.txt").read_text().count("## cnn:") == 2


def test_a_resumed_epochs_loader_still_copies_without_waiting():
    """accelerate's skip_first_batches drops the prepared loader's non_blocking: every step after a mid-epoch
    resume would wait for its copy on a GPU (found by reading, not by the sync-debug window, which never resumes)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from mlic.training.engine import skipped

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(non_blocking=True))
    loader = accelerator.prepare(torch.utils.data.DataLoader(list(range(12)), batch_size=2))
    resumed = skipped(accelerator, loader, 2, epoch=0)
    assert accelerator.non_blocking and resumed._non_blocking
    assert [b.tolist() for b in resumed] == [[4, 5], [6, 7], [8, 9], [10, 11]]
