-- The HTTP API router, called directly (no HTTP): a real SQLite store in a
-- temporary file and a real DAG folder read by the loader.
local core   = require "zkflow.core"
local api    = require "zkflow.api"
local state  = require "zkflow.state"
local loader = require "zkflow.dsl.loader"

local DAG = [[
local flow = require "zkflow"
return flow.dag {
  id = "etl",
  schedule = "@daily",
  start_date = "2026-01-01T00:00:00Z",
  tags = { "demo" },
  tasks = function(t)
    local extract = t.lua   { id = "extract", run = function() return 1 end }
    local load    = t.lua   { id = "load",    run = function() return 2 end }
    local report  = t.empty { id = "report" }
    flow.chain(extract, load, report)
  end,
}
]]

local function write(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end

local function tmpdir()
    local p = os.tmpname()
    os.remove(p)
    assert(os.execute("mkdir -p '" .. p .. "'"))
    return p
end

describe("zkflow.api", function()
    local dir, st, S, h, db

    local function call(method, path, body, query)
        local status, headers, out = h:handle {
            method = method, path = path, body = body, query = query or {},
        }
        local v
        if headers["content-type"] == "application/json" then
            v = core.json_decode(out)
        end
        return status, v, out, headers
    end

    before_each(function()
        dir = tmpdir()
        assert(os.execute("mkdir -p '" .. dir .. "/dags'"))
        write(dir .. "/dags/etl.lua", DAG)
        write(dir .. "/dags/broken.lua", "return 1 +")
        db = dir .. "/zkflow.db"
        st = assert(core.store(db))
        S = state.new(st, "/zkflow")
        h = api.new {
            store = st, root = "/zkflow", log_dir = dir .. "/logs",
            dags = function() return loader.scan(dir .. "/dags") end,
        }
    end)

    after_each(function()
        st:close()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    it("answers health with status ok and the store kind", function()
        local status, v = call("GET", "/api/v1/health")
        assert.equal(200, status)
        assert.equal("ok", v.status)
        assert.equal("sqlite", v.store)
        assert.is_table(v.scheduler)
    end)

    it("lists DAGs and import errors of files that define none", function()
        local status, v = call("GET", "/api/v1/dags")
        assert.equal(200, status)
        assert.equal(2, #v.dags)
        assert.equal("etl", v.dags[1].dag_id)
        assert.equal(false, v.dags[1].paused)
        assert.equal(core.null, v.dags[1].import_error)
        assert.is_string(v.dags[1].version)
        assert.equal(core.null, v.dags[2].dag_id)
        assert.matches("broken.lua", v.dags[2].file)
        assert.is_string(v.dags[2].import_error)
    end)

    it("lists the other DAGs when one file's text is not UTF-8", function()
        write(dir .. "/dags/bytes.lua", 'return require("zkflow").dag { id = "bytes", '
              .. 'description = "\xff", tasks = function(t) t.empty { id = "a" } end }')
        local status, v = call("GET", "/api/v1/dags")
        assert.equal(200, status)
        local ids, errs = {}, {}
        for _, d in ipairs(v.dags) do
            if d.dag_id ~= core.null then ids[#ids + 1] = d.dag_id end
            if d.import_error ~= core.null then errs[d.file] = d.import_error end
        end
        assert.same({ "etl" }, ids)
        assert.matches("'description': not valid UTF-8", errs[dir .. "/dags/bytes.lua"], 1, true)
    end)

    it("shows one DAG with its tasks in order", function()
        local status, v = call("GET", "/api/v1/dags/etl")
        assert.equal(200, status)
        assert.equal("etl", v.dag_id)
        assert.equal(3, #v.tasks)
        assert.equal("extract", v.tasks[1].task_id)
        assert.same({ "load" }, { table.unpack(v.tasks[1].downstream) })
    end)

    it("answers 404 for an unknown DAG and an unknown path", function()
        assert.equal(404, (call("GET", "/api/v1/dags/nope")))
        assert.equal(404, (call("GET", "/api/v1/nothing/here")))
        assert.equal(404, (call("POST", "/api/v1/dags/nope/runs", "{}")))
    end)

    it("answers 405 for a wrong method", function()
        local status, _, _, headers = call("DELETE", "/api/v1/dags")
        assert.equal(405, status)
        assert.equal("GET", headers.allow)
    end)

    it("pauses and unpauses through PATCH", function()
        local status, v = call("PATCH", "/api/v1/dags/etl",
                               '{"is_paused": true}')
        assert.equal(200, status)
        assert.equal(true, v.paused)
        assert.is_true(S:is_paused("etl"))
        call("PATCH", "/api/v1/dags/etl", '{"is_paused": false}')
        assert.is_false(S:is_paused("etl"))
    end)

    it("answers 400 for a bad JSON body", function()
        local status, v = call("PATCH", "/api/v1/dags/etl", "{nope")
        assert.equal(400, status)
        assert.is_string(v.error)
        assert.equal(400, (call("POST", "/api/v1/dags/etl/runs", "[1,")))
        assert.equal(400, (call("PATCH", "/api/v1/dags/etl", '{"x":1}')))
    end)

    it("triggers a queued manual run with conf and answers 201", function()
        local status, v = call("POST", "/api/v1/dags/etl/runs",
                               '{"conf": {"who": "spec"}}')
        assert.equal(201, status)
        assert.equal("etl", v.dag_id)
        assert.matches("^manual__%d%d%d%d%-", v.run_id)
        local run = S:get_run("etl", v.run_id)
        assert.equal("queued", run.state)
        assert.equal("manual", run.run_type)
        assert.equal("spec", run.conf.who)
    end)

    it("answers 400 naming logical_date for a date that does not exist", function()
        local status, v = call("POST", "/api/v1/dags/etl/runs",
                               '{"logical_date": "2026-02-30T00:00:00Z"}')
        assert.equal(400, status)
        assert.equal("'logical_date': '2026-02-30T00:00:00Z' is not a valid date: "
                     .. "2026-02 has days 01-28", v.error)
        assert.same({}, S:run_ids("etl"))
        status = call("POST", "/api/v1/dags/etl/runs", '{"logical_date": "2026-03-02T00:00:00Z"}')
        assert.equal(201, status)
    end)

    it("triggers without a body", function()
        local status, v = call("POST", "/api/v1/dags/etl/runs")
        assert.equal(201, status)
        assert.is_string(v.run_id)
    end)

    it("refuses a second run with the same id", function()
        assert.equal(201, (call("POST", "/api/v1/dags/etl/runs",
                                '{"run_id": "r1"}')))
        assert.equal(409, (call("POST", "/api/v1/dags/etl/runs",
                                '{"run_id": "r1"}')))
    end)

    describe("with a finished run", function()
        local log
        before_each(function()
            assert(S:trigger({ id = "etl" }, { run_id = "r1" }))
            S:update_run("etl", "r1", { state = "success" })
            log = dir .. "/logs/etl/r1/extract.1.log"
            assert(os.execute("mkdir -p '" .. dir .. "/logs/etl/r1'"))
            write(log, "hello from extract\n")
            S:put_ti("etl", "r1", { task_id = "extract", state = "success",
                                    try_number = 1, xcom = 1, log = log })
            S:put_ti("etl", "r1", { task_id = "load", state = "failed",
                                    try_number = 2 })
        end)

        it("lists runs of a DAG", function()
            local status, v = call("GET", "/api/v1/dags/etl/runs")
            assert.equal(200, status)
            assert.equal(1, #v.dag_runs)
            assert.equal("r1", v.dag_runs[1].run_id)
            assert.equal("success", v.dag_runs[1].state)
        end)

        it("embeds task states in the run list when asked", function()
            local _, v = call("GET", "/api/v1/dags/etl/runs", nil,
                              { tasks = "1" })
            assert.equal("failed", v.dag_runs[1].tasks.load.state)
            assert.equal(core.null, v.dag_runs[1].tasks.load.waiting_for)
        end)

        it("says in the run list why a depends_on_past task waits (the page's cell title)", function()
            S:put_ti("etl", "r1", { task_id = "report", state = core.null, try_number = 0,
                                    waiting_for = "waiting for report of r0" })
            local _, v = call("GET", "/api/v1/dags/etl/runs", nil, { tasks = "1" })
            assert.equal("waiting for report of r0", v.dag_runs[1].tasks.report.waiting_for)
            local _, _, page = call("GET", "/")
            assert.matches("ti.waiting_for", page, 1, true)
        end)

        it("shows the run object with its task instances", function()
            local status, v = call("GET", "/api/v1/dags/etl/runs/r1")
            assert.equal(200, status)
            assert.equal("etl", v.dag_id)
            assert.equal("r1", v.run_id)
            assert.equal("success", v.state)
            assert.equal("success", v.tasks.extract.state)
            assert.equal(1, v.tasks.extract.try_number)
            assert.equal(1, v.tasks.extract.xcom)
            assert.equal(core.null, v.tasks.extract.worker)
            assert.equal(log, v.tasks.extract.log)
            assert.equal(core.null, v.tasks.load.xcom)
        end)

        it("says why a task instance waits (waiting_for, else null)", function()
            S:put_ti("etl", "r1", { task_id = "later", state = "none", try_number = 0,
                                    waiting_for = "waiting for later of r0" })
            local status, v = call("GET", "/api/v1/dags/etl/runs/r1/tasks/later")
            assert.equal(200, status)
            assert.equal("waiting for later of r0", v.waiting_for)
            local _, t = call("GET", "/api/v1/dags/etl/runs/r1/tasks/extract")
            assert.equal(core.null, t.waiting_for)
        end)

        it("decodes escaped run ids in the path", function()
            assert(S:trigger({ id = "etl" },
                             { run_id = "manual__2026-01-01T00:00:00+00:00" }))
            local status, v = call("GET",
                "/api/v1/dags/etl/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00")
            assert.equal(200, status)
            assert.equal("manual__2026-01-01T00:00:00+00:00", v.run_id)
        end)

        it("answers 404 for an unknown run", function()
            assert.equal(404, (call("GET", "/api/v1/dags/etl/runs/nope")))
        end)

        it("serves a task log as text", function()
            local status, _, body, headers = call("GET",
                "/api/v1/dags/etl/runs/r1/tasks/extract/logs")
            assert.equal(200, status)
            assert.matches("^text/plain", headers["content-type"])
            assert.equal("hello from extract\n", body)
        end)

        it("answers 404 for a missing try's log", function()
            assert.equal(404, (call("GET",
                "/api/v1/dags/etl/runs/r1/tasks/extract/logs", nil,
                { try = "3" })))
        end)

        -- Probe 1 of the hardening issue: ids decoded after the split
        -- went into the log path unchecked, and a NUL cut its suffix.
        it("refuses ids that climb out of the log folder (400, no file read)", function()
            write(dir .. "/secret", "root:x:0:0\n")
            for _, path in ipairs {
                "/api/v1/dags/etl/runs/r1/tasks/..%2F..%2F..%2F..%2Fsecret%00/logs",
                "/api/v1/dags/etl/runs/r1/tasks/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd%00/logs",
                "/api/v1/dags/etl/runs/..%2F..%2F..%2Fsecret%00/tasks/extract/logs",
                "/api/v1/dags/..%2F..%2Fsecret%00/runs/r1/tasks/extract/logs",
                "/api/v1/dags/etl/runs/r1/tasks/ex%00tract/logs",
                "/api/v1/dags/etl/runs/r1/tasks/../logs",
            } do
                local status, v, body = call("GET", path, nil, { try = "1" })
                assert.equal(400, status, path)
                assert.matches("invalid id", v.error, 1, true)
                assert.is_nil(body:find("root:", 1, true), path)
            end
        end)

        it("reads a recorded log path only inside the log folder", function()
            write(dir .. "/secret", "root:x:0:0\n")
            os.remove(log)
            for _, forged in ipairs {
                dir .. "/secret",
                dir .. "/logs/../secret",
                dir .. "/logs/etl/r1/../../../secret",
                "/etc/passwd",
            } do
                S:put_ti("etl", "r1", { task_id = "extract", state = "success",
                                        try_number = 1, log = forged })
                local status, _, body = call("GET",
                    "/api/v1/dags/etl/runs/r1/tasks/extract/logs")
                assert.equal(404, status, forged)
                assert.is_nil(body:find("root:", 1, true), forged)
            end
        end)

        it("answers 400 for a run id that would nest inside another run", function()
            local status, v = call("POST", "/api/v1/dags/etl/runs",
                                   '{"dag_run_id": "r1/extract/x"}')
            assert.equal(400, status)
            assert.matches("dag_run_id", v.error, 1, true)
            assert.is_nil(S:get_run("etl", "r1/extract/x"))
        end)

        it("queues a clear request with the downstream tasks", function()
            local status, v = call("POST", "/api/v1/dags/etl/runs/r1/clear",
                '{"task_ids": ["load"], "downstream": true}')
            assert.equal(200, status)
            assert.same({ "load", "report" }, { table.unpack(v.task_ids) })
            local reqs = S:list_requests()
            assert.equal(1, #reqs)
            assert.equal("clear", reqs[1].req.op)
            assert.equal("r1", reqs[1].req.run_id)
            assert.is_true(reqs[1].req.downstream)
        end)

        it("refuses to clear an unknown task", function()
            assert.equal(404, (call("POST", "/api/v1/dags/etl/runs/r1/clear",
                                    '{"task_ids": ["nope"]}')))
        end)

        it("counts runs and task instances in /metrics", function()
            -- without a scheduler here, the counters its scheduler saved
            -- (zkflow.scheduler.counters) for the run above
            st:create("/zkflow/stats/scheduler", core.json_encode({
                runs = { success = 1 }, task_instances = { success = 1, failed = 1 },
            }), { parents = true })
            local status, _, body, headers = call("GET", "/metrics")
            assert.equal(200, status)
            assert.matches("^text/plain", headers["content-type"])
            assert.matches("\nzkflow_dags 1\n", body)
            assert.matches('zkflow_runs{state="success"} 1', body, 1, true)
            assert.matches('zkflow_runs{state="failed"} 0', body, 1, true)
            assert.matches('zkflow_task_instances{state="failed"} 1', body,
                           1, true)
        end)
    end)

    -- History that scales, item 3: every list answers a page.
    describe("pages its lists", function()
        local function problem(path, query, field)
            local status, v = call("GET", path, nil, query)
            assert.equal(400, status)
            assert.equal(400, v.status)
            assert.equal("Bad Request", v.title)
            assert.equal("about:blank", v.type)
            assert.matches("'" .. field .. "'", v.detail, 1, true)
        end

        before_each(function()
            for i = 1, 30 do
                assert(S:trigger({ id = "etl" }, {
                    run_id = ("r%02d"):format(i),
                    logical_date = 1767225600 + i * 86400,
                }))
            end
        end)

        it("answers 25 runs, newest first, with total_entries", function()
            local status, v = call("GET", "/api/v1/dags/etl/runs")
            assert.equal(200, status)
            assert.equal(30, v.total_entries)
            assert.equal(25, #v.dag_runs)
            assert.equal("r30", v.dag_runs[1].run_id)
            assert.equal("r06", v.dag_runs[25].run_id)
        end)

        it("answers the next page at an offset", function()
            local _, v = call("GET", "/api/v1/dags/etl/runs", nil, { limit = "10", offset = "25" })
            assert.equal(30, v.total_entries)
            assert.equal(5, #v.dag_runs)
            assert.equal("r05", v.dag_runs[1].run_id)
            assert.equal("r01", v.dag_runs[5].run_id)
            _, v = call("GET", "/api/v1/dags/etl/runs", nil, { offset = "40" })
            assert.equal(0, #v.dag_runs)
            assert.equal(30, v.total_entries)
            _, v = call("GET", "/api/v1/dags/etl/runs", nil, { limit = "1000" })
            assert.equal(30, #v.dag_runs)
        end)

        it("refuses a limit over 1000 or below 0, and a bad offset, naming the field", function()
            problem("/api/v1/dags/etl/runs", { limit = "1001" }, "limit")
            problem("/api/v1/dags/etl/runs", { limit = "-1" }, "limit")
            problem("/api/v1/dags/etl/runs", { offset = "-5" }, "offset")
            problem("/api/v1/dags/etl/runs", { offset = "x" }, "offset")
            problem("/api/v1/dags", { limit = "5000" }, "limit")
            problem("/api/v1/members", { limit = "-2" }, "limit")
            problem("/api/v1/importErrors", { offset = "1.5" }, "offset")
            problem("/api/v1/dags/etl/runs/r01/tasks", { limit = "1e9" }, "limit")
        end)

        it("pages the task instances of a run", function()
            for _, t in ipairs({ "extract", "load", "report" }) do
                S:put_ti("etl", "r01", { task_id = t, state = "success", try_number = 1 })
            end
            local _, v = call("GET", "/api/v1/dags/etl/runs/r01/tasks", nil, { limit = "2", offset = "1" })
            assert.equal(3, v.total_entries)
            assert.equal(2, #v.task_instances)
            assert.equal("load", v.task_instances[1].task_id)
            assert.equal("report", v.task_instances[2].task_id)
        end)

        it("pages DAGs, import errors and members", function()
            local _, v = call("GET", "/api/v1/dags", nil, { limit = "1" })
            assert.equal(2, v.total_entries)
            assert.equal(1, #v.dags)
            assert.equal("etl", v.dags[1].dag_id)
            _, v = call("GET", "/api/v1/importErrors")
            assert.equal(1, v.total_entries)
            assert.matches("broken.lua$", v.import_errors[1].filename)
            assert.is_string(v.import_errors[1].stack_trace)
            _, v = call("GET", "/api/v1/importErrors", nil, { offset = "1" })
            assert.equal(0, #v.import_errors)
            for i = 1, 3 do
                st:create("/zkflow/members/workers/w" .. i,
                          core.json_encode({ id = "w" .. i, slots = 1 }), { parents = true })
            end
            _, v = call("GET", "/api/v1/members", nil, { limit = "2" })
            assert.equal(3, v.total_workers)
            assert.equal(0, v.total_schedulers)
            assert.equal(3, v.total_entries)
            assert.equal(2, #v.workers)
        end)
    end)

    it("serves a self-contained page at /", function()
        local status, _, body, headers = call("GET", "/")
        assert.equal(200, status)
        assert.matches("^text/html", headers["content-type"])
        assert.matches("<script>", body, 1, true)
        assert.is_nil(body:find("https?://"))
        assert.is_nil(body:find("<script src", 1, true))
    end)

    -- Hardening probe 5: a failing part answered its message and a path
    -- with invalid UTF-8 a Lua stack trace.  The trace goes to the log.
    it("answers 500 without internals when a part fails, and logs the trace", function()
        local bad = api.new {
            store = st, dags = function() error("boom") end,
        }
        local log = spy.on(core, "log")
        local status, headers, body = bad:handle { method = "GET",
                                                   path = "/api/v1/dags" }
        core.log:revert()
        assert.equal(500, status)
        assert.equal("application/json", headers["content-type"])
        assert.is_nil(body:find("boom", 1, true))
        assert.is_nil(body:find("%.lua"))
        assert.equal("internal error (the server's log has the details)",
                     core.json_decode(body).error)
        assert.spy(log).was_called_with("error", match.has_match("boom"))
        assert.spy(log).was_called_with("error", match.has_match("stack traceback"))
    end)

    it("answers a path with invalid UTF-8 with a 4xx naming the bytes", function()
        for _, path in ipairs { "/api/v1/dags/\xff\xfe", "/api/v1/no\xffpe",
                                "/api/v1/dags/etl/runs/r\xff/tasks" } do
            local status, v, body = call("GET", path)
            assert.is_true(status == 400 or status == 404, path)
            assert.matches("\\xFF", v.error, 1, true)
            assert.is_nil(body:find("traceback", 1, true))
        end
    end)

    -- Hardening probe 3: a page on another site could post a run with a
    -- simple request (text/plain, no preflight).
    describe("refuses cross-site requests that change state", function()
        local function req(method, path, headers, body)
            local status, hd, out = h:handle { method = method, path = path,
                                               query = {}, headers = headers, body = body }
            return status, hd["content-type"] == "application/json" and core.json_decode(out) or out
        end

        it("refuses a text/plain POST from another origin and creates no run", function()
            local status, v = req("POST", "/api/v1/dags/etl/runs",
                { origin = "http://evil.example", host = "127.0.0.1:8080",
                  ["content-type"] = "text/plain" }, "{}")
            assert.equal(403, status)
            assert.matches("Origin: http://evil.example", v.error, 1, true)
            assert.same({}, S:list_runs("etl"))
        end)

        it("refuses by Sec-Fetch-Site, a null origin and a non-JSON type", function()
            assert.equal(403, (req("POST", "/api/v1/dags/etl/runs",
                { ["sec-fetch-site"] = "cross-site" })))
            assert.equal(403, (req("POST", "/api/v1/dags/etl/runs",
                { ["sec-fetch-site"] = "same-site" })))
            assert.equal(403, (req("PATCH", "/api/v1/dags/etl",
                { origin = "null", ["content-type"] = "application/json" },
                '{"is_paused": true}')))
            assert.equal(415, (req("POST", "/api/v1/dags/etl/runs",
                { ["content-type"] = "application/x-www-form-urlencoded" }, "a=1")))
            assert.equal(415, (req("POST", "/api/v1/dags/etl/runs",
                { ["content-type"] = "multipart/form-data; boundary=x" }, "")))
            assert.same({}, S:list_runs("etl"))
        end)

        it("takes same-origin JSON requests, default ports included", function()
            assert.equal(201, (req("POST", "/api/v1/dags/etl/runs",
                { origin = "http://127.0.0.1:8080", host = "127.0.0.1:8080",
                  ["content-type"] = "application/json; charset=utf-8",
                  ["sec-fetch-site"] = "same-origin" }, '{"dag_run_id": "a"}')))
            assert.equal(201, (req("POST", "/api/v1/dags/etl/runs",
                { origin = "http://zk.example", host = "zk.example:80",
                  ["content-type"] = "application/json" }, '{"dag_run_id": "b"}')))
            assert.equal(201, (req("POST", "/api/v1/dags/etl/runs", {}, nil)))
        end)

        it("lets reads through from anywhere", function()
            assert.equal(200, (req("GET", "/api/v1/dags",
                { origin = "http://evil.example", ["sec-fetch-site"] = "cross-site" })))
        end)
    end)

    -- Hardening probe 2: anyone who reached the port could trigger,
    -- pause and clear.
    describe("with auth on", function()
        local A, viewer, operator
        local auth = require "zkflow.api.auth"

        before_each(function()
            h = api.new {
                store = st, root = "/zkflow", log_dir = dir .. "/logs", auth = true,
                dags = function() return loader.scan(dir .. "/dags") end,
            }
            A = auth.new(st, "/zkflow")
            assert(A:add_user("vic", "viewer"))
            assert(A:add_user("ops", "operator", "operator pass"))
            viewer = "Bearer " .. A:new_token("vic")
            operator = "Bearer " .. A:new_token("ops")
        end)

        local function req(method, path, authz, body, extra)
            local headers = extra or {}
            headers.authorization = authz
            if body then headers["content-type"] = "application/json" end
            local status, _, out = h:handle { method = method, path = path, query = {},
                                              headers = headers, body = body }
            return status, out
        end

        it("asks who sent a request (401) but lets health and the page through", function()
            local status, out = req("GET", "/api/v1/dags")
            assert.equal(401, status)
            assert.matches("authentication required", out, 1, true)
            assert.equal(401, (req("GET", "/api/v1/dags", "Bearer zkf_00_11")))
            assert.equal(200, (req("GET", "/api/v1/health")))
            assert.equal(200, (req("GET", "/")))
        end)

        it("lets a viewer read but not trigger (403 naming the role)", function()
            assert.equal(200, (req("GET", "/api/v1/dags", viewer)))
            local status, out = req("POST", "/api/v1/dags/etl/runs", viewer, "{}")
            assert.equal(403, status)
            assert.matches("needs the role operator", out, 1, true)
            assert.same({}, S:list_runs("etl"))
        end)

        it("lets an operator trigger with a token or HTTP basic", function()
            assert.equal(201, (req("POST", "/api/v1/dags/etl/runs", operator, '{"dag_run_id": "t"}')))
            local basic = "Basic " .. core.base64_encode("ops:operator pass")
            assert.equal(201, (req("POST", "/api/v1/dags/etl/runs", basic, '{"dag_run_id": "b"}')))
            assert.equal(401, (req("POST", "/api/v1/dags/etl/runs",
                                   "Basic " .. core.base64_encode("ops:wrong"), "{}")))
        end)

        it("names the scheme in WWW-Authenticate on a 401 (Session for the page)", function()
            local _, _, _, hd = call("GET", "/api/v1/dags")
            assert.equal('Basic realm="zkflow"', hd["www-authenticate"])
            local status, hd2, out = h:handle { method = "GET", path = "/api/v1/dags", query = {},
                                                   headers = { ["x-requested-with"] = "XMLHttpRequest" } }
            assert.equal(401, status)
            assert.matches("authentication required", out, 1, true)
            assert.equal('Session realm="zkflow"', hd2["www-authenticate"])
        end)

        -- The page's login: a session cookie instead of a token in the tab.
        describe("with a session cookie", function()
            local function login(user, password, extra)
                local headers = extra or {}
                headers["content-type"] = "application/json"
                return h:handle { method = "POST", path = "/api/v1/session", query = {},
                                  headers = headers,
                                  body = core.json_encode({ username = user, password = password }) }
            end

            local function cookie_of(hd)
                return hd["set-cookie"]:match("^(zkflow_session=[^;]*)")
            end

            it("signs in with a password and answers an HttpOnly, SameSite=Strict cookie", function()
                local status, hd, out = login("ops", "operator pass")
                assert.equal(200, status)
                assert.equal("operator", core.json_decode(out).role)
                local c = hd["set-cookie"]
                assert.matches("^zkflow_session=%x+_%x+; Max%-Age=43200; HttpOnly; SameSite=Strict; Path=/api/v1$", c)
                -- the store keeps no secret of it
                local secret = c:match("_(%x+);")
                for _, id in ipairs(st:children("/zkflow/auth/sessions")) do
                    assert.is_nil(st:get("/zkflow/auth/sessions/" .. id):find(secret, 1, true))
                end
                local prefixed = select(2, login("ops", "operator pass", { ["x-zkflow-prefix"] = "/flow/" }))
                assert.matches("; Path=/flow/api/v1$", prefixed["set-cookie"])
            end)

            it("refuses a bad password (401) and sets no cookie", function()
                local status, hd = login("ops", "wrong pass")
                assert.equal(401, status)
                assert.is_nil(hd["set-cookie"])
                assert.same({}, st:children("/zkflow/auth/sessions") or {})
            end)

            it("reads and changes with the cookie, same-origin JSON only", function()
                local cookie = cookie_of(select(2, login("ops", "operator pass")))
                assert.equal(200, (req("GET", "/api/v1/dags", nil, nil, { cookie = "a=b; " .. cookie })))
                local status, out = req("GET", "/api/v1/session", nil, nil, { cookie = cookie })
                assert.equal(200, status)
                assert.equal("ops", core.json_decode(out).user)
                assert.equal(201, (req("POST", "/api/v1/dags/etl/runs", nil, '{"dag_run_id": "c"}',
                                       { cookie = cookie, origin = "http://h", host = "h" })))
                -- the CSRF rules stay: another site's page sends the cookie in vain
                assert.equal(403, (req("POST", "/api/v1/dags/etl/runs", nil, "{}",
                                       { cookie = cookie, origin = "http://evil.example", host = "h" })))
                assert.equal(415, (h:handle { method = "POST", path = "/api/v1/dags/etl/runs", query = {},
                                              headers = { cookie = cookie, ["content-type"] = "text/plain" },
                                              body = "{}" }))
                assert.equal(1, #S:list_runs("etl"))
            end)

            it("gives a viewer's session a viewer's rights", function()
                assert(A:add_user("val", "viewer", "viewer pass"))
                local cookie = cookie_of(select(2, login("val", "viewer pass")))
                assert.equal(200, (req("GET", "/api/v1/dags", nil, nil, { cookie = cookie })))
                assert.equal(403, (req("POST", "/api/v1/dags/etl/runs", nil, "{}", { cookie = cookie })))
            end)

            it("signs out: the session ends in the store and the cookie is cleared", function()
                local cookie = cookie_of(select(2, login("ops", "operator pass")))
                local status, hd = h:handle { method = "DELETE", path = "/api/v1/session", query = {},
                                              headers = { cookie = cookie } }
                assert.equal(200, status)
                assert.matches("^zkflow_session=; Max%-Age=0;", hd["set-cookie"])
                assert.equal(401, (req("GET", "/api/v1/dags", nil, nil, { cookie = cookie })))
                assert.same({}, st:children("/zkflow/auth/sessions") or {})
            end)

            it("refuses an expired session and removes it", function()
                local cookie = cookie_of(select(2, login("ops", "operator pass")))
                local id = cookie:match("=(%x+)_")
                local p = "/zkflow/auth/sessions/" .. id
                local rec = core.json_decode(st:get(p))
                rec.expires = core.now() - 1
                st:set(p, core.json_encode(rec))
                local status, out = req("GET", "/api/v1/dags", nil, nil, { cookie = cookie })
                assert.equal(401, status)
                assert.matches("session expired", out, 1, true)
                assert.is_nil(st:get(p))
            end)
        end)

        it("lets a viewer change nothing: 403 on every route that writes", function()
            local writes = 0
            for _, r in ipairs(api.route_list()) do
                if r.method ~= "GET" and r.role ~= "public" then
                    writes = writes + 1
                    local path = r.pattern:gsub("{dag_id}", "etl"):gsub("{run_id}", "r1")
                                          :gsub("{task_id}", "extract")
                    local status, out = req(r.method, path, viewer, "{}")
                    assert.equal(403, status, r.method .. " " .. r.pattern)
                    assert.matches("needs the role operator", out, 1, true)
                end
            end
            -- trigger, pause (PATCH) and clear
            assert.equal(3, writes)
            assert.same({}, S:list_runs("etl"))
            assert.is_false(S:is_paused("etl"))
        end)

        it("names the role of each route: reads viewer, changes operator, login public", function()
            local roles = {}
            for _, r in ipairs(api.route_list()) do roles[r.method .. " " .. r.pattern] = r.role end
            assert.equal("operator", roles["POST /api/v1/dags/{dag_id}/runs"])
            assert.equal("operator", roles["PATCH /api/v1/dags/{dag_id}"])
            assert.equal("operator", roles["POST /api/v1/dags/{dag_id}/runs/{run_id}/clear"])
            assert.equal("viewer", roles["GET /metrics"])
            assert.equal("viewer", roles["GET /api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/logs"])
            assert.equal("public", roles["POST /api/v1/session"])
            assert.equal("public", roles["GET /api/v1/health"])
        end)

        it("still refuses a cross-site request that carries a cookie-less basic login", function()
            local basic = "Basic " .. core.base64_encode("ops:operator pass")
            assert.equal(403, (req("POST", "/api/v1/dags/etl/runs", basic, "{}",
                                   { origin = "http://evil.example", host = "h" })))
            -- a bearer token is never sent by a browser on its own
            assert.equal(201, (req("POST", "/api/v1/dags/etl/runs", operator, "{}",
                                   { origin = "http://evil.example", host = "h" })))
        end)
    end)

    -- Hardening probe 4: a body field of the wrong type was read as
    -- "nothing given"; {"task_ids": {"a": 1}} cleared every task.
    describe("checks every field of a body", function()
        before_each(function()
            assert(S:trigger({ id = "etl" }, { run_id = "r1" }))
        end)

        local function problem(method, path, body, status)
            local st_, v = call(method, path, body)
            assert.equal(status or 400, st_, body:sub(1, 80))
            assert.equal(st_, v.status)
            assert.is_string(v.title)
            return v.detail
        end

        it("refuses an object where task_ids is a list, and clears nothing", function()
            local d = problem("POST", "/api/v1/dags/etl/runs/r1/clear",
                              '{"task_ids": {"a": 1}}')
            assert.matches("'task_ids': expected a list", d, 1, true)
            assert.equal(0, #S:list_requests())
            d = problem("POST", "/api/v1/dags/etl/runs/r1/clear",
                        '{"task_ids": ["extract", 3]}')
            assert.matches("item 2 is number", d, 1, true)
        end)

        it("names an unknown field and the ones the request takes", function()
            local d = problem("POST", "/api/v1/dags/etl/runs", '{"conf": {}, "cnof": 1}')
            assert.matches("'cnof': unknown field", d, 1, true)
            assert.matches("conf, dag_run_id, logical_date, run_id", d, 1, true)
        end)

        it("names a field of the wrong type", function()
            assert.matches("'conf': expected an object, got a string",
                           problem("POST", "/api/v1/dags/etl/runs", '{"conf": "x"}'), 1, true)
            assert.matches("'conf': expected an object, got a list",
                           problem("POST", "/api/v1/dags/etl/runs", '{"conf": [1]}'), 1, true)
            assert.matches("'is_paused': expected a boolean, got a string",
                           problem("PATCH", "/api/v1/dags/etl", '{"is_paused": "yes"}'), 1, true)
            assert.matches("'downstream': expected a boolean",
                           problem("POST", "/api/v1/dags/etl/runs/r1/clear",
                                   '{"downstream": 1}'), 1, true)
            assert.matches("expected an object, got a list",
                           problem("POST", "/api/v1/dags/etl/runs", '[1]'), 1, true)
        end)

        it("answers 413 naming conf when it is over the limit", function()
            local big = '{"conf": {"x": "' .. ("x"):rep(api.MAX_CONF) .. '"}}'
            local d = problem("POST", "/api/v1/dags/etl/runs", big, 413)
            assert.matches("'conf': %d+ bytes encoded, over the limit of " .. api.MAX_CONF, d)
        end)

        it("checks the query of the run list", function()
            assert.equal(400, (call("GET", "/api/v1/dags/etl/runs", nil, { limit = "abc" })))
            assert.equal(400, (call("GET", "/api/v1/dags/etl/runs", nil, { state = "sucess" })))
        end)
    end)

    it("serves through the module-level handle and http entries", function()
        api.serve(h)
        local status = api.handle { method = "GET", path = "/api/v1/health" }
        assert.equal(200, status)
        local got
        api.http("GET", "/api/v1/dags/etl/runs?limit=5&state=queued", nil,
                 function(s, ctype, body)
                     got = { s, ctype, body }
                 end)
        assert.equal(200, got[1])
        assert.equal("application/json", got[2])
        assert.same({}, { table.unpack(core.json_decode(got[3]).dag_runs) })
        -- the answer's other headers go to the front door as a list
        api.http("DELETE", "/api/v1/dags/etl", nil, function(s, _, _, headers)
            got = { s, headers }
        end)
        assert.equal(405, got[1])
        assert.same({ "Allow", "GET, PATCH" }, got[2])
    end)
end)

-- The records behind the API, shared with the scheduler and the CLI.
describe("zkflow.state", function()
    local dir, st, S

    before_each(function()
        dir = tmpdir()
        st = assert(core.store(dir .. "/zkflow.db"))
        S = state.new(st, "/zkflow")
    end)

    after_each(function()
        st:close()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    it("parses ISO 8601 dates in UTC and with offsets", function()
        assert.equal(1795608000, state.parse_time("2026-11-25T12:00:00+00:00"))
        assert.equal(1795608000, state.parse_time("2026-11-25T12:00:00Z"))
        assert.equal(1795608000, state.parse_time("2026-11-25T14:00:00+02:00"))
        assert.equal(1795564800, state.parse_time("2026-11-25"))
        assert.equal(1795608000.5, state.parse_time("2026-11-25T12:00:00.5Z"))
        assert.is_nil(state.parse_time("yesterday"))
        assert.is_nil(state.parse_time("2026-13-01"))
    end)

    it("makes Airflow's run ids", function()
        assert.equal("scheduled__2026-11-25T12:00:00+00:00",
                     state.run_id("scheduled", 1795608000))
        assert.equal("manual__2026-11-25T12:00:00.123456+00:00",
                     state.run_id("manual", 1795608000.123456))
        assert.equal("backfill__2026-11-25T00:00:00+00:00",
                     state.run_id("backfill", 1795564800))
    end)

    it("sets and clears the paused flag", function()
        assert.is_false(S:is_paused("d"))
        assert.is_true(S:set_paused("d", true))
        assert.is_false(S:set_paused("d", true))
        assert.is_true(S:is_paused("d"))
        assert.is_true(S:set_paused("d", false))
        assert.is_false(S:is_paused("d"))
    end)

    it("creates a queued run once per run id", function()
        local run = assert(S:trigger({ id = "d", source_hash = "v1" },
                                     { run_id = "r1", conf = { a = 1 } }))
        assert.equal("queued", run.state)
        assert.is_nil(S:trigger({ id = "d" }, { run_id = "r1" }))
        local back = S:get_run("d", "r1")
        assert.equal("v1", back.version)
        assert.equal(1, back.conf.a)
        assert.equal(1, #S:list_runs("d"))
        assert.equal(0, #S:list_runs(nil, { state = "success" }))
    end)

    it("lists runs newest first, a page at a time, with the total", function()
        for i = 1, 5 do
            assert(S:trigger({ id = "d" }, { run_id = "r" .. i, logical_date = 1767225600 + i }))
        end
        local runs, total = S:list_runs("d", { limit = 2, offset = 1, order = "desc" })
        assert.equal(5, total)
        assert.same({ "r4", "r3" }, { runs[1].run_id, runs[2].run_id })
    end)

    it("queues requests in order and removes consumed ones", function()
        S:add_request { op = "clear", dag_id = "d", run_id = "r1" }
        S:add_request { op = "clear", dag_id = "d", run_id = "r2" }
        local reqs = S:list_requests()
        assert.equal(2, #reqs)
        assert.equal("r1", reqs[1].req.run_id)
        S:done_request(reqs[1].path)
        assert.equal(1, #S:list_requests())
    end)

    it("encodes empty lists as JSON arrays", function()
        assert.equal("[]", core.json_encode(state.array()))
        assert.equal('{"schedulers":[],"workers":[]}',
                     core.json_encode(S:members(), { sort_keys = true }))
    end)
end)
