-- The DAG DSL: flow.dag, the task factory, dependencies and validation.

local flow = require "zkflow"
local dagmod = require "zkflow.dsl.dag"
local loader = require "zkflow.dsl.loader"

local FIX = "spec/fixtures/dags/"

-- The line of the caller plus `offset`: lets a spec name the line of a
-- flow.dag / t.x call written a few lines below.
local function here(offset)
    return debug.getinfo(2, "l").currentline + (offset or 0)
end

local THIS = debug.getinfo(1, "S").source:sub(2)

local function build_error(spec)
    local ok, err = pcall(flow.dag, spec)
    assert.is_false(ok, "expected flow.dag to fail")
    return err
end

local function simple(tasks, extra)
    local spec = { id = "d", tasks = tasks }
    for k, v in pairs(extra or {}) do spec[k] = v end
    return flow.dag(spec)
end

describe("zkflow module", function()
    it("exports the DSL and a version", function()
        assert.equal("0.1.0", flow.version)
        for _, name in ipairs({ "dag", "chain", "every", "cron", "sleep", "skip", "fail",
                                "is_skip", "is_fail", "run", "spawn", "test" }) do
            assert.is_function(flow[name], name)
        end
    end)

    it("makes flow.every a schedule object", function()
        assert.same(600, flow.every(600).every)
        assert.has_error(function() flow.every(0) end)
        assert.has_error(function() flow.every("5") end)
    end)

    it("raises skip and fail as tables that print well", function()
        local ok, err = pcall(flow.skip, "no data")
        assert.is_false(ok)
        assert.is_true(flow.is_skip(err))
        assert.is_false(flow.is_fail(err))
        assert.equal("no data", err.msg)
        assert.matches("task skipped: no data", tostring(err), 1, true)

        ok, err = pcall(flow.fail, "bad input")
        assert.is_false(ok)
        assert.is_true(flow.is_fail(err))
        assert.is_false(flow.is_skip(err))
        assert.matches("task failed: bad input", tostring(err), 1, true)
        assert.is_false(flow.is_skip("task skipped"))
    end)

    -- Call sites skip the frames of the DSL's own files: a file of
    -- lua/zkflow/dsl/ that did not mark itself would become the "DAG file"
    -- an error points at.
    it("marks every file of the DSL as internal", function()
        local p = assert(io.popen("ls lua/zkflow/dsl"))
        local names = {}
        for f in p:lines() do names[#names + 1] = f:match("^(.*)%.lua$") end
        p:close()
        assert.is_true(#names >= 6)
        for _, name in ipairs(names) do
            require("zkflow.dsl." .. name)
            local marked = false
            for src in pairs(dagmod.internal_sources) do
                if src:sub(-#("zkflow/dsl/" .. name .. ".lua")) == "zkflow/dsl/" .. name .. ".lua" then
                    marked = true
                end
            end
            assert.is_true(marked, name .. ".lua is not marked internal")
        end
    end)
end)

describe("flow.dag", function()
    it("builds the DAG object the scheduler consumes", function()
        local line = here(1)
        local d = flow.dag {
            id = "shape",
            schedule = "@daily",
            start_date = "2026-01-01T00:00:00Z",
            end_date = "2026-02-01",
            catchup = false,
            max_active_runs = 2,
            params = { table = "users" },
            tags = { "etl" },
            description = "a test",
            dagrun_timeout = 3600,
            tasks = function(t)
                local a = t.shell { id = "extract", cmd = "echo {{ ds }}", env = { A = "1" } }
                local b = t.lua { id = "load", run = function() return 1 end, params = { x = 1 } }
                local _ = a >> b
            end,
        }
        assert.equal("shape", d.id)
        assert.equal(THIS, d.file)
        assert.equal(line, d.line)
        assert.same({ cron = "0 0 * * *" }, d.schedule)
        assert.equal(1767225600, d.start_date)
        assert.equal(1769904000, d.end_date)
        assert.is_false(d.catchup)
        assert.equal(2, d.max_active_runs)
        assert.equal(16, d.max_active_tasks)
        assert.same({ table = "users" }, d.params)
        assert.same({ "etl" }, d.tags)
        assert.equal(3600, d.dagrun_timeout)
        assert.same({ "extract", "load" }, d.order)
        assert.same({ "extract" }, d.roots)
        assert.same({ "load" }, d.leaves)
        assert.same({ "extract", "load" }, d.topo)

        local e = d.tasks.extract
        assert.equal("extract", e.id)
        assert.equal("shape", e.dag_id)
        assert.equal("shell", e.operator)
        assert.equal(require("zkflow.operators.shell"), e.op)
        assert.same({}, e.upstream)
        assert.same({ "load" }, e.downstream)
        assert.equal("echo {{ ds }}", e.cmd)
        assert.same({ A = "1" }, e.env)
        assert.is_false(e.do_xcom_push)
        assert.equal(0, e.retries)
        assert.equal(300, e.retry_delay)
        assert.is_false(e.retry_exponential_backoff)
        assert.equal("all_success", e.trigger_rule)
        assert.is_false(e.depends_on_past)
        assert.equal("default_pool", e.pool)
        assert.equal(1, e.pool_slots)
        assert.equal("default", e.queue)
        assert.equal("downstream", e.weight_rule)
        assert.equal(2, e.priority_weight)
        assert.equal(line + 12, e.line)
        assert.same({ table = "users" }, e.params)
        assert.same({ table = "users", x = 1 }, d.tasks.load.params)
        assert.same({ "extract" }, d.tasks.load.upstream)
        assert.is_function(d.tasks.load.run)
        assert.equal("task 'extract' (shell)", tostring(e))
    end)

    it("defaults catchup to true, as Airflow's catchup_by_default", function()
        assert.is_true(simple(function() end).catchup)
    end)

    it("allows a dag without tasks", function()
        local d = simple(function() end)
        assert.same({}, d.order)
        assert.same({}, d.topo)
    end)

    it("maps schedule presets", function()
        local cases = {
            ["@hourly"] = { cron = "0 * * * *" }, ["@daily"] = { cron = "0 0 * * *" },
            ["@midnight"] = { cron = "0 0 * * *" }, ["@weekly"] = { cron = "0 0 * * 0" },
            ["@monthly"] = { cron = "0 0 1 * *" }, ["@yearly"] = { cron = "0 0 1 1 *" },
            ["@annually"] = { cron = "0 0 1 1 *" }, ["*/5 * * * *"] = { cron = "*/5 * * * *" },
        }
        for preset, want in pairs(cases) do
            assert.same(want, simple(function() end, { schedule = preset }).schedule, preset)
        end
        assert.equal("@once", simple(function() end, { schedule = "@once" }).schedule)
        assert.is_nil(simple(function() end, { schedule = "none" }).schedule)
        assert.is_nil(simple(function() end).schedule)
        assert.same({ every = 30 }, simple(function() end, { schedule = flow.every(30) }).schedule)
    end)

    it("rejects a bad schedule", function()
        local err = build_error { id = "s", schedule = "@dayly", tasks = function() end }
        assert.matches("unknown schedule preset \"@dayly\" (did you mean '@daily'?)", err, 1, true)
        err = build_error { id = "s", schedule = "* * *", tasks = function() end }
        assert.matches("bad cron expression \"* * *\": expected 5 fields, got 3", err, 1, true)
        err = build_error { id = "s", schedule = 5, tasks = function() end }
        assert.matches("'schedule' must be", err, 1, true)
    end)

    it("parses and formats ISO 8601 times", function()
        assert.equal(0, dagmod.parse_time("1970-01-01"))
        assert.equal(1767225600, dagmod.parse_time("2026-01-01T00:00:00Z"))
        assert.equal(1767225600, dagmod.parse_time("2026-01-01T02:00:00+02:00"))
        assert.equal(1767225600 + 3723, dagmod.parse_time("2026-01-01 01:02:03.5"))
        assert.equal(951782400, dagmod.parse_time("2000-02-29"))
        assert.equal(12, dagmod.parse_time(12.7))
        assert.is_nil(dagmod.parse_time("2025-02-29"))
        assert.is_nil(dagmod.parse_time("2026-01-01T25:00"))
        assert.is_nil(dagmod.parse_time("yesterday"))
        assert.equal("2026-01-01T00:00:00+00:00", dagmod.iso(1767225600))
        assert.equal("2000-02-29T23:59:59+00:00", dagmod.iso(951868799))
        assert.equal("1969-12-31T23:59:59+00:00", dagmod.iso(-1))
        for _, t in ipairs({ 0, 86399, 951782400, 4102444800, 1767225600 + 3723 }) do
            assert.equal(t, dagmod.parse_time(dagmod.iso(t)))
        end
    end)

    it("refuses a start_date that does not exist, naming the file and line", function()
        local src = 'local flow = require "zkflow"\n'
            .. 'return flow.dag {\n'
            .. '  id = "feb", start_date = "2026-02-30",\n'
            .. '  tasks = function(t) t.empty { id = "a" } end,\n'
            .. '}\n'
        local dags, err = loader.load_source(src, "dags/feb.lua")
        assert.is_nil(dags)
        assert.matches("dags/feb.lua:2: dag 'feb': 'start_date': '2026-02-30' is not a valid date: "
                       .. "2026-02 has days 01-28", err, 1, true)
    end)

    it("applies default_args, task values winning", function()
        local d = simple(function(t)
            t.shell { id = "a", cmd = "true" }
            t.shell { id = "b", cmd = "true", retries = 5, cwd = "/srv" }
            t.file { id = "f", filepath = "/x" }
        end, { default_args = { retries = 2, retry_delay = 10, cwd = "/tmp", poke_interval = 5,
                                params = { p = 1 } } })
        assert.equal(2, d.tasks.a.retries)
        assert.equal(10, d.tasks.a.retry_delay)
        assert.equal("/tmp", d.tasks.a.cwd)
        assert.equal(5, d.tasks.b.retries)
        assert.equal("/srv", d.tasks.b.cwd)
        assert.equal(5, d.tasks.f.poke_interval)
        assert.is_nil(d.tasks.a.poke_interval)
        assert.same({ p = 1 }, d.tasks.a.params)
    end)

    it("rejects default_args that no operator accepts", function()
        local err = build_error {
            id = "da", default_args = { retires = 1, retries = "x" },
            tasks = function(t) t.empty { id = "a" } end,
        }
        assert.matches("default_args: unknown option 'retires' (did you mean 'retries'?)", err, 1, true)
        assert.matches("default_args: 'retries' must be an integer >= 0, got \"x\"", err, 1, true)
    end)

    it("fills sensor options for sensors only", function()
        local d = simple(function(t)
            t.file { id = "f", filepath = "/x", mode = "reschedule" }
            t.external_task { id = "e", external_dag_id = "other" }
            t.time_delta { id = "td", delta = 60 }
        end)
        local f = d.tasks.f
        assert.equal("reschedule", f.mode)
        assert.equal(60, f.poke_interval)
        assert.equal(7 * 24 * 3600, f.timeout)
        assert.is_false(f.soft_fail)
        assert.is_false(f.exponential_backoff)
        assert.same({ "success" }, d.tasks.e.allowed_states)
        assert.equal(60, d.tasks.td.delta)
        local err = build_error { id = "s", tasks = function(t) t.empty { id = "x", mode = "poke" } end }
        assert.matches("task 'x': unknown option 'mode'", err, 1, true)
    end)

    it("stores integral floats of integer options as integers", function()
        local d = simple(function(t) t.empty { id = "a", retries = 3.0 } end)
        assert.equal("integer", math.type(d.tasks.a.retries))
    end)

    it("computes the effective priority weight per weight_rule", function()
        local d = simple(function(t)
            local a = t.empty { id = "a", priority_weight = 2 }
            local b = t.empty { id = "b", priority_weight = 3 }
            local c = t.empty { id = "c", priority_weight = 4 }
            local e = t.empty { id = "e" }
            local _ = a >> { b, c } >> e    -- returns {b, c}; then e after both
            t.empty { id = "up", weight_rule = "upstream", after = { e } }
            t.empty { id = "abs", weight_rule = "absolute", priority_weight = 7, after = { a } }
        end)
        -- downstream: own + every distinct descendant (e counted once)
        assert.equal(2 + 3 + 4 + 1 + 1 + 7, d.tasks.a.priority_weight)
        assert.equal(3 + 1 + 1, d.tasks.b.priority_weight)
        assert.equal(1 + 1, d.tasks.e.priority_weight)
        -- upstream: own + every ancestor
        assert.equal(1 + 1 + 3 + 4 + 2, d.tasks.up.priority_weight)
        assert.equal(7, d.tasks.abs.priority_weight)
    end)
end)

describe("dependencies", function()
    local function edges(d)
        local out = {}
        for _, id in ipairs(d.order) do
            out[id] = d.tasks[id].upstream
        end
        return out
    end

    it("are the same declared with after, chain or >>", function()
        local by_after = simple(function(t)
            local a = t.empty { id = "a" }
            t.empty { id = "b", after = { a } }
            t.empty { id = "c", after = { "b" } }
        end)
        local by_chain = simple(function(t)
            flow.chain(t.empty { id = "a" }, t.empty { id = "b" }, t.empty { id = "c" })
        end)
        local by_shr = simple(function(t)
            local a, b, c = t.empty { id = "a" }, t.empty { id = "b" }, t.empty { id = "c" }
            local r = a >> b >> c
            assert.equal(c, r)
        end)
        local want = { a = {}, b = { "a" }, c = { "b" } }
        assert.same(want, edges(by_after))
        assert.same(want, edges(by_chain))
        assert.same(want, edges(by_shr))
        assert.same(by_after.topo, by_shr.topo)
    end)

    it("accept lists on either side of >>", function()
        local d = simple(function(t)
            local a, b = t.empty { id = "a" }, t.empty { id = "b" }
            local c, e = t.empty { id = "c" }, t.empty { id = "e" }
            local r1 = { a, b } >> c
            local r2 = c >> { e }
            assert.equal(c, r1)
            assert.same({ e }, r2)
        end)
        assert.same({ a = {}, b = {}, c = { "a", "b" }, e = { "c" } }, edges(d))
        assert.same({ "a", "b" }, d.roots)
        assert.same({ "e" }, d.leaves)
        assert.same({ "c" }, d.tasks.a.downstream)
    end)

    it("chain fans out to lists and pairs adjacent lists", function()
        local d = simple(function(t)
            local a = t.empty { id = "a" }
            local b1, b2 = t.empty { id = "b1" }, t.empty { id = "b2" }
            local c1, c2 = t.empty { id = "c1" }, t.empty { id = "c2" }
            local z = t.empty { id = "z" }
            flow.chain(a, { b1, b2 }, { c1, c2 }, z)
        end)
        assert.same({ a = {}, b1 = { "a" }, b2 = { "a" }, c1 = { "b1" }, c2 = { "b2" },
                      z = { "c1", "c2" } }, edges(d))
        local err = build_error { id = "x", tasks = function(t)
            flow.chain({ t.empty { id = "a" } }, { t.empty { id = "b" }, t.empty { id = "c" } })
        end }
        assert.matches("adjacent lists must have the same length", err, 1, true)
    end)

    it("keeps a topological order in declaration order", function()
        local d = simple(function(t)
            local z = t.empty { id = "z" }
            local y = t.empty { id = "y" }
            local x = t.empty { id = "x", after = { z, y } }
            local w = t.empty { id = "w" }
            local _ = w >> z
            return x
        end)
        assert.same({ "y", "w", "z", "x" }, d.topo)
    end)

    it("must be declared inside tasks()", function()
        local saved_t, a, b
        simple(function(t)
            saved_t = t
            a, b = t.empty { id = "a" }, t.empty { id = "b" }
        end)
        assert.has_error(function() saved_t.empty { id = "late" } end,
            "dag 'd': tasks must be declared inside tasks()")
        assert.has_error(function() local _ = a >> b end,
            "dag 'd': dependencies must be declared inside tasks()")
    end)

    it("may not cross dags", function()
        local other
        simple(function(t) other = t.empty { id = "o" } end)
        local err = build_error { id = "x", tasks = function(t)
            local _ = t.empty { id = "a" } >> other
        end }
        assert.matches("belong to different dags", err, 1, true)
        assert.has_error(function() local _ = other >> other end)
    end)
end)

describe("validation", function()
    local err

    setup(function()
        local dags
        dags, err = loader.load_file(FIX .. "bad.lua")
        assert.is_nil(dags)
    end)

    local function has(line, msg)
        local want = FIX .. "bad.lua:" .. line .. ": " .. msg
        assert.matches(want, err, 1, true)
    end

    it("reports every problem, each with file and line", function()
        local n = select(2, err:gsub("\n", "\n")) + 1
        assert.equal(10, n)
    end)

    it("reports unknown dag fields with a suggestion", function()
        has(4, "dag 'bad': unknown field 'schedual' (did you mean 'schedule'?)")
    end)

    it("reports start_date after end_date", function()
        has(4, "dag 'bad': 'start_date' (2026-02-01T00:00:00+00:00) is after 'end_date'")
    end)

    it("reports unknown task options with a suggestion", function()
        has(11, "task 'load': unknown option 'retires' (did you mean 'retries'?)")
    end)

    it("reports wrong types", function()
        has(12, "task 'transform': 'retries' must be an integer >= 0, got \"3\"")
    end)

    it("reports unknown upstreams", function()
        has(12, "task 'transform': unknown upstream 'extrct' (did you mean 'extract'?)")
    end)

    it("reports a bad trigger_rule", function()
        has(13, "task 'join': 'trigger_rule' must be one of all_success,")
        assert.matches("got \"all_sucess\" (did you mean 'all_success'?)", err, 1, true)
    end)

    it("reports duplicate task ids", function()
        has(14, "task 'extract': duplicate task id (first defined at " .. FIX .. "bad.lua:10)")
    end)

    it("reports unknown operators", function()
        has(15, "task 'typo': unknown operator 'shel' (did you mean 'shell'?)")
    end)

    it("reports invalid task ids", function()
        has(16, "t.empty: invalid task id \"bad id!\"")
    end)

    it("reports missing required operator fields", function()
        has(17, "task 'nocmd': missing required option 'cmd'")
    end)

    it("names the cycle", function()
        local _, cerr = loader.load_file(FIX .. "cycle.lua")
        assert.equal(FIX .. "cycle.lua:3: dag 'cycle': cycle: a -> b -> c -> a", cerr)
    end)

    it("reports errors raised by tasks()", function()
        local _, terr = loader.load_file(FIX .. "tasks_error.lua")
        assert.equal(FIX .. "tasks_error.lua:3: dag 'tasks_error': tasks() raised an error: "
            .. FIX .. "tasks_error.lua:7: boom", terr)
    end)

    it("reports errors returned by tasks()", function()
        local e = build_error { id = "r", tasks = function() return nil, "no config" end }
        assert.matches("tasks() returned an error: no config", e, 1, true)
    end)

    it("reports a missing or invalid dag id and missing tasks", function()
        local line = here(1)
        local _, e = pcall(flow.dag, { tasks = function() end })
        assert.equal(THIS .. ":" .. line .. ": dag: missing 'id'", e)
        e = build_error { id = ("x"):rep(251), tasks = function() end }
        assert.matches("dag: invalid id", e, 1, true)
        e = build_error { id = "no tasks" }
        assert.matches("dag: invalid id \"no tasks\"", e, 1, true)
        assert.matches("missing 'tasks'", e, 1, true)
    end)

    it("refuses ids that would name a path outside their folder (zkflow.ids)", function()
        local e = build_error { id = "..", tasks = function() end }
        assert.matches("dag: invalid id \"..\"", e, 1, true)
        e = build_error { id = "a..b", tasks = function() end }
        assert.matches("not containing '..'", e, 1, true)
        e = build_error { id = "ok", tasks = function(t) t.empty { id = ".." } end }
        assert.matches("invalid task id \"..\"", e, 1, true)
    end)

    it("points at the task's line from a spec file too", function()
        local line = here(2)
        local e = build_error { id = "l", tasks = function(t)
            t.shell { id = "x", cmd = "true", retries = -1 }
        end }
        assert.equal(THIS .. ":" .. line .. ": task 'x': 'retries' must be an integer >= 0, got -1", e)
    end)

    it("checks option types", function()
        local e = build_error { id = "types", tasks = function(t)
            t.shell { id = "a", cmd = "x", retry_delay = -1, pool_slots = 0, queue = "",
                      execution_timeout = 0, on_success = "f", weight_rule = "sideways",
                      depends_on_past = "yes", after = "nope" }
        end }
        for _, m in ipairs({ "'retry_delay' must be a number >= 0", "'pool_slots' must be an integer >= 1",
                             "'queue' must be a non-empty string", "'execution_timeout' must be a number > 0",
                             "'on_success' must be a function", "'weight_rule' must be one of",
                             "'depends_on_past' must be a boolean", "unknown upstream 'nope'" }) do
            assert.matches(m, e, 1, true)
        end
    end)
end)

describe("operators", function()
    it("ship as schema modules", function()
        for _, name in ipairs({ "lua", "shell", "empty", "branch", "short_circuit", "file",
                                "time_delta", "external_task" }) do
            local op = require("zkflow.operators." .. name)
            assert.equal(name, op.name)
            assert.is_table(op.fields)
            assert.truthy(dagmod.operator_schema(name, op))
        end
        assert.is_true(require("zkflow.operators.file").sensor)
        assert.is_true(require("zkflow.operators.branch").branch)
        assert.is_true(require("zkflow.operators.short_circuit").short_circuit)
    end)

    it("apply field defaults", function()
        local d = simple(function(t)
            t.short_circuit { id = "s", run = function() return true end }
            t.shell { id = "sh", cmd = "true" }
        end)
        assert.is_true(d.tasks.s.ignore_downstream_trigger_rules)
        assert.equal(99, d.tasks.sh.skip_on_exit_code)
    end)

    it("can be found through a custom finder", function()
        local mod = { fields = { n = "integer" }, templated = {} }
        local d = dagmod.new({ id = "c", tasks = function(t) t.mine { id = "m", n = 3 } end },
            { find_operator = function(name) if name == "mine" then return mod end end })
        assert.equal(mod, d.tasks.m.op)
        assert.equal(3, d.tasks.m.n)
    end)
end)

describe("DSL messages", function()
    it("suggests cmd for comand, as Airflow users type command", function()
        local err = build_error { id = "m", tasks = function(t)
            t.shell { id = "x", comand = "echo hi" }
        end }
        assert.matches("task 'x': unknown option 'comand' (did you mean 'cmd'?)", err, 1, true)
    end)

    it("names the operators that exist for an unknown one", function()
        local err = build_error { id = "m", tasks = function(t)
            t.bash { id = "x", cmd = "echo hi" }
        end }
        assert.matches("task 'x': unknown operator 'bash' (did you mean 'shell'?); operators: "
                       .. table.concat(require("zkflow.dsl.options").SHIPPED, ", "), err, 1, true)
    end)

    it("lists every operator that ships, and only those", function()
        local files = {}
        local p = io.popen("ls lua/zkflow/operators")
        for f in p:lines() do files[#files + 1] = f:match("^(.*)%.lua$") end
        p:close()
        local shipped = {}
        for _, n in ipairs(require("zkflow.dsl.options").SHIPPED) do shipped[#shipped + 1] = n end
        table.sort(files)
        table.sort(shipped)
        assert.same(files, shipped)
    end)

    it("reports a duplicate task id linked to its twin as a duplicate, not a cycle", function()
        local err = build_error { id = "m", tasks = function(t)
            local a = t.shell { id = "x", cmd = "echo hi" }
            local b = t.shell { id = "x", cmd = "echo ho" }
            local _ = a >> b
        end }
        assert.matches("task 'x': duplicate task id", err, 1, true)
        assert.is_nil(err:find("depends on itself", 1, true))
        assert.is_nil(err:find("cycle", 1, true))
    end)

    it("reports a duplicate id that closes a loop as a duplicate, not a cycle", function()
        local ok, err = pcall(flow.dag, { id = "m", tasks = function(t)
            local a = t.shell { id = "x", cmd = "echo 1" }
            local b = t.shell { id = "y", cmd = "echo 2" }
            local c = t.shell { id = "x", cmd = "echo 3" }
            local _ = a >> b >> c
            t.shell { id = "z", cmd = "echo 4", after = { c } }
        end })
        assert.is_false(ok)
        assert.matches("task 'x': duplicate task id", err, 1, true)
        assert.is_nil(err:find("cycle", 1, true))
    end)

    it("still reports a task that depends on itself", function()
        local err = build_error { id = "m", tasks = function(t)
            local a = t.shell { id = "x", cmd = "echo hi" }
            local _ = a >> a
        end }
        assert.matches("task 'x': depends on itself", err, 1, true)
    end)
end)
