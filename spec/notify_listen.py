#!/usr/bin/env python3
"""A stand-in for systemd's notification socket (sd_notify(3)).

notify_listen.py ADDR OUT [SECONDS]: binds a unix datagram socket at ADDR
(a leading '@' is an abstract name, as in $NOTIFY_SOCKET), writes "bound"
to OUT.bound, then appends every datagram received to OUT until one holds
READY=1 or SECONDS (default 30) pass.
"""
import socket
import sys
import time

addr, out = sys.argv[1], sys.argv[2]
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + addr[1:] if addr.startswith("@") else addr)
with open(out + ".bound", "w") as f:
    f.write("bound\n")
end = time.time() + limit
while time.time() < end:
    s.settimeout(max(0.1, end - time.time()))
    try:
        data = s.recv(4096).decode()
    except socket.timeout:
        break
    with open(out, "a") as f:
        f.write(data + "\n")
    if "READY=1" in data.split("\n"):
        break
