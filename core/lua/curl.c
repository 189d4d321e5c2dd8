/*
 * lua/curl.c - HTTP and HTTPS requests in `zkflow.core`, on libcurl's multi
 * socket interface driven by the module's loop:
 *
 *   core.http_request(opts, cb) -> r
 *   core.curl_version() -> {version=, ssl=, asynchdns=bool, http2=bool,
 *                           resolver="threaded"|"c-ares"|"blocking"}
 *
 * opts: url (http:// or https://, no user:password), method ("GET", "HEAD",
 * "POST", "PUT", "DELETE", "PATCH"), headers (a list of "Name: value"
 * lines; "Name:" removes one of libcurl's), body (a string or nil),
 * timeout (seconds for the whole exchange), connect_timeout (seconds, or
 * nil: the whole timeout), ca_file (the CA certificates to trust instead of
 * the system's), follow (follow redirects), max_redirects, max_body (bytes).
 * On the loop, cb(resp) with resp = {status=, reason=, version=, headers =
 * {lower-case name = value, repeats joined with ", "}, body=, url= (the
 * last URL, after redirects), redirects=N}, or cb(nil, err) with err
 * "connect 127.0.0.1:1: Connection refused", "read h:80: timed out after
 * 2s", "tls h:443: SSL certificate problem: ...", "bad response: ...".
 * cb never runs inside http_request().  r:cancel() (also __gc and
 * __close) stops the transfer and drops the callback.
 *
 * How it is driven.  One CURLM per Lua state (so one per loop: a state has
 * one loop) sits in the registry as a zkflow.CurlMulti userdata, made on
 * the first request.  Its CURLMOPT_SOCKETFUNCTION turns libcurl's socket
 * interest into zkf_io watchers and its CURLMOPT_TIMERFUNCTION into one
 * zkf_timer, as curl's docs/examples/hiperfifo.c does with libevent; the
 * watchers and the timer call curl_multi_socket_action(), and finished
 * transfers are read with curl_multi_info_read() afterwards, outside any
 * libcurl callback, before Lua runs.  Nothing here blocks the loop: host
 * names are resolved by libcurl's threaded resolver (Debian's libcurl4 is
 * built with it: curl_version().resolver), whose completion reaches
 * the loop through a socket pair that the socket callback watches.
 *
 * Ownership.
 *   - The CurlMulti userdata owns the CURLM, its zkf_timer and the csock
 *     records (one per fd libcurl asked to watch, each owning its zkf_io).
 *     The registry holds it until lua_close(); every request holds it in
 *     its user value, so it outlives them.  It is created before any
 *     request, so lua_close() finalizes the requests first (Lua finalizes
 *     in reverse order of creation), and the engine closes its Lua state
 *     before it frees the loop.
 *   - A request (zkflow.HttpRequest) owns its CURL easy handle, its header
 *     list, the copied request body (libcurl's COPYPOSTFIELDS copy, freed
 *     with the easy handle), the reply's body and header buffers, and a
 *     registry reference to its callback and to itself while pending (so a
 *     dropped handle still reports).  All of it is released when the
 *     transfer ends, on cancel() and on __gc.
 *
 * Global state.  libcurl needs curl_global_init() once per process before
 * any other call, and it is not thread-safe in every build: it is called
 * once through pthread_once() (the one piece of process state here) and
 * never undone, since another library in the process (nginx's modules, a
 * host) may use libcurl too.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "lua/lbind.h"

#define MULTI_MT "zkflow.CurlMulti"
#define MULTI_KEY "zkflow.curlmulti"
#define REQ_MT "zkflow.HttpRequest"

/* A reply body larger than this (by default) is an error, not an
 * allocation without end. */
#define BODY_MAX (16L * 1024L * 1024L)

typedef struct csock csock;
typedef struct cmulti cmulti;

struct csock {
    cmulti *m;
    curl_socket_t fd;
    zkf_io *io;
    csock *prev, *next;
};

struct cmulti {
    CURLM *multi;           /* NULL once cleaned up */
    zkf_loop *loop;
    zkf_timer *timer;       /* libcurl's one timeout; NULL when none */
    lua_State *L;           /* main thread */
    csock *socks;
    int closing;            /* in __gc: libcurl's timer requests are moot */
};

