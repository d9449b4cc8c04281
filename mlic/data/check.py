"""`mlic check-data`: every problem of a dataset in one pass, one line each, naming the file (and line).

The problems are those of the format's parser (the one training uses) plus a decode of every image,
so a dataset that passes here is one training reads, and each line is the text training would raise.
The decode also says what it had to convert (16-bit, transparency, EXIF orientation, ICC profile, a
first frame of many): warnings, one line per kind, not problems. The parser's warnings (an image outside
the data root, a label name that cannot be a file name) are warnings too, one line each. Partially labelled data (Open Images,
VOC's difficult objects, csv with `-name`) gets one more line, a note: how many entries are verified
positive, verified negative and unknown.
"""

from __future__ import annotations

from collections.abc import Collection

from mlic.data.decode import DecodeReport, DecodeSettings
from mlic.data.registry import parse
from mlic.labels import LabelMatrix


def check_data(root, fmt: str = "helsinki", labels: Collection[str] | None = None, workers: int = 4,
               split: str | None = None, max_pixels: int | None = None, **options
               ) -> tuple[list[str], list[str], list[str]]:
    """(problem lines, warning lines (the parser's, then the conversions'), notes). `max_pixels`: data.max_pixels (default:
    DataConfig's); `split` and the format's `options` (voc_difficult, class_list ...): as `mlic.data.registry.parse`
    takes them."""
    settings = DecodeSettings.from_config()
    if max_pixels is not None:
        settings = DecodeSettings(settings.background, max_pixels)
    report = DecodeReport()
    dataset, problems = parse(fmt, root, split=split, labels=labels, settings=settings, decode=True, workers=workers,
                              report=report, **options)
    notes = [partial_summary(dataset.labels)] if dataset is not None and dataset.labels.partial else []
    warnings = [f"warning: {p.text}" for p in problems if p.warning]
    return [p.text for p in problems if not p.warning], warnings + report.lines(), notes


def partial_summary(labels: LabelMatrix) -> str:
    """One line: verified positive / verified negative / unknown entries of partially labelled data."""
    n, c = labels.shape
    positive, known = len(labels.indices), len(labels.known_indices)
    return (f"partial labels: {positive:,} verified positive, {known - positive:,} verified negative, "
            f"{n * c - known:,} unknown entries of {n:,} images x {c:,} labels (unknown entries count in no loss "
            "or metric; data.unknown_as=negative reads them as negatives)")
