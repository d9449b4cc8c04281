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


class MultilabelBalancedSampler(Sampler[int]):
    """Oversamples rare labels: each draw picks a class, then a uniformly random image with that class.

    The reference is Issa Memari's "PyTorch multilabel balanced sampler" (report §2.1). Added here:
    a global, seeded order per epoch (for many ranks), draws of images with no label at `empty_share`
    (the reference never draws them), a configurable epoch length, and a resumable state.

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
        y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if y.ndim != 2:
            raise ValueError(f"labels must be an (N, C) 0/1 array, got shape {y.shape}")
        y = y.astype(bool)
        if class_choice not in CLASS_CHOICES:
            raise ValueError(f"class_choice must be one of {', '.join(CLASS_CHOICES)}, got {class_choice!r}")
        n, c = y.shape
        names = list(label_names) if label_names is not None else [f"class {k}" for k in range(c)]
        missing = [names[k] for k in range(c) if not y[:, k].any()]
        if missing:
            raise ValueError(
                f"label(s) {', '.join(missing)} have no positive image in the training split: the balanced "
                "sampler cannot draw them; remove the label or move positives into training"
            )
        self.num_classes = c
        self.num_samples = n if num_samples is None else int(num_samples)
        self.seed = seed
        self.class_choice = class_choice
        members = [np.flatnonzero(y[:, k]) for k in range(c)]
        self._members = torch.from_numpy(np.concatenate(members))
        self._sizes = torch.tensor([len(m) for m in members])
        self._offsets = torch.cumsum(self._sizes, 0) - self._sizes
        self._empty = torch.from_numpy(np.flatnonzero(~y.any(1)))
        self.empty_share = len(self._empty) / n if empty_share is None else float(empty_share)
        if not 0 <= self.empty_share < 1:
            raise ValueError(f"empty_share must be in [0, 1), got {self.empty_share}")
        if self.empty_share > 0 and len(self._empty) == 0:
            raise ValueError(f"empty_share={self.empty_share} but no image is without labels")
        self._label_lists = [np.flatnonzero(row).tolist() for row in y] if class_choice == "least_sampled" else []
        self.epoch = 0
        # least_sampled: counts at the start of epoch `_counts_epoch` (fast-forwarded on demand)
        self._counts_epoch = 0
        self._counts = [0] * c
        self._cached: tuple[int, torch.Tensor, list[int]] | None = None

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
        if self.class_choice == "least_sampled" and epoch != self._counts_epoch:
            if self._cached is not None and self._cached[0] == self._counts_epoch < epoch:
                self._counts, self._counts_epoch = self._cached[2], self._counts_epoch + 1
            if epoch < self._counts_epoch:  # rewind: replay from the start
                self._counts_epoch, self._counts = 0, [0] * self.num_classes
            while self._counts_epoch < epoch:  # fast-forward: the order is a function of the epoch
                self._counts = self._draw(self._counts_epoch, self._counts)[1]
                self._counts_epoch += 1
        order, end_counts = self._draw(epoch, self._counts)
        self._cached = (epoch, order, end_counts)
        return order

    def _draw(self, epoch: int, counts: list[int]) -> tuple[torch.Tensor, list[int]]:
        g = _generator(self.seed, epoch)
        n = self.num_samples
        is_empty = torch.rand(n, generator=g) < self.empty_share
        n_class = n - int(is_empty.sum())
        position = torch.rand(n_class, generator=g)
        if self.class_choice == "random":
            classes = torch.randint(self.num_classes, (n_class,), generator=g)
        elif self.class_choice == "cycle":
            classes = (torch.arange(n_class) + epoch * n) % self.num_classes
        else:
            classes, counts = self._least_sampled(n_class, position, counts, g)
        picks = self._members[self._offsets[classes] + (position * self._sizes[classes]).long()]
        order = torch.empty(n, dtype=torch.long)
        order[~is_empty] = picks
        if n_class < n:
            order[is_empty] = self._empty[torch.randint(len(self._empty), (n - n_class,), generator=g)]
        return order, counts

    def _least_sampled(self, n: int, position: torch.Tensor, counts: list[int], g: torch.Generator):
        """The sequential part: each draw depends on the counts after the previous one.

        `tied` holds the classes at the minimum count `low`; a class leaves it when it is counted, and it
        is rebuilt when empty. Counts never fall, so this is the argmin with uniform random tie-breaks.
        """
        counts = list(counts)
        choice = torch.rand(n, generator=g).tolist()
        pos, sizes, offsets = position.tolist(), self._sizes.tolist(), self._offsets.tolist()
        members, label_lists = self._members.tolist(), self._label_lists
        classes = [0] * n
        tied: list[int] = []
        low = 0
        for k in range(n):
            if not tied:
                low = min(counts)
                tied = [j for j, count in enumerate(counts) if count == low]
            best = tied[int(choice[k] * len(tied))]
            classes[k] = best
            for j in label_lists[members[offsets[best] + int(pos[k] * sizes[best])]]:
                counts[j] += 1
                if counts[j] == low + 1:
                    tied.remove(j)
        return torch.tensor(classes, dtype=torch.long), counts

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "seed": self.seed, "class_choice": self.class_choice,
            "counts_epoch": self._counts_epoch, "counts": list(self._counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("class_choice", self.class_choice) != self.class_choice:
            raise ValueError(f"sampler state is for class_choice={state['class_choice']!r}, not {self.class_choice!r}")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self._counts_epoch, self._counts = int(state["counts_epoch"]), [int(x) for x in state["counts"]]
        self._cached = None
