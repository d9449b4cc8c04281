"""Multi-label metrics with scikit-learn (report §5), and per-label decision thresholds.

Partial labels: every function that takes `y_true` also takes `known`, a mask of the entries whose label is
known (dense bool or scipy CSR, the shape of `y_true`; None: all known). Unknown entries count nowhere:
each metric is computed over the known entries only (docs/METRICS.md, "Partial labels"). `y_true` may be a
dense 0/1 array or tensor, a scipy CSR matrix/array (stored entries = positives), a `LabelMatrix` (its own
known entries apply), or a float array with NaN at unknown entries (`split_known`). `y_prob` is dense.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from mlic.labels import LabelMatrix

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


def split_known(y) -> tuple[np.ndarray, np.ndarray | None]:
    """A float target array with NaN at unknown entries (1 positive, 0 negative; `LabelMatrix.target_rows`)
    as (0/1 uint8 array, known bool mask), the NaN read as 0; the mask is None when there is no NaN.
    Other values are cast as `compute_metrics` casts any truth: a soft MixUp target 0.7 becomes 0."""
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if not np.issubdtype(y.dtype, np.floating):
        return y.astype(np.uint8), None
    unknown = np.isnan(y)
    if not unknown.any():
        return y.astype(np.uint8), None
    return np.where(unknown, 0, y).astype(np.uint8), ~unknown


def _truth(y_true, known) -> tuple[np.ndarray, np.ndarray | None]:
    """(y_true as dense int64 0/1, known as a dense bool mask or None when every entry is known)."""
    if isinstance(y_true, LabelMatrix) or scipy.sparse.issparse(y_true):
        m = LabelMatrix.of(y_true)
        y, own = m.dense(dtype=np.int64), m.known_dense()
    else:
        y = np.asarray(y_true.cpu() if isinstance(y_true, torch.Tensor) else y_true)
        if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
            y, own = split_known(y)
        else:
            own = None
        y = y.astype(np.int64, copy=False)
    if known is None:
        return y, own
    if scipy.sparse.issparse(known):
        mask = LabelMatrix.of(known).dense(dtype=bool)  # its stored non-zero entries
    else:
        mask = np.asarray(known.cpu() if isinstance(known, torch.Tensor) else known).astype(bool, copy=False)
    if mask.shape != y.shape:
        raise ValueError(f"known has shape {mask.shape}, y_true {y.shape}: they must be the same")
    return y, mask if own is None else mask & own


def _binarize(y_prob: np.ndarray, threshold) -> np.ndarray:
    return (y_prob >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)


def mean_average_precision(y_true, y_prob, known=None) -> float:
    """Macro AP over the labels that have at least one (known) positive (AP is undefined without one)."""
    return _mean_average_precision(*_truth(y_true, known), y_prob)


def _mean_average_precision(y_true: np.ndarray, known: np.ndarray | None, y_prob) -> float:
    if known is not None:
        ap = _label_ap(y_true, np.asarray(y_prob, dtype=np.float64), known)
        ap = ap[~np.isnan(ap)]  # labels without a known positive are left out
        return float(ap.mean()) if len(ap) else float("nan")
    has_positive = y_true.sum(0) > 0
    if not has_positive.any():
        return float("nan")
    return float(average_precision_score(y_true[:, has_positive], y_prob[:, has_positive], average="macro"))


def compute_metrics(y_true, y_prob, threshold=0.5, known=None) -> dict[str, float]:
    """The SPEC §5 metrics, METRIC_KEYS (docs/METRICS.md defines each). `accuracy` is element-wise
    (1 - Hamming loss), as in the report; `subset_accuracy` needs every label of an image right; the
    field's CP ... OF1, at the threshold and by the top-3 protocol. `threshold`: a float or one per label.
    `known`: the known entries (see the module doc); None: all."""
    y_true, known = _truth(y_true, known)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = _binarize(y_prob, threshold)
    if known is None:
        out = {
            "accuracy": 1.0 - float(hamming_loss(y_true, y_pred)),
            "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        }
    else:
        right = (y_true == y_pred) | ~known
        any_known = known.any(1)  # an image with no known entry is left out of subset_accuracy
        out = {"accuracy": _ratio(int((right & known).sum()), int(known.sum())),
               "subset_accuracy": _ratio(int(right.all(1)[any_known].sum()), int(any_known.sum()))}
    for average in ("micro", "macro"):
        p, r, f, _ = _prf(y_true, y_pred, average, known)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    out["mAP"] = _mean_average_precision(y_true, known, y_prob)
    out.update(_field_metrics(y_true, known, y_pred))
    top = _field_metrics(y_true, known, top_k_predictions(y_prob, threshold, TOP_K, known))
    out.update({f"{k}_top{TOP_K}": v for k, v in top.items()})
    return out


def field_metrics(y_true, y_pred, known=None) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 of 0/1 predictions, as ML-GCN and ASL report them.

    CP and CR are the means over labels of per-label precision and recall (sklearn's macro averages);
    CF1 is their harmonic mean, which is not the mean of per-label F1 (`f1_macro`). OP, OR, OF1 count
    every (image, label) entry together: sklearn's micro averages. A label never predicted has
    precision 0, one without positives recall 0 (sklearn's zero_division=0; ML-GCN's code gives NaN there).
    """
    return _field_metrics(*_truth(y_true, known), np.asarray(y_pred))


