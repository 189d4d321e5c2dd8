-- zkflow.cluster: several zkflow processes as one cluster, through ZooKeeper.
--
-- Schedulers contend for leadership with the election recipe at
-- <root>/election/scheduler (kazoo's lock naming); the leader runs a
-- zkflow.scheduler whose executor is the queue
-- (zkflow.cluster.queue_executor): each try goes to a queue instead of
-- running here; the standbys wait, and the one that wins next resumes every
-- run from the store.  Workers take tries from the queues and run them with
-- a zkflow.scheduler composed for it (the in-process executor, no records,
-- each try's end reported to the leader).  Both are compositions of
-- scheduler.new's options; this file writes no field of a scheduler.
--
-- A try moves through three places, each move one transaction, so at any
-- moment it is in exactly one of them (or nowhere: lost):
--
--   /queue/<queue>/ti-<seq>   the leader: the instance's record "queued" and
--                             this node, in one transaction
--   /claims/<key>             a worker: creates this ephemeral node and
--                             deletes the queue node (two workers racing:
--                             one transaction fails)
--   /results/<key>            the worker: creates this (the try's end, its
--                             XCom, its log's path) and deletes its claim;
--                             the leader deletes it in the transaction that
--                             writes the instance's new state
--
-- <key> is <dag_id>~<run_id>~<task_id>~<try> (queue_executor.ti_key).
-- A claim that vanishes without a result (the worker's session ended) makes
-- the leader run the try again, on any worker, without costing a retry.  A
-- worker whose session expires stops its tries: their claims are gone, so
-- their results could not be written anyway (the transaction deletes the
-- claim, which fails).  A scheduler whose session expires stops leading at
-- once and contends again.
--
-- This file is the module's face; the leader (scheduler) side is
-- zkflow.cluster.leader, the worker side zkflow.cluster.worker, the reaping
-- of a dead worker's process groups zkflow.cluster.groups, and the helpers
-- they share zkflow.cluster.common.
local common = require "zkflow.cluster.common"
local leader = require "zkflow.cluster.leader"
local worker = require "zkflow.cluster.worker"

local _M = {}

_M.scheduler = leader.scheduler
_M.worker = worker.worker
_M.get_all = common.get_all
_M.SWEEP_INTERVAL = leader.SWEEP_INTERVAL
return _M
