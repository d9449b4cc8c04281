"""Errors that one rank meets and all must act on: the main process writes the run folder alone, and a
rank that stops alone leaves the others waiting in their next collective until the launcher ends them."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable

from accelerate.utils import gather_object

from mlic.errors import MlicError


class RankError(MlicError):
    """Another rank's error, raised on every rank that had none, with its text (the CLI prints it once)."""

    same_on_every_rank = True


def _text(error: BaseException) -> str:
    if isinstance(error, MlicError):
        return str(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}"


def raise_together(accelerator, error: BaseException | None) -> None:
    """Every rank calls this at the same point with its own error or None: if any rank had one, every rank
    raises, its own error as it is (a bug keeps its traceback), the others `RankError` with the first
    failing rank's text. One small gather; nothing more with one process."""
    if accelerator.num_processes > 1:
        texts = gather_object([None if error is None else _text(error)])
        first = next((text for text in texts if text is not None), None)
        if first is not None and error is None:
            raise RankError(first)
        if isinstance(error, MlicError):
            error.same_on_every_rank = True  # rank 0 prints its line; the others raise alike, silently
    if error is not None:
        raise error


def on_main(accelerator, write: Callable[[], None]) -> None:
    """Call `write()` on the main process only, then let every rank share its outcome (`raise_together`)."""
    error = None
    if accelerator.is_main_process:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 (every rank must learn of any failure, then it is re-raised)
            error = exc
    raise_together(accelerator, error)


def leave_launched_process(code: int) -> int:
    """The end of a process of a multi-process launch (WORLD_SIZE > 1), called by the entry points only (the
    `mlic` command, train/*.py): the exit hooks run as at any exit (MLflow and W&B end their runs, logging
    flushes), then `os._exit(code)` skips the interpreter's teardown. DDP keeps gloo's process group alive after
    `destroy_process_group` (its threads still run at exit, even with the model deleted), and tearing that down
    with the interpreter aborted ranks at exit (`terminate called without an active exception`, after a run that
    had written everything; docs/PERFORMANCE.md). One process, or a failed one: returns `code` and exits as
    usual: a failed rank that left at once let the launcher end the main process before it printed the error
    every rank shares (the DeepSpeed refusal of test_resume_distributed)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or code != 0:
        return code
    atexit._run_exitfuncs()  # what the interpreter would run first at exit, while it is whole
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
