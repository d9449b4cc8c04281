"""Multi-label metrics with scikit-learn (report §5), and per-label decision thresholds."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
)

# The field's names (ML-GCN, ASL): C* per class then averaged, O* overall over every (image, label) entry.
FIELD_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")
TOP_K = 3  # ML-GCN's top-3 protocol
METRIC_KEYS = (
    "accuracy", "subset_accuracy", "precision_micro", "recall_micro", "f1_micro",
    "precision_macro", "recall_macro", "f1_macro", "mAP",
    *FIELD_KEYS, *(f"{k}_top{TOP_K}" for k in FIELD_KEYS),
)
# The keys that no threshold changes: they get no `<key>_tuned` twin. The top-3 keys are not among them,
# since ML-GCN's protocol also asks a top-3 label to reach the threshold (see `top_k_predictions`).
THRESHOLD_FREE = ("mAP",)


def _binarize(y_prob: np.ndarray, threshold) -> np.ndarray:
    return (y_prob >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)


def mean_average_precision(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Macro AP over the labels that have at least one positive (AP is undefined without one)."""
    has_positive = y_true.sum(0) > 0
    if not has_positive.any():
        return float("nan")
    return float(average_precision_score(y_true[:, has_positive], y_prob[:, has_positive], average="macro"))


def compute_metrics(y_true, y_prob, threshold=0.5) -> dict[str, float]:
    """The SPEC §5 metrics, METRIC_KEYS (docs/METRICS.md defines each). `accuracy` is element-wise
    (1 - Hamming loss), as in the report; `subset_accuracy` needs every label of an image right; the
    field's CP ... OF1, at the threshold and by the top-3 protocol. `threshold`: a float or one per label."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = _binarize(y_prob, threshold)
    out = {
        "accuracy": 1.0 - float(hamming_loss(y_true, y_pred)),
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
    }
    for average in ("micro", "macro"):
        p, r, f, _ = _prf(y_true, y_pred, average)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    out["mAP"] = mean_average_precision(y_true, y_prob)
    out.update(field_metrics(y_true, y_pred))
    top = field_metrics(y_true, top_k_predictions(y_prob, threshold, TOP_K))
    out.update({f"{k}_top{TOP_K}": v for k, v in top.items()})
    return out


def field_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 of 0/1 predictions, as ML-GCN and ASL report them.

    CP and CR are the means over labels of per-label precision and recall (sklearn's macro averages);
    CF1 is their harmonic mean, which is not the mean of per-label F1 (`f1_macro`). OP, OR, OF1 count
    every (image, label) entry together: sklearn's micro averages. A label never predicted has
    precision 0, one without positives recall 0 (sklearn's zero_division=0; ML-GCN's code gives NaN there).
    """
    cp, cr, _, _ = _prf(y_true, y_pred, "macro")
    op, o_r, of1, _ = _prf(y_true, y_pred, "micro")
    return {"CP": float(cp), "CR": float(cr), "CF1": _harmonic_mean(cp, cr),
            "OP": float(op), "OR": float(o_r), "OF1": float(of1)}


def top_k_predictions(y_prob: np.ndarray, threshold, k: int = TOP_K) -> np.ndarray:
    """ML-GCN's top-k prediction (`AveragePrecisionMeter.overall_topk` in its util.py): a label is predicted
    when it is among an image's k highest scores AND its score reaches the threshold (ML-GCN tests logit >= 0,
    i.e. probability >= 0.5). With fewer than k labels, all are candidates. Ties go to the lower label index."""
    top = np.argsort(-y_prob, axis=1, kind="stable")[:, :k]
    in_top = np.zeros(y_prob.shape, dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    return (in_top & (_binarize(y_prob, threshold) == 1)).astype(np.int64)


def voc11_average_precision(y_true_col, y_score_col) -> float:
    """PASCAL VOC2007's 11-point interpolated AP of one label: the mean over recall levels 0, 0.1, ..., 1 of
    the highest precision at a recall >= the level (0 where none reaches it). For comparison with older
    papers only; `mAP` is sklearn's non-interpolated AP. Tied scores form one point of the curve here
    (as in sklearn), where VOC's devkit ranks them one by one. NaN for a label without positives."""
    y_true_col = np.asarray(y_true_col).astype(np.int64)
    if not y_true_col.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y_true_col, np.asarray(y_score_col, dtype=np.float64))
    # sklearn appends (recall 0, precision 1), a point no threshold reaches; VOC's curve has none.
    precision, recall = precision[:-1], recall[:-1]
    levels = np.linspace(0.0, 1.0, 11)
    # The tolerance counts a recall of 3/10 as reaching level 0.3 (the devkit's 0.1 steps drift above it).
    reached = recall[None, :] >= levels[:, None] - 1e-12
    return float(np.where(reached, precision[None, :], 0.0).max(axis=1).mean())


