-- zkflow.pushed: DAGs kept in the store (`zkflow dags push`).
--
-- /dags/<dag_id> holds, as its data, the JSON record of the file that
-- defines the DAG:
--
--   {"dag_id":..., "file":"<name it was pushed from>", "version":"<hash>",
--    "source":"<the Lua source>", "pushed_at":"<ISO>", "pushed_by":"<host>"}
--
-- The node's children (paused, meta) belong to the scheduler; pushing and
-- removing only change its data ("" when no source is pushed).  A file that
-- defines several DAGs is stored under each of their ids; loading keeps
-- from each node only the DAG the node is named after.  Schedulers and
-- workers watch /dags: a push becomes a new DAG version within a turn.  A
-- DAG id both pushed and in a DAG folder runs the pushed version (the
-- cluster's deploy wins over a machine's file).
local core = require "zkflow.core"
local loader = require "zkflow.dsl.loader"
local state = require "zkflow.state"

local json_encode, json_decode = core.json_encode, core.json_decode
local fmt = string.format

local _M = {}

-- The largest source a node takes (ZooKeeper refuses data over 1 MB).
_M.MAX_SOURCE = 900 * 1024

local hostname = state.hostname

local function node(root, id)
    return (root or "/zkflow") .. "/dags/" .. id
end

-- The name under which a pushed DAG's file shows (dag.file, import errors).
function _M.file_name(root, id)
    return "zk:" .. node(root, id)
end

