-- zkflow.api.auth: users, roles and tokens kept in a real SQLite store.
local core = require "zkflow.core"
local auth = require "zkflow.api.auth"

local function tmpdir()
    local p = os.tmpname()
    os.remove(p)
    assert(os.execute("mkdir -p '" .. p .. "'"))
    return p
end

local function basic(user, password)
    return { authorization = "Basic " .. core.base64_encode(user .. ":" .. password) }
end

describe("zkflow.api.auth", function()
    local dir, st, A

    before_each(function()
        dir = tmpdir()
        st = assert(core.store(dir .. "/z.db"))
        A = auth.new(st, "/zkflow")
    end)

    after_each(function()
        st:close()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    it("checks a password over HTTP basic and keeps only its hash", function()
        assert(A:add_user("ann", "operator", "correct horse"))
        local user = assert(A:authenticate(basic("ann", "correct horse")))
        assert.equal("operator", user.role)
        local raw = st:get("/zkflow/auth/users/ann")
        assert.is_nil(raw:find("correct horse", 1, true))
        local nobody, why = A:authenticate(basic("ann", "wrong horse"))
        assert.is_nil(nobody)
        assert.equal("bad credentials", why)
        assert.is_nil((A:authenticate(basic("bob", "correct horse"))))
    end)

    it("hands out a token once and knows it by the hash of its secret", function()
        assert(A:add_user("ci", "viewer"))
        local token, id = assert(A:new_token("ci", "the CI"))
        assert.matches("^zkf_" .. id .. "_%x+$", token)
        local user = assert(A:authenticate({ authorization = "Bearer " .. token }))
        assert.equal("ci", user.name)
        assert.is_nil(st:get("/zkflow/auth/tokens/" .. id):find(token:match("_(%x+)$"), 1, true))
        local forged = token:gsub("%x$", function(c) return c == "0" and "1" or "0" end)
        assert.is_nil((A:authenticate({ authorization = "Bearer " .. forged })))
        assert(A:delete_token(id))
        assert.is_nil((A:authenticate({ authorization = "Bearer " .. token })))
    end)

    it("orders roles: viewer reads, operator changes runs, admin the rest", function()
        assert.is_true(auth.allows("viewer", "viewer"))
        assert.is_false(auth.allows("viewer", "operator"))
        assert.is_true(auth.allows("operator", "operator"))
        assert.is_false(auth.allows("operator", "admin"))
        assert.is_true(auth.allows("admin", "operator"))
        assert.is_false(auth.allows("nobody", "viewer"))
    end)

    it("refuses bad names, roles and short passwords, and duplicates", function()
        assert.matches("invalid name", select(2, A:add_user("../x", "viewer")))
        assert.matches("role must be", select(2, A:add_user("x", "root")))
        assert.matches("at least 8", select(2, A:add_user("x", "viewer", "short")))
        assert(A:add_user("x", "viewer"))
        assert.matches("exists", select(2, A:add_user("x", "admin")))
        assert(A:add_user("x", "admin", nil, true))
        assert.equal("admin", A:list_users()[1].role)
    end)

    it("deletes a user with its tokens", function()
        assert(A:add_user("gone", "admin", "password1"))
        local token = A:new_token("gone")
        assert(A:delete_user("gone"))
        assert.same({}, A:list_users())
        assert.same({}, A:list_tokens())
        assert.is_nil((A:authenticate({ authorization = "Bearer " .. token })))
        assert.is_nil((A:authenticate(basic("gone", "password1"))))
    end)

    it("says what is missing or unsupported", function()
        assert.matches("authentication required", select(2, A:authenticate({})))
        assert.matches("unsupported", select(2, A:authenticate({ authorization = "Digest x" })))
    end)
end)
