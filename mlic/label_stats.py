"""Per-label statistics of a score matrix, one block of labels at a time: time and memory linear in N·C.

Every metric of `mlic.metrics` comes from here (docs/METRICS.md, "Scale"). A block of labels is copied once
into a (labels, images) array and each label is sorted once; from that sort come its AP (scikit-learn's
`average_precision_score`: tied scores are one step of the curve), its F1-best threshold (scikit-learn's
`precision_recall_curve`, the same floating-point operations, the lowest threshold among equal F1s) and the
thresholds tuned on each half of the images. TP, predicted and actual positives per label, the entries and
images predicted right, are counted at each set of thresholds; an image's top-k candidates are carried from
block to block. Unknown entries (partial labels) weigh nothing: they are ranked with the others but count
neither as positives nor as images above a threshold, which gives exactly the numbers over the known
entries alone. A caller may stop between blocks (`mlic.training.evaluation` checks a stop request there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_ENTRIES = 1 << 22  # N·k entries a block sorts: ~40 MB per (k, N) array, a few hundred MB in all
TUNED = "tuned"  # the threshold set that `LabelStats` chooses itself


def label_blocks(num_images: int, num_labels: int, entries: int | None = None) -> list[slice]:
    width = max(1, (entries or BLOCK_ENTRIES) // max(num_images, 1))
    return [slice(s, min(s + width, num_labels)) for s in range(0, num_labels, width)]


@dataclass
class Counts:
    """Per label over its known entries: true positives, predicted positives, positives, known entries; and
    the entries predicted right, the known entries, the images with a wrong known entry, those with a known one."""

    tp: np.ndarray
    pred: np.ndarray
    true: np.ndarray
    known: np.ndarray
    right: int = 0
    entries: int = 0
    rows_wrong: np.ndarray | None = None
    rows_known: np.ndarray | None = None

    @classmethod
    def zeros(cls, num_images: int, num_labels: int, rows: bool = True) -> Counts:
        z = [np.zeros(num_labels, dtype=np.int64) for _ in range(4)]
        return cls(*z, rows_wrong=np.zeros(num_images, bool) if rows else None,
                   rows_known=np.zeros(num_images, bool) if rows else None)

    def add(self, cols: slice, pred: np.ndarray, truth: np.ndarray, known: np.ndarray | None) -> None:
        """`pred`, `truth`, `known`: (labels of `cols`, images) bool."""
        kept_pred = pred if known is None else pred & known
        self.tp[cols] = np.count_nonzero(kept_pred & truth, axis=1)
        self.pred[cols] = np.count_nonzero(kept_pred, axis=1)
        self.true[cols] = np.count_nonzero(truth, axis=1)  # truth is 0 at unknown entries
        self.known[cols] = truth.shape[1] if known is None else np.count_nonzero(known, axis=1)
        entries = int(self.known[cols].sum())
        self.entries += entries
        if self.rows_wrong is None:
            return
        wrong = pred != truth
        if known is not None:
            wrong &= known
            self.rows_known |= known.any(0)
        else:
            self.rows_known[:] = True
        self.right += entries - int(np.count_nonzero(wrong))
        self.rows_wrong |= wrong.any(0)


class TopK:
    """Each image's k highest scores among its known labels (ties: the lower label index), merged across blocks."""

    def __init__(self, num_images: int, k: int):
        self.k = k
        self.values = np.full((num_images, k), -np.inf, dtype=np.float64)
        self.labels = np.full((num_images, k), -1, dtype=np.int64)

    def add(self, cols: slice, scores: np.ndarray, known: np.ndarray | None) -> None:
        """`scores`, `known`: (images, labels of `cols`), views of the full arrays are fine."""
        masked = np.array(scores) if known is None else np.where(known, scores, -np.inf)
        images = np.arange(masked.shape[0])
        values, labels = [], []
        for _ in range(min(self.k, masked.shape[1])):
            best = np.argmax(masked, axis=1)  # the first maximum: the lowest label index
            values.append(masked[images, best])
            labels.append(best + cols.start)
            masked[images, best] = -np.inf
        # earlier blocks hold lower label indices: a stable sort keeps them first among equal scores
        values = np.concatenate([self.values, np.stack(values, 1)], 1)
        labels = np.concatenate([self.labels, np.stack(labels, 1)], 1)
        order = np.argsort(-values, axis=1, kind="stable")[:, :self.k]
        self.values, self.labels = np.take_along_axis(values, order, 1), np.take_along_axis(labels, order, 1)

    def counts(self, y, p, thresholds: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per label: (true positives, predicted positives) when an image predicts its top-k candidates that
        reach the label's threshold. A candidate at -inf is an unknown entry or a label already taken."""
        rows, cols = np.nonzero(self.values > -np.inf)
        labels = self.labels[rows, cols]
        pred = np.asarray(p[rows, labels]) >= thresholds[labels]
        hit = pred & (np.asarray(y[rows, labels]) != 0)
        return (np.bincount(labels[hit], minlength=num_labels).astype(np.int64),
                np.bincount(labels[pred], minlength=num_labels).astype(np.int64))


class Ranking:
    """A block of labels sorted once by descending score; `ends` are the flat positions where a run of tied
    scores ends (each a point of the precision-recall curve)."""

    def __init__(self, scores: np.ndarray, truth: np.ndarray, known: np.ndarray | None):
        self.order = np.argsort(scores, axis=1)[:, ::-1]  # descending; the order within a tie never matters
        self.scores = np.take_along_axis(scores, self.order, 1)
        self.truth = np.take_along_axis(truth, self.order, 1)
        self.known = None if known is None else np.take_along_axis(known, self.order, 1)
        k, n = scores.shape
        is_end = np.ones((k, n), dtype=bool)
        np.not_equal(self.scores[:, :-1], self.scores[:, 1:], out=is_end[:, :-1])
        self.ends = np.flatnonzero(is_end)
        self.end_rows = self.ends // max(n, 1)
        self.first = np.ones(len(self.ends), dtype=bool)
        self.first[1:] = self.end_rows[1:] != self.end_rows[:-1]
        self.odd = (self.order & 1).astype(bool)  # the image's half for the held-out thresholds
        self._known_curve = None

    def weight(self, half: int | None = None) -> np.ndarray | None:
        """The entries that count: the known ones, of even (half 0) or odd (half 1) images only with `half`."""
        if half is None:
            return self.known
        in_half = self.odd if half else ~self.odd
        return in_half if self.known is None else in_half & self.known

    def curve(self, weight: np.ndarray | None):
        """At each end: (true positives, entries counted) so far, and those of its run of ties alone; positives per
        label. The known entries' curve is computed once (AP and tuning share it)."""
        if weight is self.known and self._known_curve is not None:
            return self._known_curve
        positive = self.truth if weight is None else self.truth & weight
        tps = np.cumsum(positive, axis=1, dtype=np.int32).ravel()[self.ends].astype(np.int64)  # N < 2**31
        if weight is None:
            counted = self.ends % self.scores.shape[1] + 1
        else:
            counted = np.cumsum(weight, axis=1, dtype=np.int32).ravel()[self.ends].astype(np.int64)
        run_tps, run_counted = _run_sizes(tps, self.first), _run_sizes(counted, self.first)
        curve = tps, counted, run_tps, run_counted, np.count_nonzero(positive, axis=1)
        if weight is self.known:
            self._known_curve = curve
        return curve

    def average_precision(self) -> np.ndarray:
        """sklearn's AP of each label (over its known entries): Σ over runs of ties (ΔR)·P; NaN without a positive."""
        tps, counted, run_tps, _, positives = self.curve(self.known)
        step = run_tps * (tps / np.maximum(counted, 1))
        total = np.bincount(self.end_rows, weights=step, minlength=len(positives))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(positives > 0, total / positives, np.nan)

    def best_thresholds(self, default: float, half: int | None = None) -> np.ndarray:
        """Each label's threshold of highest F1 on the counted entries (`tune_thresholds`' rule: `default`
        unless another is strictly better by 1e-12; the lowest threshold among equal F1s, as an argmax over
        sklearn's increasing thresholds gives)."""
        weight = self.weight(half)
        tps, counted, _, run_counted, positives = self.curve(weight)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tps / counted
            recall = tps / positives[self.end_rows]
            # the same operations as tune_thresholds on sklearn's curve: equal F1s stay equal
            f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        f1 = np.where((run_counted > 0) & (positives[self.end_rows] > 0), f1, -1.0)  # a run of unknown entries is no point
        starts = np.flatnonzero(self.first)
        best = np.maximum.reduceat(f1, starts)
        last = np.maximum.reduceat(np.where(f1 == best[self.end_rows], np.arange(len(f1)), -1), starts)
        base = _f1_at(self.scores >= default, self.truth, weight, positives)
        better = (positives > 0) & (f1[last] > base + 1e-12)
        return np.where(better, self.scores.ravel()[self.ends[last]].astype(np.float64), default)


def _run_sizes(cumulative: np.ndarray, first: np.ndarray) -> np.ndarray:
    """What each run of ties adds to a per-label cumulative count (its first run: all of it)."""
    out = np.empty_like(cumulative)
    out[0:1] = cumulative[0:1]
    np.subtract(cumulative[1:], cumulative[:-1], out=out[1:])
    out[first] = cumulative[first]
    return out


def _f1_at(pred: np.ndarray, truth: np.ndarray, weight: np.ndarray | None, positives: np.ndarray) -> np.ndarray:
    """Each label's F1 of `pred` over the counted entries, as `metrics._f1` computes it."""
    if weight is not None:
        pred = pred & weight
    tp = np.count_nonzero(pred & truth, axis=1).astype(np.float64)
    denom = (positives + np.count_nonzero(pred, axis=1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


class LabelStats:
    """The statistics of (y, p, known) at each named set of thresholds, fed one block of labels at a time:
    `for cols in stats.blocks(): stats.add(cols)`. `y` (N, C) 0/1, `p` (N, C) float32 or float64 scores,
    `known` (N, C) bool or None (all known). With `tune`, also the thresholds TUNED chosen label by label
    (`Ranking.best_thresholds`) and their counts; with `heldout`, the counts `heldout` where each half of the
    images is thresholded with the other half's tuned thresholds; with `ap`, each label's AP."""

    def __init__(self, y, p, known, thresholds: dict[str, float | np.ndarray], default: float = 0.5, ap: bool = True,
                 tune: bool = False, heldout: bool = False, top_k: int = 0):
        n, c = y.shape
        self.y, self.p, self.known, self.default, self.tune = y, p, known, default, tune
        self.thresholds = {k: np.broadcast_to(np.asarray(t, dtype=np.float64), (c,)) for k, t in thresholds.items()}
        if tune:
            self.thresholds[TUNED] = np.full(c, default, dtype=np.float64)  # filled block by block
        self.counts = {k: Counts.zeros(n, c) for k in self.thresholds}
        self.heldout = Counts.zeros(n, c, rows=False) if heldout else None
        self.ap = np.full(c, np.nan) if ap else None
        self.top = TopK(n, top_k) if top_k else None

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.shape

    def blocks(self) -> list[slice]:
        return label_blocks(*self.shape)

    def add(self, cols: slice) -> None:
        scores = np.ascontiguousarray(self.p[:, cols].T)
        known = None if self.known is None else np.ascontiguousarray(self.known[:, cols].T)
        truth = np.asarray(self.y[:, cols]).T != 0  # an unknown entry is never a positive, whatever y says
        if known is not None:
            truth &= known
        if self.top is not None:
            self.top.add(cols, self.p[:, cols], None if self.known is None else self.known[:, cols])
        if self.shape[0] and (self.ap is not None or self.tune or self.heldout is not None):
            ranking = Ranking(scores, truth, known)
            if self.ap is not None:
                self.ap[cols] = ranking.average_precision()
            if self.tune:
                self.thresholds[TUNED][cols] = ranking.best_thresholds(self.default)
            if self.heldout is not None:
                # an even image is thresholded with the odd images' thresholds, an odd one with the even ones'
                tuned = [ranking.best_thresholds(self.default, half)[:, None] for half in (0, 1)]
                odd = (np.arange(scores.shape[1]) & 1).astype(bool)
                pred = np.where(odd, scores >= tuned[0], scores >= tuned[1])
                self.heldout.add(cols, pred, truth, known)
            del ranking
        for name, t in self.thresholds.items():
            self.counts[name].add(cols, scores >= t[cols, None], truth, known)

    def filled(self) -> LabelStats:
        """Every block added (for callers that need no stop between blocks)."""
        for cols in self.blocks():
            self.add(cols)
        return self
