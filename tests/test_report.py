"""`mlic report RUN_DIR`: one self-contained page, checked as written and as a real browser (headless
Chromium) renders it."""

import base64
import contextlib
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic.cli import main
from mlic.data.demo import LABELS
from mlic.reporting.report import FIGURE_LABELS, config_html, data_figures_html, per_label_html, shown_labels

BROWSER_TIMEOUT = 90


@pytest.fixture(scope="module")
def browser() -> str:
    """Debian's chromium. Missing: a skip on a workstation, a failure in CI, which must run this test."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("no chromium binary: .ci/run must install Debian's chromium (apt-get install chromium) for "
                    "tests/test_report.py")
    pytest.skip("no chromium binary (apt-get install chromium): the report is not opened in a browser")


@pytest.fixture(scope="module")
def report(trained_demo) -> Path:
    run = trained_demo
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["report", str(run)]) == 0
    assert printed.getvalue().strip() == str(run / "report.html")  # the command prints the page's path
    return run / "report.html"


def _per_label_names(page: str) -> list[str]:
    table = re.search(r'<table id="per-label">.*?</table>', page, re.S)
    assert table, "no per-label table"
    tbody = re.search(r"<tbody>(.*?)</tbody>", table.group(0), re.S).group(1)
    return re.findall(r'<tr><td class="name">(.*?)</td>', tbody)


@pytest.mark.slow
def test_report_is_one_self_contained_page(report):
    assert report.exists()
    page = report.read_text(encoding="utf-8")
    assert 'src="http' not in page and "<link" not in page and "<script" not in page and "url(" not in page
    assert not re.findall(r'(?:src|href)="(?!data:|#)', page), "a reference outside the page"
    images = re.findall(r"<img [^>]*>", page)
    sources = [re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag) for tag in images]
    assert all(sources), "an <img> that is not a data: URI"
    # training curves, Figures 1-3, Figure 7, precision-recall, and one error figure per label
    assert len(images) == 1 + 3 + 1 + 1 + len(LABELS)
    for source in sources:
        assert Image.open(io.BytesIO(base64.b64decode(source.group(1)))).format == "PNG"
    assert _per_label_names(page) == LABELS
    assert "_provenance" in page and "git_commit" in page and 'id="summary"' in page


@pytest.mark.slow
def test_report_renders_in_headless_chromium(browser, report, tmp_path):
    flags = [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.resolve().as_uri()
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", url], capture_output=True,
                          text=True, timeout=BROWSER_TIMEOUT)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a blank screenshot"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=BROWSER_TIMEOUT)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="per-label"' in dom.stdout and _per_label_names(dom.stdout) == LABELS


def test_text_is_escaped():
    page = config_html({"run": {"name": "<script>alert(1)</script>", "tags": ["a&b"]}, "_provenance": {"host": '"x"'}})
    assert "<script>" not in page and "&lt;script&gt;" in page and "a&amp;b" in page and "&quot;x&quot;" in page
    rows = [{"label": "<b>", "support": 1, "AP": float("nan"), "precision": 0.5, "recall": 1.0, "f1": 0.6,
             "confusion": [[1, 1], [0, 1]]}]
    table = per_label_html(rows, np.array([0.5]))
    assert "<b>" not in table and "&lt;b&gt;" in table and "–" in table  # NaN AP (no positives) as a dash


def test_many_labels_keep_every_row_and_draw_the_worst():
    n = 1000
    rng = np.random.default_rng(0)
    errors = rng.permutation(n)
    rows = [{"label": f"class_{c}", "support": 5, "AP": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
             "confusion": [[10, int(errors[c])], [0, 5]]} for c in range(n)]
    assert len(_per_label_names(per_label_html(rows, np.full(n, 0.5)))) == n
    shown = shown_labels(rows)
    assert len(shown) == FIGURE_LABELS and shown == sorted(shown)
    assert {int(errors[c]) for c in shown} == set(range(n - FIGURE_LABELS, n))
    assert shown_labels(rows[:14]) == list(range(14))


def test_data_figures_are_drawn_for_a_run_folder_without_them(report, tmp_path):
    """A run folder from before RUN/figures existed: Figures 1-3 come from the run's data instead."""
    shutil.copy(report.parent / "config.yaml", tmp_path / "config.yaml")  # its config, no figures/ or analysis/
    section = data_figures_html(tmp_path, None)
    assert section.count('<img src="data:image/png;base64,') == 3 and "Figure 3" in section


def test_curves_show_every_logged_split():
    from mlic.reporting.report import curves_figure

    lines = [{"epoch": e, "split": s, "loss": 1.0 / e, "f1_macro": 0.1 * e, "mAP": 0.2 * e}
             for e in (1, 2) for s in ("train", "val", "val_ema")]
    fig = curves_figure(lines)
    assert [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes] == [["train", "val", "val_ema"]] * 3
