import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_score, recall_score

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
    assert torch.equal(build_loss("auto", y).pos_weight, w)
    assert build_loss("none", y).pos_weight is None


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
