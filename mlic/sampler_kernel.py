"""The sequential loop of the balanced sampler's `least_sampled`, compiled by numba.

Imported only when that class choice draws an order, so `import mlic.sampler` stays light; cache=True keeps
the machine code on disk, so only the first run on a machine compiles (a few seconds).

Each draw takes a class uniformly among those at the minimum running count, then an image of that class,
and adds one to the count of each of the image's labels. Cost per draw: O(labels of the image), amortised,
whatever the number of classes. Every class is in one of three places:
- `tied`: an array of the classes at the minimum count `low` (a uniform pick is one index; a class leaves
  by swap-remove);
- a ring of `ring` >= C buckets (doubly linked lists `after` / `before`, bucket `count & mask`) for counts
  in (low, horizon);
- beyond the horizon, where an increment is just `counts[j] += 1`: the common labels of every drawn image
  live there.
When `tied` empties, the next non-empty bucket becomes `tied`; when the ring is empty too, it is rebuilt
from all counts, O(C), at most once per `ring` draws (the minimum has to rise by `ring` first). Counts grow
without bound over epochs: the ring is indexed by count modulo its size, never by the count itself.

An image's record (see `mlic.sampler._Members`) is: its row's low and high 16 bits, its label count, then
its label ids.
"""

from __future__ import annotations

import numba
import numpy as np

TIED, RING, FAR = 0, 1, 2


@numba.njit(cache=True)
def least_sampled(counts, choice, position, sizes, offsets, starts, records, classes, picks):
    """Fills `classes[k]` (the class of draw k, picked by `choice[k]` among those at the minimum count) and
    `picks[k]` (the row of the image at `position[k]` of that class's members) for every draw, updating
    `counts` in place (the structure: the module doc). Returns a value of no meaning (`touched`).

    One function, longer than mlic's 60 lines, on purpose: the per-label update and the speculative reads
    moved into helper functions made it 3x slower (1.4 M against 4.9 M draws/s at 1 M x 10,000), even
    with numba's `inline="always"`."""
    c = len(counts)
    ring = 1
    while ring < c:
        ring *= 2
    mask = ring - 1
    tied = np.empty(c, dtype=np.int32)
    slot = np.empty(c, dtype=np.int32)  # position in `tied`
    state = np.full(c, FAR, dtype=np.int8)
    after = np.empty(c, dtype=np.int32)  # the ring's lists
    before = np.empty(c, dtype=np.int32)
    head = np.full(ring, -1, dtype=np.int32)
    n_tied, low, horizon = 0, 0, 0
    n = len(classes)
    touched = 0
    for k in range(n):
        if n_tied == 0:
            n_tied, low, horizon = _next_minimum(counts, tied, slot, state, after, before, head, low, horizon)
        s = int(choice[k] * n_tied)
        best = tied[s]
        size = sizes[best]
        record = starts[offsets[best] + min(int(position[k] * size), size - 1)]
        classes[k] = best
        picks[k] = np.int64(records[record]) | (np.int64(records[record + 1]) << 16)
        if k + 1 < n and n_tied > 1:
            # Speculate on the next two draws, assuming each takes only its own class off the minimum
            # (most draws do), and start their cache misses now, to overlap with this draw's: the record
            # of draw k + 1 (its `starts` entry was read one draw ago) and the `starts` entry of draw
            # k + 2. At OpenImages size a draw waits on memory, so this is most of the speed there.
            # `touched` only keeps the compiler from dropping the reads.
            at = int(choice[k + 1] * (n_tied - 1))
            guess = tied[n_tied - 1] if at == s else tied[at]  # `tied` once `best` is swap-removed
            size = sizes[guess]
            touched += records[starts[offsets[guess] + min(int(position[k + 1] * size), size - 1)] + 2]
            if k + 2 < n and n_tied > 2:
                then = int(choice[k + 2] * (n_tied - 2))
                then = n_tied - 2 if then == at else then  # and once `guess` is swap-removed too
                guess = tied[n_tied - 1] if then == s else tied[then]
                size = sizes[guess]
                touched += starts[offsets[guess] + min(int(position[k + 2] * size), size - 1)]
        for e in range(record + 3, record + 3 + records[record + 2]):
            label = records[e]
            v = counts[label]
            counts[label] = v + 1
            if state[label] == FAR:
                continue
            if state[label] == TIED:
                n_tied -= 1
                last = tied[n_tied]
                tied[slot[label]] = last
                slot[last] = slot[label]
            else:  # unlink from bucket v
                p, q = before[label], after[label]
                if p == -1:
                    head[v & mask] = q
                else:
                    after[p] = q
                if q != -1:
                    before[q] = p
            if v + 1 < horizon:  # link into bucket v + 1
                b = (v + 1) & mask
                q = head[b]
                after[label], before[label] = q, -1
                if q != -1:
                    before[q] = label
                head[b] = label
                state[label] = RING
            else:
                state[label] = FAR
    return touched


@numba.njit(cache=True)
def _next_minimum(counts, tied, slot, state, after, before, head, low, horizon):
    """`tied` is empty: the next count up becomes the minimum (its bucket moves into `tied`), or, with the
    ring empty too (and at the start), everything is rebuilt from the counts. Returns (n_tied, low, horizon)."""
    mask = len(head) - 1
    v = low + 1
    while v < horizon and head[v & mask] == -1:
        v += 1
    if v < horizon:
        low, j = v, head[v & mask]
        head[v & mask] = -1
    else:
        low, horizon, j = _rebuild(counts, state, after, before, head)
    n_tied = 0
    while j != -1:
        tied[n_tied], slot[j], state[j] = j, n_tied, TIED
        n_tied += 1
        j = after[j]
    return n_tied, low, horizon


@numba.njit(cache=True)
def _rebuild(counts, state, after, before, head):
    """The ring from all counts, O(C). Returns (low, horizon, the first of the list of classes at `low`)."""
    ring = len(head)
    mask = ring - 1
    low = counts.min()
    horizon = low + ring
    head[:] = -1
    j = -1
    for i in range(len(counts)):
        v = counts[i]
        if v == low:
            after[i] = j
            j = i
        elif v < horizon:
            b = v & mask
            after[i], before[i] = head[b], -1
            if head[b] != -1:
                before[head[b]] = i
            head[b] = i
            state[i] = RING
        else:
            state[i] = FAR
    return low, horizon, j
