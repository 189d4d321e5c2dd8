-- zkflow.zk.dump: a znode subtree to JSON and back, shared by `zkflow zk
-- dump|restore` and the zk_dump / zk_restore operators.
--
-- The format (DESIGN.md): one object per node,
--   {"path": "/app/config",            -- the root node only
--    "data": "...",                    -- empty data is kept as ""
--    "encoding": "utf8" | "base64",    -- base64 when data is not UTF-8
--    "children": {"<name>": <node>}}   -- left out when there are none
--
-- Everything here works on a `core.store` object (SQLite or ZooKeeper:
-- methods return nil, "ZERR" on failure) and returns nil, err itself; the
-- callers decide whether that raises.  Store calls yield when made in a
-- coroutine on the ZooKeeper backend, so a big dump never blocks the loop.
--
-- A restore checks the whole document before it writes anything, then
-- writes with `multi` in batches; when a later batch fails, the batches
-- already written are undone (created nodes deleted, overwritten data put
-- back), so a restore either happens or leaves the tree as it found it.
local core = require "zkflow.core"

local _M = {}

local type, pairs, ipairs, tostring, next, getmetatable =
      type, pairs, ipairs, tostring, next, getmetatable
local fmt, concat, sort = string.format, table.concat, table.sort
local utf8_len = utf8.len

-- ZooKeeper's own subtree: neither dumped with "/" nor restored.
local SYSTEM = "/zookeeper"

-- The largest data ZooKeeper takes by default (jute.maxbuffer, 1 MiB).
_M.MAX_DATA = 1024 * 1024

-- Bytes per multi batch, well under jute.maxbuffer so that one request
-- carrying path names and framing still fits.
local BATCH_BYTES = 512 * 1024
local BATCH_OPS = 1000

local function join(parent, name)
    if parent == "/" then return "/" .. name end
    return parent .. "/" .. name
end
_M.join = join

