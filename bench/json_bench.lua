-- Micro-benchmark of core.json_encode / core.json_decode on the records the
-- scheduler writes: one task-instance record per state change (encode,
-- default options) and a ~1 KB record read back (decode).
--
--   LUA_CPATH="build/?.so;;" lua5.4 bench/json_bench.lua [seconds per case]
--
-- Prints the best of five rounds in microseconds per call.
local core = require "zkflow.core"

local encode, decode, null, mono = core.json_encode, core.json_decode, core.null, core.mono

local budget = tonumber(arg and arg[1]) or 0.2

-- A task-instance record of a finished try, as zkflow.records writes it.
local function ti_record()
  local start = 1767225600.123456
  return {
    task_id = "extract_customers",
    state = "success",
    try_number = 1,
    max_tries = 3,
    operator = "BashOperator",
    start_date = "2026-01-01T00:00:00.123456+00:00",
    end_date = "2026-01-01T00:00:02.654321+00:00",
    duration = 2.530865,
    first_start = start,
    next_try_at = nil,
    xcom = { rows = 1200, path = "/data/out/customers.csv", ok = true },
    xcoms = nil,
    log = "logs/etl/manual__2026-01-01T00:00:00+00:00/extract_customers/1.log",
    worker = null,
    pid = 41235,
    error = nil,
    lost = false,
  }
end

-- A bigger record for decoding: a run with its conf and a task's XComs.
local function kb_record()
  local t = ti_record()
  t.xcoms = {
    files = { "a.csv", "b.csv", "c.csv", "d.csv", "e.csv", "f.csv" },
    counts = { 10, 20, 30, 40, 50, 60, 70, 80 },
    ratio = 0.75,
    note = "caf\u{e9} \u{4e2d} with \"quotes\" and a\ttab",
  }
  t.conf = {
    source = "s3://bucket/prefix/2026/01/01/",
    target = "postgres://warehouse/analytics",
    options = { retries = 3, timeout = 600.5, dry_run = false, tags = { "etl", "daily", "customers" } },
    description = string.rep("loads the customer table from the daily export. ", 4),
  }
  return t
end

local function per_call(fn, arg1)
  local n = 1000
  local best = math.huge
  for _ = 1, 5 do
    local t0 = mono()
    local done = 0
    repeat
      for _ = 1, n do fn(arg1) end
      done = done + n
    until mono() - t0 >= budget / 5
    local us = (mono() - t0) / done * 1e6
    if us < best then best = us end
  end
  return best
end

local ti = ti_record()
local big = kb_record()
local text = encode(big)

print(string.format("encode TI record (%d bytes)          %7.2f us",
                    #encode(ti), per_call(encode, ti)))
print(string.format("encode TI record, sort_keys          %7.2f us",
                    per_call(function(v) return encode(v, { sort_keys = true }) end, ti)))
print(string.format("encode TI record, pretty             %7.2f us",
                    per_call(function(v) return encode(v, { pretty = true }) end, ti)))
print(string.format("encode 1 KB record (%d bytes)      %7.2f us",
                    #text, per_call(encode, big)))
print(string.format("decode 1 KB record                   %7.2f us",
                    per_call(decode, text)))
print(string.format("decode TI record                     %7.2f us",
                    per_call(decode, encode(ti))))
