/*
 * lua/probe.c - core.probe_spawn: a Lua job in a forked child with a fresh
 * Lua state, so that a DAG file whose loading hangs inside C (a pattern
 * that backtracks for ever, where no count hook fires) hangs the child and
 * not the loop (zkflow.dsl.probe drives it).
 *
 * Why fork and not a program: the engine runs inside hosts that are not
 * zkflow (nginx, a C host, plain lua5.4), so there is no interpreter to
 * exec; the child is this process, in which nothing of the parent's Lua
 * state is touched (its finalizers could close a descriptor or a store the
 * parent shares).  Right after fork the child puts itself in a process
 * group of its own, asks to die with its parent (PR_SET_PDEATHSIG),
 * restores every signal to its default (a host's handlers, nginx's among
 * them, must not run in it), points stdin/stdout/stderr at /dev/null (a DAG
 * file that prints while loading is heard once, in the parent), closes
 * every other inherited descriptor but its report pipe, builds a new state
 * with the parent's package.path/cpath and its compiled-in module searcher,
 * and calls require("zkflow.dsl.probe").child(job, write).  It ends with
 * _exit: no atexit handler or stdio buffer of the host runs twice.
 *
 * The parent reads the child's report line by line, blocking with a
 * wall-clock limit (handle:read(timeout)) or from the loop (handle:watch),
 * and kills the whole group with SIGKILL when it has what it wanted or
 * waited long enough.  Loop thread only.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lualib.h>

#include "lua/lbind.h"

#define PROBE_MT "zkflow.Probe"
#define PROBE_FD 3              /* the report pipe, in the child */
#define MAX_SEARCHERS 8

typedef struct probe {
    pid_t pid;                  /* 0 once reaped */
    int fd;                     /* read end of the report; -1 when closed */
    int eof;
    char *buf;                  /* bytes read, not yet returned as lines */
    size_t len, cap;
    zkf_io *io;                 /* watch() */
    lua_State *L;               /* main thread, for watch() callbacks */
    int fn;                     /* watch() callback ref */
} probe;

/* ---- the child --------------------------------------------------------- */

typedef struct child_mem {
    size_t used, cap;
} child_mem;

/* A cap on the child's whole state: the loader's own limits apply inside,
 * this only keeps one runaway allocation from taking the machine. */
static void *child_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    child_mem *m = ud;
    size_t old = ptr ? osize : 0;

    if (nsize == 0) {
        free(ptr);
        m->used -= old;
        return NULL;
    }
    if (m->cap && nsize > old && m->used + (nsize - old) > m->cap)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p != NULL)
        m->used = m->used - old + nsize;
    return p;
}

static int child_write(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);

    while (len > 0) {
        ssize_t w = write(PROBE_FD, s, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(3);           /* the parent is gone or gave up */
        s += w;
        len -= (size_t)w;
    }
    return 0;
}

static int child_open_core(lua_State *L)
{
    return zkf_lua_open_core(L);
}

static void close_from(int lowfd)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = lowfd; fd < max; fd++)
        close(fd);
}

static void child_report_fatal(const char *msg)
{
    static const char head[] = "{\"fatal\":\"";
    (void)!write(PROBE_FD, head, sizeof head - 1);
    for (const char *c = msg; *c; c++) {
        char ch = (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) ? ' ' : *c;
        (void)!write(PROBE_FD, &ch, 1);
    }
    (void)!write(PROBE_FD, "\"}\n", 3);
}

/* Never returns.  Everything it reads was copied or pinned before fork. */
static void child_main(pid_t parent, int wfd, const char *job, size_t joblen,
                       const char *path, const char *cpath,
                       lua_CFunction *searchers, int *positions, int nsearch,
                       size_t memcap)
{
    struct sigaction dfl;
    sigset_t none;

    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int w = fcntl(wfd, F_DUPFD, 10);
    int null = open("/dev/null", O_RDWR);
    if (w < 0 || null < 0)
        _exit(1);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    dup2(w, PROBE_FD);
    close_from(PROBE_FD + 1);

    child_mem mem = { 0, memcap };
    lua_State *L = lua_newstate(child_alloc, &mem);
    if (L == NULL)
        _exit(1);
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, cpath);
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "searchers");
    for (int i = 0; i < nsearch; i++) {
        lua_Integer n = (lua_Integer)luaL_len(L, -1);
        lua_Integer at = positions[i] <= n ? positions[i] : n + 1;
        for (lua_Integer k = n; k >= at; k--) {
            lua_rawgeti(L, -1, k);
            lua_rawseti(L, -2, k + 1);
        }
        lua_pushcfunction(L, searchers[i]);
        lua_rawseti(L, -2, at);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, child_open_core);
    lua_setfield(L, -2, "zkflow.core");
    lua_pop(L, 2);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "zkflow.dsl.probe");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        child_report_fatal(lua_tostring(L, -1));
        _exit(2);
    }
    lua_getfield(L, -1, "child");
    lua_pushlstring(L, job, joblen);
    lua_pushcfunction(L, child_write);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        child_report_fatal(msg ? msg : "error object is not a string");
        _exit(2);
    }
    _exit(0);
}