-- nil when `p` is a valid absolute znode path, else why not (as
-- ZooKeeper's PathUtils sees it).
function _M.path_problem(p)
    if type(p) ~= "string" then return "path must be a string" end
    if p:sub(1, 1) ~= "/" then return "path must start with '/'" end
    if p == "/" then return nil end
    if p:sub(-1) == "/" then return "path must not end with '/'" end
    if p:find("//", 1, true) then return "path has an empty component" end
    if p:find("[%z\1-\31\127]") then
        return "path has a control character"
    end
    for comp in p:gmatch("[^/]+") do
        if comp == "." or comp == ".." then
            return "path has a relative component '" .. comp .. "'"
        end
    end
    return nil
end

local function name_problem(name)
    if type(name) ~= "string" or name == "" then
        return "child name must be a non-empty string"
    end
    if name:find("/", 1, true) then return "child name contains '/'" end
    if name == "." or name == ".." then
        return "child name is '" .. name .. "'"
    end
    if name:find("[%z\1-\31\127]") then
        return "child name has a control character"
    end
    return nil
end

-- ---- dump -------------------------------------------------------------------

local function encode_data(data)
    if utf8_len(data) then return data, "utf8" end
    return core.base64_encode(data), "base64"
end

-- One node and its subtree, or nil when it vanished meanwhile (a node
-- deleted during the walk is simply not in the dump).
local function dump_node(st, p, counter)
    local data, err = st:get(p)
    if data == nil then
        if err == "ZNONODE" then return nil end
        return nil, p .. ": " .. tostring(err)
    end
    local node = {}
    node.data, node.encoding = encode_data(data)
    counter.n = counter.n + 1
    counter.bytes = counter.bytes + #data
    local names, cerr = st:children(p)
    if not names then
        if cerr == "ZNONODE" then return node end
        return nil, p .. ": " .. tostring(cerr)
    end
    local kids
    for _, name in ipairs(names) do
        local cp = join(p, name)
        if cp ~= SYSTEM then
            local child, derr = dump_node(st, cp, counter)
            if derr then return nil, derr end
            if child then
                kids = kids or {}
                kids[name] = child
            end
        end
    end
    node.children = kids
    return node
end

-- dump(st, path) → tree, {count=, bytes=}; or nil, "PATH: ZERR".
function _M.dump(st, p)
    local problem = _M.path_problem(p)
    if problem then return nil, p .. ": ZBADARGUMENTS: " .. problem end
    local counter = { n = 0, bytes = 0 }
    local node, err = dump_node(st, p, counter)
    if not node then return nil, err or (p .. ": ZNONODE") end
    node.path = p
    return node, { count = counter.n, bytes = counter.bytes }
end

-- The JSON text of a dump (sorted keys, indented, a final newline).
function _M.encode(tree)
    return core.json_encode(tree, { pretty = true, sort_keys = true }) .. "\n"
end

-- ---- checking a dump ----------------------------------------------------------

-- A decoded JSON array (core.json_decode marks them) or a Lua sequence.
local function is_array(t)
    local mt = getmetatable(t)
    if mt and mt.__jsontype == "array" then return true end
    return t[1] ~= nil
end

-- Walks a decoded document; returns a list of {path=, data=} in
-- pre-order (parents before children, names sorted), or nil and the first
-- problem, named by its znode path and JSON location.
local function flatten(tree, base)
    local out = {}
    local function check(node, p, where)
        local function bad(msg)
            return fmt("malformed dump: %s (node %s, at %s)", msg, p, where)
        end
        if type(node) ~= "table" or is_array(node) then
            return bad("a node must be an object, got "
                       .. (type(node) == "table" and "an array" or type(node)))
        end
        local data = node.data
        if data == nil or data == core.null then data = "" end
        if type(data) ~= "string" then
            return bad("'data' must be a string, got " .. type(data))
        end
        local enc = node.encoding
        if enc == nil or enc == core.null then enc = "utf8" end
        if enc == "base64" then
            local raw, derr = core.base64_decode(data)
            if not raw then
                return bad("'data' is not valid base64: " .. tostring(derr))
            end
            data = raw
        elseif enc ~= "utf8" then
            return bad("'encoding' must be \"utf8\" or \"base64\", got "
                       .. core.json_encode(enc))
        end
        if #data > _M.MAX_DATA then
            return bad(fmt("data is %d bytes, over ZooKeeper's 1 MiB limit",
                           #data))
        end
        local p_problem = _M.path_problem(p)
        if p_problem then return bad(p_problem) end
        out[#out + 1] = { path = p, data = data }
        local kids = node.children
        if kids == nil or kids == core.null then return nil end
        if type(kids) ~= "table" then
            return bad("'children' must be an object, got " .. type(kids))
        end
        if is_array(kids) and next(kids) ~= nil then
            return bad("'children' must be an object of name: node, "
                       .. "got an array")
        end
        local names = {}
        for name in pairs(kids) do
            local np = name_problem(name)
            if np then
                return bad(np .. ": " .. core.json_encode(tostring(name)))
            end
            names[#names + 1] = name
        end
        sort(names)
        for _, name in ipairs(names) do
            local cp = join(p, name)
            if cp ~= SYSTEM then
                local err = check(kids[name], cp,
                                  where .. ".children[" ..
                                  core.json_encode(name) .. "]")
                if err then return err end
            end
        end
        return nil
    end
    local err = check(tree, base, "$")
    if err then return nil, err end
    return out
end

-- decode(text) → tree, or nil and what is wrong with it.
function _M.decode(text)
    if type(text) ~= "string" or text:match("^%s*$") then
        return nil, "malformed dump: empty input"
    end
    local tree, err = core.json_decode(text)
    if tree == nil then
        return nil, "malformed dump: " .. tostring(err)
    end
    if type(tree) ~= "table" then
        return nil, "malformed dump: expected an object at the top, got "
                    .. (tree == core.null and "null" or type(tree))
    end
    return tree
end

-- check(tree [, path]) → the nodes it holds, {{path=, data=}...}, or nil
-- and the problem.  `path` (default the dump's own) is where it goes.
function _M.check(tree, p)
    if type(tree) ~= "table" then
        return nil, "malformed dump: expected an object, got " .. type(tree)
    end
    p = p or tree.path
    if p == nil or p == core.null then
        return nil, "malformed dump: no 'path' and no target path given"
    end
    local problem = _M.path_problem(p)
    if problem then
        return nil, "invalid target path " .. tostring(p) .. ": " .. problem
    end
    return flatten(tree, p)
end

-- ---- restore ------------------------------------------------------------------

-- Splits ops into batches that one multi request carries.
local function batches(ops, max_ops)
    local out, cur, bytes = {}, {}, 0
    max_ops = max_ops or BATCH_OPS
    for _, op in ipairs(ops) do
        local size = #op.path + #(op.data or "") + 64
        if #cur > 0 and (bytes + size > BATCH_BYTES or #cur >= max_ops) then
            out[#out + 1] = cur
            cur, bytes = {}, 0
        end
        cur[#cur + 1] = op
        bytes = bytes + size
    end
    if #cur > 0 then out[#out + 1] = cur end
    return out
end

-- Undoes the batches written so far: deletes what was created (children
-- first) and puts back what was overwritten.  Returns nil or a problem.
local function rollback(st, done)
    local undo = {}
    for i = #done, 1, -1 do
        local op = done[i]
        if op.op == "create" then
            undo[#undo + 1] = { op = "delete", path = op.path }
        else
            undo[#undo + 1] = { op = "set", path = op.path, data = op.old }
        end
    end
    local problems = {}
    for _, b in ipairs(batches(undo)) do
        local ok, err = st:multi(b)
        if not ok then
            -- One by one, so that a node somebody else touched meanwhile
            -- does not keep the rest in place.
            for _, op in ipairs(b) do
                local r, e
                if op.op == "delete" then
                    r, e = st:delete(op.path, -1)
                else
                    r, e = st:set(op.path, op.data, -1)
                end
                if not r and e ~= "ZNONODE" then
                    problems[#problems + 1] = op.path .. ": " .. tostring(e)
                end
            end
            local _ = err
        end
    end
    if #problems > 0 then return concat(problems, "; ") end
    return nil
end

-- restore(st, tree, {path=, overwrite=, dry_run=, batch_ops=}) → result,
-- or nil, err (batch_ops: ops per multi, default 1000; tests make it small).
-- result: {path=, created=, updated=, kept=, actions={"create /a", ...}}
-- (`actions` lists every node in order: create, update or keep).  The
-- tree is checked whole before anything is written; missing ancestors of
-- the target are created empty.  Versions taken while planning make a
-- concurrent change to an overwritten node fail the restore (undone)
-- rather than be lost.
function _M.restore(st, tree, opts)
    opts = opts or {}
    local nodes, err = _M.check(tree, opts.path)
    if not nodes then return nil, err end
    local target = nodes[1].path
    local res = { path = target, created = 0, updated = 0, kept = 0,
                  actions = {} }
    local ops = {}

    -- Missing ancestors of the target, top down.
    local anc = {}
    local a = target:match("^(.*)/[^/]*$")
    while a and a ~= "" do
        anc[#anc + 1] = a
        a = a:match("^(.*)/[^/]*$")
    end
    for i = #anc, 1, -1 do
        local stat = st:exists(anc[i])
        if not stat then
            ops[#ops + 1] = { op = "create", path = anc[i], data = "" }
            res.actions[#res.actions + 1] = "create " .. anc[i]
        end
    end

    local missing = {}     -- a node under a missing one is missing too
    for _, n in ipairs(nodes) do
        local parent = n.path:match("^(.*)/[^/]*$")
        local have, stat
        if not missing[parent ~= "" and parent or "/"] then
            have, stat = st:get(n.path)
            if have == nil and stat ~= "ZNONODE" then
                return nil, n.path .. ": " .. tostring(stat)
            end
        end
        if have == nil then
            missing[n.path] = true
            ops[#ops + 1] = { op = "create", path = n.path, data = n.data }
            res.created = res.created + 1
            res.actions[#res.actions + 1] = "create " .. n.path
        elseif have ~= n.data and opts.overwrite then
            ops[#ops + 1] = { op = "set", path = n.path, data = n.data,
                              version = stat.version, old = have }
            res.updated = res.updated + 1
            res.actions[#res.actions + 1] = "update " .. n.path
        else
            res.kept = res.kept + 1
            res.actions[#res.actions + 1] = "keep " .. n.path
        end
    end
    if opts.dry_run or #ops == 0 then
        res.dry_run = opts.dry_run and true or nil
        return res
    end

    local done = {}
    for _, b in ipairs(batches(ops, opts.batch_ops)) do
        local mops = {}
        for i, op in ipairs(b) do
            mops[i] = { op = op.op, path = op.path, data = op.data,
                        version = op.version }
        end
        local ok, merr, idx = st:multi(mops)
        if not ok then
            local what = b[idx or 1] or b[1]
            local msg = fmt("restore of %s failed at %s (%s): %s", target,
                            what.path, what.op, tostring(merr))
            local rerr = rollback(st, done)
            if rerr then
                msg = msg .. "; undoing the nodes already written failed: "
                      .. rerr
            elseif #done > 0 then
                msg = msg .. "; the nodes already written were removed"
            else
                msg = msg .. "; nothing was written"
            end
            return nil, msg
        end
        for _, op in ipairs(b) do done[#done + 1] = op end
    end
    if st.flush then st:flush() end
    return res
end

return _M
