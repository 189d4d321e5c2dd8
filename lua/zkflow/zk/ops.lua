-- zkflow.zk.ops: what the ZooKeeper operators (zk_create ... zk_health) and
-- `zkflow zk health` share: the connection a task uses, errors raised the
-- way zkflow.zk raises them ("ZNONODE: /a/b"), and the four-letter-word
-- health check of an ensemble.
--
-- Connection: a task's `hosts` ("h:p,h:p[/chroot]", "zk://...", or
-- "sqlite:/path/to.db", through zk.connect) opens a connection of its own
-- for the try and
-- closes it afterwards; without `hosts` the task uses the scheduler's
-- store (rt.store), ZooKeeper or SQLite, so the same DAG runs on a laptop
-- and on a cluster.
local core = require "zkflow.core"
local async = require "zkflow.async"
local operator = require "zkflow.operator"
local zkdump = require "zkflow.zk.dump"

local _M = {}

local type, tostring, tonumber, error, ipairs, pairs =
      type, tostring, tonumber, error, ipairs, pairs
local fmt, concat = string.format, table.concat

-- A task's fields with its templated ones rendered (zkflow.operator's).
_M.rendered = operator.rendered

-- Raises a ZooKeeper error named first: "ZNONODE: /a/b".
function _M.raise(err, what)
    err = tostring(err)
    if what then err = err .. ": " .. what end
    error(err, 0)
end

-- Checks a path argument; raises ZBADARGUMENTS naming the problem.
function _M.check_path(p, field)
    local problem = zkdump.path_problem(p)
    if problem then
        _M.raise("ZBADARGUMENTS", fmt("%s %s: %s", field or "path",
                                      type(p) == "string" and ("'" .. p .. "'")
                                      or tostring(p), problem))
    end
    return p
end

