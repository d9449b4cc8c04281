"""The training engine behind every `train/*.py`: plain functions on top of Accelerate.

fit(cfg): build the run -> resume -> per epoch: train_one_epoch -> evaluate -> log -> export the best
model -> save a checkpoint. What a checkpoint holds is `mlic.training.run_state`; building is `mlic.training.build`;
evaluating is `mlic.training.evaluation`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mlic import faults
from mlic.config import Config
from mlic.data.policies import mix_batch
from mlic.disk import tensor_bytes, writing
from mlic.errors import DivergedError
from mlic.logs import STDOUT, RunLogFile, console_level, log
from mlic.metrics import (
    METRIC_KEYS,
    compute_metrics,
    split_known,
)
from mlic.models import architecture
from mlic.models.export import export_model
from mlic.ranks import on_main
from mlic.seeding import mix_seed
from mlic.training.allocator import keep_freed_memory
from mlic.training.build import (
    Run,
    base_model,
    build_optimizer,
    build_run,
    build_scheduler,
    preflight,
)
from mlic.training.evaluation import evaluate, evaluate_epoch, predict_logits, share_buffers
from mlic.training.preemption import StopSignal, any_rank
from mlic.training.run_lock import RunFolderLock
from mlic.training.run_log import log_epoch, log_step, publish, start_run_folder, start_tracking, trim_metrics
from mlic.training.run_state import RunState, latest_checkpoint
from mlic.training.selection import chosen_split
from mlic.training.stepping import LoaderWait, epoch_micro_steps, loss_weight, said_compile_time

__all__ = ["build_optimizer", "build_scheduler", "evaluate", "fit", "predict_logits", "train_one_epoch"]


def fit(cfg: Config) -> dict[str, dict]:
    """Train per `cfg`. Returns the last epoch's {"train": ..., "val": ...} metrics, or {"stopped": ...}
    when a stop request (SIGTERM, SIGUSR1, the stop file) ended the run after its checkpoint."""
    accelerator = preflight(cfg)
    if accelerator.device.type == "cpu" and cfg.train.keep_host_memory:
        keep_freed_memory()
    set_seed(cfg.train.seed)
    last: dict[str, dict] = {}
    with (console_level(cfg.run.log_level), RunFolderLock(cfg.run.output_dir, accelerator),
          RunLogFile(cfg.run.output_dir, accelerator.is_main_process), StopSignal() as stop):
        run = build_run(cfg, accelerator)
        start_run_folder(run)
        state = resume(run)
        start_tracking(run, state.epoch - 1, state.global_step)
        while state.epoch <= cfg.train.epochs:
            if state.train_metrics is None:  # else trained already: stopped during the epoch's evaluation
                train = train_one_epoch(run, state, stop)
                if train.stopped:
                    save_checkpoint(run, state)
                    return stopped(run, state, f"epoch {state.epoch}, step {state.step_in_epoch} of it")
                state.train_metrics = train.metrics
            evaluated = evaluate_epoch(run, state.train_metrics, stop)
            if evaluated is None:  # a stop during the evaluation: the checkpoint holds the trained epoch
                save_checkpoint(run, state)
                return stopped(run, state, f"the evaluation of epoch {state.epoch} (its training is saved)")
            last, thresholds = evaluated
            log_epoch(run, state.epoch, last)
            split, key = chosen_split(cfg, last)
            if state.improved(last[split][key], lower_is_better=key == "loss"):
                export_best(run, state.epoch, split, last[split], thresholds[split])
            state.next_epoch()
            save_checkpoint(run, state)
            if state.epoch <= cfg.train.epochs and stop.requested(accelerator):
                return stopped(run, state, f"the end of epoch {state.epoch - 1}")
    end_training(run)
    return last


@dataclass
class EpochResult:
    metrics: dict[str, float]
    stopped: bool  # a stop was requested: the epoch ended early, its state is to be saved


def train_one_epoch(run: Run, state: RunState, stop: StopSignal) -> EpochResult:
    """One pass over the epoch's sampled order, from where `state` stands. Outputs stay on the device
    until the epoch ends; the loop reads back only the loss logs (every `train.log_every` steps), stop
    checks (every `train.stop_check_every`) and mid-epoch checkpoints. The epoch's last step neither
    stops nor saves: `fit` evaluates, saves and checks for a stop right after it."""
    acc, cfg = run.accelerator, run.cfg.train
    run.model.train()
    done = state.step_in_epoch * cfg.grad_accum  # batches (per rank) of this epoch already trained on
    outputs = EpochOutputs(acc, track_finite=not cfg.skip_nonfinite)
    start, micro_steps, wait = time.perf_counter(), epoch_micro_steps(run), LoaderWait()
    for micro_step, (images, target, _) in enumerate(_epoch_batches(run, state, done, wait), start=done):
        generator = seed_step(acc.device, cfg.seed, state.epoch, micro_step, acc.process_index)
        with acc.accumulate(run.model):
            weight = loss_weight(micro_step, micro_steps, cfg.grad_accum)  # a last, partial window: its mean
            logits, loss = forward_backward(run, images, target, generator, weight)
            outputs.add(logits, target, loss, state.global_step + 1)
            skipped = optimizer_step(run, outputs, state.global_step + 1)
        if not acc.sync_gradients:
            continue
        if run.compiling:  # its time is mostly TorchDynamo's and the backend's
            said_compile_time(run, time.perf_counter() - start)
        outputs.end_window(keep=not skipped)  # a skipped step's outputs stay out of the metrics
        state.skipped_steps += skipped
        if run.ema is not None and not skipped:
            run.ema.update(state.ema_updates)
            state.ema_updates += 1
        state.step_done(cfg.batch_size * cfg.grad_accum * acc.num_processes)
        if run.cfg.schedule.interval == "step":
            run.scheduler.step()
        faults.kill_point("step")
        if state.global_step % cfg.log_every == 0:
            outputs.check_finite(run, state)
            log_step(run, state.global_step, loss)
        if state.step_in_epoch >= run.steps_per_epoch:
            break
        if state.global_step % cfg.stop_check_every == 0 and stop.requested(acc):
            outputs.check_finite(run, state)  # never checkpoint a diverged model
            return EpochResult({}, stopped=True)
        if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0:
            outputs.check_finite(run, state)
            save_checkpoint(run, state)
    elapsed = time.perf_counter() - start
    outputs.check_finite(run, state)
    if run.cfg.schedule.interval == "epoch":
        run.scheduler.step()
    metrics = outputs.metrics(run.data.dataset.num_labels)
    metrics.update(skipped_steps=state.skipped_steps, skipped_images=run.data.skipped_images,
                   images_per_s=metrics["images"] / max(elapsed, 1e-9), data_wait=wait.seconds / max(elapsed, 1e-9))
    return EpochResult(metrics, stopped=False)


def forward_backward(run: Run, images, target, generator: torch.Generator, weight: float = 1.0):
    """The augmented batch through the model, the loss and its gradients (of the loss times `weight`,
    `mlic.training.stepping.loss_weight`). Returns (logits, loss), detached, on the device. With MixUp / CutMix the
    loss sees the mixed targets; the epoch's training metrics compare the outputs with the images' own targets."""
    x = run.data.train_transform(images, generator)
    aug = run.cfg.augment
    if aug.enabled and (aug.mixup > 0 or aug.cutmix > 0):
        x, target = mix_batch(x, target.float(), generator, aug.mixup, aug.cutmix)
    if run.cast is not None:
        x = x.to(run.cast)
    logits = run.model(x).float()
    known = None
    if run.partial_labels:  # unknown entries are NaN (mlic.labels), and stay NaN through MixUp / CutMix
        known = ~torch.isnan(target)
        target = torch.nan_to_num(target, nan=0.0)
    loss = run.loss_fn(logits, target, known)
    if faults.hit("nan"):
        loss = loss * float("nan")
    run.accelerator.backward(loss * weight if weight != 1 else loss)
    return logits.detach(), loss.detach()


def optimizer_step(run: Run, outputs: EpochOutputs, step: int) -> bool:
    """At the end of an accumulation: clip, then step unless `train.skip_nonfinite` finds a non-finite
    loss or gradient norm anywhere in the accumulation, on any rank (one host sync per step, only in
    that mode). Between, accelerate makes step and zero_grad no-ops. Under fp16 a non-finite gradient
    norm is a loss-scale overflow, not divergence: the scaler skips the step itself and lowers its scale
    (`mlic.training.stepping.OverflowGuard`, counted without a host sync). Returns whether this function skipped."""
    acc, cfg = run.accelerator, run.cfg.train
    if acc.sync_gradients:
        run.overflow.clip_and_check(run, outputs, step)
    skipped = cfg.skip_nonfinite and acc.sync_gradients and any_rank(acc, ~outputs.window_finite)
    if not skipped:
        run.optimizer.step()
    elif acc.scaler is not None:  # it unscaled this step's gradients: without an update its next unscale_ raises
        acc.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return skipped


def _epoch_batches(run: Run, state: RunState, done: int, wait: LoaderWait):
    """The epoch's batches for this rank, after the `done` ones a resumed run already trained on."""
    loader = run.train_loader
    loader.set_epoch(state.epoch)
    if done:  # resumed mid-epoch: the same global order, minus what was trained on
        loader = skipped(run.accelerator, loader, done, state.epoch)
    left = max(0, epoch_micro_steps(run) - done)
    show = run.accelerator.is_main_process and run.cfg.run.progress
    return tqdm(wait.timed(itertools.islice(loader, left)), desc=f"epoch {state.epoch} train", total=left, leave=False,
                disable=None if show else True)  # disable=None: no bar when stderr is not a terminal


