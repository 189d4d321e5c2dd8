/*
 * lua/loop.c - the loop and child processes in `zkflow.core`:
 * now mono timer spawn run stop (docs/internals.md has the contract).
 *
 * Handles (zkflow.Timer, zkflow.Proc) are userdata that hold their C state
 * directly.  While a timer is pending or a child is running, the handle
 * holds a registry reference to itself, so a handle the program dropped
 * still fires: the loop owns it until then.  Its __gc therefore only runs
 * once it is idle, or when the state closes; then it cancels the timer, or
 * kills the child's process group and reaps it.
 *
 * Callbacks run on the state's main thread, whichever coroutine registered
 * them, through zkf_lua_pcall(): an error in one is logged, not raised.
 */
#include <signal.h>
#include <string.h>

#include "lua/lbind.h"
#include "proc/proc.h"

#define TIMER_MT "zkflow.Timer"
#define PROC_MT "zkflow.Proc"

/* The main thread of `L`'s state: callbacks must not run on a coroutine
 * that may be suspended or dead by the time they fire. */
static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

static void unref(lua_State *L, int *ref)
{
    luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

/* Functions, and tables or userdata with __call (busted's spies). */
static void check_callable(lua_State *L, int arg)
{
    if (lua_type(L, arg) == LUA_TFUNCTION)
        return;
    if (luaL_getmetafield(L, arg, "__call") != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_typeerror(L, arg, "function");
}

/* ---- clocks ---------------------------------------------------------- */

static int l_now(lua_State *L)
{
    lua_pushnumber(L, zkf_wall());
    return 1;
}

static int l_mono(lua_State *L)
{
    lua_pushnumber(L, zkf_mono_ms() / 1000.0);
    return 1;
}

/* ---- timers ---------------------------------------------------------- */

typedef struct ltimer {
    zkf_timer *t;           /* NULL once fired or cancelled */
    lua_State *L;           /* main thread */
    int fn;                 /* registry refs, LUA_NOREF when idle */
    int self;
} ltimer;

static void timer_fire(zkf_timer *t, void *arg)
{
    (void)t;
    ltimer *lt = arg;
    lua_State *L = lt->L;
    lt->t = NULL;           /* the loop frees it after this callback */
    lua_rawgeti(L, LUA_REGISTRYINDEX, lt->fn);
    unref(L, &lt->fn);
    /* From here the handle may be collected: `lt` is not used again. */
    unref(L, &lt->self);
    zkf_lua_pcall(L, 0);
}

static int l_timer(lua_State *L)
{
    lua_Number secs = luaL_checknumber(L, 1);
    check_callable(L, 2);
    luaL_argcheck(L, secs >= 0, 1, "must be >= 0");
    zkf_loop *loop = zkf_lua_loop(L);

    ltimer *lt = lua_newuserdatauv(L, sizeof *lt, 0);
    lt->t = NULL;
    lt->L = main_thread(L);
    lt->fn = lt->self = LUA_NOREF;
    luaL_setmetatable(L, TIMER_MT);

    lt->t = zkf_timer_start(loop, (double)secs * 1000.0, timer_fire, lt);
    if (!lt->t)
        return luaL_error(L, "core.timer: out of memory");
    lua_pushvalue(L, 2);
    lt->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    lt->self = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* t:cancel() -> true when the timer was pending.  Also __gc and __close. */
static int timer_cancel(lua_State *L)
{
    ltimer *lt = luaL_checkudata(L, 1, TIMER_MT);
    int pending = lt->t != NULL;
    if (pending) {
        zkf_timer_stop(lt->t);
        lt->t = NULL;
    }
    unref(L, &lt->fn);
    unref(L, &lt->self);
    lua_pushboolean(L, pending);
    return 1;
}

static int timer_tostring(lua_State *L)
{
    ltimer *lt = luaL_checkudata(L, 1, TIMER_MT);
    lua_pushfstring(L, "zkflow.Timer (%s)", lt->t ? "pending" : "idle");
    return 1;
}

static const luaL_Reg timer_methods[] = {
    {"cancel", timer_cancel},
    {NULL, NULL}
};

static const luaL_Reg timer_meta[] = {
    {"__gc", timer_cancel},
    {"__close", timer_cancel},
    {"__tostring", timer_tostring},
    {"__index", NULL},
    {NULL, NULL}
};

/* ---- child processes ------------------------------------------------- */

typedef struct lproc {
    zkf_proc *p;            /* NULL once exited (freed) or never started */
    lua_State *L;
    int fn;
    int self;
    lua_Integer pid;
    int logged;             /* output went to a log file */
} lproc;

static void proc_exit(zkf_proc *p, int code, int sig, void *arg)
{
    lproc *lp = arg;
    lua_State *L = lp->L;
    int fn = lp->fn;
    lp->fn = LUA_NOREF;
    if (fn != LUA_NOREF)
        lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    else
        lua_pushnil(L);
    luaL_unref(L, LUA_REGISTRYINDEX, fn);
    if (sig) {
        lua_pushnil(L);
        lua_pushinteger(L, sig);
    } else {
        lua_pushinteger(L, code);
        lua_pushnil(L);
    }
    if (lp->logged) {
        lua_pushnil(L);
    } else {
        size_t len;
        const char *out = zkf_proc_output(p, &len);
        lua_pushlstring(L, out, len);
    }
    zkf_proc_free(p);
    lp->p = NULL;
    unref(L, &lp->self);    /* `lp` is not used again */
    if (lua_isnil(L, -4))
        lua_pop(L, 4);
    else
        zkf_lua_pcall(L, 3);
}

/* Pushes the string at the top into the anchor table at `anchor` (which
 * keeps it alive) and returns it; pops it. */
static const char *anchor_str(lua_State *L, int anchor)
{
    const char *s = lua_tostring(L, -1);    /* converted in place */
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    return s;
}

/* An array of `n + 1` pointers in memory the GC owns: a Lua error between
 * here and the spawn leaks nothing. */
static const char **ptr_array(lua_State *L, int anchor, size_t n)
{
    const char **a = lua_newuserdatauv(L, (n + 1) * sizeof *a, 0);
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    a[n] = NULL;
    return a;
}

static const char *opt_field(lua_State *L, int spec, int anchor,
                             const char *name)
{
    int t = lua_getfield(L, spec, name);
    if (t == LUA_TSTRING || t == LUA_TNUMBER)
        return anchor_str(L, anchor);   /* a number's string is new */
    if (t != LUA_TNIL)
        luaL_error(L, "core.spawn: '%s' must be a string, got %s", name,
                   lua_typename(L, t));
    lua_pop(L, 1);
    return NULL;
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_isnoneornil(L, 2))
        check_callable(L, 2);
    lua_settop(L, 2);
    lua_newtable(L);        /* 3: anchors strings and arrays until spawned */
    int anchor = 3;
    zkf_proc_opts o;
    memset(&o, 0, sizeof o);

    /* argv = {...} or cmd = "..." */
    int t = lua_getfield(L, 1, "argv");
    if (t == LUA_TTABLE) {
        size_t n = (size_t)lua_rawlen(L, -1);
        luaL_argcheck(L, n > 0, 1, "'argv' is empty");
        const char **argv = ptr_array(L, anchor, n);
        for (size_t i = 0; i < n; i++) {
            int et = lua_rawgeti(L, -1, (lua_Integer)i + 1);
            if (et != LUA_TSTRING && et != LUA_TNUMBER)
                return luaL_error(L, "core.spawn: argv[%d] must be a string, "
                                  "got %s", (int)i + 1, lua_typename(L, et));
            lua_pushstring(L, lua_tostring(L, -1));
            argv[i] = anchor_str(L, anchor);
            lua_pop(L, 1);
        }
        o.argv = argv;
    } else if (t != LUA_TNIL) {
        return luaL_error(L, "core.spawn: 'argv' must be a table, got %s",
                          lua_typename(L, t));
    }
    lua_pop(L, 1);
    const char *cmd = opt_field(L, 1, anchor, "cmd");
    if (!o.argv) {
        if (!cmd)
            return luaL_error(L, "core.spawn: 'argv' or 'cmd' is required");
        const char **argv = ptr_array(L, anchor, 3);
        argv[0] = "/bin/sh";
        argv[1] = "-c";
        argv[2] = cmd;
        o.argv = argv;
    }

    /* env = {K=V} */
    t = lua_getfield(L, 1, "env");
    if (t == LUA_TTABLE) {
        int envt = lua_gettop(L);
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, envt)) {
            n++;
            lua_pop(L, 1);
        }
        const char **env = ptr_array(L, anchor, n);
        size_t i = 0;
        lua_pushnil(L);
        while (lua_next(L, envt)) {
            int vt = lua_type(L, -1);
            if (lua_type(L, -2) != LUA_TSTRING ||
                (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN))
                return luaL_error(L, "core.spawn: 'env' must map names to "
                                  "strings");
            const char *k = lua_tostring(L, -2);
            if (vt == LUA_TBOOLEAN)
                lua_pushfstring(L, "%s=%s", k,
                                lua_toboolean(L, -1) ? "true" : "false");
            else
                lua_pushfstring(L, "%s=%s", k, lua_tostring(L, -1));
            env[i++] = anchor_str(L, anchor);
            lua_pop(L, 1);
        }
        o.env = env;
    } else if (t != LUA_TNIL) {
        return luaL_error(L, "core.spawn: 'env' must be a table, got %s",
                          lua_typename(L, t));
    }
    lua_pop(L, 1);

    lua_getfield(L, 1, "contain");
    o.contain = lua_toboolean(L, -1);
    lua_pop(L, 1);
    o.cwd = opt_field(L, 1, anchor, "cwd");
    o.log_path = opt_field(L, 1, anchor, "log");
    t = lua_getfield(L, 1, "stdin");
    if (t == LUA_TSTRING) {
        o.stdin_data = lua_tolstring(L, -1, &o.stdin_len);
        lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    } else {
        if (t != LUA_TNIL)
            return luaL_error(L, "core.spawn: 'stdin' must be a string, "
                              "got %s", lua_typename(L, t));
        lua_pop(L, 1);
    }

    zkf_loop *loop = zkf_lua_loop(L);
    lproc *lp = lua_newuserdatauv(L, sizeof *lp, 0);
    lp->p = NULL;
    lp->L = main_thread(L);
    lp->fn = lp->self = LUA_NOREF;
    lp->pid = 0;
    lp->logged = o.log_path != NULL;
    luaL_setmetatable(L, PROC_MT);

    char err[512];
    lp->p = zkf_proc_spawn(loop, &o, proc_exit, lp, err, sizeof err);
    if (!lp->p) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lp->pid = zkf_proc_pid(lp->p);
    if (!lua_isnil(L, 2)) {
        lua_pushvalue(L, 2);
        lp->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushvalue(L, -1);
    lp->self = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

static const struct {
    const char *name;
    int sig;
} signames[] = {
    {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT}, {"HUP", SIGHUP},
    {"QUIT", SIGQUIT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {NULL, 0}
};

/* p:kill([sig]) -> true, or nil and a message.  `sig` is a number or a
 * name ("TERM", "SIGKILL"); SIGTERM by default. */
static int proc_kill(lua_State *L)
{
    lproc *lp = luaL_checkudata(L, 1, PROC_MT);
    int sig = SIGTERM;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *name = lua_tostring(L, 2);
        if (strncmp(name, "SIG", 3) == 0)
            name += 3;
        sig = 0;
        for (int i = 0; signames[i].name; i++)
            if (strcmp(signames[i].name, name) == 0)
                sig = signames[i].sig;
        luaL_argcheck(L, sig != 0, 2, "unknown signal name");
    } else if (!lua_isnoneornil(L, 2)) {
        sig = (int)luaL_checkinteger(L, 2);
    }
    if (!lp->p || zkf_proc_kill(lp->p, sig) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, lp->p ? "kill failed" : "process has exited");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Only at lua_close() (or for a handle that never started) is there
 * anything left: kill the group and reap, with no callback. */
static int proc_gc(lua_State *L)
{
    lproc *lp = luaL_checkudata(L, 1, PROC_MT);
    if (lp->p) {
        zkf_proc_free(lp->p);
        lp->p = NULL;
    }
    unref(L, &lp->fn);
    unref(L, &lp->self);
    return 0;
}

static int proc_index(lua_State *L)
{
    lproc *lp = luaL_checkudata(L, 1, PROC_MT);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "pid") == 0) {
        lua_pushinteger(L, lp->pid);
        return 1;
    }
    if (k && strcmp(k, "running") == 0) {
        lua_pushboolean(L, lp->p != NULL);
        return 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int proc_tostring(lua_State *L)
{
    lproc *lp = luaL_checkudata(L, 1, PROC_MT);
    lua_pushfstring(L, "zkflow.Proc (pid %d, %s)", (int)lp->pid,
                    lp->p ? "running" : "exited");
    return 1;
}

static const luaL_Reg proc_methods[] = {
    {"kill", proc_kill},
    {NULL, NULL}
};

static const luaL_Reg proc_meta[] = {
    {"__index", proc_index},
    {"__gc", proc_gc},
    {"__close", proc_gc},
    {"__tostring", proc_tostring},
    {NULL, NULL}
};

/* ---- run / stop ------------------------------------------------------ */

static int l_run(lua_State *L)
{
    zkf_pollhost *h = zkf_lua_pollhost(L);
    if (!h)
        return luaL_error(L, "core.run: the engine's host runs the loop");
    if (!lua_isnoneornil(L, 1)) {
        /* run(fn): fn is called from the loop's first turn. */
        lua_settop(L, 1);
        lua_pushinteger(L, 0);
        lua_insert(L, 1);
        lua_pushcfunction(L, l_timer);
        lua_insert(L, 1);
        lua_call(L, 2, 0);
    }
    if (zkf_pollhost_run(h) != 0)
        return luaL_error(L, "core.run: the loop is already running");
    return 0;
}

static int l_stop(lua_State *L)
{
    zkf_pollhost *h = zkf_lua_pollhost(L);
    /* In the engine the host owns the loop's life: nothing to stop. */
    if (h)
        zkf_pollhost_stop(h);
    return 0;
}

static const luaL_Reg loop_funcs[] = {
    {"now", l_now},
    {"mono", l_mono},
    {"timer", l_timer},
    {"spawn", l_spawn},
    {"run", l_run},
    {"stop", l_stop},
    {NULL, NULL}
};

void zkf_lua_open_loop(lua_State *L)
{
    luaL_newmetatable(L, TIMER_MT);
    luaL_setfuncs(L, timer_meta, 0);
    luaL_newlib(L, timer_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newmetatable(L, PROC_MT);
    luaL_setfuncs(L, proc_meta, 0);
    luaL_newlib(L, proc_methods);
    lua_setfield(L, -2, "methods");
    lua_pop(L, 1);

    luaL_setfuncs(L, loop_funcs, 0);
}
