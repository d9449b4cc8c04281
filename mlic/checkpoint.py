"""Resumable checkpoints: accelerate `save_state` folders, written under a temporary name and renamed.

A folder named `epoch{E}-step{S}` is complete by construction (the rename is the last thing done), so
the newest such folder is always safe to resume from; `.tmp-*` leftovers of a killed save are ignored
and cleaned up.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

NAME = re.compile(r"^epoch(\d+)-step(\d+)$")


class TrainingState:
    """Progress that accelerate does not track itself, registered for checkpointing.

    `partial` holds the training outputs of an epoch interrupted by a mid-epoch checkpoint (gathered
    on the main process), so the resumed epoch reports metrics over the whole epoch.
    """

    def __init__(self):
        self.epoch = 1  # the epoch in progress (1-based)
        self.step_in_epoch = 0  # optimizer steps done in that epoch
        self.global_step = 0
        self.best: float | None = None
        self.partial: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best": self.best, "partial": self.partial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from accelerate.state import PartialState

        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), state["best"]
        # Only the main process keeps the gathered partial outputs: the others would add duplicates.
        self.partial = state.get("partial", {}) if PartialState().is_main_process else {}


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return [p for *_, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(accelerator, folder: Path, epoch: int, global_step: int, keep: int) -> Path:
    """Every rank calls this. Returns the final folder."""
    final = folder / f"epoch{epoch:04d}-step{global_step:08d}"
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in complete_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
