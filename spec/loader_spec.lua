-- The DAG loader: per-file environments, limits, scanning a folder.

local loader = require "zkflow.dsl.loader"

local FIX = "spec/fixtures/dags/"
local FOLDER = FIX .. "folder"

local has_core = pcall(require, "zkflow.core")

describe("loader.load_file", function()
    it("returns the dags a file defines, returned or not", function()
        local dags, err = loader.load_file(FIX .. "multi.lua")
        assert.is_nil(err)
        local ids = {}
        for _, d in ipairs(dags) do ids[#ids + 1] = d.id end
        assert.same({ "multi_hidden", "multi_a", "multi_b" }, ids)
        for _, d in ipairs(dags) do
            assert.equal(FIX .. "multi.lua", d.file)
            assert.matches("^%x%x%x%x%x%x%x%x$", d.source_hash)
        end
    end)

    it("sets source_hash to the FNV-1a hash of the file", function()
        local f = assert(io.open(FIX .. "multi.lua", "rb"))
        local src = f:read("a")
        f:close()
        local dags = loader.load_file(FIX .. "multi.lua")
        assert.equal(loader.hash(src), dags[1].source_hash)
        assert.equal("811c9dc5", loader.hash(""))
        assert.equal("e40c292c", loader.hash("a"))
        assert.equal("bf9cf968", loader.hash("foobar"))
    end)

    it("reports syntax errors with file and line", function()
        local dags, err = loader.load_file(FIX .. "syntax.lua")
        assert.is_nil(dags)
        assert.matches("^" .. FIX:gsub("%p", "%%%0") .. "syntax%.lua:4:", err)
    end)

    it("reports runtime errors with file and line", function()
        local _, err = loader.load_file(FIX .. "runtime_error.lua")
        assert.matches(FIX .. "runtime_error.lua:3: attempt to index a nil value", err, 1, true)
    end)

    it("rejects a file that returns something else than dags", function()
        local _, err = loader.load_file(FIX .. "not_a_dag.lua")
        assert.matches("did you forget flow.dag?", err, 1, true)
    end)

    it("rejects a dag id defined twice in one file", function()
        local _, err = loader.load_file(FIX .. "twice.lua")
        assert.equal(FIX .. "twice.lua:4: dag 'twice' is defined twice in this file (first at line 3)", err)
    end)

    it("names a missing file", function()
        local _, err = loader.load_file(FIX .. "nope.lua")
        assert.matches(FIX .. "nope.lua", err, 1, true)
    end)

    it("stops a file that loops forever at the instruction limit", function()
        local dags, err = loader.load_file(FIX .. "loop.lua")
        assert.is_nil(dags)
        assert.equal(FIX .. "loop.lua: loading exceeded the instruction limit ("
                     .. loader.DEFAULT_INSTRUCTIONS .. ")", err)
    end)

    it("takes the instruction limit from opts", function()
        local _, err = loader.load_file(FIX .. "loop.lua", { instruction_limit = 100000 })
        assert.equal(FIX .. "loop.lua: loading exceeded the instruction limit (100000)", err)
    end)

    it("keeps the limit when the file catches the error", function()
        local _, err = loader.load_file(FIX .. "pcall_loop.lua", { instruction_limit = 100000 })
        assert.matches("exceeded the instruction limit", err, 1, true)
    end)

    it("counts instructions inside coroutines the file creates", function()
        local _, err = loader.load_file(FIX .. "coroutine_loop.lua", { instruction_limit = 100000 })
        assert.matches("exceeded the instruction limit", err, 1, true)
    end)

    it("leaves the caller's hook in place", function()
        local function h() end
        debug.sethook(h, "", 1000000)
        loader.load_file(FIX .. "loop.lua", { instruction_limit = 10000 })
        local now = debug.gethook()
        debug.sethook()
        assert.equal(h, now)
    end)

    it("refuses a file that yields while loading", function()
        local _, err = loader.load_file(FIX .. "yield.lua")
        assert.matches("cannot yield while loading", err, 1, true)
    end)

    it("stops a file that allocates without end at the memory limit", function()
        -- exact in the engine (capped allocator), through the count hook in
        -- plain lua5.4 (with or without the C module)
        local _, err = loader.load_file(FIX .. "memory.lua", { memory_limit = 8 * 1024 * 1024 })
        assert.equal(FIX .. "memory.lua: loading exceeded the memory limit (8388608 bytes)", err)
        collectgarbage()
        -- the limit is gone again: allocating more than 8 MiB works
        local big = string.rep("y", 16 * 1024 * 1024)
        assert.equal(16 * 1024 * 1024, #big)
    end)

    it("reports the memory limit through the C module when it is loaded", function()
        if not has_core then
            pending("needs the C module (LUA_CPATH=build/?.so)")
            return
        end
        local core = require "zkflow.core"
        local _, err = loader.load_file(FIX .. "memory.lua", { memory_limit = 4 * 1024 * 1024 })
        assert.matches("exceeded the memory limit (4194304 bytes)", err, 1, true)
        assert.is_number(core.mem_used())
    end)

    it("does not count garbage against the memory limit", function()
        local dags, err = loader.load_source([[
            for i = 1, 20000 do local s = string.rep("g", 1024) .. i end
            return require("zkflow").dag { id = "garbage", tasks = function() end }
        ]], "garbage.lua", { memory_limit = 2 * 1024 * 1024 })
        assert.is_nil(err)
        assert.equal("garbage", dags[1].id)
    end)
end)

describe("the per-file environment", function()
    it("keeps load() and globals inside the file", function()
        local dags, err = loader.load_source([[
            load("from_load = 1")()
            local flow = require "zkflow"
            return flow.dag { id = "env", params = { v = from_load, g = _G == _ENV }, tasks = function() end }
        ]], "env.lua")
        assert.is_nil(err)
        assert.same({ v = 1, g = true }, dags[1].params)
        assert.is_nil(rawget(_G, "from_load"))
    end)

    it("leaves out what would reach the engine", function()
        local dags = assert(loader.load_source([[
            return require("zkflow").dag { id = "safe", tasks = function() end, params = {
                exit = os.exit == nil, debug = debug == nil, io = io ~= nil, date = os.date ~= nil,
            } }
        ]], "safe.lua"))
        assert.same({ exit = true, debug = true, io = true, date = true }, dags[1].params)
    end)

    it("gives each file its own copy of the standard tables", function()
        assert(loader.load_source("table.mine = 1", "a.lua"))
        assert.is_nil(rawget(table, "mine"))
    end)

    -- Hardening probe 8: what a file reached through require.
    it("keeps require from reaching os.exit, debug and the limits' switches", function()
        local _, err = loader.load_source('require("os").exit(7)', "exit.lua")
        assert.matches("^exit%.lua:1: attempt to call a nil value %(field 'exit'%)", err)
        _, err = loader.load_source('require("debug").sethook()', "dbg.lua")
        assert.matches("^dbg%.lua:1: module 'debug' is not available in DAG files", err)
        _, err = loader.load_source('require("zkflow.core").mem_limit(nil)', "mem.lua")
        assert.matches("^mem%.lua:1: attempt to call a nil value", err)
        _, err = loader.load_source('require("zkflow.zk").connect = nil', "zk.lua")
        assert.matches("cannot change 'connect'", err, 1, true)
        assert.is_function(require("zkflow.zk").connect)
        assert(loader.load_source('assert(require("os").date and require("string").format)', "ok.lua"))
    end)

    it("lets no file change a metatable other files share", function()
        local _, err = loader.load_source('getmetatable("").__index.upper = nil', "s.lua")
        assert.matches("cannot change 'upper'", err, 1, true)
        _, err = loader.load_source('getmetatable("").__index = {}', "s.lua")
        assert.matches("cannot change '__index'", err, 1, true)
        assert.equal("ABC", ("abc"):upper())
        _, err = loader.load_source([[
            local flow = require "zkflow"
            return flow.dag { id = "m", tasks = function(t)
                getmetatable(t.empty { id = "a" }).__index.retries = 9
            end }]], "m.lua")
        assert.matches("cannot change 'retries'", err, 1, true)
        local dags = assert(loader.load_source([[
            local flow = require "zkflow"
            local mine = setmetatable({}, {})
            getmetatable(mine).x = 1
            return flow.dag { id = "n", tasks = function(t) t.empty { id = "a" } end }]], "n.lua"))
        assert.equal(0, dags[1].tasks.a.retries)
    end)

    -- Hardening probe 7, in part: an empty string.rep looped in C for ever.
    it("answers string.rep of an empty string at once", function()
        assert(loader.load_source('assert(string.rep("", 1 << 62) == "")', "rep.lua"))
    end)

    -- Hardening probe 9: one byte 0xff in a description failed the DAG
    -- list for every DAG.
    it("makes text that is not UTF-8 an import error naming the field", function()
        local _, err = loader.load_source([[
            return require("zkflow").dag { id = "b", description = "caf\xe9",
                tasks = function(t) t.empty { id = "a" } end }]], "b.lua")
        assert.equal("b.lua:1: dag 'b': 'description': not valid UTF-8 (byte 0xE9 at position 4)", err)
        _, err = loader.load_source([[
            return require("zkflow").dag { id = "b", tasks = function(t)
                t.empty { id = "a", pool = "p\xff" } end }]], "b.lua")
        assert.matches("task 'a': 'pool': not valid UTF-8", err, 1, true)
    end)
end)

describe("loader.scan", function()
    local r

    setup(function()
        r = loader.scan(FOLDER)
    end)

    it("loads every good file", function()
        local ids = {}
        for id in pairs(r.dags) do ids[#ids + 1] = id end
        table.sort(ids)
        assert.same({ "alpha", "gamma", "nested", "user_op" }, ids)
        assert.equal(FOLDER .. "/sub/nested.lua", r.dags.nested.file)
        assert.same({ every = 600 }, r.dags.nested.schedule)
    end)

    it("keeps a broken file's error to itself", function()
        assert.equal(FOLDER .. "/b_broken.lua:6: task 'x': unknown option 'retires' (did you mean 'retries'?)",
            r.errors[FOLDER .. "/b_broken.lua"])
        assert.same({}, r.files[FOLDER .. "/b_broken.lua"].dag_ids)
    end)

    it("lets the first file win a duplicate dag id and names both", function()
        assert.equal(FOLDER .. "/a_alpha.lua", r.dags.alpha.file)
        assert.equal(FOLDER .. "/d_duplicate.lua:4: dag id 'alpha' is already defined in "
            .. FOLDER .. "/a_alpha.lua", r.errors[FOLDER .. "/d_duplicate.lua"])
    end)

    it("skips hidden and _ files and the operators folder", function()
        local files = {}
        for f in pairs(r.files) do files[#files + 1] = f:sub(#FOLDER + 2) end
        table.sort(files)
        assert.same({ "a_alpha.lua", "b_broken.lua", "c_globals.lua", "d_duplicate.lua",
                      "e_user_op.lua", "sub/nested.lua" }, files)
    end)

    it("records hash, mtime and dag ids per file", function()
        local f = r.files[FOLDER .. "/a_alpha.lua"]
        assert.same({ "alpha" }, f.dag_ids)
        assert.equal(r.dags.alpha.source_hash, f.hash)
        assert.is_number(f.mtime)
    end)

    it("isolates globals between files and from the engine", function()
        assert.equal("nil", r.dags.gamma.params.saw)
        assert.is_nil(rawget(_G, "leaked_from_alpha"))
        assert.is_nil(rawget(string, "from_c_globals"))
    end)

    it("finds user operators in the folder's operators/", function()
        local g = r.dags.user_op.tasks.greet
        assert.equal("greet", g.operator)
        assert.equal("world", g.who)
        assert.is_false(g.loud)
        assert.same({ "who" }, g.op.templated)
        assert.same({ "done" }, g.downstream)
    end)

    it("returns empty results for a missing folder", function()
        local e = loader.scan(FIX .. "does-not-exist")
        assert.same({}, e.dags)
        assert.same({}, e.errors)
    end)
end)

-- Issue 10 item 7: a load that hangs inside C, where no count hook fires,
-- comes back as an import error naming the time limit.
describe("every load comes back #probe", function()
    local probe = require "zkflow.dsl.probe"
    local dir

    local function write(path, text)
        local f = assert(io.open(path, "w"))
        f:write(text)
        f:close()
    end

    local function dag_file(id, extra)
        return 'local flow = require "zkflow"\n' .. (extra or "")
            .. '\nreturn flow.dag { id = "' .. id .. '", start_date = "2026-01-01T00:00:00Z",'
            .. ' tasks = function(t) t.empty { id = "a" } end }\n'
    end

    local HANG = 'local s = string.rep("a", 3000)\ns:find(".-.-.-.-b")\n'

    before_each(function()
        dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir -p " .. dir))
        loader.configure({ timeout = 1 })
    end)

    after_each(function()
        loader.configure({})
        os.execute("rm -rf " .. dir)
    end)

    if not (has_core and probe.available()) then
        pending("needs zkflow.core (make)")
        return
    end

    local mono = require("zkflow.core").mono

    it("makes a file that hangs in string.find an import error naming the limit", function()
        write(dir .. "/hang.lua", dag_file("hang", HANG))
        local t0 = mono()
        local dags, err = loader.load_file(dir .. "/hang.lua")
        assert.is_nil(dags)
        assert.equal(dir .. "/hang.lua: loading took longer than 1 s (the dag_load_timeout "
                     .. "setting); the file is not loaded", err)
        assert.is_true(mono() - t0 < 5)
    end)

    it("loads string.rep of an empty string a huge number of times at once", function()
        write(dir .. "/rep.lua", dag_file("rep", 'assert(string.rep("", 1 << 62) == "")\n'
            .. 'assert(("").rep("", 1 << 62, "") == "")\n'
            .. 'assert((""):rep(2.0 ^ 62) == "" and (""):rep("4611686018427387904") == "")\n'))
        local t0 = mono()
        local dags, err = loader.load_file(dir .. "/rep.lua")
        assert.is_nil(err)
        assert.equal("rep", dags[1].id)
        assert.is_true(mono() - t0 < 5)
    end)

    it("loads the other files of a folder and asks about unchanged files only once", function()
        write(dir .. "/a_good.lua", dag_file("good"))
        write(dir .. "/b_hang.lua", dag_file("hang", HANG))
        write(dir .. "/c_good.lua", dag_file("good2"))
        local res = loader.scan(dir)
        assert.truthy(res.dags.good)
        assert.truthy(res.dags.good2)
        assert.matches("took longer than 1 s", res.errors[dir .. "/b_hang.lua"], 1, true)
        local t0 = mono()
        res = loader.scan(dir)
        assert.is_true(mono() - t0 < 0.5)
        assert.matches("took longer than 1 s", res.errors[dir .. "/b_hang.lua"], 1, true)
        assert.truthy(res.dags.good2)
    end)

    it("asks again when a helper module the file requires changed", function()
        write(dir .. "/helper.lua", "return {}\n")
        write(dir .. "/_skip.lua", "")
        write(dir .. "/uses.lua", dag_file("uses", 'require "helper"\n'))
        local res = loader.scan(dir)
        assert.truthy(res.dags.uses)
        write(dir .. "/helper.lua", HANG .. "return {}\n")
        res = loader.scan(dir)
        assert.is_nil(res.dags.uses)
        assert.matches("took longer than 1 s", res.errors[dir .. "/uses.lua"], 1, true)
    end)

    it("gives the child's error for a file that fails in time", function()
        write(dir .. "/bad.lua", dag_file("bad", 'error("no good")\n'))
        local dags, err = loader.load_file(dir .. "/bad.lua")
        assert.is_nil(dags)
        assert.matches("bad.lua:2: no good", err, 1, true)
    end)

    it("leaves a slow file to the background when the caller can wait, and says when it is done", function()
        write(dir .. "/a_good.lua", dag_file("good"))
        write(dir .. "/b_hang.lua", dag_file("hang", HANG))
        local heard = {}
        local off = probe.on_verdict(function(path) heard[#heard + 1] = path end)
        local flow = require "zkflow"
        local res, took, later
        flow.run(function()
            local t0 = mono()
            res = loader.scan(dir, { background = true })
            took = mono() - t0
            while #heard == 0 and mono() - t0 < 5 do flow.sleep(0.05) end
            later = loader.scan(dir, { background = true })
        end)
        off()
        assert.is_true(took < 0.9, "the scan waited " .. took .. " s")
        assert.truthy(res.dags.good)
        assert.is_true(res.pending[dir .. "/b_hang.lua"])
        assert.is_nil(res.errors[dir .. "/b_hang.lua"])
        assert.same({ dir .. "/b_hang.lua" }, heard)
        assert.matches("took longer than 1 s", later.errors[dir .. "/b_hang.lua"], 1, true)
    end)

    it("loads without a child when the timeout is 0", function()
        loader.configure({ timeout = 0 })
        write(dir .. "/ok.lua", dag_file("ok"))
        assert.equal("ok", loader.load_file(dir .. "/ok.lua")[1].id)
    end)
end)

-- Issue 11 item 5: the limits are settings, and the defaults fit big DAGs.
describe("load limits", function()
    after_each(function() loader.configure({}) end)

    it("are settings, in layers: config over base over the defaults", function()
        assert.same({ instruction_limit = loader.DEFAULT_INSTRUCTIONS,
                      memory_limit = loader.DEFAULT_MEMORY, timeout = 30 }, loader.limits())
        assert.is_true(loader.configure({ instruction_limit = 5000, timeout = 2 }, "base"))
        assert.is_true(loader.configure({ instruction_limit = 7000 }, "config"))
        assert.same({ instruction_limit = 7000, memory_limit = loader.DEFAULT_MEMORY,
                      timeout = 2 }, loader.limits())
        local _, err = loader.load_source("while true do end", "x.lua", { probe = false })
        assert.equal("x.lua: loading exceeded the instruction limit (7000)", err)
        loader.configure({}, "base")
        loader.configure({})
        assert.equal(loader.DEFAULT_INSTRUCTIONS, loader.limits().instruction_limit)
    end)

    it("refuse a bad value and keep the old ones", function()
        local ok, err = loader.configure({ instruction_limit = "many" })
        assert.is_nil(ok)
        assert.equal("instruction_limit must be an integer >= 1000", err)
        assert.is_nil(loader.configure({ memory_limit = 10 }))
        assert.is_nil(loader.configure({ timeout = -1 }))
        assert.is_nil(loader.configure({ nope = 1 }))
        assert.equal(30, loader.limits().timeout)
    end)

    local function big(n)
        return ('local flow = require "zkflow"\nreturn flow.dag { id = "big", '
            .. 'start_date = "2026-01-01T00:00:00Z", tasks = function(t)\n  local prev\n'
            .. '  for i = 1, %d do\n    prev = t.shell { id = "t" .. i, cmd = "echo {{ ds }}", '
            .. 'retries = 2, after = prev and { prev } or nil }\n  end\nend }\n'):format(n)
    end

    it("let the defaults load a DAG of 50,000 tasks, in time linear in its size", function()
        local clock = os.clock
        local t0 = clock()
        local small = assert(loader.load_source(big(5000), "small.lua"))
        local t_small = clock() - t0
        t0 = clock()
        local dags, err = loader.load_source(big(50000), "big.lua")
        local t_big = clock() - t0
        assert.is_nil(err)
        assert.equal(50000, #dags[1].order)
        assert.equal(5000, #small[1].order)
        -- per task, the big one may cost more (a bigger heap to collect),
        -- not ten times more as a quadratic step would
        assert.is_true(t_big / 50000 < 3 * t_small / 5000,
            ("%.1f us/task at 50,000, %.1f at 5,000"):format(t_big / 0.05, t_small / 0.005))
    end)
end)
