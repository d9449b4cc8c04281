"""What a checkpoint holds, in one place: the run's progress beside accelerate's own state.

A checkpoint is an accelerate `save_state` folder (model, optimizer, scheduler, scaler, RNG of every
rank: one format for DDP and DeepSpeed) plus `mlic_state.json` with `RunState` and the run's
identity. It is written under `.tmp-NAME` and renamed to `epoch{E}-step{S}` last, so a folder with
such a name is complete by construction and the newest one is always safe to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlic import faults
from mlic.errors import ConfigError, MlicError

STATE_FILE = "mlic_state.json"
FORMAT = 2  # 1: mlic 0.1.0 (a "training" section, gathered partial outputs, no world size)


@dataclass
class RunState:
    epoch: int = 1  # the epoch in progress (1-based)
    step_in_epoch: int = 0  # optimizer steps done in that epoch
    global_step: int = 0
    samples_in_epoch: int = 0  # position in the epoch's global sample order: the same at any world size
    world_size: int = 1  # the world size that trained up to here
    best: float | None = None  # the selection metric's best value, stored higher-is-better
    skipped_steps: int = 0  # non-finite steps skipped (train.skip_nonfinite)
    sampler: dict[str, Any] = field(default_factory=dict)
    ema_updates: int = 0  # updates of the EMA of the weights (its tensors: a registered accelerate object)
    # Reserved for features that add state, so that the format stays the same when they land:
    known_mask: bool = False  # the targets carried a known-label mask (partial labels)

    def step_done(self, samples: int) -> None:
        self.step_in_epoch += 1
        self.global_step += 1
        self.samples_in_epoch += samples

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = self.samples_in_epoch = 0

    def improved(self, value: float, lower_is_better: bool) -> bool:
        """Records `value` if it is the best so far."""
        value = -value if lower_is_better else value
        if self.best is not None and value <= self.best:
            return False
        self.best = value
        return True

    def batches_to_skip(self, batch_size: int, grad_accum: int, world_size: int) -> int | None:
        """Per-rank batches of the epoch already trained on at `world_size`; None when the position
        is not on a step boundary of the new world size (the epoch must then restart)."""
        per_step = batch_size * grad_accum * world_size
        if self.samples_in_epoch % per_step:
            return None
        return self.samples_in_epoch // (batch_size * world_size)

    def save(self, accelerator, folder: Path, identity: dict[str, Any], keep: int) -> Path:
        """Every rank calls this together. Returns the checkpoint folder."""
        epoch = self.epoch if self.step_in_epoch else self.epoch - 1  # the epoch the last step belongs to
        final = folder / f"epoch{epoch:04d}-step{self.global_step:08d}"
        tmp = folder / f".tmp-{final.name}"
        if accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            if accelerator.is_main_process:
                doc = {"format": FORMAT, "run": dataclasses.asdict(self), "identity": identity}
                (tmp / STATE_FILE).write_text(json.dumps(doc, indent=1))
        except OSError as exc:  # disk full, permissions: the previous checkpoints stay the newest
            raise MlicError(f"writing checkpoint {final.name} into {folder} failed: {exc}") from exc
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

    @classmethod
    def resume(cls, accelerator, folder: Path, identity: dict[str, Any]) -> tuple[RunState, Path] | None:
        """The newest complete checkpoint's state, after restoring accelerate's objects from it; None
        when there is none. A checkpoint of another model or label set is refused before any load."""
        path = latest_checkpoint(folder)
        if path is None:
            return None
        doc = json.loads((path / STATE_FILE).read_text())
        state = cls.from_json(doc, path)
        for key in identity.keys() | doc["identity"].keys():  # a key on one side only is a mismatch too
            value = identity.get(key)
            if doc["identity"].get(key) != value:
                raise ConfigError(
                    f"checkpoint {path} is for {key}={doc['identity'].get(key)!r}, this run has {key}={value!r}; "
                    "use another run.output_dir, or delete its checkpoints/ to start over"
                )
        accelerator.load_state(str(path))
        return state, path

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path) -> RunState:
        if doc.get("format", 1) != FORMAT:
            raise ConfigError(f"checkpoint {path} was written by an older mlic (format {doc.get('format', 1)}, this "
                              f"one reads {FORMAT}); delete its checkpoints/ to start over, or finish it with that mlic")
        return cls(**{k: v for k, v in doc["run"].items() if k in _FIELDS})


_FIELDS = {f.name for f in dataclasses.fields(RunState)}


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        epoch, _, step = path.name.removeprefix("epoch").partition("-step")
        if path.name.startswith("epoch") and epoch.isdigit() and step.isdigit():
            found.append((int(step), int(epoch), path))
    return [p for *_, p in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None
