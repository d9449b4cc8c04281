"""One way to derive seeds: every random stream of a run is a function of a few integers."""

from __future__ import annotations

import numpy as np


def mix_seed(*values: int) -> int:
    """A 63-bit seed from non-negative integers such as (seed, epoch, step, rank).

    numpy's SeedSequence hashes the whole tuple, so neighbouring tuples give unrelated streams and,
    unlike `seed * K + epoch` or Python's `hash`, no two tuples of a run collide in practice."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> np.uint64(1))
