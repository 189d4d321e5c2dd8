-- zkflow.dsl.chain: dependencies between tasks: `a >> b`, flow.chain(...)
-- and the links they record.
--
-- Owns the registry of tasks (which build, or a finished marker, each task
-- belongs to: is_task() and link() read it, the builder writes it), the
-- edges recorded while tasks() runs, and their resolution (with the
-- `after` lists) into each task's upstream and downstream ids.  Error
-- levels count the frames of the user's call: every function here calls
-- link() directly, so a level passed in stays right.

local util = require "zkflow.dsl.util"
util.mark_internal()

local _M = {}

local type, pairs, ipairs, tostring, error, getmetatable = type, pairs, ipairs, tostring, error, getmetatable
local sfmt, sort = string.format, table.sort
local show, suggest, is_list = util.show, util.suggest, util.is_list

-- task -> build, or a marker once built
local task_mt_of = setmetatable({}, { __mode = "k" })
_M.build_of = task_mt_of

local function is_task(v)
    return type(v) == "table" and task_mt_of[v] ~= nil
end
_M.is_task = is_task

-- Flattens a task-or-list argument of >> / chain into a list of tasks.
local function as_tasks(v, what, level)
    if is_task(v) then
        return { v }
    end
    if type(v) == "table" and getmetatable(v) == nil then
        local out = {}
        for i, x in ipairs(v) do
            if not is_task(x) then
                error(sfmt("%s: element %d is not a task, got %s", what, i, show(x)), level + 1)
            end
            out[#out + 1] = x
        end
        return out
    end
    error(sfmt("%s: expected a task or a list of tasks, got %s", what, show(v)), level + 1)
end

--- Records a dependency up -> down (both tasks of the same DAG being built).
--- `level` is the error level of the user call.
function _M.link(up, down, level)
    level = (level or 1) + 1
    local b = task_mt_of[up]
    if b ~= task_mt_of[down] then
        error(sfmt("task '%s' and task '%s' belong to different dags", up.id, down.id), level)
    end
    if b.done then
        error(sfmt("dag '%s': dependencies must be declared inside tasks()", tostring(b.dag.id)), level)
    end
    b.edges[#b.edges + 1] = { up, down }
end

--- Links every task of `left` (a task or list) to every task of `right`.
--- Returns `right` so that `a >> b >> c` chains.
function _M.shift(left, right, level)
    level = (level or 1) + 1
    local ls = as_tasks(left, "'>>' left side", level)
    local rs = as_tasks(right, "'>>' right side", level)
    for _, a in ipairs(ls) do
        for _, b in ipairs(rs) do
            _M.link(a, b, level)
        end
    end
    return right
end

--- Airflow's chain(): consecutive arguments are linked; a task next to a
--- list fans in/out, two adjacent lists must have the same length and are
--- linked pairwise.
function _M.chain(...)
    local args = table.pack(...)
    for i = 1, args.n - 1 do
        local a, b = args[i], args[i + 1]
        local la = as_tasks(a, sfmt("chain argument %d", i), 2)
        local lb = as_tasks(b, sfmt("chain argument %d", i + 1), 2)
        if not is_task(a) and not is_task(b) then
            if #la ~= #lb then
                error(sfmt("chain: adjacent lists must have the same length, got %d and %d",
                    #la, #lb), 2)
            end
            for j = 1, #la do
                _M.link(la[j], lb[j], 2)
            end
        else
            for _, x in ipairs(la) do
                for _, y in ipairs(lb) do
                    _M.link(x, y, 2)
                end
            end
        end
    end
    return args[args.n]
end

--- Resolves the `after` lists (task.after_spec) and the >> / chain edges of
--- build `b` into each task's sorted upstream/downstream ids; a problem
--- is passed to complain(task, msg).
function _M.resolve(b, complain)
    local byid = b.dag.tasks
    local ups = {}
    for _, task in ipairs(b.tasks_in_order) do
        ups[task] = {}
    end
    local function add(up, down)
        if up == down then
            complain(down, "depends on itself")
            return
        end
        ups[down][up] = true
    end
    for _, task in ipairs(b.tasks_in_order) do
        local after = task.after_spec
        task.after_spec = nil
        if after ~= nil then
            if is_task(after) or type(after) == "string" then
                after = { after }
            end
            if not is_list(after) then
                complain(task, sfmt("'after' must be a list of tasks or task ids, got %s", show(after)))
            else
                for _, ref in ipairs(after) do
                    if is_task(ref) then
                        if task_mt_of[ref] ~= b then
                            complain(task,
                                sfmt("upstream task '%s' belongs to another dag", tostring(ref.id)))
                        elseif byid[ref.id] == ref then
                            add(ref, task)
                        end
                        -- (else ref is a second task of a taken id: that is
                        -- reported as a duplicate, its edges are not drawn)
                    elseif type(ref) == "string" then
                        if byid[ref] then
                            add(byid[ref], task)
                        else
                            complain(task, sfmt("unknown upstream '%s'%s", ref, suggest(ref, byid)))
                        end
                    else
                        complain(task, sfmt("'after' entries must be tasks or task ids, got %s", show(ref)))
                    end
                end
            end
        end
    end
    for _, e in ipairs(b.edges) do
        local up, down = byid[e[1].id], byid[e[2].id]
        -- A second task of a taken id is reported as a duplicate; its
        -- edges would only add a self-loop or a cycle that is not there.
        if up and down and up == e[1] and down == e[2] then
            add(up, down)
        end
    end
    for _, task in ipairs(b.tasks_in_order) do
        if byid[task.id] == task then
            local list = {}
            for up in pairs(ups[task]) do
                list[#list + 1] = up.id
            end
            sort(list)
            task.upstream = list
            task.downstream = task.downstream or {}
            for _, uid in ipairs(list) do
                local u = byid[uid]
                u.downstream = u.downstream or {}
                u.downstream[#u.downstream + 1] = task.id
            end
        end
    end
    for _, task in pairs(byid) do
        task.downstream = task.downstream or {}
        sort(task.downstream)
    end
end

return _M
