"""Multi-label metrics (report §5), scikit-learn's definitions, and per-label decision thresholds.

At OpenImages size (41,620 images x 10,000 labels) sklearn's per-label loops are quadratic in the label
count; the numbers come from `mlic.label_stats` instead, linear in N·C, one block of labels at a time, and
equal to sklearn's (tests/test_metrics_scale.py). Scores stay float32 when they come as float32.

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
from sklearn.metrics import precision_recall_curve

from mlic.label_stats import TUNED, LabelStats, TopK, label_blocks
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
    with np.errstate(invalid="ignore"):  # NaN has no uint8: those entries are set to 0 right after
        out = y.astype(np.uint8)
    if not unknown.any():
        return out, None
    out[unknown] = 0
    return out, ~unknown


def _truth(y_true, known) -> tuple[np.ndarray, np.ndarray | None]:
    """(y_true as a dense bool array, known as a dense bool mask or None when every entry is known). A float
    truth counts where its integer part is not 0 (0.7 is a negative), as an int cast reads it."""
    if isinstance(y_true, LabelMatrix) or scipy.sparse.issparse(y_true):
        m = LabelMatrix.of(y_true)
        y, own = m.dense(dtype=bool), m.known_dense()
    else:
        y = np.asarray(y_true.cpu() if isinstance(y_true, torch.Tensor) else y_true)
        own = None
        if np.issubdtype(y.dtype, np.floating):
            y, own = split_known(y) if np.isnan(y).any() else ((y >= 1) | (y <= -1), None)
        y = y.astype(bool, copy=False)
    if known is None:
        return y, own
    if scipy.sparse.issparse(known):
        mask = LabelMatrix.of(known).dense(dtype=bool)  # its stored non-zero entries
    else:
        mask = np.asarray(known.cpu() if isinstance(known, torch.Tensor) else known).astype(bool, copy=False)
    if mask.shape != y.shape:
        raise ValueError(f"known has shape {mask.shape}, y_true {y.shape}: they must be the same")
    return y, mask if own is None else mask & own


def _scores(y_prob) -> np.ndarray:
    """Scores as a dense float array: float32 stays float32 (the model's own precision), anything else float64."""
    p = np.asarray(y_prob.detach().cpu() if isinstance(y_prob, torch.Tensor) else y_prob)
    return p if p.dtype in (np.float32, np.float64) else p.astype(np.float64)


def label_stats(y_true, y_prob, threshold=0.5, known=None, tune: bool = False) -> LabelStats:
    """The statistics behind `compute_metrics` at `threshold`, and with `tune` behind `tune_thresholds`,
    `tuned_metrics` and `heldout_tuned_f1_macro` (tuned from `threshold`) too, not filled yet: the caller
    adds each of `stats.blocks()` (and may stop between them), then reads them with `stats_metrics`."""
    y, known = _truth(y_true, known)
    default = float(threshold) if tune else 0.5  # tuning starts from one threshold for all labels
    return LabelStats(y, _scores(y_prob), known, {"": threshold}, default=default, tune=tune, heldout=tune,
                      top_k=TOP_K)


def stats_metrics(stats: LabelStats) -> tuple[dict[str, float], np.ndarray]:
    """(METRIC_KEYS, plus `*_tuned` and `f1_macro_tuned_heldout` when tuned; the tuned thresholds, or the
    default ones) of filled `label_stats`."""
    metrics = _metrics_of(stats, "")
    if TUNED not in stats.thresholds:
        return metrics, np.array(stats.thresholds[""])
    metrics.update({f"{k}_tuned": v for k, v in _metrics_of(stats, TUNED).items() if k not in THRESHOLD_FREE})
    if stats.heldout is not None:
        metrics["f1_macro_tuned_heldout"] = _prf(stats.heldout, "macro")[2]
    return metrics, np.array(stats.thresholds[TUNED])


def mean_average_precision(y_true, y_prob, known=None) -> float:
    """Macro AP over the labels that have at least one (known) positive (AP is undefined without one)."""
    y, known = _truth(y_true, known)
    return _mean_ap(LabelStats(y, _scores(y_prob), known, {}).filled().ap)


def _mean_ap(ap: np.ndarray) -> float:
    ap = ap[~np.isnan(ap)]  # labels without a (known) positive are left out
    return float(ap.mean()) if len(ap) else float("nan")


def compute_metrics(y_true, y_prob, threshold=0.5, known=None) -> dict[str, float]:
    """The SPEC §5 metrics, METRIC_KEYS (docs/METRICS.md defines each). `accuracy` is element-wise
    (1 - Hamming loss), as in the report; `subset_accuracy` needs every label of an image right; the
    field's CP ... OF1, at the threshold and by the top-3 protocol. `threshold`: a float or one per label.
    `known`: the known entries (see the module doc); None: all."""
    return stats_metrics(label_stats(y_true, y_prob, threshold, known).filled())[0]


def _metrics_of(stats: LabelStats, name: str) -> dict[str, float]:
    counts = stats.counts[name]
    out = {"accuracy": _ratio(counts.right, counts.entries),
           "subset_accuracy": _ratio(int(np.count_nonzero(counts.rows_known & ~counts.rows_wrong)),
                                     int(np.count_nonzero(counts.rows_known)))}
    for average in ("micro", "macro"):
        p, r, f = _prf(counts, average)
        out.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    if stats.ap is not None:
        out["mAP"] = _mean_ap(stats.ap)
    out.update(_field(counts.tp, counts.pred, counts.true))
    tp, pred = stats.top.counts(stats.y, stats.p, stats.thresholds[name], stats.shape[1])
    out.update({f"{k}_top{TOP_K}": v for k, v in _field(tp, pred, counts.true).items()})
    return out


def field_metrics(y_true, y_pred, known=None) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 of 0/1 predictions, as ML-GCN and ASL report them.

    CP and CR are the means over labels of per-label precision and recall (sklearn's macro averages);
    CF1 is their harmonic mean, which is not the mean of per-label F1 (`f1_macro`). OP, OR, OF1 count
    every (image, label) entry together: sklearn's micro averages. A label never predicted has
    precision 0, one without positives recall 0 (sklearn's zero_division=0; ML-GCN's code gives NaN there).
    """
    y, known = _truth(y_true, known)
    pred = (np.asarray(y_pred) != 0).astype(np.float32)
    counts = LabelStats(y, pred, known, {"": 0.5}, ap=False).filled().counts[""]
    return _field(counts.tp, counts.pred, counts.true)


def _field(tp, pred, true) -> dict[str, float]:
    cp, cr, _ = _prf_of(tp, pred, true, "macro")
    op, o_r, of1 = _prf_of(tp, pred, true, "micro")
    return {"CP": cp, "CR": cr, "CF1": _harmonic_mean(cp, cr), "OP": op, "OR": o_r, "OF1": of1}


def top_k_predictions(y_prob: np.ndarray, threshold, k: int = TOP_K, known=None) -> np.ndarray:
    """ML-GCN's top-k prediction (`AveragePrecisionMeter.overall_topk` in its util.py): a label is predicted
    when it is among an image's k highest scores AND its score reaches the threshold (ML-GCN tests logit >= 0,
    i.e. probability >= 0.5). With fewer than k labels, all are candidates. Ties go to the lower label index.
    With `known` (dense bool), the k highest among the image's known labels: an unknown label takes no slot
    and is never predicted. Dense (N, C): for tests and small data (the metrics count the candidates alone)."""
    p = _scores(y_prob)
    known = None if known is None else np.asarray(known, dtype=bool)
    top = TopK(p.shape[0], k)
    for cols in label_blocks(*p.shape):
        top.add(cols, p[:, cols], None if known is None else known[:, cols])
    rows, slots = np.nonzero(top.values > -np.inf)
    labels = top.labels[rows, slots]
    out = np.zeros(p.shape, dtype=np.int64)
    out[rows, labels] = p[rows, labels] >= np.broadcast_to(np.asarray(threshold, dtype=np.float64), p.shape[1:])[labels]
    return out


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
    stats = label_stats(y_true, y_prob, threshold, known).filled()
    c = stats.counts[""]
    precision, recall, f1 = _divide(c.tp, c.pred), _divide(c.tp, c.true), _divide(2 * c.tp, c.true + c.pred)
    fp, fn = c.pred - c.tp, c.true - c.tp
    tn = c.known - c.tp - fp - fn
    return [{"label": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "AP": float(stats.ap[i]), "support": int(c.true[i]),
             "confusion": [[int(tn[i]), int(fp[i])], [int(fn[i]), int(c.tp[i])]]}  # sklearn's layout
            for i, name in enumerate(label_names)]


def tune_thresholds(y_true, y_prob, default: float = 0.5, known=None) -> np.ndarray:
    """Per-label thresholds that maximise each label's F1 on (y_true, y_prob) (on its known entries).

    A label's threshold stays at `default` unless another one gives a strictly higher F1 there, so
    tuned macro-F1 on the tuning data is never below macro-F1 at `default`. Among equal F1s, the lowest
    threshold (sklearn's precision_recall_curve, first argmax).
    """
    y, known = _truth(y_true, known)
    stats = LabelStats(y, _scores(y_prob), known, {}, default=default, ap=False, tune=True).filled()
    return np.array(stats.thresholds[TUNED])


def tuned_metrics(y_true, y_prob, thresholds, known=None) -> dict[str, float]:
    """`<metric>_tuned`: the metrics that depend on thresholds, at per-label `thresholds` (not THRESHOLD_FREE)."""
    y, known = _truth(y_true, known)
    stats = LabelStats(y, _scores(y_prob), known, {TUNED: thresholds}, ap=False, top_k=TOP_K).filled()
    return {f"{k}_tuned": v for k, v in _metrics_of(stats, TUNED).items() if k not in THRESHOLD_FREE}


def heldout_tuned_f1_macro(y_true, y_prob, default: float = 0.5, known=None) -> float:
    """Macro-F1 of per-label thresholds on data they were NOT tuned on: the images are split in two
    halves (alternating), each half is thresholded with the other half's tuned thresholds. An honest
    estimate of what tuning gains on a test set, where `*_tuned` (tuned and scored on one split) is not."""
    y, known = _truth(y_true, known)
    stats = LabelStats(y, _scores(y_prob), known, {}, default=default, ap=False, heldout=True).filled()
    return _prf(stats.heldout, "macro")[2]


def _prf(counts, average: str) -> tuple[float, float, float]:
    return _prf_of(counts.tp, counts.pred, counts.true, average)


def _prf_of(tp, pred, true, average: str) -> tuple[float, float, float]:
    """scikit-learn's precision, recall and F1 (zero_division=0) over the labels from per-label counts:
    micro sums the counts first, macro averages each label's figure. F1 = 2 TP / (2 TP + FP + FN)."""
    if average == "micro":
        tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)
    precision, recall, f1 = _divide(tp, pred), _divide(tp, true), _divide(2 * tp, true + pred)
    return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1))


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 0.0)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _harmonic_mean(a: float, b: float) -> float:
    return float(2 * a * b / (a + b)) if a + b > 0 else 0.0