/* One response header, in arrival order. */
typedef struct hfield {
    char *name;             /* lower-case */
    char *value;
} hfield;

typedef struct hreq {
    cmulti *m;
    CURL *easy;             /* NULL when idle */
    struct curl_slist *hdrs;
    zkf_timer *later;       /* a setup failure, reported on the next turn */
    lua_State *L;           /* main thread */
    int fn, self;           /* registry refs, LUA_NOREF when idle */
    char *body;             /* the reply body so far */
    size_t body_len, body_cap;
    long body_max;
    hfield *fields;
    size_t nfields, fields_cap;
    char version[16];       /* "HTTP/1.1", from the last status line */
    char reason[128];
    int status_seen;        /* a status line arrived (else HTTP/0.9) */
    int in_trailers;        /* the final response's header block ended */
    int too_big;
    int https;
    double timeout, connect_timeout;
    long max_redirects;
    char errbuf[CURL_ERROR_SIZE];
    char err[1024];
} hreq;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_OK;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static lua_State *main_thread(lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_State *M = lua_tothread(L, -1);
    lua_pop(L, 1);
    return M;
}

/* ---- the multi handle and the loop ---------------------------------- */

static void check_done(cmulti *m);

static void sock_free(csock *s)
{
    cmulti *m = s->m;

    if (s->io)
        zkf_io_stop(s->io);
    if (s->prev)
        s->prev->next = s->next;
    else
        m->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

static void on_sock(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    cmulti *m = arg;
    int running = 0;
    int mask = 0;

    if (events & ZKF_IO_IN)
        mask |= CURL_CSELECT_IN;
    if (events & ZKF_IO_OUT)
        mask |= CURL_CSELECT_OUT;
    curl_multi_socket_action(m->multi, fd, mask, &running);
    check_done(m);
}

/* CURLMOPT_SOCKETFUNCTION: the watch set of `fd` changed. */
static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                   void *socketp)
{
    (void)easy;
    cmulti *m = userp;
    csock *s = socketp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(m->multi, fd, NULL);
            sock_free(s);
        }
        return 0;
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= ZKF_IO_IN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= ZKF_IO_OUT;
    if (s)
        return zkf_io_update(s->io, events) == 0 ? 0 : -1;
    s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->m = m;
    s->fd = fd;
    s->io = zkf_io_start(m->loop, fd, events, on_sock, m);
    if (!s->io) {
        free(s);
        return -1;
    }
    s->next = m->socks;
    if (m->socks)
        m->socks->prev = s;
    m->socks = s;
    curl_multi_assign(m->multi, fd, s);
    return 0;
}

static void on_timeout(zkf_timer *t, void *arg)
{
    (void)t;
    cmulti *m = arg;
    int running = 0;

    /* The loop frees the firing timer; libcurl may ask for a new one
     * from inside socket_action. */
    m->timer = NULL;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(m);
}

/* CURLMOPT_TIMERFUNCTION: one timeout, a new value replaces the old, -1
 * cancels: the zkf_loop timer contract exactly. */
static int timer_cb(CURLM *multi, long ms, void *userp)
{
    (void)multi;
    cmulti *m = userp;

    if (m->timer) {
        zkf_timer_stop(m->timer);
        m->timer = NULL;
    }
    if (ms < 0 || m->closing)
        return 0;
    m->timer = zkf_timer_start(m->loop, (double)ms, on_timeout, m);
    return m->timer ? 0 : -1;
}

static int multi_gc(lua_State *L)
{
    cmulti *m = luaL_checkudata(L, 1, MULTI_MT);

    if (!m->multi)
        return 0;
    m->closing = 1;
    /* Every request was finalized before (or holds this alive): what is
     * left is libcurl's connection cache. */
    curl_multi_cleanup(m->multi);
    m->multi = NULL;
    while (m->socks)
        sock_free(m->socks);
    if (m->timer) {
        zkf_timer_stop(m->timer);
        m->timer = NULL;
    }
    return 0;
}

/* Pushes the state's multi userdata, creating it on first use.  Raises a
 * Lua error when libcurl cannot start or memory is out. */
