-- spec/sql_spec.lua: the SQL connection contract (docs/history.md) on
-- every driver there is: core.sqlite_open on a temporary file, and
-- core.pg_open on the real PostgreSQL server spec/pg_test.sh starts (it
-- sets ZKFLOW_TEST_PG; without it the PostgreSQL specs are pending).
local core = require "zkflow.core"
local async = require "zkflow.async"

local H = dofile("spec/fixtures/zk/helpers.lua")
local run, sleep = H.run, H.sleep

local PG = os.getenv("ZKFLOW_TEST_PG")

local function harness(...)
    return async.exec({ argv = { "bash", "spec/pg/harness.sh", ... } })
end

local drivers = {
    { name = "sqlite", driver = "sqlite", available = core.sqlite_open ~= nil,
      why = "core.sqlite_open is not built",
      open = function()
          local path = os.tmpname()
          return assert(core.sqlite_open(path)), function()
              for _, s in ipairs { "", "-wal", "-shm", "-journal" } do os.remove(path .. s) end
          end
      end },
    { name = "postgresql", driver = "postgresql", available = PG ~= nil,
      why = "ZKFLOW_TEST_PG is not set (spec/pg_test.sh sets it)",
      open = function()
          local conn = assert(core.pg_open(PG))
          conn:exec("DROP TABLE IF EXISTS t")
          return conn, function() end
      end },
}

for _, D in ipairs(drivers) do
describe("the SQL contract on " .. D.name .. " #" .. D.name, function()
    if not D.available then
        pending(D.why)
        return
    end
    local conn, cleanup
    -- Each test opens its own connection inside run().
    local function with_conn(fn)
        return function()
            run(function()
                conn, cleanup = D.open()
                local ok, err = pcall(fn)
                conn:close()
                cleanup()
                if not ok then error(err, 0) end
            end)
        end
    end

    it("names its driver", with_conn(function()
        assert.equal(D.driver, conn.driver)
    end))

    it("binds integers, floats, strings and NULL and returns them typed", with_conn(function()
        conn:exec([[CREATE TABLE t (id BIGINT PRIMARY KEY, i BIGINT,
                                    f DOUBLE PRECISION, s TEXT, n TEXT)]])
        local rows, affected = conn:query("INSERT INTO t (id, i, f, s, n) VALUES ($1, $2, $3, $4, $5)",
                                          { 1, math.maxinteger, 0.1, "héllo 'x'", core.sql_null })
        assert.same({}, rows)
        assert.equal(1, affected)
        conn:query("INSERT INTO t (id, i, f, s, n) VALUES ($1, $2, $3, $4, $5)",
                   { 2, math.mininteger, -1.5e300, "", "not null" })
        rows = conn:query("SELECT id, i, f, s, n FROM t ORDER BY id")
        assert.equal(2, #rows)
        assert.equal("integer", math.type(rows[1].id))
        assert.equal(math.maxinteger, rows[1].i)
        assert.equal("integer", math.type(rows[1].i))
        assert.equal(0.1, rows[1].f)
        assert.equal("float", math.type(rows[1].f))
        assert.equal("héllo 'x'", rows[1].s)
        assert.is_nil(rows[1].n)
        assert.same({ id = 2, i = math.mininteger, f = -1.5e300, s = "", n = "not null" }, rows[2])
    end))

    it("leaves a NULL column out of its row and matches NULL parameters", with_conn(function()
        local rows = conn:query("SELECT NULL AS a, 1 AS b")
        assert.same({ { b = 1 } }, rows)
        conn:exec("CREATE TABLE t (k TEXT, v TEXT)")
        conn:query("INSERT INTO t (k, v) VALUES ($1, $2)", { "a", core.sql_null })
        conn:query("INSERT INTO t (k, v) VALUES ($1, $2)", { "b", "x" })
        rows = conn:query("SELECT k FROM t WHERE v IS NULL")
        assert.same({ { k = "a" } }, rows)
        -- PostgreSQL must know a parameter's type where IS NULL is its
        -- only use: CAST says it in SQL both accept
        rows = conn:query("SELECT k FROM t WHERE (CAST($1 AS TEXT) IS NULL OR v = $1) ORDER BY k",
                          { core.sql_null })
        assert.same({ { k = "a" }, { k = "b" } }, rows)
    end))

    it("counts the rows a statement changed, and only those", with_conn(function()
        conn:exec("CREATE TABLE t (k BIGINT PRIMARY KEY, v TEXT)")
        for i = 1, 3 do conn:query("INSERT INTO t (k, v) VALUES ($1, 'a')", { i }) end
        assert.equal(2, select(2, conn:query("UPDATE t SET v = 'b' WHERE k >= $1", { 2 })))
        assert.equal(0, select(2, conn:query("SELECT * FROM t")))
        assert.equal(1, select(2, conn:query("DELETE FROM t WHERE k = $1", { 1 })))
        assert.equal(0, select(2, conn:query("DELETE FROM t WHERE k = $1", { 99 })))
    end))

    it("accepts the SQL both databases share: upserts, LIMIT and OFFSET", with_conn(function()
        conn:exec([[CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT);
                    CREATE INDEX t_n ON t (n)]])
        local upsert = "INSERT INTO t (k, n) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET n = excluded.n"
        for i = 1, 5 do conn:query(upsert, { "k" .. i, i }) end
        conn:query(upsert, { "k1", 10 })
        local rows = conn:query("SELECT k, n FROM t ORDER BY n LIMIT $1 OFFSET $2", { 2, 1 })
        assert.same({ { k = "k3", n = 3 }, { k = "k4", n = 4 } }, rows)
        assert.same({ { c = 5 } }, conn:query("SELECT COUNT(*) AS c FROM t"))
    end))

    it("undoes a rolled-back transaction", with_conn(function()
        conn:exec("CREATE TABLE t (k BIGINT)")
        conn:query("BEGIN")
        conn:query("INSERT INTO t (k) VALUES ($1)", { 1 })
        conn:query("ROLLBACK")
        conn:query("BEGIN")
        conn:query("INSERT INTO t (k) VALUES ($1)", { 2 })
        conn:query("COMMIT")
        assert.same({ { k = 2 } }, conn:query("SELECT k FROM t"))
    end))

    it("raises 'SQL: ' and the database's message on an error", with_conn(function()
        local ok, err = pcall(conn.query, conn, "SELECT * FROM no_such_table")
        assert.is_false(ok)
        assert.matches("^SQL: ", err)
        assert.matches("no_such_table", err)
        ok, err = pcall(conn.exec, conn, "CREATE TABLE t (k BIGINT); SELEC 1")
        assert.is_false(ok)
        assert.matches("^SQL: .*SELEC", err)
        -- the connection still works
        assert.same({ { x = 1 } }, conn:query("SELECT 1 AS x"))
    end))

    it("refuses a parameter of another type", with_conn(function()
        local ok, err = pcall(conn.query, conn, "SELECT $1 AS x", { {} })
        assert.is_false(ok)
        assert.matches("^SQL: .*%$1", err)
    end))

    it("closes more than once", with_conn(function()
        conn:close()
        conn:close()
        assert.has_error(function() conn:query("SELECT 1") end)
    end))
end)
end

