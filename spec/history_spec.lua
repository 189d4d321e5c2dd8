-- The history store (zkflow.history) and the move of finished runs to it
-- on the embedded store: runs leave the live store once ended, and every
-- read (zkflow.state) still sees them.
local flow = require "zkflow"
local core = require "zkflow.core"
local state = require "zkflow.state"
local history = require "zkflow.history"
local H = dofile("spec/fixtures/sched/helpers.lua")

local null = core.null

local function iso(t) return state.iso(t) end

-- A finished run record (the live store's shape) at epoch `t`.
local function run_rec(dag_id, run_id, t, st)
  return {
    dag_id = dag_id, run_id = run_id, state = st or "success", run_type = "scheduled",
    logical_date = iso(t), data_interval_start = iso(t), data_interval_end = iso(t + 60),
    conf = { n = 1 }, version = "v1", queued_at = state.iso(t, true),
    start_date = state.iso(t + 1, true), end_date = state.iso(t + 2, true),
    external_trigger = false,
  }
end

local function ti_rec(id, st)
  return { task_id = id, state = st or "success", try_number = 1, max_tries = 0,
           operator = "lua", start_date = null, end_date = null, duration = 0.5,
           xcom = { id = id }, log = "/logs/" .. id, worker = "w1",
           first_start = 12.5, xcoms = { k = "pushed" }, error = "e" }
end

local function open_h(dir)
  local h = assert(history.new("sqlite:" .. dir .. "/zkflow.db"))
  return h
end

describe("zkflow.history", function()
  local dir, h
  before_each(function()
    dir = H.tmpdir()
    h = open_h(dir)
  end)
  after_each(function() h:close() end)

  it("creates its tables once, versioned from 1", function()
    assert.equal(history.LATEST, h:migrate())
    assert.equal(history.LATEST, h:migrate())
    local rows = h.conn:query("SELECT version FROM schema_version ORDER BY version")
    assert.equal(1, rows[1].version)
    assert.equal(history.LATEST, #rows)
  end)

  it("gives back the records it was given, with XComs and log copies", function()
    local run = run_rec("d", "r1", 1767225600)
    h:put_run(run, { a = ti_rec("a"), b = ti_rec("b", "failed") },
              { { task_id = "a", try_number = 1, content = "the log" } })
    assert.same(run, h:get_run("d", "r1"))
    local tis = h:list_tis("d", "r1")
    assert.same(ti_rec("a"), tis.a)
    assert.equal("failed", tis.b.state)
    assert.same(ti_rec("a"), h:get_ti("d", "r1", "a"))
    assert.equal("the log", h:log("d", "r1", "a", 1))
    assert.is_nil(h:log("d", "r1", "a", 2))
    assert.is_true(h:has_run("d", "r1"))
    assert.is_false(h:has_run("d", "r2"))
  end)

  it("keeps a log copy with NUL or invalid UTF-8 as valid text (PostgreSQL refuses them)", function()
    h:put_run(run_rec("d", "bin", 1767225600), { a = ti_rec("a") },
              { { task_id = "a", try_number = 1, content = "ok\0x\255\192y \u{e9}" } })
    local got = h:log("d", "bin", "a", 1)
    assert.equal("ok\\0x\u{FFFD}\u{FFFD}y \u{e9}", got)
    assert.truthy(utf8.len(got))
  end)

  it("puts a run twice as one row (idempotent upsert), keeping what the second lacks", function()
    local run = run_rec("d", "r1", 1767225600, "failed")
    h:put_run(run, { a = ti_rec("a"), b = ti_rec("b") })
    run.state = "success"
    local a2 = ti_rec("a", "failed")
    a2.xcoms = nil
    -- A move cut short by a crash: some instances already left the live store.
    h:put_run(run, { a = a2 })
    local runs, total = h:list_runs("d")
    assert.equal(1, #runs)
    assert.equal(1, total)
    assert.equal("success", runs[1].state)
    local tis = h:list_tis("d", "r1")
    assert.equal("failed", tis.a.state)
    assert.is_nil(tis.a.xcoms)
    assert.same(ti_rec("b"), tis.b)
    assert.same({ d = { success = 1 } }, h:counts())
  end)

  it("pages runs by logical date in either order, with the total", function()
    for i = 1, 30 do
      h:put_run(run_rec(i % 2 == 0 and "even" or "odd", ("r%02d"):format(i), 1767225600 + i * 60,
                        i % 3 == 0 and "failed" or "success"), {})
    end
    local page, total = h:list_runs(nil, { limit = 5, offset = 0, order = "desc" })
    assert.equal(30, total)
    assert.same({ "r30", "r29", "r28", "r27", "r26" },
                { page[1].run_id, page[2].run_id, page[3].run_id, page[4].run_id, page[5].run_id })
    page, total = h:list_runs("even", { limit = 3, offset = 2 })
    assert.equal(15, total)
    assert.same({ "r06", "r08", "r10" }, { page[1].run_id, page[2].run_id, page[3].run_id })
    page, total = h:list_runs(nil, { state = "failed", limit = 100 })
    assert.equal(10, total)
    assert.equal(10, #page)
    assert.equal("r29", h:last_run("odd").run_id)
    assert.equal("r27", h:last_run("odd", 1767225600 + 29 * 60).run_id)
    assert.equal("r04", h:run_at("even", 1767225600 + 4 * 60).run_id)
    assert.is_nil(h:run_at("even", 1767225600 + 5 * 60))
  end)

  it("removes runs that started before a date, keeping the last N of each DAG", function()
    for i = 1, 10 do
      h:put_run(run_rec("d", ("r%02d"):format(i), 1767225600 + i * 86400),
                { a = ti_rec("a") }, { { task_id = "a", try_number = 1, content = "x" } })
    end
    local before = 1767225600 + 8 * 86400
    local dry = h:delete_runs { before = before, dry_run = true }
    assert.equal(7, dry.runs)
    assert.equal(7, dry.task_instances)
    assert.equal(14, dry.xcoms)
    assert.equal(7, dry.logs)
    assert.equal(10, h:count_runs("d"))
    local kept = h:delete_runs { before = before, keep_last = 5 }
    assert.equal(5, kept.runs)
    assert.is_false(h:has_run("d", "r05"))
    assert.is_true(h:has_run("d", "r06"))
    local rest = h:delete_runs { before = before, dag_id = "other" }
    assert.equal(0, rest.runs)
    rest = h:delete_runs { before = before }
    assert.equal(2, rest.runs)
    assert.equal(3, h:count_runs("d"))
    assert.is_nil(h:log("d", "r07", "a", 1))
    assert.is_true(h:version_used("d", "v1"))
    assert.is_false(h:version_used("d", "v2"))
  end)
end)

describe("the move of finished runs to the history", function()
  local function dag(id, spec)
    spec = spec or {}
    return flow.dag {
      id = id,
      tasks = spec.tasks or function(t)
        local a = t.lua { id = "a", run = function(ctx) ctx.xcom.push("k", 7); return "from a" end }
        H.ok(t, "b", { after = { a } })
      end,
    }
  end

  -- A scheduler on a fresh embedded store whose history is the same file.
  local function sched(dags, opts)
    local s, store, _, dir = H.scheduler(dags, opts)
    local h = open_h(dir)
    s.history = nil
    local o = { store = store, dags = {}, log_dir = dir .. "/logs", history = h }
    for _, d in ipairs(dags) do o.dags[d.id] = d end
    for k, v in pairs(opts or {}) do o[k] = v end
    s = require("zkflow.scheduler").new(o)
    local st = state.new(store, "/zkflow", { history = h })
    return s, store, st, h, dir
  end

  local function live(store, dag_id)
    return store:children("/zkflow/runs/" .. dag_id) or {}
  end

  it("leaves the live store within a second and reads as before", function()
    flow.run(function()
      local d = dag("mv")
      local s, store, st, h = sched({ d }, { schedule = false })
      s:start()
      local runs = {}
      for i = 1, 3 do
        runs[i] = s:create_run(d, { logical_date = 1767225600 + i, run_id = "r" .. i })
      end
      s:process()
      assert.same({ "success", "success", "success" }, s:wait_runs(runs))
      assert.is_true(H.wait_until(function() return #live(store, "mv") == 0 end, 2))
      assert.equal(3, h:count_runs("mv"))
      local obj = st:run_object("mv", "r2")
      assert.equal("success", obj.state)
      assert.equal("from a", obj.tasks.a.xcom)
      assert.equal("success", obj.tasks.b.state)
      assert.same({ k = 7 }, st:get_ti("mv", "r2", "a").xcoms)
      local list, total = st:list_runs("mv")
      assert.equal(3, total)
      assert.same({ "r1", "r2", "r3" }, { list[1].run_id, list[2].run_id, list[3].run_id })
      -- The id stays taken.
      local again, err = s:create_run(d, { logical_date = 1767225600 + 1, run_id = "r1" })
      assert.is_nil(again)
      assert.equal("ZNODEEXISTS", err)
      assert.is_nil(st:trigger(d, { run_id = "r1" }))
      s:stop()
      store:close()
      h:close()
    end)
  end)

  it("moves the finished runs a killed scheduler left in the live store at start", function()
    flow.run(function()
      local d = dag("left")
      local s, store, st, h = sched({ d }, { schedule = false })
      st:put_run(run_rec("left", "old", 1767225600))
      st:put_ti("left", "old", ti_rec("a"))
      store:create("/zkflow/runs/left/old/a/log.1", "copied log")
      -- Half moved already (killed after the history write): same row.
      -- (The store's turn commits first: the history on its file waits.)
      store:flush()
      h:put_run(run_rec("left", "old", 1767225600), { a = ti_rec("a") })
      store:flush()
      s:start()
      assert.is_true(H.wait_until(function() return #live(store, "left") == 0 end, 2))
      assert.equal(1, h:count_runs("left"))
      assert.equal("copied log", st:log_copy("left", "old", "a", 1))
      assert.same(ti_rec("a"), st:get_ti("left", "old", "a"))
      s:stop()
      store:close()
      h:close()
    end)
  end)

  it("pages live and finished runs as one list", function()
    flow.run(function()
      local d = dag("pg")
      local _, store, st, h = sched({ d }, { schedule = false })
      local all = {}
      for i = 1, 20 do
        local rec = run_rec("pg", ("r%02d"):format(i), 1767225600 + i * 60)
        if i % 4 == 0 then
          rec.state = "running"
          st:put_run(rec)
          store:flush()
        else
          h:put_run(rec, {})
        end
        all[#all + 1] = rec.run_id
      end
      -- Between its copy and its removal a run is in both: listed once.
      st:put_run(run_rec("pg", "r03", 1767225600 + 3 * 60))
      for _, order in ipairs({ "asc", "desc" }) do
        for _, size in ipairs({ 1, 3, 7, 25 }) do
          local got = {}
          local offset = 0
          while true do
            local page, total = st:list_runs("pg", { limit = size, offset = offset, order = order })
            assert.equal(20, total)
            for _, r in ipairs(page) do got[#got + 1] = r.run_id end
            offset = offset + size
            if offset >= total then break end
          end
          local want = {}
          for i = 1, #all do want[i] = order == "asc" and all[i] or all[#all - i + 1] end
          assert.same(want, got)
        end
      end
      store:close()
      h:close()
    end)
  end)

  it("brings a cleared finished run back to the live store, and moves it again", function()
    flow.run(function()
      local n = 0
      local d = dag("cl", { tasks = function(t)
        t.lua { id = "a", run = function() n = n + 1; return n end }
      end })
      local s, store, st, h = sched({ d }, { schedule = false })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600, run_id = "r1" })
      s:process()
      s:wait_runs({ run })
      assert.is_true(H.wait_until(function() return #live(store, "cl") == 0 end, 2))
      s:clear("cl", "r1", { "a" })
      s:process()
      assert.is_true(H.wait_until(function() return n == 2 end, 2))
      assert.is_true(H.wait_until(function()
        return #live(store, "cl") == 0 and h:has_run("cl", "r1")
      end, 2))
      local ti = st:get_ti("cl", "r1", "a")
      assert.equal(2, ti.xcom)
      assert.equal(2, ti.try_number)
      assert.equal(1, h:count_runs("cl"))
      s:stop()
      store:close()
      h:close()
    end)
  end)

  it("lets depends_on_past read the previous run from the history", function()
    flow.run(function()
      local d = flow.dag { id = "past", tasks = function(t)
        t.lua { id = "a", depends_on_past = true, run = function() return 1 end }
      end }
      local s, store, st, h = sched({ d }, { schedule = false })
      local prev = run_rec("past", "prev", 1767225600, "failed")
      h:put_run(prev, { a = ti_rec("a", "failed") })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600 + 3600, run_id = "next" })
      s:process()
      flow.sleep(0.3)
      store:flush()
      assert.equal("running", st:get_run("past", "next").state)
      assert.equal("waiting for a of prev", st:get_ti("past", "next", "a").waiting_for)
      s:stop()
      store:close()
      h:close()
      local _ = run
    end)
  end)

  it("prunes the DAG versions no run refers to, but the current and the newest", function()
    flow.run(function()
      local d = dag("ver")
      local _, store, _, h = sched({ d }, { schedule = false })
      for _, v in ipairs({ "v1", "v2", "v3", "v4" }) do
        assert(store:create("/zkflow/dags/ver/versions/" .. v, "src", { parents = true }))
      end
      store:flush()
      h:put_run(run_rec("ver", "old", 1767225600), {})           -- refers to v1
      local removed = require("zkflow.scheduler.archive").prune_versions(
        store, "/zkflow", h, { ver = { source_hash = "v2" } })
      assert.same({ "/zkflow/dags/ver/versions/v3" }, removed)
      assert.same({ "v1", "v2", "v4" }, store:children("/zkflow/dags/ver/versions"))
      store:close()
      h:close()
    end)
  end)

  it("removes runs older than retention_days with their log folders", function()
    flow.run(function()
      local d = dag("ret")
      local s, store, _, h, dir = sched({ d }, { schedule = false })
      local old = core.now() - 10 * 86400
      h:put_run(run_rec("ret", "old", old), { a = ti_rec("a") })
      h:put_run(run_rec("ret", "new", core.now() - 3600), { a = ti_rec("a") })
      assert(core.mkdirs(dir .. "/logs/ret/old"))
      assert(core.write_file(dir .. "/logs/ret/old/a.1.log", "x"))
      s:start()
      assert.is_true(s:set_retention(5))
      assert.is_true(H.wait_until(function() return not h:has_run("ret", "old") end, 3))
      assert.is_true(h:has_run("ret", "new"))
      assert.is_true(H.wait_until(function() return core.stat(dir .. "/logs/ret/old") == nil end, 1))
      s:stop()
      store:close()
      h:close()
    end)
  end)
end)
