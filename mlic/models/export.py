"""The exported model (`RUN/model/`): safetensors weights, labels, thresholds, preprocessing and the
architecture, loadable without pickle and without network access."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mlic import faults
from mlic.disk import fsync_path, tensor_bytes, writing
from mlic.errors import MlicError
from mlic.models.model_folder import INFERENCE, META, REBUILD, WEIGHTS, read_meta, rebuild

__all__ = ["INFERENCE", "META", "WEIGHTS", "export_model", "load_exported", "recover_export"]


def export_model(state_dict: dict[str, torch.Tensor], out: Path, meta: dict[str, Any]) -> None:
    """Write to a temporary folder (fsynced), then swap it in: a reader never sees half a model, and a full
    disk leaves the previous export in place (`DiskFull`)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    needs = tensor_bytes(tensors.values())
    try:
        with writing(f"the model export {out}", out.parent, needs, point="export"):
            tmp.mkdir(parents=True)
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
            (tmp / META).write_text(json.dumps(meta, indent=2))
            for path in (tmp / WEIGHTS, tmp / META, tmp):
                fsync_path(path)
    except MlicError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    faults.kill_point("export")  # a kill here leaves model.old and model.tmp: recover_export mends it
    tmp.rename(out)
    fsync_path(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_export(out: Path) -> None:
    """After a kill in the middle of `export_model`: put the complete copy back in place."""
    old, tmp = out.with_name(out.name + ".old"), out.with_name(out.name + ".tmp")
    if not out.exists():
        for candidate in (tmp, old):  # tmp is newer; it is complete once the .old swap has begun
            if (candidate / WEIGHTS).is_file() and (candidate / META).is_file() and (candidate != tmp or old.exists()):
                candidate.rename(out)
                break
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def load_exported(model_dir: str | Path, required: tuple[str, ...] = REBUILD) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in eval mode and its metadata (label_names, thresholds, preprocess, architecture), after
    `mlic.models.model_folder` checked config.json (the fields in `required` must be there: `INFERENCE` for the
    commands that predict), the weights against the architecture, and that nothing needs the network."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir, required)
    return rebuild(model_dir, meta), meta
