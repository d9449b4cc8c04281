"""Partial labels in the metrics and in `pos_weight`: unknown entries count nowhere, and sparse labels give
the numbers dense ones give."""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from mlic.labels import LabelMatrix
from mlic.losses import pos_weight
from mlic.metrics import (
    METRIC_KEYS,
    compute_metrics,
    heldout_tuned_f1_macro,
    mean_average_precision,
    per_label_metrics,
    split_known,
    top_k_predictions,
    tune_thresholds,
    tuned_metrics,
)


def random_case(seed, n=120, c=6, known_share=0.7):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.05, 0.5, c)).astype(np.int64)
    p = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1).round(2)  # rounded: tied scores too
    known = rng.random(y.shape) < known_share
    return y, p, known


def same(a, b):
    return a == pytest.approx(b, rel=1e-12, abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("threshold", [0.5, "per_label"])
def test_all_known_equals_no_mask_for_every_key(threshold):
    for seed in range(5):
        y, p, _ = random_case(seed)
        t = 0.5 if threshold == 0.5 else np.random.default_rng(seed).uniform(0.3, 0.7, y.shape[1])
        everything = np.ones(y.shape, dtype=bool)
        plain, masked = compute_metrics(y, p, t), compute_metrics(y, p, t, known=everything)
        assert set(METRIC_KEYS) <= set(masked) and plain.keys() == masked.keys()
        for key in plain:
            assert same(masked[key], plain[key]), key
        assert same(tuned_metrics(y, p, t, everything), tuned_metrics(y, p, t))
        assert same(heldout_tuned_f1_macro(y, p, known=everything), heldout_tuned_f1_macro(y, p))
        assert np.array_equal(tune_thresholds(y, p, known=everything), tune_thresholds(y, p))
        names = [f"l{c}" for c in range(y.shape[1])]
        for a, b in zip(per_label_metrics(y, p, names, t, known=everything), per_label_metrics(y, p, names, t)):
            assert a["confusion"] == b["confusion"] and a["support"] == b["support"]
            assert all(same(a[k], b[k]) for k in ("precision", "recall", "f1", "AP"))


def test_a_masked_label_scores_as_its_known_rows_alone():
    y, p, known = random_case(7, n=200)
    m = per_label_metrics(y, p, [f"l{c}" for c in range(y.shape[1])], known=known)
    thresholds = tune_thresholds(y, p, known=known)
    for c in range(y.shape[1]):
        rows = known[:, c]
        y_c, p_c, pred_c = y[rows, c], p[rows, c], (p[rows, c] >= 0.5).astype(int)
        assert m[c]["AP"] == pytest.approx(average_precision_score(y_c, p_c), abs=1e-12)
        assert m[c]["precision"] == pytest.approx(precision_score(y_c, pred_c, zero_division=0), abs=1e-12)
        assert m[c]["recall"] == pytest.approx(recall_score(y_c, pred_c, zero_division=0), abs=1e-12)
        assert m[c]["f1"] == pytest.approx(f1_score(y_c, pred_c, zero_division=0), abs=1e-12)
        assert m[c]["support"] == y_c.sum() and np.sum(m[c]["confusion"]) == rows.sum()
        # the one-label metrics of the deleted rows are those of the masked column
        alone = compute_metrics(y_c[:, None], p_c[:, None])
        masked = compute_metrics(y[:, [c]], p[:, [c]], known=known[:, [c]])
        assert all(same(masked[k], alone[k]) for k in alone)
        assert thresholds[c] == tune_thresholds(y_c[:, None], p_c[:, None])[0]


def test_micro_accuracy_and_subset_accuracy_by_hand():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    p = np.array([[0.9, 0.7, 0.2], [0.6, 0.8, 0.1], [0.1, 0.9, 0.9], [0.3, 0.2, 0.8]])
    known = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=bool)
    # known entries (truth, prediction at .5): row 0: (1,1) (1,0); row 1: (0,1) (1,1) (0,0); row 3: (0,0) (0,0)
    # tp 2, fp 1, fn 1, tn 3: 7 known entries, 5 right; row 2 has none and is left out of subset_accuracy
    m = compute_metrics(y, p, known=known)
    assert m["OP"] == m["precision_micro"] == pytest.approx(2 / 3)
    assert m["OR"] == m["recall_micro"] == pytest.approx(2 / 3)
    assert m["OF1"] == m["f1_micro"] == pytest.approx(4 / 6)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)  # row 3 right; rows 0, 1 each one wrong
    # per label (tp, predicted, positives) over the known rows: (1,2,1) (1,1,1) (0,0,1)
    assert m["CP"] == pytest.approx((1 / 2 + 1 + 0) / 3) and m["CR"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # AP: label 0 known rows 0,1,3: truth 1 0 0, scores .9 .6 .3 -> 1; label 1 rows 1,3: 1 0, .8 .2 -> 1;
    # label 2 rows 0,1: 1 0, .2 .1 -> 1
    assert m["mAP"] == pytest.approx(1.0)
    assert np.isnan(compute_metrics(y, p, known=np.zeros_like(known))["accuracy"])


def test_an_unknown_entry_changes_nothing_whatever_its_score_or_truth():
    y, p, known = random_case(3)
    base = compute_metrics(y, p, known=known)
    base_rows = per_label_metrics(y, p, list("abcdef"), known=known)
    rng = np.random.default_rng(0)
    for _ in range(10):
        i, c = np.argwhere(~known)[rng.integers((~known).sum())]
        y2, p2 = y.copy(), p.copy()
        y2[i, c], p2[i, c] = 1 - y2[i, c], (1.0 if p2[i, c] < 0.5 else 0.0)  # wildly wrong, and the truth flipped
        m = compute_metrics(y2, p2, known=known)
        assert all(same(m[k], base[k]) for k in base)
        assert per_label_metrics(y2, p2, list("abcdef"), known=known) == base_rows
        assert np.array_equal(tune_thresholds(y2, p2, known=known), tune_thresholds(y, p, known=known))
        assert heldout_tuned_f1_macro(y2, p2, known=known) == heldout_tuned_f1_macro(y, p, known=known)


def test_top3_ignores_unknown_labels():
    p = np.array([[0.99, 0.98, 0.97, 0.96, 0.6]])
    known = np.array([[False, True, False, True, True]])
    assert top_k_predictions(p, 0.5).tolist() == [[1, 1, 1, 0, 0]]
    # labels 0 and 2 are unknown: the known 1, 3, 4 take the three slots, and an unknown is never predicted
    assert top_k_predictions(p, 0.5, known=known).tolist() == [[0, 1, 0, 1, 1]]
    y = np.array([[1, 0, 1, 1, 1]])
    m = compute_metrics(y, p, known=known)  # known: label 1 (fp), 3 (tp), 4 (tp)
    assert m["OP_top3"] == pytest.approx(2 / 3) and m["OR_top3"] == pytest.approx(1.0)


def test_sparse_truth_and_mask_equal_dense():
    y, p, known = random_case(11)
    t = np.linspace(0.4, 0.6, y.shape[1])
    dense = compute_metrics(y, p, t, known=known)
    dense_rows = per_label_metrics(y, p, list("abcdef"), t, known=known)
    for csr in (scipy.sparse.csr_array, scipy.sparse.csr_matrix):
        y_sparse, known_sparse = csr(y.astype(np.int8)), csr(known.astype(np.int8))
        for k in (known, known_sparse):
            assert compute_metrics(y_sparse, p, t, known=k) == dense
            assert per_label_metrics(y_sparse, p, list("abcdef"), t, known=k) == dense_rows
            assert np.array_equal(tune_thresholds(y_sparse, p, known=k), tune_thresholds(y, p, known=known))
        assert compute_metrics(y_sparse, p, t) == compute_metrics(y, p, t)
        assert mean_average_precision(y_sparse, p) == mean_average_precision(y, p)
    # a partial LabelMatrix carries its own known entries; NaN targets mark theirs
    assert compute_metrics(LabelMatrix.of(y, known), p, t) == dense
    assert compute_metrics(np.where(known, y, np.nan), p, t) == dense
    assert compute_metrics(torch.tensor(np.where(known, y, np.nan)), p, t) == dense


def test_split_known():
    y01, known = split_known(np.array([[1.0, np.nan], [0.0, 1.0]]))
    assert y01.tolist() == [[1, 0], [0, 1]] and known.tolist() == [[True, False], [True, True]]
    y01, known = split_known(torch.tensor([[1.0, 0.0]]))
    assert known is None and y01.tolist() == [[1, 0]] and y01.dtype == np.uint8
    assert split_known(np.array([[1, 0]]))[1] is None
    rows = LabelMatrix.from_lists([[0], [2]], 3, known=[[1], [0, 1]]).target_rows([0, 1])
    y01, known = split_known(rows)
    assert y01.tolist() == [[1, 0, 0], [0, 0, 1]] and known.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_pos_weight_counts_known_entries_only():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 0], [0, 1]])
    known = np.array([[1, 1], [1, 0], [1, 1], [0, 0], [0, 1]], dtype=bool)
    # label 0: known rows 0, 1, 2 -> 2 positives, 1 negative; label 1: rows 0, 2, 4 -> 2 positives, 1 negative
    assert pos_weight(y, known=known).tolist() == [0.5, 0.5]
    assert pos_weight(y).tolist() == [1.5, 1.5]
    # a positive outside `known` is unknown: label 0 keeps no positive and gets its 2 negatives (then the clip);
    # label 1 has 2 positives, 1 negative
    only_negatives = np.array([[0, 1], [1, 1], [1, 1]], dtype=bool)
    assert pos_weight(np.array([[1, 1], [0, 0], [0, 1]]), known=only_negatives).tolist() == [2.0, 0.5]
    assert pos_weight(np.array([[1, 1], [0, 0], [0, 1]]), clip=1.5, known=only_negatives).tolist() == [1.5, 0.5]
    # sparse equals dense, with the mask dense or sparse, and NaN targets mark unknown entries
    for csr in (scipy.sparse.csr_array, scipy.sparse.csr_matrix):
        for k in (known, csr(known.astype(np.int8))):
            assert torch.equal(pos_weight(csr(y.astype(np.int8)), known=k), pos_weight(y, known=known))
        assert torch.equal(pos_weight(csr(y.astype(np.int8))), pos_weight(y))
    assert torch.equal(pos_weight(np.where(known, y, np.nan)), pos_weight(y, known=known))
    assert torch.equal(pos_weight(LabelMatrix.of(y, known)), pos_weight(y, known=known))


def test_pos_weight_of_large_sparse_labels_does_not_densify():
    n, c, per_row = 9_000, 10_000, 8
    rng = np.random.default_rng(0)
    cols = rng.integers(0, c, (n, per_row)).ravel()
    rows = np.repeat(np.arange(n), per_row)
    labels = scipy.sparse.csr_array((np.ones(n * per_row, dtype=np.int8), (rows, cols)), shape=(n, c))
    labels.sum_duplicates()
    known_cols = np.concatenate([cols, rng.integers(0, c, n * 20)])  # the positives and some verified negatives
    known_rows = np.concatenate([rows, np.repeat(np.arange(n), 20)])
    known = scipy.sparse.csr_array((np.ones(len(known_cols), dtype=np.int8), (known_rows, known_cols)), shape=(n, c))
    known.sum_duplicates()
    tracemalloc.start()
    weight = pos_weight(labels, known=known)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 30e6, f"peak {peak / 1e6:.0f} MB: densified? (dense would be {n * c / 1e6:.0f} MB)"
    positives = np.bincount(labels.indices, minlength=c)
    negatives = np.bincount(known.indices, minlength=c) - positives
    assert np.allclose(weight.numpy(), negatives / np.maximum(positives, 1), rtol=1e-6)
