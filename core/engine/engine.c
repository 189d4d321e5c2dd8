/*
 * engine.c - the engine object: its Lua state (with an accounting
 * allocator), its loop, and the entry points a host calls.
 *
 * The policy (scheduler, CLI, API router) is Lua, in lua/zkflow/engine.lua
 * and the modules it requires; they are compiled in (bundle.h).  This file
 * only makes the state, routes the host's calls into it and guarantees that
 * every entry ends its loop turn (so the store's group commit happens).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "engine/bundle.h"
#include "engine/engine.h"
#include "engine/http.h"
#include "lua/lbind.h"
#include "loop/loop.h"

#define ENGINE_KEY "zkflow.engine"
#define LOOP_KEY "zkflow.loop"
#define REPLY_MT "zkflow.Reply"

struct zkf_engine {
    lua_State *L;
    zkf_loop *loop;
    zkf_evhost *evhost;         /* libevent engines only */
    struct event_base *base;    /* borrowed, libevent engines only */
    zkf_host host;              /* zkf_engine_new_host() engines */
    struct zkf_api *api;
    size_t mem_used;
    size_t mem_limit;           /* 0: none */
    zkf_log_fn log;
    void *log_ud;
    int log_min;                /* messages below this level are dropped */
    zkf_done_fn done;
    void *done_ud;
    int depth;                  /* >0 while inside an entry point */
    int started;
    char errmsg[1024];
};

const char *zkf_strerror(int rc)
{
    switch (rc) {
    case ZKF_OK: return "ok";
    case ZKF_ENOMEM: return "out of memory";
    case ZKF_EINVAL: return "invalid argument";
    case ZKF_ELUA: return "lua error";
    case ZKF_ESTORE: return "store error";
    case ZKF_ERECURSIVE: return "recursive call from inside an engine callback";
    case ZKF_EIO: return "i/o error";
    case ZKF_ESTATE: return "not allowed in this state";
    default: return "unknown error";
    }
}

static void set_err(zkf_engine *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(e->errmsg, sizeof(e->errmsg), fmt, ap);
    va_end(ap);
}

const char *zkf_errmsg(const zkf_engine *e)
{
    return e->errmsg;
}

/* ---- allocator -------------------------------------------------------- */

/* Counts every byte of the state, so a DAG file's load can be capped
 * (core.mem_limit) without a process-wide limit. */
static void *engine_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    zkf_engine *e = ud;
    size_t old = ptr ? osize : 0;

    if (nsize == 0) {
        free(ptr);
        e->mem_used -= old;
        return NULL;
    }
    if (e->mem_limit && nsize > old && e->mem_used + (nsize - old) > e->mem_limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        e->mem_used = e->mem_used - old + nsize;
    return p;
}

void zkf_engine_mem_limit(zkf_engine *e, size_t limit)
{
    e->mem_limit = limit ? e->mem_used + limit : 0;
}

size_t zkf_engine_mem_used(const zkf_engine *e)
{
    return e->mem_used;
}

/* ---- logging ---------------------------------------------------------- */

void zkf_engine_log(zkf_engine *e, const char *level, const char *msg)
{
    int lv = 1;

    if (e->log == NULL)
        return;
    if (strcmp(level, "debug") == 0)
        lv = 0;
    else if (strcmp(level, "warn") == 0)
        lv = 2;
    else if (strcmp(level, "error") == 0)
        lv = 3;
    if (lv < e->log_min)
        return;
    e->log(e->log_ud, lv, msg);
}

void zkf_engine_log_min(zkf_engine *e, int level)
{
    e->log_min = level < 0 ? 0 : level > 3 ? 3 : level;
}

void zkf_engine_set_log(zkf_engine *e, zkf_log_fn fn, void *ud)
{
    e->log = fn;
    e->log_ud = ud;
}

zkf_engine *zkf_engine_from_lua(lua_State *L)
{
    zkf_engine *e;

    lua_getfield(L, LUA_REGISTRYINDEX, ENGINE_KEY);
    e = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return e;
}

struct event_base *zkf_engine_base(zkf_engine *e)
{
    return e->base;
}

/* ---- the Lua state ---------------------------------------------------- */

/* package.searchers entry: the compiled-in standard library. */
static int bundle_searcher(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    size_t len;
    const char *src = zkf_bundle_find(name, &len);

    if (src == NULL) {
        lua_pushfstring(L, "no compiled-in module '%s'", name);
        return 1;
    }
    lua_pushfstring(L, "@zkflow/%s.lua", name);
    if (luaL_loadbuffer(L, src, len, lua_tostring(L, -1)) != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, -2);
    return 2;
}

static int open_core(lua_State *L)
{
    return zkf_lua_open_core(L);
}

