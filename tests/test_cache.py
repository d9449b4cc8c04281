import os

import numpy as np
import torch
from torch.utils.data import Subset

from mlic.config import load_config
from mlic.data.cache import CachedImages, build_cache, cache_path, open_cache
from mlic.data.datasets import load_helsinki
from mlic.data.pipeline import use_cache


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
