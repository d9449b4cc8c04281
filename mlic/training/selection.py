"""`train.select_metric`: checked before anything is built, and the split whose weights it exports."""

from __future__ import annotations

from mlic.config import Config
from mlic.errors import ConfigError
from mlic.metrics import METRIC_KEYS, THRESHOLD_FREE


def chosen_split(cfg: Config, metrics: dict[str, dict]) -> tuple[str, str]:
    """The split whose model `train.select_metric` rates: its own split, except that with an EMA `val/`
    takes the better of the raw weights and their average (`val_ema/` asks for the average alone)."""
    split, _, key = cfg.train.select_metric.partition("/")
    if split == "val" and "val_ema" in metrics:
        raw, ema = metrics["val"][key], metrics["val_ema"][key]
        if (ema < raw) if key == "loss" else (ema > raw):
            split = "val_ema"
    return split, key


def check_select_metric(cfg: Config) -> None:
    """`train.select_metric` names a metric the run reports: `*_tuned` only on val, with per-label thresholds;
    `val_ema/` only with an EMA."""
    name = cfg.train.select_metric
    split, _, key = name.partition("/")
    known = {*METRIC_KEYS, "loss"}
    if split in ("val", "val_ema") and cfg.eval.thresholds == "per_label":
        known |= {f"{k}_tuned" for k in METRIC_KEYS if k not in THRESHOLD_FREE}
    splits = ("train", "val", "val_ema") if cfg.train.ema_decay is not None else ("train", "val")
    if split not in splits or key not in known:
        raise ConfigError(f"config key 'train.select_metric': {name!r} is not a metric of this run; use "
                          f"{', '.join(s + '/' for s in splits)} with one of {', '.join(sorted(known))} "
                          "(`*_tuned`: val with eval.thresholds=per_label; val_ema/: with train.ema_decay set)")
