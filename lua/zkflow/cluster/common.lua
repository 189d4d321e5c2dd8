-- zkflow.cluster.common: the helpers the cluster's leader, worker and
-- process-group reaper share: the log, JSON records read leniently, spawning
-- a coroutine whose failure is logged, reading many nodes in one round trip,
-- and writing the ephemeral member records.
local core = require "zkflow.core"
local async = require "zkflow.async"
local state = require "zkflow.state"

local json_decode = core.json_decode
local ipairs, type, tostring, pcall = ipairs, type, tostring, pcall

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
-- returns {[path] = data} for those that exist.  Inside a coroutine.
local function get_all(store, paths)
  local out, left = {}, #paths
  if left == 0 then return out end
  if left == 1 then
    out[paths[1]] = store:get(paths[1])
    return out
  end
  async.wait(function(resume)
    for _, p in ipairs(paths) do
      async.spawn(function() return store:get(p) end, function(ok, data)
        if ok and data then out[p] = data end
        left = left - 1
        if left == 0 then resume() end
      end)
    end
  end)
  return out
end
_M.get_all = get_all

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
