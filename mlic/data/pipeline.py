"""From a config to DataLoaders and on-device transforms: the split, the sampler, the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlic.data.cache import CachedImages, build_cache, collate_batch
from mlic.data.datasets import MultilabelImages, load_dataset, stratified_split
from mlic.data.demo import cache_home
from mlic.data.transforms import DeviceTransform, per_image_transform
from mlic.errors import ConfigError, DataError
from mlic.sampler import MultilabelBalancedSampler, ShuffleSampler

CACHE_AUTO_LIMIT = 32 * 2**30  # bytes: above this, `data.cache=auto` decodes per image instead


@dataclass
class Data:
    dataset: MultilabelImages  # the whole labelled dataset
    train: MultilabelImages
    val: MultilabelImages
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: ShuffleSampler | MultilabelBalancedSampler
    train_transform: torch.nn.Module
    eval_transform: torch.nn.Module
    cached: bool
    skipped_images: int = 0

    @property
    def train_targets(self) -> np.ndarray:
        return self.train.targets


class PassThrough(torch.nn.Module):
    """Per-image path: the workers already augmented and normalised; only the memory layout is left."""

    def __init__(self, channels_last: bool):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def use_cache(cfg_data, num_images: int) -> bool:
    if cfg_data.cache == "auto":
        return num_images * 3 * cfg_data.cache_size**2 <= CACHE_AUTO_LIMIT
    return cfg_data.cache == "on"


def unreadable_images(dataset: MultilabelImages, workers: int = 4) -> list[int]:
    """Rows (of the full dataset) whose image cannot be decoded."""
    from concurrent.futures import ThreadPoolExecutor

    def bad(i: int) -> bool:
        try:
            dataset.read_base(i)
        except DataError:
            return True
        return False

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [i for i, b in enumerate(pool.map(bad, range(len(dataset.all_names)))) if b]


def load_split(cfg) -> tuple[MultilabelImages, np.ndarray, np.ndarray]:
    """The labelled dataset (without unreadable images when `data.skip_bad`) and its train/val split."""
    dataset = load_dataset(cfg.data)
    if dataset.num_labels == 0:
        raise DataError(f"{dataset.source}: no labels (a folder without annotations/ is a test set: use `mlic predict`)")
    if cfg.data.labels is not None and list(cfg.data.labels) != dataset.label_names:
        missing = sorted(set(cfg.data.labels) - set(dataset.label_names))
        extra = sorted(set(dataset.label_names) - set(cfg.data.labels))
        raise ConfigError(f"config key 'data.labels' does not match {dataset.source}: missing from the data "
                          f"{missing or 'none'}, not in the config {extra or 'none'}")
    if cfg.model.num_labels is not None and cfg.model.num_labels != dataset.num_labels:
        raise ConfigError(
            f"config key 'model.num_labels' is {cfg.model.num_labels} but the data has {dataset.num_labels} labels "
            f"({', '.join(dataset.label_names)}); remove the key or fix the data"
        )
    if cfg.data.skip_bad:
        bad = set(unreadable_images(dataset, max(2, cfg.data.num_workers)))
        dataset = dataset.subset(np.array([i for i in range(len(dataset)) if i not in bad], dtype=np.int64))
        dataset.skipped = sorted(bad)
    train_idx, val_idx = stratified_split(dataset.targets, cfg.data.val_fraction, cfg.data.seed)
    return dataset, train_idx, val_idx


def build_sampler(cfg, train: MultilabelImages):
    if cfg.sampler.name == "balanced":
        try:
            return MultilabelBalancedSampler(
                train.targets, cfg.sampler.class_choice, cfg.sampler.num_samples, cfg.sampler.empty_share,
                seed=cfg.train.seed, label_names=train.label_names,
            )
        except ValueError as exc:
            raise ConfigError(f"sampler: {exc}") from None
    return ShuffleSampler(len(train), seed=cfg.train.seed)


def build_data(cfg, accelerator, split, preprocess, channels_last: bool) -> Data:
    """Loaders and transforms for `split` (from `load_split`). The cache is built once per node."""
    dataset, train_idx, val_idx = split
    size = cfg.data.image_size or preprocess.size
    cached = use_cache(cfg.data, len(dataset.all_names))
    world = accelerator.num_processes
    common = {"num_workers": cfg.data.num_workers, "pin_memory": torch.cuda.is_available(),
              "persistent_workers": cfg.data.num_workers > 0}
    if cached:
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_home() / "images"
        with accelerator.local_main_process_first():
            path = build_cache(dataset, cfg.data.cache_size, cache_dir, workers=max(2, cfg.data.num_workers),
                               skip=set(dataset.skipped))
        train, val = dataset.subset(train_idx), dataset.subset(val_idx)
        train_set, val_set = CachedImages(train, path), CachedImages(val, path)
        common["collate_fn"] = collate_batch
        train_transform = DeviceTransform(size, preprocess.mean, preprocess.std, cfg.augment, channels_last)
        eval_transform = DeviceTransform(size, preprocess.mean, preprocess.std, None, channels_last)
    else:
        train = dataset.subset(train_idx, per_image_transform(size, preprocess.mean, preprocess.std, cfg.augment))
        val = dataset.subset(val_idx, per_image_transform(size, preprocess.mean, preprocess.std))
        train_set, val_set = train, val
        train_transform = eval_transform = PassThrough(channels_last)
    if len(train) < cfg.train.batch_size * world:
        raise ConfigError(
            f"config key 'train.batch_size': {cfg.train.batch_size} per process x {world} processes is more than "
            f"the {len(train)} training images; lower it"
        )
    sampler = build_sampler(cfg, train)
    train_loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val_set, batch_size=cfg.train.eval_batch_size, shuffle=False, **common)
    return Data(dataset, train, val, train_loader, val_loader, sampler, train_transform, eval_transform, cached,
                len(dataset.skipped))
