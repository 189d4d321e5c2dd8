-- zkflow.dsl.dag: builds and validates DAG objects from `flow.dag{...}` specs.
--
-- A spec is checked completely before anything is returned: every problem
-- found (unknown options, wrong types, unknown upstreams, cycles, ...) is
-- collected with the file and line of the call that caused it, and all of
-- them are raised together as one newline-separated error, in file order.
-- A user fixing a DAG file sees the whole list at once instead of one error
-- per reload.
--
-- The DAG object (what the scheduler consumes):
--   { id, file, line, schedule = nil | "@once" | {cron=expr} | {every=s},
--     start_date, end_date (integer UTC epoch seconds or nil), catchup,
--     max_active_runs, max_active_tasks, params, tags, default_args,
--     description, doc, on_success, on_failure, on_retry, dagrun_timeout,
--     tasks = {[id]=task}, order (declaration order), roots, leaves,
--     topo (a topological order, ties in declaration order),
--     source_hash (set by the loader) }
-- The task object:
--   { id, dag_id, operator (name), op (operator module), line,
--     upstream, downstream (sorted ids), the common options below,
--     priority_weight (effective, after weight_rule), weight_rule, params
--     (dag < default_args < task), sensor options for sensors, and the
--     operator's own fields by name }
--   Every option reads with its value or default (task.retries is 0 when
--   unset), but the defaults of the common and sensor options live in the
--   task's metatable (_M.TASK_MT, _M.SENSOR_TASK_MT), not in each task:
--   read options by name, pairs() over a task lists only what it sets.
--
-- Decisions where Airflow offers a choice:
--   catchup defaults to true (Airflow's catchup_by_default = True);
--   retry_delay defaults to 300 s; priority_weight to 1 with weight_rule
--   "downstream" (own weight + every distinct descendant's weight);
--   flow.chain links two adjacent lists pairwise, as Airflow's chain();
--   a time without a UTC offset is UTC.
--
-- Operators are modules returning { name, fields = {f = decl}, templated =
-- {f...}, sensor, branch, short_circuit, execute or poke, runtime? }
-- (zkflow.operator says what execute, poke and runtime are); a field decl is
-- "type", "type?" (optional) or { type=, default=, one_of=, required= }
-- with type one of string number integer boolean function table list
-- (of strings) any, alternatives joined by "|".
--
-- This file is the builder (Build) and the DAG and task objects; the rest
-- of the DSL is in zkflow.dsl.util (helpers, call sites), .options (the
-- option validators), .schedule, .chain (>> and flow.chain) and .graph
-- (toposort, weights).  Their public names are re-exported here.

local time = require "zkflow.time"
local util = require "zkflow.dsl.util"
local options = require "zkflow.dsl.options"
local schedule = require "zkflow.dsl.schedule"
local chain = require "zkflow.dsl.chain"
local graph = require "zkflow.dsl.graph"
util.mark_internal()

local _M = {}

local type, pairs, ipairs, tostring, error, pcall = type, pairs, ipairs, tostring, error, pcall
local setmetatable, getmetatable, rawget = setmetatable, getmetatable, rawget
local math_type = math.type
local sfmt, concat, sort = string.format, table.concat, table.sort

local callsite, locate_by_functions = util.callsite, util.locate_by_functions
local suggest, show, valid_id = util.suggest, util.show, util.valid_id
local sorted_keys, copy = util.sorted_keys, util.copy
local COMMON, SENSOR, SHIPPED = options.COMMON, options.SENSOR, options.SHIPPED
local SHIPPED_TEXT = table.concat(SHIPPED, ", ")
local DAG_FIELDS, DAGV, DAGV_ORDER = options.DAG_FIELDS, options.DAGV, options.DAGV_ORDER
local task_mt_of, is_task = chain.build_of, chain.is_task

-- The DSL's public names, from the files that own them.
_M.internal_sources, _M.mark_internal = util.internal_sources, util.mark_internal
_M.distance, _M.suggest, _M.show, _M.valid_id = util.distance, suggest, show, valid_id
_M.callsite = callsite
_M.TRIGGER_RULES, _M.COMMON, _M.SENSOR = options.TRIGGER_RULES, COMMON, SENSOR
_M.DAG_FIELDS = DAG_FIELDS
_M.operator_schema, _M.find_builtin = options.operator_schema, options.find_builtin
_M.PRESETS, _M.normalize_schedule = schedule.PRESETS, schedule.normalize_schedule
_M.is_task, _M.link, _M.shift, _M.chain = is_task, chain.link, chain.shift, chain.chain
_M.reach_sums = graph.reach_sums

local ID_MAX = require("zkflow.ids").MAX

------------------------------------------------------------------------------
-- Time: zkflow.time's rules, under the names the DSL has always exported
------------------------------------------------------------------------------

--- An ISO 8601 string or epoch seconds as whole UTC epoch seconds, or nil
--- and a reason (zkflow.time.epoch).
_M.parse_time = time.epoch

--- "2026-01-01T00:00:00+00:00" (Airflow's `ts`; zkflow.time.iso).
_M.iso = time.iso

--- "2026-01-01" (Airflow's `ds`; zkflow.time.ds).
_M.ds = time.ds

------------------------------------------------------------------------------
-- Building
------------------------------------------------------------------------------

local Build = {}
Build.__index = Build

local function problem(b, file, line, msg)
    local n = #b.problems + 1
    b.problems[n] = { file = file, line = line, n = n, text = sfmt("%s:%s: %s", file, line, msg) }
end

-- Problems in file order (then in the order found), one per line.
local function report(problems)
    sort(problems, function(a, c)
        if a.file ~= c.file then return a.file < c.file end
        if a.line ~= c.line then return a.line < c.line end
        return a.n < c.n
    end)
    local lines = {}
    for i, p in ipairs(problems) do lines[i] = p.text end
    return concat(lines, "\n")
end

local function task_problem(b, task, msg)
    problem(b, task.file, task.line, sfmt("task '%s': %s", tostring(task.id), msg))
end

-- Defaults of the common (and sensor) options live once, in the tasks'
-- metatable, instead of in every task: a task holds only the options that
-- differ from them.  Reading task.retries is the same either way; pairs()
-- over a task does not list the defaults.
local TASK_DEFAULTS, SENSOR_DEFAULTS = {}, {}
for name, v in pairs(COMMON) do
    if v.default ~= nil and type(v.default) ~= "table" then
        TASK_DEFAULTS[name], SENSOR_DEFAULTS[name] = v.default, v.default
    end
end
for name, v in pairs(SENSOR) do
    if v.default ~= nil and type(v.default) ~= "table" then
        SENSOR_DEFAULTS[name] = v.default
    end
end

local function task_shr(a, b) return _M.shift(a, b, 2) end
local function task_tostring(t)
    return sfmt("task '%s' (%s)", tostring(rawget(t, "id")), tostring(rawget(t, "operator")))
end
local TASK_MT = { __shr = task_shr, __tostring = task_tostring, __index = TASK_DEFAULTS }
local SENSOR_TASK_MT = { __shr = task_shr, __tostring = task_tostring, __index = SENSOR_DEFAULTS }
_M.TASK_MT, _M.SENSOR_TASK_MT = TASK_MT, SENSOR_TASK_MT

local DAG_MT = {
    __tostring = function(d) return sfmt("dag '%s'", tostring(rawget(d, "id"))) end,
}

function _M.is_dag(v)
    return type(v) == "table" and getmetatable(v) == DAG_MT
end

-- Resolves operator `name` for this build, caching the schema.
-- Operator entries ({mod, schema} or {err}) by module, then by name:
-- checking a module's schema is most of the cost of a small DAG, and the
-- shipped operators are the same module table in every build.  Weak keys:
-- a user operator's module goes with the files that loaded it.
local entry_cache = setmetatable({}, { __mode = "k" })

function Build:operator(name)
    local cached = self.ops[name]
    if cached ~= nil then
        return cached
    end
    local mod, err = self.find_operator(name)
    local entry
    if mod == nil then
        entry = { err = err or sfmt("unknown operator '%s'%s; operators: %s "
            .. "(and operators/NAME.lua in the DAG folder)", name,
            suggest(name, SHIPPED), SHIPPED_TEXT) }
    else
        local by_name = entry_cache[mod]
        entry = by_name and by_name[name]
        if not entry then
            local schema, serr = _M.operator_schema(name, mod)
            if schema then
                entry = { mod = mod, schema = schema }
            else
                entry = { err = serr }
            end
            if type(mod) == "table" then
                by_name = by_name or {}
                by_name[name] = entry
                entry_cache[mod] = by_name
            end
        end
    end
    self.ops[name] = entry
    return entry
end

-- Creates the task object for t.<opname>{spec}; problems are recorded, the
-- task is returned even when invalid so that later checks still run.
function Build:new_task(opname, spec, file, line)
    local task = { dag_id = self.dag.id, operator = opname, file = file, line = line }
    task_mt_of[task] = self
    setmetatable(task, TASK_MT)
    local entry = self:operator(opname)
    task.op = entry.mod
    if type(spec) ~= "table" then
        task.id = "?"
        problem(self, file, line, sfmt("t.%s: expected a table of options, got %s", opname, show(spec)))
        return task
    end
    local id = spec.id
    if id == nil then
        task.id = "?"
        problem(self, file, line, sfmt("t.%s: missing task 'id'", opname))
    elseif not valid_id(id) then
        task.id = tostring(id)
        problem(self, file, line, sfmt("t.%s: invalid task id %s: must be 1-%d characters of "
            .. "[A-Za-z0-9_.-], not containing '..'", opname, show(id), ID_MAX))
    else
        task.id = id
    end
    if entry.err then
        task_problem(self, task, entry.err)
        task.invalid = true
    end
    self.tasks_in_order[#self.tasks_in_order + 1] = task
    task.spec = spec
    return task
end

-- Validates one option value; returns true when fine.
local function check_value(b, task, name, v, validator, origin)
    if validator.ok(v) then
        return true
    end
    local extra = ""
    if type(v) == "string" and name == "trigger_rule" then
        extra = suggest(v, _M.TRIGGER_RULES)
    end
    local msg = sfmt("'%s' must be %s, got %s%s", name, validator.want, show(v), extra)
    if origin then
        msg = origin .. ": " .. msg
    end
    if task then
        task_problem(b, task, msg)
    else
        b:dag_problem(msg)
    end
    return false
end

function Build:dag_problem(msg)
    problem(self, self.file, self.line, sfmt("dag '%s': %s", tostring(self.dag.id), msg))
end

-- The option names a task of this operator accepts, built once per
-- operator and build.
local function known_options(entry)
    local known = entry.known
    if not known then
        known = {}
        for k in pairs(COMMON) do known[k] = true end
        if entry.schema.sensor then
            for k in pairs(SENSOR) do known[k] = true end
        end
        for k in pairs(entry.schema.fields) do known[k] = true end
        known.id, known.after = true, true
        entry.known = known
    end
    return known
end

-- The value of option `name` for a task: its spec, else default_args, else
-- the dag's on_retry for on_retry, else the validator's default.
function Build:pick(task, spec, name, validator, is_field)
    local v = spec[name]
    if v == nil then
        local da = self.default_args
        v = da[name]
        -- common/sensor defaults were checked once at the dag level;
        -- operator fields are checked against this operator's type.
        if v ~= nil and is_field and not validator.ok(v) then
            local msg = sfmt("default_args: '%s' must be %s for operator '%s', got %s",
                name, validator.want, task.operator, show(v))
            if not self.reported[msg] then
                self.reported[msg] = true
                self:dag_problem(msg)
            end
        end
        if v == nil and name == "on_retry" then
            v = self.dag.on_retry
        end
        if v == nil then
            v = validator.default
            if type(v) == "table" then v = copy(v) end
        end
    end
    -- 3.0 passes as an integer; store it as one
    if math_type(v) == "float" and validator.want:find("integer", 1, true) and validator.ok(v) then
        v = math.tointeger(v)
    end
    return v
end

-- Fills a task's options from its spec, default_args and defaults.
-- Common and sensor options equal to their default are left to the
-- metatable (TASK_DEFAULTS); operator fields are always stored.
function Build:finish_task(task)
    local spec = task.spec
    task.spec = nil
    if type(spec) ~= "table" or task.invalid then
        task.invalid = nil
        task.upstream, task.downstream = {}, {}
        return
    end
    local entry = self.ops[task.operator]
    local schema = entry.schema
    local fields = schema.fields
    local da = self.default_args
    -- options of the spec itself: a quick pass, and the sorted pass that
    -- reports problems in a stable order only when something is wrong
    local known = known_options(entry)
    local bad = false
    for k, v in pairs(spec) do
        if not known[k] then
            bad = true
            break
        elseif k ~= "id" and k ~= "after" then
            if not (COMMON[k] or SENSOR[k] or fields[k]).ok(v) then
                bad = true
                break
            end
        end
    end
    if bad then
        for _, k in ipairs(sorted_keys(spec)) do
            local v = spec[k]
            if type(k) ~= "string" then
                task_problem(self, task, sfmt("option names must be strings, got %s", show(k)))
            elseif not known[k] then
                task_problem(self, task, sfmt("unknown option '%s'%s", k, suggest(k, known)))
            elseif k ~= "id" and k ~= "after" then
                local validator = COMMON[k] or SENSOR[k] or fields[k]
                check_value(self, task, k, v, validator)
            end
        end
    end
    -- common and sensor options: only those set in the spec or in
    -- default_args can differ from the defaults (on_retry also falls back
    -- to the dag's)
    local defaults, sensor = TASK_DEFAULTS, schema.sensor
    if sensor then
        setmetatable(task, SENSOR_TASK_MT)
        defaults = SENSOR_DEFAULTS
    end
    local function set(name)
        local validator = COMMON[name] or (sensor and SENSOR[name])
        if validator and name ~= "params" then
            local v = self:pick(task, spec, name, validator)
            if v ~= defaults[name] then task[name] = v end
        end
    end
    for name in pairs(spec) do set(name) end
    for name in pairs(da) do
        if spec[name] == nil then set(name) end
    end
    if spec.on_retry == nil and da.on_retry == nil then
        task.on_retry = self.dag.on_retry
    end
    for _, name in ipairs(schema.field_order) do
        local validator = fields[name]
        local v = self:pick(task, spec, name, validator, true)
        if v == nil and validator.required then
            task_problem(self, task, sfmt("missing required option '%s'", name))
        end
        task[name] = v
    end
    -- params: dag params < default_args.params < task params
    local params = copy(self.dag.params)
    if type(da.params) == "table" then
        for k, v in pairs(da.params) do params[k] = v end
    end
    if type(spec.params) == "table" then
        for k, v in pairs(spec.params) do params[k] = v end
    end
    task.params = params
    task.weight = task.priority_weight
    task.after_spec = spec.after
end

-- Resolves `after` lists and >> / chain edges into upstream/downstream
-- (zkflow.dsl.chain).
function Build:resolve_edges()
    chain.resolve(self, function(task, msg) task_problem(self, task, msg) end)
end

-- Reports every cycle as a path (zkflow.dsl.graph); true when there is none.
function Build:check_cycles()
    local cycles = graph.cycles(self.dag)
    for _, path in ipairs(cycles) do
        self:dag_problem("cycle: " .. path)
    end
    return #cycles == 0
end

function Build:toposort()
    return graph.toposort(self.dag)
end

function Build:weights()
    return graph.weights(self.dag)
end

------------------------------------------------------------------------------
-- Entry point
------------------------------------------------------------------------------

--- Builds a DAG from a spec table.  `opts` (all optional):
---   find_operator(name) -> module | nil, err   operator lookup
---   level                                      not needed: call sites are
---                                              found by skipping internals
--- Raises one error listing every problem ("file:line: message" per line).
function _M.new(spec, opts)
    opts = opts or {}
    local lines_cache = {}
    local function lines_of(source)
        if lines_cache[source] == nil then
            local text = opts.source_text
            if not (text and source == "@" .. tostring(opts.file)) and source:sub(1, 1) == "@" then
                local f = io.open(source:sub(2), "rb")
                if f then
                    text = f:read("a")
                    f:close()
                end
            end
            local lines = false
            if type(text) == "string" then
                lines = {}
                for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
            end
            lines_cache[source] = lines
        end
        return lines_cache[source] or nil
    end
    local file, line = callsite(2)
    if not file then
        file, line = locate_by_functions(spec, { "tasks", "on_success", "on_failure", "on_retry" },
            "dag%s*[{(]", lines_of)
    end
    if not file then
        file, line = opts.file or "?", 0
    end
    if type(spec) ~= "table" then
        error(sfmt("%s:%d: flow.dag: expected a table, got %s", file, line, show(spec)), 0)
    end
    local dag = setmetatable({ file = file, line = line }, DAG_MT)
    local b = setmetatable({
        dag = dag, file = file, line = line, problems = {}, edges = {},
        tasks_in_order = {}, ops = {}, reported = {},
        find_operator = opts.find_operator or _M.find_builtin,
    }, Build)

    -- id
    if spec.id == nil then
        dag.id = "?"
        problem(b, file, line, "dag: missing 'id'")
    elseif not valid_id(spec.id) then
        dag.id = tostring(spec.id)
        problem(b, file, line, sfmt("dag: invalid id %s: must be 1-%d characters of "
            .. "[A-Za-z0-9_.-], not containing '..'", show(spec.id), ID_MAX))
    else
        dag.id = spec.id
    end
    for _, k in ipairs(sorted_keys(spec)) do
        if not DAG_FIELDS[k] then
            b:dag_problem(sfmt("unknown field %s%s", type(k) == "string" and ("'" .. k .. "'") or show(k),
                suggest(k, DAG_FIELDS)))
        end
    end

    -- schedule
    local sched, serr = _M.normalize_schedule(spec.schedule)
    if serr then
        b:dag_problem(serr)
    end
    dag.schedule = sched

    -- dates
    for _, k in ipairs({ "start_date", "end_date" }) do
        if spec[k] ~= nil then
            local t, err = time.epoch(spec[k])
            if not t and type(spec[k]) == "string" then
                -- the message quotes the value already
                b:dag_problem(sfmt("'%s': %s", k, err))
            elseif not t then
                b:dag_problem(sfmt("'%s' %s: %s", k, show(spec[k]), err))
            end
            dag[k] = t
        end
    end
    if dag.start_date and dag.end_date and dag.start_date > dag.end_date then
        b:dag_problem(sfmt("'start_date' (%s) is after 'end_date' (%s)",
            time.iso(dag.start_date), time.iso(dag.end_date)))
    end

    for _, k in ipairs(DAGV_ORDER) do
        local validator, v = DAGV[k], spec[k]
        if v ~= nil and not check_value(b, nil, k, v, validator) then
            v = nil
        end
        if v == nil then
            v = validator.default
        end
        if type(v) == "table" then v = copy(v) end
        dag[k] = v
    end

    -- default_args: common options are checked once here; operator fields
    -- are checked where they apply (they may differ by operator).
    local da = dag.default_args
    b.default_args = da
    local da_fields = {}
    for _, k in ipairs(sorted_keys(da)) do
        local v = da[k]
        if k == "id" or k == "after" then
            b:dag_problem(sfmt("default_args: '%s' cannot be a default", k))
            da[k] = nil
        elseif COMMON[k] or SENSOR[k] then
            if not check_value(b, nil, k, v, COMMON[k] or SENSOR[k], "default_args") then
                da[k] = nil
            end
        else
            da_fields[#da_fields + 1] = k
        end
    end

    -- tasks
    dag.tasks, dag.order = {}, {}
    local tasks_fn = spec.tasks
    if tasks_fn == nil then
        b:dag_problem("missing 'tasks' (a function(t) that declares the tasks)")
    elseif type(tasks_fn) ~= "function" then
        b:dag_problem(sfmt("'tasks' must be a function(t), got %s", show(tasks_fn)))
    else
        local factories = {}
        local t = setmetatable({}, {
            __index = function(_, name)
                local f = factories[name]
                if not f then
                    f = function(tspec)
                        if b.done then
                            error(sfmt("dag '%s': tasks must be declared inside tasks()",
                                tostring(dag.id)), 2)
                        end
                        local tf, tl = callsite(2)
                        if not tf then
                            tf, tl = locate_by_functions(tspec, { "run", "on_execute", "on_success",
                                "on_failure", "on_retry" }, "%." .. name .. "%s*[{(]", lines_of)
                        end
                        if not tf then
                            tf, tl = file, line
                        end
                        local task = b:new_task(name, tspec, tf, tl)
                        return task
                    end
                    factories[name] = f
                end
                return f
            end,
            __newindex = function() error("the task factory is read-only", 2) end,
        })
        local ok, r1, r2 = pcall(tasks_fn, t)
        if not ok then
            local msg = r1
            if type(msg) ~= "string" then
                msg = tostring(msg)
            end
            b:dag_problem("tasks() raised an error: " .. msg)
        elseif (r1 == nil or r1 == false) and type(r2) == "string" then
            b:dag_problem("tasks() returned an error: " .. r2)
        elseif type(r1) == "string" then
            b:dag_problem("tasks() returned an error: " .. r1)
        end
    end
    b.done = true

    -- register tasks (declaration order), duplicates
    for _, task in ipairs(b.tasks_in_order) do
        if task.id ~= "?" and valid_id(task.id) then
            local prev = dag.tasks[task.id]
            if prev then
                task_problem(b, task, sfmt("duplicate task id (first defined at %s:%d)", prev.file, prev.line))
            else
                dag.tasks[task.id] = task
                dag.order[#dag.order + 1] = task.id
            end
        end
    end
    for _, task in ipairs(b.tasks_in_order) do
        b:finish_task(task)
    end

    -- default_args keys that no operator of this dag accepts
    for _, k in ipairs(da_fields) do
        local accepted = false
        for _, entry in pairs(b.ops) do
            if entry.schema and entry.schema.fields[k] then
                accepted = true
            end
        end
        if not accepted then
            local names = {}
            for n in pairs(COMMON) do names[#names + 1] = n end
            for n in pairs(SENSOR) do names[#names + 1] = n end
            for _, entry in pairs(b.ops) do
                if entry.schema then
                    for n in pairs(entry.schema.fields) do names[#names + 1] = n end
                end
            end
            b:dag_problem(sfmt("default_args: unknown option '%s'%s", tostring(k), suggest(k, names)))
        end
    end

    b:resolve_edges()
    for _, task in ipairs(b.tasks_in_order) do
        task.file = nil
    end
    local acyclic = b:check_cycles()

    if #b.problems > 0 then
        error(report(b.problems), 0)
    end

    dag.topo = acyclic and b:toposort() or {}
    dag.roots, dag.leaves = {}, {}
    for _, id in ipairs(dag.order) do
        local task = dag.tasks[id]
        if #task.upstream == 0 then dag.roots[#dag.roots + 1] = id end
        if #task.downstream == 0 then dag.leaves[#dag.leaves + 1] = id end
    end
    b:weights()
    -- the build (problems, edges, operator schemas) is garbage from here:
    -- the tasks keep only a small marker for link() and is_task()
    local finished = { done = true, dag = dag }
    for _, task in ipairs(b.tasks_in_order) do
        task_mt_of[task] = finished
    end
    return dag
end

return _M
