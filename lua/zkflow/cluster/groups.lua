-- zkflow.cluster.groups: the process groups a dead worker leaves behind.
--
-- A shell try runs in a process group of its own, which outlives a worker
-- killed with SIGKILL (the try runs again elsewhere; the orphan would go
-- on beside it).  Each worker lists its tries' groups in
-- <log_dir>/.workers/<id>; the workers of the host watch the membership,
-- and when a worker's record goes (its session ended) one of them kills
-- the groups its file lists (each checked in /proc to still be that try's
-- process) and removes the file.
--
-- The functions here are the worker's methods (zkflow.cluster.worker puts
-- them on its objects): self is a worker.
local core = require "zkflow.core"
local common = require "zkflow.cluster.common"

local pairs, ipairs = pairs, ipairs
local concat = table.concat
local log, spawn = common.log, common.spawn

local _M = {}

function _M:record_groups()
  local dir = self.groups_dir
  if not dir then return end
  local lines = {}
  for key, slot in pairs(self.running) do
    local ti = slot.ti
    if ti and ti.pid then lines[#lines + 1] = ("%d %s %s"):format(ti.pid, ti.task_id, key) end
  end
  local file = dir .. "/" .. self.id
  if #lines == 0 then
    os.remove(file)
    return
  end
  core.mkdirs(dir)
  local tmp = file .. ".tmp"
  local f = io.open(tmp, "w")
  if not f then return end
  f:write(concat(lines, "\n"), "\n")
  f:close()
  os.rename(tmp, file)
end

-- Kills what the workers that are gone left running on this host.
function _M:reap()
  local dir = self.groups_dir
  local names = dir and core.listdir(dir)
  if not names then return end
  for _, id in ipairs(names) do
    if id ~= self.id and not id:find("%.tmp$") and id:sub(1, 1) ~= "." then
      if not self.store:exists(self.st:path("members", "workers", id)) then
        local path = dir .. "/" .. id
        local f = io.open(path)
        if f then
          for line in f:lines() do
            local pid, task_id, key = line:match("^(%d+) (%S+) (%S+)$")
            pid = tonumber(pid)
            -- Only while the group is still that try's (core.killpg
            -- checks the leader's ZKFLOW_TASK_ID): the pid may be recycled.
            if pid and pid > 1 and core.killpg(pid, 9, { ZKFLOW_TASK_ID = task_id }) then
              log("warn", ("worker %s: killed process group %d of %s, left by dead worker %s"):format(
                self.id, pid, key, id))
            end
          end
          f:close()
        end
        os.remove(path)
      end
    end
  end
end

function _M:watch_members()
  if self.stopped then return end
  local list = self.store:children(self.st:path("members", "workers"), function()
    if not self.stopped then spawn("worker members", function() self:watch_members() end) end
  end)
  if list then self:reap() end
end

return _M
