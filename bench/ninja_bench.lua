-- bench/ninja_bench.lua DIR REPS [NINJA]: the ninja side of benchmark 2.
--
-- Runs `NINJA -j2 -C DIR` REPS times on the build.ninja that
-- bench/ninja_gen.sh wrote, removing ninja's log in between so that every
-- edge runs each time, and prints `RESULT best=<s>`: the wall time of the
-- whole ninja process (start, parse, 400 commands, exit), timed with
-- core.mono() around core.spawn, the same clock as the zkflow side.
local core = require "zkflow.core"

local dir, reps, ninja = arg[1], tonumber(arg[2] or "3"), arg[3] or "ninja"
if not dir then
    io.stderr:write("usage: ninja_bench.lua DIR [REPS [NINJA]]\n")
    os.exit(2)
end

local best, failure
local n = 0
local function once()
    os.remove(dir .. "/.ninja_log")
    os.remove(dir .. "/.ninja_deps")
    local t0 = core.mono()
    local p, err = core.spawn({ argv = { ninja, "-j2", "-C", dir } },
        function(code, sig, out)
            local dt = core.mono() - t0
            if code ~= 0 then
                failure = ("ninja exited %s%s: %s"):format(tostring(code),
                    sig and (" (signal " .. sig .. ")") or "", out or "")
                core.stop()
                return
            end
            if not best or dt < best then best = dt end
            n = n + 1
            if n < reps then once() else core.stop() end
        end)
    if not p then
        failure = err
        core.stop()
    end
end

core.run(once)
if failure or not best then
    io.stderr:write("ninja_bench.lua: " .. tostring(failure or "no result") .. "\n")
    os.exit(1)
end
print(("RESULT best=%.6f"):format(best))