static cmulti *multi_get(lua_State *L)
{
    cmulti *m;

    if (lua_getfield(L, LUA_REGISTRYINDEX, MULTI_KEY) == LUA_TUSERDATA)
        return lua_touserdata(L, -1);
    lua_pop(L, 1);
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        luaL_error(L, "core.http_request: curl_global_init: %s",
                   curl_easy_strerror(global_rc));
    zkf_loop *loop = zkf_lua_loop(L);
    m = lua_newuserdatauv(L, sizeof *m, 0);
    memset(m, 0, sizeof *m);
    m->loop = loop;
    m->L = main_thread(L);
    luaL_setmetatable(L, MULTI_MT);
    m->multi = curl_multi_init();
    if (!m->multi)
        luaL_error(L, "core.http_request: curl_multi_init failed");
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, MULTI_KEY);
    return m;
}

/* ---- a request ------------------------------------------------------ */

static void fields_free(hreq *r)
{
    for (size_t i = 0; i < r->nfields; i++) {
        free(r->fields[i].name);
        free(r->fields[i].value);
    }
    r->nfields = 0;
}

/* Releases the transfer and its buffers; the handle stays valid (idle). */
static void req_release(hreq *r)
{
    if (r->easy) {
        if (r->m->multi)
            curl_multi_remove_handle(r->m->multi, r->easy);
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
    }
    if (r->later) {
        zkf_timer_stop(r->later);
        r->later = NULL;
    }
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    fields_free(r);
    free(r->fields);
    r->fields = NULL;
    r->fields_cap = 0;
}

static void push_headers(lua_State *L, hreq *r)
{
    lua_createtable(L, 0, (int)r->nfields);
    for (size_t i = 0; i < r->nfields; i++) {
        if (lua_getfield(L, -1, r->fields[i].name) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, r->fields[i].value);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, r->fields[i].value);
        }
        lua_setfield(L, -2, r->fields[i].name);
    }
}

/* Pushes the response table of a finished transfer. */
static void push_response(lua_State *L, hreq *r)
{
    long status = 0, redirects = 0;
    char *url = NULL;

    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(r->easy, CURLINFO_REDIRECT_COUNT, &redirects);
    curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, r->reason);
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, r->version);
    lua_setfield(L, -2, "version");
    push_headers(L, r);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    lua_setfield(L, -2, "body");
    lua_pushstring(L, url ? url : "");
    lua_setfield(L, -2, "url");
    lua_pushinteger(L, redirects);
    lua_setfield(L, -2, "redirects");
}

/* Ends the request with cb(resp) or cb(nil, r->err); `ok` < 0: r->err is
 * already set and there is no transfer to read. */
