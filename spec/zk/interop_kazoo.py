#!/usr/bin/python3
"""spec/zk/interop_kazoo.py - the kazoo side of spec/zk_interop_test.sh.

  interop_kazoo.py HOSTS hold PATH READY RELEASE  hold kazoo's Lock on PATH;
                                                  touch READY once held, wait
                                                  for the file RELEASE, release
  interop_kazoo.py HOSTS try PATH SECONDS         exit 0 when the lock is had
                                                  within SECONDS, 3 when not
  interop_kazoo.py HOSTS contenders PATH          print the lock's contenders
  interop_kazoo.py HOSTS set PATH HEXDATA         write bytes (made if missing)
  interop_kazoo.py HOSTS get PATH                 print the data as hex
"""
import os
import sys
import time

from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout


def main():
    hosts, cmd, path = sys.argv[1], sys.argv[2], sys.argv[3]
    zk = KazooClient(hosts=hosts, timeout=5)
    zk.start(timeout=10)
    try:
        if cmd == "hold":
            ready, release = sys.argv[4], sys.argv[5]
            lock = zk.Lock(path, "kazoo")
            lock.acquire(timeout=10)
            open(ready, "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.05)
            lock.release()
            return 0
        if cmd == "try":
            lock = zk.Lock(path, "kazoo")
            try:
                got = lock.acquire(timeout=float(sys.argv[4]))
            except LockTimeout:
                got = False
            if got:
                lock.release()
                return 0
            return 3
        if cmd == "contenders":
            print(",".join(zk.Lock(path).contenders()))
            return 0
        if cmd == "set":
            data = bytes.fromhex(sys.argv[4])
            zk.ensure_path(path)
            zk.set(path, data)
            return 0
        if cmd == "get":
            data, _ = zk.get(path)
            print(data.hex())
            return 0
        print("unknown command " + cmd, file=sys.stderr)
        return 2
    finally:
        zk.stop()
        zk.close()


if __name__ == "__main__":
    sys.exit(main())
