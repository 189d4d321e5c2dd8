-- tools/cli-docs.lua OUTDIR: writes the man pages (OUTDIR/man/*.1) and the
-- bash completion (OUTDIR/completion/zkflow) from zkflow.cli's command
-- table.  Run by `make` through the binary it built:
--   build/zkflow lua tools/cli-docs.lua build
local core = require "zkflow.core"
local cli = require "zkflow.cli"
local docs = require "zkflow.cli.docs"

local out = assert(arg[1], "usage: zkflow lua tools/cli-docs.lua OUTDIR")
assert(core.mkdirs(out .. "/man") and core.mkdirs(out .. "/completion"))

local function write(path, text)
    local f = assert(io.open(path .. ".tmp", "w"))
    f:write(text)
    f:close()
    assert(os.rename(path .. ".tmp", path))
end

for _, p in ipairs(docs.pages(cli, core.version)) do
    write(out .. "/man/" .. p[1], p[2])
end
write(out .. "/completion/zkflow", docs.completion(cli))
