-- spec/zk_client_spec.lua: zkflow.zk, every method on both backends (the
-- embedded SQLite store and a real ZooKeeper server from spec/zk_test.sh,
-- which sets ZKFLOW_TEST_ZK; without it the zk backend is pending), and the
-- faults only ZooKeeper has: ACLs, session expiry, an ensemble member dying.
local core = require "zkflow.core"
local zk = require "zkflow.zk"

local H = dofile("spec/fixtures/zk/helpers.lua")

-- ---- the specs ----------------------------------------------------------------

local run, eventually, sleep = H.run, H.eventually, H.sleep

for _, B in ipairs(H.backends()) do
describe("zkflow.zk on " .. B.name .. " #" .. B.name, function()
    if not B.available then
        pending("ZKFLOW_TEST_ZK is not set (spec/zk_test.sh sets it)")
        return
    end
    local root, c
    before_each(function()
        root = H.root()
        c = B.connect({ root = root })
    end)
    after_each(function()
        if c then c:close() end
    end)
    teardown(function() B.cleanup() end)

    it("creates, reads, writes and deletes nodes; paths are relative to the root", function()
        run(function()
            assert.equal("/a", c:create("/a", "one"))
            local data, stat = c:get("/a")
            assert.equal("one", data)
            assert.equal(0, stat.version)
            local st2 = c:set("/a", "two")
            assert.equal(1, st2.version)
            assert.equal("two", (c:get("/a")))
            assert.equal("/a/b", c:create("/a/b"))
            assert.equal("", (c:get("/a/b")))
            assert.same({ "b" }, c:children("/a"))
            assert.truthy(c:exists("/a/b"))
            assert.is_nil(c:exists("/a/zz"))
            assert.is_true(c:delete("/a/b"))
            assert.is_nil(c:exists("/a/b"))
            -- the root is real: another client without it sees the node
            local other = B.connect()
            assert.equal("two", (other:get(root .. "/a")))
            other:close()
        end)
    end)

    it("raises errors that start with ZooKeeper's name", function()
        run(function()
            c:create("/e", "x")
            c:create("/e/kid")
            local function msg(f, ...)
                local ok, err = pcall(f, c, ...)
                assert.is_false(ok)
                return err
            end
            assert.matches("^ZNONODE: /missing", msg(c.get, "/missing"))
            assert.matches("^ZNONODE", msg(c.set, "/missing", "x"))
            assert.matches("^ZNONODE", msg(c.create, "/no/parent", "x"))
            assert.matches("^ZNODEEXISTS: /e", msg(c.create, "/e", "x"))
            assert.matches("^ZBADVERSION: /e", msg(c.set, "/e", "y", 7))
            assert.matches("^ZBADVERSION", msg(c.delete, "/e/kid", 3))
            assert.matches("^ZNOTEMPTY: /e", msg(c.delete, "/e"))
            assert.matches("^ZBADARGUMENTS", msg(c.get, "no-slash"))
            assert.matches("^ZBADARGUMENTS", msg(c.create, "/big",
                                                  string.rep("x", 1024 * 1024 + 1)))
        end)
    end)

    it("creates with parents, sequential and ephemeral flags", function()
        run(function()
            assert.equal("/p/q/r", c:create("/p/q/r", "d", { parents = true }))
            local s1 = c:create("/p/s-", "", { sequential = true })
            local s2 = c:create("/p/s-", "", { sequential = true })
            assert.matches("^/p/s%-%d%d%d%d%d%d%d%d%d%d$", s1)
            assert.is_true(s2 > s1)
            local e = c:create("/p/eph", "x", { ephemeral = true })
            assert.equal("/p/eph", e)
            assert.is_true(c:exists("/p/eph").ephemeral_owner ~= 0)
            local other = B.connect({ root = root })
            assert.truthy(other:exists("/p/eph"))
            c:close()
            c = nil
            assert.truthy(eventually(function() return not other:exists("/p/eph") end))
            assert.truthy(other:exists("/p/q/r"))
            other:close()
        end)
    end)

    it("deletes a subtree with recursive=true", function()
        run(function()
            c:create("/t/a/b", "", { parents = true })
            c:create("/t/c", "")
            assert.is_true(c:delete("/t", { recursive = true }))
            assert.is_nil(c:exists("/t"))
            c:create("/t2/x", "", { parents = true })
            assert.is_true(c:delete("/t2", -1, { recursive = true }))
            assert.is_nil(c:exists("/t2"))
        end)
    end)

    it("runs multi as all or nothing", function()
        run(function()
            c:create("/m", "0")
            local res = c:multi {
                { op = "create", path = "/m/a", data = "1" },
                { op = "set", path = "/m", data = "2" },
                { op = "check", path = "/m", version = 1 },
            }
            assert.equal("/m/a", res[1])
            assert.equal(1, res[2].version)
            assert.is_true(res[3])
            local ok, err = pcall(c.multi, c, {
                { op = "create", path = "/m/b", data = "" },
                { op = "delete", path = "/m/none" },
            })
            assert.is_false(ok)
            assert.matches("^ZNONODE", err)
            assert.is_nil(c:exists("/m/b"))
        end)
    end)

    it("fires a watch once and again when it is set again", function()
        run(function()
            c:create("/w", "0")
            local events = {}
            local function watch(ev) events[#events + 1] = ev end
            c:get("/w", watch)
            c:set("/w", "1")
            assert.truthy(eventually(function() return #events == 1 end))
            assert.same({ type = "changed", path = "/w" }, events[1])
            c:set("/w", "2")
            sleep(0.3)
            assert.equal(1, #events)         -- one shot
            c:get("/w", watch)               -- re-armed
            c:set("/w", "3")
            assert.truthy(eventually(function() return #events == 2 end))
            -- exists on a missing node hears its creation; children hear kids
            c:exists("/w2", watch)
            c:children("/w", watch)
            c:create("/w2", "")
            c:create("/w/kid", "")
            assert.truthy(eventually(function() return #events == 4 end))
            local seen = {}
            for i = 3, 4 do seen[events[i].type .. " " .. events[i].path] = true end
            assert.truthy(seen["created /w2"])
            assert.truthy(seen["child /w"])
            c:exists("/w2", watch)
            c:delete("/w2")
            assert.truthy(eventually(function() return #events == 5 end))
            assert.same({ type = "deleted", path = "/w2" }, events[5])
        end)
    end)

    it("works on plain Lua's main thread too", function()
        assert.equal("/main", c:create("/main", "m"))
        assert.equal("m", (c:get("/main")))
        local lk = assert(c:lock("/main-lock", { timeout = 1 }))
        local other = B.connect({ root = root })
        local t0 = core.mono()
        local lk2, err = other:lock("/main-lock", { timeout = 0.5 })
        assert.is_nil(lk2)
        assert.matches("^ZOPERATIONTIMEOUT", err)
        assert.is_true(core.mono() - t0 >= 0.45)
        lk:release()
        lk2 = assert(other:lock("/main-lock", { timeout = 2 }))
        lk2:release()
        other:close()
    end)

    it("finds a protected sequential create whose answer was lost", function()
        run(function()
            c:create("/prot", "")
            -- A store that makes the node, then reports connection loss once.
            local real = c.store
            local lost = false
            local proxy = setmetatable({}, { __index = function(_, k)
                if k == "create" then
                    return function(_, ...)
                        local p, e = real:create(...)
                        if p and not lost then
                            lost = true
                            return nil, "ZCONNECTIONLOSS"
                        end
                        return p, e
                    end
                end
                return function(_, ...) return real[k](real, ...) end
            end })
            local w = zk.wrap(proxy, { root = root, borrowed = true })
            local p = w:create("/prot/job-", "x", { sequential = true, protected = true })
            assert.is_true(lost)
            assert.matches("^/prot/_c_%x+%-%x+%-%x+%-%x+%-%x+%-job%-%d+$", p)
            assert.equal(1, #c:children("/prot"))       -- no duplicate
        end)
    end)

    it("re-creates its registrations on connected after expired", function()
        run(function()
            assert.equal(B.name, c:backend())
            c:register("again", { id = "r1", port = 9 })
            -- What an expiry does to the node, then the session events.
            c.store:delete(c:_full("/services/again/r1"))
            c.store:flush()
            assert.same({}, c:discover("again"))
            c:notify_session("expired")
            c:notify_session("connected")
            assert.truthy(eventually(function() return #c:discover("again") == 1 end))
            assert.equal("r1", c:discover("again")[1].id)
            -- an ACL means nothing to the embedded store: accepted there
            if B.name == "sqlite" then
                assert.equal("/acl", c:create("/acl", "", { acl = "read" }))
            end
        end)
    end)

    it("has no default store in plain Lua, and one after set_default", function()
        local ok, err = pcall(zk.default)
        assert.is_false(ok)
        assert.matches("no engine store", err)
        local d = zk.set_default(c.store, { root = root })
        assert.equal(d, zk.default())
        assert.equal("/d", zk.default():create("/d", "x"))
        zk.default():close()           -- borrowed: the store stays open
        assert.truthy(c:exists("/d"))
        zk.set_default(nil)
    end)
end)
end

describe("zkflow.zk against ZooKeeper only #zk", function()
    if not H.HOSTS then
        pending("ZKFLOW_TEST_ZK is not set (spec/zk_test.sh sets it)")
        return
    end

    it("refuses a client without credentials on a node with a digest ACL", function()
        run(function()
            local root = H.root()
            local owner = zk.connect(H.HOSTS, { timeout = 5,
                                               auth = { "digest", "bob:secret" },
                                               acl = "creator" })
            owner:create(root, "private")
            assert.equal("private", (owner:get(root)))
            local anon = zk.connect(H.HOSTS, { timeout = 5 })
            local ok, err = pcall(anon.get, anon, root)
            assert.is_false(ok)
            assert.matches("^ZNOAUTH", err)
            local wrong = zk.connect(H.HOSTS, { timeout = 5,
                                               auth = { "digest", "bob:wrong" } })
            ok, err = pcall(wrong.set, wrong, root, "x")
            assert.is_false(ok)
            assert.matches("^ZNOAUTH", err)
            owner:delete(root)
            owner:close(); anon:close(); wrong:close()
        end)
    end)

    it("gives a clear error when no server answers", function()
        local t0 = core.mono()
        local ok, err = pcall(zk.connect, "127.0.0.1:1", { timeout = 1 })
        assert.is_false(ok)
        assert.matches("^ZCONNECTIONLOSS", err)
        assert.is_true(core.mono() - t0 < 10)
    end)

    it("leaves one node when a protected sequential create meets a stalled server", function()
        if not os.getenv("ZKFLOW_ZK_DIR") then
            pending("needs the harness's ZKFLOW_ZK_DIR")
            return
        end
        run(function()
            local c = zk.connect(H.HOSTS, { timeout = 2, root = H.root() })
            c:create("/jobs", "")
            assert(H.harness("pause", 1))
            require("zkflow.async").spawn(function()
                sleep(2)
                H.harness("resume", 1)
            end)
            local ok, p = pcall(c.create, c, "/jobs/job-", "x",
                                { sequential = true, protected = true })
            H.harness("resume", 1)
            assert(ok, p)
            assert.matches("^/jobs/_c_[%x%-]+%-job%-%d+$", p)
            local kids = eventually(function()
                local okk, k = pcall(c.children, c, "/jobs")
                return okk and k
            end, 20)
            assert.same({ p:sub(7) }, kids)
            c:close()
        end, 90)
    end)

    it("registers its services again after the session expires", function()
        if not os.getenv("ZKFLOW_ZK_DIR") then
            pending("needs the harness's ZKFLOW_ZK_DIR")
            return
        end
        run(function()
            local c = zk.connect(H.HOSTS, { timeout = 2, root = H.root() })
            local states = {}
            c:on_session(function(s) states[#states + 1] = s end)
            c:register("expiry", { id = "me", port = 1 })
            local owner1 = c:exists("/services/expiry/me").ephemeral_owner
            -- A paused server lets the session time out: on resume it
            -- expires it, unless the client's reconnect wins the race; then
            -- pause again.
            local function expired()
                for _, s in ipairs(states) do if s == "expired" then return true end end
            end
            for _ = 1, 4 do
                assert(H.harness("pause", 1))
                local ok, e = pcall(sleep, 5)
                H.harness("resume", 1)
                assert(ok, e)
                if eventually(expired, 6) then break end
            end
            assert.truthy(expired())
            local st = eventually(function()
                local okk, s = pcall(c.exists, c, "/services/expiry/me")
                return okk and s and s.ephemeral_owner ~= owner1 and s
            end, 20)
            assert.truthy(st)
            assert.equal("me", c:discover("expiry")[1].id)
            c:close()
        end, 90)
    end)
end)

describe("zkflow.zk on a 3-node ensemble #zk #ensemble", function()
    if not H.HOSTS then
        pending("ZKFLOW_TEST_ZK is not set (spec/zk_test.sh sets it)")
        return
    end

    it("goes on when one member is killed", function()
        local dir = os.tmpname()
        os.remove(dir)
        local env = "ZKFLOW_ZK_DIR=" .. dir .. " "
        local p = io.popen(env .. "bash spec/zk/harness.sh start3 2>/dev/null")
        local hosts = p:read("l")
        p:close()
        assert.truthy(hosts and hosts:match("^127"), "the ensemble did not start")
        local ok, err = pcall(run, function()
            local c = zk.connect(hosts, { timeout = 6, root = H.root() })
            c:create("/n", "0")
            for i = 1, 200 do
                if i == 50 then
                    os.execute(env .. "bash spec/zk/harness.sh kill 1")
                end
                c:set("/n", tostring(i))
                assert.equal(tostring(i), (c:get("/n")))
            end
            c:close()
        end, 120)
        os.execute(env .. "bash spec/zk/harness.sh stop")
        assert(ok, err)
    end)
end)