def _field_metrics(y_true: np.ndarray, known: np.ndarray | None, y_pred: np.ndarray) -> dict[str, float]:
    cp, cr, _, _ = _prf(y_true, y_pred, "macro", known)
    op, o_r, of1, _ = _prf(y_true, y_pred, "micro", known)
    return {"CP": float(cp), "CR": float(cr), "CF1": _harmonic_mean(cp, cr),
            "OP": float(op), "OR": float(o_r), "OF1": float(of1)}


def top_k_predictions(y_prob: np.ndarray, threshold, k: int = TOP_K, known=None) -> np.ndarray:
    """ML-GCN's top-k prediction (`AveragePrecisionMeter.overall_topk` in its util.py): a label is predicted
    when it is among an image's k highest scores AND its score reaches the threshold (ML-GCN tests logit >= 0,
    i.e. probability >= 0.5). With fewer than k labels, all are candidates. Ties go to the lower label index.
    With `known` (dense bool), the k highest among the image's known labels: an unknown label takes no slot
    and is never predicted."""
    scores = y_prob if known is None else np.where(known, y_prob, -np.inf)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    in_top = np.zeros(np.shape(y_prob), dtype=bool)
    np.put_along_axis(in_top, top, True, axis=1)
    if known is not None:
        in_top &= np.asarray(known, dtype=bool)
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


def per_label_metrics(y_true, y_prob, label_names, threshold=0.5, known=None) -> list[dict]:
    """Precision, recall, F1, AP, support and the 2x2 confusion matrix of each label (over its known entries)."""
    y_true, known = _truth(y_true, known)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = _binarize(y_prob, threshold)
    p, r, f, support = _prf(y_true, y_pred, None, known)
    if known is None:
        confusion = multilabel_confusion_matrix(y_true, y_pred)
        ap = [float(average_precision_score(y_true[:, c], y_prob[:, c])) if y_true[:, c].any() else float("nan")
              for c in range(y_true.shape[1])]
    else:
        confusion, ap = _masked_confusion(y_true, y_pred, known), _label_ap(y_true, y_prob, known)
    rows = []
    for c, name in enumerate(label_names):
        rows.append({
            "label": name, "precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "AP": float(ap[c]),
            "support": int(support[c]), "confusion": confusion[c].tolist(),
        })
    return rows


def tune_thresholds(y_true, y_prob, default: float = 0.5, known=None) -> np.ndarray:
    """Per-label thresholds that maximise each label's F1 on (y_true, y_prob) (on its known entries).

    A label's threshold stays at `default` unless another one gives a strictly higher F1 there, so
    tuned macro-F1 on the tuning data is never below macro-F1 at `default`.
    """
    y_true, known = _truth(y_true, known)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    thresholds = np.full(y_true.shape[1], default, dtype=np.float64)
    for c in range(y_true.shape[1]):
        rows = slice(None) if known is None else known[:, c]
        y_c, p_c = y_true[rows, c], y_prob[rows, c]
        if not y_c.any():
            continue
        precision, recall, cuts = precision_recall_curve(y_c, p_c)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)[:-1]
        base = _f1(y_c, p_c >= default)
        best = int(np.argmax(f1))
        if f1[best] > base + 1e-12:
            thresholds[c] = float(cuts[best])
    return thresholds


