"""From a config to DataLoaders and on-device transforms: the split, the sampler, the cache.

One index space: `train_idx`, `val_idx` and the third element of every sample are rows of the full,
immutable dataset; `Data.train` and `Data.val` are `torch.utils.data.Subset`s over them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mlic.data.cache import CachedImages, NoSpaceForCache, Square, build_cache, collate_batch
from mlic.data.datasets import MultilabelImages, Transformed
from mlic.data.demo import cache_home
from mlic.data.registry import load_dataset
from mlic.data.resolution import resolve_cache_size
from mlic.data.split import stratified_split, with_val_split
from mlic.data.transforms import DeviceTransform, per_image_transform
from mlic.errors import ConfigError, DataError, some
from mlic.labels import LabelMatrix
from mlic.sampler import MultilabelBalancedSampler, ShuffleSampler

CACHE_AUTO_LIMIT = 32 * 2**30  # bytes: above this, `data.cache=auto` decodes per image instead


class Split(NamedTuple):
    """The full dataset and the rows of it for training and for validation (sorted, disjoint). Under
    `data.skip_bad` the unreadable rows are in neither (`Data.skipped_images` counts them)."""

    dataset: MultilabelImages
    train_idx: np.ndarray
    val_idx: np.ndarray


@dataclass
class Data:
    dataset: MultilabelImages  # the full dataset: train and val are Subsets of it, by its rows
    train: Subset
    val: Subset
    train_labels: LabelMatrix  # the training split's labels, in `train` order
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: ShuffleSampler | MultilabelBalancedSampler
    train_transform: torch.nn.Module
    eval_transform: torch.nn.Module
    cached: bool
    skipped_images: int = 0


class PassThrough(torch.nn.Module):
    """Per-image path: the workers already augmented and normalised; only the memory layout is left."""

    def __init__(self, channels_last: bool):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def use_cache(cfg_data, num_images: int) -> bool:
    if cfg_data.cache == "auto":  # a cache_size still "auto" (not resolved yet): estimated at the course's 128
        side = cfg_data.cache_size if cfg_data.cache_size != "auto" else 128
        return num_images * 3 * side**2 <= CACHE_AUTO_LIMIT
    return cfg_data.cache == "on"


def check_labels(cfg, dataset: MultilabelImages) -> None:
    """The data's labels against what the config says they are."""
    if dataset.num_labels == 0:
        raise DataError(f"{dataset.source}: no labels (a folder without annotations/ is a test set: use `mlic predict`)")
    if cfg.data.labels is not None and list(cfg.data.labels) != dataset.label_names:
        missing = sorted(set(cfg.data.labels) - set(dataset.label_names))
        extra = sorted(set(dataset.label_names) - set(cfg.data.labels))
        order = "" if missing or extra else " (the same names in another order: the order is the label order)"
        raise ConfigError(f"config key 'data.labels' does not match {dataset.source}{order}: missing from the data "
                          f"{some(missing) or 'none'}; not in the config {some(extra) or 'none'}")
    if cfg.model.num_labels is not None and cfg.model.num_labels != dataset.num_labels:
        raise ConfigError(
            f"config key 'model.num_labels' is {cfg.model.num_labels} but the data has {dataset.num_labels} labels "
            f"({some(dataset.label_names)}); remove the key or fix the data"
        )


def load_split(cfg) -> Split:
    """The labelled dataset and its train/val split, as rows of the dataset: a stratified split of the
    data, or with `data.val_split` the format's own validation split (stacked after the training rows).
    Problems in the data are a DataError here, except unreadable images under `data.skip_bad`: those rows
    are left out of both sides (found by decoding every image, which happens only then). Under
    `data.unknown_as=negative` the unknown entries of partial labels become negatives here."""
    workers = max(2, cfg.data.num_workers)
    dataset, rows = load_dataset(cfg.data, workers=workers)
    check_labels(cfg, dataset)
    if cfg.data.val_split is None:
        train, val = stratified_split(dataset.labels.take(rows), cfg.data.val_fraction, cfg.data.seed)
        train_idx, val_idx = rows[train], rows[val]
    else:
        val_cfg = dataclasses.replace(cfg.data, split=cfg.data.val_split, hf_split=cfg.data.val_split)
        val_dataset, val_rows = load_dataset(val_cfg, workers=workers)
        train_idx, val_idx = rows, len(dataset) + val_rows
        dataset = with_val_split(dataset, val_dataset)
    if not len(val_idx):  # a stratified split can hold out nothing when every label is rare
        where = f"data.val_split={cfg.data.val_split!r}" if cfg.data.val_split else \
            f"holding out data.val_fraction={cfg.data.val_fraction} of {len(rows)} images"
        raise DataError(f"{dataset.source}: no validation image ({where}); raise data.val_fraction, add images or "
                        "set data.val_split")
    if cfg.data.unknown_as == "negative" and dataset.labels.partial:
        dataset = dataclasses.replace(dataset, labels=dataset.labels.unknown_as_negative())
    return Split(dataset, train_idx, val_idx)


