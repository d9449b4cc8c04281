"""mlic's messages through Python `logging`: the logger "mlic", rank-aware through accelerate's adapter.

A run-level event (an epoch's line, "resumed from ...", "stopped at ...") is said once per run, by the main
process; what each node's processes meet on their own (waiting for a cache another one builds, a file system
without locks) by each (`main_process_only=False`). The console keeps the streams
users and scripts read: run events on stdout, warnings and progress notes (`note`) on stderr; `run.log_level`
sets what the console shows. Every record of a run also goes to RUN/train.log (main process, INFO and
above, with time and level), whatever the console level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from accelerate.logging import MultiProcessAdapter
from accelerate.state import PartialState

LOGGER = logging.getLogger("mlic")
LOG_FILE = "train.log"
# `extra` that picks a record's console stream against its level's (INFO stdout, WARNING and above stderr):
# progress notes go to stderr, and a few warnings users and scripts have always read on stdout stay there.
STDERR, STDOUT = {"stream": "stderr"}, {"stream": "stdout"}


class RankAdapter(MultiProcessAdapter):
    """accelerate's adapter (main process only unless `main_process_only=False`; usable before any Accelerator
    only for messages every process says) without its `[RANK n]` prefix on run-level events: their text is
    what users and the Slurm tests read."""

    def process(self, msg, kwargs):
        kwargs.setdefault("stacklevel", 2)
        return msg, kwargs

    def log(self, level, msg, *args, **kwargs):
        if PartialState._shared_state == {}:  # no launch state yet (a command's first lines): the launcher's RANK
            main_only = kwargs.pop("main_process_only", True)
            kwargs.pop("in_order", None)
            if self.isEnabledFor(level) and not (main_only and os.environ.get("RANK", "0") != "0"):
                self.logger.log(level, msg, *args, **kwargs)
            return
        super().log(level, msg, *args, **kwargs)


log = RankAdapter(LOGGER, {})


def note(msg: str, *, every_rank: bool = False) -> None:
    """Progress (building a cache, waiting for another process): INFO on stderr."""
    log.info(msg, extra=STDERR, main_process_only=not every_rank)


class _Console(logging.Handler):
    """INFO records to stdout, warnings and errors to stderr, unless the record names its stream (STDERR,
    STDOUT); the streams are looked up at each record, so a redirected or captured sys.stdout gets them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = getattr(record, "stream", None) or ("stderr" if record.levelno >= logging.WARNING else "stdout")
            stream = sys.stderr if name == "stderr" else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (logging's own rule: a message that cannot be written never stops the run)
            self.handleError(record)


def _console() -> _Console:
    console = next((h for h in LOGGER.handlers if isinstance(h, _Console)), None)
    if console is None:
        console = _Console(logging.INFO)
        console.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(console)
        LOGGER.setLevel(logging.DEBUG)  # the handlers choose
        LOGGER.propagate = False  # the root logger's handlers (a user's basicConfig) would print each line twice
    return console


@contextlib.contextmanager
def console_level(level: str) -> Iterator[None]:
    """The console shows `level` (run.log_level) and above for the span of a run, then what it showed before."""
    console = _console()
    before = console.level
    console.setLevel(level.upper())
    try:
        yield
    finally:
        console.setLevel(before)


_console()  # from the first import: mlic's messages reach the console as its prints did


class _RunFile(logging.FileHandler):
    """A FileHandler that, when a write fails (a full disk, a folder gone), says so once in one line and stops
    writing, instead of logging's traceback on every record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            super().emit(record)
        except Exception:  # noqa: BLE001 (opening the file happens here, outside logging's own guard)
            self.handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last flush, on a full disk
            self.handleError(None)

    def handleError(self, record: logging.LogRecord | None) -> None:
        if self.level <= logging.CRITICAL:
            self.setLevel(logging.CRITICAL + 1)
            reason = sys.exc_info()[1]
            sys.stderr.write(f"warning: {self.baseFilename}: cannot be written ({reason}); the run goes on without "
                             "its log file\n")


class RunLogFile:
    """RUN/train.log for the span of a run on the main process: every record of INFO and above, with time and
    level, appended (a resumed run continues the file). A write that fails (a full disk) is logging's to
    report on stderr, never the run's to stop on: the checkpoint and metrics.jsonl are what must be written."""

    def __init__(self, run_dir: str | Path, is_main: bool):
        self.path, self.handler = Path(run_dir) / LOG_FILE, None
        if is_main:
            self.handler = _RunFile(self.path, encoding="utf-8", delay=True)
            self.handler.setLevel(logging.INFO)
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def __enter__(self) -> RunLogFile:
        if self.handler is not None:
            LOGGER.addHandler(self.handler)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.handler is not None:
            if exc is not None and not isinstance(exc, KeyboardInterrupt):  # why the run ended, in its log too
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.handler.handle(LOGGER.makeRecord(LOGGER.name, logging.ERROR, __file__, 0, f"error: {text}", (), None))
            LOGGER.removeHandler(self.handler)
            self.handler.close()
