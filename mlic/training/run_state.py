"""What a checkpoint holds, in one place: the run's progress beside accelerate's own state.

A checkpoint is an accelerate `save_state` folder (model, optimizer, scheduler, scaler, RNG of every
rank: one format for DDP and DeepSpeed) plus mlic's own files, which it writes and reads itself without
pickle: `mlic_state.json` (`RunState` and the run's identity), `ema.safetensors` (the average of the
weights, with `train.ema_decay`) and `manifest.json` (`mlic.training.manifest`), written last. All of it is written
under `.tmp-NAME`, fsynced, and renamed to `epoch{E}-step{S}`. A resume takes the newest checkpoint that
verifies (a damaged or tampered one is named in a warning and skipped) and loads its pickled files
weights-only, so nothing in a run folder can run code (DeepSpeed's files only with the opt-in
`train.trust_checkpoint_pickles`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import DistributedType, broadcast_object_list
from safetensors.torch import load_model, save_model

from mlic import faults
from mlic.disk import fsync_path, no_space, writing
from mlic.errors import ConfigError, MlicError
from mlic.logs import STDOUT, log
from mlic.ranks import RankError, on_main, raise_together
from mlic.training.manifest import damage, manifest_bytes, write_manifest

STATE_FILE = "mlic_state.json"
EMA_FILE = "ema.safetensors"
FORMAT = 3  # 1: mlic 0.1.0 (a "training" section, gathered partial outputs, no world size); 2: no manifest


# A checkpoint written before an identity key existed: how to resume it as it was trained.
IDENTITY_HINTS = {
    "loss.asl_detach_focusing": "it was trained with ASL's focusing weight keeping its gradient (before mlic "
                                "detached it, as the paper's code does): resume it with loss.asl_detach_focusing=false, or ",
}


def check_pickle_trust(accelerator, folder: Path, trust_pickles: bool) -> None:
    """DeepSpeed's checkpoints are read only by unpickling: resumed only with `train.trust_checkpoint_pickles`.
    Part of the preflight, before any data is read."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and not trust_pickles and complete_checkpoints(folder):
        refused = ConfigError(
            f"the checkpoints in {folder} hold DeepSpeed's engine state, which DeepSpeed can only read by "
            "unpickling it (a pickle can run any code): resume them only if you trust this folder, with "
            "train.trust_checkpoint_pickles=true, or start over in another run.output_dir")
        refused.same_on_every_rank = True  # every rank refuses alike: printed once
        raise refused


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
    ema_updates: int = 0  # updates of the EMA of the weights (its tensors: EMA_FILE)
    # The epoch's training metrics once its training is done and its evaluation is not (a stop during the
    # evaluation): the resumed run evaluates the epoch without training it again.
    train_metrics: dict[str, float] | None = None
    # Reserved for features that add state, so that the format stays the same when they land:
    known_mask: bool = False  # the targets carried a known-label mask (partial labels)

    def step_done(self, samples: int) -> None:
        self.step_in_epoch += 1
        self.global_step += 1
        self.samples_in_epoch += samples

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = self.samples_in_epoch = 0
        self.train_metrics = None

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

    def save(self, accelerator, folder: Path, identity: dict[str, Any], keep: int, ema=None, needs: int = 0) -> Path:
        """Every rank calls this together. Returns the checkpoint folder. A failed write (a full disk) is
        one error on every rank, and the previous checkpoints stay the newest. `needs`: the bytes it is
        expected to take (the previous checkpoint's size when there is one)."""
        epoch = self.epoch if self.step_in_epoch else self.epoch - 1  # the epoch the last step belongs to
        final = folder / f"epoch{epoch:04d}-step{self.global_step:08d}"
        tmp = folder / f".tmp-{final.name}"
        what = f"checkpoint {final.name}"
        previous = latest_checkpoint(folder)
        needs = (manifest_bytes(previous) if previous else None) or needs
        on_main(accelerator, lambda: _prepare(folder, tmp, what))
        # Every rank, before anyone writes: a rank that failed inside accelerate's save (DeepSpeed's has
        # collectives of its own) could leave the others in one of them.
        raise_together(accelerator, no_space(what, folder, needs) if shutil.disk_usage(folder).free < needs else None)
        try:
            error = None
            try:
                with writing(what, folder, needs, point="checkpoint"):
                    accelerator.save_state(str(tmp))  # every rank writes its own random states
            except Exception as exc:  # noqa: BLE001 (shared with every rank, then re-raised)
                error = exc
            raise_together(accelerator, error)
            on_main(accelerator, lambda: self._write_own_files(tmp, identity, ema, what, needs))
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        faults.kill_point("checkpoint")  # a kill here leaves only a .tmp- folder: never chosen for resume
        on_main(accelerator, lambda: _publish(tmp, final, keep, what))
        return final

    def _write_own_files(self, tmp: Path, identity: dict[str, Any], ema, what: str, needs: int) -> None:
        """mlic's files beside accelerate's, then the manifest of them all (every file fsynced)."""
        with writing(what, tmp.parent, needs, point="checkpoint-files"):
            if ema is not None:
                save_model(ema.module, str(tmp / EMA_FILE))
            doc = {"format": FORMAT, "run": dataclasses.asdict(self), "identity": identity}
            (tmp / STATE_FILE).write_text(json.dumps(doc, indent=1))
            write_manifest(tmp)

    @classmethod
    def resume(cls, accelerator, folder: Path, identity: dict[str, Any], ema=None,
               trust_pickles: bool = False) -> tuple[RunState, Path] | None:
        """The newest checkpoint that verifies, its state returned after restoring accelerate's objects (and
        `ema`) from it; None when there is none. A checkpoint of another model or label set is refused
        before any load."""
        check_pickle_trust(accelerator, folder, trust_pickles)
        path = choose_checkpoint(accelerator, folder, trust_pickles)
        if path is None:
            return None
        doc = json.loads((path / STATE_FILE).read_text())
        state = cls.from_json(doc, path)
        for key in identity.keys() | doc["identity"].keys():  # a key on one side only is a mismatch too
            value = identity.get(key)
            if doc["identity"].get(key) != value:
                hint = IDENTITY_HINTS.get(key, "") if key not in doc["identity"] else ""
                raise ConfigError(
                    f"checkpoint {path} is for {key}={doc['identity'].get(key)!r}, this run has {key}={value!r}; "
                    f"{hint}use another run.output_dir, or delete its checkpoints/ to start over"
                )
        try:
            with _weights_only(not trust_pickles):
                accelerator.load_state(str(path))
            if ema is not None:
                load_model(ema.module, str(path / EMA_FILE), device="cpu")
        except Exception as exc:  # verified, yet not this run's (a hand-edited config of the same identity)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MlicError(f"checkpoint {path} verified but does not load into this run: {first[:300]}") from None
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


