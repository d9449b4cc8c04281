"""Every dataset format by name: the registry that the config, check-data, every command's --format and the
loader (`mlic.data.registry`) read.

A format is one module of this package declaring one `Format` (its name, its parser, its options; the type:
`mlic.data.datasets`). Adding one is that module plus one line in `_BUILT_IN` below; `register` adds one at
run time (the tests' toy format, a format of your own package). docs/EXTENDING.md walks through it.
"""

from __future__ import annotations

from typing import Any

from mlic.data.datasets import Format, Option
from mlic.data.formats import coco, csv, helsinki, hf, openimages, voc
from mlic.data.formats.csv import parse_csv  # noqa: F401 - the parsers' import paths before the registry
from mlic.data.formats.helsinki import parse_helsinki  # noqa: F401
from mlic.data.formats.hf import parse_hf  # noqa: F401
from mlic.errors import ConfigError, some

FORMATS: dict[str, Format] = {}  # by name, in registration order (check-data's --format choices)
# The built-in formats' options that DataConfig holds as flat keys (data.voc_difficult ...); any other option is
# data.options.<key>.
FLAT_KEYS = ("image_column", "label_column", "hf_split", "voc_difficult", "class_list")
# check-data's own flags (and data.root): an option of that name would shadow one
RESERVED = ("root", "format", "labels", "split", "max_pixels", "strict", "workers")


def register(fmt: Format) -> Format:
    """Add a format under its name. Refused: another format of that name, an option named like one of
    check-data's own flags, or an option key another format declares otherwise (one flag serves both)."""
    if FORMATS.get(fmt.name, fmt) is not fmt:
        raise ValueError(f"a dataset format named {fmt.name!r} is registered already")
    for option in fmt.options:
        if option.key in RESERVED:
            raise ValueError(f"format {fmt.name!r}: option {option.key!r} is one of check-data's own flags")
        other = next((o for f in FORMATS.values() if f is not fmt for o in f.options if o.key == option.key), None)
        if other is not None and (other.choices, other.default) != (option.choices, option.default):
            raise ValueError(f"format {fmt.name!r}: option {option.key!r} is declared otherwise by another format")
    FORMATS[fmt.name] = fmt
    return fmt


_BUILT_IN = (helsinki.FORMAT, csv.FORMAT, hf.FORMAT, coco.FORMAT, voc.FORMAT, openimages.FORMAT)
for _fmt in _BUILT_IN:
    register(_fmt)


def format_named(name: str) -> Format:
    if name not in FORMATS:
        raise ConfigError(f"config key 'data.format': {name!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[name]


def all_options() -> list[Option]:
    """Every registered format's options, each key once: check-data's flags."""
    seen: dict[str, Option] = {}
    for fmt in FORMATS.values():
        for option in fmt.options:
            seen.setdefault(option.key, option)
    return list(seen.values())


def option_values(fmt: Format, cfg_data) -> dict[str, Any]:
    """The values of the format's options in a DataConfig: `data.<key>` for FLAT_KEYS, else `data.options.<key>`,
    else the option's default."""
    extra = getattr(cfg_data, "options", None) or {}
    return {o.key: getattr(cfg_data, o.key) if o.key in FLAT_KEYS else extra.get(o.key, o.default)
            for o in fmt.options}


def option_problems(cfg_data) -> list[str]:
    """DataConfig's format-dependent rules: a known format, `data.options` naming only its options, each option's
    value in range."""
    if cfg_data.format not in FORMATS:
        return [f"config key 'data.format': {cfg_data.format!r} is not one of {', '.join(FORMATS)}"]
    fmt = FORMATS[cfg_data.format]
    own = {o.key for o in fmt.options if o.key not in FLAT_KEYS}
    problems = [f"config key 'data.options.{key}': not an option of data.format={fmt.name} (its own: "
                f"{some(sorted(own)) if own else 'none'})" for key in cfg_data.options if key not in own]
    for key, value in option_values(fmt, cfg_data).items():
        if (problem := fmt.option(key).problem(value)) is not None:
            where = f"data.{key}" if key in FLAT_KEYS else f"data.options.{key}"
            problems.append(f"config key '{where}': {value!r} {problem}")
    return problems
