"""The run folder's JSON-lines files (metrics.jsonl, steps.jsonl): read them, and trim them back to a
checkpoint on resume, since the lines after it are written again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of `path` as a dict; [] when there is no such file."""
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def trim_jsonl(path: Path, key: str, last: int) -> list[dict[str, Any]]:
    """Keep the lines whose `key` is at most `last` (rewriting the file when it exists); returns them."""
    if not path.exists():
        return []
    kept = [line for line in read_jsonl(path) if line[key] <= last]
    path.write_text("".join(json.dumps(line) + "\n" for line in kept))
    return kept
