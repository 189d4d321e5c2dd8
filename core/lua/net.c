/*
 * lua/net.c - a one-shot TCP exchange in `zkflow.core`:
 *
 *   core.tcp_request(host, port, bytes, timeout, cb) -> r
 *
 * connects (non-blocking) to host:port, writes `bytes`, reads until the
 * peer closes, then calls cb(data) on the loop; on failure cb(nil, err)
 * with err "connect 127.0.0.1:2181: Connection refused" or "...: timed
 * out after 2s".  That is the shape of ZooKeeper's four-letter words
 * (ruok, mntr, srvr), which zk_health and `zkflow zk health` send to every
 * ensemble member without a ZooKeeper session.
 *
 * The handle (zkflow.TcpRequest) holds a registry reference to itself while
 * pending, so a dropped handle still reports; r:cancel() (also __gc and
 * __close) closes the socket and drops the callback.  Like every loop
 * callback, cb runs on the main thread and never inside tcp_request().
 * A host name is resolved with a blocking getaddrinfo(): pass an address
 * where that matters (ensemble connect strings usually hold addresses).
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lua/lbind.h"

#define REQ_MT "zkflow.TcpRequest"

/* A reply larger than this is an error, not an allocation without end. */
#define REPLY_MAX (16u * 1024u * 1024u)

typedef struct lreq {
    zkf_loop *loop;
    zkf_io *io;             /* NULL when no socket is watched */
    zkf_timer *timer;       /* the deadline; NULL once fired or stopped */
    zkf_timer *later;       /* a failure reported on the next turn */
    int fd;                 /* -1 when closed */
    lua_State *L;           /* main thread */
    int fn, self;           /* registry refs, LUA_NOREF when idle */
    struct addrinfo *ai;    /* every address of the host */
    struct addrinfo *cur;   /* the one being tried */
    char *out;              /* the request bytes */
    size_t out_len, out_off;
    char *in;               /* the reply so far */
    size_t in_len, in_cap;
    int phase;              /* 0 connecting, 1 writing, 2 reading */
    double timeout;         /* seconds, for the message */
    char err[512];
    char where[200];        /* "host:port" for messages */
} lreq;

static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* Releases the socket, timers and buffers; the handle stays valid (idle). */
static void req_release(lreq *r)
{
    if (r->io) {
        zkf_io_stop(r->io);
        r->io = NULL;
    }
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
    if (r->timer) {
        zkf_timer_stop(r->timer);
        r->timer = NULL;
    }
    if (r->later) {
        zkf_timer_stop(r->later);
        r->later = NULL;
    }
    if (r->ai) {
        freeaddrinfo(r->ai);
        r->ai = r->cur = NULL;
    }
    free(r->out);
    r->out = NULL;
    free(r->in);
    r->in = NULL;
}

/* Ends the request: cb(data) when `ok`, else cb(nil, r->err). */
static void req_finish(lreq *r, int ok)
{
    lua_State *L = r->L;

    if (r->fn == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn);
    if (ok) {
        lua_pushlstring(L, r->in ? r->in : "", r->in_len);
        lua_pushnil(L);
    } else {
        lua_pushnil(L);
        lua_pushstring(L, r->err);
    }
    req_release(r);
    luaL_unref(L, LUA_REGISTRYINDEX, r->fn);
    r->fn = LUA_NOREF;
    /* Everything is on the stack: from here the handle may be collected,
     * so `r` is not used again. */
    luaL_unref(L, LUA_REGISTRYINDEX, r->self);
    r->self = LUA_NOREF;
    zkf_lua_pcall(L, 2);
}

static void fail_now(lreq *r, const char *what, int err)
{
    snprintf(r->err, sizeof r->err, "%s %s: %s", what, r->where,
             strerror(err));
    req_finish(r, 0);
}

static void later_fire(zkf_timer *t, void *arg)
{
    (void)t;
    lreq *r = arg;
    r->later = NULL;
    req_finish(r, 0);
}

static void deadline_fire(zkf_timer *t, void *arg)
{
    (void)t;
    lreq *r = arg;
    static const char *const phase[] = { "connect", "write", "read" };
    r->timer = NULL;
    snprintf(r->err, sizeof r->err, "%s %s: timed out after %gs",
             phase[r->phase], r->where, r->timeout);
    req_finish(r, 0);
}

static void on_io(zkf_io *io, int fd, int events, void *arg);

/* Starts connecting to r->cur or, when it fails at once, the next
 * address.  Returns 0 when a connect is under way, else errno. */
static int try_connect(lreq *r)
{
    int err = EADDRNOTAVAIL;

    for (; r->cur; r->cur = r->cur->ai_next) {
        int fd = socket(r->cur->ai_family,
                        r->cur->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        r->cur->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, r->cur->ai_addr, r->cur->ai_addrlen) != 0 &&
            errno != EINPROGRESS) {
            err = errno;
            close(fd);
            continue;
        }
        r->fd = fd;
        r->phase = 0;
        /* Connected or not, writability says when to look. */
        r->io = zkf_io_start(r->loop, fd, ZKF_IO_OUT, on_io, r);
        if (!r->io) {
            close(fd);
            r->fd = -1;
            return ENOMEM;
        }
        return 0;
    }
    return err;
}

static void drop_socket(lreq *r)
{
    zkf_io_stop(r->io);
    r->io = NULL;
    close(r->fd);
    r->fd = -1;
}

/* Returns 1 when connected and ready to write; otherwise the request
 * moved on to another address or ended (and `r` may be gone). */
static int on_connected(lreq *r)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err != 0) {
        /* A refused IPv6 "localhost" is followed by its IPv4 address. */
        drop_socket(r);
        r->cur = r->cur->ai_next;
        int again = r->cur ? try_connect(r) : err;
        if (again != 0)
            fail_now(r, "connect", again);
        return 0;
    }
    r->phase = 1;
    return 1;
}

