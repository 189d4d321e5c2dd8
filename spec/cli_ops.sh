# Sourced by spec/cli_test.sh (its helpers: run, expect, has, jexpect,
# json_get; $T, $ZKFLOW): the operator's side of the command line, each
# behaviour in its own folder $T/ops so that the suite's other stores are
# not touched: the version, the settings file and check-config, ZKFLOW_HOME,
# the DAG folder a standalone records, trigger --wait, tasks logs -f,
# runs list --state, config set near misses, dags test streaming and
# tasks test --xcom.

O=$T/ops
mkdir -p "$O/dags" "$O/etc" "$O/elsewhere"
cat >"$O/dags/slow.lua" <<'DAG'
local flow = require "zkflow"
return flow.dag {
  id = "slow",
  tasks = function(t)
    local a = t.shell { id = "a", cmd = "for i in 1 2 3; do echo tick $i; sleep 0.4; done" }
    local b = t.lua   { id = "b", run = function(ctx) return ctx.xcom.pull("a") end }
    local _ = a >> b
  end,
}
DAG
cat >"$O/dags/bad.lua" <<'DAG'
local flow = require "zkflow"
return flow.dag {
  id = "bad",
  tasks = function(t)
    local a = t.shell { id = "first", cmd = "echo before the fall" }
    local b = t.shell { id = "fall", cmd = "echo falling; exit 4" }
    local _ = a >> b
  end,
}
DAG
cat >"$O/dags/pull.lua" <<'DAG'
local flow = require "zkflow"
return flow.dag {
  id = "pull",
  tasks = function(t)
    local up = t.lua { id = "up", run = function() return { n = 1 } end }
    local down = t.lua { id = "down", run = function(ctx) return ctx.xcom.pull("up").n * 10 end }
    local echo = t.shell { id = "echo", cmd = "echo got {{ xcom('up') }}" }
    local _ = up >> { down, echo }
  end,
}
DAG

# the commands below run in $O (run and expect of cli_test.sh)
WORK=$O

# ---- --version -----------------------------------------------------------------

want_version="zkflow $(sed -n 's/^#define ZKF_VERSION "\(.*\)"/\1/p' core/include/zkflow.h)"
for flag in --version -V; do
    expect "zkflow $flag exits 0" 0 $flag
    if [ "$(cat "$T/out")" = "$want_version" ]; then ok "zkflow $flag prints the version"; else bad "zkflow $flag prints the version" "$(cat "$T/out")"; fi
done

# ---- the settings file, the environment, the flags ---------------------------

cat >"$O/etc/zkflow.conf" <<'CONF'
# a comment
db = ../from-file.db
dags = /nonexistent/file-dags
session_timeout = 3
CONF
expect "check-config with a file exits 1 on a missing DAG folder" 1 --config etc/zkflow.conf check-config --json
jexpect "check-config: names the file" "$T/out" "v.file" "etc/zkflow.conf"
jexpect "check-config: a file's relative path is relative to the file" "$T/out" \
    "v.settings[1].name .. ' ' .. v.settings[1].value .. ' ' .. v.settings[1].source" "db etc/../from-file.db file"
jexpect "check-config: session-timeout from the file" "$T/out" "v.settings[6].value .. ' ' .. v.settings[6].source" "3 file"
jexpect "check-config: the problem" "$T/out" "v.problems[1]" "no DAG folder /nonexistent/file-dags"
(cd "$O" && ZKFLOW_CONFIG=etc/zkflow.conf ZKFLOW_DAGS=dags timeout 30 "$ZKFLOW" check-config --json) >"$T/out" 2>"$T/err"
jexpect "check-config: ZKFLOW_CONFIG names the file, ZKFLOW_DAGS beats it" "$T/out" \
    "v.file .. ' ' .. v.settings[2].value .. ' ' .. v.settings[2].source .. ' ' .. tostring(v.ok)" "etc/zkflow.conf dags env true"
