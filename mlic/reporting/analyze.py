"""`mlic analyze RUN_DIR`: the report's figures for a finished run, as PNG and in TensorBoard.

Figures 1-3 (data), per-label confusion matrices (Figure 7), misclassified validation images per label,
false positives and false negatives apart (Figures 8-11), precision-recall curves, training curves.
Above FIGURE_LABELS labels the per-label figures show the labels with the most errors only; their file names
come from `figures.file_stems` (an OpenImages MID like /m/0000x is no path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from sklearn.metrics import multilabel_confusion_matrix, precision_recall_curve

from mlic.config import Config
from mlic.figures import data_figures, file_stems, plt, save_figures
from mlic.jsonl import read_jsonl
from mlic.models.model_folder import read_meta

# Above this many labels the per-label figures show the labels with the most errors only: one figure per
# label for thousands of labels (OpenImages) would take hours to draw and weigh gigabytes. Tables list all.
FIGURE_LABELS = 40


def shown_labels(per_label: list[dict], limit: int = FIGURE_LABELS) -> list[int]:
    """Label columns the per-label figures draw: all of them, or past `limit` the ones with most errors."""
    if len(per_label) <= limit:
        return list(range(len(per_label)))
    errors = [r["confusion"][0][1] + r["confusion"][1][0] for r in per_label]  # sklearn's [[tn, fp], [fn, tp]]
    return sorted(np.argsort(errors, kind="stable")[::-1][:limit].tolist())


def confusion_figure(targets, probs, thresholds, names):
    matrices = multilabel_confusion_matrix(targets.astype(int), (probs >= thresholds).astype(int))
    cols = 5
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), dpi=90)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name, m in zip(axes.flat, names, matrices):
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < m.max() / 2 else "white")
        ax.set_title(name)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
    fig.suptitle("Figure 7: confusion matrix per label (validation split, tuned thresholds)")
    fig.tight_layout()
    return fig


def errors_figure(dataset, rows, targets, probs, threshold: float, c: int, name: str, k: int):
    """The most confident mistakes for one label: false positives on top, false negatives below.
    `targets` and `probs` are those of `rows` of the full `dataset`."""
    y, p = targets[:, c], probs[:, c]
    fp = [i for i in np.argsort(-p) if y[i] == 0 and p[i] >= threshold][:k]
    fn = [i for i in np.argsort(p) if y[i] == 1 and p[i] < threshold][:k]
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.8), dpi=90, squeeze=False)
    for row, (kind, picks) in enumerate((("false positive", fp), ("false negative", fn))):
        for col in range(k):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(picks):
                i = picks[col]
                ax.imshow(dataset.read(int(rows[i])))
                ax.set_title(f"{dataset.names[rows[i]]}\np={p[i]:.2f}", fontsize=7)
        axes[row][0].text(-0.1, 0.5, kind, transform=axes[row][0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"Misclassified '{name}' (threshold {threshold:.2f}): {len(fp)} FP and {len(fn)} FN shown")
    fig.tight_layout()
    return fig


def pr_figure(targets, probs, names):
    fig, ax = plt.subplots(figsize=(8, 6), dpi=90)
    for c, name in enumerate(names):
        if targets[:, c].any():
            precision, recall, _ = precision_recall_curve(targets[:, c], probs[:, c])
            ax.plot(recall, precision, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall per label (validation split)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def curves_figure(lines: list[dict]):
    keys = ("loss", "f1_micro", "f1_macro", "mAP")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), dpi=90)
    for ax, key in zip(axes, keys):
        for split in ("train", "val"):
            points = [(x["epoch"], x[key]) for x in lines if x["split"] == split and key in x]
            if points:
                ax.plot(*zip(*points), marker="o", label=split)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return fig


def run_data_figures(run_dir: Path, data_root: str | None = None) -> tuple[dict, Config]:
    """Figures 1-3 of a run folder drawn again from its config.yaml, and that config: the training split,
    one epoch of its sampler, and the class weights its loss used (the clipped `pos_weight` with
    `loss.pos_weight: auto`, else the plain ratio), as the run draws them at its start."""
    from mlic.config import config_from_dict
    from mlic.data.pipeline import build_sampler, load_split
    from mlic.losses import pos_weight

    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if data_root is not None:
        cfg.data.root = data_root
    dataset, train_idx, _ = load_split(cfg)
    labels = dataset.labels.take(train_idx)
    order = np.asarray(list(build_sampler(cfg, labels, dataset.label_names)))
    weights = pos_weight(labels, cfg.loss.pos_weight_clip) if cfg.loss.pos_weight == "auto" else pos_weight(labels)
    return data_figures(labels, dataset.label_names, order, weights.numpy()), cfg


def analyze(run_dir: Path, data_root: str | None = None, examples: int = 8) -> list[Path]:
    """Write every figure to RUN/analysis/ (and RUN/tensorboard); returns the PNG paths."""
    from torch.utils.tensorboard import SummaryWriter

    from mlic.serving.inference import evaluate_model

    figures, cfg = run_data_figures(run_dir, data_root)
    _, per_label, probs, targets, dataset, val_rows = evaluate_model(str(run_dir / "model"), cfg.data.root, "val")
    meta = read_meta(run_dir / "model")
    thresholds = np.asarray(meta["thresholds"])
    shown = shown_labels(per_label)
    names = [meta["label_names"][c] for c in shown]
    figures["confusion_matrices"] = confusion_figure(targets[:, shown], probs[:, shown], thresholds[shown], names)
    figures["pr_curves"] = pr_figure(targets[:, shown], probs[:, shown], names)
    figures["training_curves"] = curves_figure(read_jsonl(run_dir / "metrics.jsonl"))
    out, step = run_dir / "analysis", int(meta["epoch"])
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    try:
        paths = save_figures(figures, out, writer, step)
        for c, name, stem in zip(shown, names, file_stems(names, "errors_")):  # one figure open at a time
            figure = errors_figure(dataset, val_rows, targets, probs, thresholds[c], c, name, examples)
            paths += save_figures({stem: figure}, out, writer, step)
        return paths
    finally:
        writer.close()
