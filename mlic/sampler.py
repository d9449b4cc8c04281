"""Samplers that produce one global order per epoch, identical on every rank.

Accelerate shards a custom sampler across ranks (`BatchSamplerShard`), so these never look at the rank:
they depend only on (seed, epoch, state) and let Accelerate split the order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from mlic.errors import some
from mlic.labels import LabelMatrix
from mlic.seeding import mix_seed

CLASS_CHOICES = ("random", "cycle", "least_sampled")


def _generator(seed: int, epoch: int) -> torch.Generator:
    # Like torchvision's RASampler (seed + epoch), but mixed so that (seed, epoch) pairs do not collide.
    return torch.Generator().manual_seed(mix_seed(seed, epoch))


class ShuffleSampler(Sampler[int]):
    """A plain reshuffle per epoch with the same interface as the balanced sampler."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=_generator(self.seed, self.epoch)).tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])


class _Members:
    """Class members as CSC over *records*: `records` holds each image's record, [row low 16 bits, row high
    16 bits, number of labels, label ids...] (uint16 below 65,536 labels, else uint32), and `starts`
    lists where the records of class 0's images start, then class 1's, ... (`offsets`, `sizes`).

    Why records rather than row ids into the CSR: least_sampled reads the labels of every drawn image, a
    random access per draw, and at OpenImages size it waits on memory. Through row -> indptr -> indices
    that is three dependent cache misses; a record holds the row and its labels together: two.
    """

    def __init__(self, labels: LabelMatrix, sizes: np.ndarray):
        n, lengths = labels.num_rows, labels.positives_per_row()
        dtype = np.uint16 if labels.num_labels < 1 << 16 else np.uint32
        header = 3
        row_starts = labels.indptr[:-1] + header * np.arange(n, dtype=np.int64)
        total = len(labels.indices) + header * n
        if total >= 1 << 32 or n >= 1 << 32:
            raise ValueError(f"{n} images with {len(labels.indices)} positives: more than the balanced sampler's "
                             "32-bit record positions hold (2**32 images + positives); use a subset")
        self.records = np.empty(total, dtype=dtype)
        is_header = np.zeros(total, dtype=bool)
        rows = np.arange(n, dtype=np.int64)
        for field, value in enumerate((rows & 0xFFFF, rows >> 16, lengths)):
            self.records[row_starts + field] = value
            is_header[row_starts + field] = True
        self.records[~is_header] = labels.indices
        del is_header
        # CSC: a stable argsort of the CSR entries' label ids; as uint16 (below 65,536 labels) numpy sorts
        # them by radix sort, O(nnz), several times faster than its timsort of int32
        indices = labels.indices.astype(np.uint16) if labels.num_labels < 1 << 16 else labels.indices
        entries = np.argsort(indices, kind="stable")
        del indices, rows
        self.starts = np.repeat(row_starts.astype(np.uint32), lengths)[entries]  # the record of each entry's row
        self.sizes = sizes
        self.offsets = np.cumsum(sizes) - sizes  # int64, as `sizes`

    def rows(self, starts: np.ndarray) -> np.ndarray:
        """The image (row) of each record start, int64."""
        return self.records[starts].astype(np.int64) | (self.records[starts + 1].astype(np.int64) << 16)


