"""Weighted binary cross-entropy for imbalanced multi-label data (report §2.1, "Weighted loss")."""

from __future__ import annotations

import numpy as np
import torch


def pos_weight(labels, clip: float | None = None) -> torch.Tensor:
    """negatives / positives per label, as BCEWithLogitsLoss's `pos_weight` wants it.

    A label with no positive gets the number of negatives (as if it had one positive) rather than inf;
    `clip` caps every weight (rare labels can otherwise dominate the loss).
    """
    y = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels), dtype=torch.float64)
    if y.ndim != 2:
        raise ValueError(f"labels must be an (N, C) 0/1 array, got shape {tuple(y.shape)}")
    positives = y.sum(0)
    negatives = y.shape[0] - positives
    weight = negatives / positives.clamp(min=1)
    if clip is not None:
        weight = weight.clamp(max=clip)
    return weight.float()


def build_loss(kind: str, train_labels, clip: float | None = None) -> torch.nn.Module:
    """`none`: plain BCEWithLogitsLoss; `auto`: with `pos_weight` from the training split's labels."""
    if kind == "auto":
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(train_labels, clip))
    return torch.nn.BCEWithLogitsLoss()