static int make_state(zkf_engine *e)
{
    lua_State *L = lua_newstate(engine_alloc, e);

    if (L == NULL) {
        set_err(e, "out of memory creating the Lua state");
        return ZKF_ENOMEM;
    }
    e->L = L;
    luaL_openlibs(L);
    lua_pushlightuserdata(L, e);
    lua_setfield(L, LUA_REGISTRYINDEX, ENGINE_KEY);
    lua_pushlightuserdata(L, e->loop);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOP_KEY);

    /* package.searchers[2] = bundle_searcher (before the file searchers) */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchers");
    lua_Integer n = (lua_Integer)luaL_len(L, -1);
    for (lua_Integer i = n; i >= 2; i--) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushcfunction(L, bundle_searcher);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 1);
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, open_core);
    lua_setfield(L, -2, "zkflow.core");
    lua_pop(L, 2);
    return ZKF_OK;
}

/* Pushes require("zkflow.engine")[fname]; returns 0 or -1 (error set). */
static int push_engine_fn(zkf_engine *e, const char *fname)
{
    lua_State *L = e->L;

    lua_getglobal(L, "require");
    lua_pushliteral(L, "zkflow.engine");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        set_err(e, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_getfield(L, -1, fname);
    lua_remove(L, -2);
    return 0;
}

/* Calls the function below `nargs` arguments; the error text goes to
 * errmsg.  Ends the loop turn: an entry from the host is a turn of its own. */
static int call(zkf_engine *e, int nargs, int nres)
{
    int rc = lua_pcall(e->L, nargs, nres, 0);

    if (rc != LUA_OK) {
        const char *msg = lua_tostring(e->L, -1);
        set_err(e, "%s", msg ? msg : "(error object is not a string)");
        lua_pop(e->L, 1);
    }
    zkf_loop_end_turn(e->loop);
    return rc == LUA_OK ? ZKF_OK : ZKF_ELUA;
}

static zkf_engine *engine_alloc_common(char *err, size_t errlen)
{
    zkf_engine *e = calloc(1, sizeof(*e));

    if (e == NULL && err != NULL)
        snprintf(err, errlen, "out of memory");
    return e;
}

static zkf_engine *engine_finish(zkf_engine *e, char *err, size_t errlen)
{
    if (e->loop == NULL || make_state(e) != ZKF_OK) {
        if (err != NULL)
            snprintf(err, errlen, "%s", e->errmsg[0] ? e->errmsg : "out of memory");
        zkf_engine_free(e);
        return NULL;
    }
    return e;
}

zkf_engine *zkf_engine_new(struct event_base *base, char *err, size_t errlen)
{
    zkf_engine *e = engine_alloc_common(err, errlen);

    if (e == NULL)
        return NULL;
    e->base = base;
    e->evhost = zkf_evhost_new(base);
    if (e->evhost != NULL) {
        e->loop = zkf_loop_new(zkf_evhost_hooks(e->evhost));
        if (e->loop != NULL)
            zkf_evhost_attach(e->evhost, e->loop);
    }
    return engine_finish(e, err, errlen);
}

zkf_engine *zkf_engine_new_host(const zkf_host *host, char *err,
                                size_t errlen)
{
    zkf_engine *e = engine_alloc_common(err, errlen);
    zkf_loop_hooks hooks;

    if (e == NULL)
        return NULL;
    e->host = *host;
    hooks.watch_fd = host->watch_fd;
    hooks.set_timer = host->set_timer;
    hooks.host = host->ud;
    e->loop = zkf_loop_new(&hooks);
    return engine_finish(e, err, errlen);
}

int zkf_engine_on_fd(zkf_engine *e, int fd, int events)
{
    if (e->depth)
        return ZKF_ERECURSIVE;
    return zkf_loop_on_fd(e->loop, fd, events) == 0 ? ZKF_OK : ZKF_ERECURSIVE;
}

int zkf_engine_on_timer(zkf_engine *e)
{
    if (e->depth)
        return ZKF_ERECURSIVE;
    return zkf_loop_on_timer(e->loop) == 0 ? ZKF_OK : ZKF_ERECURSIVE;
}

/* ---- options and entry points ----------------------------------------- */

static const char *const option_names[] = {
    "dags", "db", "db_sync", "root", "log_dir", "zk", "zk_auth", "zk_acl",
    "scheduler", "api_auth", "dag_load_timeout", "dag_load_instructions",
    "dag_load_memory", NULL
};

int zkf_engine_setopt(zkf_engine *e, const char *name, const char *value)
{
    lua_State *L = e->L;
    int known = 0;

    for (int i = 0; option_names[i]; i++)
        if (strcmp(option_names[i], name) == 0)
            known = 1;
    if (!known) {
        set_err(e, "unknown option '%s'", name);
        return ZKF_EINVAL;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "zkflow.options");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, "zkflow.options");
    }
    if (value)
        lua_pushstring(L, value);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
    return ZKF_OK;
}

