-- An operator is one module: its schema and its execute (or a sensor's
-- poke) together, found in the DAG folder's operators/ (zkflow.operator,
-- docs/operators.md "Writing an operator").
local flow = require "zkflow"
local loader = require "zkflow.dsl.loader"
local operator = require "zkflow.operator"

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "/operators'"))
  return p
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("a user operator", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("runs the example of docs/operators.md from its DAG folder", function()
    local dags = assert(loader.load_file("examples/dags/custom_operator.lua"))
    local res = flow.test(dags[1], { date = "2026-01-02T00:00:00Z" })
    assert.equal("success", res.state)
    assert.equal(3, res.tasks.count.xcom)
    assert.equal("3 lines", res.tasks.check.xcom)
  end)

  it("fails at load time when a task breaks the operator's schema", function()
    local dags, err = loader.load_source(
      'local flow = require "zkflow"\n'
      .. 'return flow.dag { id = "bad", tasks = function(t)\n'
      .. '  t.line_count { id = "c", min_lines = "two" }\n'
      .. 'end }\n', "examples/dags/bad.lua")
    assert.is_nil(dags)
    assert.matches("examples/dags/bad.lua:3: task 'c': missing required option 'path'", err, 1, true)
    assert.matches("'min_lines' must be an integer", err, 1, true)
  end)

  it("that gives a poke runs in the sensor loop", function()
    write(dir .. "/operators/second_poke.lua", [[
      local pokes = 0
      return {
        name = "second_poke", fields = {}, templated = {}, sensor = true,
        poke = function()
          pokes = pokes + 1
          return pokes >= 2, "after " .. pokes .. " pokes"
        end,
      }]])
    write(dir .. "/wait.lua", [[
      local flow = require "zkflow"
      return flow.dag { id = "wait", tasks = function(t)
        t.second_poke { id = "w", poke_interval = 0.05, timeout = 5 }
      end }]])
    local dags = assert(loader.load_file(dir .. "/wait.lua"))
    local res = flow.test(dags[1], { date = "2026-01-02T00:00:00Z" })
    assert.equal("success", res.state)
    assert.equal("after 2 pokes", res.tasks.w.xcom)
  end)

  it("without execute or poke fails its try, naming the operator", function()
    local fn = operator.executor({ operator = "nothing", op = { name = "nothing" } })
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.equal("operator 'nothing' has no execute function", err)
  end)

  it("that says runtime = false gets no runtime", function()
    local exe = operator.executor({ op = { execute = function() end, runtime = false } })
    assert.is_false(operator.needs_runtime(exe))
    exe = operator.executor({ op = { execute = function() end } })
    assert.is_true(operator.needs_runtime(exe))
  end)
end)

describe("the shipped operators", function()
  it("each carry their own execute or poke", function()
    for _, name in ipairs({ "lua", "shell", "http", "branch", "short_circuit", "empty",
                            "zk_create", "zk_set", "zk_get", "zk_delete", "zk_dump",
                            "zk_restore", "zk_watch", "zk_register", "zk_health", "file",
                            "time_delta", "external_task" }) do
      local mod = require("zkflow.operators." .. name)
      assert.equal(name, mod.name)
      assert.is_true(type(mod.execute) == "function" or type(mod.poke) == "function", name)
    end
  end)
end)
