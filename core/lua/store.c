/*
 * lua/store.c - `core.store(path [, opts])` and `core.store_zk(hosts
 * [, opts])`: the store as Lua sees it.
 *
 * Results come back as return values.  The SQLite backend completes
 * before its call returns; the completion pushes them straight onto the
 * caller's stack (store/sqlite.c calls it last, with its state consistent,
 * so a memory error raised while pushing unwinds safely).  The ZooKeeper
 * backend completes on a later loop turn: a caller inside a coroutine
 * yields (lua_yieldk) and the completion pushes the results onto the
 * coroutine and resumes it from the loop; a caller that cannot yield
 * (plain Lua's main thread) blocks in zkf_zk_wait(), which runs only that
 * call's completions.  Failures are `nil, "ZNONODE"`; misuse raises.
 * Watch functions live in the registry until they fire or the store
 * closes, and run on the main thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua/lbind.h"
#include "store/store.h"
#include "zk/zk.h"

#define STORE_MT "zkflow.Store"

typedef struct lstore {
    zkf_store *st;
    lua_State *main;           /* for on_session */
    int session_ref;           /* on_session function, or LUA_NOREF */
    int wait_ms;               /* zk: longest blocking wait */
    int collecting;            /* in __gc: the state is closing */
    int commit_ref;            /* on_commit function, or LUA_NOREF */
    lua_State *flushing;       /* the thread inside st:flush(), or NULL */
    int failing;               /* the last commit failed */
    char name[160];            /* the file, for the log */
} lstore;

/* The Lua side of one watch: the function's registry ref. */
struct lwatch {
    lua_State *L;              /* the main thread */
    int ref;
};

/* What a completion pushes depends on the call. */
enum { R_PATH, R_GET, R_STAT, R_TRUE, R_EXISTS, R_CHILDREN, R_MULTI,
       R_CONNECT };

typedef struct lwatch lwatch;

/* One call in flight.  On the heap, because an asynchronous completion
 * outlives the C frame that made the call. */
typedef struct call {
    lua_State *L;              /* the calling thread: results go there */
    int kind;
    int done;
    int nret;
    int watch_set;             /* the store took the watch */
    lwatch *w;                 /* ours until the store takes it */
    int yielded;               /* L is a coroutine parked in lua_yieldk */
    int thread_ref;            /* anchors L while it is parked */
    int abandoned;             /* a blocking wait gave up: just free */
    int base;                  /* L's stack top when it yielded */
    lstore *ls;                /* R_CONNECT: the handle being opened */
    int ud_ref;                /* R_CONNECT: its userdata */
    zkf_loop *loop;
} call;

static lstore *check_store(lua_State *L)
{
    lstore *s = luaL_checkudata(L, 1, STORE_MT);
    if (!s->st)
        luaL_argerror(L, 1, "store is closed");
    return s;
}

/* Reads argument `i` as a path.  An embedded NUL cannot name a znode: that
 * is ZBADARGUMENTS, as for any other invalid path, not misuse. */
static const char *check_path(lua_State *L, int i, int *nul)
{
    size_t len;
    const char *p = luaL_checklstring(L, i, &len);
    *nul = strlen(p) != len;
    return p;
}

static void push_stat(lua_State *L, const zkf_stat *st)
{
    lua_createtable(L, 0, 11);
    lua_pushinteger(L, st->czxid);
    lua_setfield(L, -2, "czxid");
    lua_pushinteger(L, st->mzxid);
    lua_setfield(L, -2, "mzxid");
    lua_pushinteger(L, st->pzxid);
    lua_setfield(L, -2, "pzxid");
    lua_pushinteger(L, st->ctime);
    lua_setfield(L, -2, "ctime");
    lua_pushinteger(L, st->mtime);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, st->version);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, st->cversion);
    lua_setfield(L, -2, "cversion");
    lua_pushinteger(L, st->aversion);
    lua_setfield(L, -2, "aversion");
    lua_pushinteger(L, st->ephemeral_owner);
    lua_setfield(L, -2, "ephemeral_owner");
    lua_pushinteger(L, st->data_length);
    lua_setfield(L, -2, "data_length");
    lua_pushinteger(L, st->num_children);
    lua_setfield(L, -2, "num_children");
}

