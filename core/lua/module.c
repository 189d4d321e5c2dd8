/*
 * lua/module.c - `zkflow.core`, the C module the engine's Lua state and plain
 * lua5.4 share: the module table, the loop it is bound to, and the helpers
 * the other files of lua/ use to call back into Lua.
 *
 * Inside the engine, engine.c stores the engine's loop in the registry
 * before the module is opened.  In plain Lua the module makes its own loop
 * on a poll() host, owned by a sentinel userdata so that lua_close() frees
 * it; the sentinel is created before any other handle of the module, and
 * Lua finalizes in reverse order of creation, so every timer, process and
 * store is finalized while the loop still exists.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include "lua/lbind.h"
#include "engine/engine.h"

#define LOOP_KEY "zkflow.loop"          /* lightuserdata zkf_loop */
#define POLLHOST_KEY "zkflow.pollhost"  /* lightuserdata zkf_pollhost */
#define OWNER_KEY "zkflow.loopowner"    /* the plain-Lua sentinel */
#define OWNER_MT "zkflow.LoopOwner"

typedef struct loop_owner {
    zkf_pollhost *host;
    zkf_loop *loop;
} loop_owner;

static int owner_gc(lua_State *L)
{
    loop_owner *o = luaL_checkudata(L, 1, OWNER_MT);

    if (o->loop) {
        zkf_loop_free(o->loop);
        o->loop = NULL;
    }
    if (o->host) {
        zkf_pollhost_free(o->host);
        o->host = NULL;
    }
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, POLLHOST_KEY);
    return 0;
}

static zkf_loop *make_own_loop(lua_State *L)
{
    loop_owner *o = lua_newuserdatauv(L, sizeof(*o), 0);

    o->host = NULL;
    o->loop = NULL;
    if (luaL_newmetatable(L, OWNER_MT)) {
        lua_pushcfunction(L, owner_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, OWNER_KEY);

    o->host = zkf_pollhost_new();
    if (o->host == NULL)
        luaL_error(L, "zkflow.core: out of memory");
    o->loop = zkf_loop_new(zkf_pollhost_hooks(o->host));
    if (o->loop == NULL)
        luaL_error(L, "zkflow.core: out of memory");
    zkf_pollhost_attach(o->host, o->loop);
    lua_pushlightuserdata(L, o->loop);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
    lua_pushlightuserdata(L, o->host);
    lua_setfield(L, LUA_REGISTRYINDEX, POLLHOST_KEY);
    return o->loop;
}

zkf_loop *zkf_lua_loop(lua_State *L)
{
    zkf_loop *loop;

    lua_getfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
    loop = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (loop == NULL)
        loop = make_own_loop(L);
    return loop;
}

zkf_pollhost *zkf_lua_pollhost(lua_State *L)
{
    zkf_pollhost *h;

    zkf_lua_loop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, POLLHOST_KEY);
    h = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return h;
}

static int level_rank(const char *level)
{
    if (strcmp(level, "debug") == 0)
        return 0;
    if (strcmp(level, "info") == 0)
        return 1;
    if (strcmp(level, "warn") == 0)
        return 2;
    return 3;
}

static int log_wanted(const char *level)
{
    const char *min = getenv("ZKFLOW_LOG_LEVEL");

    return level_rank(level) >= (min ? level_rank(min) : 2);
}

