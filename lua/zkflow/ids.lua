-- zkflow.ids: the one rule for DAG, task and run ids.
--
-- Ids name znodes (/runs/<dag>/<run>/<task>) and files
-- (<log_dir>/<dag>/<run>/<task>.<try>.log), so an id that could climb out
-- of its folder or into another run's node is refused where it enters:
-- the DSL (dag and task ids), the CLI (positional ids, --run-id) and the
-- API (path parameters, bodies).  The rule is Airflow's:
--   dag_id, task_id  letters, digits and `_.-`      (its KEY_REGEX)
--   run_id           letters, digits and `_.-~:+`   (allowed_run_id_pattern)
-- each 1-250 characters, and never "." or ".." or containing "..".
-- Everything else (`/`, NUL, spaces, non-ASCII) is refused.

local _M = {}

local sfmt = string.format

_M.MAX = 250

local CLASS = {
    dag_id  = "[%w_%.%-]",
    task_id = "[%w_%.%-]",
    run_id  = "[%w_%.%-~:%+]",
}

local CHARS = {
    dag_id  = "A-Za-z0-9_.-",
    task_id = "A-Za-z0-9_.-",
    run_id  = "A-Za-z0-9_.-~:+",
}

local function quote(s)
    if type(s) ~= "string" then
        return tostring(s)
    end
    -- %q shows control bytes and NULs as escapes, so a message never
    -- carries the raw bytes of a hostile id.
    return (sfmt("%q", s):gsub("\\\n", "\\n"))
end

-- Returns s when it is a valid id of `kind` ("dag_id", "task_id",
-- "run_id"), else nil and a message naming the kind and the rule.
function _M.check(kind, s)
    local class = CLASS[kind]
    assert(class, "ids.check: unknown kind")
    if type(s) ~= "string" then
        return nil, sfmt("%s: expected a string, got %s", kind, type(s))
    end
    if #s == 0 or #s > _M.MAX or not s:find("^" .. class .. "+$")
            or s:find("..", 1, true) then
        return nil, sfmt("%s: invalid id %s: must be 1-%d characters of "
                         .. "[%s], not containing '..'",
                         kind, quote(s), _M.MAX, CHARS[kind])
    end
    return s
end

-- True when s is a valid id of `kind`.
function _M.valid(kind, s)
    return _M.check(kind, s) ~= nil
end

-- The kinds, for callers that map a name (an API path parameter, a CLI
-- argument) to its rule.
function _M.kind(name)
    if CLASS[name] then
        return name
    end
    return nil
end

return _M