static int push_error(lua_State *L, int rc)
{
    lua_pushnil(L);
    lua_pushstring(L, zkf_store_errname(rc));
    return 2;
}

static void push_multi(lua_State *L, const zkf_store_result *r)
{
    size_t i;

    lua_createtable(L, (int)r->n_results, 0);
    for (i = 0; i < r->n_results; i++) {
        const zkf_store_op_result *o = &r->results[i];
        if (o->path)
            lua_pushstring(L, o->path);
        else if (o->stat.mzxid != 0)
            push_stat(L, &o->stat);
        else
            lua_pushboolean(L, 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static void drop_watch(call *c);
static void resume_call(call *c);

static void push_result(call *c, const zkf_store_result *r)
{
    lua_State *L = c->L;
    size_t i;

    if (c->kind == R_CONNECT) {
        if (r->rc == ZKF_ZOK || r->rc == ZKF_ZNONODE) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, c->ud_ref);
            c->nret = 1;
        } else {
            zkf_store *st = c->ls->st;
            lua_pushnil(L);
            lua_pushfstring(L, "%s: %s", zkf_store_errname(r->rc),
                            zkf_store_errmsg(st));
            c->nret = 2;
            /* Allowed from inside the store's own completion. */
            c->ls->st = NULL;
            zkf_store_free(st);
        }
        luaL_unref(L, LUA_REGISTRYINDEX, c->ud_ref);
        return;
    }
    if (r->rc != ZKF_ZOK) {
        if (c->kind == R_EXISTS && r->rc == ZKF_ZNONODE) {
            lua_pushnil(L);
            c->nret = 1;
            return;
        }
        c->nret = push_error(L, r->rc);
        if (c->kind == R_MULTI && r->failed_index >= 0) {
            lua_pushinteger(L, (lua_Integer)r->failed_index + 1);
            c->nret = 3;
        }
        return;
    }
    c->nret = 1;
    switch (c->kind) {
    case R_PATH:
        lua_pushstring(L, r->path);
        break;
    case R_GET:
        lua_pushlstring(L, r->data ? r->data : "", r->data_len);
        push_stat(L, r->stat);
        c->nret = 2;
        break;
    case R_STAT:
    case R_EXISTS:
        push_stat(L, r->stat);
        break;
    case R_TRUE:
        lua_pushboolean(L, 1);
        break;
    case R_CHILDREN:
        lua_createtable(L, (int)r->n_children, 0);
        for (i = 0; i < r->n_children; i++) {
            lua_pushstring(L, r->children[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        break;
    case R_MULTI:
        push_multi(L, r);
        break;
    }
}

static void resume_later(zkf_timer *t, void *arg)
{
    (void)t;
    resume_call(arg);
}

static void on_done(const zkf_store_result *r, void *arg)
{
    call *c = arg;

    c->done = 1;
    c->watch_set = r->rc == ZKF_ZOK ||
                   (c->kind == R_EXISTS && r->rc == ZKF_ZNONODE);
    drop_watch(c);
    if (c->abandoned) {
        if (c->kind == R_CONNECT)
            luaL_unref(c->L, LUA_REGISTRYINDEX, c->ud_ref);
        free(c);
        return;
    }
    push_result(c, r);
    if (!c->yielded)
        return;
    /* A store being closed completes inside close() or __gc: resume on
     * a later turn, not re-entrantly there.  Collected with its caller
     * parked (only lua_close() collects a store a coroutine still waits
     * on), there is no later turn: the call goes with the state. */
    if (r->rc == ZKF_ZCLOSING && c->ls && c->ls->collecting) {
        free(c);
        return;
    }
    if (r->rc == ZKF_ZCLOSING &&
        zkf_timer_start(c->loop, 0, resume_later, c) != NULL)
        return;
    resume_call(c);
}

/* Resumes the coroutine parked in a call; from the loop. */
static void resume_call(call *c)
{
    lua_State *co = c->L;
    int nres = 0, status, ref = c->thread_ref;
    lua_State *L;

    lua_rawgeti(co, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    L = lua_tothread(co, -1);
    lua_pop(co, 1);
    /* The continuation frees `c`. */
    status = lua_resume(co, L, c->nret, &nres);
    if (status == LUA_OK || status == LUA_YIELD) {
        lua_pop(co, nres);
    } else {
        const char *msg = lua_tostring(co, -1);
        zkf_lua_log(L, "error", msg ? msg : "coroutine failed");
        lua_pop(co, 1);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

static int call_cont(lua_State *L, int status, lua_KContext ctx)
{
    call *c = (call *)ctx;
    int n;

    (void)status;
    if (!c->done) {
        /* Somebody else resumed us: keep waiting for our answer. */
        lua_settop(L, c->base);
        return lua_yieldk(L, 0, ctx, call_cont);
    }
    n = c->nret;
    free(c);
    return n;
}

static call *call_new(lua_State *L, lstore *s, int kind, lwatch *w)
{
    call *c = calloc(1, sizeof *c);

    if (!c) {
        if (w) {
            c = &(call){ .w = w };
            drop_watch(c);
        }
        luaL_error(L, "store: out of memory");
        return NULL;
    }
    c->L = L;
    c->kind = kind;
    c->w = w;
    c->thread_ref = LUA_NOREF;
    c->ud_ref = LUA_NOREF;
    c->ls = s;
    c->loop = zkf_lua_loop(L);
    return c;
}

/* Finishes a call: the results, or the refusal, or a wait for them. */
static int finish(lua_State *L, lstore *s, call *c, int rc)
{
    zkf_zk *zk;
    int n;

    if (rc != ZKF_ZOK) {
        drop_watch(c);
        if (c->kind == R_CONNECT)
            luaL_unref(L, LUA_REGISTRYINDEX, c->ud_ref);
        free(c);
        return push_error(L, rc);
    }
    if (c->done) {
        n = c->nret;
        free(c);
        return n;
    }
    if (lua_isyieldable(L)) {
        c->base = lua_gettop(L);
        lua_pushthread(L);
        c->thread_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        c->yielded = 1;
        return lua_yieldk(L, 0, (lua_KContext)c, call_cont);
    }
    zk = zkf_store_zk_client(s->st);
    if (zk && zkf_zk_wait(zk, c, &c->done, s->wait_ms) == 0 && c->done) {
        n = c->nret;
        free(c);
        return n;
    }
    if (c->done) {
        n = c->nret;
        free(c);
        return n;
    }
    c->abandoned = 1;
    return luaL_error(L, "store: no answer within %d ms", s->wait_ms);
}

/* ---- watches --------------------------------------------------------- */

/* Runs protected (through zkf_lua_pcall): builds the event and calls the
 * watch function.  Upvalue-free: fn, type, path are its arguments. */
static int call_watch(lua_State *L)
{
    int type = (int)lua_tointeger(L, 2);
    const char *path = lua_touserdata(L, 3);

    lua_settop(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, zkf_store_watchname(type));
    lua_setfield(L, -2, "type");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_call(L, 1, 0);
    return 0;
}

static void on_watch(int type, const char *path, void *arg)
{
    lwatch *w = arg;
    lua_State *L = w->L;
    int ref = w->ref;

    free(w);
    if (type == ZKF_WATCH_CLOSED || !lua_checkstack(L, 4)) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return;
    }
    /* Nothing here allocates outside the protected call: pushing a light
     * C function, a registry value, an integer and a light userdata. */
    lua_pushcfunction(L, call_watch);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    lua_pushinteger(L, type);
    lua_pushlightuserdata(L, (void *)path);
    zkf_lua_pcall(L, 3);
}

/* Watches may be functions or callable objects (busted's spies). */
static void check_callable(lua_State *L, int i)
{
    if (lua_isnoneornil(L, i) || lua_isfunction(L, i))
        return;
    if (luaL_getmetafield(L, i, "__call") != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_typeerror(L, i, "function");
}

/* Makes the Lua watch for argument `i` (a function or nil).  Returns NULL
 * when there is none. */
static lwatch *make_watch(lua_State *L, int i)
{
    lwatch *w;
    lua_State *mainth;
    int ref;

    if (lua_isnoneornil(L, i))
        return NULL;
    check_callable(L, i);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    mainth = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, i);
    ref = luaL_ref(L, LUA_REGISTRYINDEX);
    w = malloc(sizeof *w);
    if (!w) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        luaL_error(L, "store: out of memory");
        return NULL;
    }
    w->L = mainth;
    w->ref = ref;
    return w;
}

/* A watch the store did not take (the call failed) is ours to drop. */
static void drop_watch(call *c)
{
    lwatch *w = c->w;

    c->w = NULL;
    if (w && !c->watch_set) {
        luaL_unref(w->L, LUA_REGISTRYINDEX, w->ref);
        free(w);
    }
}

/* ---- methods --------------------------------------------------------- */

static int flag(lua_State *L, int t, const char *name)
{
    int v;

    lua_getfield(L, t, name);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static int create_flags(lua_State *L, int t)
{
    int flags = 0;

    if (flag(L, t, "ephemeral"))
        flags |= ZKF_STORE_EPHEMERAL;
    if (flag(L, t, "sequential"))
        flags |= ZKF_STORE_SEQUENTIAL;
    if (flag(L, t, "parents"))
        flags |= ZKF_STORE_PARENTS;
    return flags;
}

static int l_create(lua_State *L)
{
    lstore *s = check_store(L);
    int nul, flags = 0, rc;
    const char *path = check_path(L, 2, &nul);
    size_t len = 0;
    const char *data = luaL_optlstring(L, 3, "", &len);
    call *c;

    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        flags = create_flags(L, 4);
    }
    if (nul)
        return push_error(L, ZKF_ZBADARGUMENTS);
    c = call_new(L, s, R_PATH, NULL);
    rc = zkf_store_create(s->st, path, data, len, flags, on_done, c);
    return finish(L, s, c, rc);
}

static int l_get(lua_State *L)
{
    lstore *s = check_store(L);
    int nul, rc;
    const char *path = check_path(L, 2, &nul);
    call *c;
    lwatch *w;

    check_callable(L, 3);
    if (nul)
        return push_error(L, ZKF_ZBADARGUMENTS);
    w = make_watch(L, 3);
    c = call_new(L, s, R_GET, w);
    rc = zkf_store_get(s->st, path, w ? on_watch : NULL, w, on_done, c);
    return finish(L, s, c, rc);
}

static int l_set(lua_State *L)
{
    lstore *s = check_store(L);
    int nul, rc;
    const char *path = check_path(L, 2, &nul);
    size_t len = 0;
    const char *data = luaL_optlstring(L, 3, "", &len);
    lua_Integer version = luaL_optinteger(L, 4, -1);
    call *c;

    luaL_argcheck(L, version >= -1 && version <= INT32_MAX, 4,
                  "version must be -1 or a version number");
    if (nul)
        return push_error(L, ZKF_ZBADARGUMENTS);
    c = call_new(L, s, R_STAT, NULL);
    rc = zkf_store_set(s->st, path, data, len, (int)version, on_done, c);
    return finish(L, s, c, rc);
}

/* delete(path [, version [, {recursive=}]]); the options may also take
 * the version's place. */
static int l_delete(lua_State *L)
{
    lstore *s = check_store(L);
    int nul, rc, flags = 0, opt = 4;
    const char *path = check_path(L, 2, &nul);
    lua_Integer version = -1;
    call *c;

    if (lua_istable(L, 3))
        opt = 3;
    else
        version = luaL_optinteger(L, 3, -1);
    luaL_argcheck(L, version >= -1 && version <= INT32_MAX, 3,
                  "version must be -1 or a version number");
    if (!lua_isnoneornil(L, opt)) {
        luaL_checktype(L, opt, LUA_TTABLE);
        if (flag(L, opt, "recursive"))
            flags |= ZKF_STORE_RECURSIVE;
    }
    if (nul)
        return push_error(L, ZKF_ZBADARGUMENTS);
    c = call_new(L, s, R_TRUE, NULL);
    rc = zkf_store_delete(s->st, path, (int)version, flags, on_done, c);
    return finish(L, s, c, rc);
}

static int l_exists(lua_State *L)
{
    lstore *s = check_store(L);
    int nul, rc;
    const char *path = check_path(L, 2, &nul);
    call *c;
    lwatch *w;

    check_callable(L, 3);
    if (nul)
        return push_error(L, ZKF_ZBADARGUMENTS);
    w = make_watch(L, 3);
    c = call_new(L, s, R_EXISTS, w);
    rc = zkf_store_exists(s->st, path, w ? on_watch : NULL, w, on_done, c);
    return finish(L, s, c, rc);
}

static int l_children(lua_State *L)
{
    lstore *s = check_store(L);
    int nul, rc;
    const char *path = check_path(L, 2, &nul);
    call *c;
    lwatch *w;

    check_callable(L, 3);
    if (nul)
        return push_error(L, ZKF_ZBADARGUMENTS);
    w = make_watch(L, 3);
    c = call_new(L, s, R_CHILDREN, w);
    rc = zkf_store_children(s->st, path, w ? on_watch : NULL, w, on_done,
                            c);
    return finish(L, s, c, rc);
}

/* Reads ops[i] into `op`.  The strings stay valid while the ops table is
 * on the stack.  Returns 0, or -1 for a path with an embedded NUL. */
static int read_op(lua_State *L, int i, zkf_store_op *op)
{
    static const char *const names[] = {"create", "set", "delete", "check",
                                         NULL};
    static const int types[] = {ZKF_STORE_OP_CREATE, ZKF_STORE_OP_SET,
                                ZKF_STORE_OP_DELETE, ZKF_STORE_OP_CHECK};
    const char *kind;
    size_t len = 0;
    int t, k, bad = 0;

    lua_rawgeti(L, 2, i);
    if (!lua_istable(L, -1))
        return luaL_error(L, "bad argument #1 to 'multi' (op %d is not a"
                          " table)", i);
    t = lua_gettop(L);
    lua_getfield(L, t, "op");
    kind = lua_tostring(L, -1);
    for (k = 0; names[k]; k++)
        if (kind && strcmp(kind, names[k]) == 0)
            break;
    if (!names[k])
        return luaL_error(L, "bad argument #1 to 'multi' (op %d: 'op' must"
                          " be create, set, delete or check)", i);
    lua_pop(L, 1);
    memset(op, 0, sizeof *op);
    op->type = types[k];
    lua_getfield(L, t, "path");
    op->path = lua_tolstring(L, -1, &len);
    if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "bad argument #1 to 'multi' (op %d: 'path'"
                          " must be a string)", i);
    bad = strlen(op->path) != len;
    lua_pop(L, 1);
    lua_getfield(L, t, "data");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "bad argument #1 to 'multi' (op %d: 'data'"
                              " must be a string)", i);
        op->data = lua_tolstring(L, -1, &op->data_len);
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "version");
    op->version = lua_isnil(L, -1) ? -1 : (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (op->type == ZKF_STORE_OP_CREATE)
        op->flags = create_flags(L, t);
    else if (op->type == ZKF_STORE_OP_DELETE && flag(L, t, "recursive"))
        op->flags = ZKF_STORE_RECURSIVE;
    lua_pop(L, 1);
    return bad ? -1 : 0;
}

static int l_multi(lua_State *L)
{
    lstore *s = check_store(L);
    zkf_store_op *ops;
    lua_Integer n, i;
    int rc, bad = 0;
    call *c;

    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    n = luaL_len(L, 2);
    /* A userdata, so that a raised error frees it with the stack. */
    ops = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *ops, 0);
    for (i = 1; i <= n; i++)
        if (read_op(L, (int)i, &ops[i - 1]) < 0 && !bad)
            bad = (int)i;
    if (bad) {
        push_error(L, ZKF_ZBADARGUMENTS);
        lua_pushinteger(L, bad);
        return 3;
    }
    c = call_new(L, s, R_MULTI, NULL);
    rc = zkf_store_multi(s->st, ops, (size_t)n, on_done, c);
    return finish(L, s, c, rc);
}

/* Every failed commit is logged with SQLite's message, and the first
 * good one after failures too; then the on_commit function, if any, hears
 * it: on the thread inside st:flush() when that made the commit, else
 * (the end-of-turn commit) on the main thread.  Not while closing. */
static void on_commit(int rc, const char *msg, void *arg)
{
    lstore *s = arg;
    lua_State *L = s->flushing ? s->flushing : s->main;
    char line[512];

    if (rc != ZKF_ZOK) {
        snprintf(line, sizeof line, "store %s: commit failed, the writes "
                 "of this turn are rolled back: %s", s->name,
                 msg && *msg ? msg : zkf_store_errname(rc));
        zkf_lua_log(L, "error", line);
        s->failing = 1;
    } else if (s->failing) {
        s->failing = 0;
        snprintf(line, sizeof line, "store %s: commits again", s->name);
        zkf_lua_log(L, "warn", line);
    }
    if (s->commit_ref == LUA_NOREF || !s->st || s->collecting)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->commit_ref);
    if (rc == ZKF_ZOK) {
        lua_pushboolean(L, 1);
        lua_pushnil(L);
    } else {
        lua_pushnil(L);
        lua_pushstring(L, msg && *msg ? msg : zkf_store_errname(rc));
    }
    zkf_lua_pcall(L, 2);
}

/* st:on_commit(fn): fn(true) after each commit that had writes, fn(nil,
 * message) after one that failed (its writes are rolled back); nil
 * removes it.  Embedded store only: returns false elsewhere. */
static int l_on_commit(lua_State *L)
{
    lstore *s = check_store(L);

    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    if (strcmp(s->st->vt->name, "sqlite") != 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (s->commit_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->commit_ref);
        s->commit_ref = LUA_NOREF;
    }
    if (!lua_isnoneornil(L, 2)) {
        lua_pushvalue(L, 2);
        s->commit_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* st:healthy() -> true, or false and the last commit's error: whether the
 * store commits (the embedded store on a full disk does not). */
static int l_healthy(lua_State *L)
{
    lstore *s = check_store(L);

    lua_pushboolean(L, !s->failing);
    if (!s->failing)
        return 1;
    lua_pushstring(L, zkf_store_errmsg(s->st));
    return 2;
}

static int l_flush(lua_State *L)
{
    lstore *s = check_store(L);
    lua_State *outer = s->flushing;
    s->flushing = L;
    int rc = zkf_store_flush(s->st);
    s->flushing = outer;

    if (rc != ZKF_ZOK) {
        push_error(L, rc);
        lua_pushstring(L, zkf_store_errmsg(s->st));
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* close, __gc and __close: idempotent. */
static int l_close(lua_State *L)
{
    lstore *s = luaL_checkudata(L, 1, STORE_MT);

    if (s->st) {
        zkf_store *st = s->st;
        s->st = NULL;
        zkf_store_free(st);
    }
    if (s->session_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->session_ref);
        s->session_ref = LUA_NOREF;
    }
    if (s->commit_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->commit_ref);
        s->commit_ref = LUA_NOREF;
    }
    return 0;
}

static int l_gc(lua_State *L)
{
    lstore *s = luaL_checkudata(L, 1, STORE_MT);

    s->collecting = 1;
    return l_close(L);
}

static int l_tostring(lua_State *L)
{
    lstore *s = luaL_checkudata(L, 1, STORE_MT);

    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "zkflow.Store (%s%s)", lua_tostring(L, -1),
                    s->st ? "" : ", closed");
    return 1;
}

static const luaL_Reg store_methods[] = {
    {"create", l_create},
    {"get", l_get},
    {"set", l_set},
    {"delete", l_delete},
    {"exists", l_exists},
    {"children", l_children},
    {"multi", l_multi},
    {"flush", l_flush},
    {"on_commit", l_on_commit},
    {"healthy", l_healthy},
    {"close", l_close},
    {NULL, NULL}
};

/* Session changes reach opts.on_session(state) on the main thread; an
 * error in it is logged.  "closed" is not reported: closing is the
 * owner's own act. */
static void on_session(zkf_zk *zk, int state, void *arg)
{
    lstore *s = arg;
    lua_State *L = s->main;

    (void)zk;
    if (state == ZKF_ZK_CLOSED || s->session_ref == LUA_NOREF || !s->st ||
        !lua_checkstack(L, 3))
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->session_ref);
    lua_pushstring(L, zkf_zk_statename(state));
    zkf_lua_pcall(L, 1);
}

static int opt_ms(lua_State *L, int t, const char *name)
{
    lua_Number v;
    int isnum;

    lua_getfield(L, t, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    v = lua_tonumberx(L, -1, &isnum);
    if (!isnum || v <= 0 || v > 86400)
        luaL_error(L, "store_zk: '%s' must be a number of seconds > 0", name);
    lua_pop(L, 1);
    return (int)(v * 1000 + 0.5);
}

/* core.store_zk(hosts [, {timeout=s, connect_timeout=s, auth=, acl=,
 * on_session=fn}]): waits for the first session (yielding in a
 * coroutine), then returns the store, or nil and "ZCONNECTIONLOSS: ...". */
static int store_zk(lua_State *L, const char *hosts, int opt)
{
    zkf_zk_opts o;
    zkf_loop *loop;
    lstore *s;
    call *c;
    char err[512];
    const char *auth = NULL, *acl = NULL;
    int rc, ud;

    memset(&o, 0, sizeof o);
    if (!lua_isnoneornil(L, opt)) {
        luaL_checktype(L, opt, LUA_TTABLE);
        o.session_timeout_ms = opt_ms(L, opt, "timeout");
        o.connect_timeout_ms = opt_ms(L, opt, "connect_timeout");
        lua_getfield(L, opt, "auth");
        if (lua_istable(L, -1)) {      /* {scheme, credential} */
            lua_rawgeti(L, -1, 1);
            if (!lua_isstring(L, -1) ||
                strcmp(lua_tostring(L, -1), "digest") != 0)
                return luaL_error(L, "store_zk: 'auth' scheme must be"
                                  " \"digest\"");
            lua_pop(L, 1);
            lua_rawgeti(L, -1, 2);
            lua_replace(L, -2);
        }
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "store_zk: 'auth' must be"
                                  " \"user:password\" or {\"digest\", ...}");
            auth = lua_tostring(L, -1);
        }
        lua_getfield(L, opt, "acl");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "store_zk: 'acl' must be a string");
            acl = lua_tostring(L, -1);
        }
        lua_getfield(L, opt, "on_session");
        if (!lua_isnil(L, -1))
            check_callable(L, -1);
        /* auth, acl and on_session stay on the stack while used. */
    }
    o.auth = auth;
    o.acl = acl;
    loop = zkf_lua_loop(L);
    s = lua_newuserdatauv(L, sizeof *s, 1);
    ud = lua_gettop(L);
    s->st = NULL;
    s->main = NULL;
    s->session_ref = LUA_NOREF;
    s->collecting = 0;
    s->commit_ref = LUA_NOREF;
    s->flushing = NULL;
    s->failing = 0;
    snprintf(s->name, sizeof s->name, "zk://%s", hosts);
    luaL_setmetatable(L, STORE_MT);
    lua_pushfstring(L, "zk://%s", hosts);
    lua_setiuservalue(L, ud, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    s->main = lua_tothread(L, -1);
    lua_pop(L, 1);
    if (!lua_isnoneornil(L, opt)) {
        lua_getfield(L, opt, "on_session");
        if (!lua_isnil(L, -1))
            s->session_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        else
            lua_pop(L, 1);
    }
    o.on_session = on_session;
    o.arg = s;
    s->st = zkf_store_zk_new(loop, hosts, &o, err, sizeof err);
    if (!s->st) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    {
        int sess = o.session_timeout_ms > 0 ? o.session_timeout_ms : 10000;
        int conn = o.connect_timeout_ms > 0 ? o.connect_timeout_ms : sess;
        s->wait_ms = sess + conn + 5000;
    }
    c = call_new(L, s, R_CONNECT, NULL);
    lua_pushvalue(L, ud);
    c->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    rc = zkf_store_exists(s->st, "/", NULL, NULL, on_done, c);
    return finish(L, s, c, rc);
}

