"""One run folder, one writer: a lock that dies with its process (`flock`), never a stale file."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from accelerate.utils import broadcast_object_list

from mlic.errors import MlicError
from mlic.logs import STDOUT, log

LOCK_FILE = ".lock"


class RunFolderBusy(MlicError):
    """Every rank raises it with the same text; the CLI prints it once."""

    same_on_every_rank = True


class RunFolderLock:
    """Held by the main process for the whole run; all ranks learn whether it was taken (a collective),
    so none is left waiting in a barrier when another live run owns the folder. A requeued job whose
    previous instance is gone takes it again: the kernel releases a dead process's lock."""

    def __init__(self, folder: str | Path, accelerator):
        self.folder, self.accelerator = Path(folder), accelerator
        self._file = None

    def __enter__(self) -> RunFolderLock:
        problem = self._take() if self.accelerator.is_main_process else None
        if self.accelerator.num_processes > 1:
            problem = broadcast_object_list([problem])[0]
        if problem:
            self.__exit__()
            raise RunFolderBusy(problem)
        return self

    def _take(self) -> str | None:
        """None when taken; otherwise why not, for every rank to raise (no rank raises alone)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.folder / LOCK_FILE, "a+")  # noqa: SIM115 (held until __exit__)
        except OSError as exc:
            return f"run folder {self.folder}: cannot write into it ({exc})"
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            return (f"run folder {self.folder} is in use by another live run ({holder}); wait for it, stop it, "
                    "or use another run.output_dir")
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return f"run folder {self.folder}: cannot lock it ({exc})"
            log.warning(f"warning: {self.folder}: this file system cannot lock files ({exc.strerror}); "
                        "nothing stops two runs from sharing this run folder", extra=STDOUT)
            return None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()
        return None

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