(cd "$O" && ZKFLOW_CONFIG=etc/zkflow.conf ZKFLOW_DAGS=/nowhere timeout 30 "$ZKFLOW" --dags dags check-config --json) >"$T/out" 2>"$T/err"
jexpect "check-config: a flag beats the environment" "$T/out" \
    "v.settings[2].value .. ' ' .. v.settings[2].source" "dags flag"
expect "check-config in plain words" 0 --config etc/zkflow.conf --dags dags check-config
has "check-config: a table of settings" "$T/out" "session-timeout  3"
cat >"$O/etc/bad.conf" <<'CONF'
dags = dags
paralelism = 4
root = zkflow
CONF
expect "a command refuses a settings file with a problem (exit 2)" 2 --config etc/bad.conf dags list
has "the problem names file and line, with the near miss" "$T/err" "etc/bad.conf:2: unknown setting 'paralelism'"
has "a bad value names its line" "$T/err" "etc/bad.conf:3: root: must start with '/'"
expect "check-config lists every problem (exit 1)" 1 --config etc/bad.conf check-config
has "check-config: the unknown setting" "$T/err" "etc/bad.conf:2: unknown setting 'paralelism'"
expect "--config of a missing file exits 2" 2 --config etc/none.conf dags list
has "--config: names the missing file" "$T/err" "no configuration file etc/none.conf"
expect "dags list reads the DAG folder the file names" 0 --config etc/zkflow.conf --dags dags dags list
(cd "$O" && ZKFLOW_CONFIG=etc/zkflow.conf timeout 30 "$ZKFLOW" zk set /probe x) >"$T/out" 2>"$T/err"
if [ -f "$O/from-file.db" ] && [ ! -f "$O/zkflow.db" ]; then
    ok "the file's db is the store"
else
    bad "the file's db is the store" "$(ls "$O")"
fi
rm -f "$O"/from-file.db*
(cd "$O" && ZKFLOW_CONFIG=etc/zkflow.conf ZKFLOW_DB=env.db timeout 30 "$ZKFLOW" zk set /probe x) >"$T/out" 2>"$T/err"
if [ -f "$O/env.db" ] && [ ! -f "$O/from-file.db" ]; then
    ok "ZKFLOW_DB beats the file's db"
else
    bad "ZKFLOW_DB beats the file's db" "$(ls "$O")"
fi
rm -f "$O"/env.db*

# ZKFLOW_HOME: its zkflow.db and dags/ without a flag
(cd "$O/elsewhere" && ZKFLOW_HOME=$O timeout 30 "$ZKFLOW" dags list --json) >"$T/out" 2>"$T/err"
jexpect "ZKFLOW_HOME: its dags/ is the DAG folder" "$T/out" "v.dags[1].dag_id" "bad"
(cd "$O/elsewhere" && ZKFLOW_HOME=$O timeout 30 "$ZKFLOW" check-config --json) >"$T/out" 2>"$T/err"
jexpect "ZKFLOW_HOME: its zkflow.db is the store" "$T/out" \
    "v.settings[1].value .. ' ' .. v.settings[1].source" "$O/zkflow.db home"

# ---- runs list --state, config set near misses ---------------------------------

expect "runs list --state of a state that does not exist exits 2" 2 runs list --state runing
has "runs list --state names the valid states" "$T/err" "'runing' is not a run state (one of queued, running, success, failed)"
expect "runs list --state success is fine" 0 runs list --state success
expect "config set of a near miss still sets it" 0 config set paralelism 4
has "config set warns of the near miss" "$T/err" "'paralelism' is not a key zkflow reads (did you mean 'parallelism'?)"
expect "config set of a key of one's own says nothing" 0 config set team.name data
if [ ! -s "$T/err" ]; then ok "config set: no warning for a key far from every known one"; else bad "config set: no warning" "$(cat "$T/err")"; fi
expect "config unset of the near miss" 0 config unset paralelism
expect "config unset" 0 config unset team.name

