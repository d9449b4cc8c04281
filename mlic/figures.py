"""The report's data figures (Figures 1-3): label distribution, the distribution one epoch of the
balanced sampler draws, and the class weights of the weighted loss."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlic.labels import LabelMatrix  # noqa: E402

NAMED_BARS = 60  # above this many labels the bars are unnamed (label ids on the axis)
STEM_BYTES = 120  # of a label's part of a file name (UTF-8): with a prefix and a suffix, far below 255


def bar_figure(values: Sequence[float], names: Sequence[str], title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    if len(names) <= NAMED_BARS:
        ax.bar(range(len(names)), values, color="#3b6ea8")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    else:  # thousands of labels (OpenImages): one filled step per label id, no names. One artist: 100,080
        # bars (a Rectangle each) took minutes to draw
        ax.stairs(np.asarray(values, dtype=np.float64), np.arange(len(names) + 1) - 0.5, fill=True, color="#3b6ea8")
        ax.set_xlabel("label id")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def data_figures(labels: LabelMatrix, names: Sequence[str], sampled_order: np.ndarray, pos_weight) -> dict:
    """{file stem: figure} for Figures 1-3 of the training split's `labels`. `sampled_order` is one epoch of
    the training sampler."""
    return {
        "label_distribution": bar_figure(labels.positive_counts(), names, "Figure 1: label distribution (training split)",
                                         "images with the label"),
        "sampled_label_distribution": bar_figure(labels.take(sampled_order).positive_counts(), names,
                                                 "Figure 2: label distribution in one sampled epoch", "draws with the label"),
        "class_weights": bar_figure(np.asarray(pos_weight), names, "Figure 3: class weights (pos_weight)",
                                    "negatives / positives"),
    }


def save_figures(figures: dict, out_dir: Path, writer=None, step: int = 0) -> list[Path]:
    """PNG files in `out_dir` and, with a TensorBoard `writer`, images under `figures/`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures.items():
        path = out_dir / f"{stem}.png"
        fig.savefig(path)
        if writer is not None:
            writer.add_figure(f"{out_dir.name}/{stem}", fig, global_step=step, close=False)
        plt.close(fig)
        paths.append(path)
    return paths


def file_stems(names: Sequence[str], prefix: str = "") -> list[str]:
    """One safe, unique file stem per label name: `prefix` + the name, where every character but letters,
    digits (any script), '-', '_' and '.' becomes '_' (an OpenImages MID /m/0000x is m_0000x), no leading dot,
    at most STEM_BYTES of UTF-8. A name changed that way, or equal to an earlier stem once case is ignored
    (case-insensitive file systems), gets its label index too (`_c12`): two names never share a file."""
    stems, taken = [], set()
    for c, name in enumerate(names):
        clean = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).lstrip(".")
        clean = clean.encode("utf-8")[:STEM_BYTES].decode("utf-8", "ignore")
        stem = prefix + clean
        if not clean or clean != name or stem.casefold() in taken:
            stem = f"{prefix}{clean}_c{c}"
        while stem.casefold() in taken:  # a name that itself ends like a suffixed one
            stem += f"_c{c}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems
