-- The store conformance spec: znode semantics through core.store's Lua API.
-- Every backend in `backends` must pass it unchanged; a backend is a
-- factory whose result opens fresh sessions on one empty tree
-- (open() may be called again for a second session on the same data).
local core = require "zkflow.core"

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".db"
end

local backends = {
  sqlite = function()
    local path = tmpdb()
    return {
      open = function()
        return assert(core.store(path, { poll_interval = 20 }))
      end,
      cleanup = function()
        for _, suffix in ipairs({ "", "-wal", "-shm" }) do
          os.remove(path .. suffix)
        end
      end,
    }
  end,
}

-- The zk backend runs against the server that spec/zk_test.sh starts
-- (ZKFLOW_TEST_ZK=127.0.0.1:PORT); each factory gets a fresh chroot.
local zk_hosts = os.getenv("ZKFLOW_TEST_ZK")
if zk_hosts and zk_hosts ~= "" then
  local n = 0
  backends.zk = function()
    n = n + 1
    local chroot = ("/zkflow-spec-%d-%d"):format(math.floor(core.now() * 1000) % 1000000000, n)
    local top = assert(core.store_zk(zk_hosts, { timeout = 5 }))
    assert(top:create(chroot, ""))
    return {
      open = function()
        return assert(core.store_zk(zk_hosts .. chroot, { timeout = 5 }))
      end,
      cleanup = function()
        top:delete(chroot, { recursive = true })
        top:close()
      end,
    }
  end
else
  describe("store #store (zk)", function()
    pending("skipped: no ZooKeeper server (set ZKFLOW_TEST_ZK=127.0.0.1:PORT, or run spec/zk_test.sh)")
  end)
end

-- Runs the loop until core.stop() or `seconds` pass.
local function run_for(seconds)
  local t = core.timer(seconds, core.stop)
  core.run()
  t:cancel()
end