def skipped(accelerator: Accelerator, loader, done: int, epoch: int):
    """`loader` without its first `done` batches, at `epoch` (a new loader counts epochs from 0: the sampler
    must see this one). accelerate (1.15) builds it without the prepared loader's non-blocking copies: on a GPU
    every step of the resumed epoch would wait for its host-to-device copy."""
    loader = accelerator.skip_first_batches(loader, done)
    loader.set_epoch(epoch)
    loader._non_blocking = accelerator.non_blocking
    return loader


def seed_step(device: torch.device, seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """All randomness of a step depends on (seed, epoch, step, rank) only, so a run resumed mid-epoch
    repeats it exactly: the global RNG (dropout) is reseeded, and the augmentations get a generator.
    (Without the reseed, a DataLoader iterator created after resuming draws its worker seed from the
    global RNG and shifts every dropout mask that follows.)"""
    value = mix_seed(seed, epoch, step, rank)
    torch.random.default_generator.manual_seed(value)  # not torch.manual_seed: it probes every backend (~0.1 ms)
    if device.type == "cuda":
        torch.cuda.manual_seed(value)
    return torch.Generator(device).manual_seed(mix_seed(seed, epoch, step, rank, 1))


class EpochOutputs:
    """The epoch's training outputs for the train metrics, kept on the device and gathered once, and the
    first step whose loss or gradient norm was not finite (also on the device: read only where the loop syncs
    anyway). Outputs of an accumulation are held apart until its optimizer step is taken or skipped.

    Bounded sample (issue 28): the kept probabilities (images x labels, all ranks together) stay under
    SAMPLE_ENTRIES. Past it, every other kept step is dropped and from then on only every 2nd (then 4th, ...)
    step is kept: a sample spread evenly over the epoch, at least one step. A run under the bound (the demo,
    14 labels up to ~1.2 M images an epoch) keeps every step, as before; the loss and `images` always count
    every step, and a sampled line says how many images its metrics saw (`metric_images`). The bound is
    counted from shapes alone: no host sync, and every rank (same batches, same skips) keeps the same steps."""

    SAMPLE_ENTRIES = 1 << 24  # 64 MiB of float32 probabilities, as much again of targets

    def __init__(self, accelerator: Accelerator, track_finite: bool):
        self.accelerator, self.track_finite = accelerator, track_finite
        self.kept: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]] = []  # (ordinal, window)
        self.window: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.losses: list[torch.Tensor] = []  # of every step taken, sampled or not
        self.steps = self.images = self.entries = 0  # steps taken, their images, entries kept (this rank)
        self.stride = 1
        self.window_finite = torch.ones((), dtype=torch.bool, device=accelerator.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=accelerator.device)

    def add(self, logits, target, loss, step: int) -> None:
        self.window.append((torch.sigmoid(logits), target, loss.reshape(1)))
        self.note_finite(torch.isfinite(loss), step)

    def note_finite(self, finite: torch.Tensor, step: int) -> None:
        self.window_finite = self.window_finite & finite
        if self.track_finite:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite, step, self.first_bad)

    def end_window(self, keep: bool) -> None:
        if keep:
            self.losses += [loss for *_, loss in self.window]
            self.images += sum(len(target) for _, target, _ in self.window)
            if self.steps % self.stride == 0:
                self.kept.append((self.steps, self.window))
                self.entries += sum(probs.numel() for probs, *_ in self.window)
                while self.entries * self.accelerator.num_processes > self.SAMPLE_ENTRIES and len(self.kept) > 1:
                    self.stride *= 2
                    self.kept = [(i, window) for i, window in self.kept if i % self.stride == 0]
                    self.entries = sum(probs.numel() for _, window in self.kept for probs, *_ in window)
            self.steps += 1
        self.window = []
        self.window_finite = torch.ones_like(self.window_finite)

    def check_finite(self, run: Run, state: RunState) -> None:
        """Every rank calls this together; all raise the same error. In the same gather, the loss-scale
        overflows counted on the device since the last call join `state.skipped_steps` (every rank counts
        the same: they share the reduced gradients)."""
        found = self.accelerator.gather(torch.stack([self.first_bad, run.overflow.take()])[None])
        state.skipped_steps += int(found[0, 1])
        bad = found[:, 0]
        bad = bad[bad >= 0]
        if bad.numel():
            raise DivergedError(
                f"non-finite loss or gradient norm at step {int(bad.min())} (epoch {state.epoch}); last good checkpoint: "
                f"{latest_checkpoint(run.out / 'checkpoints') or 'none yet'}. Lower optim.lr, set "
                "train.clip_grad_norm, or skip such steps with train.skip_nonfinite=true")

    def metrics(self, num_labels: int) -> dict[str, float]:
        """Every rank trains the same number of full batches (drop_last), so a plain gather suffices.
        With nothing trained (a resume at the epoch's very end): NaN figures over 0 images."""
        if not self.losses:
            return {**dict.fromkeys((*METRIC_KEYS, "loss"), float("nan")), "images": 0}
        kept = [outputs for _, window in self.kept for outputs in window]
        probs, targets = (torch.cat(v) for v in list(zip(*kept))[:2])
        probs, targets, losses = (self.accelerator.gather(v.float().contiguous()).cpu()
                                  for v in (probs, targets, torch.cat(self.losses)))
        targets, known = split_known(targets.numpy())
        metrics = compute_metrics(targets, probs.numpy(), known=known)
        metrics.update(loss=float(losses.mean()), images=self.images * self.accelerator.num_processes)
        if self.stride > 1:
            metrics["metric_images"] = len(targets)
        return metrics


