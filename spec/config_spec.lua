-- zkflow.config: the cluster configuration at <root>/config, on the
-- embedded store (spec/zk_test.sh runs `zkflow config --zk` on ZooKeeper).
local core = require "zkflow.core"
local flow = require "zkflow"
local config = require "zkflow.config"

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  assert(core.mkdirs(p))
  return p, p .. "/zkflow.db"
end

describe("zkflow.config", function()
  local dir, db, st
  before_each(function()
    dir, db = tmpdb()
    st = assert(core.store(db))
  end)
  after_each(function()
    st:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("reads {} and no version when <root>/config is missing", function()
    local tbl, version = config.read(st, "/zkflow")
    assert.same({}, tbl)
    assert.is_nil(version)
  end)

  it("sets dotted keys into one JSON object and reads them back", function()
    assert(config.set(st, "/zkflow", "parallelism", 8))
    assert(config.set(st, "/zkflow", "pools.db", 4))
    assert(config.set(st, "/zkflow", "mine", { a = { 1, 2 } }))
    local data = assert(st:get("/zkflow/config"))
    assert.equal('{"mine":{"a":[1,2]},"parallelism":8,"pools":{"db":4}}', data)
    local tbl, version = config.read(st, "/zkflow")
    assert.equal(2, version)
    assert.equal(4, config.get(tbl, "pools.db"))
    assert.equal(2, config.get(tbl, "mine.a")[2])
    assert.is_nil(config.get(tbl, "pools.web"))
    assert.is_nil(config.get(tbl, "parallelism.x"))
  end)

  it("keeps the node under another root, and at /config for root /", function()
    assert(config.set(st, "/other", "k", "v"))
    assert(config.set(st, "/", "k", 1))
    assert.equal('{"k":"v"}', (st:get("/other/config")))
    assert.equal('{"k":1}', (st:get("/config")))
  end)

  it("unsets a key and the objects it leaves empty", function()
    assert(config.set(st, "/zkflow", "pools.db", 4))
    assert(config.set(st, "/zkflow", "log_level", "info"))
    assert(config.unset(st, "/zkflow", "pools.db"))
    assert.same({ log_level = "info" }, (config.read(st, "/zkflow")))
    local ok, err, why = config.unset(st, "/zkflow", "pools.db")
    assert.is_nil(ok)
    assert.equal("'pools.db' is not set in /zkflow/config", err)
    assert.equal("not_set", why)
  end)

  it("validates the known keys, naming each", function()
    assert.is_true(config.validate({ parallelism = 1, log_level = "debug",
                                     pools = { db = 0 }, worker_slots = 2,
                                     anything = { "else" } }))
    local ok, err = config.validate({ parallelism = 0, log_level = "loud",
                                      pools = { db = -1 }, worker_slots = 1.5 })
    assert.is_nil(ok)
    assert.matches("log_level: expected one of", err, 1, true)
    assert.matches("parallelism: expected an integer >= 1", err, 1, true)
    assert.matches("pools.db: expected an integer >= 0", err, 1, true)
    assert.matches("worker_slots: expected an integer >= 1", err, 1, true)
    assert.matches("pools: expected an object",
                   select(2, config.validate({ pools = 3 })), 1, true)
    assert.matches("must be a JSON object",
                   select(2, config.validate(setmetatable({}, { __jsontype = "array" }))), 1, true)
  end)

  it("refuses a bad value of a known key and writes nothing", function()
    assert(config.set(st, "/zkflow", "parallelism", 8))
    local ok, err = config.set(st, "/zkflow", "parallelism", 0)
    assert.is_nil(ok)
    assert.matches("^parallelism: expected an integer >= 1", err)
    ok, err = config.set(st, "/zkflow", "parallelism.x", 1)
    assert.is_nil(ok)
    assert.matches("cannot set 'parallelism.x': 'parallelism' is 8", err, 1, true)
    assert.equal(8, config.get((config.read(st, "/zkflow")), "parallelism"))
  end)

  it("does not blame a change for another key's problem", function()
    assert(st:create("/zkflow/config", '{"pools":{"bad":-1}}', { parents = true }))
    assert(config.set(st, "/zkflow", "pools.db", 2))
    assert(config.set(st, "/zkflow", "parallelism", 3))
    assert.is_nil(config.set(st, "/zkflow", "pools.web", -5))
  end)

  it("names the node when it does not hold a JSON object", function()
    assert(st:create("/zkflow/config", "[1]", { parents = true }))
    local ok, err = config.read(st, "/zkflow")
    assert.is_nil(ok)
    assert.matches("/zkflow/config: the configuration must be a JSON object", err, 1, true)
    assert(st:set("/zkflow/config", "{nope"))
    assert.matches("/zkflow/config: not JSON", select(2, config.set(st, "/zkflow", "a", 1)), 1, true)
  end)

  it("redoes its change when another writer got there first", function()
    local other = assert(core.store(db))
    assert(config.set(st, "/zkflow", "a", 1))
    st:flush()
    -- `other` writes between this handle's read and its write
    local get, raced = st.get, false
    local proxy = setmetatable({
      get = function(_, p)
        local data, stat = get(st, p)
        if not raced then
          raced = true
          assert(config.set(other, "/zkflow", "b", 2))
          other:flush()
        end
        return data, stat
      end,
    }, { __index = function(_, k)
      return function(_, ...) return st[k](st, ...) end
    end })
    assert(config.set(proxy, "/zkflow", "c", 3))
    assert.is_true(raced)
    st:flush()
    assert.same({ a = 1, b = 2, c = 3 }, (config.read(st, "/zkflow")))
    other:close()
  end)

  it("works from a coroutine on the loop (flow.run)", function()
    local tbl = flow.run(function()
      assert(config.set(st, "/zkflow", "worker_slots", 4))
      return (config.read(st, "/zkflow"))
    end)
    assert.equal(4, tbl.worker_slots)
  end)

  it("parses keys and CLI values", function()
    assert.same({ "pools", "db" }, config.parse_key("pools.db"))
    assert.is_nil(config.parse_key("a..b"))
    assert.is_nil(config.parse_key(".a"))
    assert.is_nil(config.parse_key(""))
    assert.equal(8, config.parse_value("8"))
    assert.equal(true, config.parse_value("true"))
    assert.equal("42", config.parse_value('"42"'))
    assert.equal("data eng", config.parse_value("data eng"))
    assert.equal(2, config.parse_value('{"a":2}').a)
  end)
end)
