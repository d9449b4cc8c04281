"""`mlic report RUN_DIR`: one self-contained HTML page for a finished run, RUN_DIR/report.html.

The page holds the resolved config (with its provenance), the training curves, the final per-label table of
the exported model on the run's validation split, the data figures (Figures 1-3) and the error analysis
(Figure 7, Figures 8-11). Every figure is a base64 PNG inside the page and the styling is inline, so the
file can be mailed, archived or opened offline and shows exactly what it showed the day it was written."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import yaml
from matplotlib.ticker import MaxNLocator

from mlic.figures import plt
from mlic.jsonl import read_jsonl
from mlic.models.model_folder import read_meta
from mlic.reporting.analyze import (
    FIGURE_LABELS,
    confusion_figure,
    errors_figure,
    pr_figure,
    run_data_figures,
    shown_labels,
)
from mlic.training.run_log import METRICS_FILE

DATA_FIGURES = {
    "label_distribution": "Figure 1: label distribution (training split)",
    "sampled_label_distribution": "Figure 2: label distribution in one epoch of the training sampler",
    "class_weights": "Figure 3: class weights of the weighted loss",
}
ERROR_EXAMPLES = 8
CURVE_KEYS = ("loss", "f1_macro", "mAP")
SUMMARY_KEYS = ("images", "accuracy", "subset_accuracy", "precision_micro", "recall_micro", "f1_micro",
                "precision_macro", "recall_macro", "f1_macro", "mAP", "f1_macro_tuned", "f1_micro_tuned",
                "accuracy_tuned", "CF1", "OF1")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { border-bottom: 3px solid #3b6ea8; padding-bottom: .2em; }
h2 { margin-top: 2em; color: #3b6ea8; }
table { border-collapse: collapse; margin: .5em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef3f9; }
td.name, th.name { text-align: left; font-family: ui-monospace, monospace; }
tbody tr:nth-child(even) { background: #f7f7f7; }
details { margin: .3em 0; } summary { cursor: pointer; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
nav a { margin-right: 1em; }
.note { color: #555; font-size: 14px; }
"""


def write_report(run_dir: Path, data_root: str | None = None) -> Path:
    """Write RUN_DIR/report.html and return its path. The model is evaluated once on the validation split and
    that one evaluation feeds the table and every error figure, so they agree with each other."""
    from mlic.serving.inference import evaluate_model

    run_dir = Path(run_dir)
    doc = yaml.safe_load((run_dir / "config.yaml").read_text())
    meta = read_meta(run_dir / "model")
    summary, per_label, probs, targets, dataset, rows = evaluate_model(str(run_dir / "model"), data_root, "val")
    thresholds = np.asarray(meta["thresholds"], dtype=np.float64)
    shown = shown_labels(per_label, FIGURE_LABELS)
    names = [meta["label_names"][c] for c in shown]
    sections = [
        ("config", "Resolved config", config_html(doc)),
        ("curves", "Training curves", curves_html(run_dir / METRICS_FILE)),
        ("results", "Validation results (exported model, tuned thresholds)",
         summary_html(summary, meta) + per_label_html(per_label, thresholds)),
        ("data", "Data (Figures 1-3)", data_figures_html(run_dir, data_root)),
        ("errors", "Error analysis (Figures 7-11)", _subset_note(len(shown), len(per_label))
         + figure_html(confusion_figure(targets[:, shown], probs[:, shown], thresholds[shown], names),
                       "Figure 7: confusion matrix per label (validation split, tuned thresholds)")
         + figure_html(pr_figure(targets[:, shown], probs[:, shown], names), "Precision-recall curves per label")
         + "".join(figure_html(errors_figure(dataset, rows, targets, probs, thresholds[c], c, meta["label_names"][c],
                                             ERROR_EXAMPLES),
                               f"Misclassified '{meta['label_names'][c]}': false positives on top, false negatives below")
                   for c in shown)),
    ]
    out = run_dir / "report.html"
    out.write_text(page(f"mlic report: {run_dir.resolve().name}", run_dir, meta, sections), encoding="utf-8")
    return out


def _subset_note(shown: int, total: int) -> str:
    if shown == total:
        return ""
    return f'<p class="note">Figures for the {shown} labels with the most errors of {total}; the table lists all.</p>'


def png_uri(figure) -> str:
    """A `data:` URI of a matplotlib figure (closed afterwards) or of a PNG file's bytes."""
    if isinstance(figure, Path):
        data = figure.read_bytes()
    else:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(figure, caption: str) -> str:
    text = html.escape(caption)
    return f'<figure><img src="{png_uri(figure)}" alt="{text}"><figcaption>{text}</figcaption></figure>\n'