static void req_finish(hreq *r, int ok)
{
    lua_State *L = r->L;

    if (r->fn == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->fn);
    if (ok > 0) {
        push_response(L, r);
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

/* "host:port" of the URL the transfer was at, for messages. */
static void where_of(hreq *r, char *out, size_t n)
{
    char *url = NULL, *host = NULL, *port = NULL;
    CURLU *u = curl_url();

    snprintf(out, n, "?");
    curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (u && url && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) ==
            CURLUE_OK)
        snprintf(out, n, "%s:%s", host, port);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
}

/* The first line of `s`, quoted with Lua's %q-like escapes, at most 80
 * bytes of it. */
static void quote_line(const char *s, size_t len, char *out, size_t n)
{
    size_t o = 0;

    if (n < 4)
        return;
    out[o++] = '"';
    for (size_t i = 0; i < len && i < 80 && s[i] != '\n' && s[i] != '\r';
         i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[8];
        int k;

        if (c == '"' || c == '\\')
            k = snprintf(tmp, sizeof tmp, "\\%c", c);
        else if (c < 32 || c == 127)
            k = snprintf(tmp, sizeof tmp, "\\%u", c);
        else
            k = snprintf(tmp, sizeof tmp, "%c", c);
        if (o + (size_t)k + 2 >= n)
            break;
        memcpy(out + o, tmp, (size_t)k);
        o += (size_t)k;
    }
    out[o++] = '"';
    out[o] = '\0';
}

static int has_field(hreq *r, const char *name)
{
    for (size_t i = 0; i < r->nfields; i++)
        if (strcmp(r->fields[i].name, name) == 0)
            return 1;
    return 0;
}

/* Words a user can act on for libcurl's outcome `rc`, into r->err.
 * Returns 1 when the transfer is a response after all. */
static int describe(hreq *r, CURLcode rc)
{
    char where[256];
    const char *detail = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
    long oserr = 0;

    if (rc == CURLE_OK) {
        if (r->status_seen)
            return 1;
        /* No status line: libcurl took the reply for HTTP/0.9. */
        if (r->body_len == 0) {
            snprintf(r->err, sizeof r->err, "bad response: empty reply (the "
                     "server closed the connection without answering)");
        } else {
            char q[200];
            quote_line(r->body, r->body_len, q, sizeof q);
            snprintf(r->err, sizeof r->err, "bad response: bad status line %s",
                     q);
        }
        return 0;
    }
    where_of(r, where, sizeof where);
    curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &oserr);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        snprintf(r->err, sizeof r->err, "connect %s: %s", where,
                 oserr ? strerror((int)oserr) : detail);
        break;
    case CURLE_OPERATION_TIMEDOUT: {
        curl_off_t connected = 0, handshaken = 0;
        long lport = 0;
        const char *phase = "read";
        /* libcurl words the whole-transfer limit so; the others are the
         * connect limit (TCP and TLS) */
        int whole = strncmp(r->errbuf, "Operation timed out", 19) == 0;
        double limit = !whole && r->connect_timeout > 0 ? r->connect_timeout
                                                       : r->timeout;

        /* The connect time counts the TLS handshake in; the local port is
         * known once TCP is connected. */
        curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME_T, &connected);
        curl_easy_getinfo(r->easy, CURLINFO_APPCONNECT_TIME_T, &handshaken);
        curl_easy_getinfo(r->easy, CURLINFO_LOCAL_PORT, &lport);
        if (r->https && handshaken == 0 &&
            (lport != 0 || strstr(r->errbuf, "SSL") != NULL))
            phase = "tls handshake";
        else if (connected == 0 && lport == 0)
            phase = "connect";
        snprintf(r->err, sizeof r->err, "%s %s: timed out after %gs", phase,
                 where, limit);
        break;
    }
    case CURLE_COULDNT_RESOLVE_HOST:
        snprintf(r->err, sizeof r->err, "resolve %s: %s", where, detail);
        break;
    case CURLE_COULDNT_RESOLVE_PROXY:
        snprintf(r->err, sizeof r->err, "resolve proxy: %s", detail);
        break;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
        snprintf(r->err, sizeof r->err, "tls %s: %s", where, detail);
        break;
    case CURLE_TOO_MANY_REDIRECTS:
        snprintf(r->err, sizeof r->err, "more than %ld redirects "
                 "(max_redirects), the last to %s", r->max_redirects, where);
        break;
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_WRITE_ERROR:
        if (rc == CURLE_FILESIZE_EXCEEDED || r->too_big) {
            snprintf(r->err, sizeof r->err,
                     "read %s: reply longer than %ld bytes", where,
                     r->body_max);
            break;
        }
        snprintf(r->err, sizeof r->err, "%s: %s", where, detail);
        break;
    case CURLE_GOT_NOTHING:
        snprintf(r->err, sizeof r->err, "bad response: empty reply (the "
                 "server closed the connection without answering)");
        break;
    case CURLE_PARTIAL_FILE: {
        curl_off_t want = -1;

        curl_easy_getinfo(r->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &want);
        if (has_field(r, "transfer-encoding"))
            snprintf(r->err, sizeof r->err, "bad response: the chunked body "
                     "ends early (the connection closed)");
        else if (want >= 0)
            snprintf(r->err, sizeof r->err, "bad response: the body ends "
                     "early: Content-Length is %ld, received %zu bytes",
                     (long)want, r->body_len);
        else
            snprintf(r->err, sizeof r->err, "bad response: %s", detail);
        break;
    }
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
        snprintf(r->err, sizeof r->err, "%s %s: %s",
                 rc == CURLE_RECV_ERROR ? "read" : "write", where,
                 oserr ? strerror((int)oserr) : detail);
        break;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_HTTP2:
    case CURLE_BAD_CONTENT_ENCODING:
        snprintf(r->err, sizeof r->err, "bad response: %s", detail);
        break;
    default:
        snprintf(r->err, sizeof r->err, "%s: %s (curl error %d)", where,
                 detail, (int)rc);
        break;
    }
    return 0;
}

