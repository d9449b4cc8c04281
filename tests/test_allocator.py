"""CPU training keeps freed tensor memory: the same allocation again costs no page faults."""

import subprocess
import sys

import pytest

from tests.helpers import REPO

SCRIPT = """
import resource, sys, torch
from mlic.training.allocator import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # a batch's activations: allocated, written, freed
    x = torch.empty(64 * 2**20, dtype=torch.uint8)
    x.fill_(1)
    del x
for _ in range(10):  # glibc settles (aligned requests can need a few fresh blocks first)
    step()
start = faults()
for _ in range(10):
    step()
print(faults() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    counts = {}
    for mode in ("off", "on"):
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, check=True)
        counts[mode] = int(done.stdout.strip())
    assert counts["off"] > 100, counts  # glibc maps and unmaps 64 MiB every time: faulted in again
    assert counts["on"] < counts["off"] / 100, counts
