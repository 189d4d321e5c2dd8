#!/usr/bin/env bash
# spec/page_test.sh - the web page at "/" in headless Chromium, served by a
# running `zkflow standalone`: the DAG list with its import errors, the
# health and members lines, the grid of runs x tasks coloured by state (a
# running task, then the same run ended: the page reads the API live), a
# task's log opened from a link (#dag=..&run=..&task=..), the first DAG
# chosen when the link names none, 25 runs with an "older runs" button
# that loads more (clicked through the DevTools protocol), and signing in
# and out with a session cookie against an API that asks who is there.
#
#   spec/page_test.sh        (after `make`; prints "N passed, N failed")
set -u
cd "$(dirname "$0")/.." || exit 2
ZKFLOW=${ZKFLOW:-$PWD/build/zkflow}
T=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-page.XXXXXX")
passed=0
failed=0
SA=

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}
cleanup() {
    [ -n "$SA" ] && kill -9 "$SA" 2>/dev/null
    [ -n "${KEEP:-}" ] && echo "kept $T" && return
    rm -rf "$T"
}
trap cleanup EXIT

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
    echo "page: no chromium (make deps installs it)"
    echo "0 passed, 1 failed"
    exit 1
fi

mkdir -p "$T/dags"
cat > "$T/dags/page_demo.lua" <<'LUA'
local flow = require "zkflow"
return flow.dag { id = "page_demo", start_date = "2026-01-01T00:00:00Z",
  params = { sleep = 0 },
  tasks = function(t)
    local a = t.shell { id = "a", cmd = "echo hello from a; sleep {{ params.sleep }}" }
    local b = t.lua { id = "b", run = function() error("b broke on purpose") end }
    local _ = a >> b
  end }
LUA
echo 'return 1 +' > "$T/dags/broken.lua"

PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$T" && exec "$ZKFLOW" standalone dags --api "127.0.0.1:$PORT") > "$T/sa.log" 2>&1 &
SA=$!
disown "$SA"   # no "Killed" notice when the cleanup stops it
for _ in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$PORT/api/v1/health" > /dev/null 2>&1 && break
    sleep 0.1
done

# page FRAGMENT: the DOM after the page's scripts ran (5 s of virtual time).
page() {
    "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --no-first-run \
        --user-data-dir="$T/chromium" --virtual-time-budget=5000 \
        --dump-dom "http://127.0.0.1:$PORT/$1" 2>/dev/null
}

# dom_get FILE WHAT: a fact about the DOM in FILE, through Python's parser:
#   text:ID       the text of the element with that id
#   selected      the selected DAG row's first cell
#   grid          "task:state ..." of the grid's task rows, one run column
#   runs          the run column headers' states
dom_get() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import sys
from html.parser import HTMLParser

class P(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.texts, self.cur = [], {}, None
        self.rows, self.row, self.in_grid = [], None, 0
        self.run_cells, self.sel, self.in_sel, self.in_th = [], None, False, False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        ident = a.get("id")
        self.stack.append((tag, ident))
        if ident:
            self.texts.setdefault(ident, "")
        if ident == "grid":
            self.in_grid = len(self.stack)
        cls = (a.get("class") or "").split()
        if tag == "tr" and "dag" in cls and "sel" in cls:
            self.in_sel = True
        if self.in_grid and tag == "tr":
            self.row = []
        if self.in_grid and tag == "th" and "run" in cls:
            self.in_th = True
        if self.in_grid and tag == "span" and "cell" in cls:
            state = [c for c in cls if c != "cell"][0]
            if self.in_th:
                self.run_cells.append(state)
            elif self.row is not None:
                self.row.append(state)
    def handle_endtag(self, tag):
        while self.stack:
            t, ident = self.stack.pop()
            if ident == "grid":
                self.in_grid = 0
            if t == tag:
                break
        if tag == "tr":
            if self.row:
                self.rows.append(self.row)
            self.row = None
            self.in_sel = False
        if tag == "th":
            self.in_th = False
    def handle_data(self, data):
        for _, ident in self.stack:
            if ident:
                self.texts[ident] += data
        if self.in_sel and self.sel is None and data.strip():
            self.sel = data.strip()
        if self.row is not None and not self.row and data.strip():
            self.row.append("name=" + data.strip())

p = P()
p.feed(open(sys.argv[1], encoding="utf-8").read())
what = sys.argv[2]
if what.startswith("text:"):
    print(p.texts.get(what[5:], "").strip())
elif what == "selected":
    print(p.sel or "")
elif what == "grid":
    out = []
    for r in p.rows:
        if len(r) > 1 and r[0].startswith("name="):
            out.append(r[0][5:] + ":" + ",".join(r[1:]))
    print(" ".join(out))
elif what == "runs":
    print(",".join(p.run_cells))
PY
}

