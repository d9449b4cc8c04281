"""Resumable checkpoints: accelerate `save_state` folders, written under a temporary name and renamed.

A folder named `epoch{E}-step{S}` is complete by construction (the rename is the last thing done), so
the newest such folder is always safe to resume from; `.tmp-*` leftovers of a killed save are ignored
and cleaned up. mlic's own state (progress, sampler, what the run is) is JSON plus safetensors beside
accelerate's files, so resuming never unpickles anything of ours.

Writing is in the background by default (`train.async_save`): training waits only while the state is
copied to host memory, then goes on while a thread writes the same files `save_state` would write
(what `load_state` reads) and renames the folder. One write is in flight at most. DeepSpeed, and
anything else whose state accelerate saves in its own way, is saved synchronously by `save_state`.
"""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import (
    OPTIMIZER_NAME,
    RNG_STATE_NAME,
    SAFE_WEIGHTS_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    DistributedType,
    save,
)
from safetensors.torch import load_file, save_file

from mlic import faults
from mlic.errors import ConfigError, MlicError

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


def _to_host(obj: Any) -> Any:
    """A copy of a (nested) state dict whose tensors live in host memory, safe from later steps."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _to_host(v)) for k, v in obj.items())  # keeps OrderedDict: accelerate checks it
    if isinstance(obj, list | tuple):
        return type(obj)(_to_host(v) for v in obj)
    return copy.deepcopy(obj)


def rng_states(accelerator) -> dict[str, Any]:
    """What accelerate's `save_state` stores in `random_states_{rank}.pkl` (CPU and CUDA devices)."""
    states = {"step": accelerator.step, "random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
              "torch_manual_seed": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda_manual_seed"] = torch.cuda.get_rng_state_all()
    return states


class CheckpointWriter:
    """Saves checkpoints into `folder`; every rank makes one and calls `save` together.

    `identity` (model, labels) is checked on resume. In the background mode the main process's thread
    writes model, optimizer, scheduler and scaler state (the files of accelerate's `save_state`, by its
    own `save`), while each rank writes its RNG file before `save` returns."""

    def __init__(self, accelerator, model, optimizer, scheduler, folder: Path, identity: dict, keep: int,
                 background: bool = True):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.folder, self.identity, self.keep = Path(folder), identity, keep
        self.background = background and self.can_write_itself(accelerator)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @staticmethod
    def can_write_itself(accelerator) -> bool:
        """Plain and DDP runs on CPU/CUDA, one model, no stateful loaders: the files are model,
        optimizer, scheduler, scaler and RNG. Everything else goes through `save_state`."""
        return (accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
                and accelerator.device.type in ("cpu", "cuda")
                and not accelerator.project_configuration.save_on_each_node
                and not accelerator.dataloader_config.use_stateful_dataloader)

    def save(self, state: TrainingState, sampler, blocking: bool = False) -> Path:
        """Returns the final folder; it exists when this returns only if `blocking` (or not in the background)."""
        acc = self.accelerator
        self.wait()
        epoch = state.epoch if state.step_in_epoch else state.epoch - 1  # the epoch the last step belongs to
        final = self.folder / f"epoch{epoch:04d}-step{state.global_step:08d}"
        tmp = self.folder / f".tmp-{final.name}"
        if acc.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        tmp.mkdir(parents=True, exist_ok=True)  # as `save_state` does on every rank
        doc = {"training": state.to_json(), "sampler": sampler.state_dict(), "identity": self.identity}
        partial = {k: v.contiguous() for k, v in state.partial.items()}
        if not self.background:
            acc.save_state(str(tmp))
            if acc.is_main_process:
                self._write_ours(tmp, doc, partial)
            acc.wait_for_everyone()
            self._finish(tmp, final)
            acc.wait_for_everyone()
            return final
        torch.save(rng_states(acc), tmp / f"{RNG_STATE_NAME}_{acc.process_index}.pkl")
        if acc.is_main_process:
            files = {SAFE_WEIGHTS_NAME: _to_host(acc.get_state_dict(self.model, unwrap=False)),
                     f"{OPTIMIZER_NAME}.bin": _to_host(self.optimizer.state_dict()),
                     f"{SCHEDULER_NAME}.bin": _to_host(self.scheduler.state_dict())}
            if acc.scaler is not None:
                files[SCALER_NAME] = _to_host(acc.scaler.state_dict())
            doc = copy.deepcopy(doc)
            self._thread = threading.Thread(target=self._write, args=(tmp, final, files, doc, partial),
                                            name="mlic-checkpoint")
            self._thread.start()
        acc.wait_for_everyone()  # every RNG file is written
        if blocking:
            self.wait()
            acc.wait_for_everyone()
        return final

    def wait(self) -> None:
        """Until the write in flight (if any) is done; raises its error. Main process only has one."""
        self.close()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Lets a write in flight finish, without raising: for paths where an error is on its way already."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, tmp: Path, final: Path, files: dict[str, Any], doc: dict, partial: dict) -> None:
        try:
            for name, obj in files.items():  # as accelerate's `save_accelerator_state` writes them
                save(obj, tmp / name, safe_serialization=name == SAFE_WEIGHTS_NAME)
            self._write_ours(tmp, doc, partial)
            self._finish(tmp, final)
        except Exception as exc:  # handed to the training thread by wait()
            self._error = MlicError(f"writing checkpoint {final.name} into {tmp.parent} failed: {exc}")
            self._error.__cause__ = exc

    def _write_ours(self, tmp: Path, doc: dict, partial: dict) -> None:
        (tmp / STATE).write_text(json.dumps(doc, indent=1))
        if partial:
            save_file(partial, str(tmp / PARTIAL))

    def _finish(self, tmp: Path, final: Path) -> None:
        faults.kill_point("checkpoint")  # a kill here leaves only a .tmp- folder: never chosen for resume
        if not self.accelerator.is_main_process:
            return
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in complete_checkpoints(self.folder)[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)


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
