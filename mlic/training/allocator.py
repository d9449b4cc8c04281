"""Host memory for CPU training: keep freed tensor memory in the process instead of giving it back.

glibc serves large allocations (a batch's activations are tens of MB) by `mmap` and returns them to the
OS on free, unless its self-adjusting threshold has moved above them; whether it has depends on the
run's allocation history. In the runs where it had not, every step faulted the same memory in again,
4 KiB at a time, zeroed by the kernel: for the report's CNN at 64 px on CPU, 1.5 million page faults an
epoch and about a fifth of its time (benchmarks/engine_overhead.py swung by +-8 % from run to run).
Turning off glibc's `mmap` path and its trimming makes the memory of one step serve the next in every
run (PyTorch's CPU tuning guide reaches the same end with jemalloc or tcmalloc, preloaded).

The cost: the process keeps its peak memory (a training process reaches it every step anyway), and
aligned requests may take a few extra blocks before freed ones fit them (allocating 64 MiB again and
again: +384 MiB, then no more). `train.keep_host_memory=false` leaves glibc as it is.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Apply the glibc settings to this process (and the workers it forks). False where there is no
    glibc (macOS, Windows, musl): nothing is changed there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, INT_MAX))
