-- core.cron through the C module (the arithmetic itself: spec/c/test_cron.c
-- and spec/croniter_check.py).
local core = require "zkflow.core"

-- 2026-01-01T00:00:00Z, a Thursday
local JAN1 = 1767225600

describe("core.cron", function()
  it("returns the first fire time strictly after t as an integer", function()
    local c = core.cron("*/5 * * * *")
    assert.equal(JAN1 + 300, c:next(JAN1))
    assert.equal("integer", math.type(c:next(JAN1)))
    assert.equal(JAN1 + 300, c:next(JAN1 + 1))
    assert.equal(JAN1 + 300, c:next(JAN1 + 299.9))
  end)

  it("floors fractional times", function()
    assert.equal(JAN1 + 60, core.cron("* * * * *"):next(JAN1 + 0.5))
    assert.equal(JAN1, core.cron("* * * * *"):next(JAN1 - 0.5))
  end)

  it("understands presets, names and L", function()
    assert.equal(JAN1 + 3600, core.cron("@hourly"):next(JAN1))
    assert.equal(JAN1 + 3 * 86400, core.cron("@weekly"):next(JAN1))
    assert.equal(JAN1 + 30 * 86400, core.cron("0 0 L jan *"):next(JAN1))
    assert.equal(JAN1 + 86400, core.cron("0 0 * * FRI"):next(JAN1))
  end)

  it("ORs day-of-month and day-of-week when both are restricted", function()
    -- the 13th or a Friday: Friday 2 January comes first
    assert.equal(JAN1 + 86400, core.cron("0 0 13 * 5"):next(JAN1))
  end)

  it("returns nil when nothing fires within ten years", function()
    assert.is_nil(core.cron("0 0 30 2 *"):next(JAN1))
  end)

  it("raises the parse error with the field and expression", function()
    local ok, err = pcall(core.cron, "0 0 32 * *")
    assert.is_false(ok)
    assert.matches("cron: day-of-month: value 32 out of range 1-31 in '0 0 32 * *'", err, 1, true)
    assert.has_error(function() core.cron("* * * *") end)
    assert.has_error(function() core.cron() end)
  end)

  it("checks its argument", function()
    local c = core.cron("* * * * *")
    assert.has_error(function() c:next("soon") end)
    assert.has_error(function() c:next(0 / 0) end)
  end)

  it("shows the expression in tostring", function()
    assert.equal("zkflow.Cron('@daily')", tostring(core.cron("@daily")))
  end)
end)
