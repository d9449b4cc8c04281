"""What an optimizer step needs beyond `optimizer.step()`: the weight of each micro-batch's loss in its
gradient-accumulation window, fp16 loss-scale overflows told apart from divergence, and the loop's own clocks
(time waiting for batches, the first compiled step)."""

from __future__ import annotations

import math
import time

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from mlic.logs import log

# A loss scaler halves its scale at every overflow. This many in a row take even a grown scale (2^16 at the
# start, x2 per 2000 good steps) below 2^-24: a gradient that still overflows is no scaling problem.
OVERFLOWS_IN_A_ROW = 50


def epoch_micro_steps(run) -> int:
    """Micro-batches of an epoch on each rank: the loader's, or fewer under `train.max_steps_per_epoch`."""
    return min(len(run.train_loader), run.steps_per_epoch * run.cfg.train.grad_accum)


def loss_weight(micro_step: int, micro_steps: int, grad_accum: int) -> float:
    """The factor on a micro-batch's loss that makes its window step with the mean gradient of the window.
    accelerate divides every loss by `grad_accum` (under DeepSpeed, DeepSpeed does, by the same number) and
    ends the epoch's last window at the loader's end: a last window of r < grad_accum micro-batches would
    step with r / grad_accum of their mean gradient, so its losses get grad_accum / r. `micro_step` counts
    from the epoch's start, resumed or not: a resumed epoch starts at a window's start."""
    window_start = micro_step - micro_step % grad_accum
    return grad_accum / min(grad_accum, micro_steps - window_start)


class OverflowGuard:
    """Loss-scale overflows under fp16 (accelerate's GradScaler, or DeepSpeed's loss scaler): an overflowing
    gradient is normal there, the scaler skips the step and lowers its scale. They are counted on the device
    (a fused optimizer skips on the device too: no host sync) and read where the loop syncs anyway;
    `OVERFLOWS_IN_A_ROW` of them in a row are divergence."""

    def __init__(self, accelerator: Accelerator):
        self.scaler = accelerator.scaler
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.in_a_row = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self.unread = torch.zeros_like(self.in_a_row)  # overflowed steps since the last `take`

    def clip_and_check(self, run, outputs, step: int) -> None:
        """At an accumulation's end, before the optimizer step: clip (`train.clip_grad_norm`) and note in
        `outputs` whether the step's gradient can be trusted."""
        norm = self._norm(run)
        if self.deepspeed:  # DeepSpeed stepped inside backward; its norm and overflow flag are host values
            skipped = run.optimizer.step_was_skipped
            overflow = torch.full((), skipped, dtype=torch.bool, device=self.in_a_row.device)
            if norm is not None and not skipped and not math.isfinite(norm):
                outputs.note_finite(torch.zeros_like(overflow), step)
        elif self.scaler is not None:  # the norm is non-finite exactly when the scaler finds an inf / NaN
            overflow = ~torch.isfinite(norm)
        else:
            if norm is not None:
                outputs.note_finite(torch.isfinite(norm), step)
            return
        self.unread += overflow & outputs.window_finite  # a step skipped for its loss counts once, in the loop
        self.in_a_row = torch.where(overflow, self.in_a_row + 1, 0)
        if outputs.track_finite:  # with train.skip_nonfinite every overflow is just skipped
            outputs.note_finite(self.in_a_row < OVERFLOWS_IN_A_ROW, step)

    def _norm(self, run):
        acc, limit = run.accelerator, run.cfg.train.clip_grad_norm
        if limit is not None:
            return acc.clip_grad_norm_(run.model.parameters(), limit)
        if self.scaler is not None and not self.deepspeed:  # the scaler's own inf flag is private
            acc.unscale_gradients()
            return torch.nn.utils.get_total_norm([p.grad for p in run.model.parameters() if p.grad is not None])
        return None

    def take(self) -> torch.Tensor:
        """The overflowed steps since the last call, on the device."""
        unread, self.unread = self.unread, torch.zeros_like(self.unread)
        return unread


class LoaderWait:
    """Host seconds the training loop spent waiting for the loader's next batch (`data_wait` of the epoch's
    training line: the share of its time). A GPU that the loader keeps fed leaves the loop waiting in kernel
    launches instead, not here."""

    def __init__(self):
        self.seconds = 0.0

    def timed(self, batches):
        batches = iter(batches)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - asked
            if batch is None:
                return
            yield batch


def said_compile_time(run, seconds: float) -> None:
    """Once per process start: the first step traced and compiled the training graph."""
    run.compiling = False
    t = run.cfg.train
    log.info(f"train.compile: the first step took {seconds:.1f} s (compiling with {t.compile_backend}, "
                          f"mode {t.compile_mode}); evaluation compiles its own graph on its first batch")
