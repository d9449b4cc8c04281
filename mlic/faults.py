"""Failpoints for the reliability tests: `MLIC_FAULT=point:n[,point:n]` makes the n-th pass through a
named point fail (`kill`: SIGKILL this process, as a dead node would; `nan`: a non-finite loss;
`term-<point>`: SIGTERM, a stop request;
`fill-<writer>`: the disk fills up right before that writer writes, as when another job fills a shared disk).
Without the variable every call is a no-op. Kill points: step, eval, metrics, checkpoint, publish, export;
nan; fill points: the writers of `mlic.disk.writing` (cache, config, figures, tensorboard, metrics, steps,
trackers, export, checkpoint)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

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
    """`point`: SIGKILL here; `term-<point>`: a stop request (SIGTERM) arrives here."""
    if hit(point):
        os.kill(os.getpid(), signal.SIGKILL)
    if hit(f"term-{point}"):
        os.kill(os.getpid(), signal.SIGTERM)


def fill_point(point: str, folder: Path) -> None:
    """On the armed pass through `fill-<point>`: fill `folder`'s file system with a ballast file
    (`.ballast-<pid>`, left for the test to remove, as a user frees space)."""
    if not hit(f"fill-{point}"):
        return
    fd = os.open(folder / f".ballast-{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):  # down to the last byte
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
        os.fsync(fd)
    finally:
        os.close(fd)