static void check_done(cmulti *m)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        char *priv = NULL;
        CURLcode rc;

        if (msg->msg != CURLMSG_DONE)
            continue;
        rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        if (!priv)
            continue;
        hreq *r = (hreq *)priv;
        /* Lua runs next and may start or cancel requests: libcurl is out
         * of every callback here. */
        req_finish(r, describe(r, rc));
    }
}

static void later_fire(zkf_timer *t, void *arg)
{
    (void)t;
    hreq *r = arg;
    r->later = NULL;
    req_finish(r, -1);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    hreq *r = arg;
    size_t len = size * n;

    if (r->body_len + len > (size_t)r->body_max) {
        r->too_big = 1;
        return 0;
    }
    if (r->body_cap - r->body_len < len) {
        size_t cap = r->body_cap ? r->body_cap : 8192;
        char *q;
        while (cap - r->body_len < len)
            cap *= 2;
        q = realloc(r->body, cap);
        if (!q)
            return 0;
        r->body = q;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, p, len);
    r->body_len += len;
    return len;
}

static char *dup_range(const char *s, size_t len)
{
    char *d = malloc(len + 1);

    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

static void trim(const char **s, size_t *len)
{
    while (*len && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

/* A status line starts a new response (an interim 1xx, a redirect or the
 * final one): only the last one's fields are kept. */
static void status_line(hreq *r, const char *s, size_t len)
{
    const char *sp = memchr(s, ' ', len);
    size_t vlen = sp ? (size_t)(sp - s) : len;
    const char *rest;
    size_t rlen;

    fields_free(r);
    r->status_seen = 1;
    r->in_trailers = 0;
    snprintf(r->version, sizeof r->version, "%.*s", (int)vlen, s);
    r->reason[0] = '\0';
    if (!sp)
        return;
    rest = sp + 1;
    rlen = len - vlen - 1;
    sp = memchr(rest, ' ', rlen);       /* after the code */
    if (!sp)
        return;
    rlen -= (size_t)(sp + 1 - rest);
    rest = sp + 1;
    snprintf(r->reason, sizeof r->reason, "%.*s", (int)rlen, rest);
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    hreq *r = arg;
    size_t len = size * n, whole = len;
    const char *s = p;

    while (len && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    if (len >= 5 && memcmp(s, "HTTP/", 5) == 0) {
        status_line(r, s, len);
        return whole;
    }
    if (len == 0) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200)
            r->in_trailers = 1;
        return whole;
    }
    if ((s[0] == ' ' || s[0] == '\t') && r->nfields > 0) {
        /* obsolete line folding: a continuation of the previous field */
        hfield *f = &r->fields[r->nfields - 1];
        size_t old = strlen(f->value);
        char *v;
        trim(&s, &len);
        v = realloc(f->value, old + 1 + len + 1);
        if (!v)
            return 0;
        v[old] = ' ';
        memcpy(v + old + 1, s, len);
        v[old + 1 + len] = '\0';
        f->value = v;
        return whole;
    }
    const char *colon = memchr(s, ':', len);
    if (!colon || colon == s)
        return whole;       /* not a field: libcurl judged the reply */
    size_t nlen = (size_t)(colon - s);
    const char *v = colon + 1;
    size_t vlen = len - nlen - 1;
    trim(&v, &vlen);
    char *name = dup_range(s, nlen);
    if (!name)
        return 0;
    for (char *c = name; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    /* A trailer does not replace a field of the header. */
    if (r->in_trailers && has_field(r, name)) {
        free(name);
        return whole;
    }
    if (r->nfields == r->fields_cap) {
        size_t cap = r->fields_cap ? r->fields_cap * 2 : 16;
        hfield *f = realloc(r->fields, cap * sizeof *f);
        if (!f) {
            free(name);
            return 0;
        }
        r->fields = f;
        r->fields_cap = cap;
    }
    r->fields[r->nfields].name = name;
    r->fields[r->nfields].value = dup_range(v, vlen);
    if (!r->fields[r->nfields].value) {
        free(name);
        return 0;
    }
    r->nfields++;
    return whole;
}

/* ---- core.http_request ---------------------------------------------- */

static const char *opt_string(lua_State *L, const char *key)
{
    const char *s = NULL;

    lua_getfield(L, 1, key);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "core.http_request: '%s' must be a string", key);
        s = lua_tostring(L, -1);
    }
    lua_pop(L, 1);          /* the string stays in opts, which is alive */
    return s;
}

static double opt_number(lua_State *L, const char *key, double dflt)
{
    double v = dflt;

    lua_getfield(L, 1, key);
    if (!lua_isnil(L, -1)) {
        int isnum;
        v = lua_tonumberx(L, -1, &isnum);
        if (!isnum)
            luaL_error(L, "core.http_request: '%s' must be a number", key);
    }
    lua_pop(L, 1);
    return v;
}

/* The setopt calls of one request; a non-zero return is libcurl's. */
static CURLcode setup(hreq *r, const char *url, const char *method,
                      const char *body, size_t body_len, const char *ca_file,
                      int follow)
{
    CURL *e = r->easy;
    CURLcode rc = CURLE_OK;

#define SET(opt, val) \
    do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PRIVATE, (void *)r);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    /* A reply without a status line is ours to name (bad status line
     * "..."), which HTTP/0.9 mode lets us see. */
    SET(CURLOPT_HTTP09_ALLOWED, 1L);
    SET(CURLOPT_FOLLOWLOCATION, (long)follow);
    SET(CURLOPT_MAXREDIRS, r->max_redirects);
    SET(CURLOPT_TIMEOUT_MS, (long)(r->timeout * 1000.0 + 0.5));
    if (r->connect_timeout > 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS,
            (long)(r->connect_timeout * 1000.0 + 0.5));
    if (ca_file) {
        SET(CURLOPT_CAINFO, ca_file);
        SET(CURLOPT_CAPATH, (char *)NULL);
    }
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->body_max);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)r);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)r);
    SET(CURLOPT_HTTPHEADER, r->hdrs);
    if (strcmp(method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "POST") == 0) {
        /* CURLOPT_POST (not a custom method) so that a 301/302/303
         * redirect continues as GET, as browsers and requests do. */
        SET(CURLOPT_POST, 1L);
    } else if (strcmp(method, "GET") != 0 || body) {
        /* (a GET with a body too: POSTFIELDS alone would make it a POST) */
        SET(CURLOPT_CUSTOMREQUEST, method);
    }
    if (body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        SET(CURLOPT_COPYPOSTFIELDS, body);
    }
