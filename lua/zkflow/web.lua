-- zkflow.web: the files of the page at "/" (web/ in the source tree).
--
-- The page is plain HTML/CSS/JS with no build step.  Where it comes from:
--   1. zkflow.web_assets, a module tools/bundle.lua makes from web/: it is
--      compiled into the binary, libzkflow and the nginx module, and
--      `make install` puts it beside the Lua modules;
--   2. else web/ beside the lua/ folder this file was loaded from (a
--      checkout with LUA_PATH="lua/?.lua;...", as the specs run).
-- Files are read once and kept.

local _M = {}

local cache

local function checkout_dir()
    local src = debug.getinfo(1, "S").source
    local dir = src:match("^@(.*)/zkflow/web%.lua$")
    return dir and (dir .. "/../web") or nil
end

local function load_assets()
    local ok, assets = pcall(require, "zkflow.web_assets")
    if ok and type(assets) == "table" then
        return assets
    end
    return {}
end

-- Returns the text of web/<name> ("index.html"), or nil and a message.
function _M.file(name)
    cache = cache or load_assets()
    local data = cache[name]
    if data then
        return data
    end
    local dir = checkout_dir()
    local f = dir and io.open(dir .. "/" .. name, "rb")
    if not f then
        return nil, "web/" .. name .. ": not bundled and not found"
    end
    data = f:read("a")
    f:close()
    cache[name] = data
    return data
end

return _M
