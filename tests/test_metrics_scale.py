"""Issue 28: the metrics are linear in N·C (mlic/label_stats.py) and equal to scikit-learn's label-by-label
definitions, ties, partial labels, several blocks of labels and the top-3 protocol across blocks included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, precision_recall_fscore_support

import mlic.label_stats
from mlic.metrics import (
    METRIC_KEYS,
    compute_metrics,
    heldout_tuned_f1_macro,
    label_stats,
    per_label_metrics,
    stats_metrics,
    tune_thresholds,
    tuned_metrics,
)


def _data(n=61, c=23, seed=0, partial=True, ties=10.0):
    """Scores rounded to 1/`ties` (many ties, within and across labels); a label without positives, one without
    known entries, one all positive."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    y[:, 0], y[:, 1] = 0, 1
    p = np.round(np.clip(y * 0.3 + rng.random((n, c)) * 0.7, 0, 1) * ties) / ties
    known = rng.random((n, c)) < 0.7 if partial else None
    if partial:
        known[:, 2] = False
        known[0] = False  # an image with no known entry
    return y, p.astype(np.float32), known


def _reference_thresholds(y, p, known, default):
    """mlic's tune_thresholds before issue 28: sklearn's curve, label by label."""
    out = np.full(y.shape[1], default)
    for c in range(y.shape[1]):
        rows = slice(None) if known is None else known[:, c]
        y_c, p_c = y[rows, c].astype(np.int64), p[rows, c].astype(np.float64)
        if not y_c.any():
            continue
        precision, recall, cuts = precision_recall_curve(y_c, p_c)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)[:-1]
        tp, denom = float((y_c & (p_c >= default)).sum()), float(y_c.sum() + (p_c >= default).sum())
        best = int(np.argmax(f1))
        if f1[best] > (2 * tp / denom if denom else 0.0) + 1e-12:
            out[c] = cuts[best]
    return out


def _binary(y, pred):
    """sklearn's precision, recall, F1 of the positives; 0 for a label with no known entry (zero_division=0)."""
    return precision_recall_fscore_support(y, pred, labels=[1], average="binary", zero_division=0) if len(y) else (0, 0, 0)


def _reference(y, p, known, t):
    """The metrics label by label with scikit-learn, over each label's known entries."""
    known = np.ones(y.shape, bool) if known is None else known
    pred = p >= t
    order = np.argsort(-np.where(known, p, -np.inf), axis=1, kind="stable")[:, :3]
    top = np.zeros(y.shape, bool)
    np.put_along_axis(top, order, True, axis=1)
    out = {}
    for suffix, predicted in (("", pred), ("_top3", pred & top)):
        per = [_binary(y[known[:, c], c], predicted[known[:, c], c])[:3] for c in range(y.shape[1])]
        cp, cr, f1 = np.mean(per, axis=0)
        op, o_r, of1, _ = precision_recall_fscore_support(y[known], predicted[known], labels=[1], average="binary",
                                                          zero_division=0)
        out.update({f"CP{suffix}": cp, f"CR{suffix}": cr, f"OP{suffix}": op, f"OR{suffix}": o_r, f"OF1{suffix}": of1})
        if not suffix:
            out.update(f1_macro=f1, f1_micro=of1)
    ap = [average_precision_score(y[known[:, c], c], p[known[:, c], c]) for c in range(y.shape[1])
          if y[known[:, c], c].any()]
    right = (pred == (y != 0)) | ~known
    rows = known.any(1)
    out.update(mAP=np.mean(ap), accuracy=(right & known).sum() / known.sum(),
               subset_accuracy=right.all(1)[rows].sum() / rows.sum())
    return out


@pytest.fixture(params=[1 << 30, 61 * 4], ids=["one block", "blocks of 4 labels"])
def blocks(request, monkeypatch):
    monkeypatch.setattr(mlic.label_stats, "BLOCK_ENTRIES", request.param)


@pytest.mark.parametrize("partial", [True, False])
def test_every_metric_equals_sklearn_label_by_label(blocks, partial):
    y, p, known = _data(partial=partial)
    thresholds = _reference_thresholds(y, p, known, 0.5)
    assert np.array_equal(tune_thresholds(y, p, 0.5, known=known), thresholds)
    for t, got in ((0.5, compute_metrics(y, p, known=known)),
                   (thresholds, {k.removesuffix("_tuned"): v for k, v in tuned_metrics(y, p, thresholds, known).items()})):
        for key, want in _reference(y, p, known, t).items():
            if key in got:
                assert got[key] == pytest.approx(want, abs=1e-9), key


