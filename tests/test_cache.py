import contextlib
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from mlic.config import load_config
from mlic.data.cache import CachedImages, build_cache, cache_path, open_cache
from mlic.data.datasets import load_helsinki
from mlic.data.pipeline import build_data, load_split, use_cache
from mlic.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mlic.errors import DataError
from mlic.models import Preprocess
from tests.conftest import REPO


def test_cache_holds_the_decoded_images_and_serves_whole_batches(demo_dir, tmp_path):
    ds = load_helsinki(demo_dir)
    path = build_cache(ds, 128, tmp_path)
    array = open_cache(path)
    assert array.shape == (len(ds), 3, 128, 128) and array.dtype == np.uint8
    for i in (0, 7, len(ds) - 1):
        np.testing.assert_array_equal(array[i], np.asarray(ds.read(i)).transpose(2, 0, 1))
    subset = Subset(CachedImages(path, ds.targets), np.array([5, 9, 11, 200]))
    images, targets, rows = subset.__getitems__([3, 0])  # Subset forwards to CachedImages.__getitems__
    assert images.shape == (2, 3, 128, 128) and rows.tolist() == [200, 5]  # rows of the full dataset
    np.testing.assert_array_equal(images[0].numpy(), array[200])
    assert torch.equal(targets, torch.from_numpy(ds.targets[[200, 5]].astype(np.float32)))
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
    np.testing.assert_array_equal(data.train_targets, data.dataset.targets[data.train.indices])
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
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # the failed build left no half-written file
