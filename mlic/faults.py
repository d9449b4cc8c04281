"""Failpoints for the reliability tests: `MLIC_FAULT=point:n[,point:n]` makes the n-th pass through a
named point fail (`kill`: SIGKILL this process, as a dead node would; `nan`: a non-finite loss).
Without the variable every call is a no-op. Points: step, eval, metrics, checkpoint, publish, export, nan."""

from __future__ import annotations

import os
import signal
from collections import Counter

_counts: Counter[str] = Counter()
_spec = ""


def _armed() -> dict[str, int]:
    global _spec
    spec = os.environ.get("MLIC_FAULT", "")
    if spec != _spec:  # re-armed (tests change it within one process): count afresh
        _spec = spec
        _counts.clear()
    return {name: int(n) for name, n in (item.split(":") for item in spec.split(",") if item)}


def hit(point: str) -> bool:
    """True on the armed pass through `point` (each process counts its own passes)."""
    armed = _armed()
    if point not in armed:
        return False
    _counts[point] += 1
    return _counts[point] == armed[point]


def kill_point(point: str) -> None:
    if hit(point):
        os.kill(os.getpid(), signal.SIGKILL)
