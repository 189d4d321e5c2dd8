-- zkflow.async: coroutines on the loop (flow.run, flow.spawn, flow.sleep).
local flow = require "zkflow"
local core = require "zkflow.core"

describe("flow.run", function()
  it("returns the function's results as soon as it returns", function()
    local t0 = core.mono()
    -- An unrelated pending timer (as a ZooKeeper session would be) must not
    -- keep flow.run waiting.
    local keep = core.timer(5, function() end)
    local a, b = flow.run(function() flow.sleep(0.05); return 7, "x" end)
    keep:cancel()
    assert.equal(7, a)
    assert.equal("x", b)
    assert.is_true(core.mono() - t0 < 1)
  end)

  it("raises the function's error", function()
    local ok, err = pcall(flow.run, function() flow.sleep(0.01); error("boom", 0) end)
    assert.is_false(ok)
    assert.matches("^boom", err)
  end)

  it("runs coroutines started with flow.spawn on the same loop", function()
    local order = {}
    flow.run(function()
      flow.spawn(function() flow.sleep(0.02); order[#order + 1] = "spawned" end)
      order[#order + 1] = "main"
      flow.sleep(0.05)
    end)
    assert.same({ "main", "spawned" }, order)
  end)
end)

describe("flow.sleep", function()
  it("refuses to run outside a coroutine", function()
    assert.has_error(function() flow.sleep(0.01) end)
  end)
end)