static void push_options(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "zkflow.options");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
}

int zkf_engine_start(zkf_engine *e)
{
    int rc;

    if (e->depth)
        return ZKF_ERECURSIVE;
    if (e->started) {
        set_err(e, "engine already started");
        return ZKF_ESTATE;
    }
    if (push_engine_fn(e, "start") != 0)
        return ZKF_ELUA;
    push_options(e->L);
    e->depth++;
    rc = call(e, 1, 0);
    e->depth--;
    if (rc == ZKF_OK)
        e->started = 1;
    return rc;
}

static int l_main_done(lua_State *L)
{
    zkf_engine *e = lua_touserdata(L, lua_upvalueindex(1));
    int code = (int)luaL_optinteger(L, 1, 0);
    zkf_done_fn done = e->done;

    e->done = NULL;
    if (done != NULL)
        done(e->done_ud, code);
    return 0;
}

int zkf_engine_main(zkf_engine *e, int argc, char **argv, zkf_done_fn done,
                    void *ud)
{
    lua_State *L = e->L;
    int rc;

    if (e->depth)
        return ZKF_ERECURSIVE;
    if (push_engine_fn(e, "main") != 0)
        return ZKF_ELUA;
    e->done = done;
    e->done_ud = ud;
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushlightuserdata(L, e);
    lua_pushcclosure(L, l_main_done, 1);
    push_options(L);
    e->depth++;
    rc = call(e, 3, 0);
    e->depth--;
    return rc;
}

int zkf_engine_shutdown(zkf_engine *e)
{
    int rc;

    if (e->depth)
        return ZKF_ERECURSIVE;
    if (push_engine_fn(e, "shutdown") != 0)
        return ZKF_ELUA;
    e->depth++;
    rc = call(e, 0, 0);
    e->depth--;
    return rc;
}

/* ---- HTTP entry --------------------------------------------------------- */

typedef struct reply_box {
    zkf_reply_fn fn;            /* the public callback, or */
    zkf_reply_ex_fn fn_ex;      /* the one that takes headers too */
    void *ud;
} reply_box;

static void reply_once(reply_box *b, int status, const char *ctype,
                       const char *const *headers, const char *body,
                       size_t len)
{
    zkf_reply_fn fn = b->fn;
    zkf_reply_ex_fn fn_ex = b->fn_ex;

    b->fn = NULL;
    b->fn_ex = NULL;
    if (fn_ex != NULL)
        fn_ex(b->ud, status, ctype, headers, body, len);
    else if (fn != NULL)
        fn(b->ud, status, ctype, body, len);
}

/* The most headers an answer carries besides its type. */
#define MAX_REPLY_HEADERS 16

/* reply(status, content_type, body [, {name, value, ...}]) */
static int l_reply(lua_State *L)
{
    reply_box *b = luaL_checkudata(L, lua_upvalueindex(1), REPLY_MT);
    int status = (int)luaL_checkinteger(L, 1);
    const char *ctype = luaL_optstring(L, 2, "application/json");
    size_t len = 0;
    const char *body = luaL_optlstring(L, 3, "", &len);
    const char *headers[2 * MAX_REPLY_HEADERS + 1];
    size_t n = 0;

    if (lua_type(L, 4) == LUA_TTABLE) {
        lua_Integer count = luaL_len(L, 4);

        for (lua_Integer i = 1; i + 1 <= count && n < 2 * MAX_REPLY_HEADERS;
             i += 2) {
            const char *name, *value;

            /* strings only: the table keeps them alive until the call
             * ends (a number converted here would not be) */
            name = lua_rawgeti(L, 4, i) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            value = lua_rawgeti(L, 4, i + 1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            lua_pop(L, 2);
            if (name == NULL || value == NULL)
                continue;
            headers[n++] = name;
            headers[n++] = value;
        }
    }
    headers[n] = NULL;
    reply_once(b, status, ctype, n > 0 ? headers : NULL, body, len);
    return 0;
}

/* A request whose handler lost its reply (an error after a yield) still
 * gets one, exactly once. */
static int reply_gc(lua_State *L)
{
    reply_box *b = luaL_checkudata(L, 1, REPLY_MT);
    static const char body[] = "{\"error\":\"request was dropped\"}";

    reply_once(b, 500, "application/json", NULL, body, sizeof(body) - 1);
    return 0;
}

int zkf_engine_http(zkf_engine *e, const char *method, const char *uri,
                    const char *body, size_t len, zkf_reply_fn reply,
                    void *ud)
{
    return zkf_engine_http_headers(e, method, uri, NULL, body, len, reply,
                                   ud);
}

/* The headers as a Lua table {lower-case name = value}; a repeated header
 * keeps its values joined by ", " as RFC 9110 allows. */
static void push_headers(lua_State *L, const char *const *headers)
{
    luaL_Buffer name;

    lua_newtable(L);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i += 2) {
        const char *n = headers[i], *v = headers[i + 1] ? headers[i + 1] : "";

        luaL_buffinit(L, &name);
        for (const char *c = n; *c; c++)
            luaL_addchar(&name, (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c));
        luaL_pushresult(&name);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, v);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, v);
        }
        lua_rawset(L, -3);
    }
}

