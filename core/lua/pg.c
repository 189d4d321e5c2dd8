/*
 * lua/pg.c - PostgreSQL through libpq in `zkflow.core`, the SQL driver of
 * a history store on a server (docs/history.md, "PostgreSQL"):
 *
 *   core.pg_open(conninfo) -> conn, or nil and "SQL: postgresql <target>: ..."
 *   conn:query(sql [, params]) -> rows, affected
 *   conn:exec(script)
 *   conn:close()
 *   conn.driver == "postgresql"
 *
 * The SQLite driver answers the same calls synchronously; this one never
 * blocks the loop.  A query is sent with PQsendQueryParams on a
 * non-blocking connection and the calling coroutine waits in
 * zkflow.async's wait() (so async.cancel() and task timeouts reach it)
 * while the loop watches the socket; the loop's io callback reads the
 * result and resumes the coroutine, whose continuation (query_k) turns
 * the PGresult into rows.  Connecting is PQconnectStart + PQconnectPoll on
 * the same watcher, with a deadline of our own (libpq's connect_timeout
 * only applies to its blocking calls): connect_timeout of the conninfo,
 * 10 s by default.  Host names are resolved inside libpq with a blocking
 * getaddrinfo, as in net.c: give an address where that matters.
 *
 * pg_open() called in a coroutine waits for the connection and returns
 * nil, err when it fails; called outside one (a process setting up before
 * its loop runs) it returns at once and the connection is made on the
 * loop; its failure is then raised by the first query.  A connection found
 * dead when a query starts (the server restarted) is made again first; one
 * lost during a query fails that query, and the next one reconnects.
 * One statement at a time per connection: a second query while one waits
 * raises "SQL: ... busy".
 *
 * Ownership:
 *   - the handle (zkflow.PgConn) is a Lua userdata: Lua owns it; while a
 *     coroutine waits on it, a registry reference (self) keeps it alive;
 *   - p->conn (PGconn) is the handle's, PQfinish()ed when the handle is
 *     closed or collected, the connection is lost, or a wait is cancelled;
 *   - p->conninfo is a malloc'd copy, the handle's, freed by close/__gc;
 *   - p->sql, p->values[i], p->values, p->types: malloc'd by query() for
 *     the statement not yet sent, freed once libpq has copied them (sent),
 *     or when the operation ends or the handle is released;
 *   - p->res (PGresult) is the handle's until the continuation has made
 *     rows of it (PQclear), or the operation ends;
 *   - p->io, p->deadline, p->later: owned by the loop, stopped by us;
 *   - p->resume: a registry reference to async.wait's resume function,
 *     held while a coroutine waits, released when it is called.
 * Notices (CREATE ... IF NOT EXISTS "skipping") are dropped: libpq's
 * default would print them on stderr.
 */
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "lua/lbind.h"

#define PG_MT "zkflow.PgConn"
#define CONNECT_TIMEOUT_S 10.0

/* Type oids (server's catalog/pg_type_d.h, which libpq-dev lacks). */
enum {
    OID_BOOL = 16,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_NUMERIC = 1700
};

enum { PH_IDLE, PH_CONNECTING, PH_BUSY };
enum { OP_NONE, OP_CONNECT, OP_QUERY, OP_EXEC };

typedef struct lpg {
    PGconn *conn;           /* NULL when not connected */
    char *conninfo;         /* NULL once closed */
    zkf_loop *loop;
    zkf_io *io;             /* the socket's watcher while connecting/busy */
    zkf_timer *deadline;    /* while connecting */
    zkf_timer *later;       /* close() reporting to a waiter */
    lua_State *L;           /* main thread */
    int phase;
    int op;                 /* what a waiting coroutine asked, or OP_NONE */
    unsigned seq;           /* counts operations: a late cancel is told apart */
    int self, resume;       /* registry refs while a coroutine waits */
    int flushing;           /* PQflush has more to write */
    double timeout_s;       /* connect deadline; 0: none */
    /* the statement not yet sent */
    char *sql;
    int nparams;
    char **values;
    Oid *types;
    /* the outcome */
    PGresult *res;
    int failed;
    char err[2048];         /* without the "SQL: " prefix */
    char target[300];       /* "host:port/dbname" */
} lpg;

static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* ---- state --------------------------------------------------------- */

static void set_err(lpg *p, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    /* libpq ends its messages with a newline */
    n = strlen(p->err);
    while (n > 0 && (p->err[n - 1] == '\n' || p->err[n - 1] == ' ' ||
                     p->err[n - 1] == '\t'))
        p->err[--n] = '\0';
    p->failed = 1;
}

static void io_off(lpg *p)
{
    if (p->io) {
        zkf_io_stop(p->io);
        p->io = NULL;
    }
}

static void on_io(zkf_io *io, int fd, int events, void *arg);

/* Watches the connection's socket for `events`.  The watcher is made
 * anew when the socket changed (libpq opens a new one per address it
 * tries; a host keyed on the number would miss a reused one). */
static int io_on(lpg *p, int events)
{
    int fd = PQsocket(p->conn);

    if (fd < 0)
        return -1;
    if (p->io)
        return zkf_io_update(p->io, events);
    p->io = zkf_io_start(p->loop, fd, events, on_io, p);
    return p->io ? 0 : -1;
}

/* Forgets the connection (the next operation connects again). */
static void drop_conn(lpg *p)
{
    /* The watcher goes before the socket it watches. */
    io_off(p);
    if (p->deadline) {
        zkf_timer_stop(p->deadline);
        p->deadline = NULL;
    }
    if (p->conn) {
        PQfinish(p->conn);
        p->conn = NULL;
    }
    p->phase = PH_IDLE;
    p->flushing = 0;
}

static void job_free(lpg *p)
{
    free(p->sql);
    p->sql = NULL;
    if (p->values) {
        for (int i = 0; i < p->nparams; i++)
            free(p->values[i]);
        free(p->values);
        p->values = NULL;
    }
    free(p->types);
    p->types = NULL;
    p->nparams = 0;
}

/* Ends the operation of a waiter: it took its outcome, was cancelled, or
 * died waiting. */
static void end_op(lpg *p)
{
    lua_State *L = p->L;

    p->op = OP_NONE;
    p->failed = 0;
    job_free(p);
    if (p->res) {
        PQclear(p->res);
        p->res = NULL;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, p->resume);
    p->resume = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, p->self);
    p->self = LUA_NOREF;
}

/* Everything but the memory of the handle; no Lua function is called. */
static void release(lpg *p)
{
    end_op(p);
    drop_conn(p);
    if (p->later) {
        zkf_timer_stop(p->later);
        p->later = NULL;
    }
    free(p->conninfo);
    p->conninfo = NULL;
}

/* Calls the waiter's resume on the main thread (from a loop callback). */
static void report(lpg *p)
{
    lua_State *L = p->L;
    unsigned seq = p->seq;

    if (p->resume == LUA_NOREF)
        return;
    /* The handle stays on the stack while the coroutine runs: it may drop
     * its last reference and a collection may run. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->self);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->resume);
    luaL_unref(L, LUA_REGISTRYINDEX, p->resume);
    p->resume = LUA_NOREF;
    zkf_lua_pcall(L, 0);
    /* The continuation ends the operation; a coroutine that was closed
     * or died while it waited (a timeout's hook) never runs it. */
    if (p->seq == seq && p->op != OP_NONE)
        end_op(p);
    lua_pop(L, 1);
}

/* ---- connecting -------------------------------------------------------- */

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void set_target(lpg *p)
{
    const char *host = PQhost(p->conn), *port = PQport(p->conn),
               *db = PQdb(p->conn);

    if (!host || !*host)
        host = "localhost";
    snprintf(p->target, sizeof p->target,
             strchr(host, ':') ? "[%s]:%s/%s" : "%s:%s/%s", host,
             port && *port ? port : "5432", db ? db : "");
}

/* connect_timeout of the conninfo (or the environment), 0 meaning none
 * as in libpq; CONNECT_TIMEOUT_S when not given. */
static double connect_timeout(PGconn *conn)
{
    PQconninfoOption *opts = PQconninfo(conn), *o;
    double t = CONNECT_TIMEOUT_S;

    for (o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val) {
            t = atof(o->val);
            if (t < 0)
                t = 0;
            break;
        }
    }
    PQconninfoFree(opts);
    return t;
}