# ---- a run in progress, then ended ------------------------------------------------

(cd "$T" && "$ZKFLOW" dags trigger page_demo --run-id r1 --conf '{"sleep": 8}' > /dev/null)
running() { [ "$("$ZKFLOW" tasks state page_demo r1 a --db "$T/zkflow.db" 2>/dev/null)" = running ]; }
for _ in $(seq 1 30); do running && break; sleep 0.1; done
page "#dag=page_demo" > "$T/p1.html"
check "the grid: a running task is green while it runs" test "$(dom_get "$T/p1.html" grid)" = "a:running b:none"
check "the page loads (health line)" test "$(dom_get "$T/p1.html" text:health)" = "status ok, 1 dags, store sqlite"
check "the members line names the standalone scheduler as leader" \
    sh -c "echo '$(dom_get "$T/p1.html" text:members)' | grep -q '^1 scheduler(s), leader standalone-'"
check "the DAG named in the link is selected" test "$(dom_get "$T/p1.html" selected)" = page_demo
check "the import error of broken.lua is shown" \
    sh -c "echo '$(dom_get "$T/p1.html" text:importerrors | tr -d "'")' | grep -q 'broken.lua'"

wait_ended() {
    for _ in $(seq 1 200); do
        st=$("$ZKFLOW" runs show page_demo r1 --db "$T/zkflow.db" --json 2>/dev/null |
             /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
        [ "$st" = failed ] || [ "$st" = success ] && return 0
        sleep 0.1
    done
    return 1
}
wait_ended
page "#dag=page_demo" > "$T/p2.html"
check "the grid: the run's column is red (failed)" test "$(dom_get "$T/p2.html" runs)" = failed
check "the grid: a succeeded, b failed" test "$(dom_get "$T/p2.html" grid)" = "a:success b:failed"

# ---- a task's log from a link -------------------------------------------------------

page "#dag=page_demo&run=r1&task=a" > "$T/p3.html"
check "a link to a task opens its log" \
    sh -c "echo '$(dom_get "$T/p3.html" text:log | tr -d "'")' | grep -q 'hello from a'"
check "the log's title names the task and the run" \
    test "$(dom_get "$T/p3.html" text:logtitle)" = "a - r1"
page "#dag=page_demo&run=r1&task=b" > "$T/p4.html"
check "a failed Lua task's log has its error" \
    sh -c "echo '$(dom_get "$T/p4.html" text:log | tr -d "'")' | grep -q 'b broke on purpose'"

# ---- no link: the first DAG ------------------------------------------------------------

page "" > "$T/p5.html"
check "without a link the first DAG is shown" test "$(dom_get "$T/p5.html" selected)" = page_demo
check "and its grid" test "$(dom_get "$T/p5.html" grid)" = "a:success b:failed"

# ---- older runs, on request ------------------------------------------------------
#
# cdp URL STEP...: drives Chromium through the DevTools protocol (over
# --remote-debugging-pipe, no extra tool): opens URL, then waits for each
# STEP, a JavaScript expression, to be true (15 s at most) and prints what
# the last one gave.  A step may act (click a button) and answer true.
cdp() {
    /usr/bin/python3 - "$CHROMIUM" "$T/cdp-profile" "$@" <<'PY'
import json, os, subprocess, sys, time
chromium, profile, url, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
to_chrome = os.pipe()
from_chrome = os.pipe()
def fds():
    # copies first: the pipes may be fds 3 and 4 themselves (close-on-exec)
    r, w = os.dup(to_chrome[0]), os.dup(from_chrome[1])
    os.dup2(r, 3)
    os.dup2(w, 4)
p = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                      "--no-first-run", "--remote-debugging-pipe",
                      "--user-data-dir=" + profile, "about:blank"],
                     preexec_fn=fds, close_fds=False,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(to_chrome[0]); os.close(from_chrome[1])
buf, seq = b"", [0]
def call(method, params, session=None):
    global buf
    seq[0] += 1
    msg = {"id": seq[0], "method": method, "params": params}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome[1], json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = os.read(from_chrome[0], 65536)
            if not chunk:
                raise SystemExit("chromium closed the pipe")
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        m = json.loads(raw)
        if m.get("id") == seq[0]:
            return m.get("result", {})
try:
    target = call("Target.createTarget", {"url": url})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    value = None
    for step in steps:
        deadline = time.time() + 15
        while True:
            r = call("Runtime.evaluate", {"expression": step, "returnByValue": True}, session)
            value = r.get("result", {}).get("value")
            if value or time.time() > deadline:
                break
            time.sleep(0.1)
        if not value:
            print("step never true: %s (got %r)" % (step, value))
            sys.exit(1)
    print(value)
finally:
    p.kill()
    p.wait()
PY
}