static void on_writable(lreq *r)
{
    while (r->out_off < r->out_len) {
        ssize_t n = send(r->fd, r->out + r->out_off, r->out_len - r->out_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            fail_now(r, "write", errno);
            return;
        }
        r->out_off += (size_t)n;
    }
    r->phase = 2;
    zkf_io_update(r->io, ZKF_IO_IN);
}

static void on_readable(lreq *r)
{
    for (;;) {
        if (r->in_cap - r->in_len < 4096) {
            size_t cap = r->in_cap ? r->in_cap * 2 : 8192;
            char *p;
            if (cap > REPLY_MAX + 8192) {
                snprintf(r->err, sizeof r->err,
                         "read %s: reply longer than %u bytes", r->where,
                         REPLY_MAX);
                req_finish(r, 0);
                return;
            }
            p = realloc(r->in, cap);
            if (!p) {
                fail_now(r, "read", ENOMEM);
                return;
            }
            r->in = p;
            r->in_cap = cap;
        }
        ssize_t n = recv(r->fd, r->in + r->in_len, r->in_cap - r->in_len, 0);
        if (n > 0) {
            r->in_len += (size_t)n;
            continue;
        }
        if (n == 0) {
            req_finish(r, 1);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        /* A reset after the reply (the server closed with unread input)
         * still delivered the reply. */
        if (errno == ECONNRESET && r->in_len > 0) {
            req_finish(r, 1);
            return;
        }
        fail_now(r, "read", errno);
        return;
    }
}

static void on_io(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)fd;
    lreq *r = arg;

    if (r->phase == 0 && (events & ZKF_IO_OUT)) {
        if (!on_connected(r))
            return;
    }
    if (r->phase == 1 && (events & ZKF_IO_OUT)) {
        on_writable(r);
        return;
    }
    if (r->phase == 2 && (events & ZKF_IO_IN))
        on_readable(r);
}

/* core.tcp_request(host, port, bytes, timeout, cb) -> handle */
static int l_tcp_request(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    size_t len;
    const char *bytes = luaL_checklstring(L, 3, &len);
    lua_Number timeout = luaL_checknumber(L, 4);
    char portstr[16];
    struct addrinfo hints;
    int rc;

    luaL_argcheck(L, port > 0 && port < 65536, 2, "must be 1-65535");
    luaL_argcheck(L, timeout > 0, 4, "must be > 0");
    if (lua_type(L, 5) != LUA_TFUNCTION) {
        if (luaL_getmetafield(L, 5, "__call") == LUA_TNIL)
            luaL_typeerror(L, 5, "function");
        lua_pop(L, 1);
    }
    zkf_loop *loop = zkf_lua_loop(L);

    /* The handle exists, idle, before anything is acquired: an error
     * raised below leaves nothing behind but garbage. */
    lreq *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->fn = r->self = LUA_NOREF;
    r->loop = loop;
    r->L = main_thread(L);
    r->timeout = timeout;
    luaL_setmetatable(L, REQ_MT);
    snprintf(r->where, sizeof r->where,
             strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, (int)port);

    r->out = malloc(len ? len : 1);
    if (!r->out)
        return luaL_error(L, "core.tcp_request: out of memory");
    memcpy(r->out, bytes, len);
    r->out_len = len;

    snprintf(portstr, sizeof portstr, "%d", (int)port);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, portstr, &hints, &r->ai);
    if (rc != 0) {
        r->ai = NULL;
        snprintf(r->err, sizeof r->err, "resolve %s: %s", r->where,
                 gai_strerror(rc));
    } else {
        r->cur = r->ai;
        rc = try_connect(r);
        if (rc != 0)
            snprintf(r->err, sizeof r->err, "connect %s: %s", r->where,
                     strerror(rc));
    }
    if (rc != 0) {
        /* Reported from the loop, as every other outcome. */
        r->later = zkf_timer_start(loop, 0, later_fire, r);
        if (!r->later) {
            req_release(r);
            return luaL_error(L, "core.tcp_request: out of memory");
        }
    } else {
        r->timer = zkf_timer_start(loop, (double)timeout * 1000.0,
                                   deadline_fire, r);
        if (!r->timer) {
            req_release(r);
            return luaL_error(L, "core.tcp_request: out of memory");
        }
    }
    lua_pushvalue(L, 5);
    r->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    r->self = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* r:cancel() -> true when the request was pending.  Also __gc, __close. */
static int req_cancel(lua_State *L)
{
    lreq *r = luaL_checkudata(L, 1, REQ_MT);
    int pending = r->fn != LUA_NOREF;

    req_release(r);
    luaL_unref(L, LUA_REGISTRYINDEX, r->fn);
    r->fn = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, r->self);
    r->self = LUA_NOREF;
    lua_pushboolean(L, pending);
    return 1;
}

static int req_tostring(lua_State *L)
{
    lreq *r = luaL_checkudata(L, 1, REQ_MT);
    lua_pushfstring(L, "zkflow.TcpRequest (%s, %s)", r->where,
                    r->fn != LUA_NOREF ? "pending" : "idle");
    return 1;
}

static const luaL_Reg req_methods[] = {
    {"cancel", req_cancel},
    {NULL, NULL}
};

static const luaL_Reg req_meta[] = {
    {"__gc", req_cancel},
    {"__close", req_cancel},
    {"__tostring", req_tostring},
    {NULL, NULL}
};

void zkf_lua_open_net(lua_State *L)
{
    luaL_newmetatable(L, REQ_MT);
    luaL_setfuncs(L, req_meta, 0);
    luaL_newlib(L, req_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_tcp_request);
    lua_setfield(L, -2, "tcp_request");
}