/* ---- the parent -------------------------------------------------------- */

static void probe_close(probe *p)
{
    if (p->io) {
        zkf_io_stop(p->io);
        p->io = NULL;
    }
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    if (p->pid > 0) {
        int st;
        kill(-p->pid, SIGKILL);
        while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR)
            ;
        p->pid = 0;
    }
}

/* Reads what the pipe has now; sets eof at end of file. */
static void fill(probe *p)
{
    char chunk[65536];

    while (p->fd >= 0 && !p->eof) {
        ssize_t r = read(p->fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r <= 0) {
            p->eof = 1;
            return;
        }
        if (p->len + (size_t)r > p->cap) {
            size_t cap = p->cap ? p->cap : 4096;
            while (cap < p->len + (size_t)r)
                cap *= 2;
            char *b = realloc(p->buf, cap);
            if (b == NULL) {
                p->eof = 1;     /* out of memory: the report is lost */
                return;
            }
            p->buf = b;
            p->cap = cap;
        }
        memcpy(p->buf + p->len, chunk, (size_t)r);
        p->len += (size_t)r;
    }
}

/* Pushes the first whole line (without its newline) and returns 1, or
 * returns 0 when there is none yet. */
static int take_line(lua_State *L, probe *p)
{
    char *nl = p->len ? memchr(p->buf, '\n', p->len) : NULL;

    if (nl == NULL)
        return 0;
    size_t n = (size_t)(nl - p->buf);
    lua_pushlstring(L, p->buf, n);
    memmove(p->buf, nl + 1, p->len - n - 1);
    p->len -= n + 1;
    return 1;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* h:read([timeout [, interruptible]]) -> line | nil, "timeout" | nil,
 * "eof" | nil, "interrupted".  Waits up to `timeout` seconds (0, the
 * default: not at all) for a whole line.  With `interruptible`, a signal
 * caught while waiting ends the wait: a command line's Ctrl-C is handled
 * by its loop, which this wait holds up. */
static int probe_read(lua_State *L)
{
    probe *p = luaL_checkudata(L, 1, PROBE_MT);
    double timeout = luaL_optnumber(L, 2, 0);
    int interruptible = lua_toboolean(L, 3);
    double deadline = mono_now() + timeout;

    for (;;) {
        if (take_line(L, p))
            return 1;
        fill(p);
        if (take_line(L, p))
            return 1;
        if (p->eof || p->fd < 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "eof");
            return 2;
        }
        double left = deadline - mono_now();
        if (left <= 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            return 2;
        }
        struct pollfd pfd = { p->fd, POLLIN, 0 };
        int ms = (int)(left * 1000) + 1;
        if (poll(&pfd, 1, ms) < 0) {
            if (errno != EINTR) {
                p->eof = 1;
            } else if (interruptible) {
                lua_pushnil(L);
                lua_pushliteral(L, "interrupted");
                return 2;
            }
        }
    }
}

static void watch_cb(zkf_io *io, int fd, int events, void *arg)
{
    probe *p = arg;
    lua_State *L = p->L;

    (void)io;
    (void)fd;
    (void)events;
    fill(p);
    if (p->eof && p->io) {
        /* Level-triggered: an fd at end of file is always ready. */
        zkf_io_stop(p->io);
        p->io = NULL;
    }
    if (p->fn == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->fn);
    zkf_lua_pcall(L, 0);
}

/* h:watch(fn): fn() is called from the loop whenever the report has new
 * bytes or ends (read them with h:read()); h:watch(nil) stops. */
static int probe_watch(lua_State *L)
{
    probe *p = luaL_checkudata(L, 1, PROBE_MT);

    if (p->fn != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, p->fn);
        p->fn = LUA_NOREF;
    }
    if (p->io) {
        zkf_io_stop(p->io);
        p->io = NULL;
    }
    if (lua_isnoneornil(L, 2))
        return 0;
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (p->fd < 0 || p->eof)
        return luaL_error(L, "probe: the child's report has ended");
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    p->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    p->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    p->io = zkf_io_start(zkf_lua_loop(L), p->fd, ZKF_IO_IN, watch_cb, p);
    if (p->io == NULL)
        return luaL_error(L, "probe: the loop refused a watcher");
    return 0;
}

