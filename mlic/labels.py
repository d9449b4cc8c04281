"""Multi-label targets as sparse rows: the positives of each image, and which entries are known.

At OpenImages size (9 M images x 10,000 labels) a dense (N, C) target matrix is ~86 GB; the ~8 positives
per image are ~0.4 GB as CSR. So a dataset holds a `LabelMatrix`, and dense rows exist only per batch.

Partial labels: an entry is positive, negative or unknown. A `LabelMatrix` stores the positives and,
for partially annotated data, the known entries (positives and verified negatives); without that
(`known is None`) every entry is known and every non-positive one is negative. The public functions
(`MultilabelBalancedSampler`, `pos_weight`, `compute_metrics`) take labels as a dense (N, C) 0/1 array or
tensor or a `scipy.sparse` CSR matrix/array (stored non-zero entries = positives) and `known` in the same
forms (dense bool, or CSR whose stored entries are the known ones); `LabelMatrix.of` reads them all.

A batch's dense target row is float: 1 positive, 0 negative, NaN unknown (`target_rows`). NaN rather
than a sentinel such as -1, which tensors padded with -1 for gathering could not tell from padding; NaN
also survives MixUp as "unknown" (a mixed entry is known only where both images' entries are).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def _is_sparse(x) -> bool:
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def _csr_of(x, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64, indices int32) of the non-zero entries of a dense array/tensor or scipy matrix,
    each row's indices sorted."""
    if isinstance(x, LabelMatrix):
        return x.indptr, x.indices
    if _is_sparse(x):
        m = x.tocsr()
        if shape is not None and tuple(m.shape) != tuple(shape):
            raise ValueError(f"sparse labels of shape {tuple(m.shape)}, expected {tuple(shape)}")
        if m.nnz and not np.all(m.data != 0):  # an explicitly stored 0 is not a positive
            m = m.copy()
            m.eliminate_zeros()
        if not m.has_sorted_indices:
            m = m.sorted_indices()
        return np.asarray(m.indptr, dtype=np.int64), np.asarray(m.indices, dtype=np.int32)
    y = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if y.ndim != 2:
        raise ValueError(f"labels must be an (N, C) array, got shape {y.shape}")
    if shape is not None and y.shape != tuple(shape):
        raise ValueError(f"a mask of shape {y.shape}, expected {tuple(shape)}")
    rows, cols = np.nonzero(y)
    indptr = np.zeros(len(y) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(y)), out=indptr[1:])
    return indptr, cols.astype(np.int32)


def _nan_as_unknown(labels, known):
    """(labels, known) with the NaN entries of a dense float `labels` made 0 and left out of `known`."""
    if isinstance(labels, LabelMatrix) or _is_sparse(labels):
        return labels, known
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if not np.issubdtype(y.dtype, np.floating):
        return labels, known
    nan = np.isnan(y)
    if not nan.any():
        return labels, known
    if known is not None:
        n, c = _shape_of(y)
        k_indptr, k_indices = _csr_of(known, (n, c))
        given = np.zeros((n, c), dtype=bool)
        given[_rows_of(k_indptr), k_indices] = True
        nan |= ~given
    return np.where(nan, 0, y), ~nan


def _shape_of(x) -> tuple[int, int]:
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(f"labels must be an (N, C) array, got shape {shape}")
    return int(shape[0]), int(shape[1])


def _take_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of `rows` (in that order, repeats allowed) without a Python loop."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    # position j of the output reads indices[starts[row of j] + (j - new_indptr[row of j])]
    source = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(new_indptr[-1], dtype=np.int64)
    return new_indptr, indices[source]


