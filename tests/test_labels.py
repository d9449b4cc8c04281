"""LabelMatrix (sparse positives + known entries) and the train/val split at scale."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mlic.data import split as split_module
from mlic.data.split import rarest_label_split, stratified_split
from mlic.labels import LabelMatrix


@pytest.fixture
def dense():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 9)) < 0.3).astype(np.uint8)
    known = rng.random((60, 9)) < 0.6
    return y, known


def test_every_input_form_gives_the_same_matrix(dense):
    y, _ = dense
    forms = [y, torch.tensor(y), sp.csr_array(y), sp.csr_matrix(y.astype(np.int8)), LabelMatrix.of(y)]
    for form in forms:
        m = LabelMatrix.of(form)
        np.testing.assert_array_equal(m.dense(), y)
        assert not m.partial and m.indices.dtype == np.int32


def test_a_stored_zero_is_not_a_positive():
    m = sp.csr_array((np.array([1, 0], dtype=np.int8), np.array([0, 1]), np.array([0, 2, 2])), shape=(2, 3))
    assert LabelMatrix.of(m).dense().tolist() == [[1, 0, 0], [0, 0, 0]]


def test_known_mask_makes_positives_outside_it_unknown(dense):
    y, known = dense
    for form in (known, sp.csr_array(known)):
        m = LabelMatrix.of(y, form)
        assert m.partial
        np.testing.assert_array_equal(m.dense(), y * known)
        np.testing.assert_array_equal(m.known_dense(), known)
        np.testing.assert_array_equal(m.positive_counts(), (y * known).sum(0))
        np.testing.assert_array_equal(m.known_counts(), known.sum(0))
    assert not LabelMatrix.of(y, np.ones_like(known)).partial  # everything known is not partial


def test_batch_rows_are_one_zero_and_nan(dense):
    y, known = dense
    m = LabelMatrix.of(y, known)
    rows = [7, 3, 7]
    expected = np.where(known[rows], y[rows], np.nan).astype(np.float32)
    np.testing.assert_array_equal(m.target_rows(rows).numpy(), expected)
    np.testing.assert_array_equal(m.target_row(3).numpy(), expected[1])
    np.testing.assert_array_equal(LabelMatrix.of(y).target_rows(rows).numpy(), y[rows].astype(np.float32))


def test_take_keeps_order_and_repeats(dense):
    y, known = dense
    m = LabelMatrix.of(y, known).take([5, 0, 5, 59])
    np.testing.assert_array_equal(m.dense(), (y * known)[[5, 0, 5, 59]])
    np.testing.assert_array_equal(m.known_dense(), known[[5, 0, 5, 59]])


def test_pairs_and_lists():
    m = LabelMatrix.from_pairs([2, 0, 2, 2], [1, 3, 1, 0], 3, 4, known_rows=[1], known_cols=[2])
    assert m.dense().tolist() == [[0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert m.known_dense().tolist() == [[False, False, False, True], [False, False, True, False],
                                        [True, True, False, False]]
    assert LabelMatrix.from_lists([[3, 1], []], 4).dense().tolist() == [[0, 1, 0, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="row outside"):
        LabelMatrix.from_pairs([3], [0], 3, 4)


def test_vstack_and_relabel(dense):
    y, known = dense
    full, partial = LabelMatrix.of(y[:20]), LabelMatrix.of(y[20:], known[20:])
    both = LabelMatrix.vstack([full, partial])
    np.testing.assert_array_equal(both.dense(), np.vstack([y[:20], (y * known)[20:]]))
    np.testing.assert_array_equal(both.known_dense(), np.vstack([np.ones_like(known[:20]), known[20:]]))
    columns = np.array([8, 7, 6, 5, 4, 3, 2, 1, 0]) + 1
    moved = partial.relabel(columns, 10)
    np.testing.assert_array_equal(moved.dense()[:, columns], partial.dense())
    np.testing.assert_array_equal(moved.known_dense()[:, columns], partial.known_dense())
    assert not moved.known_dense()[:, 0].any()


def _zipf_labels(n, c, k, seed=0):
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, c + 1)
    rows = np.repeat(np.arange(n), rng.integers(0, k + 1, size=n))
    return LabelMatrix.from_pairs(rows, rng.choice(c, size=len(rows), p=p / p.sum()), n, c)


def test_rarest_label_split_splits_every_rarest_label_group_exactly():
    labels = _zipf_labels(20_000, 500, 5)
    train, val = rarest_label_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 20_000
    assert np.all(np.diff(val) > 0)
    counts = labels.positive_counts()
    in_val = np.zeros(20_000, bool)
    in_val[val] = True
    rank = np.argsort(np.argsort(counts, kind="stable"), kind="stable")  # 0: the rarest label
    y = labels.dense(dtype=bool)
    group = np.where(y.any(1), np.where(y, rank, 10**9).argmin(1), -1)  # the image's rarest label, -1: none
    for g in np.unique(group):  # every group is split at its floor or ceil of 20 %
        size = (group == g).sum()
        assert np.floor(0.2 * size) <= in_val[group == g].sum() <= np.ceil(0.2 * size), g
    share = labels.take(val).positive_counts()[counts >= 200] / counts[counts >= 200]
    assert np.all(np.abs(share - 0.2) < 0.06), share
    np.testing.assert_array_equal(rarest_label_split(labels, 0.2, seed=3)[1], val)
    assert not np.array_equal(rarest_label_split(labels, 0.2, seed=4)[1], val)


def test_the_split_switches_method_above_the_limit(monkeypatch):
    labels = _zipf_labels(3000, 20, 3)
    small = stratified_split(labels, 0.25, seed=0)
    np.testing.assert_array_equal(small[1], stratified_split(labels.dense(), 0.25, seed=0)[1])
    monkeypatch.setattr(split_module, "ITERATIVE_LIMIT", 100)
    large = stratified_split(labels, 0.25, seed=0)
    np.testing.assert_array_equal(large[1], rarest_label_split(labels, 0.25, 0)[1])
    assert abs(len(large[1]) - 750) <= 21  # one image per group at most
