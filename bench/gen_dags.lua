-- bench/gen_dags.lua DIR N: writes N small DAG files into DIR for
-- benchmark 4: three tasks each (shell, lua, empty), no schedule, so the
-- scheduler holds them without ever creating a run.
local dir, n = arg[1], tonumber(arg[2] or "1000")
for i = 1, n do
    local path = ("%s/dag_%04d.lua"):format(dir, i)
    local f = assert(io.open(path, "w"))
    f:write(([[
local flow = require "zkflow"

return flow.dag {
  id = "bench_%04d",
  tags = { "bench" },
  tasks = function(t)
    local fetch = t.shell { id = "fetch", cmd = "echo {{ ds }}" }
    local parse = t.lua   { id = "parse", after = { fetch },
                            run = function(ctx) return ctx.ds end }
    t.empty { id = "done", after = { parse } }
  end,
}
]]):format(i))
    f:close()
end
