-- Hot reload: DAG files change under a running scheduler.
local flow = require "zkflow"
local core = require "zkflow.core"
local state = require "zkflow.state"
local sched = require "zkflow.scheduler"
local H = dofile("spec/fixtures/sched/helpers.lua")

-- The way an editor saves: a temporary file renamed over the real one.
local function save(path, src)
  local tmp = path:gsub("([^/]+)$", ".%1.swp")
  local f = assert(io.open(tmp, "w"))
  f:write(src)
  f:close()
  assert(os.rename(tmp, path))
end

local function dag_src(version, sleep)
  return ([[
local flow = require "zkflow"
return flow.dag { id = "hot", tasks = function(t)
  t.lua { id = "v", run = function() flow.sleep(%s) return "%s" end }
end }
]]):format(sleep or 0, version)
end

local function with_folder(body)
  flow.run(function()
    local dir = H.tmpdir()
    assert(core.mkdirs(dir .. "/dags"))
    save(dir .. "/dags/hot.lua", dag_src("one", 0.6))
    local store = core.store(dir .. "/zkflow.db")
    local s = sched.new { store = store, dags_dir = dir .. "/dags", log_dir = dir .. "/logs" }
    s:start()
    local ok, err = pcall(body, s, dir, state.new(store))
    s:stop()
    store:close()
    os.execute("rm -rf '" .. dir .. "'")
    if not ok then error(err, 0) end
  end)
end

-- Waits up to `limit` seconds for pred(); returns the seconds it took.
local function within(limit, pred)
  local t0 = core.mono()
  while core.mono() - t0 < limit do
    if pred() then return core.mono() - t0 end
    flow.sleep(0.01)
  end
  return nil
end

describe("hot reload", function()
  it("makes a rewritten file a new version within half a second; the older run keeps its version", function()
    with_folder(function(s, _, st)
      local v1 = s.dags.hot.source_hash
      local old = s:create_run(s.dags.hot, {})
      s:process()
      save(s.dags_dir .. "/hot.lua", dag_src("two", 0))
      local took = within(0.5, function() return s.dags.hot.source_hash ~= v1 end)
      assert.is_truthy(took)
      local new = s:create_run(s.dags.hot, {})
      s:process()
      assert.same({ "success", "success" }, s:wait_runs({ old, new }))
      assert.equal("one", st:get_ti("hot", old.run_id, "v").xcom)
      assert.equal("two", st:get_ti("hot", new.run_id, "v").xcom)
      assert.equal(v1, st:get_run("hot", old.run_id).version)
    end)
  end)

  it("keeps the last good version of a file that stops loading and shows the error", function()
    with_folder(function(s)
      local file = s.dags_dir .. "/hot.lua"
      local v1 = s.dags.hot.source_hash
      save(file, "return flow.dag { id = ")
      assert.is_truthy(within(0.5, function() return s.import_errors[file] ~= nil end))
      assert.equal(v1, s.dags.hot.source_hash)
      save(file, dag_src("three", 0))
      assert.is_truthy(within(0.5, function() return s.dags.hot.source_hash ~= v1 end))
      assert.is_nil(s.import_errors[file])
    end)
  end)

  it("stops scheduling a deleted file's DAG without touching its run in progress", function()
    with_folder(function(s)
      local run = s:create_run(s.dags.hot, {})
      s:process()
      os.remove(s.dags_dir .. "/hot.lua")
      assert.is_truthy(within(0.5, function() return s.dags.hot == nil end))
      assert.same({ "success" }, s:wait_runs({ run }))
    end)
  end)

  it("loads a new file, also in a new subfolder", function()
    with_folder(function(s)
      assert(core.mkdirs(s.dags_dir .. "/team"))
      save(s.dags_dir .. "/team/other.lua", [[
local flow = require "zkflow"
return flow.dag { id = "other", tasks = function(t) t.empty { id = "e" } end }
]])
      assert.is_truthy(within(0.5, function() return s.dags.other ~= nil end))
    end)
  end)

  -- Issue 10 item 7: a new version that loads slowly, or never, in the
  -- child process that loads it first.
  it("keeps the previous version while a slow file loads in the background, then takes it", function()
    with_folder(function(s)
      local file = s.dags_dir .. "/hot.lua"
      local v1 = s.dags.hot.source_hash
      save(file, "local t = os.clock() while os.clock() - t < 1 do end\n" .. dag_src("slow", 0))
      flow.sleep(0.6)
      assert.equal(v1, s.dags.hot.source_hash)
      assert.is_nil(s.import_errors[file])
      assert.is_truthy(within(10, function() return s.dags.hot.source_hash ~= v1 end))
      assert.is_nil(s.import_errors[file])
    end)
  end)

  it("makes a file that hangs inside C an import error naming the limit, serving the loop meanwhile", function()
    local loader = require "zkflow.dsl.loader"
    loader.configure({ timeout = 1 })
    local ok, err = pcall(with_folder, function(s)
      local file = s.dags_dir .. "/hot.lua"
      local v1 = s.dags.hot.source_hash
      save(file, 'local s = string.rep("a", 3000) s:find(".-.-.-.-b")\n' .. dag_src("never", 0))
      -- the loop turns: timers fire on time while the file hangs in its child
      local late = 0
      for _ = 1, 10 do
        local t0 = core.mono()
        flow.sleep(0.1)
        late = math.max(late, core.mono() - t0 - 0.1)
      end
      assert.is_true(late < 0.7, "a timer fired " .. late .. " s late")
      assert.is_truthy(within(5, function() return s.import_errors[file] ~= nil end))
      assert.matches("loading took longer than 1 s (the dag_load_timeout setting)",
                     s.import_errors[file], 1, true)
      assert.equal(v1, s.dags.hot.source_hash)
    end)
    loader.configure({})
    if not ok then error(err, 0) end
  end)
end)