static void on_deadline(zkf_timer *t, void *arg)
{
    (void)t;
    lpg *p = arg;

    p->deadline = NULL;
    set_err(p, "postgresql %s: connect timed out after %gs", p->target,
            p->timeout_s);
    drop_conn(p);
    report(p);
}

static void conn_failed(lpg *p)
{
    set_err(p, "postgresql %s: %s", p->target,
            p->conn ? PQerrorMessage(p->conn) : "out of memory");
    drop_conn(p);
}

/* Starts connecting.  Returns 0 when under way, -1 when it failed (the
 * reason in p->err). */
static int connect_start(lpg *p)
{
    p->conn = PQconnectStart(p->conninfo);
    if (!p->conn) {
        conn_failed(p);
        return -1;
    }
    set_target(p);
    if (PQstatus(p->conn) == CONNECTION_BAD) {
        conn_failed(p);
        return -1;
    }
    PQsetNoticeProcessor(p->conn, on_notice, p);
    p->phase = PH_CONNECTING;
    p->timeout_s = connect_timeout(p->conn);
    /* PQconnectStart has polled once: it waits to write (its docs). */
    if (io_on(p, ZKF_IO_OUT) != 0) {
        conn_failed(p);
        return -1;
    }
    if (p->timeout_s > 0) {
        p->deadline = zkf_timer_start(p->loop, p->timeout_s * 1000.0,
                                      on_deadline, p);
        if (!p->deadline) {
            conn_failed(p);
            return -1;
        }
    }
    return 0;
}

/* One PQconnectPoll step.  Returns 1 connected, 0 waiting, -1 failed. */
static int connect_step(lpg *p)
{
    PostgresPollingStatusType st;

    /* The socket may be closed and another opened inside PQconnectPoll:
     * stop watching it first, watch whatever is there after. */
    io_off(p);
    st = PQconnectPoll(p->conn);
    switch (st) {
    case PGRES_POLLING_OK:
        if (p->deadline) {
            zkf_timer_stop(p->deadline);
            p->deadline = NULL;
        }
        if (PQsetnonblocking(p->conn, 1) != 0) {
            conn_failed(p);
            return -1;
        }
        p->phase = PH_IDLE;
        return 1;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (io_on(p, st == PGRES_POLLING_READING ? ZKF_IO_IN
                                                 : ZKF_IO_OUT) != 0) {
            conn_failed(p);
            return -1;
        }
        return 0;
    default:
        conn_failed(p);
        return -1;
    }
}

/* Is an idle connection still there?  A server that restarted or ended
 * the session has sent its FATAL message and closed: that is readable
 * now, without waiting, and tells us before a statement is lost on it. */
static int idle_alive(lpg *p)
{
    struct pollfd pfd;

    if (PQstatus(p->conn) != CONNECTION_OK)
        return 0;
    pfd.fd = PQsocket(p->conn);
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (pfd.fd < 0)
        return 0;
    /* A read stops after the data (the FATAL message, which libpq hands
     * to the notice processor when idle); the end of the stream is the
     * next read. */
    for (int i = 0; i < 4 && poll(&pfd, 1, 0) > 0; i++) {
        if (!PQconsumeInput(p->conn))
            return 0;
        (void)PQisBusy(p->conn);    /* parses what came */
        for (PGnotify *n = PQnotifies(p->conn); n; n = PQnotifies(p->conn))
            PQfreemem(n);
        if (PQstatus(p->conn) != CONNECTION_OK)
            return 0;
    }
    return 1;
}

/* ---- a statement ------------------------------------------------------- */

/* The connection broke during an operation.  Returns -1. */
static int lost(lpg *p)
{
    char why[sizeof p->err];

    snprintf(why, sizeof why, "%s",
             p->failed ? p->err : PQerrorMessage(p->conn));
    set_err(p, "postgresql %s: connection lost: %s", p->target, why);
    drop_conn(p);
    return -1;
}