describe("core.pg_open #postgresql", function()
    if not PG then
        pending("ZKFLOW_TEST_PG is not set (spec/pg_test.sh sets it)")
        return
    end
    local port = PG:match(":(%d+)/")

    it("returns booleans, numerics and typed parameters", function()
        run(function()
            local conn = assert(core.pg_open(PG))
            local row = conn:query([[SELECT TRUE AS t, FALSE AS f, 2.50::numeric AS n,
                                            1.5::real AS r, 7::smallint AS s, 8::int AS i,
                                            'x'::varchar AS v, $1 AS b, $2 AS i8, $3 AS d,
                                            $4::float8 AS inf, $5 AS txt]],
                                   { true, 42, 0.25, math.huge, "s" })[1]
            assert.same({ t = true, f = false, n = 2.5, r = 1.5, s = 7, i = 8, v = "x",
                          b = true, i8 = 42, d = 0.25, inf = math.huge, txt = "s" }, row)
            assert.equal("float", math.type(row.n))
            assert.equal("integer", math.type(row.s))
            conn:close()
        end)
    end)

    it("keeps the loop going while a statement runs", function()
        run(function()
            local conn = assert(core.pg_open(PG))
            local t0 = core.mono()
            local fired, ticks = nil, 0
            core.timer(0.1, function() fired = core.mono() - t0 end)
            local ticker = async.spawn(function()
                while true do
                    sleep(0.05)
                    ticks = ticks + 1
                end
            end)
            conn:query("SELECT pg_sleep(0.5)")
            async.cancel(ticker)
            local took = core.mono() - t0
            assert.is_true(took >= 0.5, "the query took " .. took)
            assert.is_true(fired ~= nil and fired < 0.4, "the timer fired after " .. tostring(fired))
            assert.is_true(ticks >= 5, ticks .. " ticks while it ran")
            conn:close()
        end)
    end)

    it("raises outside a coroutine", function()
        local conn = assert(core.pg_open(PG))
        local ok, err = pcall(conn.query, conn, "SELECT 1")
        assert.is_false(ok)
        assert.equal("SQL: pg query outside a coroutine", err)
        -- the connection made in the background serves a coroutine
        run(function()
            assert.same({ { x = 1 } }, conn:query("SELECT 1 AS x"))
        end)
        conn:close()
    end)

    it("names the target of a conninfo it cannot reach or read", function()
        run(function()
            local conn, err = core.pg_open("postgresql://zkflow@127.0.0.1:1/zkflow")
            assert.is_nil(conn)
            assert.matches("^SQL: postgresql 127%.0%.0%.1:1/zkflow: .*refused", err)
            conn, err = core.pg_open("host=127.0.0.1 port=" .. port .. " user=zkflow dbname=no_such_db")
            assert.is_nil(conn)
            assert.matches("^SQL: postgresql 127%.0%.0%.1:" .. port .. "/no_such_db: .*no_such_db", err)
            conn, err = core.pg_open("postgresql://zkflow:secret@[::1")
            assert.is_nil(conn)
            assert.matches("^SQL: postgresql: bad conninfo: ", err)
            assert.not_matches("secret", err)
        end)
        -- outside a coroutine the first statement reports it
        local conn = assert(core.pg_open("postgresql://zkflow@127.0.0.1:1/zkflow"))
        run(function()
            local ok, err = pcall(conn.query, conn, "SELECT 1")
            assert.is_false(ok)
            assert.matches("^SQL: postgresql 127%.0%.0%.1:1/zkflow: .*refused", err)
        end)
    end)

    it("connects again after the server restarted", function()
        run(function()
            local conn = assert(core.pg_open(PG))
            assert.same({ { x = 1 } }, conn:query("SELECT 1 AS x"))
            local before = conn:query("SELECT pg_backend_pid() AS p")[1].p
            assert.equal(0, (harness("restart")))
            assert.same({ { x = 2 } }, conn:query("SELECT 2 AS x"))
            assert.are_not.equal(before, conn:query("SELECT pg_backend_pid() AS p")[1].p)
            conn:close()
        end)
    end)

    it("fails a statement whose connection is lost, and reconnects for the next", function()
        run(function()
            local conn = assert(core.pg_open(PG))
            local other = assert(core.pg_open(PG))
            local pid = conn:query("SELECT pg_backend_pid() AS p")[1].p
            async.spawn(function()
                sleep(0.2)
                other:query("SELECT pg_terminate_backend($1::int)", { pid })
            end)
            local ok, err = pcall(conn.query, conn, "SELECT pg_sleep(5)")
            assert.is_false(ok)
            assert.matches("^SQL: postgresql 127%.0%.0%.1:" .. port .. "/zkflow: connection lost: ", err)
            assert.same({ { x = 3 } }, conn:query("SELECT 3 AS x"))
            conn:close()
            other:close()
        end)
    end)

    it("lets zkflow.history be migrated by processes that start together", function()
        -- Each history.new is a process of a cluster starting at once.
        run(function()
            local history = require "zkflow.history"
            local admin = assert(core.pg_open(PG))
            admin:exec("DROP DATABASE IF EXISTS migrate_race")
            admin:exec("CREATE DATABASE migrate_race")
            local url = PG:gsub("/[^/]*$", "/migrate_race")
            local errs, done = {}, 0
            for _ = 1, 6 do
                async.spawn(function()
                    local h, err = history.new(url)
                    if h then h:close() else errs[#errs + 1] = err end
                    done = done + 1
                end)
            end
            H.eventually(function() return done == 6 end, 20)
            assert.same({}, errs)
            admin:exec("DROP DATABASE migrate_race")
            admin:close()
        end)
    end)

    it("runs one statement at a time and survives a cancelled wait", function()
        run(function()
            local conn = assert(core.pg_open(PG))
            local co = async.spawn(function() conn:query("SELECT pg_sleep(5)") end)
            sleep(0.1)
            local ok, err = pcall(conn.query, conn, "SELECT 1")
            assert.is_false(ok)
            assert.matches("busy", err)
            assert.is_true(async.cancel(co))
            assert.same({ { x = 4 } }, conn:query("SELECT 4 AS x"))
            -- close() while a coroutine waits: it gets an error, not silence
            local got
            async.spawn(function() got = { pcall(conn.query, conn, "SELECT pg_sleep(5)") } end)
            sleep(0.1)
            conn:close()
            H.eventually(function() return got end, 2)
            assert.is_false(got[1])
            assert.matches("connection closed", got[2])
        end)
    end)
end)
