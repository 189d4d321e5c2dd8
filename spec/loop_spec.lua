-- zkflow.core's loop half: clocks, timers, child processes, run/stop.
local core = require "zkflow.core"

local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -p " .. path))
  return path
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("core clocks", function()
  it("gives wall-clock epoch seconds and monotonic seconds", function()
    assert.is_true(math.abs(core.now() - os.time()) < 2)
    local m = core.mono()
    assert.is_true(core.mono() >= m)
  end)
end)

describe("core.timer", function()
  it("fires timers in deadline order, equal deadlines in start order", function()
    local order = {}
    local function mark(c) return function() order[#order + 1] = c end end
    core.timer(0.03, mark("d"))
    core.timer(0.01, mark("a"))
    core.timer(0.02, mark("b"))
    core.timer(0.02, mark("c"))
    core.run()
    assert.equal("abcd", table.concat(order))
  end)

  it("does not fire a cancelled timer", function()
    local fired = spy.new(function() end)
    local t = core.timer(0.01, fired)
    assert.is_true(t:cancel())
    assert.is_false(t:cancel())
    core.run()
    assert.spy(fired).was_not_called()
  end)

  it("still fires when its handle is dropped", function()
    local fired = false
    core.timer(0.01, function() fired = true end)
    collectgarbage()
    collectgarbage()
    core.run()
    assert.is_true(fired)
  end)

  it("logs an error in a callback and goes on", function()
    local after = false
    core.timer(0, function() error("boom") end)
    core.timer(0.005, function() after = true end)
    core.run()
    assert.is_true(after)
  end)

  it("rejects a negative delay", function()
    assert.has_error(function() core.timer(-1, function() end) end)
  end)
end)

describe("core.run", function()
  it("calls fn from the loop and stops on core.stop()", function()
    local late = spy.new(function() end)
    local t = core.timer(60, late)
    core.run(function() core.timer(0.01, core.stop) end)
    assert.spy(late).was_not_called()
    t:cancel()
  end)
end)

describe("core.spawn", function()
  it("reports the exit code and the captured output", function()
    local got = {}
    local p = core.spawn({ cmd = "echo out; echo err >&2; exit 3" },
      function(code, sig, output) got = { code, sig, output } end)
    assert.is_true(p.pid > 0)
    assert.is_true(p.running)
    core.run()
    assert.same({ 3, nil, "out\nerr\n" }, got)
    assert.is_false(p.running)
  end)

  it("passes argv, env, cwd and stdin", function()
    local out
    core.spawn({
      argv  = { "sh", "-c", 'echo "$1 $ZKF_SPEC_VAR $(pwd)"; cat', "sh", "arg one" },
      env   = { ZKF_SPEC_VAR = "value" },
      cwd   = "/tmp",
      stdin = "from stdin",
    }, function(_, _, output) out = output end)
    core.run()
    assert.equal("arg one value /tmp\nfrom stdin", out)
  end)

  it("appends the output to a log file, creating its directories", function()
    local dir = tmpdir()
    local log = dir .. "/logs/x/task.log"
    local output = "unset"
    core.spawn({ cmd = "echo first", log = log }, function() end)
    core.run()
    core.spawn({ cmd = "echo second", log = log },
      function(_, _, o) output = o end)
    core.run()
    assert.equal("first\nsecond\n", slurp(log))
    assert.is_nil(output)
    os.execute("rm -rf " .. dir)
  end)

  it("kills the whole process group", function()
    local result
    local p = core.spawn({ cmd = "sleep 100 & sleep 100; wait" },
      function(code, sig) result = { code, sig } end)
    core.timer(0.05, function() assert.is_true(p:kill()) end)
    local t0 = core.mono()
    core.run()
    assert.same({ nil, 15 }, result)
    assert.is_true(core.mono() - t0 < 5)
    local ok, err = p:kill()
    assert.is_nil(ok)
    assert.equal("process has exited", err)
  end)

  it("takes signal names", function()
    local sig
    local p = core.spawn({ argv = { "sleep", "100" } },
      function(_, s) sig = s end)
    p:kill("KILL")
    core.run()
    assert.equal(9, sig)
  end)

  it("returns nil and a message for a missing program", function()
    local p, err = core.spawn({ argv = { "zkf-no-such-program" } })
    if p then   -- valgrind-like environments: the child exits 127
      local code
      core.spawn({ argv = { "zkf-no-such-program" } },
        function(c) code = c end)
      core.run()
      assert.equal(127, code)
    else
      assert.equal("spawn 'zkf-no-such-program': No such file or directory",
        err)
    end
  end)

  it("raises on a bad spec", function()
    assert.has_error(function() core.spawn({}) end,
      "core.spawn: 'argv' or 'cmd' is required")
    assert.has_error(function() core.spawn({ argv = { "true" }, env = 3 }) end,
      "core.spawn: 'env' must be a table, got number")
  end)
end)