/* Takes one PGresult.  Returns 0, or -1 when the connection had to go. */
static int collect(lpg *p, PGresult *r)
{
    switch (PQresultStatus(r)) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        if (p->op == OP_QUERY && !p->res && !p->failed) {
            p->res = r;
            return 0;
        }
        PQclear(r);
        return 0;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        /* Ending a COPY takes a protocol of its own; the history never
         * sends one.  A new connection is the short way out. */
        PQclear(r);
        set_err(p, "COPY is not supported by core.pg_open");
        drop_conn(p);
        return -1;
    default:
        if (!p->failed)
            set_err(p, "%s", PQresultErrorMessage(r));
        PQclear(r);
        return 0;
    }
}

/* Reads and writes what the socket allows.  Returns 1 when the statement
 * is done (p->res or p->err), 0 waiting, -1 failed. */
static int busy_step(lpg *p, int events)
{
    if (events & ZKF_IO_IN) {
        if (!PQconsumeInput(p->conn))
            return lost(p);
    }
    if (p->flushing) {
        int r = PQflush(p->conn);
        if (r < 0)
            return lost(p);
        p->flushing = r == 1;
    }
    while (!PQisBusy(p->conn)) {
        PGresult *r = PQgetResult(p->conn);
        if (!r) {
            /* A FATAL error and then the end of the session (the server
             * shut down, the backend was terminated) */
            if (PQstatus(p->conn) == CONNECTION_BAD)
                return lost(p);
            io_off(p);
            p->phase = PH_IDLE;
            return 1;
        }
        if (collect(p, r) != 0)
            return -1;
    }
    if (PQstatus(p->conn) == CONNECTION_BAD)
        return lost(p);
    /* While output is pending, input must still be read (PQflush's
     * docs): the server may be waiting for us to read. */
    if (io_on(p, ZKF_IO_IN | (p->flushing ? ZKF_IO_OUT : 0)) != 0) {
        set_err(p, "postgresql %s: out of memory", p->target);
        drop_conn(p);
        return -1;
    }
    return 0;
}

/* Sends the pending statement.  Returns as busy_step. */
static int send_job(lpg *p)
{
    int ok;

    if (p->op == OP_EXEC)
        ok = PQsendQuery(p->conn, p->sql);
    else
        ok = PQsendQueryParams(p->conn, p->sql, p->nparams, p->types,
                               (const char *const *)p->values, NULL, NULL,
                               0);
    job_free(p);    /* libpq has copied it */
    if (!ok) {
        if (PQstatus(p->conn) == CONNECTION_BAD)
            return lost(p);
        set_err(p, "%s", PQerrorMessage(p->conn));
        return -1;
    }
    p->phase = PH_BUSY;
    p->flushing = 1;
    return busy_step(p, 0);
}

/* A waiter arrived (op set, statement built).  Returns 1 when its
 * operation is already over (done or failed), 0 when it must wait. */
static int begin(lpg *p)
{
    p->failed = 0;
    if (p->phase == PH_CONNECTING)
        return 0;               /* on_io goes on from there */
    if (p->conn && !idle_alive(p))
        drop_conn(p);
    if (!p->conn)
        return connect_start(p) != 0;
    if (p->op == OP_CONNECT)
        return 1;
    return send_job(p) != 0;
}

static void on_io(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)fd;
    lpg *p = arg;
    int rc;

    if (p->phase == PH_CONNECTING) {
        rc = connect_step(p);
        if (rc == 1 && (p->op == OP_QUERY || p->op == OP_EXEC))
            rc = send_job(p);
    } else {
        rc = busy_step(p, events);
    }
    if (rc != 0)
        report(p);
}

/* ---- waiting in a coroutine -------------------------------------------- */

/* The function async.wait returns, to cancel: ends the operation of
 * sequence number upvalue 2 when it is still the current one. */
static int op_cancel(lua_State *L)
{
    lpg *p = lua_touserdata(L, lua_upvalueindex(1));
    unsigned seq = (unsigned)lua_tointeger(L, lua_upvalueindex(2));

    if (p->seq != seq || p->op == OP_NONE)
        return 0;
    /* A statement half sent or half read leaves the protocol mid-way:
     * a new connection is simpler than draining it. */
    if (p->phase != PH_IDLE)
        drop_conn(p);
    end_op(p);
    return 0;
}

/* register(resume) for async.wait: starts the operation; resume() is
 * called when it is over, at once when it is over already. */