def build_sampler(cfg, labels: LabelMatrix, label_names: list[str]):
    """The training sampler over positions 0..len(labels)-1 of the training split."""
    if cfg.sampler.name == "balanced":
        try:
            return MultilabelBalancedSampler(
                labels, cfg.sampler.class_choice, cfg.sampler.num_samples, cfg.sampler.empty_share,
                seed=cfg.train.seed, label_names=label_names,
            )
        except ValueError as exc:
            raise ConfigError(f"sampler: {exc}") from None
    return ShuffleSampler(len(labels), seed=cfg.train.seed)


def build_data(cfg, accelerator, split: Split, preprocess, channels_last: bool) -> Data:
    """Loaders and transforms for `split` (from `load_split`); `preprocess.size` is the model's input
    side. The cache is built once per node and holds only the rows of the split."""
    dataset, train_idx, val_idx = split
    size, mode = preprocess.size, preprocess.interpolation
    used = np.union1d(train_idx, val_idx)
    if cfg.data.cache_size == "auto":  # build_run resolves (and records) it first; other callers get it here
        cfg, _ = resolve_cache_size(cfg, dataset, used, preprocess)
    cached = use_cache(cfg.data, len(dataset))  # the cache file has a slot for every row
    square = Square.of_data(cfg.data)
    world = accelerator.num_processes
    common = {"num_workers": cfg.data.num_workers, "pin_memory": torch.cuda.is_available(),
              "persistent_workers": cfg.data.num_workers > 0}
    if cached:
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else cache_home() / "images"
        rows = None if len(used) == len(dataset) else used
        with accelerator.local_main_process_first():
            try:
                path = build_cache(dataset, square, cache_dir, rows=rows)  # every core of the node
            except NoSpaceForCache:
                raise
            except DataError as exc:  # an unreadable image: the cache is the first to decode every one
                raise DataError(f"{exc}; `mlic check-data` on the dataset lists every problem; data.skip_bad=true "
                                "leaves unreadable images out of training") from None
        train_source = val_source = CachedImages(path, dataset.labels)
        common["collate_fn"] = collate_batch
        shape = {"resize": cfg.data.resize, "crop_pct": preprocess.crop_pct}
        train_transform = DeviceTransform(size, preprocess.mean, preprocess.std, cfg.augment, channels_last, mode, **shape)
        eval_transform = DeviceTransform(size, preprocess.mean, preprocess.std, None, channels_last, mode, **shape)
    else:
        shape = {"resize": cfg.data.resize, "crop_pct": preprocess.crop_pct, "background": cfg.data.background}
        train_source = Transformed(dataset, per_image_transform(size, preprocess.mean, preprocess.std, cfg.augment,
                                                                mode, **shape))
        val_source = Transformed(dataset, per_image_transform(size, preprocess.mean, preprocess.std, None, mode, **shape))
        train_transform = eval_transform = PassThrough(channels_last)
    train, val = Subset(train_source, train_idx), Subset(val_source, val_idx)
    train_labels = dataset.labels.take(train_idx)
    sampler = build_sampler(cfg, train_labels, dataset.label_names)
    if len(sampler) < cfg.train.batch_size * world:  # not one whole batch per process: an epoch of no step
        drawn = (f"the sampler's {len(sampler)} draws per epoch (sampler.num_samples)" if cfg.sampler.num_samples
                 else f"the {len(train)} training images")
        raise ConfigError(f"config key 'train.batch_size': {cfg.train.batch_size} per process x {world} processes is "
                          f"more than {drawn}; lower it")
    train_loader = DataLoader(train, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val, batch_size=cfg.train.eval_batch_size, shuffle=False, **common)
    return Data(dataset, train, val, train_labels, train_loader, val_loader, sampler, train_transform,
                eval_transform, cached, skipped_images=len(dataset) - len(used))