#undef SET
    return rc;
}

/* core.http_request(opts, cb) -> handle */
static int l_http_request(lua_State *L)
{
    const char *url, *method, *ca_file, *body = NULL;
    size_t body_len = 0;
    double timeout, connect_timeout, max_redirects, max_body;
    int follow;

    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_type(L, 2) != LUA_TFUNCTION) {
        if (luaL_getmetafield(L, 2, "__call") == LUA_TNIL)
            luaL_typeerror(L, 2, "function");
        lua_pop(L, 1);
    }
    url = opt_string(L, "url");
    if (!url)
        return luaL_error(L, "core.http_request: 'url' is required");
    method = opt_string(L, "method");
    if (!method)
        method = "GET";
    ca_file = opt_string(L, "ca_file");
    timeout = opt_number(L, "timeout", 30);
    connect_timeout = opt_number(L, "connect_timeout", 0);
    max_redirects = opt_number(L, "max_redirects", 30);
    max_body = opt_number(L, "max_body", (double)BODY_MAX);
    luaL_argcheck(L, timeout > 0, 1, "'timeout' must be > 0");
    luaL_argcheck(L, connect_timeout >= 0, 1, "'connect_timeout' must be >= 0");
    luaL_argcheck(L, max_redirects >= 0, 1, "'max_redirects' must be >= 0");
    luaL_argcheck(L, max_body >= 0, 1, "'max_body' must be >= 0");
    lua_getfield(L, 1, "follow");
    follow = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1))
        body = luaL_checklstring(L, -1, &body_len);
    lua_pop(L, 1);
    lua_getfield(L, 1, "headers");
    int headers = lua_gettop(L);
    if (!lua_isnil(L, headers))
        luaL_checktype(L, headers, LUA_TTABLE);

    /* The multi first: lua_close() finalizes the requests before it. */
    cmulti *m = multi_get(L);
    int mi = lua_gettop(L);

    /* The handle exists, idle, before anything is acquired: an error
     * raised below leaves nothing behind but garbage. */
    hreq *r = lua_newuserdatauv(L, sizeof *r, 1);
    memset(r, 0, sizeof *r);
    r->m = m;
    r->fn = r->self = LUA_NOREF;
    r->L = main_thread(L);
    r->timeout = timeout;
    r->connect_timeout = connect_timeout;
    r->max_redirects = (long)max_redirects;
    r->body_max = (long)max_body;
    r->https = strncasecmp(url, "https:", 6) == 0;
    luaL_setmetatable(L, REQ_MT);
    lua_pushvalue(L, mi);
    lua_setiuservalue(L, -2, 1);

    if (!lua_isnil(L, headers)) {
        lua_Integer n = luaL_len(L, headers);
        for (lua_Integer i = 1; i <= n; i++) {
            struct curl_slist *l;
            lua_geti(L, headers, i);
            const char *h = lua_tostring(L, -1);
            if (!h) {
                req_release(r);
                return luaL_error(L, "core.http_request: header %d is not "
                                  "a string", (int)i);
            }
            l = curl_slist_append(r->hdrs, h);
            lua_pop(L, 1);
            if (!l) {
                req_release(r);
                return luaL_error(L, "core.http_request: out of memory");
            }
            r->hdrs = l;
        }
    }
    r->easy = curl_easy_init();
    if (!r->easy) {
        req_release(r);
        return luaL_error(L, "core.http_request: curl_easy_init failed");
    }
    CURLcode rc = setup(r, url, method, body, body_len, ca_file, follow);
    CURLMcode mrc = CURLM_OK;
    if (rc == CURLE_OK)
        mrc = curl_multi_add_handle(m->multi, r->easy);
    if (rc != CURLE_OK || mrc != CURLM_OK) {
        snprintf(r->err, sizeof r->err, "%s",
                 rc != CURLE_OK ? curl_easy_strerror(rc)
                                : curl_multi_strerror(mrc));
        /* Not added: nothing to remove. */
        curl_easy_cleanup(r->easy);
        r->easy = NULL;
        /* Reported from the loop, as every other outcome. */
        r->later = zkf_timer_start(m->loop, 0, later_fire, r);
        if (!r->later) {
            req_release(r);
            return luaL_error(L, "core.http_request: out of memory");
        }
    }
    lua_pushvalue(L, 2);
    r->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    r->self = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* r:cancel() -> true when the request was pending.  Also __gc, __close. */
