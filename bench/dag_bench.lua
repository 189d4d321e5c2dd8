-- bench/dag_bench.lua MODE DIR [REPS]: the zkflow side of benchmarks 1-3.
--
-- MODE noop:  40 layers x 100 no-op Lua tasks (4,000), default limits.
-- MODE shell: 20 layers x 20 `true` shell tasks (400), max_active_tasks 2.
-- MODE chain: a chain of 200 `true` shell tasks.
--
-- Prints one line `RESULT mode=... best=<s> p50=<s> p99=<s> edges=<n>` for
-- bench/run.sh, which computes the ratios against the peers.
local flow = require "zkflow"
local lib = require "lib"

local mode, dir, reps = arg[1], arg[2], tonumber(arg[3] or "3")
if not (mode and dir) then
    io.stderr:write("usage: dag_bench.lua noop|shell|chain DIR [REPS]\n")
    os.exit(2)
end

local function noop() end
local function lua_task(t, id, after)
    return t.lua { id = id, after = after, run = noop }
end
local function shell_task(t, id, after)
    return t.shell { id = id, after = after, cmd = "true" }
end

local dag
if mode == "noop" then
    dag = lib.layered("bench_noop", 40, 100, lua_task)
elseif mode == "shell" then
    dag = lib.layered("bench_shell", 20, 20, shell_task, { max_active_tasks = 2 })
elseif mode == "chain" then
    dag = lib.layered("bench_chain", 200, 1, shell_task)
else
    io.stderr:write("dag_bench.lua: unknown mode '" .. mode .. "'\n")
    os.exit(2)
end

local ok, err = pcall(flow.run, function()
    local best, p50, p99, edges = lib.measure(dag, dir, reps)
    if not best then error(p50, 0) end
    print(string.format("RESULT mode=%s best=%.6f p50=%.6f p99=%.6f edges=%d",
                        mode, best, p50, p99, edges))
end)
if not ok then
    io.stderr:write("dag_bench.lua " .. mode .. ": " .. tostring(err) .. "\n")
    os.exit(1)
end