# ---- dags test streams the tasks' output; a failure's reason and log ----------

expect "dags test of a failing DAG exits 1" 1 dags test bad
has "dags test streams a task's output, prefixed by its id" "$T/out" "[first] before the fall"
has "dags test streams the failing task's output" "$T/out" "[fall] falling"
has "dags test says the failed task's reason" "$T/out" "fall: command exited with code 4 (log: "
flog=$(sed -n 's/^\[fall\] log: //p' "$T/out")
if [ -n "$flog" ] && grep -q falling "$flog" 2>/dev/null; then ok "dags test names the failed task's log"; else bad "dags test names the failed task's log" "'$flog'"; fi
# streamed as it runs: tick 1 is out before the task ends
(cd "$O" && timeout 30 "$ZKFLOW" dags test slow) 2>/dev/null | while IFS= read -r line; do
    printf '%s %s\n' "$(date +%s.%N)" "$line"
done >"$T/stamped"
t1=$(awk '/\[a\] tick 1/ {print $1; exit}' "$T/stamped")
t3=$(awk '/\[a\] tick 3/ {print $1; exit}' "$T/stamped")
if [ -n "$t1" ] && [ -n "$t3" ] && awk -v a="$t1" -v b="$t3" 'BEGIN { exit !(b - a > 0.5) }'; then
    ok "dags test streams a task's lines as they are written"
else
    bad "dags test streams a task's lines as they are written" "$(head -5 "$T/stamped")"
fi
expect "dags test --json keeps stdout JSON" 1 dags test bad --json
jexpect "dags test --json: the object" "$T/out" "v.state" "failed"
has "dags test --json: the stream goes to stderr" "$T/err" "[fall] falling"

# ---- tasks test --xcom ------------------------------------------------------------

expect "tasks test without the upstream's XCom fails" 1 tasks test pull down
expect "tasks test --xcom stands in for the upstream" 0 tasks test pull down --xcom 'up={"n":4}' --json
jexpect "tasks test --xcom: the task pulled it" "$T/out" "v.xcom" "40"
expect "tasks test --xcom reaches templates" 0 tasks test pull echo --xcom 'up="hey"' --json
xlog=$(json_get "$T/out" "v.log")
if grep -q "got hey" "$xlog" 2>/dev/null; then ok "tasks test --xcom: the template pulled it"; else bad "tasks test --xcom: the template pulled it" "$xlog"; fi
expect "tasks test --xcom of an unknown task exits 2" 2 tasks test pull down --xcom 'uq=1'
has "tasks test --xcom names it, with the near miss" "$T/err" "--xcom: no task 'uq' in DAG 'pull' (did you mean 'up'?)"
expect "tasks test --xcom that is not JSON exits 2" 2 tasks test pull down --xcom 'up={n'
expect "tasks test --xcom without = exits 2" 2 tasks test pull down --xcom up

# ---- a standalone records its folder; trigger --wait; tasks logs -f ---------------

(cd "$O" && exec "$ZKFLOW" standalone dags --no-api) >"$T/ops-sa.out" 2>"$T/ops-sa.err" &
OPS_PID=$!
for _ in $(seq 1 50); do
    grep -q "zkflow standalone:" "$T/ops-sa.out" 2>/dev/null && break
    sleep 0.1
done
WORK=$O/elsewhere expect "dags trigger --db finds the DAG folder the standalone recorded; --wait exits 1 for a failed run" 1 --db ../zkflow.db dags trigger bad --wait
has "trigger --wait prints the run id" "$T/out" "manual__"
has "trigger --wait: progress on stderr" "$T/err" "task first success"
has "trigger --wait: a failed task's reason" "$T/err" "task fall failed: command exited with code 4"
has "trigger --wait: the run's end" "$T/err" ": run failed"
expect "trigger --wait of a good run exits 0" 0 dags trigger slow --wait --json
jexpect "trigger --wait --json: the end state" "$T/out" "v.state" "success"
rid=$( (cd "$O" && "$ZKFLOW" dags trigger slow) )
(cd "$O" && timeout 30 "$ZKFLOW" tasks logs slow "$rid" a -f) 2>"$T/err" | while IFS= read -r line; do
    printf '%s %s\n' "$(date +%s.%N)" "$line"
