#!/usr/bin/env python3
"""bench/history.py - zkflow with a long history (History that scales, 6).

    python3 bench/history.py ZKFLOW TMPDIR [SIZES]

For each size (task instances; default 10000,1000000) it writes a store
holding that many finished task instances -- runs of a 10-task DAG, every
run and task instance succeeded -- straight into the history tables of
the embedded store's SQLite file (docs/history.md: runs, task_instances,
run_counts), as a test fixture would.  Then it starts `zkflow standalone`
on it and times, best of REPS (3):

    start     from the process start until /api/v1/health answers
    list      `zkflow runs list hist` (its first page) on the same store
    api_runs  GET /api/v1/dags/hist/runs?limit=25
    metrics   GET /metrics
    create    POST /api/v1/dags/hist/runs until the run has succeeded
              (the scheduler creates, starts and ends a 10-task run)

Prints one line per size and a RESULT line: "<name>_<size>=<seconds>"
("failed" when the request failed, e.g. closed by the front door's 10 s
I/O timeout).
"""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

TASKS = 10
REPS = int(os.environ.get("REPS_HISTORY", "3"))

DAG = """local flow = require "zkflow"
return flow.dag {
  id = "hist",
  tasks = function(t)
    local prev
    for i = 1, %d do
      local x = t.empty { id = "t" .. i }
      if prev then local _ = prev >> x end
      prev = x
    end
  end,
}
""" % TASKS


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fixture(zkflow, db, n_tis):
    """A store with n_tis finished task instances of DAG hist."""
    # The real store makes its file, and the history its tables
    # (lua/zkflow/history/schema.lua), when a command first opens them.
    for cmd in (["zk", "set", "/zkflow/runs", ""], ["runs", "list", "hist"]):
        subprocess.run([zkflow, "--db", db] + cmd, check=True, stdout=subprocess.DEVNULL)
    runs = n_tis // TASKS
    con = sqlite3.connect(db)
    # a cache that holds the indexes: ten times faster than the default
    con.execute("PRAGMA cache_size = -400000")
    base = 1700000000
    with con:
        con.execute("""
            WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < ? - 1),
            v AS (SELECT i, ? + i * 60 AS ts,
                         strftime('%Y-%m-%dT%H:%M:%S', ? + i * 60, 'unixepoch') || '+00:00' AS ld
                  FROM r)
            INSERT INTO runs (dag_id, run_id, state, run_type, logical_date, logical_ts,
                              data_interval_start, data_interval_end, conf, version, queued_at,
                              start_date, end_date, external_trigger, clean_ts)
            SELECT 'hist', 'scheduled__' || ld, 'success', 'scheduled', ld, ts, ld, ld, '{}',
                   NULL, ld, ld, ld, 0, ts
            FROM v""", (runs, base, base))
        con.execute("""
            WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < ? - 1),
            v AS (SELECT i % ? AS k,
                         strftime('%Y-%m-%dT%H:%M:%S', ? + (i / ?) * 60, 'unixepoch') || '+00:00'
                         AS ld FROM r)
            INSERT INTO task_instances (dag_id, run_id, task_id, state, try_number, max_tries,
                                        operator, start_date, end_date, duration, log, worker,
                                        extra)
            SELECT 'hist', 'scheduled__' || ld, 't' || (k + 1), 'success', 1, 0, 'empty',
                   ld, ld, 0.001, NULL, NULL, NULL
            FROM v""", (runs * TASKS, TASKS, base, TASKS))
        con.execute("INSERT INTO run_counts (dag_id, state, n) VALUES ('hist', 'success', ?) "
                    "ON CONFLICT (dag_id, state) DO UPDATE SET n = run_counts.n + excluded.n",
                    (runs,))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return runs


def get(url, data=None):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


def timed(fn):
    """Seconds fn() took, or the reason it failed (a string)."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:  # a closed connection is a result here
        return "failed after %.1f s (%s)" % (time.perf_counter() - t0, type(e).__name__)
    return time.perf_counter() - t0


def better(a, b):
    if isinstance(a, str):
        return b
    if isinstance(b, str):
        return a
    return min(a, b)


def measure(zkflow, work, n_tis):
    db = os.path.join(work, "zkflow.db")
    dags = os.path.join(work, "dags")
    os.makedirs(dags, exist_ok=True)
    with open(os.path.join(dags, "hist.lua"), "w") as f:
        f.write(DAG)
    t0 = time.perf_counter()
    runs = fixture(zkflow, db, n_tis)
    made = time.perf_counter() - t0
    best = {}
    for rep in range(REPS):
        port = free_port()
        url = "http://127.0.0.1:%d" % port
        t0 = time.perf_counter()
        p = subprocess.Popen([zkflow, "standalone", dags, "--db", db, "--api",
                              "127.0.0.1:%d" % port],
                             cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    get(url + "/api/v1/health")
                    break
                except OSError:
                    if p.poll() is not None:
                        raise SystemExit("zkflow standalone exited %s" % p.returncode)
                    time.sleep(0.005)
            got = {"start": time.perf_counter() - t0}
            got["api_runs"] = timed(lambda: get(url + "/api/v1/dags/hist/runs?limit=25"))
            got["metrics"] = timed(lambda: get(url + "/metrics"))
            got["list"] = timed(lambda: subprocess.run(
                [zkflow, "runs", "list", "hist", "--db", db], check=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            def create():
                rid = json.loads(get(url + "/api/v1/dags/hist/runs",
                                     b'{"dag_run_id": "bench_%d_%d"}' % (n_tis, rep)))["run_id"]
                while json.loads(get(url + "/api/v1/dags/hist/runs/" + rid))["state"] != "success":
                    time.sleep(0.002)
            got["create"] = timed(create)
        finally:
            p.terminate()
            p.wait()
        for k, v in got.items():
            best[k] = better(best.get(k, v), v)
    size = os.path.getsize(db) + sum(os.path.getsize(db + s) for s in ("-wal",)
                                     if os.path.exists(db + s))
    return best, runs, made, size


def main():
    zkflow, tmp = sys.argv[1], sys.argv[2]
    sizes = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "10000,1000000").split(",")]
    fields = []
    for n in sizes:
        work = os.path.join(tmp, "h%d" % n)
        os.makedirs(work, exist_ok=True)
        best, runs, made, size = measure(zkflow, work, n)
        def show(v):
            return v if isinstance(v, str) else "%.1f ms" % (v * 1000)
        print("history %d task instances (%d runs, store %.0f MB, written in %.1f s): %s" % (
            n, runs, size / 1e6, made,
            ", ".join("%s %s" % (k, show(best[k]))
                      for k in ("start", "list", "api_runs", "metrics", "create"))))
        fields += ["%s_%d=%s" % (k, n, "failed" if isinstance(v, str) else "%.6f" % v)
                   for k, v in sorted(best.items())]
        subprocess.run(["rm", "-rf", work])
    print("RESULT history sizes=%s %s" % (",".join(map(str, sizes)), " ".join(fields)))


if __name__ == "__main__":
    main()
