"""The label side at OpenImages size: synthetic label sets (no images), timed and measured section by section.

    python benchmarks/scale.py [--sizes 200000x10000 1000000x10000 9000000x10000] [--positives 8]
                               [--no-issue-row] [--repeats 3] [--threads 1] [--metrics 41620x10000] [--json OUT]

`--sizes` with no size skips the label rows; `--metrics NxC` (default OpenImages' validation split, 41,620 x
10,000) times every metric of an evaluation with a known mask (partial labels) and tuning: METRIC_SECTIONS.

The image side of scale, the cache build rate on real JPEGs, is `benchmarks/cache_build.py`.

Each size NxC (or NxC:K) is N images with ~K positives each (Poisson), label ids drawn Zipf-like (the
frequency of label j falls as 1/(j+1)), every label given at least one positive. By default a first row
200000x10000:4 compares with the issue's figures for the old sampler (dense bool matrix, pure-Python
loop): "200,000 x 10,000: least_sampled 35,000 draws/s, init 16.5 s, 1.9 GiB dense".

Memory is the process RSS (Linux): per section, `peak` is the high-water mark (VmHWM, reset before the
section through /proc/self/clear_refs) minus the RSS at its start, `kept` the RSS growth that remains
after it; unlike tracemalloc this counts numpy, torch and numba allocations alike. Where clear_refs is
not writable it falls back to getrusage's ru_maxrss growth (a lower bound: only a new process peak shows).
Small sections can read 0: the allocator reuses memory an earlier section freed without asking the OS.

Draws are memory-bound at the large sizes, so the figures move with what else runs on the machine (its
neighbours too, on a VM): the setup line records the load average before and after.

A section is a function `section(ctx) -> dict` that times itself with `measured()`; `SECTIONS` lists
them in order; `ctx` carries what earlier sections built (the labels, the samplers). Run alone: the 9 M
row takes a few minutes and several GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mlic.labels import LabelMatrix
from mlic.sampler import MultilabelBalancedSampler

MIB = 1 << 20


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


MEMORY_METHOD = ("process RSS: VmHWM after a reset through /proc/self/clear_refs" if _reset_peak() and
                 _status_kib("VmHWM") is not None else "getrusage ru_maxrss growth (lower bound)")


@contextlib.contextmanager
def measured() -> Iterator[dict]:
    """Fills the yielded dict with wall_s, peak_mib and kept_mib of the block."""
    out: dict = {}
    rss0 = _status_kib("VmRSS")
    exact = _reset_peak() and rss0 is not None
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    yield out
    out["wall_s"] = time.perf_counter() - start
    if exact:
        out["peak_mib"] = (_status_kib("VmHWM") - rss0) / 1024
        out["kept_mib"] = (_status_kib("VmRSS") - rss0) / 1024
    else:
        out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 1024
        out["kept_mib"] = float("nan")


def synthetic_labels(n: int, c: int, positives: float, seed: int = 0) -> LabelMatrix:
    """N x C positives, ~`positives` per image (Poisson), Zipf-like over labels, straight into CSR."""
    rng = np.random.default_rng(seed)
    per_image = rng.poisson(positives, n)
    rows = np.repeat(np.arange(n, dtype=np.int64), per_image)
    cdf = np.cumsum(1.0 / np.arange(1, c + 1))
    cols = np.searchsorted(cdf, rng.random(len(rows)) * cdf[-1], side="right")
    del per_image
    # one positive per label at a random image: the sampler refuses a label without positives
    rows = np.concatenate([rows, rng.integers(n, size=c)])
    cols = np.concatenate([cols, np.arange(c)])
    return LabelMatrix.from_pairs(rows, cols, n, c)


# ---- sections: each returns the figures of one row of the table


def numba_warmup(ctx: dict) -> dict:
    """The first least_sampled order in a process: numba's import and its on-disk cache (or a compile)."""
    tiny = np.eye(3, dtype=np.uint8)
    with measured() as m:
        MultilabelBalancedSampler(tiny, "least_sampled", num_samples=10).order(0)
    return {"section": "numba import + load/compile (once per process)", **m}


def labels_section(ctx: dict) -> dict:
    with measured() as m:
        labels = synthetic_labels(ctx["n"], ctx["c"], ctx["positives"], seed=ctx["seed"])
    ctx["labels"] = labels
    return {"section": "labels: generate + CSR", **m,
            "note": f"LabelMatrix.nbytes {labels.nbytes / MIB:.0f} MiB, {len(labels.indices) / ctx['n']:.2f} pos/img"}


