/*
 * lua/json.c - core.json_encode, core.json_decode, core.null and
 * core.base64_*: the Lua face of the codec in json/json.c.
 */
#include "json/json.h"
#include "lua/lbind.h"

static int l_json_encode(lua_State *L)
{
    int flags = 0;

    luaL_checkany(L, 1);
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "pretty") != LUA_TNIL && lua_toboolean(L, -1))
            flags |= ZKF_JSON_PRETTY;
        if (lua_getfield(L, 2, "sort_keys") != LUA_TNIL
            && lua_toboolean(L, -1))
            flags |= ZKF_JSON_SORT_KEYS;
        lua_pop(L, 2);
    }
    zkf_json_encode(L, 1, flags);
    return 1;
}

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[256];

    if (zkf_json_decode(L, s, len, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int l_base64_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *out;

    out = luaL_buffinitsize(L, &b, zkf_base64_len(n));
    zkf_base64_encode((const unsigned char *)s, n, out);
    luaL_pushresultsize(&b, zkf_base64_len(n));
    return 1;
}

static int l_base64_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[96];
    luaL_Buffer b;
    unsigned char *out;
    long long len;

    out = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
    len = zkf_base64_decode(s, n, out, err, sizeof err);
    if (len < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    luaL_pushresultsize(&b, (size_t)len);
    return 1;
}

static const luaL_Reg json_funcs[] = {
    { "json_encode", l_json_encode },
    { "json_decode", l_json_decode },
    { "base64_encode", l_base64_encode },
    { "base64_decode", l_base64_decode },
    { NULL, NULL }
};

void zkf_lua_open_json(lua_State *L)
{
    luaL_setfuncs(L, json_funcs, 0);
    lua_pushlightuserdata(L, ZKF_JSON_NULL);
    lua_setfield(L, -2, "null");
}
