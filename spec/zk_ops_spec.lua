-- The ZooKeeper operators (zk_create ... zk_health) and zkflow.zk.dump, run
-- in real DAG runs (flow.test).  Every operator spec runs on the embedded
-- store (hosts = "sqlite:...") and, when spec/zk_test.sh has started a
-- server (ZKFLOW_TEST_ZK=127.0.0.1:PORT), on ZooKeeper too (#zk), each
-- backend on a fresh tree.
local core = require "zkflow.core"
local flow = require "zkflow"
local zkdump = require "zkflow.zk.dump"

local function tmpname(suffix)
  local p = os.tmpname()
  os.remove(p)
  return p .. suffix
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The log of a task's last try (its error message is there).
local function log_of(res, id)
  return read(res.tasks[id].log)
end

local backends = {
  sqlite = function()
    local path = tmpname(".db")
    return {
      hosts = "sqlite:" .. path,
      open = function() return assert(core.store(path)) end,
      cleanup = function()
        for _, s in ipairs({ "", "-wal", "-shm" }) do os.remove(path .. s) end
      end,
    }
  end,
}

local zk_hosts = os.getenv("ZKFLOW_TEST_ZK")
if zk_hosts and zk_hosts ~= "" then
  local n = 0
  backends.zk = function()
    n = n + 1
    local chroot = ("/zkflow-ops-%d-%d"):format(
      math.floor(core.now() * 1000) % 1000000000, n)
    -- No session stays open on the main thread while a DAG runs: the
    -- loop that flow.test drives would wait for it (see the report).
    local top = assert(core.store_zk(zk_hosts, { timeout = 5 }))
    assert(top:create(chroot, ""))
    top:close()
    return {
      hosts = zk_hosts .. chroot,
      open = function()
        return assert(core.store_zk(zk_hosts .. chroot, { timeout = 5 }))
      end,
      cleanup = function()
        top = assert(core.store_zk(zk_hosts, { timeout = 5 }))
        top:delete(chroot, { recursive = true })
        top:close()
      end,
    }
  end
else
  describe("zk operators #zk", function()
    pending("skipped: no ZooKeeper server (set ZKFLOW_TEST_ZK or run spec/zk_test.sh)")
  end)
end

for name, factory in pairs(backends) do
  local tag = name == "zk" and " #zk" or ""

  describe("zk operators on " .. name .. tag, function()
    local b, H, st

    before_each(function()
      b = factory()
      H = b.hosts
      st = b.open()
    end)

    after_each(function()
      st:close()
      b.cleanup()
    end)

    local function run(tasks, opts)
      st:close()
      local res = flow.test(flow.dag { id = "zkops", tasks = tasks }, opts)
      st = b.open()
      return res
    end

    it("creates, sets, reads and deletes a node, with XComs", function()
      local res = run(function(t)
        local c = t.zk_create { id = "c", hosts = H, path = "/a/b", data = "v1" }
        local s = t.zk_set { id = "s", hosts = H, path = "/a/b", data = '{"k":1}', after = { c } }
        local g = t.zk_get { id = "g", hosts = H, path = "/a/b", after = { s } }
        local j = t.zk_get { id = "j", hosts = H, path = "/a/b", json = true, after = { s } }
        t.zk_delete { id = "d", hosts = H, path = "/a", recursive = true, after = { g, j } }
      end)
      assert.equal("success", res.state)
      assert.equal("/a/b", res.tasks.c.xcom)
      assert.equal(1, res.tasks.s.xcom)
      assert.equal('{"k":1}', res.tasks.g.xcom)
      assert.equal(1, res.tasks.j.xcom.k)
      assert.is_true(res.tasks.d.xcom)
      assert.is_nil(st:exists("/a"))
    end)

    it("fails a create of an existing node unless exist_ok", function()
      assert(st:create("/x", "old"))
      local res = run(function(t)
        t.zk_create { id = "strict", hosts = H, path = "/x" }
        t.zk_create { id = "lenient", hosts = H, path = "/x", exist_ok = true }
      end)
      assert.equal("failed", res.tasks.strict.state)
      assert.matches("ZNODEEXISTS: /x", log_of(res, "strict"), 1, true)
      assert.equal("success", res.tasks.lenient.state)
      assert.equal("old", (st:get("/x")))
    end)

    it("deletes a node with children only when recursive", function()
      assert(st:create("/p/c", "", { parents = true }))
      local res = run(function(t)
        local flat = t.zk_delete { id = "flat", hosts = H, path = "/p" }
        t.zk_delete { id = "deep", hosts = H, path = "/p", recursive = true,
                      after = { flat }, trigger_rule = "all_done" }
      end)
      assert.equal("failed", res.tasks.flat.state)
      assert.matches("ZNOTEMPTY", log_of(res, "flat"), 1, true)
      assert.equal("success", res.tasks.deep.state)
      assert.is_nil(st:exists("/p"))
    end)

    it("refuses invalid paths and data over 1 MiB with a clear error", function()
      local big = string.rep("x", 1024 * 1024 + 1)
      local res = run(function(t)
        t.zk_create { id = "slash", hosts = H, path = "/a/" }
        t.zk_get    { id = "rel",   hosts = H, path = "a/b" }
        t.zk_set    { id = "dots",  hosts = H, path = "/a/../b", data = "" }
        t.zk_create { id = "big",   hosts = H, path = "/big", data = big }
      end)
      for _, id in ipairs({ "slash", "rel", "dots", "big" }) do
        assert.equal("failed", res.tasks[id].state)
        assert.matches("ZBADARGUMENTS", log_of(res, id), 1, true)
      end
      assert.matches("must not end with '/'", log_of(res, "slash"), 1, true)
      assert.matches("must start with '/'", log_of(res, "rel"), 1, true)
      assert.matches("over ZooKeeper's limit of 1 MiB", log_of(res, "big"), 1, true)
      assert.is_nil(st:exists("/big"))
    end)

    it("dumps a subtree to a file in the CLI's format, binary as base64", function()
      assert(st:create("/cfg/a", "hello", { parents = true }))
      assert(st:create("/cfg/bin", "\0\255\254", {}))
      assert(st:create("/cfg/empty", "", {}))
      assert(st:create("/cfg/empty/deep", "x", {}))
      if st.flush then st:flush() end
      local file = tmpname(".json")
      local res = run(function(t)
        t.zk_dump { id = "d", hosts = H, path = "/cfg", to = file }
        t.zk_dump { id = "x", hosts = H, path = "/cfg" }
      end)
      assert.equal("success", res.state)
      assert.same({ path = "/cfg", file = file, count = 5, bytes = 9 }, res.tasks.d.xcom)
      local doc = core.json_decode(read(file))
      os.remove(file)
      assert.equal("/cfg", doc.path)
      assert.same({ data = "hello", encoding = "utf8" }, doc.children.a)
      assert.same({ data = core.base64_encode("\0\255\254"), encoding = "base64" },
                  doc.children.bin)
      assert.equal("", doc.children.empty.data)
      assert.equal("x", doc.children.empty.children.deep.data)
      -- the XCom is the same document
      assert.equal(doc.children.bin.data, res.tasks.x.xcom.children.bin.data)
    end)

    it("restores a dump elsewhere, keeping existing data unless overwrite", function()
      assert(st:create("/src/a", "A", { parents = true }))
      assert(st:create("/src/b", "\1\2\255", {}))
      assert(st:create("/dst/a", "mine", { parents = true }))
      local file = tmpname(".json")
      local res = run(function(t)
        local d = t.zk_dump { id = "d", hosts = H, path = "/src", to = file }
        local dry = t.zk_restore { id = "dry", hosts = H, from = file, path = "/dst",
                                   dry_run = true, after = { d } }
        local keep = t.zk_restore { id = "keep", hosts = H, from = file, path = "/dst",
                                    after = { dry } }
        t.zk_restore { id = "over", hosts = H, from = file, path = "/dst",
                       overwrite = true, after = { keep } }
      end)
      os.remove(file)
      assert.equal("success", res.state)
      assert.same({ "keep /dst", "keep /dst/a", "create /dst/b" }, res.tasks.dry.xcom.actions)
      assert.equal(1, res.tasks.keep.xcom.created)
      assert.equal(1, res.tasks.over.xcom.updated)
      assert.equal("A", (st:get("/dst/a")))
      assert.equal("\1\2\255", (st:get("/dst/b")))
    end)

    it("fails a malformed dump without retries and writes nothing", function()
      local file = tmpname(".json")
      local f = assert(io.open(file, "w"))
      f:write('{"path":"/r","data":"","children":{"ok":{"data":"1"},'
              .. '"bad":{"data":"x","encoding":"hex"}}}')
      f:close()
      local trunc = tmpname(".json")
      f = assert(io.open(trunc, "w"))
      f:write('{"path":"/r","children":{"a":{"data":"1"}')
      f:close()
      local res = run(function(t)
        t.zk_restore { id = "enc", hosts = H, from = file, retries = 2 }
        t.zk_restore { id = "cut", hosts = H, from = trunc, retries = 2 }
      end)
      os.remove(file)
      os.remove(trunc)
      assert.equal("failed", res.tasks.enc.state)
      assert.equal(1, res.tasks.enc.try_number)
      assert.matches("'encoding' must be \"utf8\" or \"base64\", got \"hex\" (node /r/bad",
                     log_of(res, "enc"), 1, true)
      assert.equal("failed", res.tasks.cut.state)
      assert.matches("malformed dump: json", log_of(res, "cut"), 1, true)
      assert.is_nil(st:exists("/r"))
    end)

    it("undoes the batches already written when a later one fails", function()
      -- An ephemeral node cannot have children: the restore's last batch
      -- fails after the first ones were written.
      assert(st:create("/t", ""))
      assert(st:create("/t/eph", "", { ephemeral = true }))
      assert(st:create("/t/keep", "old"))
      if st.flush then st:flush() end
      local tree = { path = "/t", data = "", children = {
        a = { data = "1" }, b = { data = "2" },
        keep = { data = "new" },
        eph = { data = "", children = { kid = { data = "3" } } },
      } }
      local res, err = zkdump.restore(st, tree, { overwrite = true, batch_ops = 1 })
      assert.is_nil(res)
      assert.matches("/t/eph/kid", err, 1, true)
      assert.matches("removed", err, 1, true)
      assert.is_nil(st:exists("/t/a"))
      assert.is_nil(st:exists("/t/b"))
      assert.equal("old", (st:get("/t/keep")))
    end)

    it("wakes a zk_watch sensor on the watch, not on its poke interval", function()
      local t0 = core.mono()
      local res = run(function(t)
        t.zk_watch { id = "appear", hosts = H, path = "/w/n", poke_interval = 30, timeout = 20 }
        t.zk_watch { id = "match", hosts = H, path = "/w/n", match = "^ready",
                     poke_interval = 30, timeout = 20 }
        t.lua { id = "writer", run = function()
          flow.sleep(0.3)
          local s = b.open()
          assert(s:create("/w/n", "starting", { parents = true }))
          if s.flush then s:flush() end
          flow.sleep(0.3)
          assert(s:set("/w/n", "ready now"))
          s:close()
        end }
      end)
      assert.equal("success", res.state)
      assert.equal("ready now", res.tasks.match.xcom)
      assert.is_true(core.mono() - t0 < 10)
    end)

    it("waits for a node to vanish or change, and times out", function()
      assert(st:create("/v", "1"))
      local res = run(function(t)
        t.zk_watch { id = "gone", hosts = H, path = "/v", wait_for = "absent",
                     poke_interval = 30, timeout = 20 }
        t.zk_watch { id = "never", hosts = H, path = "/nothing", poke_interval = 0.1,
                     timeout = 0.5 }
        t.lua { id = "del", run = function()
          flow.sleep(0.3)
          local s = b.open()
          assert(s:delete("/v", -1))
          s:close()
        end }
      end)
      assert.equal("success", res.tasks.gone.state)
      assert.equal("failed", res.tasks.never.state)
      assert.matches("timed out", log_of(res, "never"), 1, true)

      assert(st:create("/c", "1"))
      res = run(function(t)
        t.zk_watch { id = "changed", hosts = H, path = "/c", wait_for = "changed",
                     poke_interval = 30, timeout = 20 }
        t.lua { id = "set", run = function()
          flow.sleep(0.3)
          local s = b.open()
          assert(s:set("/c", "2"))
          s:close()
        end }
      end)
      assert.equal("success", res.tasks.changed.state)
      assert.equal("2", res.tasks.changed.xcom)
    end)

    it("runs a zk_watch sensor in reschedule mode", function()
      local res = run(function(t)
        t.zk_watch { id = "w", hosts = H, path = "/rs", mode = "reschedule",
                     poke_interval = 0.1, timeout = 20 }
        t.lua { id = "mk", run = function()
          flow.sleep(0.3)
          local s = b.open()
          assert(s:create("/rs", "here"))
          s:close()
        end }
      end)
      assert.equal("success", res.tasks.w.state)
      assert.equal("here", res.tasks.w.xcom)
    end)

    it("holds an ephemeral registration for the life of the task", function()
      local seen = {}
      local res = run(function(t)
        t.zk_register { id = "reg", hosts = H, path = "/reg/me", data = "x",
                        run = function(_, r)
                          local s = b.open()
                          seen.during = s:get(r.path)
                          s:close()
                          return "done"
                        end }
        t.zk_register { id = "svc", hosts = H, service = "web",
                        instance = { id = "w1", port = 80 }, duration = 0.1 }
      end)
      assert.equal("success", res.state)
      assert.equal("x", seen.during)
      assert.same({ path = "/reg/me", id = "me", value = "done" }, res.tasks.reg.xcom)
      assert.equal("/services/web/w1", res.tasks.svc.xcom.path)
      assert.is_nil(st:exists("/reg/me"))
      assert.is_nil(st:exists("/services/web/w1"))
    end)
  end)
end

describe("zk operators without hosts", function()
  it("use the scheduler's own store", function()
    local res = flow.test(flow.dag { id = "own", tasks = function(t)
      local c = t.zk_create { id = "c", path = "/own/x", data = "1" }
      t.zk_get { id = "g", path = "/own/x", after = { c } }
    end })
    assert.equal("success", res.state)
    assert.equal("1", res.tasks.g.xcom)
  end)
end)

describe("an unreachable ensemble", function()
  it("fails the task with ZCONNECTIONLOSS after the connect timeout", function()
    local t0 = core.mono()
    local res = flow.test(flow.dag { id = "gone", tasks = function(t)
      t.zk_get { id = "g", hosts = "127.0.0.1:1", path = "/x", connect_timeout = 1 }
    end })
    assert.equal("failed", res.tasks.g.state)
    assert.matches("ZCONNECTIONLOSS", log_of(res, "g"), 1, true)
    assert.is_true(core.mono() - t0 < 8)
  end)
end)

describe("zk_health", function()
  it("is skipped without an ensemble", function()
    if os.getenv("ZKFLOW_ZK") then return end
    local res = flow.test(flow.dag { id = "h", tasks = function(t)
      t.zk_health { id = "h" }
    end })
    assert.equal("skipped", res.tasks.h.state)
  end)

  it("fails when a member does not serve", function()
    local res = flow.test(flow.dag { id = "h", tasks = function(t)
      t.zk_health { id = "h", hosts = "127.0.0.1:1", request_timeout = 1 }
    end })
    assert.equal("failed", res.tasks.h.state)
    assert.matches("127.0.0.1:1: connect 127.0.0.1:1: Connection refused",
                   log_of(res, "h"), 1, true)
  end)

  if zk_hosts and zk_hosts ~= "" then
    it("reports every member's mode and latency #zk", function()
      local res = flow.test(flow.dag { id = "h", tasks = function(t)
        t.zk_health { id = "ok", hosts = zk_hosts }
        t.zk_health { id = "one_down", hosts = zk_hosts .. ",127.0.0.1:1",
                      request_timeout = 1 }
        t.zk_health { id = "quorum", hosts = zk_hosts .. ",127.0.0.1:1",
                      request_timeout = 1, min_ok = 1 }
      end })
      local m = res.tasks.ok.xcom[zk_hosts]
      assert.equal("success", res.tasks.ok.state)
      assert.is_true(m.ok)
      assert.equal("standalone", m.mode)
      assert.equal("imok", m.ruok)
      assert.is_number(m.latency.avg)
      assert.equal("failed", res.tasks.one_down.state)
      assert.equal("success", res.tasks.quorum.state)
      assert.is_false(res.tasks.quorum.xcom["127.0.0.1:1"].ok)
    end)
  end
end)