done >"$T/followed"
if grep -q "tick 3" "$T/followed"; then ok "tasks logs -f prints the whole log and ends with the try"; else bad "tasks logs -f prints the whole log" "$(cat "$T/followed" "$T/err")"; fi
t1=$(awk '/tick 1/ {print $1; exit}' "$T/followed")
t3=$(awk '/tick 3/ {print $1; exit}' "$T/followed")
if [ -n "$t1" ] && [ -n "$t3" ] && awk -v a="$t1" -v b="$t3" 'BEGIN { exit !(b - a > 0.5) }'; then
    ok "tasks logs -f prints lines as the try writes them"
else
    bad "tasks logs -f prints lines as the try writes them" "$(cat "$T/followed")"
fi
expect "tasks logs -f of an unknown task exits 1" 1 tasks logs slow "$rid" zz -f
rid=$( (cd "$O" && "$ZKFLOW" dags trigger bad) )
expect "tasks logs -f of a task not started yet waits for its try" 0 tasks logs bad "$rid" fall -f
has "tasks logs -f: that try's log" "$T/out" "falling"
kill -TERM "$OPS_PID" 2>/dev/null
wait "$OPS_PID" 2>/dev/null
OPS_PID=

# ---- man pages: made from the table that prints --help, and saying the same -----

MANDIR=${B:-build}/man
man_text() {
    LC_ALL=C MANWIDTH=2000 man -l "$1" 2>/dev/null | col -b | tr -s ' \t\n' '   '
}
# help_parts HELP-FILE: the usage (without "usage: "), the help line and each
# option line of a --help text, one per line, whitespace collapsed
help_parts() {
    awk 'NR == 1 { sub(/^usage: /, ""); print; next }
         NR == 3 { print; next }
         /^options:/ { inopt = 1; next }
         /^$/ { inopt = 0 }
         inopt && /^  -/ { sub(/^  /, ""); n = index($0, "  "); print substr($0, 1, n - 1);
                            rest = substr($0, n); sub(/^ +/, "", rest); print rest }' "$1" |
        tr -s ' \t' '  '
}
if ! [ -f "$MANDIR/zkflow.1" ]; then
    bad "make builds the man pages" "no $MANDIR/zkflow.1"
