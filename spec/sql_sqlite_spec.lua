-- core.sqlite_open: the SQLite side of the SQL connection contract that
-- zkflow.history is written against ($n parameters, rows by column name,
-- NULL as core.sql_null, errors "SQL: ...").
local core = require "zkflow.core"
local H = dofile("spec/fixtures/sched/helpers.lua")

describe("core.sqlite_open", function()
  local conn
  before_each(function()
    conn = assert(core.sqlite_open(H.tmpdir() .. "/t.db"))
    conn:exec("CREATE TABLE t (k TEXT PRIMARY KEY, i BIGINT, d DOUBLE PRECISION, s TEXT)")
  end)
  after_each(function() conn:close() end)

  it("names its driver", function()
    assert.equal("sqlite", conn.driver)
  end)

  it("binds $n parameters and gives rows back by column name, with their types", function()
    local rows, n = conn:query("INSERT INTO t (k, i, d, s) VALUES ($1, $2, $3, $4)",
                               { "a", 42, 1.5, core.sql_null })
    assert.same({}, rows)
    assert.equal(1, n)
    rows = conn:query("SELECT k, i, d, s FROM t WHERE k = $1 AND i = $2", { "a", 42 })
    assert.equal(1, #rows)
    assert.equal("a", rows[1].k)
    assert.equal(42, rows[1].i)
    assert.equal("integer", math.type(rows[1].i))
    assert.equal("float", math.type(rows[1].d))
    assert.is_nil(rows[1].s)
  end)

  it("binds a parameter used twice and one the statement leaves out", function()
    conn:query("INSERT INTO t (k, i) VALUES ($1, $2)", { "x", 1 })
    local rows = conn:query("SELECT k FROM t WHERE k = $1 OR s = $1", { "x", "unused" })
    assert.equal("x", rows[1].k)
  end)

  it("counts the rows a statement changed, none for a read", function()
    for i = 1, 3 do conn:query("INSERT INTO t (k, i) VALUES ($1, $2)", { "k" .. i, i }) end
    local _, n = conn:query("UPDATE t SET i = i + 1 WHERE i >= $1", { 2 })
    assert.equal(2, n)
    _, n = conn:query("SELECT * FROM t")
    assert.equal(0, n)
    _, n = conn:query("INSERT INTO t (k, i) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET i = excluded.i",
                      { "k1", 9 })
    assert.equal(1, n)
    assert.equal(9, conn:query("SELECT i FROM t WHERE k = 'k1'")[1].i)
  end)

  it("raises errors that start with SQL:", function()
    local ok, err = pcall(conn.query, conn, "SELEC 1")
    assert.is_false(ok)
    assert.matches("^SQL: ", err)
    ok, err = pcall(conn.query, conn, "SELECT $1", { {} })
    assert.is_false(ok)
    assert.matches("^SQL: parameter %$1", err)
    ok, err = pcall(conn.exec, conn, "CREATE TABLE t (x)")
    assert.is_false(ok)
    assert.matches("^SQL: .*already exists", err)
    -- The connection still works after an error.
    assert.same({ { x = 1 } }, (conn:query("SELECT 1 AS x")))
  end)

  it("runs transactions as plain statements", function()
    conn:query("BEGIN")
    conn:query("INSERT INTO t (k) VALUES ($1)", { "gone" })
    conn:query("ROLLBACK")
    assert.same({}, (conn:query("SELECT k FROM t")))
  end)

  it("closes once, and says so after", function()
    conn:close()
    conn:close()
    local ok, err = pcall(conn.query, conn, "SELECT 1")
    assert.is_false(ok)
    assert.matches("^SQL: the connection is closed", err)
  end)

  it("returns nil and a message naming the file it cannot open", function()
    local c, err = core.sqlite_open("/nonexistent-dir/x.db")
    assert.is_nil(c)
    assert.matches("^SQL: /nonexistent%-dir/x.db: ", err)
  end)
end)
