"""The project's own error types: each says what is wrong, where, and what to do."""

from __future__ import annotations

from collections.abc import Iterable


class MlicError(Exception):
    """Base class: the CLI prints these as one line and exits 1, without a traceback."""


class ConfigError(MlicError):
    """A config key, value or file is wrong."""


class DataError(MlicError):
    """A dataset file, annotation or image is wrong."""


class DivergedError(MlicError):
    """The training diverged: a non-finite loss, gradient or output. Every rank sees the same gathered values."""

    same_on_every_rank = True


def some(items: Iterable[object], first: int = 5, sep: str = ", ") -> str:
    """The first few items of a list for a message, then how many more: a line about 10,000 labels stays a
    line ("a, b, c, d, e and 9,995 more")."""
    items = list(items)
    shown = sep.join(map(str, items[:first]))
    return shown if len(items) <= first else f"{shown} and {len(items) - first:,} more"
