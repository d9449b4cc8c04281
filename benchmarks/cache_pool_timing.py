"""Where a process-pool cache build spends its time: each worker prints when it starts and how long its
imports take, each chunk how long it decodes (with and without fdatasync), on 8,000 demo images and 16
spawned workers, through mlic's own worker functions. `T0=0 python benchmarks/cache_pool_timing.py`.
Written to find why a 16-core H200 host built the cache slower with the pool than in one process
(docs/PERFORMANCE.md)."""

import multiprocessing as mp
import os
import pickle
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

T0 = float(os.environ.get("T0", "0"))

def my_init(decode_pickle, size, partial, offset):
    t = time.time()
    from mlic.data import cache
    t1 = time.time()
    cache._start_worker(decode_pickle, size, partial, offset)
    print(f"worker {os.getpid()} init at {t - T0:.2f}s, import {t1 - t:.2f}s, start_worker {time.time() - t1:.2f}s", flush=True)

def my_task(rows, sync):
    from mlic.data import cache
    t = time.time()
    if not sync:
        os.fdatasync = lambda fd: None
    cache._worker_write(rows)
    return os.getpid(), t - T0, time.time() - t

if __name__ == "__main__":
    from mlic.data.demo import demo_root
    from mlic.data.registry import load_helsinki
    ds = load_helsinki(demo_root(8000, 0))
    out = os.environ.get("TMPDIR", "/tmp")
    for sync in (True, False):
        partial = f"{out}/diag{int(sync)}.npy"
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(ds), 3, 128, 128))
        offset = np.load(partial, mmap_mode="r").offset
        rows = np.arange(len(ds))
        chunks = [rows[i:i + 256] for i in range(0, len(rows), 256)]
        os.environ["T0"] = str(time.time())
        T0 = float(os.environ["T0"])
        with ProcessPoolExecutor(16, mp.get_context("spawn"), initializer=my_init,
                                 initargs=(pickle.dumps(ds.decode), 128, partial, offset)) as pool:
            fs = [pool.submit(my_task, c, sync) for c in chunks]
            res = [f.result() for f in as_completed(fs)]
        wall = time.time() - T0
        d = sorted(r[2] for r in res)
        s = sorted(r[1] for r in res)
        print(f"fdatasync={sync}: wall {wall:.2f}s; task secs median {d[len(d) // 2]:.2f} max {d[-1]:.2f}; "
              f"first task start {s[0]:.2f}s last {s[-1]:.2f}s", flush=True)
