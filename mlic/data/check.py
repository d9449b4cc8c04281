"""`mlic check-data`: every problem of a dataset in one pass, one line each, naming the file (and line).

The problems are those of the format's parser (the one training uses) plus a decode of every image,
so a dataset that passes here is one training reads, and each line is the text training would raise.
The decode also says what it had to convert (16-bit, transparency, EXIF orientation, ICC profile, a
first frame of many): warnings, one line per kind, not problems.
"""

from __future__ import annotations

from collections.abc import Collection

from mlic.config import DataConfig
from mlic.data.decode import DecodeReport, DecodeSettings
from mlic.data.formats import parse


def check_data(root, fmt: str = "helsinki", labels: Collection[str] | None = None, workers: int = 4,
               image_column: str = "image", label_column: str = "labels", split: str = "train",
               max_pixels: int | None = None) -> tuple[list[str], list[str]]:
    """(problem lines, conversion warning lines). `max_pixels`: data.max_pixels (default: DataConfig's)."""
    cfg_data = DataConfig() if max_pixels is None else DataConfig(max_pixels=max_pixels)
    report = DecodeReport()
    _, problems = parse(fmt, root, image_column=image_column, label_column=label_column, split=split,
                        labels=labels, settings=DecodeSettings.from_config(cfg_data), decode=True, workers=workers,
                        report=report)
    return [p.text for p in problems], report.lines()