elif command -v man >/dev/null; then
    # every command of the table: families' verbs and the rest
    families=$(cd "$O" && "$ZKFLOW" --help | awk '/^commands:/ {c = 1; next} /^$/ {c = 0} c {print $1}')
    checked=0
    missing=""
    for c in $families; do
        verbs=$(cd "$O" && "$ZKFLOW" "$c" --help | awk '/^commands:/ {c = 1; next} /^$/ {c = 0} c {print $1}')
        if [ -n "$verbs" ] && [ "$(head -1 <(cd "$O" && "$ZKFLOW" "$c" --help))" = "usage: zkflow $c COMMAND [ARGS...]" ]; then
            page=$MANDIR/zkflow-$c.1
            if [ ! -f "$page" ]; then missing="$missing zkflow-$c.1"; continue; fi
            text=$(man_text "$page")
            for v in $verbs; do
                (cd "$O" && "$ZKFLOW" "$c" "$v" --help) >"$T/help"
                while IFS= read -r part; do
                    [ -z "$part" ] && continue
                    case "$text" in
                    *"$part"*) ;;
                    *) missing="$missing [$c $v: $part]" ;;
                    esac
                done < <(help_parts "$T/help")
                checked=$((checked + 1))
            done
        else
            text=$(man_text "$MANDIR/zkflow.1")
            (cd "$O" && "$ZKFLOW" "$c" --help) >"$T/help"
            while IFS= read -r part; do
                [ -z "$part" ] && continue
                case "$text" in *"$part"*) ;; *) missing="$missing [$c: $part]" ;; esac
            done < <(help_parts "$T/help")
            checked=$((checked + 1))
        fi
    done
    # the global options of zkflow --help in zkflow(1)
    text=$(man_text "$MANDIR/zkflow.1")
    (cd "$O" && "$ZKFLOW" --help) | awk '/^options/ {o = 1; next} /^$/ {o = 0} o' |
        sed 's/^  //' | awk '{ n = index($0, "  "); print substr($0, 1, n - 1); r = substr($0, n); sub(/^ +/, "", r); print r }' |
        tr -s ' ' ' ' >"$T/globals"
    while IFS= read -r part; do
        case "$text" in *"$part"*) ;; *) missing="$missing [global: $part]" ;; esac
    done <"$T/globals"
    if [ -z "$missing" ] && [ "$checked" -gt 30 ]; then
        ok "the man pages say what --help says, for all $checked commands and the global options"
    else
        bad "the man pages say what --help says" "$checked checked; missing:$missing"
    fi
    if LC_ALL=C man --warnings -l "$MANDIR"/*.1 2>&1 >/dev/null | grep -q .; then
        bad "groff reads the man pages without a warning" "$(LC_ALL=C man --warnings -l "$MANDIR"/*.1 2>&1 >/dev/null | head -3)"
    else
        ok "groff reads the man pages without a warning"
    fi
else
    echo "skip man page checks: no man(1) here"
fi

# ---- bash completion from the same table ---------------------------------------

COMPL=${B:-build}/completion/zkflow
# complete WORDS...: the completions bash's function offers for the line
# WORDS (the last one being completed), run in $O with zkflow on PATH
complete_line() {
    (cd "$O" && PATH="$(dirname "$ZKFLOW"):$PATH" bash -c '
        . "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        _zkflow
        [ ${#COMPREPLY[@]} -gt 0 ] && printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' _ "$PWD_COMPL" "$@")
}
PWD_COMPL=$(cd "$(dirname "$COMPL")" && pwd)/zkflow
got=$(bash -c '. "$1"; complete -p zkflow' _ "$PWD_COMPL")
if [ "$got" = "complete -F _zkflow zkflow" ]; then ok "the completion registers _zkflow for zkflow"; else bad "the completion registers _zkflow" "$got"; fi
ccheck() {
    local name=$1 want=$2
    shift 2
    local got
    got=$(complete_line "$@")
    if [ "$got" = "$want" ]; then ok "completion: $name"; else bad "completion: $name" "got '$got', expected '$want'"; fi
}
ccheck "commands" "dags " zkflow da
ccheck "a family's verbs" "test trigger " zkflow dags t
ccheck "a command's options" "--try " zkflow tasks logs --tr
ccheck "one-letter options" "-f " zkflow tasks logs -f
ccheck "global options" "--db --db-sync " zkflow --db
ccheck "DAG ids" "bad pull slow " zkflow dags trigger ""
ccheck "DAG ids after a global option with a value" "slow " zkflow --root /zkflow dags pause s
ccheck "run states" "failed " zkflow runs list --state f
ccheck "run ids of the DAG on the line" "$(cd "$O" && "$ZKFLOW" runs list slow --json | grep -o '"run_id":"[^"]*"' | cut -d'"' -f4 | sort | tr '\n' ' ')" zkflow tasks logs slow ""
ccheck "task ids of the DAG on the line" "a b " zkflow tasks state slow anyrun ""
ccheck "the DAG folder of --dags on the line" "$(cd "$O" && ls -d e*/ | sed 's|/$||' | sort | tr '\n' ' ')" zkflow --dags e
ccheck "nothing after the last positional" "" zkflow runs show slow r x ""

unset WORK
