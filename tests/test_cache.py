import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from mlic.config import load_config
from mlic.data import cache
from mlic.data.cache import CachedImages, build_cache, cache_path, open_cache
from mlic.data.pipeline import build_data, load_split, use_cache
from mlic.data.registry import load_helsinki
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.errors import DataError
from mlic.models import Preprocess
from tests.helpers import REPO


def test_cache_holds_the_decoded_images_and_serves_whole_batches(demo_dir, tmp_path):
    ds = load_helsinki(demo_dir)
    path = build_cache(ds, 128, tmp_path)
    array = open_cache(path)
    assert array.shape == (len(ds), 3, 128, 128) and array.dtype == np.uint8
    for i in (0, 7, len(ds) - 1):
        np.testing.assert_array_equal(array[i], np.asarray(ds.read(i)).transpose(2, 0, 1))
    cached = CachedImages(path, ds.labels)
    subset = Subset(cached, np.array([5, 9, 11, 200]))
    images, targets, rows = subset.__getitems__([3, 0])  # Subset forwards to CachedImages.__getitems__
    assert images.shape == (2, 3, 128, 128) and rows.tolist() == [200, 5]  # rows of the full dataset
    np.testing.assert_array_equal(images[0].numpy(), array[200])
    assert torch.equal(targets, torch.from_numpy(ds.targets[[200, 5]].astype(np.float32)))
    image, target, row = cached[200]
    assert len(cached) == len(ds) and row == 200 and torch.equal(image, images[0]) and torch.equal(target, targets[0])
    assert build_cache(ds, 128, tmp_path) == path  # reused, not rebuilt


def test_a_changed_source_gets_a_new_cache(demo_copy, tmp_path):
    before = cache_path(load_helsinki(demo_copy), 128, tmp_path)
    image = demo_copy / "images" / "im3.jpg"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    assert cache_path(load_helsinki(demo_copy), 128, tmp_path) != before
    (demo_copy / "annotations" / "dog.txt").write_text("1\n")
    assert cache_path(load_helsinki(demo_copy), 128, tmp_path) != before


def test_cache_modes():
    cfg = load_config(None, ["data.cache=off"])
    assert not use_cache(cfg.data, 10)
    assert use_cache(load_config(None, ["data.cache=on"]).data, 10**9)
    auto = load_config(None).data
    assert use_cache(auto, 20_000) and not use_cache(auto, 10**7)  # 10 M images at 128 px: ~490 GB


def _skip_bad_data(root, tmp_path, cache: str, skip_bad: bool = True):
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.root={root}", f"data.skip_bad={str(skip_bad).lower()}", f"data.cache={cache}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "train.batch_size=16", "sampler.name=balanced",
        "augment.enabled=false"])
    accelerator = SimpleNamespace(num_processes=1, local_main_process_first=contextlib.nullcontext)
    preprocess = Preprocess(32, IMAGENET_MEAN, IMAGENET_STD)
    return build_data(cfg, accelerator, load_split(cfg), preprocess, channels_last=False)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_skip_bad_never_serves_a_skipped_row(demo_copy, tmp_path, cache):
    bad = [6, 41]  # rows of im7.jpg and im42.jpg
    for row in bad:
        (demo_copy / "images" / f"im{row + 1}.jpg").write_bytes(b"\xff\xd8\xff broken")
    data = _skip_bad_data(demo_copy, tmp_path, cache)
    assert data.cached == (cache == "on") and data.skipped_images == 2
    assert not set(bad) & (set(data.train.indices) | set(data.val.indices))
    assert len(data.train) + len(data.val) == len(data.dataset) - 2
    np.testing.assert_array_equal(data.train_labels.dense(), data.dataset.targets[data.train.indices])
    served = []
    for loader in (data.train_loader, data.val_loader):  # per image, a bad row would raise; cached, be zeros
        for images, targets, rows in loader:
            served += rows.tolist()
            assert images.flatten(1).abs().amax(1).min() > 0
            assert torch.equal(targets, torch.from_numpy(data.dataset.targets[rows.numpy()].astype(np.float32)))
    assert not set(bad) & set(served)
    assert set(data.val.indices) <= set(served)


def test_a_cache_without_skipped_rows_is_not_reused_by_a_run_that_wants_them(demo_copy, tmp_path):
    (demo_copy / "images" / "im7.jpg").write_bytes(b"\xff\xd8\xff broken")
    _skip_bad_data(demo_copy, tmp_path, "on")
    with pytest.raises(DataError, match=r"im7\.jpg: cannot read image"):
        _skip_bad_data(demo_copy, tmp_path, "on", skip_bad=False)
    # the run that wants every row got no complete cache: only the skip_bad run's file is one
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1


class CountingDecode:
    """`dataset.decode` that records the rows it decodes and raises `error` at row `fail_at`."""

    def __init__(self, decode, fail_at: int | None = None, error: BaseException | None = None):
        self.decode, self.fail_at, self.error, self.rows = decode, fail_at, error, []

    def __call__(self, row: int):
        if row == self.fail_at:
            raise self.error
        self.rows.append(row)
        return self.decode(row)


def _counting(ds, **kwargs):
    return dataclasses.replace(ds, decode=CountingDecode(ds.decode, **kwargs))


def _free(nbytes: int):
    return lambda folder: SimpleNamespace(total=nbytes, used=0, free=nbytes)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), DataError("im101.jpg: cannot read image: broken")])