static int l_store_zk(lua_State *L)
{
    return store_zk(L, luaL_checkstring(L, 1), 2);
}

/* core.store(path [, {sync=, busy_timeout=, poll_interval=}]);
 * core.store("zk://hosts[/chroot]" [, opts]) is core.store_zk. */
static int l_store(lua_State *L)
{
    static const char *const syncs[] = {"off", "normal", "full", "extra",
                                        NULL};
    const char *path = luaL_checkstring(L, 1);
    zkf_sqlite_opts o = { "normal", 0, 0 };
    zkf_loop *loop;
    lstore *s;
    char err[512];

    if (strncmp(path, "zk://", 5) == 0)
        return store_zk(L, path + 5, 2);
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "sync");
        if (!lua_isnil(L, -1))
            o.synchronous = syncs[luaL_checkoption(L, -1, NULL, syncs)];
        lua_pop(L, 1);
        lua_getfield(L, 2, "busy_timeout");
        o.busy_timeout_ms = (int)luaL_optinteger(L, -1, 0);
        lua_pop(L, 1);
        lua_getfield(L, 2, "poll_interval");
        o.poll_ms = (int)luaL_optinteger(L, -1, 0);
        lua_pop(L, 1);
    }
    loop = zkf_lua_loop(L);
    /* The handle exists, closed, before the store: an error while making
     * it cannot leak the store. */
    s = lua_newuserdatauv(L, sizeof *s, 1);
    s->st = NULL;
    s->main = NULL;
    s->session_ref = LUA_NOREF;
    s->collecting = 0;
    s->wait_ms = 0;
    s->commit_ref = LUA_NOREF;
    s->flushing = NULL;
    s->failing = 0;
    snprintf(s->name, sizeof s->name, "%s", path);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    s->main = lua_tothread(L, -1);
    lua_pop(L, 1);
    luaL_setmetatable(L, STORE_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    s->st = zkf_store_sqlite_new(loop, path, &o, err, sizeof err);
    if (!s->st) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    zkf_store_sqlite_on_commit(s->st, on_commit, s);
    return 1;
}

void zkf_lua_open_store(lua_State *L)
{
    if (luaL_newmetatable(L, STORE_MT)) {
        luaL_newlib(L, store_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_store);
    lua_setfield(L, -2, "store");
    lua_pushcfunction(L, l_store_zk);
    lua_setfield(L, -2, "store_zk");
}
