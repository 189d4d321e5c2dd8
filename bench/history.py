#!/usr/bin/env python3
"""bench/history.py - zkflow with a long history (History that scales, 6).

    python3 bench/history.py ZKFLOW TMPDIR [SIZES]

For each size (task instances; default 10000,1000000) it writes a store
holding that many finished task instances -- runs of a 10-task DAG, every
run and task instance succeeded -- straight into the embedded store's
SQLite file, as a test fixture would (the layout of today's store: a node
per run under /zkflow/runs/<dag>/ and one per task instance under it; the
history tables of the `history` branch are not on main yet).  Then it
starts `zkflow standalone` on it and times, best of REPS (3):

    start     from the process start until /api/v1/health answers
    list      `zkflow runs list hist` (its first page) on the same store
    api_runs  GET /api/v1/dags/hist/runs?limit=25
    metrics   GET /metrics
    create    POST /api/v1/dags/hist/runs until the run has succeeded
              (the scheduler creates, starts and ends a 10-task run)

Prints one line per size and a RESULT line: "<name>_<size>=<seconds>"
("failed" when the request failed: today a list of 100,000 runs takes
longer than the front door's 10 s I/O timeout).
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
    # The real store makes its schema and the parent nodes.
    subprocess.run([zkflow, "--db", db, "zk", "set", "/zkflow/runs/hist", ""],
                   check=True, stdout=subprocess.DEVNULL)
    runs = n_tis // TASKS
    con = sqlite3.connect(db)
    # a cache that holds the indexes: ten times faster than the default
    con.execute("PRAGMA cache_size = -400000")
    base = 1700000000
    run_json = ("'{\"conf\":{},\"dag_id\":\"hist\",\"data_interval_end\":\"' || ld || '\","
                "\"data_interval_start\":\"' || ld || '\",\"end_date\":\"' || ld || '\","
                "\"external_trigger\":false,\"logical_date\":\"' || ld || '\","
                "\"queued_at\":\"' || ld || '\",\"run_id\":\"' || rid || '\","
                "\"run_type\":\"scheduled\",\"start_date\":\"' || ld || '\","
                "\"state\":\"success\",\"version\":null}'")
    ti_json = ("'{\"duration\":0.001,\"end_date\":\"' || ld || '\",\"max_tries\":0,"
               "\"operator\":\"empty\",\"start_date\":\"' || ld || '\",\"state\":\"success\","
               "\"task_id\":\"t' || (k + 1) || '\",\"try_number\":1}'")
    with con:
        con.execute("""
            WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < ? - 1),
            v AS (SELECT i, strftime('%Y-%m-%dT%H:%M:%S', ? + i * 60, 'unixepoch') AS t FROM r),
            w AS (SELECT i, t || '+00:00' AS ld, 'scheduled__' || t || '+00:00' AS rid FROM v)
            INSERT INTO znodes (path, parent, data, czxid, mzxid, pzxid, ctime, mtime,
                                version, cversion, aversion, owner, nchildren)
            SELECT '/zkflow/runs/hist/' || rid, '/zkflow/runs/hist',
                   CAST(""" + run_json + """ AS BLOB), 1, 1, 1, 0, 0, 0, ?, 0, 0, ?
            FROM w""", (runs, base, TASKS, TASKS))
        con.execute("""
            WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < ? - 1),
            v AS (SELECT i / ? AS j, i % ? AS k,
                         strftime('%Y-%m-%dT%H:%M:%S', ? + (i / ?) * 60, 'unixepoch') AS t FROM r),
            w AS (SELECT k, t || '+00:00' AS ld, 'scheduled__' || t || '+00:00' AS rid FROM v)
            INSERT INTO znodes (path, parent, data, czxid, mzxid, pzxid, ctime, mtime,
                                version, cversion, aversion, owner, nchildren)
            SELECT '/zkflow/runs/hist/' || rid || '/t' || (k + 1), '/zkflow/runs/hist/' || rid,
                   CAST(""" + ti_json + """ AS BLOB), 1, 1, 1, 0, 0, 0, 0, 0, 0, 0
            FROM w""", (runs * TASKS, TASKS, TASKS, base, TASKS))
        con.execute("UPDATE znodes SET nchildren = ?, cversion = ? WHERE path = '/zkflow/runs/hist'",
                    (runs, runs))
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
    # Best of REPS on the small store; once on the large one (a repetition
    # there costs tens of seconds today).
    for rep in range(REPS if n_tis <= 100000 else 1):
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
