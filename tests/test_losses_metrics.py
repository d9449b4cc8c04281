import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_score, recall_score

from mlic.config import LossConfig
from mlic.losses import build_loss, pos_weight
from mlic.metrics import METRIC_KEYS, compute_metrics, per_label_metrics, tune_thresholds


def test_pos_weight_is_negatives_over_positives():
    y = np.zeros((400, 3), dtype=np.uint8)
    y[:100, 0] = 1  # the docs' example: 100 positive, 300 negative -> 3
    y[:200, 1] = 1
    w = pos_weight(y)
    assert w.shape == (3,) and w.dtype == torch.float32
    assert w[0].item() == pytest.approx(3.0) and w[1].item() == pytest.approx(1.0)
    assert w[2].item() == pytest.approx(400.0)  # no positive: as if one, not inf
    assert pos_weight(y, clip=10.0)[2].item() == pytest.approx(10.0)
    assert torch.equal(build_loss(LossConfig(pos_weight="auto"), y).pos_weight, w)
    assert build_loss(LossConfig(pos_weight="none"), y).pos_weight is None


def test_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 6)) < 0.3).astype(int)
    p = np.clip(0.4 * y + 0.6 * rng.random(y.shape), 0, 1)
    m = compute_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert set(METRIC_KEYS) <= set(m)
    assert m["accuracy"] == pytest.approx(1 - hamming_loss(y, pred))
    assert m["subset_accuracy"] == pytest.approx((pred == y).all(1).mean())
    for avg in ("micro", "macro"):
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(y, pred, average=avg))
        assert m[f"precision_{avg}"] == pytest.approx(precision_score(y, pred, average=avg))
        assert m[f"recall_{avg}"] == pytest.approx(recall_score(y, pred, average=avg))
    assert m["mAP"] == pytest.approx(average_precision_score(y, p, average="macro"))


def test_edge_cases_label_without_positives_and_all_zero_predictions():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.zeros((3, 2))
    m = compute_metrics(y, p)
    assert m["f1_micro"] == 0 and m["f1_macro"] == 0 and m["recall_macro"] == 0
    assert m["accuracy"] == pytest.approx(4 / 6)
    # mAP over labels that have a positive: label 1 has none and is left out, not counted as 0
    p2 = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3]])
    assert compute_metrics(y, p2)["mAP"] == pytest.approx(1.0)
    rows = per_label_metrics(y, p2, ["a", "b"])
    assert rows[0]["confusion"] == [[1, 0], [0, 2]] and np.isnan(rows[1]["AP"])


def test_per_label_thresholds_never_lower_macro_f1_where_tuned():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = (rng.random((200, 5)) < rng.uniform(0.02, 0.5, 5)).astype(int)
        p = np.clip(rng.uniform(0, 0.6) * y + rng.random(y.shape) * 0.8, 0, 1)
        t = tune_thresholds(y, p)
        assert compute_metrics(y, p, t)["f1_macro"] >= compute_metrics(y, p)["f1_macro"] - 1e-12


def test_heldout_tuned_f1_macro_scores_each_half_with_the_other_halfs_thresholds():
    from mlic.metrics import heldout_tuned_f1_macro

    # Even rows are half A, odd rows half B. Label 0:
    #   A: y 1 1 0 0, p .30 .25 .20 .10 -> tuned on A: threshold .25 (F1 1 there; 0 at .5)
    #   B: y 1 0 1 0, p .90 .80 .60 .10 -> tuned on B: stays .5 (F1 .8; no cut does strictly better)
    # B at A's .25 predicts .9 .8 .6 (tp 2, fp 1); A at B's .5 predicts nothing (fn 2): F1 = 4 / (4 + 1 + 2).
    # Label 1 is right at .5 in both halves (F1 1), so its thresholds stay .5. Macro: (4/7 + 1) / 2.
    y = np.array([[1, 1], [1, 0], [1, 1], [0, 0], [0, 1], [1, 0], [0, 1], [0, 0]])
    p = np.array([[0.30, 0.9], [0.90, 0.1], [0.25, 0.9], [0.80, 0.1], [0.20, 0.9], [0.60, 0.1], [0.10, 0.9],
                  [0.10, 0.1]])
    assert heldout_tuned_f1_macro(y, p) == pytest.approx((4 / 7 + 1) / 2)
    # Tuned and scored on all eight rows, label 0's threshold .25 gives tp 4, fp 1: the optimistic 8 / 9.
    assert compute_metrics(y, p, tune_thresholds(y, p))["f1_macro"] == pytest.approx((8 / 9 + 1) / 2)


def test_one_label_metrics_are_those_of_its_positives():
    from mlic.metrics import heldout_tuned_f1_macro

    y = np.array([[1], [1], [1], [0], [0], [1], [0], [0]])
    p = np.array([[0.30], [0.90], [0.25], [0.80], [0.20], [0.60], [0.10], [0.10]])
    m = compute_metrics(y, p)  # at .5: tp 2 (.9, .6), fp 1 (.8), fn 2
    assert m["f1_micro"] == pytest.approx(4 / 7) and m["f1_macro"] == pytest.approx(4 / 7)
    assert m["precision_macro"] == pytest.approx(2 / 3) and m["recall_macro"] == pytest.approx(1 / 2)
    assert heldout_tuned_f1_macro(y, p) == pytest.approx(4 / 7)  # the hand case above, label 0 alone


def test_heldout_tuned_f1_macro_is_below_the_optimistic_one_without_signal_and_equal_when_halves_agree():
    from mlic.metrics import heldout_tuned_f1_macro

    rng = np.random.default_rng(2)
    y = (rng.random((400, 6)) < 0.1).astype(int)
    p = rng.random(y.shape)  # no signal: thresholds tuned on these labels cannot transfer
    optimistic = compute_metrics(y, p, tune_thresholds(y, p))["f1_macro"]
    assert heldout_tuned_f1_macro(y, p) < optimistic - 0.02
    # Every row twice in a row: both halves are the same data, so thresholds tuned on one are those of the other.
    p = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    y2, p2 = np.repeat(y, 2, axis=0), np.repeat(p, 2, axis=0)
    assert heldout_tuned_f1_macro(y2, p2) == pytest.approx(compute_metrics(y2, p2, tune_thresholds(y2, p2))["f1_macro"])