/* h:kill(): the child's group gets SIGKILL and the child is reaped (it
 * cannot outlive SIGKILL, so the wait is short); the report is closed. */
static int probe_kill(lua_State *L)
{
    probe *p = luaL_checkudata(L, 1, PROBE_MT);

    if (p->fn != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, p->fn);
        p->fn = LUA_NOREF;
    }
    probe_close(p);
    return 0;
}

static int probe_gc(lua_State *L)
{
    probe *p = luaL_checkudata(L, 1, PROBE_MT);

    probe_kill(L);
    free(p->buf);
    p->buf = NULL;
    p->len = p->cap = 0;
    return 0;
}

static int probe_index(lua_State *L)
{
    probe *p = luaL_checkudata(L, 1, PROBE_MT);
    const char *k = lua_tostring(L, 2);

    if (k && strcmp(k, "pid") == 0) {
        lua_pushinteger(L, p->pid);
        return 1;
    }
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* core.probe_spawn(job [, memory_cap]) -> handle, or nil and a message.
 * The child runs require("zkflow.dsl.probe").child(job, write) in a fresh
 * state whose allocator refuses to grow past `memory_cap` bytes (0: no
 * cap); `write(s)` appends to the report the parent reads. */
static int l_probe_spawn(lua_State *L)
{
    size_t joblen;
    const char *job = luaL_checklstring(L, 1, &joblen);
    lua_Integer memcap = luaL_optinteger(L, 2, 0);
    lua_CFunction searchers[MAX_SEARCHERS];
    int positions[MAX_SEARCHERS], nsearch = 0;
    const char *path, *cpath;

    /* The parent's module setup: its paths (strings pinned on the stack
     * until the fork), and searchers that are plain C functions (the
     * engine's compiled-in modules; Lua's own are closures over their
     * package table and come with luaL_openlibs anyway). */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    path = lua_tostring(L, -1);
    lua_getfield(L, -2, "cpath");
    cpath = lua_tostring(L, -1);
    lua_getfield(L, -3, "searchers");
    for (int i = 1; nsearch < MAX_SEARCHERS; i++) {
        if (lua_rawgeti(L, -1, i) == LUA_TNIL) {
            lua_pop(L, 1);
            break;
        }
        if (lua_iscfunction(L, -1)) {
            if (lua_getupvalue(L, -1, 1) == NULL) {
                searchers[nsearch] = lua_tocfunction(L, -1);
                positions[nsearch++] = i;
            } else {
                lua_pop(L, 1);  /* the upvalue */
            }
        }
        lua_pop(L, 1);
    }
    if (path == NULL)
        path = LUA_PATH_DEFAULT;
    if (cpath == NULL)
        cpath = LUA_CPATH_DEFAULT;

    probe *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->fd = -1;
    p->fn = LUA_NOREF;
    luaL_setmetatable(L, PROBE_MT);

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "probe: pipe: %s", strerror(errno));
        return 2;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        lua_pushnil(L);
        lua_pushfstring(L, "probe: fork: %s", strerror(e));
        return 2;
    }
    if (pid == 0)
        child_main(parent, fds[1], job, joblen, path, cpath, searchers,
                   positions, nsearch, memcap > 0 ? (size_t)memcap : 0);
    /* Also here, so that a kill(-pid) right away cannot miss the group
     * (EACCES once the child has set it itself is harmless). */
    setpgid(pid, pid);
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    p->pid = pid;
    p->fd = fds[0];
    return 1;
}

static const luaL_Reg probe_methods[] = {
    {"read", probe_read},
    {"watch", probe_watch},
    {"kill", probe_kill},
    {NULL, NULL}
};

static const luaL_Reg probe_meta[] = {
    {"__index", probe_index},
    {"__gc", probe_gc},
    {"__close", probe_gc},
    {NULL, NULL}
};

void zkf_lua_open_probe(lua_State *L)
{
    luaL_newmetatable(L, PROBE_MT);
    luaL_setfuncs(L, probe_meta, 0);
    luaL_newlib(L, probe_methods);
    lua_setfield(L, -2, "methods");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_probe_spawn);
    lua_setfield(L, -2, "probe_spawn");
}
