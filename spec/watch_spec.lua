-- core.watch_tree: the inotify watch behind hot reload.
local core = require "zkflow.core"

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(core.mkdirs(p .. "/sub"))
  return p
end

local function write(path, data)
  local f = assert(io.open(path, "w"))
  f:write(data)
  f:close()
end

describe("core.watch_tree", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("delivers a write-to-temp-then-rename as one change", function()
    local calls = {}
    local w = assert(core.watch_tree(dir, function(list) calls[#calls + 1] = list end))
    core.timer(0.01, function()
      write(dir .. "/.x.lua.tmp", "return 1")
      os.rename(dir .. "/.x.lua.tmp", dir .. "/x.lua")
    end)
    core.timer(0.3, function() w:close(); core.stop() end)
    core.run()
    assert.equal(1, #calls)
    local seen = {}
    for _, p in ipairs(calls[1]) do seen[p] = true end
    assert.is_true(seen[dir .. "/x.lua"])
  end)

  it("sees files in subfolders, also in folders created after it started", function()
    local all = {}
    local w = assert(core.watch_tree(dir, function(list)
      for _, p in ipairs(list) do all[p] = true end
    end, 20))
    core.timer(0.01, function() write(dir .. "/sub/a.lua", "a") end)
    core.timer(0.1, function() assert(core.mkdirs(dir .. "/new")) end)
    core.timer(0.2, function() write(dir .. "/new/b.lua", "b") end)
    core.timer(0.4, function() w:close(); core.stop() end)
    core.run()
    assert.is_true(all[dir .. "/sub/a.lua"])
    assert.is_true(all[dir .. "/new/b.lua"])
  end)

  it("returns nil and an error for a missing folder", function()
    local w, err = core.watch_tree(dir .. "/nope", function() end)
    assert.is_nil(w)
    assert.matches("not a folder", err)
  end)
end)
