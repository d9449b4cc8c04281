"""The field's metrics (CP ... OF1, the top-3 protocol of ML-GCN) and VOC's 11-point AP, against hand counts."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from mlic.metrics import (
    FIELD_KEYS,
    METRIC_KEYS,
    THRESHOLD_FREE,
    compute_metrics,
    field_metrics,
    top_k_predictions,
    tuned_metrics,
    voc11_average_precision,
)

# At 0.5 the predictions are        top-3 (and >= 0.5) drops row 0's label 2, its 4th score:
#   1 1 1 1                          1 1 0 1
#   0 1 1 1                          0 1 1 1
#   1 0 0 0                          1 0 0 0
#   0 0 0 1                          0 0 0 1
Y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 1]])
P = np.array([[0.9, 0.6, 0.58, 0.7], [0.2, 0.8, 0.52, 0.55], [0.6, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.65]])


def test_all_twelve_field_keys_by_hand():
    m = compute_metrics(Y, P)
    # at 0.5, per label (tp, predicted, positives): (2,2,2) (1,2,2) (1,2,1) (1,3,2)
    cp, cr = (1 + 1 / 2 + 1 / 2 + 1 / 3) / 4, (1 + 1 / 2 + 1 + 1 / 2) / 4  # 7/12, 3/4
    assert m["CP"] == pytest.approx(cp) and m["CR"] == pytest.approx(cr)
    assert m["CF1"] == pytest.approx(21 / 32)  # 2 * 7/12 * 3/4 / (7/12 + 3/4)
    assert m["OP"] == pytest.approx(5 / 9) and m["OR"] == pytest.approx(5 / 7) and m["OF1"] == pytest.approx(10 / 16)
    # top-3: label 2 loses its true positive: (0,1,1)
    assert m["CP_top3"] == pytest.approx(11 / 24) and m["CR_top3"] == pytest.approx(1 / 2)
    assert m["CF1_top3"] == pytest.approx(11 / 23)
    assert m["OP_top3"] == pytest.approx(4 / 8) and m["OR_top3"] == pytest.approx(4 / 7)
    assert m["OF1_top3"] == pytest.approx(8 / 15)
    assert {*FIELD_KEYS, *(f"{k}_top3" for k in FIELD_KEYS)} <= set(METRIC_KEYS) <= set(m)


def test_cf1_is_the_harmonic_mean_of_cp_and_cr_not_macro_f1():
    m = compute_metrics(Y, P)
    assert m["CF1"] == pytest.approx(2 * m["CP"] * m["CR"] / (m["CP"] + m["CR"]))
    # per-label F1 at 0.5: 1, 1/2, 2/3, 2/5 -> macro-F1 77/120, below CF1 = 21/32
    assert m["f1_macro"] == pytest.approx((1 + 1 / 2 + 2 / 3 + 2 / 5) / 4)
    assert m["CF1"] - m["f1_macro"] == pytest.approx(21 / 32 - 77 / 120)


def test_overall_scores_are_sklearns_micro_and_class_scores_its_macro():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 7)) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
    pred = (p >= 0.5).astype(int)
    m = compute_metrics(y, p)
    assert m["OP"] == pytest.approx(precision_score(y, pred, average="micro"))
    assert m["OR"] == pytest.approx(recall_score(y, pred, average="micro"))
    assert m["OF1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["CP"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["CR"] == pytest.approx(recall_score(y, pred, average="macro"))


def test_a_label_never_predicted_has_precision_zero():
    m = field_metrics(np.array([[1, 0], [0, 1]]), np.array([[1, 0], [0, 0]]))
    assert m["CP"] == 0.5 and m["CR"] == 0.5 and m["OP"] == 1.0 and m["OR"] == 0.5
    nothing = field_metrics(np.array([[1, 0], [0, 1]]), np.zeros((2, 2), dtype=int))
    assert nothing == dict.fromkeys(FIELD_KEYS, 0.0)  # 0, not NaN, as in ML-GCN's code for OP


def test_top3_is_the_three_highest_scores_that_reach_the_threshold():
    p = np.array([[0.9, 0.8, 0.7, 0.6, 0.1], [0.1, 0.2, 0.3, 0.4, 0.05], [0.5, 0.5, 0.5, 0.5, 0.5]])
    expected = [[1, 1, 1, 0, 0],  # 0.6 reaches 0.5 but is 4th
                [0, 0, 0, 0, 0],  # ML-GCN: a top-3 label below the threshold is not predicted
                [1, 1, 1, 0, 0]]  # ties: the lower label index first
    assert top_k_predictions(p, 0.5).tolist() == expected
    assert top_k_predictions(p, 0.0)[1].tolist() == [0, 1, 1, 1, 0]
    many = np.random.default_rng(0).integers(0, 3, (5, 100)) / 4  # 100 labels, ~33 tied at the top (0.5)
    for row, pred in zip(many, top_k_predictions(many, 0.5)):
        assert np.flatnonzero(pred).tolist() == np.flatnonzero(row == 0.5)[:3].tolist()
    per_label = np.array([0.95, 0.5, 0.5, 0.5, 0.5])  # thresholds may be one per label
    assert top_k_predictions(p, per_label)[0].tolist() == [0, 1, 1, 0, 0]
    # so the top-3 keys depend on the threshold and have `_tuned` twins; only mAP does not
    assert compute_metrics(Y, P, 0.0)["OP_top3"] != compute_metrics(Y, P, 0.5)["OP_top3"]
    tuned = tuned_metrics(Y, P, np.full(4, 0.5))
    assert set(tuned) == {f"{k}_tuned" for k in METRIC_KEYS if k not in THRESHOLD_FREE}
    assert "OF1_top3_tuned" in tuned and "mAP_tuned" not in tuned and THRESHOLD_FREE == ("mAP",)


@pytest.mark.parametrize("labels", [1, 2])
def test_fewer_labels_than_three(labels):
    y = np.array([[1, 0], [0, 1], [1, 1]])[:, :labels]
    p = np.array([[0.9, 0.6], [0.6, 0.7], [0.3, 0.8]])[:, :labels]
    m = compute_metrics(y, p)
    assert set(METRIC_KEYS) <= set(m) and not any(np.isnan(v) for v in m.values())
    # every label is in the "top 3": the top-3 keys are the thresholded ones
    assert all(m[f"{k}_top3"] == m[k] for k in FIELD_KEYS)
    if labels == 1:  # predicted 1 1 0 for 1 0 1
        assert m["CP"] == m["OP"] == 0.5 and m["CR"] == m["OR"] == 0.5
    else:  # and label 1 predicted 1 1 1 for 0 1 1: precision 2/3, recall 1
        assert m["CP"] == pytest.approx((1 / 2 + 2 / 3) / 2) and m["CR"] == pytest.approx((1 / 2 + 1) / 2)
        assert m["OP"] == pytest.approx(3 / 5) and m["OR"] == pytest.approx(3 / 4)


def test_sklearn_ap_and_voc_11_point_ap_differ():
    # ranked: + - + - - +. Precision at the positives: 1, 2/3, 3/6.
    y, s = np.array([1, 0, 1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # sklearn: sum over positives of (recall step 1/3) * precision = (1 + 2/3 + 1/2) / 3
    assert compute_metrics(y[:, None], s[:, None])["mAP"] == pytest.approx(13 / 18)
    # 11-point: levels 0-0.3 see precision 1 (recall 1/3), 0.4-0.6 see 2/3 (recall 2/3), 0.7-1 see 1/2
    assert voc11_average_precision(y, s) == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 1 / 2) / 11)  # 8/11
    assert np.isnan(voc11_average_precision(np.zeros(3), np.ones(3)))


def test_voc_11_point_counts_a_recall_of_exactly_a_level():
    # 10 positives: 3 ranked first, then a negative, then 7. Recall 3/10 reaches level 0.3 with precision 1;
    # from 0.4 on the best precision is 10/11 (at recall 1).
    y = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    s = np.linspace(1.0, 0.0, len(y))
    assert voc11_average_precision(y, s) == pytest.approx((4 + 7 * 10 / 11) / 11)
    # the first-ranked image a negative: level 0 sees the best precision on the curve (2/3), not sklearn's
    # appended (recall 0, precision 1)
    assert voc11_average_precision([0, 1, 1], [0.9, 0.8, 0.7]) == pytest.approx(2 / 3)