def sampler_init_section(ctx: dict) -> dict:
    with measured() as m:
        ctx["samplers"] = {"least_sampled": MultilabelBalancedSampler(ctx["labels"], "least_sampled", seed=0)}
    return {"section": "sampler init", **m}


def _epoch_section(ctx: dict, policy: str) -> dict:
    """Epochs 0, 1, ... of one policy (least_sampled carries its counts on): the median epoch."""
    samplers = ctx.setdefault("samplers", {})
    if policy not in samplers:  # built outside the measurement: the init has its own row
        samplers[policy] = MultilabelBalancedSampler(ctx["labels"], policy, seed=0)
    sampler = samplers.pop(policy)  # freed after this section
    times = []
    with measured() as m:
        for epoch in range(ctx["repeats"]):
            start = time.perf_counter()
            sampler.order(epoch)
            times.append(time.perf_counter() - start)
    m["wall_s"] = statistics.median(times)
    return {"section": f"one epoch order: {policy}", **m, "draws_per_s": len(sampler) / m["wall_s"],
            "note": f"median of {len(times)} epochs; best {len(sampler) / min(times):,.0f} draws/s"}


def least_sampled_section(ctx: dict) -> dict:
    return _epoch_section(ctx, "least_sampled")


def random_section(ctx: dict) -> dict:
    return _epoch_section(ctx, "random")


def cycle_section(ctx: dict) -> dict:
    return _epoch_section(ctx, "cycle")


def split_section(ctx: dict) -> dict:
    """The train/val split mlic makes (iterative stratification up to 50 M entries, the rarest label above)."""
    from mlic.data.split import ITERATIVE_LIMIT, stratified_split

    labels = ctx["labels"]
    with measured() as m:
        _, val = stratified_split(labels, 0.2, seed=0)
    method = "iterative" if labels.num_rows * (labels.num_labels + 1) <= ITERATIVE_LIMIT else "rarest label"
    return {"section": "train/val split", **m, "note": f"{method}; val share {len(val) / labels.num_rows:.4f}"}


def pos_weight_section(ctx: dict) -> dict:
    from mlic.losses import pos_weight

    with measured() as m:
        weights = pos_weight(ctx["labels"])
    return {"section": "pos_weight", **m, "note": f"max {float(weights.max()):,.0f}"}


def metric_inputs_section(ctx: dict) -> dict:
    """What an evaluation holds after its gather: float32 scores, the 0/1 truth and the known mask (every
    positive and a random 10 % of the rest verified, as OpenImages' human-verified labels)."""
    rng = np.random.default_rng(ctx["seed"])
    with measured() as m:
        labels = synthetic_labels(ctx["n"], ctx["c"], ctx["positives"], seed=ctx["seed"])
        y = labels.dense(dtype=bool)
        known = rng.random(y.shape, dtype=np.float32) < 0.1
        known |= y
        p = (rng.standard_normal(y.shape, dtype=np.float32) * 0.5 + y).clip(0, 1)
        np.round(p, 4, out=p)  # ties, as float32 sigmoids of close logits give
    ctx.update(y=y, known=known, p=p)
    return {"section": "metric inputs: truth, known, float32 scores", **m,
            "note": f"{(y.nbytes + known.nbytes + p.nbytes) / MIB:,.0f} MiB held"}


def metrics_section(ctx: dict) -> dict:
    """Every key of a tuned evaluation (`mlic.training.evaluation.split_metrics`: METRIC_KEYS, *_tuned, the held-out F1)."""
    from mlic.metrics import label_stats, stats_metrics

    with measured() as m:
        stats = label_stats(ctx["y"], ctx["p"], 0.5, ctx["known"], tune=True)
        blocks = stats.blocks()
        for cols in blocks:
            stats.add(cols)
        metrics, thresholds = stats_metrics(stats)
    ctx.update(ap=stats.ap, thresholds=thresholds)
    peak = (_status_kib("VmHWM") or 0) / 1024
    return {"section": "metrics: all keys, tuned, held-out", **m,
            "note": f"{len(metrics)} keys, mAP {metrics['mAP']:.4f}, {len(blocks)} blocks of labels; process peak "
                    f"{peak:,.0f} MiB (inputs included)"}