def resume(run: Run) -> RunState:
    """The state of the newest checkpoint that verifies (accelerate's objects and the EMA restored), or a
    fresh one."""
    acc, cfg = run.accelerator, run.cfg.train
    found = RunState.resume(acc, run.out / "checkpoints", run.identity, run.ema, cfg.trust_checkpoint_pickles)
    if found is None:
        trim_metrics(run, 0)  # lines of an earlier run whose checkpoints are gone: this one writes its own
        return RunState(world_size=acc.num_processes)
    state, path = found
    run.data.sampler.load_state_dict(state.sampler)
    if state.train_metrics is not None:  # stopped during the evaluation: nothing of the epoch is left to train
        where = "its training done, its evaluation next"
    else:  # the same position in the epoch's global sample order, whatever the world size or batch is now
        skip = state.batches_to_skip(cfg.batch_size, cfg.grad_accum, acc.num_processes)
        if skip is None:
            log.warning(f"warning: {path} stopped at sample {state.samples_in_epoch} of epoch {state.epoch}, not a step "
                        f"boundary for {acc.num_processes} process(es) x batch {cfg.batch_size} x accumulation "
                        f"{cfg.grad_accum}: the epoch restarts", extra=STDOUT)
            state.step_in_epoch = state.samples_in_epoch = 0
        else:
            state.step_in_epoch = skip // cfg.grad_accum
        where = (f"sample {state.samples_in_epoch} of its global order: step {state.step_in_epoch} at "
                 f"{acc.num_processes} process(es)")
    state.world_size = acc.num_processes
    log.info(f"resumed from {path} (epoch {state.epoch}, {where})")
    trim_metrics(run, state.epoch - 1)
    return state


