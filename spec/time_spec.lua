-- zkflow.time: the one ISO 8601 parser and the date formats.
local time = require "zkflow.time"

describe("time.parse", function()
  it("reads a date, a date-time, Z, offsets and fractions as UTC epoch seconds", function()
    assert.equal(1795564800, time.parse("2026-11-25"))
    assert.equal(1795608000, time.parse("2026-11-25T12:00:00+00:00"))
    assert.equal(1795608000, time.parse("2026-11-25T12:00:00Z"))
    assert.equal(1795608000, time.parse("2026-11-25 12:00"))
    assert.equal(1795608000, time.parse("2026-11-25T14:00:00+02:00"))
    assert.equal(1795608000, time.parse("2026-11-25T14:00:00+0200"))
    assert.equal(1795608000, time.parse("2026-11-25T14:00+02"))
    assert.equal(1795608000, time.parse("2026-11-25T10:30:00-01:30"))
    assert.equal(1795608000.5, time.parse("2026-11-25T12:00:00.5Z"))
    assert.equal(1795608000.25, time.parse("2026-11-25T12:00:00,25"))
    assert.equal(0, time.parse("1970-01-01"))
    assert.equal(951782400, time.parse("2000-02-29"))
  end)

  it("refuses dates that do not exist, saying why", function()
    local function refused(s, why)
      local t, err = time.parse(s)
      assert.is_nil(t)
      assert.equal("'" .. s .. "' is not a valid date: " .. why, err)
    end
    refused("2026-02-30", "2026-02 has days 01-28")
    refused("2025-02-29", "2025-02 has days 01-28")
    refused("1900-02-29", "1900-02 has days 01-28")
    refused("2026-04-31", "2026-04 has days 01-30")
    refused("2026-01-00", "2026-01 has days 01-31")
    refused("2026-13-01", "month 13 is out of range 01-12")
    refused("2026-00-10", "month 00 is out of range 01-12")
    refused("2026-01-01T24:00", "hour 24 is out of range 00-23")
    refused("2026-01-01T10:60", "minute 60 is out of range 00-59")
    refused("2026-01-01T10:00:60", "second 60 is out of range 00-59")
    refused("2026-01-01T10:00+24:00", "UTC offset +24:00 is out of range")
    refused("0000-01-01", "year 0000 does not exist")
  end)

  it("refuses text that is not ISO 8601", function()
    for _, s in ipairs({ "yesterday", "2026-1-01", "2026-01-01T10", "2026-01-01Z",
                         "2026-01-01T10:00 UTC", "2026-01-01T10:00+2", "" }) do
      local t, err = time.parse(s)
      assert.is_nil(t, s)
      assert.matches("is not an ISO 8601 date", err, 1, true)
    end
    local t, err = time.parse(12)
    assert.is_nil(t)
    assert.matches("got number", err, 1, true)
  end)
end)

describe("time.epoch", function()
  it("takes ISO text or epoch seconds and gives whole seconds", function()
    assert.equal(1767225600 + 3723, time.epoch("2026-01-01 01:02:03.5"))
    assert.equal(12, time.epoch(12.7))
    assert.is_nil(time.epoch(0 / 0))
    assert.is_nil(time.epoch(true))
    assert.is_nil(time.epoch("2026-02-30"))
  end)
end)

describe("time formats", function()
  it("formats ts, with microseconds, ds and ts_nodash", function()
    assert.equal("2026-11-25T12:00:00+00:00", time.iso(1795608000))
    assert.equal("2026-11-25T12:00:00+00:00", time.iso(1795608000.9))
    assert.equal("2026-11-25T12:00:00.900000+00:00", time.iso(1795608000.9, true))
    assert.equal("2026-11-25T12:00:00.000000+00:00", time.iso(1795608000, true))
    assert.equal("1969-12-31T23:59:59+00:00", time.iso(-1))
    assert.equal("2026-11-25", time.ds(1795608000))
    assert.equal("20261125T120000", time.ts_nodash(1795608000))
    local sec, us = time.iso_parts(1795608000.1234567)
    assert.equal("2026-11-25T12:00:00", sec)
    assert.equal(123457, us)
    -- a fraction that rounds up to a whole second stays in its second
    assert.equal("2026-11-25T12:00:00.999999+00:00", time.iso(1795608000.9999996, true))
  end)

  it("reads back what it writes, every day of four years", function()
    for t = 1767225600, 1767225600 + 4 * 366 * 86400, 86400 + 3661 do
      assert.equal(t, time.parse(time.iso(t)))
      assert.equal(t, time.parse(time.iso(t, true)))
    end
  end)
end)

describe("a schedule's intervals", function()
  local DAY = 86400
  local jan1 = 1767225600

  it("walks an every schedule from start_date", function()
    local dag = { schedule = { every = 3600 }, start_date = jan1 }
    assert.same({ jan1, jan1 + 3600 }, { time.next_interval(dag, jan1 - 5 * DAY) })
    assert.same({ jan1 + 3600, jan1 + 7200 }, { time.next_interval(dag, jan1 + 1) })
    assert.same({ jan1 + 3600, jan1 + 7200 }, { time.last_interval(dag, jan1 + 7200 + 5) })
  end)

  it("walks a cron schedule, the last complete interval as Airflow infers it", function()
    local dag = { schedule = { cron = "0 0 * * *" } }
    assert.same({ jan1, jan1 + DAY }, { time.next_interval(dag, jan1) })
    assert.same({ jan1 + DAY, jan1 + 2 * DAY }, { time.next_interval(dag, jan1 + 1) })
    assert.same({ jan1 - DAY, jan1 }, { time.last_interval(dag, jan1 + 3600) })
  end)

  it("has none without a periodic schedule", function()
    assert.is_nil(time.next_interval({ schedule = "@once" }, jan1))
    assert.is_nil(time.last_interval({}, jan1))
  end)
end)
