"""Every backbone library by the model names it builds: the registry that building, the optimizer's layer decay,
the model folder's checks and the `train` command read.

A library is one module of this package declaring one `Adapter` (the contract: `mlic.models.backbones.adapter`).
Adding one is that module plus one line in `_BUILT_IN` below; `register` adds one at run time (the tests' toy
adapter, an adapter of your own package). docs/EXTENDING.md walks through it.
"""

from __future__ import annotations

from torch import nn

from mlic.errors import ConfigError
from mlic.models.backbones import cnn, hf, timm, torchvision, vit
from mlic.models.backbones.adapter import Adapter, Backbone, BackboneClassifier, Preprocess

__all__ = ["ADAPTERS", "Adapter", "Backbone", "BackboneClassifier", "Preprocess", "adapter_for", "by_prefix", "find",
           "known_models", "layer_ids", "register"]

ADAPTERS: dict[str, Adapter] = {}  # by the adapter's name, in registration order


def register(adapter: Adapter) -> Adapter:
    """Add an adapter under its name; a name, or a model name or prefix that another adapter builds, is refused
    (each model name means one backbone)."""
    if not adapter.name or not (adapter.names or adapter.prefix) or adapter.prefix[-1:] not in ("", "/"):
        raise ValueError(f"adapter {adapter.name!r}: needs a name, and model names or a prefix ending in '/'")
    for other in ADAPTERS.values():
        same_models = set(adapter.names) & set(other.names) or (adapter.prefix and adapter.prefix == other.prefix)
        if other is not adapter and (other.name == adapter.name or same_models):
            raise ValueError(f"adapter {adapter.name!r}: its name or model names are {other.name!r}'s already")
    ADAPTERS[adapter.name] = adapter
    return adapter


_BUILT_IN = (cnn.ADAPTER, torchvision.ADAPTER, vit.ADAPTER, timm.ADAPTER, hf.ADAPTER)
for _adapter in _BUILT_IN:
    register(_adapter)


def known_models() -> list[str]:
    """The model names, for messages: each fixed name, then each prefix with what follows it."""
    fixed = [n for a in ADAPTERS.values() for n in a.names]
    return fixed + [a.prefix + a.source for a in ADAPTERS.values() if a.prefix]


def find(model: str) -> tuple[Adapter | None, str]:
    """The adapter that builds `model` (a `model.name`) and its source: the name itself, or what follows the
    prefix (empty for the prefix alone); (None, "") for a name no adapter builds."""
    fixed = next((a for a in ADAPTERS.values() if model in a.names), None)
    if fixed is not None:
        return fixed, model
    prefixed = next((a for a in ADAPTERS.values() if a.prefix and model.startswith(a.prefix)), None)
    return (prefixed, model.removeprefix(prefixed.prefix)) if prefixed is not None else (None, "")


def adapter_for(model: str) -> tuple[Adapter, str]:
    """`find`, or a ConfigError naming the key."""
    adapter, source = find(model)
    if adapter is None:
        raise ConfigError(f"config key 'model.name': unknown model {model!r}; known: {', '.join(known_models())}")
    if not source:
        raise ConfigError(f"config key 'model.name': {model!r} names no model after '{adapter.prefix}'")
    return adapter, source


def by_prefix(model: str) -> bool:
    """Whether `model` is a name under a library's prefix (timm/..., hf/...), not one of the fixed names."""
    adapter, source = find(model)
    return adapter is not None and source != model


def layer_ids(backbone: nn.Module, adapter: str, skip: str = "") -> tuple[dict[str, int], int]:
    """Each backbone parameter's depth (0 = the input end) and the number of depths, for layer-wise learning-rate
    decay, as the adapter named `adapter` groups them. Parameters under `skip` (a head inside the model) are
    left out."""
    names = [n for n, _ in backbone.named_parameters() if not (skip and n.startswith(skip))]
    ids = ADAPTERS[adapter].layer_ids(backbone, names)
    ranks = {v: i for i, v in enumerate(sorted({ids[n] for n in names}))}  # compact: 0 .. depths - 1
    return {n: ranks[ids[n]] for n in names}, len(ranks)
