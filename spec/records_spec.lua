-- zkflow.records: what a run and a task instance look like on the store,
-- and the way back.
local core = require "zkflow.core"
local records = require "zkflow.records"

local null, decode = core.null, core.json_decode

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function sorted(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  table.sort(out)
  return out
end

describe("a run record", function()
  local run = {
    dag_id = "etl", run_id = "scheduled__2026-01-01T00:00:00+00:00", state = "running",
    run_type = "scheduled", logical_date = 1767225600, data_interval_start = 1767225600,
    data_interval_end = 1767312000, conf = { n = 1 }, version = "abc",
    queued_at = 1767312000.25, start_date = 1767312001.5, external_trigger = false,
  }

  it("carries every field, dates as ISO text, null where there is none", function()
    local rec = decode(records.encode_run(run))
    assert.same({
      dag_id = "etl", run_id = "scheduled__2026-01-01T00:00:00+00:00", state = "running",
      run_type = "scheduled",
      logical_date = "2026-01-01T00:00:00+00:00",
      data_interval_start = "2026-01-01T00:00:00+00:00",
      data_interval_end = "2026-01-02T00:00:00+00:00",
      conf = { n = 1 }, version = "abc",
      queued_at = "2026-01-02T00:00:00.250000+00:00",
      start_date = "2026-01-02T00:00:01.500000+00:00",
      end_date = null,
      external_trigger = false,
    }, rec)
    assert.same(sorted(records.RUN_FIELDS), keys(rec))
  end)

  it("writes an empty conf as an object and a missing version as null", function()
    local data = records.encode_run { dag_id = "d", run_id = "r", state = "queued",
      run_type = "manual", logical_date = 0, data_interval_start = 0, data_interval_end = 0 }
    assert.matches('"conf":{}', data, 1, true)
    assert.matches('"version":null', data, 1, true)
    assert.matches('"external_trigger":false', data, 1, true)
  end)

  it("reads back as the scheduler holds it", function()
    local back = records.decode_run(decode(records.encode_run(run)))
    assert.same({
      dag_id = "etl", run_id = "scheduled__2026-01-01T00:00:00+00:00", state = "running",
      run_type = "scheduled", logical_date = 1767225600, data_interval_start = 1767225600,
      data_interval_end = 1767312000, conf = { n = 1 }, version = "abc",
      queued_at = 1767312000.25, start_date = 1767312001.5, external_trigger = false,
    }, back)
  end)

  it("names a new run as Airflow does", function()
    local rec = records.new_run({ id = "etl", source_hash = "h" }, {}, 1767225600.123456)
    assert.equal("manual__2026-01-01T00:00:00.123456+00:00", rec.run_id)
    assert.equal("queued", rec.state)
    assert.equal("2026-01-01T00:00:00+00:00", rec.logical_date)
    assert.equal("2026-01-01T00:00:00.123456+00:00", rec.queued_at)
    assert.equal(null, rec.start_date)
    assert.is_true(rec.external_trigger)
    assert.equal("h", rec.version)
    assert.equal("backfill__2026-01-01T00:00:00+00:00",
                 records.new_run({ id = "etl" }, { run_type = "backfill", logical_date = 1767225600 },
                                 0).run_id)
  end)
end)

describe("a task instance record", function()
  local function stored(ti) return decode(records.encode_ti(ti)) end

  it("carries the fixed fields always, null until known", function()
    local rec = stored { task_id = "c", state = "upstream_failed", try_number = 0, max_tries = 0,
                         task = { operator = "lua" }, end_date = 1767225600.5 }
    assert.same({ task_id = "c", state = "upstream_failed", try_number = 0, max_tries = 0,
                  operator = "lua", start_date = null,
                  end_date = "2026-01-01T00:00:00.500000+00:00", duration = null,
                  xcom = null, log = null, worker = null }, rec)
  end)

  it("writes a finished try to the microsecond", function()
    local rec = stored { task_id = "m", state = "success", try_number = 1, max_tries = 2,
                         task = { operator = "lua" }, start_date = 1767225600.1234567,
                         end_date = 1767225600.9876543, first_start = 1767225599.0000004,
                         log = "/l", worker = "w", xcom = "x" }
    assert.equal("2026-01-01T00:00:00.123457+00:00", rec.start_date)
    assert.equal("2026-01-01T00:00:00.987654+00:00", rec.end_date)
    assert.is_true(math.abs(0.8641976 - rec.duration) < 1e-6)
    assert.is_true(math.abs(1767225599.0000004 - rec.first_start) < 1e-6)
    assert.equal("x", rec.xcom)
    assert.equal("/l", rec.log)
    assert.equal("w", rec.worker)
  end)

  it("writes the optional fields only when set, escaping what needs it", function()
    local ti = { task_id = "b.x-y", state = "up_for_retry", try_number = 2, max_tries = 3,
                 task = { operator = "shell" }, start_date = 1767225600, end_date = 1767225600.000001,
                 first_start = 1767225500, next_try_at = 1767225700.5, pid = 4242, lost = 1,
                 error = 'line "one"\nline\ttwo \\ é', xcom = { rows = { 1, 2, 3 }, name = "ü" },
                 xcoms = { k = "v" }, log = '/tmp/we"ird/\nlog', worker = "w",
                 waiting_for = "waiting for a of r0" }
    local rec = stored(ti)
    assert.same(sorted(records.TI_FIELDS), keys(rec))
    assert.equal("waiting for a of r0", rec.waiting_for)
    assert.equal('line "one"\nline\ttwo \\ é', rec.error)
    assert.equal('/tmp/we"ird/\nlog', rec.log)
    assert.same({ rows = { 1, 2, 3 }, name = "ü" }, rec.xcom)
    assert.same({ k = "v" }, rec.xcoms)
    assert.equal(1767225700.5, rec.next_try_at)
    assert.equal(4242, rec.pid)
    assert.equal(1, rec.lost)
  end)

  it("keeps the state change when an XCom is not JSON", function()
    local data, err = records.encode_ti { task_id = "x", state = "success", try_number = 1,
      max_tries = 0, task = { operator = "lua" }, xcom = { f = print }, xcoms = { g = print } }
    local rec = decode(data)
    assert.equal("success", rec.state)
    assert.equal(null, rec.xcom)
    assert.is_nil(rec.xcoms)
    assert.matches("^xcom dropped: ", err)
  end)

  it("reads back as the scheduler holds it, nulls as nil", function()
    local ti = { task_id = "m", state = "success", try_number = 1, max_tries = 2,
                 task = { operator = "lua" }, start_date = 1767225600.25,
                 end_date = 1767225601.5, first_start = 1767225600.25, xcom = { a = 1 } }
    local back = records.decode_ti(stored(ti))
    assert.same({ task_id = "m", state = "success", try_number = 1, max_tries = 2,
                  operator = "lua", start_date = 1767225600.25, end_date = 1767225601.5,
                  duration = 1.25, first_start = 1767225600.25, xcom = { a = 1 } }, back)
    local never = records.decode_ti(stored { task_id = "n", state = "none", try_number = 0,
                                            max_tries = 0, task = {} })
    assert.is_nil(never.start_date)
    assert.is_nil(never.operator)
    assert.is_nil(never.xcom)
    assert.is_nil(never.log)
  end)
end)
