"""A front door under abuse (the hardening issue's probe 6): 50 clients that
send half a request and drip, one that stops mid-request, one with a
200 MB header.  The server must keep answering others, close the silent one
within its I/O timeout, refuse the huge header early, and keep its RSS
bounded.  Prints TAP-like "ok"/"FAIL" lines.

usage: http_limits.py PORT PID"""
import socket
import sys
import threading
import time
import urllib.request

port, pid = int(sys.argv[1]), int(sys.argv[2])


def rss_kb():
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def check(name, good, detail=""):
    print(("ok " if good else "FAIL ") + name + ("" if good else ": " + detail))
    sys.stdout.flush()


def health():
    t0 = time.time()
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health" % port,
                                    timeout=5) as r:
            return r.status, time.time() - t0
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        return str(e), time.time() - t0


rss0 = rss_kb()
stop = threading.Event()
slow = []
for _ in range(50):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    slow.append(s)


def drip():
    while not stop.is_set():
        for s in slow:
            try:
                s.send(b"a")
            except OSError:
                pass
        stop.wait(2)


dripper = threading.Thread(target=drip)
dripper.start()

silent = socket.create_connection(("127.0.0.1", port))
silent.sendall(b"POST /api/v1/dags/x/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
silent_t0 = time.time()

# The huge header: send until the server refuses or closes.
huge = socket.create_connection(("127.0.0.1", port))
huge.settimeout(10)
sent, chunk, refused = 0, b"X-Big: " + b"a" * 65536, False
huge.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
try:
    while sent < 200 * 1024 * 1024:
        huge.sendall(chunk)
        sent += len(chunk)
except OSError:
    refused = True
answer = b""
try:
    answer = huge.recv(200)
except OSError:
    pass
check("a 200 MB header is refused early (sent %d KiB)" % (sent // 1024),
      (refused or answer.startswith(b"HTTP/1.1 4")) and sent < 16 * 1024 * 1024,
      "sent %d bytes, answer %r" % (sent, answer[:60]))

st, took = health()
check("others are answered while 50 clients drip", st == 200 and took < 2,
      "%s after %.2fs" % (st, took))

silent.settimeout(20)
closed = False
try:
    closed = silent.recv(100) == b""
except OSError:
    closed = True
waited = time.time() - silent_t0
check("a client silent mid-request is closed within 15 s (%.1f s)" % waited,
      closed and waited < 15, "closed=%s after %.1fs" % (closed, waited))

st, took = health()
check("the server still answers after the abuse", st == 200, "%s" % st)
rss1 = rss_kb()
check("RSS stays bounded (%d -> %d KiB)" % (rss0, rss1), rss1 - rss0 < 30 * 1024,
      "grew by %d KiB" % (rss1 - rss0))
stop.set()
dripper.join()
for s in slow + [silent, huge]:
    s.close()
