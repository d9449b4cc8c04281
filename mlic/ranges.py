"""What a config value may be. Each config section declares its keys' ranges beside them (`RANGES`) and its
cross-key rules (`combinations()`); `check_config` runs them all when a config is loaded, before anything
else, and reports every problem in one line. A section added later (a format's keys, a head's) declares
its own the same way."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mlic.errors import ConfigError, some


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (either may be open or absent). `why` ends the message."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str):  # a word the key's type allows besides numbers ("auto")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.text}{self.why}" if below or above else None

    @property
    def text(self) -> str:
        if self.high is None:
            return f"more than {self.low}" if self.low_open else f"at least {self.low}"
        if self.low is None:
            return f"less than {self.high}" if self.high_open else f"at most {self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def at_least(low: float, why: str = "") -> Range:
    return Range(low=low, why=why)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


PROBABILITY = between(0, 1)
SEED = between(0, 2**32 - 1)  # numpy's legacy seeding (set_seed) takes no more


@dataclass(frozen=True)
class Text:
    """A name or path: something other than blanks."""

    def problem(self, value: Any) -> str | None:
        return "is empty" if not value.strip() else None


@dataclass(frozen=True)
class Items:
    """A list: how many items (`length`), each item's rule, in ascending order, without repeats."""

    item: Range | Text | None = None
    length: int | None = None
    ascending: bool = False
    unique: bool = False
    at_least_one: bool = False

    def problem(self, value: list) -> str | None:
        if self.length is not None and len(value) != self.length:
            return f"must have {self.length} values, not {len(value)}"
        if self.at_least_one and not value:
            return "must name at least one"
        if self.item is not None:
            for i, one in enumerate(value):
                if (problem := self.item.problem(one)) is not None:
                    return f"has item {i} = {one!r}, which {problem}"
        if self.ascending and list(value) != sorted(value):
            return "must be in ascending order"
        if self.unique and len(set(value)) != len(value):
            return f"repeats {some(sorted(v for v, n in Counter(value).items() if n > 1))}"
        return None


Rule = Range | Text | Items


def value_problems(key: str, value: Any, rule: Rule | None) -> list[str]:
    """The problems of one value: every float finite, no NUL in any text (no file can be named so), then the
    key's declared rule."""
    if value is None:
        return []
    problems = []
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        problems.append("is not a finite number" if not isinstance(value, list) else "holds a non-finite number")
    if any(isinstance(v, str) and "\0" in v for v in values):
        problems.append("holds a NUL character")
    if not problems and rule is not None and (problem := rule.problem(value)) is not None:
        problems.append(problem)
    return [f"config key '{key}': {shown(value)} {p}" for p in problems]


def shown(value: Any) -> str:
    """A value for a message: a long list as its first few items and how many more."""
    if isinstance(value, list) and len(value) > 5:
        return f"[{some(map(repr, value))}]"
    return repr(value)


def section_problems(section: Any, prefix: str) -> list[str]:
    rules: dict[str, Rule] = getattr(section, "RANGES", {})
    problems = []
    for f in dataclasses.fields(section):
        problems += value_problems(f"{prefix}{f.name}", getattr(section, f.name), rules.get(f.name))
    if not problems and hasattr(section, "combinations"):  # combinations assume each value in range
        problems += section.combinations()
    return problems


def check_config(cfg: Any) -> None:
    """Every section's ranges and combinations; one ConfigError naming every problem (the first few)."""
    problems = []
    for f in dataclasses.fields(cfg):
        problems += section_problems(getattr(cfg, f.name), f"{f.name}.")
    if problems:
        raise ConfigError(some(problems, first=3, sep="; "))


def undeclared(cfg: Any) -> list[str]:
    """Number keys no section gives a range (a test keeps this empty, so a new key declares one)."""
    missing = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        hints = typing.get_type_hints(type(section))
        for key in (x.name for x in dataclasses.fields(section)):
            if _numeric(hints[key]) and key not in getattr(section, "RANGES", {}):
                missing.append(f"{f.name}.{key}")
    return missing


def _numeric(hint: Any) -> bool:
    if hint in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(hint) if arg is not type(None))
