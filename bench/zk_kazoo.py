"""bench/zk_kazoo.py HOSTS N [WINDOW]: kazoo (python3-kazoo), N creates then
N sets of 100-byte nodes with create_async / set_async, at most WINDOW in
flight.  Prints "RESULT kazoo_create=OPS kazoo_set=OPS"."""
import os
import sys
import time

from kazoo.client import KazooClient


def timed(zk, calls, window):
    t0 = time.monotonic()
    pending = []
    for call in calls:
        pending.append(call())
        if len(pending) >= window:
            pending.pop(0).get()
    for p in pending:
        p.get()
    return time.monotonic() - t0


def main():
    hosts, n = sys.argv[1], int(sys.argv[2])
    window = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    value = b"v" * 100
    zk = KazooClient(hosts=hosts, timeout=10)
    zk.start()
    base = "/bench-kazoo-%d" % os.getpid()
    zk.create(base, b"")
    paths = ["%s/n%07d" % (base, i) for i in range(n)]
    tc = timed(zk, [lambda p=p: zk.create_async(p, value) for p in paths], window)
    ts = timed(zk, [lambda p=p: zk.set_async(p, value) for p in paths], window)
    zk.delete(base, recursive=True)
    zk.stop()
    zk.close()
    print("RESULT kazoo_create=%.0f kazoo_set=%.0f n=%d window=%d" % (n / tc, n / ts, n, window))


main()
