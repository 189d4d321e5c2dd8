/*
 * lua/cron.c - `core.cron(expr)`: a parsed cron expression as a Lua
 * userdata whose `next(t)` gives the first fire time after `t`.
 */
#include <string.h>

#include "cron/cron.h"
#include "lua/lbind.h"

#define CRON_MT "zkflow.Cron"

/* The expression is kept after the mask so that __tostring can show what
 * the user wrote; the userdata owns both (no __gc needed). */
typedef struct lcron {
    zkf_cron cron;
    char expr[];
} lcron;

static int l_cron_new(lua_State *L)
{
    size_t len;
    const char *expr = luaL_checklstring(L, 1, &len);
    char err[256];
    zkf_cron c;
    lcron *lc;

    if (zkf_cron_parse(&c, expr, err, sizeof err) != 0)
        return luaL_error(L, "%s", err);
    lc = lua_newuserdatauv(L, sizeof *lc + len + 1, 0);
    lc->cron = c;
    memcpy(lc->expr, expr, len + 1);
    luaL_setmetatable(L, CRON_MT);
    return 1;
}

/* c:next(t) -> the first fire time strictly after t (integer seconds),
 * or nil when there is none within ten years.  A float t is floored. */
static int l_cron_next(lua_State *L)
{
    lcron *lc = luaL_checkudata(L, 1, CRON_MT);
    lua_Integer t;
    int64_t next;

    if (lua_isinteger(L, 2)) {
        t = lua_tointeger(L, 2);
    } else {
        lua_Number n = luaL_checknumber(L, 2);

        luaL_argcheck(L, n == n && n > -1e15 && n < 1e15, 2,
                      "time out of range");
        t = (lua_Integer)n;
        if ((lua_Number)t > n)
            t--;
    }
    next = zkf_cron_next(&lc->cron, (int64_t)t);
    if (next < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)next);
    return 1;
}

static int l_cron_tostring(lua_State *L)
{
    lcron *lc = luaL_checkudata(L, 1, CRON_MT);

    lua_pushfstring(L, "zkflow.Cron('%s')", lc->expr);
    return 1;
}

static const luaL_Reg cron_methods[] = {
    { "next", l_cron_next },
    { NULL, NULL }
};

void zkf_lua_open_cron(lua_State *L)
{
    if (luaL_newmetatable(L, CRON_MT)) {
        luaL_newlib(L, cron_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_cron_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_cron_new);
    lua_setfield(L, -2, "cron");
}
