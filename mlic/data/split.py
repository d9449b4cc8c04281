"""The train/val split: iterative stratification where it is affordable, the rarest label above that.

Iterative stratification (Sechidis et al. 2011, the `iterative-stratification` package) balances every
label between the two sides, but it works on a dense (N, C) matrix and costs O(N * C) per assigned image
batch: fine for the course corpus (20,000 x 14), hours at OpenImages size. Above `ITERATIVE_LIMIT` entries
each image is stratified by its rarest label only: images are grouped by the label of theirs that has
the fewest positives (images with no label form one more group), and every group is split at
`val_fraction` by systematic sampling (floor or ceil of its share, at a random offset). Rare labels, the
ones a random split gets wrong, are then split exactly; a frequent label is split well by the law of large
numbers. O(nnz + N log N).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from mlic.data.datasets import MultilabelImages
from mlic.errors import DataError
from mlic.labels import LabelMatrix

ITERATIVE_LIMIT = 50_000_000  # N * C entries: above, stratify by each image's rarest label


def stratified_split(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): sorted positions into `labels` (dense (N, C) 0/1, scipy CSR or LabelMatrix; only the
    positives count: a NaN of a dense array is unknown, not positive), fixed by `seed`. Iterative stratification up to ITERATIVE_LIMIT entries, else by
    each image's rarest label (see the module doc)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    labels = LabelMatrix.of(labels)
    if labels.num_rows - math.ceil(val_fraction * labels.num_rows) < 1:
        raise DataError(f"{labels.num_rows} image(s): too few to hold out data.val_fraction={val_fraction} for "
                        "validation and keep one to train on; add images, lower data.val_fraction or set data.val_split")
    if labels.num_rows * (labels.num_labels + 1) <= ITERATIVE_LIMIT:
        return _iterative(labels.dense(), val_fraction, seed)
    return rarest_label_split(labels, val_fraction, seed)


def _iterative(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n = len(targets)
    # Images with no label form one more "class" so they are spread evenly too.
    y = np.concatenate([targets, (targets.sum(1, keepdims=True) == 0)], axis=1).astype(int)
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros((n, 1)), y))
    return np.sort(train_idx), np.sort(val_idx)


def rarest_label_split(labels: LabelMatrix, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image stratified by its rarest label (module doc). Sorted positions (train, val)."""
    n, c = labels.shape
    rng = np.random.default_rng(seed)
    counts = labels.positive_counts()
    rank = np.empty(c, dtype=np.int64)  # 0 = the rarest label; ties by label id
    rank[np.argsort(counts, kind="stable")] = np.arange(c)
    group = np.full(n, c, dtype=np.int64)  # c: no label
    has = np.diff(labels.indptr) > 0
    if labels.indices.size:
        starts = labels.indptr[:-1][has]
        group[has] = np.minimum.reduceat(rank[labels.indices], starts)
    # Shuffle within groups: sort by (group, random key).
    order = np.lexsort((rng.random(n), group))
    sorted_groups = group[order]
    first = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[first, n])
    position = np.arange(n) - np.repeat(first, sizes)  # position within the group
    offset = np.repeat(rng.random(len(first)), sizes)
    # Systematic sampling: position p goes to val when floor((p + 1) f + u) > floor(p f + u).
    val_mask = np.floor((position + 1) * val_fraction + offset) > np.floor(position * val_fraction + offset)
    val = np.sort(order[val_mask])
    train = np.sort(order[~val_mask])
    return train, val


def with_val_split(train: MultilabelImages, val: MultilabelImages) -> MultilabelImages:
    """One dataset holding the rows of `train` then those of `val` (a format's own validation split, such
    as COCO's val2017), so that both sides stay rows of one immutable dataset. `val`'s labels are mapped
    onto `train`'s by name; a label that training does not have is a DataError."""
    extra = sorted(set(val.label_names) - set(train.label_names))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DataError(f"{val.source}: label(s) {shown} of the validation split are not in the training split "
                        f"{train.source}: the model could not learn them (openimages: set data.class_list)")
    column = {name: c for c, name in enumerate(train.label_names)}
    val_labels = val.labels.relabel(np.array([column[name] for name in val.label_names], dtype=np.int64),
                                    train.num_labels)
    fingerprint = hashlib.sha1(f"{train.fingerprint}|{val.fingerprint}".encode()).hexdigest()[:16]
    return MultilabelImages(train.label_names, LabelMatrix.vstack([train.labels, val_labels]),
                            train.names + val.names, StackedDecode([train.decode, val.decode], [len(train), len(val)]),
                            f"{train.source} + {val.source}", fingerprint)


class StackedDecode:
    """`decode` of stacked datasets: row i goes to the part that holds it (a class: workers pickle it)."""

    def __init__(self, decoders, sizes):
        self.decoders, self.starts = list(decoders), np.cumsum([0, *sizes])

    def __call__(self, i: int):
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.decoders[part](int(i - self.starts[part]))
