"""Stop cleanly when asked: SIGTERM or SIGUSR1 to a training process, or a stop file (SLURM's batch
script creates it when SLURM signals preemption or the time limit; see slurm/common.sh).

Ranks must agree on the step at which they stop (they save a checkpoint together), so the request is
combined across ranks every `train.stop_check_every` steps: one tiny all-reduce, never per step.
"""

from __future__ import annotations

import os
import signal
import threading

import torch


def any_rank(accelerator, flag: torch.Tensor) -> bool:
    """Whether `flag` (a bool tensor on the device) is true on any rank: one tiny all-reduce and a host
    sync; call it on every rank."""
    flag = flag.float().reshape(1)
    return bool((accelerator.reduce(flag, reduction="sum") if accelerator.num_processes > 1 else flag).item() > 0)


class StopSignal:
    """Records a stop request; a context manager that puts the previous signal handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: str | None = None):
        self.stop_file = stop_file if stop_file is not None else os.environ.get("MLIC_STOP_FILE")
        self.received: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def local(self) -> bool:
        return self.received is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    def requested(self, accelerator) -> bool:
        """True on every rank as soon as any rank was asked to stop (a collective: call it on all ranks).
        One process asks no one: no device round trip, so the check never waits for the GPU."""
        if accelerator.num_processes == 1:
            return self.local()
        return any_rank(accelerator, torch.full((), self.local(), device=accelerator.device))

    def __enter__(self) -> StopSignal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
