"""Errors that one rank meets and all must act on: the main process writes the run folder alone, and a
rank that stops alone leaves the others waiting in their next collective until the launcher's timeout."""

from __future__ import annotations

from accelerate.utils import gather_object

from mlic.errors import MlicError


class RankError(MlicError):
    """Another rank's error, raised on every rank with the same text (the CLI prints it once)."""

    same_on_every_rank = True


def raise_together(accelerator, error: MlicError | None) -> None:
    """Every rank calls this at the same point with its own error or None: if any rank had one, every rank
    raises (this rank's own error, else the first rank's text). One small gather; nothing with one process."""
    if accelerator.num_processes > 1:
        texts = gather_object([None if error is None else str(error)])
        first = next((text for text in texts if text is not None), None)
        if first is not None and error is None:
            error = RankError(first)
        elif error is not None:
            error.same_on_every_rank = True
            if first != str(error):  # several ranks failed: all show the first one's line
                error = RankError(first)
    if error is not None:
        raise error


def on_main(accelerator, write) -> None:
    """Call `write()` on the main process only, then let every rank share its outcome (`raise_together`)."""
    error = None
    if accelerator.is_main_process:
        try:
            write()
        except MlicError as exc:
            error = exc
    raise_together(accelerator, error)