static int http_request(zkf_engine *e, const char *method, const char *uri,
                        const char *const *headers, const char *body,
                        size_t len, zkf_reply_fn reply,
                        zkf_reply_ex_fn reply_ex, void *ud)
{
    lua_State *L = e->L;
    reply_box *b;
    int rc;

    if (e->depth)
        return ZKF_ERECURSIVE;
    if (push_engine_fn(e, "http") != 0) {
        static const char msg[] = "{\"error\":\"engine failed to load\"}";
        if (reply_ex != NULL)
            reply_ex(ud, 500, "application/json", NULL, msg, sizeof(msg) - 1);
        else
            reply(ud, 500, "application/json", msg, sizeof(msg) - 1);
        return ZKF_ELUA;
    }
    lua_pushstring(L, method);
    lua_pushstring(L, uri);
    if (body != NULL)
        lua_pushlstring(L, body, len);
    else
        lua_pushnil(L);
    b = lua_newuserdatauv(L, sizeof(*b), 0);
    b->fn = reply;
    b->fn_ex = reply_ex;
    b->ud = ud;
    if (luaL_newmetatable(L, REPLY_MT)) {
        lua_pushcfunction(L, reply_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_insert(L, -6);   /* keep a reference below the call */
    lua_pushcclosure(L, l_reply, 1);
    push_headers(L, headers);
    e->depth++;
    rc = call(e, 5, 0);
    e->depth--;
    b = lua_touserdata(L, -1);
    if (rc != ZKF_OK) {
        char msg[1200];
        int n = snprintf(msg, sizeof(msg), "{\"error\":\"internal error\"}");
        reply_once(b, 500, "application/json", NULL, msg, (size_t)n);
    }
    lua_pop(L, 1);
    return rc;
}

int zkf_engine_http_headers(zkf_engine *e, const char *method,
                            const char *uri, const char *const *headers,
                            const char *body, size_t len, zkf_reply_fn reply,
                            void *ud)
{
    return http_request(e, method, uri, headers, body, len, reply, NULL, ud);
}

int zkf_engine_http_ex(zkf_engine *e, const char *method, const char *uri,
                       const char *const *headers, const char *body,
                       size_t len, zkf_reply_ex_fn reply, void *ud)
{
    return http_request(e, method, uri, headers, body, len, NULL, reply, ud);
}

/* ---- engine-only Lua functions ----------------------------------------- */

static int l_api_listen(lua_State *L)
{
    zkf_engine *e = zkf_engine_from_lua(L);
    const char *addr = luaL_checkstring(L, 1);
    int port = (int)luaL_checkinteger(L, 2);
    char err[256];

    if (e->base == NULL)
        return luaL_error(L, "api_listen: this host has no libevent base");
    if (e->api != NULL)
        return luaL_error(L, "api_listen: already listening");
    e->api = zkf_api_listen(e, addr, port, err, sizeof(err));
    if (e->api == NULL) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_api_close(lua_State *L)
{
    zkf_engine *e = zkf_engine_from_lua(L);

    if (e->api != NULL) {
        zkf_api_close(e->api);
        e->api = NULL;
    }
    return 0;
}

void zkf_engine_open_lua(lua_State *L)
{
    if (zkf_engine_from_lua(L) == NULL)
        return;
    lua_pushcfunction(L, l_api_listen);
    lua_setfield(L, -2, "api_listen");
    lua_pushcfunction(L, l_api_close);
    lua_setfield(L, -2, "api_close");
}

void zkf_engine_free(zkf_engine *e)
{
    if (e == NULL)
        return;
    if (e->L != NULL && e->depth == 0) {
        /* Kill task process groups, commit: the Lua side knows them. */
        if (push_engine_fn(e, "close") == 0)
            call(e, 0, 0);
    }
    if (e->api != NULL)
        zkf_api_close(e->api);
    if (e->L != NULL)
        lua_close(e->L);
    if (e->loop != NULL)
        zkf_loop_free(e->loop);
    if (e->evhost != NULL)
        zkf_evhost_free(e->evhost);
    free(e);
}