def save_checkpoint(run: Run, state: RunState) -> None:
    on_main(run.accelerator, run.tracking.raise_failed)  # a step log that failed: stop before this checkpoint
    share_buffers(run.accelerator, run.model)
    state.sampler = run.data.sampler.state_dict()
    state.save(run.accelerator, run.out / "checkpoints", run.identity, run.cfg.train.keep_checkpoints, run.ema,
               checkpoint_bytes(run))
    publish(run, state.epoch - 1, state.global_step)  # only now: tracker points cannot be taken back


def checkpoint_bytes(run: Run) -> int:
    """About what a first checkpoint takes: the weights, two optimizer moments of each (Adam), the EMA."""
    weights = tensor_bytes(base_model(run.accelerator, run.model).state_dict().values())
    return weights * (3 + (run.ema is not None))


def end_training(run: Run) -> None:
    """Close the trackers (TensorBoard's writer thread reports a full disk only now) and the process group.
    Every rank reaches this point first: a rank that tore gloo down while another still closed its pairs
    aborted once at exit (`terminate called without an active exception`, a resumed 2-node Slurm job)."""
    run.accelerator.wait_for_everyone()
    with writing("TensorBoard events", run.out, point="tensorboard-close"):
        run.accelerator.end_training()


def stopped(run: Run, state: RunState, where: str) -> dict[str, dict]:
    log.info(f"stopped at {where}: checkpoint saved in {run.out / 'checkpoints'}; "
                          "run the same command again to resume")
    end_training(run)
    return {"stopped": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch}}


def export_best(run: Run, epoch: int, split: str, val_metrics: dict[str, float], thresholds: np.ndarray) -> None:
    """Export the weights that `split` scored: the average for "val_ema", else the trained ones."""
    acc, cfg = run.accelerator, run.cfg
    if split == "val_ema":
        state_dict = run.ema.state_dict()
    else:
        state_dict = acc.get_state_dict(run.model)  # every rank: DeepSpeed gathers shards

    def write() -> None:  # the main process; every rank learns how it went
        num_labels = run.data.dataset.num_labels
        meta = {
            "architecture": architecture(base_model(acc, run.model), cfg.model, num_labels),
            "label_names": run.data.dataset.label_names,
            "thresholds": [float(t) for t in thresholds],
            "preprocess": run.preprocess.to_dict(),
            "epoch": epoch,
            "weights": "ema" if split == "val_ema" else "trained",
            "val_metrics": val_metrics,
            "cached": run.data.cached,
            "config": cfg.to_dict(),
        }
        tensors = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        export_model(tensors, run.out / "model", meta)

    on_main(acc, write)