class MultilabelBalancedSampler(Sampler[int]):
    """Oversamples rare labels: each draw picks a class, then a uniformly random image with that class.

    The reference is Issa Memari's "PyTorch multilabel balanced sampler" (report §2.1). Added here:
    a global, seeded order per epoch (for many ranks), draws of images with no label at `empty_share`
    (the reference never draws them), a configurable epoch length, and a resumable state.

    labels: anything `LabelMatrix.of` reads (dense (N, C) 0/1 array or tensor, scipy CSR, LabelMatrix);
    only positives count (unknown entries of partial labels, and NaN in a dense float array, are not positives). Held sparse: class
    member lists in CSC form, never a dense (N, C) matrix, so OpenImages size (9 M x 10,000) fits.

    class_choice: `random` (uniform over classes), `cycle` (0, 1, ..., C-1 in turn) or `least_sampled`
    (the class with the lowest running count, ties at random; after each draw every label of the
    drawn image counts once). The `least_sampled` counts carry over from epoch to epoch, as in the
    reference; they are part of the state, so the order depends only on (seed, epoch, state).
    """

    def __init__(
        self,
        labels,
        class_choice: str = "least_sampled",
        num_samples: int | None = None,
        empty_share: float | None = None,
        seed: int = 0,
        label_names: Sequence[str] | None = None,
    ):
        if class_choice not in CLASS_CHOICES:
            raise ValueError(f"class_choice must be one of {', '.join(CLASS_CHOICES)}, got {class_choice!r}")
        y = LabelMatrix.of(labels)
        n, c = y.shape
        sizes = y.positive_counts()
        if not sizes.all():
            names = list(label_names) if label_names is not None else [f"class {k}" for k in range(c)]
            missing = [names[k] for k in np.flatnonzero(sizes == 0)]
            raise ValueError(
                f"{len(missing):,} label(s) have no positive image in the training split ({some(missing)}): the balanced "
                "sampler cannot draw them; remove the label or move positives into training"
            )
        self.num_classes = c
        self.num_samples = n if num_samples is None else int(num_samples)
        self.seed = seed
        self.class_choice = class_choice
        self._members = _Members(y, sizes)
        self._empty = np.flatnonzero(y.positives_per_row() == 0)
        self.empty_share = len(self._empty) / n if empty_share is None else float(empty_share)
        if not 0 <= self.empty_share < 1:
            raise ValueError(f"empty_share must be in [0, 1), got {self.empty_share}")
        if self.empty_share > 0 and len(self._empty) == 0:
            raise ValueError(f"empty_share={self.empty_share} but no image is without labels")
        self.epoch = 0
        # least_sampled: counts at the start of epoch `_counts_epoch` (fast-forwarded on demand)
        self._counts_epoch = 0
        self._counts = np.zeros(c, dtype=np.int64)
        self._cached: tuple[int, torch.Tensor, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch).tolist())

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's global order of dataset indices (a tensor of `num_samples` ints)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        self._forward_counts_to(epoch)
        order, _, end_counts = self._draw(epoch, self._counts)
        self._cached = (epoch, order, end_counts)
        return order

    def _forward_counts_to(self, epoch: int) -> None:
        """Sets `_counts` to the least_sampled counts at the start of `epoch`."""
        if self.class_choice != "least_sampled" or epoch == self._counts_epoch:
            return
        if self._cached is not None and self._cached[0] == self._counts_epoch < epoch:
            self._counts, self._counts_epoch = self._cached[2], self._counts_epoch + 1
        if epoch < self._counts_epoch:  # rewind: replay from the start
            self._counts_epoch, self._counts = 0, np.zeros(self.num_classes, dtype=np.int64)
        while self._counts_epoch < epoch:  # fast-forward: the order is a function of the epoch
            self._counts = self._draw(self._counts_epoch, self._counts)[2]
            self._counts_epoch += 1

    def _draw(self, epoch: int, counts: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(order, the class drawn at each position (-1: an image without labels), the counts after)."""
        g = _generator(self.seed, epoch)
        n, m = self.num_samples, self._members
        is_empty = (torch.rand(n, generator=g) < self.empty_share).numpy()
        n_class = n - int(is_empty.sum())
        # float64: a float32 position times a class of > 2**24 images can round up to the class size
        position = torch.rand(n_class, generator=g, dtype=torch.float64).numpy()
        if self.class_choice == "least_sampled":
            from mlic.sampler_kernel import least_sampled  # numba: imported only for this class choice

            choice = torch.rand(n_class, generator=g, dtype=torch.float64).numpy()
            classes, picks, counts = np.empty(n_class, dtype=np.int64), np.empty(n_class, dtype=np.int64), counts.copy()
            least_sampled(counts, choice, position, m.sizes, m.offsets, m.starts, m.records, classes, picks)
        else:
            if self.class_choice == "random":
                classes = torch.randint(self.num_classes, (n_class,), generator=g).numpy()
            else:
                classes = (np.arange(n_class, dtype=np.int64) + epoch * n) % self.num_classes
            sizes = m.sizes[classes]
            picks = m.rows(m.starts[m.offsets[classes] + np.minimum((position * sizes).astype(np.int64), sizes - 1)])
        order = np.empty(n, dtype=np.int64)
        drawn = np.full(n, -1, dtype=np.int64)
        order[~is_empty], drawn[~is_empty] = picks, classes
        if n_class < n:
            order[is_empty] = self._empty[torch.randint(len(self._empty), (n - n_class,), generator=g).numpy()]
        return torch.from_numpy(order), drawn, counts

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "seed": self.seed, "class_choice": self.class_choice,
            "counts_epoch": self._counts_epoch, "counts": self._counts.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("class_choice", self.class_choice) != self.class_choice:
            raise ValueError(f"sampler state is for class_choice={state['class_choice']!r}, not {self.class_choice!r}")
        counts = np.asarray([int(x) for x in state["counts"]], dtype=np.int64)
        if len(counts) != self.num_classes:
            raise ValueError(f"sampler state has counts for {len(counts)} labels, the training split has "
                             f"{self.num_classes}: the checkpoint is from another label set")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self._counts_epoch, self._counts = int(state["counts_epoch"]), counts
        self._cached = None