for i in $(seq 10 36); do
    (cd "$T" && "$ZKFLOW" dags trigger page_demo --run-id "o$i" > /dev/null)
done
COLS="document.querySelectorAll('#grid th.run').length"
OLDER="document.getElementById('older')"
got=$(cdp "http://127.0.0.1:$PORT/#dag=page_demo" \
    "$COLS === 25 && $OLDER.style.display !== 'none' && $OLDER.textContent" )
check "25 runs shown, and a button for the 3 older ones" test "$got" = "older runs (3 more)"
got=$(cdp "http://127.0.0.1:$PORT/#dag=page_demo" \
    "$COLS === 25 && ($OLDER.click(), true)" \
    "$COLS === 28 && $OLDER.style.display === 'none' && document.getElementById('shown').textContent")
check "\"older runs\" loads them: 28 columns, the button gone" test "$got" = "28 of 28 runs"
got=$(cdp "http://127.0.0.1:$PORT/#dag=page_demo" \
    "$COLS === 25 && Array.prototype.map.call(document.querySelectorAll('#grid th.run'), function (t) { return t.title; }).slice(-2).join(',')")
check "the newest run is on the right" test "$got" = "o35,o36"

# ---- signing in with a session cookie ----------------------------------------------
#
# `zkflow api` on 0.0.0.0 asks who is there: the page shows its sign-in
# form, signs in with a password (POST /api/v1/session), and the session
# lives in an HttpOnly cookie no script of the page can read.
printf 'operator pass\n' | "$ZKFLOW" users add ops --role operator --password-stdin \
    --db "$T/zkflow.db" > /dev/null
APORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$T" && exec "$ZKFLOW" api --api "0.0.0.0:$APORT") > "$T/api.log" 2>&1 &
AP=$!
disown "$AP"
for _ in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$APORT/api/v1/health" > /dev/null 2>&1 && break
    sleep 0.1
done
LOGIN="document.getElementById('login')"
got=$(cdp "http://127.0.0.1:$APORT/#dag=page_demo" \
    "$LOGIN.style.display !== 'none' && document.getElementById('daglist').children.length === 0" \
    "(document.getElementById('username').value = 'ops', document.getElementById('password').value = 'operator pass', $LOGIN.requestSubmit(), true)" \
    "$LOGIN.style.display === 'none' && document.getElementById('whoami').textContent === 'ops (operator)' && $COLS === 25" \
    "(document.cookie.indexOf('zkflow_session') < 0) && (window.zkfSignedIn = 'signed in, cookie hidden')" \
    "(document.getElementById('logout').click(), true)" \
    "$LOGIN.style.display !== 'none' && document.getElementById('whoami').textContent === '' && window.zkfSignedIn + ', signed out'")
check "the page signs in with a password; its session cookie is HttpOnly; signing out asks again" \
    test "$got" = "signed in, cookie hidden, signed out"
kill -9 "$AP" 2>/dev/null

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