def sklearn_check_section(ctx: dict, labels: int = 200) -> dict:
    """AP and tuned threshold of the first `labels` labels with scikit-learn, label by label, over the known
    entries: the largest difference from the figures above."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p, known = ctx["y"], ctx["p"], ctx["known"]
    ap_diff = thr_diff = 0.0
    with measured() as m:
        for c in range(min(labels, y.shape[1])):
            rows = known[:, c]
            y_c, p_c = y[rows, c].astype(np.int64), p[rows, c].astype(np.float64)
            if not y_c.any():
                continue
            ap_diff = max(ap_diff, abs(average_precision_score(y_c, p_c) - ctx["ap"][c]))
            precision, recall, cuts = precision_recall_curve(y_c, p_c)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)[:-1]
            base = 2 * (y_c & (p_c >= 0.5)).sum() / (y_c.sum() + (p_c >= 0.5).sum())
            want = cuts[int(np.argmax(f1))] if f1.max() > base + 1e-12 else 0.5
            thr_diff = max(thr_diff, abs(want - ctx["thresholds"][c]))
    return {"section": f"sklearn check: AP and tuned threshold of {labels} labels", **m,
            "note": f"max |AP diff| {ap_diff:.1e}, max |threshold diff| {thr_diff:.1e}"}


METRIC_SECTIONS: list[Callable[[dict], dict]] = [metric_inputs_section, metrics_section, sklearn_check_section]

SECTIONS: list[Callable[[dict], dict]] = [
    labels_section, split_section, pos_weight_section, sampler_init_section, least_sampled_section, random_section,
    cycle_section,
]


# ---- driver


def _parse_size(text: str, positives: float) -> tuple[int, int, float]:
    size, _, k = text.partition(":")
    n, _, c = size.lower().partition("x")
    return int(n), int(c), float(k) if k else positives


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(rows: list[dict]) -> str:
    lines = ["| size | pos/img | section | wall s | draws/s | peak MiB | kept MiB | note |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        rate = f"{r['draws_per_s']:,.0f}" if "draws_per_s" in r else ""
        lines.append(f"| {r['size']} | {r['positives']:g} | {r['section']} | {r['wall_s']:.3f} | {rate} | "
                     f"{r['peak_mib']:.0f} | {r['kept_mib']:.0f} | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", default=["200000x10000", "1000000x10000", "9000000x10000"],
                        help="NxC or NxC:K (K positives per image)")
    parser.add_argument("--positives", type=float, default=8, help="positives per image where a size has no :K")
    parser.add_argument("--no-issue-row", action="store_true", help="skip the 200000x10000:4 row of the issue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per policy (the median is shown)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the targets are for one core)")
    parser.add_argument("--metrics", nargs="*", default=["41620x10000"],
                        help="NxC rows of METRIC_SECTIONS (8.4 positives per image where no :K)")
    parser.add_argument("--json", type=Path, help="also write the rows and the setup here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sizes = ([] if args.no_issue_row else ["200000x10000:4"]) + args.sizes
    load_before = os.getloadavg()

    rows = [{"size": "-", "positives": 0, **numba_warmup({})}] if sizes else []
    runs = [(text, SECTIONS, args.positives) for text in sizes] + [(text, METRIC_SECTIONS, 8.4) for text in args.metrics]
    for text, sections, default_positives in runs:
        n, c, positives = _parse_size(text, default_positives)
        ctx = {"n": n, "c": c, "positives": positives, "seed": args.seed, "repeats": args.repeats}
        for section in sections:
            row = {"size": f"{n:,} x {c:,}", "positives": positives, **section(ctx)}
            rows.append(row)
            print(f"{row['size']} ({positives:g}/img) {row['section']}: {row['wall_s']:.2f} s", file=sys.stderr)
        del ctx

    import numba

    setup = {"command": " ".join(sys.argv), "commit": _git_commit(), "python": platform.python_version(),
             "numpy": np.__version__, "torch": torch.__version__, "numba": numba.__version__,
             "torch_threads": torch.get_num_threads(), "memory": MEMORY_METHOD,
             "load_average_1min": [load_before[0], os.getloadavg()[0]], "cpus": os.cpu_count()}
    print(f"commit {setup['commit']}, python {setup['python']}, numpy {setup['numpy']}, numba {setup['numba']}, "
          f"torch {setup['torch']} ({setup['torch_threads']} threads), {setup['cpus']} CPUs, 1-min load "
          f"{load_before[0]:.1f} before / {setup['load_average_1min'][1]:.1f} after; memory: {MEMORY_METHOD}\n")
    print(_markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
