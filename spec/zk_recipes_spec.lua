-- spec/zk_recipes_spec.lua: the recipes of zkflow.zk (lock, election,
-- semaphore, service discovery) on both backends; the zk backend needs
-- ZKFLOW_TEST_ZK (spec/zk_test.sh sets it) and is pending without it.
local core = require "zkflow.core"
local async = require "zkflow.async"
local zk = require "zkflow.zk"

local H = dofile("spec/fixtures/zk/helpers.lua")

-- ---- the specs ----------------------------------------------------------------

local run, eventually, sleep = H.run, H.eventually, H.sleep

for _, B in ipairs(H.backends()) do
describe("zkflow.zk recipes on " .. B.name .. " #" .. B.name, function()
    if not B.available then
        pending("ZKFLOW_TEST_ZK is not set (spec/zk_test.sh sets it)")
        return
    end
    local root, a, b
    before_each(function()
        root = H.root()
        a = B.connect({ root = root })
        b = B.connect({ root = root })
    end)
    after_each(function()
        if a then a:close() end
        if b then b:close() end
    end)
    teardown(function() B.cleanup() end)

    it("names lock nodes as kazoo does and excludes a second client", function()
        run(function()
            local lk = assert(a:lock("/locks/x", { id = "client-a" }))
            local kids = a:children("/locks/x")
            assert.equal(1, #kids)
            assert.matches("^" .. ("%x"):rep(32) .. "__lock__" .. ("%d"):rep(10) .. "$",
                           kids[1])
            assert.equal("client-a", (a:get("/locks/x/" .. kids[1])))
            assert.is_true(lk:is_acquired())
            local t0 = core.mono()
            local none, err = b:lock("/locks/x", { timeout = 0.5 })
            assert.is_nil(none)
            assert.matches("^ZOPERATIONTIMEOUT", err)
            assert.is_true(core.mono() - t0 >= 0.45)
            assert.equal(1, #a:children("/locks/x"))    -- the loser cleaned up
            -- a waiter gets the lock as soon as the holder lets go
            local got
            async.spawn(function()
                local l2 = assert(b:lock("/locks/x", { timeout = 10 }))
                got = core.mono()
                l2:release()
            end)
            sleep(0.3)
            assert.is_nil(got)
            local released = core.mono()
            assert.is_true(lk:release())
            assert.is_false(lk:release())
            assert.truthy(eventually(function() return got end))
            assert.is_true(got - released < 2)
        end)
    end)

    it("orders kazoo and Curator contenders by sequence and makes Curator names on request", function()
        run(function()
            local lk = assert(a:lock("/locks/c", { style = "curator" }))
            local kids = a:children("/locks/c")
            assert.matches("^_c_%x+%-%x+%-%x+%-%x+%-%x+%-lock%-%d%d%d%d%d%d%d%d%d%d$", kids[1])
            -- a kazoo-style contender behind a Curator holder waits
            local none = b:lock("/locks/c", { timeout = 0.3 })
            assert.is_nil(none)
            lk:release()
            -- a foreign Curator holder with the lowest sequence blocks us
            a:create("/locks/d/_c_11111111-2222-3333-4444-555555555555-lock-", "",
                     { sequential = true, parents = true, ephemeral = true })
            assert.is_nil((b:lock("/locks/d", { timeout = 0.3 })))
            -- and an unrelated child does not
            a:create("/locks/e/unrelated", "", { parents = true })
            local l3 = assert(b:lock("/locks/e", { timeout = 1 }))
            l3:release()
            assert.equal(1234567890, tonumber(zk.contender_seq("x__lock__1234567890")))
            assert.equal("0000000042", zk.contender_seq("_c_u-lock-0000000042"))
            assert.is_nil(zk.contender_seq("x__lock__42"))
        end)
    end)

    it("elects one leader, and the other when the leader goes away", function()
        run(function()
            local ea = a:election("/election/s", "a")
            local eb = b:election("/election/s", "b")
            local log = {}
            local release_a = false
            async.spawn(function()
                ea:run(function()
                    log[#log + 1] = "a"
                    while not release_a do sleep(0.05) end
                end)
            end)
            assert.truthy(eventually(function() return log[1] == "a" end))
            assert.is_true(ea:is_leader())
            async.spawn(function()
                eb:run(function() log[#log + 1] = "b" end)
            end)
            sleep(0.3)
            assert.same({ "a" }, log)
            assert.is_false(eb:is_leader())
            assert.same({ "a", "b" }, ea:contenders())
            -- the leader's session ends: its node goes, b leads
            a:close()
            a = nil
            release_a = true
            assert.truthy(eventually(function() return log[2] == "b" end))
        end)
    end)

    it("lets a contender cancel its wait", function()
        run(function()
            local lk = assert(a:lock("/election/c"))
            local eb = b:election("/election/c", "b")
            local ran, returned = false, false
            async.spawn(function()
                eb:run(function() ran = true end)
                returned = true
            end)
            sleep(0.2)
            eb:cancel()
            assert.truthy(eventually(function() return returned end))
            assert.is_false(ran)
            assert.equal(1, #a:children("/election/c"))
            lk:release()
        end)
    end)

    it("hands out at most max_leases of a semaphore (kazoo's node names)", function()
        run(function()
            local s1 = a:semaphore("/sem", 2, { id = "one" })
            local s2 = b:semaphore("/sem", 2, { id = "two" })
            local s3 = b:semaphore("/sem", 2, { id = "three" })
            assert.is_true(s1:acquire())
            assert.is_true(s2:acquire())
            assert.equal("2", (a:get("/sem")))
            local ok, err = s3:acquire(0.4)
            assert.is_nil(ok)
            assert.matches("^ZOPERATIONTIMEOUT", err)
            local holders = s1:lease_holders()
            table.sort(holders)
            assert.same({ "one", "two" }, holders)
            for _, k in ipairs(a:children("/sem")) do assert.matches("^%x+$", k) end
            assert.truthy(a:exists("/sem-__lock__"))
            local got
            async.spawn(function() got = s3:acquire(10) end)
            sleep(0.2)
            s1:release()
            assert.truthy(eventually(function() return got end))
            local bad = pcall(function() a:semaphore("/sem", 3):acquire(0.1) end)
            assert.is_false(bad)
            s2:release(); s3:release()
        end)
    end)

    it("registers a service as Curator's ServiceInstance and discovers it", function()
        run(function()
            local inst = a:register("web", { id = "w1", address = "10.0.0.1", port = 8080,
                                             payload = { zone = "a" } })
            assert.equal("w1", inst.id)
            b:register("web", { address = "10.0.0.2", port = 8081 })
            local list = b:discover("web")
            assert.equal(2, #list)
            local byaddr = {}
            for _, i in ipairs(list) do byaddr[i.address] = i end
            local w1 = byaddr["10.0.0.1"]
            assert.equal("web", w1.name)
            assert.equal("w1", w1.id)
            assert.equal(8080, w1.port)
            assert.equal(core.null, w1.sslPort)
            assert.equal("DYNAMIC", w1.serviceType)
            assert.equal(core.null, w1.uriSpec)
            assert.equal("a", w1.payload.zone)
            assert.is_true(math.type(w1.registrationTimeUTC) == "integer")
            assert.is_true(math.abs(w1.registrationTimeUTC - core.now() * 1000) < 60000)
            -- the raw node is what Curator reads
            local raw = core.json_decode((b:get("/services/web/w1")))
            assert.equal(8080, raw.port)
            assert.is_true(b:exists("/services/web/w1").ephemeral_owner ~= 0)
            assert.same({}, b:discover("nothing"))
            -- gone with its client's session
            a:close()
            a = nil
            assert.truthy(eventually(function() return #b:discover("web") == 1 end))
            assert.equal("10.0.0.2", b:discover("web")[1].address)
            b:unregister("web", b:discover("web")[1].id)
            assert.same({}, b:discover("web"))
        end)
    end)
end)
end
