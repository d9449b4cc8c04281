"""A model folder (`RUN/model/`, written by `mlic.models.export.export_model`) checked before anything is built from it:
every field of its config.json that a loader reads (`mlic.load_model`, `mlic predict`, `mlic evaluate`,
`mlic export --onnx`), its weights against the architecture, and that the architecture rebuilds from the folder
alone, without the network. Every problem found goes into one line: a folder edited by hand or copied from
another project is refused before it predicts all zeros or fails deep inside torch."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mlic.config import ModelConfig, config_from_dict
from mlic.data.decode import DecodeSettings
from mlic.errors import ConfigError, MlicError, some
from mlic.models import build_model, probe
from mlic.models.backbones import find, known_models

WEIGHTS = "model.safetensors"
META = "config.json"
REBUILD = ("architecture",)  # what rebuilding the network reads
INFERENCE = ("architecture", "label_names", "thresholds", "preprocess", "config")  # predict, evaluate, ONNX
HEADS = ("report", "linear", "mldecoder")
INTERPOLATIONS = ("bilinear", "bicubic")  # what mlic's resizes do


class ModelFolderError(MlicError):
    """A model folder that cannot be used as it is: its config.json, its weights, or an architecture that would
    need the network."""


def refuse(folder: Path, problems: list[str]) -> ModelFolderError:
    text = f"model folder {folder}: {some(problems, sep='; ')}"
    return ModelFolderError(" ".join(text.split("\n")))  # one line, whatever a nested message held


def read_meta(folder: str | Path, required: tuple[str, ...] = INFERENCE) -> dict[str, Any]:
    """config.json of `folder`, with every field checked (those in `required` must be there; the others are
    checked when present); a ModelFolderError naming each problem otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise refuse(folder, ["not found (a training run writes RUN/model/)"])
    absent = [name for name in (WEIGHTS, META) if not (folder / name).is_file()]
    if absent:
        raise refuse(folder, [f"no {' and no '.join(absent)}: not an exported model (a training run writes "
                              f"RUN/model/ with {WEIGHTS} and {META})"])
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as exc:
        raise refuse(folder, [f"{META} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise refuse(folder, [f"{META} cannot be read ({exc})"]) from None
    problems = meta_problems(meta, required)
    if problems:
        raise refuse(folder, problems)
    return meta


def meta_problems(meta: Any, required: tuple[str, ...] = INFERENCE) -> list[str]:
    """What is wrong with a model folder's config.json, one phrase per problem (empty: nothing)."""
    if not isinstance(meta, dict):
        return [f"{META} holds {_kind(meta)}, not an object"]
    problems = [f"{META} has no '{key}'" for key in required if key not in meta]
    arch, num_labels, names = meta.get("architecture"), None, None
    if "architecture" in meta:
        problems += _architecture(arch)
        if isinstance(arch, dict) and _is_int(arch.get("num_labels")) and arch["num_labels"] >= 1:
            num_labels = arch["num_labels"]
    if "label_names" in meta:
        found, names = _label_names(meta["label_names"], num_labels)
        problems += found
    if "thresholds" in meta:
        problems += _thresholds(meta["thresholds"], names, num_labels)
    if "preprocess" in meta:
        problems += _preprocess(meta["preprocess"])
    if "cached" in meta and not isinstance(meta["cached"], bool):
        problems.append(f"{META} 'cached' is {meta['cached']!r}, not true or false")
    if "config" in meta:
        problems += _config(meta["config"])
    return problems


def _architecture(arch: Any) -> list[str]:
    if not isinstance(arch, dict):
        return [f"{META} 'architecture' is {_kind(arch)}, not an object"]
    problems = [f"{META} has no 'architecture.{key}'" for key in ("name", "num_labels") if key not in arch]
    name = arch.get("name")
    if "name" in arch:
        if isinstance(name, str) and name:
            problems += _rebuilds_offline(name, arch)
        else:
            problems.append(f"{META} 'architecture.name' is {name!r}, not a model name")
    if "num_labels" in arch and not (_is_int(arch["num_labels"]) and arch["num_labels"] >= 1):
        problems.append(f"{META} 'architecture.num_labels' is {arch['num_labels']!r}, not a positive whole number")
    if "head" in arch and arch["head"] not in HEADS:
        problems.append(f"{META} 'architecture.head' is {arch['head']!r}, not one of {', '.join(HEADS)}")
    if "head_batchnorm" in arch and not isinstance(arch["head_batchnorm"], bool):
        problems.append(f"{META} 'architecture.head_batchnorm' is {arch['head_batchnorm']!r}, not true or false")
    if "dropout" in arch and not (_is_number(arch["dropout"]) and 0 <= arch["dropout"] < 1):
        problems.append(f"{META} 'architecture.dropout' is {arch['dropout']!r}, not a number in [0, 1)")
    for key in ("mldecoder_groups", "mldecoder_dim"):
        if key in arch and not (_is_int(arch[key]) and arch[key] >= 1):
            problems.append(f"{META} 'architecture.{key}' is {arch[key]!r}, not a positive whole number")
    return problems


def _rebuilds_offline(name: str, arch: dict) -> list[str]:
    """Whether `build_model(exported=arch)` builds `name` from the folder's own record, as its adapter judges
    (`Adapter.record_problems`): the backbones whose definition lives on the hub (timm's `hf-hub:` names, a
    Hugging Face config not recorded, remote code) are refused, since rebuilding them would fetch it, or find
    whatever the cache holds."""
    adapter, source = find(name)
    if adapter is None:
        return [f"{META} 'architecture.name' {name!r} is not a model mlic knows ({some(known_models(), first=10)})"]
    if not source:
        return [f"{META} 'architecture.name' {name!r} names no model after '{adapter.prefix}'"]
    return [f"{META} {problem}" for problem in adapter.record_problems(source, arch)]


def _label_names(value: Any, num_labels: int | None) -> tuple[list[str], list[str] | None]:
    """(problems, the names when they are a usable list of strings)."""
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        return [f"{META} 'label_names' is {_short(value)}, not a list of label names (strings)"], None
    problems = []
    if not value:
        problems.append(f"{META} 'label_names' is empty")
    repeated = [name for name, count in Counter(value).items() if count > 1]
    if repeated:
        problems.append(f"{META} 'label_names' repeats {some(repeated)}")
    if num_labels is not None and len(value) != num_labels:
        problems.append(f"{META} 'label_names' has {len(value)} names for the model's {num_labels} outputs "
                        "(architecture.num_labels)")
    return problems, value


def _thresholds(value: Any, names: list[str] | None, num_labels: int | None) -> list[str]:
    if not isinstance(value, list):
        return [f"{META} 'thresholds' is {_short(value)}, not a list of numbers in [0, 1]"]
    problems = []
    count = len(names) if names is not None else num_labels
    if count is not None and len(value) != count:
        problems.append(f"{META} 'thresholds' has {len(value)} value{'s' * (len(value) != 1)} for {count} labels")
    usable_names = names if names is not None and len(names) == len(value) else None

    def label(i: int) -> str:
        return usable_names[i] if usable_names else f"#{i}"

    wrong_type = [f"{label(i)}={x!r}" for i, x in enumerate(value) if not _is_number(x)]
    if wrong_type:
        problems.append(f"{META} 'thresholds' has values that are not numbers: {some(wrong_type)}")
    outside = [f"{label(i)}={x}" for i, x in enumerate(value) if _is_number(x) and not 0 <= x <= 1]  # NaN too
    if outside:
        problems.append(f"{META} 'thresholds' outside [0, 1]: {some(outside)} (a label is predicted where its "
                        "probability >= its threshold)")
    return problems


def _preprocess(pre: Any) -> list[str]:
    if not isinstance(pre, dict):
        return [f"{META} 'preprocess' is {_kind(pre)}, not an object"]
    problems = [f"{META} has no 'preprocess.{key}'" for key in ("size", "mean", "std") if key not in pre]
    if "size" in pre and not (_is_int(pre["size"]) and pre["size"] >= 1):
        problems.append(f"{META} 'preprocess.size' is {pre['size']!r}, not a positive whole number of pixels")
    for key, lowest in (("mean", -math.inf), ("std", 0.0)):
        value = pre.get(key)
        if key in pre and not (isinstance(value, list) and len(value) == 3
                               and all(_is_number(x) and math.isfinite(x) and x > lowest for x in value)):
            what = "3 finite numbers, one per RGB channel" if key == "mean" else "3 positive numbers, one per RGB " \
                "channel (images are divided by them)"
            problems.append(f"{META} 'preprocess.{key}' is {_short(value)}, not {what}")
    if "interpolation" in pre and pre["interpolation"] not in INTERPOLATIONS:
        problems.append(f"{META} 'preprocess.interpolation' is {pre['interpolation']!r}, not one of "
                        f"{', '.join(INTERPOLATIONS)}")
    if "crop_pct" in pre and not (_is_number(pre["crop_pct"]) and 0 < pre["crop_pct"] <= 1):
        problems.append(f"{META} 'preprocess.crop_pct' is {pre['crop_pct']!r}, not a share in (0, 1]")
    return problems


def _config(doc: Any) -> list[str]:
    """The run's training config, as the loaders rebuild it (decode settings, cache size)."""
    if not isinstance(doc, dict):
        return [f"{META} 'config' is {_kind(doc)}, not the run's config (an object)"]
    try:
        cfg = config_from_dict(doc)
        DecodeSettings.from_config(cfg.data)
    except ConfigError as exc:
        return [f"{META} 'config' (the run's training config): {exc}"]
    if not (_is_int(cfg.data.cache_size) and cfg.data.cache_size >= 1):
        return [f"{META} 'config.data.cache_size' is {cfg.data.cache_size!r}, not a positive whole number of pixels"]
    return []


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(folder / WEIGHTS))
    except Exception as exc:  # SafetensorError (truncated, not safetensors), OSError: the file cannot serve
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise refuse(folder, [f"{WEIGHTS} cannot be read as safetensors ({reason})"]) from None


def check_weights(folder: Path, arch: dict, state: dict[str, torch.Tensor], built: dict[str, torch.Tensor]) -> None:
    """`state` (the file) must hold exactly the tensors of the model `arch` builds (`built`), shape for shape."""
    reshaped = [f"{k} {list(state[k].shape)} (built: {list(v.shape)})" for k, v in built.items()
                if k in state and state[k].shape != v.shape]
    missing = [k for k in built if k not in state]
    unknown = [k for k in state if k not in built]
    parts = [f"{len(reshaped)} of another shape: {some(reshaped, first=3)}" if reshaped else "",
             f"{len(missing)} missing: {some(missing, first=3)}" if missing else "",
             f"{len(unknown)} the model does not have: {some(unknown, first=3)}" if unknown else ""]
    parts = [p for p in parts if p]
    if parts:
        raise refuse(folder, [f"{WEIGHTS} does not fit the architecture in {META} ({arch['name']}, "
                              f"{arch['num_labels']} outputs): tensors {some(parts)}"])


def rebuild(folder: Path, meta: dict) -> torch.nn.Module:
    """The network `meta['architecture']` describes, with the folder's weights, in eval mode."""
    arch = meta["architecture"]
    fields = ("head", "head_batchnorm", "dropout", "mldecoder_groups", "mldecoder_dim")  # head: recorded since 0.2
    cfg = ModelConfig(name=arch["name"], pretrained=False, **{k: arch[k] for k in fields if k in arch})
    try:
        model, _ = build_model(cfg, arch["num_labels"], exported=arch)
    except MlicError as exc:
        raise refuse(folder, [f"architecture {arch['name']} does not rebuild: {exc}"]) from None
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:  # a record edited by hand
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise refuse(folder, [f"architecture {arch['name']} does not rebuild from {META} ({reason})"]) from None
    state = read_weights(folder)
    check_weights(folder, arch, state, model.state_dict())
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # same names and shapes, yet refused (e.g. a dtype torch cannot copy)
        raise refuse(folder, [f"{WEIGHTS} does not load into {arch['name']}: {str(exc).splitlines()[0]}"]) from None
    size = meta.get("preprocess", {}).get("size")
    if size is not None and (problem := probe(model, size)) is not None:
        raise refuse(folder, [f"{arch['name']} cannot take the {size}x{size} images of {META} 'preprocess.size' "
                              f"({problem})"])
    return model.eval()


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _kind(x: Any) -> str:
    """A JSON value's type, as a reader of config.json calls it."""
    if x is None:
        return "null"
    kinds = {bool: "true/false", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(x), "a number" if _is_number(x) else type(x).__name__)


def _short(x: Any, width: int = 60) -> str:
    text = json.dumps(x) if isinstance(x, list | dict | str | int | float | bool) or x is None else repr(x)
    return text if len(text) <= width else text[:width - 3] + "..."