def test_an_interrupted_build_is_finished_not_restarted(demo_dir, tmp_path, monkeypatch, capsys, error):
    monkeypatch.setattr(cache, "CHUNK_ROWS", 32)
    ds = load_helsinki(demo_dir)
    path = cache_path(ds, 128, tmp_path / "a")
    partial, done = path.with_name(path.name + ".partial"), path.with_name(path.name + ".done")
    with pytest.raises(type(error)) as raised:
        build_cache(_counting(ds, fail_at=100, error=error), 128, tmp_path / "a", workers=1)
    if isinstance(error, DataError):
        assert f"the 96 images decoded so far stay in {partial}" in str(raised.value)
    size_line = f"building the image cache: 300 images x 3x128x128 = 14.1 MiB at {path}, 1 thread\n"
    assert size_line in capsys.readouterr().err
    assert not path.exists() and partial.exists()
    assert np.flatnonzero(np.fromfile(done, dtype=np.uint8)).tolist() == list(range(96))  # rows 96-127 failed

    monkeypatch.setattr(cache.shutil, "disk_usage", _free((300 - 96) * 3 * 128 * 128))  # only what is left fits
    resumed = _counting(ds)
    assert build_cache(resumed, 128, tmp_path / "a", workers=1) == path
    assert "(resuming: 96 done)" in capsys.readouterr().err
    assert resumed.decode.rows == list(range(96, 300))  # the finished chunks were not decoded again
    assert not partial.exists() and not done.exists() and path.with_suffix(".json").exists()
    monkeypatch.undo()
    assert path.read_bytes() == build_cache(ds, 128, tmp_path / "b", workers=1).read_bytes()


def test_a_cache_too_large_for_its_disk_fails_before_decoding(demo_dir, tmp_path, monkeypatch):
    ds = _counting(load_helsinki(demo_dir))
    (tmp_path / "old.u8.partial").write_bytes(bytes(8192))
    monkeypatch.setattr(cache.shutil, "disk_usage", _free(2**20))
    with pytest.raises(DataError, match=r"no space left on .* writing the image cache \(needs ~15 MB\): it needs 14\.1 MiB more in .* but only 1\.0 MiB is free \(1 other "
                       r"unfinished cache.*set data\.cache=off .* data\.cache_size \(now 128\), or data\.cache_dir"):
        build_cache(ds, 128, tmp_path, workers=1)
    assert ds.decode.rows == []
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".partial", ".done")] == ["old.u8.partial"]


@pytest.mark.slow
def test_the_process_pool_builds_the_same_bytes(demo_copy, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "POOL_MIN_ROWS", 0)
    monkeypatch.setattr(cache, "CHUNK_ROWS", 32)
    pools = []
    monkeypatch.setattr(cache, "ProcessPoolExecutor", lambda *a, **k: pools.append(k) or ProcessPoolExecutor(*a, **k))
    ds = load_helsinki(demo_copy)
    rows = np.setdiff1d(np.arange(len(ds)), [6, 41])  # rows left out stay zero
    pooled = build_cache(ds, 128, tmp_path / "pool", workers=2, rows=rows)
    assert len(pools) == 1
    assert pooled.read_bytes() == build_cache(ds, 128, tmp_path / "one", workers=1, rows=rows).read_bytes()
    assert not open_cache(pooled)[[6, 41]].any()

    (demo_copy / "images" / "im201.jpg").write_bytes(b"\xff\xd8\xff broken")  # row 200, in chunk 192-223
    ds = load_helsinki(demo_copy)
    path = cache_path(ds, 128, tmp_path / "pool")
    with pytest.raises(DataError, match=r"im201\.jpg: cannot read image(.|\n)*decoded so far stay in .*\.partial"):
        build_cache(ds, 128, tmp_path / "pool", workers=2)
    done = np.fromfile(path.with_name(path.name + ".done"), dtype=bool)
    assert done.any() and not done[192:224].any()  # a worker's error keeps the chunks that other workers finished
    array = np.load(path.with_name(path.name + ".partial"), mmap_mode="r")
    for row in np.flatnonzero(done)[[0, -1]]:
        np.testing.assert_array_equal(array[row], cache.decode_square(ds, row, 128))


BUILDER = """
import dataclasses, sys, time
from pathlib import Path
from mlic.data.cache import build_cache
from mlic.data.registry import load_helsinki

root, out, gate = sys.argv[1:]
ds = load_helsinki(root)
decoded = []

def decode(row):
    while not Path(gate).exists():  # the first builder holds the lock until the test opens the gate
        time.sleep(0.01)
    decoded.append(row)
    return ds.decode(row)

build_cache(dataclasses.replace(ds, decode=decode), 128, out, workers=1)
print(len(decoded))
"""


@pytest.mark.slow
def test_two_builders_of_one_cache_decode_it_once(demo_dir, tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "cache"
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(log.open("w")) for log in logs]
        builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(demo_dir), str(out), str(gate)], cwd=REPO,
                                     env=env, stdout=subprocess.PIPE, stderr=err, text=True) for err in errs]
    try:
        deadline = time.monotonic() + 60
        while not any("waiting for another process" in log.read_text() for log in logs):
            running = all(b.poll() is None for b in builders)
            assert running and time.monotonic() < deadline, [log.read_text() for log in logs]
            time.sleep(0.05)
        gate.touch()
        counts = sorted(int(b.communicate(timeout=60)[0]) for b in builders)
    finally:
        for b in builders:
            b.kill()
    assert counts == [0, 300]  # one decoded every image; the other waited, then found the cache built
    ds = load_helsinki(demo_dir)
    assert cache_path(ds, 128, out).read_bytes() == build_cache(ds, 128, tmp_path / "straight").read_bytes()
