"""The run folder's JSON-lines files (metrics.jsonl, steps.jsonl): read them, and trim them back to a
checkpoint on resume, since the lines after it are written again.

A process killed (or a disk filled) in the middle of an append leaves a torn last line: readers drop it
with one warning (the lines after the checkpoint are written again anyway). A torn line anywhere else is
damage that no kill makes, and an error naming it. Trimming rewrites the file whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlic.disk import replace_text
from mlic.errors import MlicError
from mlic.logs import STDOUT, log


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of `path` as a dict ([] when there is no such file); a torn last line is dropped."""
    if not path.exists():
        return []
    lines = [(n, text) for n, text in enumerate(path.read_text(errors="replace").splitlines(), 1) if text.strip()]
    rows = []
    for n, text in lines:
        try:
            row = json.loads(text)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if n != lines[-1][0]:
                raise MlicError(f"{path}, line {n}: not a JSON object ({exc}); the file is damaged: restore it, or "
                                "delete the run's checkpoints/ to start the run over") from None
            log.warning(f"warning: {path}, line {n}: a torn last line (a process stopped while writing it), dropped",
                        extra=STDOUT)
            continue
        rows.append(row)
    return rows


def trim_jsonl(path: Path, key: str, last: int) -> list[dict[str, Any]]:
    """Keep the lines whose `key` is at most `last`; rewrites the file atomically when it exists; returns them."""
    if not path.exists():
        return []
    kept = [line for line in read_jsonl(path) if line.get(key, last + 1) <= last]
    replace_text(path, "".join(json.dumps(line) + "\n" for line in kept))
    return kept
