"""Writing to disk so that a crash or a full disk loses nothing: files replaced atomically and fsynced,
and a full disk reported as one line, whatever library was writing (torch.save's zip writer and
safetensors raise their own errors without an errno; TensorBoard's thread raises at the next call).

Every writer of the run folder and the cache goes through `writing(what, folder, needs, point=...)`; the
failpoint `MLIC_FAULT=fill-<point>:n` (`mlic.faults`) fills the file system right before the n-th such write.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlic import faults
from mlic.errors import MlicError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded")


class DiskFull(MlicError):
    """The file system of a write ran out of space. The CLI prints it as one line, once."""

    same_on_every_rank = True


def existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (a folder about to be created is on that one's disk)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def device_of(path: Path) -> str:
    """The mount point holding `path` and what is mounted there: '/scratch (tmpfs)'."""
    path = os.path.realpath(existing(path))
    best, source = "/", ""
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                dev, mount = line.split()[:2]
                mount = mount.replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, source = mount, dev
    except OSError:  # not Linux: the mount point alone
        mount = Path(path)
        while not os.path.ismount(mount):
            mount = mount.parent
        return str(mount)
    return f"{best} ({source})" if source else best


def out_of_space(exc: BaseException, folder: Path, needs: int) -> bool:
    """Whether `exc` (or what caused it) is a full disk: an ENOSPC/EDQUOT anywhere in its chain or text, or
    a write error of a kind the writers raise (OSError; torch's zip writer: RuntimeError; safetensors'
    error) while `folder`'s file system has less free space than the write needs."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return True
        if any(text in str(seen).lower() for text in _FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    if not (isinstance(exc, OSError | RuntimeError) or type(exc).__name__ == "SafetensorError"):
        return False  # a bug (TypeError, KeyError...) on a nearly full disk is still a bug
    try:
        return shutil.disk_usage(existing(folder)).free < max(needs, 1 << 20)
    except OSError:
        return False


def space_line(what: str, folder: Path, needs: int) -> str:
    """'no space left on MOUNT (DEVICE) writing WHAT (needs ~N MB)': how every writer's full disk begins."""
    return f"no space left on {device_of(folder)} writing {what} (needs ~{max(1, round(needs / 1e6))} MB)"


def no_space(what: str, folder: Path, needs: int) -> DiskFull:
    return DiskFull(f"{space_line(what, folder, needs)}; free some space there and run the same command again")


def tensor_bytes(tensors) -> int:
    """The bytes `tensors` (an iterable) take, so about what writing them needs."""
    return sum(t.numel() * t.element_size() for t in tensors)


@contextmanager
def writing(what: str, folder: Path, needs: int = 0, *, point: str) -> Iterator[None]:
    """A block that writes `what` (about `needs` bytes) under `folder`: a full disk becomes `DiskFull`,
    another OSError (permissions, a read-only file system) a one-line `MlicError`; the rest passes through.
    `point` names its failpoint (`fill-<point>`)."""
    faults.fill_point(point, existing(folder))
    try:
        yield
    except MlicError:
        raise
    except Exception as exc:  # torch (RuntimeError), safetensors (SafetensorError), OSError, matplotlib...
        if out_of_space(exc, folder, needs):
            raise no_space(what, folder, needs) from None
        if isinstance(exc, OSError):  # permissions, a read-only or failing file system
            raise MlicError(f"writing {what} into {folder} failed: {exc}") from None
        raise


def quiet_full_disk_in_threads() -> None:
    """A writer thread that dies of a full disk (TensorBoard's) prints no traceback: the main thread meets
    the same error at its next call and reports it as one line. Other thread errors print as before."""
    default = threading.excepthook

    def hook(args) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in _FULL):
            default(args)

    threading.excepthook = hook


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary file beside it, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