-- Checks data against ZooKeeper's 1 MiB limit; raises ZBADARGUMENTS.
function _M.check_data(data, p)
    if type(data) == "string" and #data > zkdump.MAX_DATA then
        _M.raise("ZBADARGUMENTS", fmt("%s: data is %d bytes, over "
                 .. "ZooKeeper's limit of 1 MiB (1048576)", p, #data))
    end
    return data
end

-- Ends the try as failed without retries (the input is wrong; retrying
-- does not make it right).
function _M.fail(msg)
    error({ zkflow_fail = true, msg = msg }, 0)
end

function _M.skip(msg)
    error({ zkflow_skip = true, msg = msg }, 0)
end

-- open(t, rt) → store, release(): the task's own connection (`hosts`) or
-- the scheduler's store.  release() closes what open() opened.
function _M.open(t, rt)
    local hosts = t.hosts
    if hosts ~= nil and hosts ~= "" then
        -- zkflow.zk's connect: the same connect strings as everywhere
        -- ("sqlite:" too), and it raises ZooKeeper's error names.
        local c = require("zkflow.zk").connect(hosts, {
            timeout = t.session_timeout or 10,
            connect_timeout = t.connect_timeout,
        })
        local st = c.store
        return st, function()
            if st.flush then pcall(st.flush, st) end
            pcall(c.close, c)
        end
    end
    if rt and rt.store then
        return rt.store, function() end
    end
    error("no ZooKeeper connection: give 'hosts' (a connect string) or run "
          .. "the task in a scheduler", 0)
end

-- Runs fn(st) with the task's connection, releasing it whatever happens.
function _M.with(t, rt, fn)
    local st, release = _M.open(t, rt)
    local res = table.pack(pcall(fn, st))
    release()
    if not res[1] then error(res[2], 0) end
    return table.unpack(res, 2, res.n)
end

-- ---- health: four-letter words ---------------------------------------------

-- Members of a connect string: {{host=, port=}...} (chroot dropped).
function _M.members(hosts)
    if type(hosts) ~= "string" then return nil, "hosts must be a string" end
    hosts = hosts:gsub("^zk://", ""):gsub("/.*$", "")
    local out = {}
    for part in hosts:gmatch("[^,%s]+") do
        local h, p = part:match("^%[(.+)%]:(%d+)$")
        if not h then h, p = part:match("^([^:]+):(%d+)$") end
        if not h then h, p = part:match("^([^:]+)$"), "2181" end
        if not h or not tonumber(p) then
            return nil, "bad member '" .. part .. "' in connect string"
        end
        out[#out + 1] = { host = h, port = tonumber(p) }
    end
    if #out == 0 then return nil, "empty connect string" end
    return out
end

-- Whether any member of `hosts` accepts a TCP connection within
-- `timeout` seconds (all asked at once; a four-letter word every server
-- answers, even one that does not allow it).  true, or nil and what each
-- said ("127.0.0.1:2181: Connection refused, ...").  A client that waits
-- for a session cannot tell a refused connection from a slow one: this
-- tells a one-shot command at once.  Inside a coroutine.
function _M.reachable(hosts, timeout)
    local members, err = _M.members(hosts)
    if not members then return nil, err end
    local answers = _M.ask_all(members, { "srvr" }, timeout or 1)
    local why = {}
    for _, a in ipairs(answers) do
        -- Refused, unreachable or no such host; a connect that timed out
        -- may be a slow network: the session's wait decides then.
        local e = tostring(a.errors.srvr)
        if a.replies.srvr or e:find("timed out", 1, true)
            or not (e:find("^connect ") or e:find("^resolve ")) then
            return true
        end
        why[#why + 1] = (e:gsub("^connect ", ""))
    end
    return nil, "ZCONNECTIONLOSS: no host accepts a connection ("
        .. concat(why, ", ") .. ")"
end

-- Sends each word to each member at once; waits for every answer.
-- Returns {[member] = {[word] = reply or nil, errors = {[word] = err}}}.
local function ask_all(members, words, timeout)
    local answers = {}
    local pending = 0
    local reqs = {}
    async.wait(function(resume)
        for _, m in ipairs(members) do
            local key = m.host:find(":", 1, true)
                        and fmt("[%s]:%d", m.host, m.port)
                        or fmt("%s:%d", m.host, m.port)
            local a = { key = key, replies = {}, errors = {},
                        started = core.mono() }
            answers[#answers + 1] = a
            for _, w in ipairs(words) do
                pending = pending + 1
                reqs[#reqs + 1] = core.tcp_request(m.host, m.port, w, timeout,
                    function(data, err)
                        if data then
                            a.replies[w] = data
                            a.rtt = a.rtt or (core.mono() - a.started)
                        else
                            a.errors[w] = err
                        end
                        pending = pending - 1
                        if pending == 0 then resume() end
                    end)
            end
        end
        if pending == 0 then resume() end
        return function()
            for _, r in ipairs(reqs) do r:cancel() end
        end
    end)
    return answers
end
_M.ask_all = ask_all

local function parse_srvr(text, m)
    m.mode = text:match("Mode:%s*(%S+)")
    local lmin, lavg, lmax = text:match(
        "Latency min/avg/max:%s*([%d%.]+)/([%d%.]+)/([%d%.]+)")
    if lmin then
        m.latency = { min = tonumber(lmin), avg = tonumber(lavg),
                      max = tonumber(lmax) }
    end
    m.version = text:match("Zookeeper version:%s*([^,\n]+)")
    m.zxid = text:match("Zxid:%s*(%S+)")
    m.node_count = tonumber(text:match("Node count:%s*(%d+)"))
    m.connections = tonumber(text:match("Connections:%s*(%d+)"))
    m.outstanding = tonumber(text:match("Outstanding:%s*(%d+)"))
end

-- The mntr keys worth keeping in an XCom (mntr has some 400).
local MNTR_KEYS = {}
for _, k in ipairs({
    "zk_server_state", "zk_avg_latency", "zk_min_latency", "zk_max_latency",
    "zk_num_alive_connections", "zk_outstanding_requests", "zk_znode_count",
    "zk_watch_count", "zk_ephemerals_count", "zk_approximate_data_size",
    "zk_open_file_descriptor_count", "zk_max_file_descriptor_count",
    "zk_followers", "zk_synced_followers", "zk_pending_syncs",
    "zk_packets_received", "zk_packets_sent", "zk_uptime",
}) do MNTR_KEYS[k] = true end

local function parse_mntr(text)
    local t = {}
    for k, v in text:gmatch("([%w_]+)\t([^\n]*)") do
        if MNTR_KEYS[k] then t[k] = tonumber(v) or v end
    end
    return t
end

-- health(hosts [, {words={"ruok","srvr","mntr"}, timeout=5}]) →
-- report, problems: report = {["h:p"] = {ok=bool, mode=, latency={min=,
-- avg=, max=} (ms, as srvr reports), rtt= (seconds to the first reply),
-- zxid=, node_count=, connections=, outstanding=, version=, mntr={a few
-- keys: zk_server_state, zk_avg_latency, zk_znode_count, ...},
-- error=}}; problems a list of "h:p: why" for members that do not serve
-- (ruok not "imok", srvr without a mode, or no answer).  A member whose
-- whitelist refuses `mntr` is still ok (mntr_error says so).  Waits, so
-- it runs in a coroutine.
function _M.health(hosts, opts)
    opts = opts or {}
    local members, err = _M.members(hosts)
    if not members then return nil, err end
    local words = opts.words or { "ruok", "srvr", "mntr" }
    local answers = ask_all(members, words, opts.timeout or 5)
    local report, problems = {}, {}
    for _, a in ipairs(answers) do
        local m = { ok = true, rtt = a.rtt }
        local why = {}
        for _, w in ipairs(words) do
            local reply = a.replies[w]
            if not reply then
                local e = tostring(a.errors[w])
                if why[#why] ~= e then why[#why + 1] = e end
            elseif w == "ruok" then
                m.ruok = reply
                if reply ~= "imok" then
                    why[#why + 1] = "ruok answered '" .. reply .. "'"
                end
            elseif w == "srvr" then
                parse_srvr(reply, m)
                if not m.mode then
                    why[#why + 1] = "srvr: "
                        .. (reply:match("^[^\n]*") ~= "" and
                            reply:match("^[^\n]*") or "no mode")
                end
            elseif w == "mntr" then
                if reply:find("not in the whitelist", 1, true)
                        or not reply:find("\t", 1, true) then
                    m.mntr_error = reply:match("^[^\n]*")
                else
                    m.mntr = parse_mntr(reply)
                    m.mode = m.mode or m.mntr.zk_server_state
                end
            else
                m[w] = reply
            end
        end
        if #why > 0 then
            m.ok = false
            m.error = concat(why, "; ")
            problems[#problems + 1] = a.key .. ": " .. m.error
        end
        report[a.key] = m
    end
    return report, problems
end

-- Keys of a table, sorted (for stable output).
function _M.sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    return keys
end

return _M
