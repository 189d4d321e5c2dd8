-- zkflow.cluster.common: the helpers the cluster's leader, worker and
-- process-group reaper share: the log, JSON records read leniently, spawning
-- a coroutine whose failure is logged, reading many nodes in one round trip,
-- and writing the ephemeral member records.
local core = require "zkflow.core"
local async = require "zkflow.async"
local state = require "zkflow.state"

local json_decode = core.json_decode
local ipairs, type, tostring, pcall, setmetatable = ipairs, type, tostring, pcall, setmetatable
local min = math.min

local _M = {}

local function log(level, msg)
  core.log(level, msg)
end

local hostname = state.hostname

local function decode(data)
  if type(data) ~= "string" or data == "" then return nil end
  local ok, v = pcall(json_decode, data)
  if ok and type(v) == "table" then return v end
  return nil
end

local function spawn(what, fn, ...)
  return async.spawn(fn, function(ok, err)
    if not ok then log("error", what .. ": " .. tostring(err)) end
  end, ...)
end

local function set_of(list)
  local t = {}
  for _, v in ipairs(list or {}) do t[v] = true end
  return t
end

-- Reads `paths` at once (pipelined: one round trip, not one per node);
-- returns {[path] = data} for those that exist, and the first error other
-- than ZNONODE (a node whose read failed is not known to be missing: a
-- caller that acts on a missing node must not act then).  Inside a
-- coroutine.
local function get_all(store, paths)
  local out, left, failed = {}, #paths, nil
  if left == 0 then return out end
  if left == 1 then
    local data, err = store:get(paths[1])
    out[paths[1]] = data
    if data == nil and err ~= "ZNONODE" then failed = tostring(err) end
    return out, failed
  end
  async.wait(function(resume)
    for _, p in ipairs(paths) do
      async.spawn(function() return store:get(p) end, function(ok, data, err)
        if ok and data then
          out[p] = data
        elseif not ok or err ~= "ZNONODE" then
          failed = failed or tostring(ok and err or data)
        end
        left = left - 1
        if left == 0 then resume() end
      end)
    end
  end)
  return out, failed
end
_M.get_all = get_all

-- ---- a store that rides out a lost connection --------------------------------

-- After these the request's fate is unknown and the connection is coming
-- back (the client holds new requests until it is, up to its connect
-- timeout): the request is asked again.
local TRANSIENT = { ZCONNECTIONLOSS = true, ZOPERATIONTIMEOUT = true }
_M.TRANSIENT = TRANSIENT

local Steady = {}
Steady.__index = Steady

-- common.steady(store): the store as a cluster member uses it.  A request
-- whose answer a lost connection swallowed is asked again, after a pause
-- that doubles up to 2 s, until it has an answer, the session it started
-- in expires, or the member stops (steady:stop()); so a ZooKeeper server
-- that restarts within the session timeout is a pause, never a lost write
-- or a watch that was not set.  Whether asking again is safe is the
-- caller's affair: the cluster's writes are (a transaction that did
-- happen fails the second time on a create, and is then applied op by op;
-- a second queue node of a try is never run, see zkflow.cluster).
-- Session events reach it through steady:session(state) (node.lua feeds
-- them); steady.state is the connection's state as Curator names them:
-- "connected", "suspended" (the connection dropped, the session may
-- live), "lost" (the session expired; a new one is coming), "connecting".
function _M.steady(store)
  return setmetatable({ raw = store, epoch = 0, state = "connected",
                        stopped = false }, Steady)
end

function Steady:session(st)
  if st == "expired" then
    self.epoch = self.epoch + 1
    self.state = "lost"
  elseif st == "lost" then
    self.state = "suspended"
  elseif st == "connected" then
    self.state = "connected"
  elseif st == "connecting" and self.state ~= "lost" then
    self.state = "connecting"
  end
end

function Steady:stop()
  self.stopped = true
end

local function ask(self, method, ...)
  local raw, epoch, pause = self.raw, self.epoch, 0.2
  while true do
    local a, b, c = raw[method](raw, ...)
    if a ~= nil or not TRANSIENT[b] or self.stopped or epoch ~= self.epoch
        or not coroutine.isyieldable() then
      return a, b, c
    end
    async.sleep(pause)
    pause = min(pause * 2, 2)
    if self.stopped or epoch ~= self.epoch then return a, b, c end
  end
end

for _, m in ipairs({ "get", "children", "exists", "create", "set", "delete", "multi" }) do
  Steady[m] = function(self, ...) return ask(self, m, ...) end
end

function Steady:flush() return self.raw:flush() end
function Steady:close() return self.raw:close() end
function Steady:__tostring() return tostring(self.raw) end

-- An ephemeral member record: (re)created, or updated in place.
local function put_member(store, path, data, create)
  if not create then
    local ok, err = store:set(path, data)
    if ok then return true end
    if err ~= "ZNONODE" then return nil, err end
  end
  store:delete(path)
  return store:create(path, data, { ephemeral = true, parents = true })
end

local function ensure(store, path)
  local ok, err = store:create(path, "", { parents = true })
  if not ok and err ~= "ZNODEEXISTS" then return nil, err end
  return true
end

_M.log = log
_M.hostname = hostname
_M.decode = decode
_M.spawn = spawn
_M.set_of = set_of
_M.put_member = put_member
_M.ensure = ensure

return _M