def test_heldout_and_per_label_equal_the_reference(blocks):
    y, p, known = _data(n=40)
    pred = np.zeros(y.shape, bool)
    for tune_on, apply_to in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        pred[apply_to] = p[apply_to] >= _reference_thresholds(y[tune_on], p[tune_on], known[tune_on], 0.5)
    f1 = [_binary(y[known[:, c], c], pred[known[:, c], c])[2] for c in range(y.shape[1])]
    assert heldout_tuned_f1_macro(y, p, known=known) == pytest.approx(np.mean(f1), abs=1e-12)
    rows = per_label_metrics(y, p, [str(c) for c in range(y.shape[1])], known=known)
    for c, row in enumerate(rows):
        k = known[:, c]
        tp = int(((p[k, c] >= 0.5) & (y[k, c] == 1)).sum())
        assert row["confusion"][1][1] == tp and sum(map(sum, row["confusion"])) == k.sum()
        assert (np.isnan(row["AP"]) if not y[k, c].any()
                else row["AP"] == pytest.approx(average_precision_score(y[k, c], p[k, c]), abs=1e-12))


def test_one_pass_with_tuning_equals_the_separate_functions(blocks):
    y, p, known = _data(seed=3)
    stats = label_stats(y, p, 0.5, known, tune=True)
    for cols in stats.blocks():
        stats.add(cols)
    metrics, thresholds = stats_metrics(stats)
    assert set(METRIC_KEYS) <= set(metrics) and np.array_equal(thresholds, tune_thresholds(y, p, known=known))
    separate = {**compute_metrics(y, p, known=known), **tuned_metrics(y, p, thresholds, known)}
    separate["f1_macro_tuned_heldout"] = heldout_tuned_f1_macro(y, p, known=known)
    assert metrics == pytest.approx(separate, nan_ok=True)


def test_float32_scores_give_the_float64_figures():
    y, p, known = _data(seed=5, ties=1000.0)
    assert compute_metrics(y, p, known=known) == pytest.approx(compute_metrics(y, p.astype(np.float64), known=known))


def test_train_outputs_are_a_bounded_sample_spread_over_the_epoch(monkeypatch):
    """Under the bound every step counts (today's figures); past it every other kept step goes, then every 2nd."""
    import torch
    from accelerate import Accelerator

    from mlic.training.engine import EpochOutputs

    rng = np.random.default_rng(0)
    steps = [(torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32)),
              torch.from_numpy((rng.random((4, 5)) < 0.4).astype(np.float32))) for _ in range(10)]

    def fill(bound):
        monkeypatch.setattr(EpochOutputs, "SAMPLE_ENTRIES", bound)
        outputs = EpochOutputs(Accelerator(cpu=True), track_finite=True)
        for step, (logits, target) in enumerate(steps, 1):
            outputs.add(logits, target, torch.tensor(float(step)), step)
            outputs.end_window(keep=True)
        return outputs

    whole = fill(1 << 24)
    want = compute_metrics(torch.cat([t for _, t in steps]).numpy(), torch.sigmoid(torch.cat([x for x, _ in steps])).numpy())
    assert whole.metrics(5) == pytest.approx({**want, "loss": 5.5, "images": 40})
    sampled = fill(3 * 20)  # three steps of 4 images x 5 labels
    assert [i for i, _ in sampled.kept] == [0, 4, 8] and sampled.stride == 4
    metrics = sampled.metrics(5)
    assert metrics["images"] == 40 and metrics["metric_images"] == 12 and metrics["loss"] == 5.5


def test_a_stop_request_is_honoured_between_blocks_of_labels(tmp_path, monkeypatch):
    """A long metric computation (a 100,080-label split) stops at the next block of labels once a stop is asked
    (here the Slurm stop file, as a preempted job gets it): evaluate returns None and fit saves the epoch."""
    from accelerate import Accelerator

    from mlic.training.evaluation import split_metrics
    from mlic.training.preemption import StopSignal

    monkeypatch.setattr(mlic.label_stats, "BLOCK_ENTRIES", 200 * 10)  # 10 labels a block: 6 blocks
    y, p, known = _data(n=200, c=60, seed=7)
    accelerator = Accelerator(cpu=True)
    calls = []
    real_add = mlic.label_stats.LabelStats.add
    monkeypatch.setattr(mlic.label_stats.LabelStats, "add", lambda self, cols: calls.append(cols) or real_add(self, cols))
    stop_file = tmp_path / "stop"
    with StopSignal(str(stop_file)) as stop:
        assert split_metrics(y, p, known, 0.5, True, stop, accelerator) is not None and len(calls) == 6
        calls.clear()
        stop_file.touch()
        assert split_metrics(y, p, known, 0.5, True, stop, accelerator) is None
    assert len(calls) == 1  # the first block, then the check