def _rows_of(indptr: np.ndarray) -> np.ndarray:
    """The row of every stored entry."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))


def _in_rows(indptr, indices, other_indptr, other_indices) -> np.ndarray:
    """For each entry of the first CSR: whether the second CSR (same shape) stores it too."""
    c = int(max(indices.max(initial=-1), other_indices.max(initial=-1))) + 1
    keys = _rows_of(indptr) * c + indices
    other = _rows_of(other_indptr) * c + other_indices
    return np.isin(keys, other, assume_unique=False)


@dataclass(frozen=True, eq=False)
class LabelMatrix:
    """(N, C) targets: the positives as CSR (`indptr` int64 of N + 1, `indices` int32 label ids, sorted
    per row) and, for partial labels, the known entries likewise (`known_indptr`, `known_indices`; they
    contain every positive). Immutable; `take` gives a subset of rows."""

    num_rows: int
    num_labels: int
    indptr: np.ndarray
    indices: np.ndarray
    known_indptr: np.ndarray | None = None
    known_indices: np.ndarray | None = None

    def __post_init__(self):
        for name in ("indptr", "indices", "known_indptr", "known_indices"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.int64 if name.endswith("indptr") else np.int32).view()
                value.setflags(write=False)
                object.__setattr__(self, name, value)
        if len(self.indptr) != self.num_rows + 1:
            raise ValueError(f"indptr has {len(self.indptr)} entries for {self.num_rows} rows")

    # ---- building
    @classmethod
    def of(cls, labels, known=None) -> LabelMatrix:
        """From a dense (N, C) 0/1 array or tensor, a scipy CSR (stored non-zero entries = positives), or
        a LabelMatrix; `known` (same shape, dense bool or CSR; None: all known) marks the known entries.
        A positive outside `known` is unknown, and so is a NaN of a dense float array (the batch rows'
        marker, `target_rows`): not a positive."""
        if isinstance(labels, LabelMatrix) and known is None:
            return labels
        labels, known = _nan_as_unknown(labels, known)
        n, c = _shape_of(labels) if not isinstance(labels, LabelMatrix) else labels.shape
        indptr, indices = _csr_of(labels)
        if known is None:
            return cls(n, c, indptr, indices)
        k_indptr, k_indices = _csr_of(known, (n, c))
        keep = _in_rows(indptr, indices, k_indptr, k_indices)
        if not keep.all():  # positives that are not known are unknown
            rows = _rows_of(indptr)[keep]
            indices = indices[keep]
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        if len(k_indices) == n * c:  # everything known: not partial
            return cls(n, c, indptr, indices)
        return cls(n, c, indptr, indices, k_indptr, k_indices)

    @classmethod
    def from_pairs(cls, rows, cols, num_rows: int, num_labels: int, known_rows=None, known_cols=None) -> LabelMatrix:
        """From (row, label id) pairs of the positives (repeats allowed); `known_rows`/`known_cols` the
        pairs of the known entries (the positives are added to them), or None when every entry is known.
        Vectorised: this is how the large formats (OpenImages' CSV) are read."""
        indptr, indices = _pairs_to_csr(rows, cols, num_rows)
        if known_rows is None:
            return cls(num_rows, num_labels, indptr, indices)
        k_indptr, k_indices = _pairs_to_csr(np.concatenate([np.asarray(known_rows), np.asarray(rows)]),
                                            np.concatenate([np.asarray(known_cols), np.asarray(cols)]), num_rows)
        return cls(num_rows, num_labels, indptr, indices, k_indptr, k_indices)

    @classmethod
    def from_lists(cls, positives: Sequence[Sequence[int]], num_labels: int,
                   known: Sequence[Sequence[int]] | None = None) -> LabelMatrix:
        """From per-image lists of label ids; `known` (per image: its known label ids; its positives are
        added) or None when every entry is known."""
        rows, cols = _lists_to_pairs(positives)
        if known is None:
            return cls.from_pairs(rows, cols, len(positives), num_labels)
        return cls.from_pairs(rows, cols, len(positives), num_labels, *_lists_to_pairs(known))

    @classmethod
    def vstack(cls, parts: Sequence[LabelMatrix]) -> LabelMatrix:
        """The rows of `parts` one after the other (same label count). Partial if any part is: the
        known entries of a fully annotated part are then all of its entries."""
        c = parts[0].num_labels
        if any(p.num_labels != c for p in parts):
            raise ValueError("stacked label matrices have different label counts")
        indptr, indices = _stack([(p.indptr, p.indices) for p in parts])
        n = sum(p.num_rows for p in parts)
        if not any(p.partial for p in parts):
            return cls(n, c, indptr, indices)
        every = np.arange(c, dtype=np.int32)
        known = [(p.known_indptr, p.known_indices) if p.partial else
                 (np.arange(p.num_rows + 1, dtype=np.int64) * c, np.tile(every, p.num_rows)) for p in parts]
        return cls(n, c, indptr, indices, *_stack(known))

    def relabel(self, columns: np.ndarray, num_labels: int) -> LabelMatrix:
        """Label j becomes label `columns[j]` of `num_labels` (a map into another label list; every entry
        of `columns` must be a valid, distinct id)."""
        columns = np.asarray(columns, dtype=np.int64)
        rows = _rows_of(self.indptr)
        if not self.partial:
            return LabelMatrix.from_pairs(rows, columns[self.indices], self.num_rows, num_labels)
        return LabelMatrix.from_pairs(rows, columns[self.indices], self.num_rows, num_labels,
                                      _rows_of(self.known_indptr), columns[self.known_indices])

    # ---- shape
    @property
    def shape(self) -> tuple[int, int]:
        return self.num_rows, self.num_labels

    def __len__(self) -> int:
        return self.num_rows

    @property
    def partial(self) -> bool:
        """Whether some entries are unknown."""
        return self.known_indptr is not None

    @property
    def nbytes(self) -> int:
        arrays = (self.indptr, self.indices, self.known_indptr, self.known_indices)
        return sum(a.nbytes for a in arrays if a is not None)

    # ---- subsets and dense rows
    def take(self, rows) -> LabelMatrix:
        """The rows `rows` (int indices, in that order), as a new LabelMatrix."""
        rows = np.asarray(rows, dtype=np.int64)
        indptr, indices = _take_rows(self.indptr, self.indices, rows)
        if not self.partial:
            return LabelMatrix(len(rows), self.num_labels, indptr, indices)
        k_indptr, k_indices = _take_rows(self.known_indptr, self.known_indices, rows)
        return LabelMatrix(len(rows), self.num_labels, indptr, indices, k_indptr, k_indices)

    def dense(self, rows=None, dtype=np.uint8) -> np.ndarray:
        """(len(rows), C) positives as 0/1 (unknown entries are 0); rows None: all (small data only)."""
        m = self if rows is None else self.take(rows)
        out = np.zeros(m.shape, dtype=dtype)
        out[_rows_of(m.indptr), m.indices] = 1
        return out

    def known_dense(self, rows=None) -> np.ndarray | None:
        """(len(rows), C) bool mask of the known entries; None when every entry is known."""
        if not self.partial:
            return None
        m = self if rows is None else self.take(rows)
        out = np.zeros(m.shape, dtype=bool)
        out[_rows_of(m.known_indptr), m.known_indices] = True
        return out

    def target_rows(self, rows) -> torch.Tensor:
        """The batch's float32 targets: 1 positive, 0 negative, NaN unknown (see the module doc)."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if self.partial:
            out = np.full((len(rows), self.num_labels), np.nan, dtype=np.float32)
            indptr, indices = _take_rows(self.known_indptr, self.known_indices, rows)
            out[_rows_of(indptr), indices] = 0.0
        else:
            out = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        indptr, indices = _take_rows(self.indptr, self.indices, rows)
        out[_rows_of(indptr), indices] = 1.0
        return torch.from_numpy(out)

    def target_row(self, row: int) -> torch.Tensor:
        """One image's target row (as `target_rows`), from its slices of the CSR arrays."""
        if self.partial:
            out = np.full(self.num_labels, np.nan, dtype=np.float32)
            out[self.known_indices[self.known_indptr[row]:self.known_indptr[row + 1]]] = 0.0
        else:
            out = np.zeros(self.num_labels, dtype=np.float32)
        out[self.indices[self.indptr[row]:self.indptr[row + 1]]] = 1.0
        return torch.from_numpy(out)

    # ---- counts (all sparse)
    def positive_counts(self) -> np.ndarray:
        """Positives per label, (C,) int64."""
        return np.bincount(self.indices, minlength=self.num_labels).astype(np.int64)

    def known_counts(self) -> np.ndarray:
        """Known entries per label, (C,) int64 (N for every label without partial labels)."""
        if not self.partial:
            return np.full(self.num_labels, self.num_rows, dtype=np.int64)
        return np.bincount(self.known_indices, minlength=self.num_labels).astype(np.int64)

    def positives_per_row(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row_positives(self, row: int) -> np.ndarray:
        return self.indices[self.indptr[row]:self.indptr[row + 1]]

    def unknown_as_negative(self) -> LabelMatrix:
        """The common baseline for partial labels: every unknown entry read as a negative."""
        return LabelMatrix(self.num_rows, self.num_labels, self.indptr, self.indices)

    def to_scipy(self):
        """A scipy CSR array of the positives (int8 ones)."""
        import scipy.sparse

        data = np.ones(len(self.indices), dtype=np.int8)
        return scipy.sparse.csr_array((data, self.indices, self.indptr), shape=self.shape)


def _stack(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    indptrs, offset = [np.zeros(1, dtype=np.int64)], 0
    for indptr, _ in parts:
        indptrs.append(indptr[1:] + offset)
        offset += int(indptr[-1])
    return np.concatenate(indptrs), np.concatenate([indices for _, indices in parts])


def _lists_to_pairs(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    cols = np.fromiter((int(j) for x in lists for j in x), dtype=np.int64, count=int(lengths.sum()))
    return np.repeat(np.arange(len(lists), dtype=np.int64), lengths), cols


def _pairs_to_csr(rows, cols, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, de-duplicated CSR of (row, col) pairs."""
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= num_rows):
        raise ValueError(f"a row outside 0..{num_rows - 1}")
    if len(cols) and cols.min() < 0:
        raise ValueError("a negative label id")
    width = int(cols.max(initial=0)) + 1
    keys = np.sort(rows * width + cols)  # by row, then label (np.sort: np.unique hashes, ~100x slower here)
    if len(keys):
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]  # a repeated pair once
    rows, cols = keys // width, keys % width
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    return indptr, cols.astype(np.int32)