void zkf_lua_log(lua_State *L, const char *level, const char *msg)
{
    zkf_engine *e = zkf_engine_from_lua(L);

    if (e != NULL) {
        zkf_engine_log(e, level, msg);
        return;
    }
    /* Plain Lua: warnings and errors, unless ZKFLOW_LOG_LEVEL asks for
     * more (or less), as the zkflow command does. */
    if (!log_wanted(level))
        return;
    fprintf(stderr, "zkflow: %s: %s\n", level, msg);
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)",
                              luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int zkf_lua_pcall(lua_State *L, int nargs)
{
    int base = lua_gettop(L) - nargs;   /* the function's index */
    int rc;

    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    rc = lua_pcall(L, nargs, 0, base);
    if (rc != LUA_OK) {
        zkf_lua_log(L, "error", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_remove(L, base);
    return rc == LUA_OK ? 0 : -1;
}

/* ---- functions that belong to no other file ------------------------- */

static int l_mem_limit(lua_State *L)
{
    zkf_engine *e = zkf_engine_from_lua(L);
    lua_Integer limit = luaL_optinteger(L, 1, 0);

    if (e == NULL) {
        /* Plain Lua owns its allocator; the loader falls back to
         * collectgarbage("count") checks in its count hook. */
        lua_pushboolean(L, 0);
        return 1;
    }
    zkf_engine_mem_limit(e, limit > 0 ? (size_t)limit : 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_mem_used(lua_State *L)
{
    zkf_engine *e = zkf_engine_from_lua(L);

    if (e == NULL)
        lua_pushinteger(L, (lua_Integer)lua_gc(L, LUA_GCCOUNT, 0) * 1024 +
                           lua_gc(L, LUA_GCCOUNTB, 0));
    else
        lua_pushinteger(L, (lua_Integer)zkf_engine_mem_used(e));
    return 1;
}

/* core.set_log_level(level): the engine drops messages below `level`
 * ("debug", "info", "warn", "error"; nil: none dropped).  false in plain
 * Lua, whose level is ZKFLOW_LOG_LEVEL's. */
static int l_set_log_level(lua_State *L)
{
    static const char *const names[] = {"debug", "info", "warn", "error",
                                         NULL};
    zkf_engine *e = zkf_engine_from_lua(L);
    int level = lua_isnoneornil(L, 1) ? 0 : luaL_checkoption(L, 1, NULL, names);

    if (e == NULL) {
        lua_pushboolean(L, 0);
        return 1;
    }
    zkf_engine_log_min(e, level);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_log(lua_State *L)
{
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);

    zkf_lua_log(L, level, msg);
    return 0;
}

/* Does the environment block `env` (NUL-separated, `len` bytes) hold the
 * entry "K=V" for every pair of the table at index `marks`? */
static int env_has_marks(lua_State *L, int marks, const char *env, size_t len)
{
    lua_pushnil(L);
    while (lua_next(L, marks) != 0) {
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl);
        const char *v = lua_tolstring(L, -1, &vl);
        int found = 0;

        for (size_t i = 0; k != NULL && v != NULL && i < len;) {
            const char *e = env + i;
            size_t el = strnlen(e, len - i);

            if (el == kl + 1 + vl && memcmp(e, k, kl) == 0 && e[kl] == '='
                    && memcmp(e + kl + 1, v, vl) == 0) {
                found = 1;
                break;
            }
            i += el + 1;
        }
        lua_pop(L, 1);
        if (!found) {
            lua_pop(L, 1);
            return 0;
        }
    }
    return 1;
}

/* Is process group `pgid` still the one a try started?  A process group
 * recorded by a scheduler that died may be long gone and its number
 * reused by an unrelated process: the group leader's environment must
 * carry every mark (ZKFLOW_TASK_ID=..., ...) the try was started with.  A
 * group whose leader exited while members live cannot have had its number
 * reused (Linux keeps a pid allocated while a group uses it as its id), so
 * it is ours when it still exists.  Returns 1 ours, 0 not, -1 gone. */
static int group_is_marked(lua_State *L, pid_t pgid, int marks)
{
    char path[64], *env = NULL;
    size_t len = 0, cap = 0;
    FILE *f;
    int ours;

    /* A zombie leader shows an empty environment; while it is there its
     * number cannot be reused either. */
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pgid);
    f = fopen(path, "rb");
    if (f != NULL) {
        char stat[256];
        size_t n = fread(stat, 1, sizeof(stat) - 1, f);
        const char *close;

        fclose(f);
        stat[n] = '\0';
        close = strrchr(stat, ')');
        if (close != NULL && close[1] == ' ' && close[2] == 'Z')
            return kill(-pgid, 0) == 0 ? 1 : -1;
    }
    snprintf(path, sizeof(path), "/proc/%ld/environ", (long)pgid);
    f = fopen(path, "rb");
    if (f == NULL && errno != ENOENT)
        return 0;               /* another user's process, say */
    if (f == NULL)
        return kill(-pgid, 0) == 0 ? 1 : -1;
    for (;;) {
        size_t n;

        if (len == cap) {
            char *bigger = realloc(env, cap ? cap * 2 : 4096);

            if (bigger == NULL)
                break;
            env = bigger;
            cap = cap ? cap * 2 : 4096;
        }
        n = fread(env + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    /* A leader that is not the group's (it left with setsid) or that we
     * may not read is not ours to kill. */
    ours = env != NULL && getpgid(pgid) == pgid
           && env_has_marks(L, marks, env, len);
    free(env);
    return ours;
}

/* core.killpg(pgid [, sig [, marks]]): signals a process group left by a
 * scheduler or worker that died (its task instance recorded the pgid).
 * With `marks` ({NAME = value}), only when the group is still that try's
 * (group_is_marked).  Returns true when the group was signalled, else
 * false and why ("gone", "not the try's process"). */
static int l_killpg(lua_State *L)
{
    lua_Integer pgid = luaL_checkinteger(L, 1);
    int sig = (int)luaL_optinteger(L, 2, SIGTERM);

    if (pgid <= 1)
        return luaL_argerror(L, 1, "not a process group id");
    if (!lua_isnoneornil(L, 3)) {
        int ours;

        luaL_checktype(L, 3, LUA_TTABLE);
        ours = group_is_marked(L, (pid_t)pgid, 3);
        if (ours != 1) {
            lua_pushboolean(L, 0);
            lua_pushstring(L, ours < 0 ? "gone" : "not the try's process");
            return 2;
        }
    }
    lua_pushboolean(L, kill(-(pid_t)pgid, sig) == 0);
    return 1;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int l_in_engine(lua_State *L)
{
    lua_pushboolean(L, zkf_engine_from_lua(L) != NULL);
    return 1;
}

/* The address only matters: core.sql_null is a light userdata of it. */
static const char sql_null_mark;

void *zkf_lua_sql_null(void)
{
    return (void *)&sql_null_mark;
}

static const luaL_Reg core_funcs[] = {
    {"mem_limit", l_mem_limit},
    {"mem_used", l_mem_used},
    {"log", l_log},
    {"set_log_level", l_set_log_level},
    {"in_engine", l_in_engine},
    {"killpg", l_killpg},
    {"getpid", l_getpid},
    {NULL, NULL}
};

int zkf_lua_open_core(lua_State *L)
{
    zkf_lua_loop(L);    /* the loop (and in plain Lua its owner) first */
    luaL_newlib(L, core_funcs);
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "version");
    zkf_lua_open_loop(L);
    zkf_lua_open_store(L);
    zkf_lua_open_cron(L);
    zkf_lua_open_json(L);
    zkf_lua_open_fs(L);
    zkf_lua_open_watch(L);
    zkf_lua_open_net(L);
    zkf_lua_open_curl(L);
    zkf_lua_open_crypto(L);
    zkf_lua_open_notify(L);
    zkf_lua_open_sqlite(L);
    zkf_lua_open_pg(L);
    lua_pushlightuserdata(L, zkf_lua_sql_null());
    lua_setfield(L, -2, "sql_null");
    zkf_lua_open_probe(L);
    zkf_engine_open_lua(L);
    return 1;
}
