"""bench/dask_noop.py REPS: the Dask side of benchmark 1.

The same layered graph as bench/dag_bench.lua's noop mode (40 layers of
100 no-op tasks, task (l, i) after (l-1, i)) run by dask.threaded.get, the
threaded scheduler, with its default pool (one thread per CPU).  Prints
`RESULT best=<s>`, the best of REPS runs; building the graph is not timed.
"""
import sys
import time

import dask.threaded


def noop(*_):
    return None


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    layers, width = 40, 100
    dsk = {}
    for layer in range(layers):
        for i in range(width):
            key = "t%d_%d" % (layer, i)
            if layer:
                dsk[key] = (noop, "t%d_%d" % (layer - 1, i))
            else:
                dsk[key] = (noop,)
    keys = list(dsk)
    best = None
    for _ in range(reps):
        t0 = time.perf_counter()
        dask.threaded.get(dsk, keys)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    print("RESULT best=%.6f" % best)


if __name__ == "__main__":
    main()
