-- zkflow.time: dates as zkflow reads and writes them, in one place, so the
-- DSL, the CLI, the HTTP API and the scheduler agree on what a date is.
--
--   local time = require "zkflow.time"
--   local t, err = time.parse("2026-01-01T06:30:00+02:00")   -- UTC epoch seconds
--   time.iso(t)          --> "2026-01-01T04:30:00+00:00"       (Airflow's ts)
--   time.iso(t, true)    --> "2026-01-01T04:30:00.000000+00:00"
--   time.ds(t)           --> "2026-01-01"                      (Airflow's ds)
--   time.last_interval(dag, t)   --> the last complete data interval at t
--
-- Times are UTC epoch seconds (a number, fractions kept).  The arithmetic
-- is done here rather than by os.time/os.date, which depend on the C
-- library's time zone handling.
--
-- Decisions, with Airflow (pendulum, Python's datetime) as the reference:
-- a date that does not exist is an error, not normalised into the next
-- month (2026-02-30, 2025-02-29, 2026-13-01); so are hour 24 and second 60,
-- which datetime refuses too; a time without a UTC offset is UTC (Airflow's
-- default time zone); a date alone is its midnight.

local _M = {}

local floor, tonumber, type, ipairs = math.floor, tonumber, type, ipairs
local sfmt = string.format

-- ---- calendar ------------------------------------------------------------

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
-- days_from_civil).
local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = (y >= 0 and y or y - 399) // 400
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = (153 * mp + 2) // 5 + d - 1
    local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
end

local function civil_from_days(z)
    z = z + 719468
    local era = (z >= 0 and z or z - 146096) // 146097
    local doe = z - era * 146097
    local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    local mp = (5 * doy + 2) // 153
    local d = doy - (153 * mp + 2) // 5 + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    return y, m, d
end

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function leap(y)
    return (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
end

-- The number of days in month `m` of year `y`.
function _M.days_in_month(y, m)
    if m == 2 and leap(y) then return 29 end
    return MDAYS[m]
end

-- ---- parsing -------------------------------------------------------------

local SYNTAX = "YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|+HH:MM]"

local function bad(s, why)
    return nil, sfmt("'%s' is not a valid date: %s", s, why)
end

--- Parses an ISO 8601 date or date-time: "2026-01-01", "2026-01-01T10:00",
--- "2026-01-01 10:00:00", with a fraction of seconds (". " or ","), and
--- "Z", "+HH", "+HHMM" or "+HH:MM" after a time.  Returns UTC epoch
--- seconds (fraction kept), or nil and a message that quotes `s`.
function _M.parse(s)
    if type(s) ~= "string" then
        return nil, "expected an ISO 8601 date (" .. SYNTAX .. "), got " .. type(s)
    end
    local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
    if not y then
        return nil, sfmt("'%s' is not an ISO 8601 date (%s)", s, SYNTAX)
    end
    y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
    local h, mi, sec, frac, off = 0, 0, 0, 0, 0
    if rest ~= "" then
        local hh, mm, tail = rest:match("^[T ](%d%d):(%d%d)(.*)$")
        if not hh then
            return nil, sfmt("'%s' is not an ISO 8601 date (%s)", s, SYNTAX)
        end
        h, mi = tonumber(hh), tonumber(mm)
        local ss, tail2 = tail:match("^:(%d%d)(.*)$")
        if ss then
            sec, tail = tonumber(ss), tail2
            local f, tail3 = tail:match("^[.,](%d+)(.*)$")
            if f then
                frac, tail = tonumber("0." .. f), tail3
            end
        end
        if tail ~= "" and tail ~= "Z" and tail ~= "z" then
            local sign, oh, om = tail:match("^([+-])(%d%d):?(%d%d)$")
            if not sign then
                sign, oh = tail:match("^([+-])(%d%d)$")
                om = "00"
            end
            if not sign then
                return nil, sfmt("'%s' is not an ISO 8601 date (%s)", s, SYNTAX)
            end
            oh, om = tonumber(oh), tonumber(om)
            if oh > 23 or om > 59 then
                return bad(s, "UTC offset " .. tail .. " is out of range")
            end
            off = (oh * 3600 + om * 60) * (sign == "-" and -1 or 1)
        end
    end
    if y < 1 then
        return bad(s, "year 0000 does not exist")
    end
    if mo < 1 or mo > 12 then
        return bad(s, sfmt("month %02d is out of range 01-12", mo))
    end
    local mdays = _M.days_in_month(y, mo)
    if d < 1 or d > mdays then
        return bad(s, sfmt("%04d-%02d has days 01-%02d", y, mo, mdays))
    end
    if h > 23 then
        return bad(s, sfmt("hour %02d is out of range 00-23", h))
    end
    if mi > 59 then
        return bad(s, sfmt("minute %02d is out of range 00-59", mi))
    end
    if sec > 59 then
        return bad(s, sfmt("second %02d is out of range 00-59", sec))
    end
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec + frac - off
end

--- A date as the DAG DSL takes it: an ISO 8601 string (as parse) or epoch
--- seconds; returns whole UTC epoch seconds (a fraction is dropped), or
--- nil and a message.
function _M.epoch(v)
    if type(v) == "number" then
        if v ~= v or v == math.huge or v == -math.huge then
            return nil, "not a finite number"
        end
        return floor(v)
    end
    if type(v) ~= "string" then
        return nil, "expected an ISO 8601 string or epoch seconds"
    end
    local t, err = _M.parse(v)
    if not t then return nil, err end
    return floor(t)
end

-- ---- formatting ----------------------------------------------------------

-- The text of the whole second last formatted: the scheduler formats
-- thousands of times a second that mostly share their second.
local last_sec, last_text

local function seconds_text(sec)
    if sec ~= last_sec then
        local days = sec // 86400
        local secs = sec - days * 86400
        local y, m, d = civil_from_days(days)
        last_text = sfmt("%04d-%02d-%02dT%02d:%02d:%02d", y, m, d,
                         secs // 3600, secs % 3600 // 60, secs % 60)
        last_sec = sec
    end
    return last_text
end

--- "2026-11-25T12:00:00+00:00" (Airflow's `ts`), or with `micro` the six
--- fraction digits of Airflow's timestamps ("2026-11-25T12:00:00.123456+00:00").
function _M.iso(t, micro)
    local sec = floor(t)
    if not micro then
        return seconds_text(sec) .. "+00:00"
    end
    return sfmt("%s.%06d+00:00", _M.iso_parts(t))
end

--- The two parts of iso(t, true): the whole-second text
--- ("2026-11-25T12:00:00") and the microseconds (an integer, 0-999999).
function _M.iso_parts(t)
    local sec = floor(t)
    local us = floor((t - sec) * 1e6 + 0.5)
    if us >= 1000000 then us = 999999 end
    return seconds_text(sec), us
end

--- "2026-11-25" (Airflow's `ds`).
function _M.ds(t)
    local y, m, d = civil_from_days(floor(t) // 86400)
    return sfmt("%04d-%02d-%02d", y, m, d)
end

--- "20261125T120000" (Airflow's `ts_nodash`).
function _M.ts_nodash(t)
    return (seconds_text(floor(t)):gsub("[-:]", ""))
end

-- ---- a schedule's intervals -----------------------------------------------

-- The DAG's cron object, made once (dag.cron_obj).
local function cron_of(dag)
    local c = dag.cron_obj
    if not c then
        c = require("zkflow.core").cron(dag.schedule.cron)
        dag.cron_obj = c
    end
    return c
end

--- The first data interval of `dag`'s schedule whose start is >= `t`:
--- returns start, end (epoch seconds), or nil without a periodic schedule
--- ({cron=} or {every=}; an `every` schedule counts from start_date).
function _M.next_interval(dag, t)
    local sch = dag.schedule
    if type(sch) ~= "table" then return nil end
    if sch.every then
        local base = dag.start_date or 0
        local k = math.ceil((t - base) / sch.every)
        if k < 0 then k = 0 end
        local s = base + k * sch.every
        return s, s + sch.every
    end
    if sch.cron then
        local c = cron_of(dag)
        local s = c:next(t - 1)
        if not s or s < 0 then return nil end
        return s, c:next(s)
    end
    return nil
end

--- The last complete data interval at `t`: start, end with end <= t
--- (Airflow's infer_manual_data_interval), or nil without a periodic
--- schedule.
function _M.last_interval(dag, t)
    local sch = dag.schedule
    if type(sch) ~= "table" then return nil end
    if sch.every then
        local base = dag.start_date or 0
        local e = base + floor((t - base) / sch.every) * sch.every
        return e - sch.every, e
    end
    if not sch.cron then return nil end
    local c = cron_of(dag)
    -- cron has no "previous": walk forward from ever farther back until a
    -- fire time <= t shows up; the first window with one holds few.
    local function last_fire(before)
        for _, span in ipairs({ 60, 3600, 86400, 7 * 86400, 32 * 86400, 367 * 86400,
                                3660 * 86400 }) do
            local f = c:next(before - span - 1)
            if f and f <= before then
                while true do
                    local nf = c:next(f)
                    if not nf or nf > before then return f end
                    f = nf
                end
            end
        end
        return nil
    end
    local e = last_fire(t)
    local st = e and last_fire(e - 1)
    if not st then return nil end
    return st, e
end

return _M