def per_label_metrics(y_true, y_prob, label_names, threshold=0.5) -> list[dict]:
    """Precision, recall, F1, AP, support and the 2x2 confusion matrix of each label."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = _binarize(y_prob, threshold)
    p, r, f, support = _prf(y_true, y_pred, None)
    confusion = multilabel_confusion_matrix(y_true, y_pred)
    rows = []
    for c, name in enumerate(label_names):
        ap = float(average_precision_score(y_true[:, c], y_prob[:, c])) if y_true[:, c].any() else float("nan")
        rows.append({
            "label": name, "precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "AP": ap,
            "support": int(support[c]), "confusion": confusion[c].tolist(),
        })
    return rows


def tune_thresholds(y_true, y_prob, default: float = 0.5) -> np.ndarray:
    """Per-label thresholds that maximise each label's F1 on (y_true, y_prob).

    A label's threshold stays at `default` unless another one gives a strictly higher F1 there, so
    tuned macro-F1 on the tuning data is never below macro-F1 at `default`.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    thresholds = np.full(y_true.shape[1], default, dtype=np.float64)
    for c in range(y_true.shape[1]):
        if not y_true[:, c].any():
            continue
        precision, recall, cuts = precision_recall_curve(y_true[:, c], y_prob[:, c])
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)[:-1]
        base = _f1(y_true[:, c], y_prob[:, c] >= default)
        best = int(np.argmax(f1))
        if f1[best] > base + 1e-12:
            thresholds[c] = float(cuts[best])
    return thresholds


def tuned_metrics(y_true, y_prob, thresholds) -> dict[str, float]:
    """`<metric>_tuned`: the metrics that depend on thresholds, at per-label `thresholds` (not THRESHOLD_FREE)."""
    return {f"{k}_tuned": v for k, v in compute_metrics(y_true, y_prob, thresholds).items() if k not in THRESHOLD_FREE}


def heldout_tuned_f1_macro(y_true, y_prob, default: float = 0.5) -> float:
    """Macro-F1 of per-label thresholds on data they were NOT tuned on: the images are split in two
    halves (alternating), each half is thresholded with the other half's tuned thresholds. An honest
    estimate of what tuning gains on a test set, where `*_tuned` (tuned and scored on one split) is not."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    halves = [np.arange(0, len(y_true), 2), np.arange(1, len(y_true), 2)]
    pred = np.zeros_like(y_true)
    for tune_on, apply_to in (halves, halves[::-1]):
        thresholds = tune_thresholds(y_true[tune_on], y_prob[tune_on], default)
        pred[apply_to] = y_prob[apply_to] >= thresholds
    return float(_prf(y_true, pred, "macro")[2])


def _prf(y_true: np.ndarray, y_pred: np.ndarray, average: str | None):
    """scikit-learn's precision, recall, F1 and support over the labels (columns). One column is read as
    a binary target there, averaged over its classes 0 and 1: score the positives alone instead."""
    if y_true.shape[1] == 1:
        return precision_recall_fscore_support(y_true[:, 0], y_pred[:, 0], labels=[1], average=average,
                                               zero_division=0)
    return precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)


def _harmonic_mean(a: float, b: float) -> float:
    return float(2 * a * b / (a + b)) if a + b > 0 else 0.0


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float((y & pred).sum())
    denom = float(y.sum() + pred.sum())
    return 2 * tp / denom if denom else 0.0