def tuned_metrics(y_true, y_prob, thresholds, known=None) -> dict[str, float]:
    """`<metric>_tuned`: the metrics that depend on thresholds, at per-label `thresholds` (not THRESHOLD_FREE)."""
    metrics = compute_metrics(y_true, y_prob, thresholds, known)
    return {f"{k}_tuned": v for k, v in metrics.items() if k not in THRESHOLD_FREE}


def heldout_tuned_f1_macro(y_true, y_prob, default: float = 0.5, known=None) -> float:
    """Macro-F1 of per-label thresholds on data they were NOT tuned on: the images are split in two
    halves (alternating), each half is thresholded with the other half's tuned thresholds. An honest
    estimate of what tuning gains on a test set, where `*_tuned` (tuned and scored on one split) is not."""
    y_true, known = _truth(y_true, known)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    halves = [np.arange(0, len(y_true), 2), np.arange(1, len(y_true), 2)]
    pred = np.zeros_like(y_true)
    for tune_on, apply_to in (halves, halves[::-1]):
        part_known = None if known is None else known[tune_on]
        thresholds = tune_thresholds(y_true[tune_on], y_prob[tune_on], default, part_known)
        pred[apply_to] = y_prob[apply_to] >= thresholds
    return float(_prf(y_true, pred, "macro", known)[2])


def _prf(y_true: np.ndarray, y_pred: np.ndarray, average: str | None, known: np.ndarray | None = None):
    """scikit-learn's precision, recall, F1 and support over the labels (columns). One column is read as
    a binary target there, averaged over its classes 0 and 1: score the positives alone instead.
    With `known`, the same numbers (sklearn's formulas, zero_division=0) over the known entries only."""
    if known is not None:
        return _masked_prf(y_true, y_pred, average, known)
    if y_true.shape[1] == 1:
        return precision_recall_fscore_support(y_true[:, 0], y_pred[:, 0], labels=[1], average=average,
                                               zero_division=0)
    return precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)


def _masked_counts(y_true, y_pred, known):
    """Per label over the known entries: true positives, predicted positives, actual positives (int64)."""
    truth, pred = (y_true != 0) & known, (y_pred != 0) & known
    return (truth & pred).sum(0, dtype=np.int64), pred.sum(0, dtype=np.int64), truth.sum(0, dtype=np.int64)


def _masked_prf(y_true, y_pred, average, known):
    tp, pred_sum, true_sum = _masked_counts(y_true, y_pred, known)
    if average == "micro":
        tp, pred_sum, true_sum = tp.sum(keepdims=True), pred_sum.sum(keepdims=True), true_sum.sum(keepdims=True)
    precision, recall = _divide(tp, pred_sum), _divide(tp, true_sum)
    f1 = _divide(2 * tp, true_sum + pred_sum)  # sklearn's F1: 2 TP / (2 TP + FP + FN)
    if average is None:
        return precision, recall, f1, true_sum
    return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1)), None


def _masked_confusion(y_true, y_pred, known) -> np.ndarray:
    """(C, 2, 2) [[TN, FP], [FN, TP]] per label over its known entries (sklearn's multilabel layout)."""
    tp, pred_sum, true_sum = _masked_counts(y_true, y_pred, known)
    fp, fn = pred_sum - tp, true_sum - tp
    tn = known.sum(0, dtype=np.int64) - tp - fp - fn
    return np.stack([np.stack([tn, fp], 1), np.stack([fn, tp], 1)], 1)


def _label_ap(y_true, y_prob, known) -> np.ndarray:
    """sklearn's AP of each label on the images where that label is known; NaN without a known positive."""
    ap = np.full(y_true.shape[1], np.nan)
    for c in np.flatnonzero(((y_true != 0) & known).any(0)):
        rows = known[:, c]
        ap[c] = average_precision_score(y_true[rows, c], y_prob[rows, c])
    return ap


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _harmonic_mean(a: float, b: float) -> float:
    return float(2 * a * b / (a + b)) if a + b > 0 else 0.0


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float((y & pred).sum())
    denom = float(y.sum() + pred.sum())
    return 2 * tp / denom if denom else 0.0