def _cell(value) -> str:
    """One config value as readable text: scalars as YAML writes them, lists and mappings in flow style."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def config_html(doc: dict) -> str:
    """One collapsible table per config section; `_provenance` (commit, versions, world size) opens first."""
    parts = []
    order = sorted(doc, key=lambda name: name != "_provenance")
    for section in order:
        values = doc[section] if isinstance(doc[section], dict) else {"": doc[section]}
        body = "".join(f'<tr><td class="name">{html.escape(str(k))}</td><td class="name">{html.escape(_cell(v))}</td></tr>'
                       for k, v in values.items())
        is_open = " open" if section == "_provenance" else ""
        parts.append(f"<details{is_open}><summary>{html.escape(section)}</summary>"
                     f'<table class="config">{body}</table></details>\n')
    return "".join(parts)


def curves_figure(lines: list[dict]):
    """Loss, macro-F1 and mAP per epoch for every split the run logged (train, val and val_ema with EMA)."""
    splits = list(dict.fromkeys(x["split"] for x in lines))
    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4.2 * len(CURVE_KEYS), 3.2), dpi=90)
    for ax, key in zip(axes, CURVE_KEYS):
        for split in splits:
            points = [(x["epoch"], x[key]) for x in lines if x["split"] == split and key in x]
            if points:
                ax.plot(*zip(*points), marker="o", label=split)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    return fig


def curves_html(path: Path) -> str:
    lines = read_jsonl(path)
    if not lines:
        return f'<p class="note">No training curves: {html.escape(str(path))} is missing or empty.</p>'
    return figure_html(curves_figure(lines), f"Training curves ({len(lines)} lines of {path.name})")


def _number(value) -> str:
    if isinstance(value, int | np.integer):
        return str(int(value))
    value = float(value)
    return "–" if math.isnan(value) else f"{value:.4f}"


def summary_html(summary: dict, meta: dict) -> str:
    """The headline metrics first; every other number of the evaluation in a collapsed table below."""
    head = [k for k in SUMMARY_KEYS if k in summary]
    rest = [k for k in summary if k not in head and isinstance(summary[k], int | float)]

    def table(keys: list[str], table_id: str) -> str:
        body = "".join(f'<tr><td class="name">{html.escape(k)}</td><td>{_number(summary[k])}</td></tr>' for k in keys)
        return f'<table id="{table_id}"><tr><th class="name">metric</th><th>value</th></tr>{body}</table>'

    epoch = html.escape(str(meta.get("epoch", "?")))
    return (f'<p class="note">The exported model (epoch {epoch}) on the run\'s validation split; "_tuned" uses the '
            "per-label thresholds of the model, the others 0.5.</p>" + table(head, "summary")
            + f"<details><summary>all {len(rest)} other metrics</summary>{table(rest, 'summary-all')}</details>\n")


def per_label_html(per_label: list[dict], thresholds: np.ndarray) -> str:
    """One row per label: support, AP, the tuned threshold, precision/recall/F1 there, and its confusion counts."""
    head = "".join(f"<th>{h}</th>" for h in ("support", "AP", "threshold", "precision", "recall", "F1",
                                              "TP", "FP", "FN", "TN"))
    body = []
    for r, threshold in zip(per_label, thresholds):
        (tn, fp), (fn, tp) = r["confusion"]
        cells = [r["support"], r["AP"], float(threshold), r["precision"], r["recall"], r["f1"], tp, fp, fn, tn]
        body.append(f'<tr><td class="name">{html.escape(str(r["label"]))}</td>'
                    + "".join(f"<td>{_number(v)}</td>" for v in cells) + "</tr>")
    return (f'<h3>Per label ({len(per_label)} labels)</h3><table id="per-label"><thead><tr><th class="name">label</th>'
            f'{head}</tr></thead><tbody>{"".join(body)}</tbody></table>\n')


def data_figures_html(run_dir: Path, data_root: str | None) -> str:
    """Figures 1-3 as the run drew them at its start (RUN/figures), else as `mlic analyze` wrote them, else
    drawn now from the run's data."""
    found = {}
    for stem in DATA_FIGURES:
        for folder in ("figures", "analysis"):
            if (run_dir / folder / f"{stem}.png").exists():
                found[stem] = run_dir / folder / f"{stem}.png"
                break
    if len(found) < len(DATA_FIGURES):
        found, _ = run_data_figures(run_dir, data_root)
    return "".join(figure_html(found[stem], caption) for stem, caption in DATA_FIGURES.items())


def page(title: str, run_dir: Path, meta: dict, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{anchor}">{html.escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>\n{content}</section>\n'
                   for anchor, heading, content in sections)
    labels = meta.get("label_names", [])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>"
            f'<p class="note">Run folder {html.escape(str(run_dir.resolve()))}; model {html.escape(str(meta.get("architecture", {}).get("name", "?")))}'
            f", {len(labels)} labels.</p><nav>{nav}</nav>\n{body}</body></html>\n")