-- push(store, root, path [, opts]) → list of {dag_id=, version=}, or nil
-- and an error naming the file.  The file must load (the same limits as a
-- DAG folder's); nothing is written otherwise.  opts.dags_dir: the folder
-- whose operators/ the DAG may use when loading.
function _M.push(store, root, path, opts)
    opts = opts or {}
    local f, ferr = io.open(path, "rb")
    if not f then return nil, tostring(ferr) end
    local src = f:read("a")
    f:close()
    if #src > _M.MAX_SOURCE then
        return nil, fmt("%s: %d bytes: a pushed DAG file holds at most %d",
                        path, #src, _M.MAX_SOURCE)
    end
    local dags, err = loader.load_checked(src, path, { root = opts.dags_dir })
    if not dags then return nil, err end
    if #dags == 0 then return nil, path .. ": the file defines no DAG" end
    local version = loader.hash(src)
    local base = path:match("([^/]+)$") or path
    local out = {}
    for _, d in ipairs(dags) do
        local data = json_encode({
            dag_id = d.id, file = base, version = version, source = src,
            pushed_at = state.iso(core.now(), true), pushed_by = hostname(),
        })
        local p = node(root, d.id)
        local ok, werr = store:set(p, data)
        if not ok and werr == "ZNONODE" then
            ok, werr = store:create(p, data, { parents = true })
            if not ok and werr == "ZNODEEXISTS" then ok, werr = store:set(p, data) end
        end
        if not ok then return nil, fmt("%s: %s", p, tostring(werr)) end
        local okv, verr = _M.publish(store, root, d.id, version, src)
        if not okv then return nil, verr end
        out[#out + 1] = { dag_id = d.id, version = version }
    end
    return out
end

-- remove(store, root, id) → true, or nil and an error ("not pushed").
function _M.remove(store, root, id)
    local p = node(root, id)
    local data = store:get(p)
    if not data or data == "" then
        return nil, fmt("DAG '%s' is not pushed (%s has no source)", id, p)
    end
    local ok, err = store:set(p, "")
    if not ok then return nil, fmt("%s: %s", p, tostring(err)) end
    return true
end

-- load(store, root [, opts]) → {dags={[id]=dag}, errors={[file]=msg},
-- files={[file]={hash=, dag_ids=}}} for every pushed DAG.  opts.watch:
-- watch(id_or_nil) is armed on /dags (nil) and on each node read;
-- opts.armed: a table of what is already armed (one watch each).
-- opts.dags_dir: the operators/ folder for loading.
function _M.load(store, root, opts)
    opts = opts or {}
    local res = { dags = {}, errors = {}, files = {} }
    local dir = (root or "/zkflow") .. "/dags"
    local armed = opts.armed or {}
    local watch = opts.watch
    local list
    if watch and not armed[""] then
        armed[""] = true
        local function fire() armed[""] = nil; watch(nil) end
        local err
        list, err = store:children(dir, fire)
        if not list and err == "ZNONODE" then
            -- Made here so that the first push is seen: a watch on the
            -- children needs the parent.
            store:create(dir, "", { parents = true })
            list = store:children(dir, fire)
        end
        if not list then armed[""] = nil end
    else
        list = store:children(dir)
    end
    for _, id in ipairs(list or {}) do
        local p = dir .. "/" .. id
        local data
        if watch and not armed[id] then
            armed[id] = true
            data = store:get(p, function() armed[id] = nil; watch(id) end)
            if not data then armed[id] = nil end
        else
            data = store:get(p)
        end
        if data and data ~= "" then
            local name = _M.file_name(root, id)
            local ok, rec = pcall(json_decode, data)
            if not ok or type(rec) ~= "table" or type(rec.source) ~= "string" then
                res.errors[name] = name .. ": not a pushed DAG record (push it again with "
                                   .. "'zkflow dags push FILE')"
            else
                -- a pushed DAG is checked in a child too (a load that hangs in C
                -- becomes an import error, docs/dags.md)
                local dags, err = loader.load_checked(rec.source, name, { root = opts.dags_dir })
                res.files[name] = { hash = rec.version, dag_ids = {}, pushed = rec.file }
                if not dags then
                    res.errors[name] = err
                else
                    for _, d in ipairs(dags) do
                        if d.id == id then
                            res.dags[id] = d
                            res.files[name].dag_ids = { id }
                        end
                    end
                    if not res.dags[id] then
                        res.errors[name] = fmt("%s: the pushed file no longer defines DAG '%s'",
                                               name, id)
                    end
                end
            end
        end
    end
    return res
end

-- ---- versions: what a run started with ----------------------------------------
--
-- /dags/<dag_id>/versions/<hash> holds the source of every version a run
-- may have started with (written by `dags push` and by the cluster's
-- leader for its folder's DAGs), so that a worker whose own copy is newer
-- (or older) runs a try with the run's version, as DESIGN asks: "a run
-- keeps the version it started with".

local function version_node(root, id, hash)
    return node(root, id) .. "/versions/" .. hash
end

-- publish(store, root, id, hash, src): the version node, once (true when
-- it is there), or nil and an error.
function _M.publish(store, root, id, hash, src)
    if #src > _M.MAX_SOURCE then return nil, "source over " .. _M.MAX_SOURCE .. " bytes" end
    local p = version_node(root, id, hash)
    local ok, err = store:create(p, src, { parents = true })
    if ok or err == "ZNODEEXISTS" then return true end
    return nil, p .. ": " .. tostring(err)
end

-- version(store, root, id, hash [, opts]) → the DAG `id` as version `hash`
-- defined it, or nil and why.  opts.dags_dir: its operators/ folder.
function _M.version(store, root, id, hash, opts)
    local p = version_node(root, id, hash)
    local src = store:get(p)
    if not src then return nil, p .. " is not in the store" end
    local dags, err = loader.load_checked(src, _M.file_name(root, id) .. "@" .. hash,
                                          { root = opts and opts.dags_dir })
    if not dags then return nil, err end
    for _, d in ipairs(dags) do
        if d.id == id then
            d.source_hash = hash
            return d
        end
    end
    return nil, p .. " does not define DAG '" .. id .. "'"
end

-- merge(scan, pushed): the folder's scan with the pushed DAGs over it.
function _M.merge(scan, pushed)
    scan.dags = scan.dags or {}
    scan.errors = scan.errors or {}
    scan.files = scan.files or {}
    for id, d in pairs(pushed.dags) do scan.dags[id] = d end
    for f, e in pairs(pushed.errors) do scan.errors[f] = e end
    for f, e in pairs(pushed.files) do scan.files[f] = e end
    return scan
end

return _M