static int op_register(lua_State *L)
{
    lpg *p = lua_touserdata(L, lua_upvalueindex(1));

    if (begin(p)) {
        lua_pushvalue(L, 1);
        lua_call(L, 0, 0);
    } else {
        lua_pushvalue(L, 1);
        p->resume = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushinteger(L, (lua_Integer)p->seq);
    lua_pushcclosure(L, op_cancel, 2);
    return 1;
}

static void push_value(lua_State *L, const PGresult *res, int r, int f)
{
    const char *s = PQgetvalue(res, r, f);

    switch (PQftype(res, f)) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
        lua_pushinteger(L, (lua_Integer)strtoll(s, NULL, 10));
        break;
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_NUMERIC:
        /* "NaN", "Infinity" and "-Infinity" included */
        lua_pushnumber(L, (lua_Number)strtod(s, NULL));
        break;
    case OID_BOOL:
        lua_pushboolean(L, s[0] == 't');
        break;
    default:
        lua_pushlstring(L, s, (size_t)PQgetlength(res, r, f));
        break;
    }
}

/* rows, affected of p->res; NULL is an absent key. */
static int push_rows(lua_State *L, lpg *p)
{
    const PGresult *res = p->res;
    int nr = PQntuples(res), nf = PQnfields(res);
    const char *cmd = PQcmdStatus((PGresult *)res);
    lua_Integer affected = 0;

    lua_createtable(L, nr, 0);
    for (int r = 0; r < nr; r++) {
        lua_createtable(L, 0, nf);
        for (int f = 0; f < nf; f++) {
            if (PQgetisnull(res, r, f))
                continue;
            push_value(L, res, r, f);
            lua_setfield(L, -2, PQfname(res, f));
        }
        lua_rawseti(L, -2, (lua_Integer)r + 1);
    }
    /* PQcmdTuples counts a SELECT's rows too; the contract counts
     * changes only. */
    if (strncmp(cmd, "INSERT ", 7) == 0 || strncmp(cmd, "UPDATE ", 7) == 0 ||
        strncmp(cmd, "DELETE ", 7) == 0 || strncmp(cmd, "MERGE ", 6) == 0)
        affected = (lua_Integer)strtoll(PQcmdTuples((PGresult *)res), NULL,
                                        10);
    lua_pushinteger(L, affected);
    return 2;
}

/* The rest of query/exec/pg_open once the wait is over; `ctx` is the
 * handle's stack index. */
static int op_k(lua_State *L, int status, lua_KContext ctx)
{
    int idx = (int)ctx, op, n;
    lpg *p = lua_touserdata(L, idx);

    (void)status;
    op = p->op;
    if (p->failed) {
        lua_pushfstring(L, "SQL: %s", p->err);
        end_op(p);
        if (op == OP_CONNECT) {
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
        return lua_error(L);
    }
    switch (op) {
    case OP_QUERY:
        n = push_rows(L, p);
        break;
    case OP_CONNECT:
        lua_pushvalue(L, idx);
        n = 1;
        break;
    default:
        n = 0;
        break;
    }
    end_op(p);
    return n;
}

/* Waits in zkflow.async's wait() for operation `op` on the handle at
 * stack index `idx`; returns what op_k returns. */
static int wait_op(lua_State *L, lpg *p, int idx, int op)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "zkflow.async");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "wait");
    lua_remove(L, -2);
    lua_pushvalue(L, idx);
    lua_pushcclosure(L, op_register, 1);
    /* From here to the continuation the operation is the handle's. */
    p->op = op;
    p->seq++;
    lua_pushvalue(L, idx);
    p->self = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_callk(L, 1, 0, (lua_KContext)idx, op_k);
    return op_k(L, LUA_OK, (lua_KContext)idx);
}

/* ---- the handle ---------------------------------------------------------- */

static lpg *check_usable(lua_State *L)
{
    lpg *p = luaL_checkudata(L, 1, PG_MT);

    if (!p->conninfo)
        luaL_error(L, "SQL: postgresql %s: connection closed", p->target);
    if (p->op != OP_NONE)
        luaL_error(L, "SQL: postgresql %s: busy: one statement at a time "
                   "per connection", p->target);
    if (!lua_isyieldable(L))
        luaL_error(L, "SQL: pg query outside a coroutine");
    return p;
}