static int req_cancel(lua_State *L)
{
    hreq *r = luaL_checkudata(L, 1, REQ_MT);
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
    hreq *r = luaL_checkudata(L, 1, REQ_MT);
    lua_pushfstring(L, "zkflow.HttpRequest (%s)",
                    r->fn != LUA_NOREF ? "pending" : "idle");
    return 1;
}

/* core.curl_version() -> {version=, ssl=, asynchdns=, http2=, resolver=} */
static int l_curl_version(lua_State *L)
{
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);

    lua_createtable(L, 0, 5);
    lua_pushstring(L, v->version);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, v->ssl_version ? v->ssl_version : "");
    lua_setfield(L, -2, "ssl");
    lua_pushboolean(L, (v->features & CURL_VERSION_ASYNCHDNS) != 0);
    lua_setfield(L, -2, "asynchdns");
    lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
    lua_setfield(L, -2, "http2");
    /* AsynchDNS without c-ares is the threaded resolver */
    lua_pushstring(L, v->ares ? "c-ares"
                      : (v->features & CURL_VERSION_ASYNCHDNS) ? "threaded"
                      : "blocking");
    lua_setfield(L, -2, "resolver");
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

void zkf_lua_open_curl(lua_State *L)
{
    luaL_newmetatable(L, MULTI_MT);
    lua_pushcfunction(L, multi_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, REQ_MT);
    luaL_setfuncs(L, req_meta, 0);
    luaL_newlib(L, req_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_http_request);
    lua_setfield(L, -2, "http_request");
    lua_pushcfunction(L, l_curl_version);
    lua_setfield(L, -2, "curl_version");
}