def _prepare(folder: Path, tmp: Path, what: str) -> None:
    with writing(what, folder, point="checkpoint-folder"):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, final: Path, keep: int, what: str) -> None:
    """Rename the written checkpoint into place (a checkpoint of the same name, as a stop during evaluation
    leaves, is set aside first and removed after, so a kill in between loses neither), then prune."""
    folder = final.parent
    with writing(what, folder, point="checkpoint-rename"):
        old = folder / f".old-{final.name}"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        fsync_path(folder)  # the rename itself reaches the disk
        shutil.rmtree(old, ignore_errors=True)
        for stale in complete_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _recover(folder: Path) -> None:
    """A checkpoint set aside by `_publish` when a kill came before its replacement was in place."""
    for old in folder.glob(".old-*") if folder.is_dir() else []:
        name = folder / old.name.removeprefix(".old-")
        if name.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(name)


def choose_checkpoint(accelerator, folder: Path, trust_pickles: bool = False) -> Path | None:
    """The newest complete checkpoint that verifies (`mlic.training.manifest.damage`), the same on every rank (the
    main process verifies, then tells the others); a warning for each one skipped; None when there is
    none; an error when there are some and none verifies."""
    name = problem = None
    if accelerator.is_main_process:
        try:
            name, problem = _verify_newest(folder, trust_pickles)
        except Exception as exc:  # noqa: BLE001 (every rank must hear of it, not wait in the broadcast)
            problem = f"checking the checkpoints in {folder} failed: {type(exc).__name__}: {exc}"
    if accelerator.num_processes > 1:
        name, problem = broadcast_object_list([name, problem])
    if problem:
        raise RankError(problem)
    return folder / name if name else None


def _verify_newest(folder: Path, trust_pickles: bool) -> tuple[str | None, str | None]:
    """(the newest checkpoint that verifies, None), or (None, why none can be used); the ones newer than the
    chosen one are named in a warning each and set aside as `.unusable-NAME` (kept for a look, never
    chosen or counted by `keep` again)."""
    _recover(folder)
    found = complete_checkpoints(folder)
    skipped = []
    for path in reversed(found):
        why = damage(path, trust_pickles)
        if why is None:
            for bad in skipped:
                shutil.rmtree(bad.with_name(f".unusable-{bad.name}"), ignore_errors=True)
                bad.rename(bad.with_name(f".unusable-{bad.name}"))
            return path.name, None
        skipped.append(path)
        log.warning(f"warning: checkpoint {path} is unusable: {why}; "
                    f"{'trying the one before it' if path != found[0] else 'there is no other'}", extra=STDOUT)
    if found:
        return None, (f"no usable checkpoint in {folder} ({len(found)} damaged or unsafe, named above); restore "
                      "them from a copy, or move checkpoints/ aside to start the run over")
    return None, None


@contextmanager
def _weights_only(force: bool):
    """torch.load weights-only for every file that accelerate loads (its own default, made a rule here: a
    later accelerate or a file it reads another way cannot unpickle code)."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    if force:
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