static char *copy_text(const char *s, size_t len)
{
    char *c = malloc(len + 1);

    if (c) {
        memcpy(c, s, len);
        c[len] = '\0';
    }
    return c;
}

/* The text of parameter `v` (top of the stack), malloc'd; *type its oid,
 * 0 (the server infers it) for strings and NULL.  Sets *oom. */
static char *param_text(lua_State *L, Oid *type, int *oom)
{
    char buf[64];
    size_t len;
    const char *s;

    *type = 0;
    switch (lua_type(L, -1)) {
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &len);
        break;
    case LUA_TBOOLEAN:
        *type = OID_BOOL;
        s = lua_toboolean(L, -1) ? "t" : "f";
        len = 1;
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) {
            *type = OID_INT8;
            len = (size_t)snprintf(buf, sizeof buf, LUA_INTEGER_FMT,
                                   (LUAI_UACINT)lua_tointeger(L, -1));
        } else {
            double d = (double)lua_tonumber(L, -1);
            *type = OID_FLOAT8;
            if (isnan(d))
                len = (size_t)snprintf(buf, sizeof buf, "NaN");
            else if (isinf(d))
                len = (size_t)snprintf(buf, sizeof buf, "%sInfinity",
                                       d < 0 ? "-" : "");
            else    /* 17 digits: the same double comes back */
                len = (size_t)snprintf(buf, sizeof buf, "%.17g", d);
        }
        s = buf;
        break;
    default:    /* core.sql_null */
        return NULL;
    }
    char *c = copy_text(s, len);
    if (!c)
        *oom = 1;
    return c;
}

/* Copies sql and the parameters at `pidx` (0: none) into p.  Misuse and
 * out-of-memory raise, with nothing left allocated. */
