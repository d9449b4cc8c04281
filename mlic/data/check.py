"""`mlic check-data`: every problem of a dataset in one pass, one line each, naming the file (and line).

The problems are those of the format's parser (the one training uses) plus a decode of every image,
so a dataset that passes here is one training reads, and each line is the text training would raise.
"""

from __future__ import annotations

from collections.abc import Collection

from mlic.data.formats import parse


def check_data(root, fmt: str = "helsinki", labels: Collection[str] | None = None, workers: int = 4,
               image_column: str = "image", label_column: str = "labels", split: str = "train") -> list[str]:
    _, problems = parse(fmt, root, image_column=image_column, label_column=label_column, split=split,
                        labels=labels, decode=True, workers=workers)
    return [p.text for p in problems]
