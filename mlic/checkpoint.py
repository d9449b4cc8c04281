"""Resumable checkpoints: accelerate `save_state` folders, written under a temporary name and renamed.

A folder named `epoch{E}-step{S}` is complete by construction (the rename is the last thing done), so
the newest such folder is always safe to resume from; `.tmp-*` leftovers of a killed save are ignored
and cleaned up. mlic's own state (progress, sampler, what the run is) is JSON plus safetensors beside
accelerate's files, so resuming never unpickles anything of ours.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mlic import faults
from mlic.errors import ConfigError

NAME = re.compile(r"^epoch(\d+)-step(\d+)$")
STATE = "mlic_state.json"
PARTIAL = "partial_outputs.safetensors"


class TrainingState:
    """Progress that accelerate does not track itself.

    `partial` holds the training outputs of an epoch interrupted by a mid-epoch checkpoint (gathered
    on the main process), so the resumed epoch reports metrics over the whole epoch.
    """

    def __init__(self):
        self.epoch = 1  # the epoch in progress (1-based)
        self.step_in_epoch = 0  # optimizer steps done in that epoch
        self.global_step = 0
        self.best: float | None = None
        self.skipped_steps = 0
        self.partial: dict[str, torch.Tensor] = {}

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best": self.best, "skipped_steps": self.skipped_steps}

    def load_json(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), state["best"]
        self.skipped_steps = int(state.get("skipped_steps", 0))


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return [p for *_, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(accelerator, folder: Path, state: TrainingState, sampler, identity: dict, keep: int) -> Path:
    """Every rank calls this. `identity` (model, labels) is checked on resume. Returns the final folder."""
    epoch = state.epoch if state.step_in_epoch else state.epoch - 1  # the epoch the last step belongs to
    final = folder / f"epoch{epoch:04d}-step{state.global_step:08d}"
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        doc = {"training": state.to_json(), "sampler": sampler.state_dict(), "identity": identity}
        (tmp / STATE).write_text(json.dumps(doc, indent=1))
        if state.partial:
            save_file({k: v.contiguous() for k, v in state.partial.items()}, str(tmp / PARTIAL))
    accelerator.wait_for_everyone()
    faults.kill_point("checkpoint")  # a kill here leaves only a .tmp- folder: never chosen for resume
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in complete_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, state: TrainingState, sampler, identity: dict) -> None:
    """Refuse a checkpoint of another model or label set (before loading any weights), then restore."""
    doc = json.loads((path / STATE).read_text())
    for key, value in identity.items():
        if doc["identity"].get(key) != value:
            raise ConfigError(
                f"checkpoint {path} is for {key}={doc['identity'].get(key)!r}, this run has {key}={value!r}; "
                "use another run.output_dir, or delete its checkpoints/ to start over"
            )
    accelerator.load_state(str(path))
    state.load_json(doc["training"])
    sampler.load_state_dict(doc["sampler"])
    # Only the main process keeps the gathered partial outputs: the others would add duplicates.
    if accelerator.is_main_process and (path / PARTIAL).exists():
        state.partial = load_file(str(path / PARTIAL))