static void job_build(lua_State *L, lpg *p, const char *sql, size_t sqllen,
                      int pidx)
{
    int n = pidx ? (int)lua_rawlen(L, pidx) : 0, oom = 0;

    if (strlen(sql) != sqllen)
        luaL_error(L, "SQL: the statement contains a NUL byte");
    for (int i = 1; i <= n; i++) {
        int t = lua_rawgeti(L, pidx, i);
        if (t == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            if (strlen(s) != len)
                luaL_error(L, "SQL: parameter $%d contains a NUL byte", i);
        } else if (t != LUA_TNUMBER && t != LUA_TBOOLEAN &&
                   lua_touserdata(L, -1) != zkf_lua_sql_null()) {
            luaL_error(L, "SQL: parameter $%d: a %s is not a string, "
                       "number, boolean or core.sql_null", i,
                       luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
    p->sql = copy_text(sql, sqllen);
    p->values = calloc(n ? (size_t)n : 1, sizeof *p->values);
    p->types = calloc(n ? (size_t)n : 1, sizeof *p->types);
    p->nparams = n;
    if (!p->sql || !p->values || !p->types)
        oom = 1;
    for (int i = 0; i < n && !oom; i++) {
        lua_rawgeti(L, pidx, i + 1);
        p->values[i] = param_text(L, &p->types[i], &oom);
        lua_pop(L, 1);
    }
    if (oom) {
        job_free(p);
        luaL_error(L, "SQL: out of memory");
    }
}

/* conn:query(sql [, params]) -> rows, affected */
static int l_query(lua_State *L)
{
    lpg *p = check_usable(L);
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    int pidx = 0;

    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        pidx = 3;
    }
    job_build(L, p, sql, len, pidx);
    return wait_op(L, p, 1, OP_QUERY);
}

/* conn:exec(script): statements separated by ";", no parameters */
static int l_exec(lua_State *L)
{
    lpg *p = check_usable(L);
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);

    job_build(L, p, sql, len, 0);
    return wait_op(L, p, 1, OP_EXEC);
}

static void later_fire(zkf_timer *t, void *arg)
{
    (void)t;
    lpg *p = arg;

    p->later = NULL;
    report(p);
}

/* conn:close(): idempotent; also __close.  A coroutine waiting on the
 * connection gets "connection closed" on the next loop turn, not inside
 * this call. */
static int l_close(lua_State *L)
{
    lpg *p = luaL_checkudata(L, 1, PG_MT);

    if (!p->conninfo)
        return 0;
    drop_conn(p);
    free(p->conninfo);
    p->conninfo = NULL;
    if (p->op != OP_NONE) {
        job_free(p);
        set_err(p, "postgresql %s: connection closed", p->target);
        if (p->resume != LUA_NOREF && !p->later) {
            p->later = zkf_timer_start(p->loop, 0, later_fire, p);
            if (!p->later)
                end_op(p);
        }
    }
    return 0;
}

static int l_gc(lua_State *L)
{
    release(luaL_checkudata(L, 1, PG_MT));
    return 0;
}

static int l_tostring(lua_State *L)
{
    lpg *p = luaL_checkudata(L, 1, PG_MT);

    lua_pushfstring(L, "zkflow.PgConn (%s, %s)", p->target,
                    !p->conninfo ? "closed" :
                    p->op != OP_NONE ? "busy" :
                    p->phase == PH_CONNECTING ? "connecting" :
                    p->conn ? "connected" : "not connected");
    return 1;
}

/* libpq quotes a URI it cannot read, password and all: in every
 * "scheme://user:password@" of `msg` (a buffer of `size` bytes) the
 * password becomes "***". */
static void hide_password(char *msg, size_t size)
{
    char *s = msg;

    while ((s = strstr(s, "://")) != NULL) {
        char *user = s + 3;
        size_t n = strcspn(user, "@/\"");
        char *colon = memchr(user, ':', n);
        char *at = user + n;
        size_t tail, room;

        s = user;
        if (*at != '@' || !colon)
            continue;
        if ((size_t)(colon - msg) + 5 > size) {
            colon[1] = '\0';   /* no room even for "***@" */
            return;
        }
        tail = strlen(at) + 1;
        room = size - (size_t)(colon + 4 - msg);
        if (tail > room) {      /* cut the end rather than overflow */
            tail = room;
            at[tail - 1] = '\0';
        }
        memmove(colon + 4, at, tail);
        memcpy(colon + 1, "***", 3);
        s = colon + 4;
    }
}

/* core.pg_open(conninfo) -> conn, or nil, err */
static int l_pg_open(lua_State *L)
{
    const char *conninfo = luaL_checkstring(L, 1);
    zkf_loop *loop = zkf_lua_loop(L);
    PQconninfoOption *opts;
    char *perr = NULL;
    int idx;

    /* The handle exists, closed, before anything is acquired: an error
     * raised below leaves nothing behind but garbage. */
    lpg *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->self = p->resume = LUA_NOREF;
    p->loop = loop;
    p->L = main_thread(L);
    snprintf(p->target, sizeof p->target, "(not connected)");
    luaL_setmetatable(L, PG_MT);
    idx = lua_gettop(L);
    p->conninfo = copy_text(conninfo, strlen(conninfo));
    if (!p->conninfo)
        return luaL_error(L, "SQL: out of memory");
    /* A conninfo libpq cannot read has no target to name yet. */
    opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        lua_pushnil(L);
        set_err(p, "postgresql: bad conninfo: %s",
                perr ? perr : "out of memory");
        PQfreemem(perr);
        hide_password(p->err, sizeof p->err);
        lua_pushfstring(L, "SQL: %s", p->err);
        release(p);
        return 2;
    }
    PQconninfoFree(opts);
    if (connect_start(p) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "SQL: %s", p->err);
        release(p);
        return 2;
    }
    if (!lua_isyieldable(L))
        return 1;   /* connects on the loop; a failure is the first query's */
    return wait_op(L, p, idx, OP_CONNECT);
}

static const luaL_Reg pg_methods[] = {
    {"query", l_query},
    {"exec", l_exec},
    {"close", l_close},
    {NULL, NULL}
};

static const luaL_Reg pg_meta[] = {
    {"__gc", l_gc},
    {"__close", l_close},
    {"__tostring", l_tostring},
    {NULL, NULL}
};

void zkf_lua_open_pg(lua_State *L)
{
    luaL_newmetatable(L, PG_MT);
    luaL_setfuncs(L, pg_meta, 0);
    luaL_newlib(L, pg_methods);
    lua_pushliteral(L, "postgresql");
    lua_setfield(L, -2, "driver");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_pg_open);
    lua_setfield(L, -2, "pg_open");
}