for name, factory in pairs(backends) do
  describe("store #store (" .. name .. ")", function()
    local backend, st

    before_each(function()
      backend = factory()
      st = backend.open()
    end)

    after_each(function()
      st:close()
      backend.cleanup()
    end)

    describe("create and get", function()
      it("stores data and returns the path", function()
        assert.equal("/a", st:create("/a", "hello"))
        local data, stat = st:get("/a")
        assert.equal("hello", data)
        assert.equal(0, stat.version)
        assert.equal(5, stat.data_length)
        assert.equal(0, stat.ephemeral_owner)
        assert.equal(0, stat.num_children)
        assert.equal(stat.czxid, stat.mzxid)
      end)

      it("keeps binary and empty data", function()
        local bin = "a\0b\255"
        st:create("/bin", bin)
        st:create("/empty")
        assert.equal(bin, (st:get("/bin")))
        assert.equal("", (st:get("/empty")))
      end)

      it("fails with ZNODEEXISTS on an existing node and on the root", function()
        st:create("/a", "")
        assert.same({ nil, "ZNODEEXISTS" }, { st:create("/a", "") })
        assert.same({ nil, "ZNODEEXISTS" }, { st:create("/", "") })
      end)

      it("fails with ZNONODE without a parent", function()
        assert.same({ nil, "ZNONODE" }, { st:create("/x/y", "") })
        assert.same({ nil, "ZNONODE" }, { st:get("/x") })
      end)

      it("creates missing parents with parents=true", function()
        assert.equal("/p/q/r", st:create("/p/q/r", "leaf", { parents = true }))
        local data, stat = st:get("/p/q")
        assert.equal("", data)
        assert.equal(0, stat.ephemeral_owner)
        assert.equal(1, stat.num_children)
        assert.equal("leaf", (st:get("/p/q/r")))
      end)

      it("refuses children of ephemeral nodes", function()
        st:create("/e", "", { ephemeral = true })
        assert.same({ nil, "ZNOCHILDRENFOREPHEMERALS" }, { st:create("/e/c", "") })
        assert.not_equal(0, st:exists("/e").ephemeral_owner)
      end)

      it("names sequential nodes from the parent's cversion", function()
        st:create("/q", "")
        assert.equal("/q/n-0000000000", st:create("/q/n-", "", { sequential = true }))
        assert.equal("/q/n-0000000001", st:create("/q/n-", "", { sequential = true }))
        st:delete("/q/n-0000000000")
        -- The delete counts in cversion; ZooKeeper's leader may still name
        -- the next node from the parent as it was before the delete was
        -- applied (its outstanding change record), so 2 is as right as 3.
        assert.matches("^/q/n%-000000000[23]$", st:create("/q/n-", "", { sequential = true }))
      end)

      it("rejects data over 1 MiB", function()
        assert.equal("/big", st:create("/big", string.rep("x", 1048576)))
        assert.same({ nil, "ZBADARGUMENTS" }, { st:create("/big2", string.rep("x", 1048577)) })
        assert.same({ nil, "ZBADARGUMENTS" }, { st:set("/big", string.rep("x", 1048577)) })
      end)

      it("rejects invalid paths with ZBADARGUMENTS", function()
        for _, p in ipairs({ "", "a", "/a/", "//", "/a//b", "/.", "/a/..", "/a\0b" }) do
          assert.same({ nil, "ZBADARGUMENTS" }, { st:create(p, "") }, p)
          assert.same({ nil, "ZBADARGUMENTS" }, { st:get(p) }, p)
          assert.same({ nil, "ZBADARGUMENTS" }, { st:exists(p) }, p)
        end
      end)

      it("raises on misuse of arguments", function()
        assert.has_error(function() st:create({}, "") end)
        assert.has_error(function() st:create("/a", "", "ephemeral") end)
        assert.has_error(function() st:get("/a", 42) end)
        assert.has_error(function() st:multi("ops") end)
        assert.has_error(function() st:multi({ { op = "frob", path = "/a" } }) end)
      end)
    end)

    describe("set and delete", function()
      it("checks versions", function()
        st:create("/v", "0")
        assert.equal(1, st:set("/v", "1").version)
        assert.equal(2, st:set("/v", "2", 1).version)
        assert.same({ nil, "ZBADVERSION" }, { st:set("/v", "x", 1) })
        assert.same({ nil, "ZBADVERSION" }, { st:delete("/v", 0) })
        assert.is_true(st:delete("/v", 2))
        assert.same({ nil, "ZNONODE" }, { st:delete("/v") })
        assert.same({ nil, "ZNONODE" }, { st:set("/v", "") })
      end)

      it("counts child changes in the parent's cversion", function()
        st:create("/c", "")
        st:create("/c/a", "")
        st:create("/c/b", "")
        st:delete("/c/a")
        local stat = st:exists("/c")
        assert.equal(3, stat.cversion)
        assert.equal(1, stat.num_children)
        assert.equal(0, stat.version)
      end)

      it("refuses to delete a node with children unless recursive", function()
        st:create("/t/a/b", "", { parents = true })
        st:create("/t0", "")
        assert.same({ nil, "ZNOTEMPTY" }, { st:delete("/t") })
        assert.is_true(st:delete("/t", -1, { recursive = true }))
        assert.is_nil(st:exists("/t/a/b"))
        assert.is_nil(st:exists("/t"))
        assert.is_table(st:exists("/t0"))
      end)

      it("accepts the options in the version's place", function()
        st:create("/t/a", "", { parents = true })
        assert.is_true(st:delete("/t", { recursive = true }))
      end)

      it("never deletes the root", function()
        assert.same({ nil, "ZBADARGUMENTS" }, { st:delete("/", -1, { recursive = true }) })
      end)
    end)

    describe("exists and children", function()
      it("returns nil for a missing node, without an error", function()
        assert.same({}, { st:exists("/missing") })
      end)

      it("lists children sorted", function()
        st:create("/c", "")
        for _, n in ipairs({ "zeta", "alpha", "mid" }) do
          st:create("/c/" .. n, "")
        end
        st:create("/c/mid/deep", "")
        assert.same({ "alpha", "mid", "zeta" }, st:children("/c"))
        assert.same({ "c" }, st:children("/"))
        assert.same({ nil, "ZNONODE" }, { st:children("/none") })
      end)
    end)

    describe("multi", function()
      it("applies every op", function()
        local r = assert(st:multi({
          { op = "create", path = "/m", data = "x" },
          { op = "create", path = "/m/s-", sequential = true },
          { op = "set", path = "/m", data = "y", version = 0 },
          { op = "check", path = "/m", version = 1 },
        }))
        assert.equal("/m", r[1])
        assert.equal("/m/s-0000000000", r[2])
        assert.equal(1, r[3].version)
        assert.is_true(r[4])
        assert.equal("y", (st:get("/m")))
      end)

      it("applies nothing when one op fails, and names it", function()
        st:create("/keep", "orig")
        local r, err, index = st:multi({
          { op = "create", path = "/r", data = "x" },
          { op = "set", path = "/keep", data = "changed" },
          { op = "delete", path = "/keep", version = 7 },
        })
        assert.is_nil(r)
        assert.equal("ZBADVERSION", err)
        assert.equal(3, index)
        assert.is_nil(st:exists("/r"))
        local data, stat = st:get("/keep")
        assert.equal("orig", data)
        assert.equal(0, stat.version)
      end)
    end)

    describe("watches", function()
      it("fire once, on the loop, after the change", function()
        local events = {}
        st:exists("/w", function(ev) events[#events + 1] = ev end)
        st:create("/w", "1")
        assert.equal(0, #events)
        st:set("/w", "2")
        run_for(0.1)
        assert.same({ { type = "created", path = "/w" } }, events)
      end)

      it("report data changes, deletion and children", function()
        st:create("/d/x", "", { parents = true })
        local got = {}
        st:get("/d/x", function(ev) got.get = ev.type end)
        st:children("/d", function(ev) got.children = ev.type end)
        st:set("/d/x", "new")
        run_for(0.05)
        assert.equal("changed", got.get)
        assert.is_nil(got.children)
        st:get("/d/x", function(ev) got.get = ev.type end)
        st:delete("/d/x")
        run_for(0.05)
        assert.equal("deleted", got.get)
        assert.equal("child", got.children)
      end)

      it("are not set by a get that fails", function()
        local fired = spy.new(function() end)
        assert.is_nil(st:get("/nothing", fired))
        st:create("/nothing", "")
        run_for(0.05)
        assert.spy(fired).was_not_called()
      end)

      it("see changes made by another session", function()
        st:create("/x", "v")
        st:flush()
        local event
        st:get("/x", function(ev) event = ev; core.stop() end)
        local other = backend.open()
        assert.is_table(other:set("/x", "from other"))
        other:flush()
        run_for(2)
        other:close()
        assert.same({ type = "changed", path = "/x" }, event)
      end)

      it("report an error in the watch function without breaking the loop", function()
        local after = false
        st:exists("/boom", function() error("watch failed on purpose") end)
        st:exists("/boom2", function() after = true end)
        st:create("/boom", "")
        st:create("/boom2", "")
        run_for(0.05)
        assert.is_true(after)
      end)
    end)

    describe("sessions", function()
      it("delete their ephemeral nodes when closed", function()
        st:create("/svc", "")
        st:flush()
        local other = backend.open()
        assert.equal("/svc/me", other:create("/svc/me", "", { ephemeral = true }))
        other:flush()
        assert.is_table(st:exists("/svc/me"))
        other:close()
        assert.is_nil(st:exists("/svc/me"))
        assert.is_table(st:exists("/svc"))
      end)

      it("close once, by close(), __close or __gc", function()
        do
          local scoped <close> = backend.open()
          scoped:create("/s", "", { ephemeral = true })
        end
        assert.is_nil(st:exists("/s"))
        local other = backend.open()
        other:close()
        other:close()
        assert.matches("closed", tostring(other))
        assert.has_error(function() other:get("/") end)
      end)
    end)
  end)
end
