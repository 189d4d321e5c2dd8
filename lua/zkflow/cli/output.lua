-- zkflow.cli.output: how the commands report.
--
-- The errors a command raises (caught by zkflow.cli's main(): a usage
-- error exits 2, a failure 1), the data written to stdout (plain lines,
-- aligned columns, `--json`) and the warnings to stderr, and how a stored
-- value is shown ("-" for null).

local core = require "zkflow.core"

local _M = {}

local stdout, stderr = io.stdout, io.stderr
local concat = table.concat
local rep = string.rep

-- ---- errors ---------------------------------------------------------------

-- Raised (as tables) by commands and caught by main(): a usage error names
-- the command whose --help would have helped.
local function usage_error(msg, cmd)
    error({ zkflow_exit = 2, msg = msg, cmd = cmd }, 0)
end

local function fail(msg)
    error({ zkflow_exit = 1, msg = msg }, 0)
end

local JSON_OPTS = { sort_keys = true }

local function json_out(v)
    stdout:write(core.json_encode(v, JSON_OPTS), "\n")
end

local function out(...)
    stdout:write(...)
    stdout:write("\n")
end

local function warn(msg)
    stderr:write("zkflow: ", msg, "\n")
end

-- Prints rows (lists of strings) as aligned columns.
local function print_table(header, rows)
    local widths = {}
    local all = { header }
    for _, r in ipairs(rows) do all[#all + 1] = r end
    for _, r in ipairs(all) do
        for i, cell in ipairs(r) do
            cell = tostring(cell)
            if not widths[i] or #cell > widths[i] then widths[i] = #cell end
        end
    end
    for _, r in ipairs(all) do
        local cells = {}
        for i, cell in ipairs(r) do
            cell = tostring(cell)
            if i < #r then
                cell = cell .. rep(" ", widths[i] - #cell)
            end
            cells[i] = cell
        end
        out((concat(cells, "  "):gsub("%s+$", "")))
    end
end

-- Aligned columns without a header line.
local function print_rows(rows)
    local widths = {}
    for _, r in ipairs(rows) do
        for i, cell in ipairs(r) do
            if not widths[i] or #cell > widths[i] then widths[i] = #cell end
        end
    end
    for _, r in ipairs(rows) do
        local cells = {}
        for i, cell in ipairs(r) do
            cells[i] = i < #r and (cell .. rep(" ", widths[i] - #cell)) or cell
        end
        out(concat(cells, "  "))
    end
end

local function is_null(v)
    return v == nil or v == core.null
end

local function show(v)
    if is_null(v) then return "-" end
    if type(v) == "table" then return core.json_encode(v) end
    return tostring(v)
end

_M.usage_error, _M.fail = usage_error, fail
_M.JSON_OPTS, _M.json_out, _M.out, _M.warn = JSON_OPTS, json_out, out, warn
_M.print_table, _M.print_rows = print_table, print_rows
_M.is_null, _M.show = is_null, show

return _M
