/*
 * test_engine.c - the embedding API (core/include/zkflow.h) as a host uses
 * it: a libevent engine and a host-driven one on a plain poll() loop, each
 * starting on a DAG folder, taking a trigger through zkf_engine_http() and
 * running the DAG to success.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "zkflow.h"
#include "test.h"

static char dir[256];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

static void make_dags(void)
{
    char path[512];

    snprintf(dir, sizeof(dir), "/tmp/zkflow-test-engine-%d", (int)getpid());
    snprintf(path, sizeof(path), "mkdir -p %s/dags", dir);
    if (system(path) != 0)
        return;
    snprintf(path, sizeof(path), "%s/dags/pair.lua", dir);
    write_file(path,
        "local flow = require 'zkflow'\n"
        "return flow.dag { id = 'pair', tasks = function(t)\n"
        "  local a = t.shell { id = 'a', cmd = 'echo one', do_xcom_push = true }\n"
        "  local b = t.lua { id = 'b', run = function(ctx)\n"
        "    return ctx.xcom('a') .. ' two' end }\n"
        "  local _ = a >> b\n"
        "end }\n");
    snprintf(path, sizeof(path), "%s/dags/broken.lua", dir);
    write_file(path, "return flow.dag { id = \n");
}

static void remove_dir(void)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

typedef struct reply {
    int status;
    char body[8192];
    int got;
} reply;

static void on_reply(void *ud, int status, const char *ctype,
                     const char *body, size_t len)
{
    reply *r = ud;

    (void)ctype;
    r->status = status;
    if (len >= sizeof(r->body))
        len = sizeof(r->body) - 1;
    memcpy(r->body, body, len);
    r->body[len] = '\0';
    r->got++;
}

static int setup(zkf_engine *e)
{
    char db[512], dags[512];

    snprintf(dags, sizeof(dags), "%s/dags", dir);
    snprintf(db, sizeof(db), "%s/zkflow.db", dir);
    if (zkf_engine_setopt(e, "dags", dags) != ZKF_OK ||
        zkf_engine_setopt(e, "db", db) != ZKF_OK)
        return -1;
    return zkf_engine_start(e);
}

/* The run id out of {"dag_id":"pair","run_id":"..."}. */
static int run_id_of(const char *body, char *out, size_t n)
{
    const char *p = strstr(body, "\"run_id\":\"");
    const char *q;

    if (p == NULL)
        return -1;
    p += 10;
    q = strchr(p, '"');
    if (q == NULL || (size_t)(q - p) >= n)
        return -1;
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = '\0';
    return 0;
}

/* ---- libevent ------------------------------------------------------- */

static void test_engine_rejects_unknown_option(void)
{
    struct event_base *base = event_base_new();
    zkf_engine *e = zkf_engine_new(base, NULL, 0);

    ASSERT(e != NULL);
    ASSERT_EQ(ZKF_EINVAL, zkf_engine_setopt(e, "dagz", "x"));
    ASSERT(strstr(zkf_errmsg(e), "dagz") != NULL);
    zkf_engine_free(e);
    event_base_free(base);
}

static void test_engine_strerror_names_every_code(void)
{
    ASSERT_STR_EQ("ok", zkf_strerror(ZKF_OK));
    ASSERT(strstr(zkf_strerror(ZKF_ERECURSIVE), "recursive") != NULL);
    ASSERT_STR_EQ("unknown error", zkf_strerror(-999));
}

static void test_engine_runs_a_triggered_dag_on_libevent(void)
{
    struct event_base *base = event_base_new();
    zkf_engine *e = zkf_engine_new(base, NULL, 0);
    reply r;
    char run_id[128], uri[512];
    int done = 0;

    ASSERT(e != NULL);
    ASSERT_EQ(ZKF_OK, setup(e));

    memset(&r, 0, sizeof(r));
    zkf_engine_http(e, "GET", "/api/v1/dags", NULL, 0, on_reply, &r);
    for (int i = 0; i < 100 && !r.got; i++)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ASSERT_EQ(200, r.status);
    ASSERT(strstr(r.body, "\"pair\"") != NULL);
    /* the broken file is an import error, not a failure of the engine */
    ASSERT(strstr(r.body, "broken.lua") != NULL);

    memset(&r, 0, sizeof(r));
    zkf_engine_http(e, "POST", "/api/v1/dags/pair/runs", "{}", 2, on_reply, &r);
    for (int i = 0; i < 100 && !r.got; i++)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    ASSERT_EQ(201, r.status);
    ASSERT_EQ(0, run_id_of(r.body, run_id, sizeof(run_id)));

    snprintf(uri, sizeof(uri), "/api/v1/dags/pair/runs/%s", run_id);
    for (int i = 0; i < 500 && !done; i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        memset(&r, 0, sizeof(r));
        zkf_engine_http(e, "GET", uri, NULL, 0, on_reply, &r);
        done = strstr(r.body, "\"state\":\"success\",\"tasks\"") != NULL ||
               strstr(r.body, "\"state\":\"failed\"") != NULL;
    }
    ASSERT(strstr(r.body, "one two") != NULL);
    zkf_engine_free(e);
    event_base_free(base);
}

/* ---- a host that only has poll() ------------------------------------ */

typedef struct poll_host {
    struct pollfd fds[64];
    int nfds;
    long timer_ms;      /* -1: none */
    struct timespec timer_set;
} poll_host;

static int ph_watch(void *ud, int fd, int what)
{
    poll_host *h = ud;
    int i;

    for (i = 0; i < h->nfds; i++)
        if (h->fds[i].fd == fd)
            break;
    if (what & ZKF_WATCH_REMOVE) {
        if (i < h->nfds)
            h->fds[i] = h->fds[--h->nfds];
        return 0;
    }
    if (i == h->nfds) {
        if (h->nfds == 64)
            return -1;
        h->nfds++;
    }
    h->fds[i].fd = fd;
    h->fds[i].events = (short)(((what & ZKF_WATCH_IN) ? POLLIN : 0) |
                               ((what & ZKF_WATCH_OUT) ? POLLOUT : 0));
    h->fds[i].revents = 0;
    return 0;
}

static int ph_timer(void *ud, long ms)
{
    poll_host *h = ud;

    h->timer_ms = ms;
    clock_gettime(CLOCK_MONOTONIC, &h->timer_set);
    return 0;
}

static long ph_remaining(const poll_host *h)
{
    struct timespec now;
    long elapsed;

    if (h->timer_ms < 0)
        return 50;
    clock_gettime(CLOCK_MONOTONIC, &now);
    elapsed = (now.tv_sec - h->timer_set.tv_sec) * 1000 +
              (now.tv_nsec - h->timer_set.tv_nsec) / 1000000;
    return h->timer_ms > elapsed ? h->timer_ms - elapsed : 0;
}

/* One turn of the host's loop. */
static void ph_turn(poll_host *h, zkf_engine *e)
{
    struct pollfd fds[64];
    int n = h->nfds;
    long wait = ph_remaining(h);

    memcpy(fds, h->fds, sizeof(fds[0]) * (size_t)n);
    if (poll(fds, (nfds_t)n, (int)(wait > 50 ? 50 : wait)) > 0) {
        for (int i = 0; i < n; i++) {
            int ev = 0;
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
                ev |= ZKF_WATCH_IN;
            if (fds[i].revents & POLLOUT)
                ev |= ZKF_WATCH_OUT;
            if (ev)
                zkf_engine_on_fd(e, fds[i].fd, ev);
        }
    }
    if (h->timer_ms >= 0 && ph_remaining(h) == 0) {
        h->timer_ms = -1;
        zkf_engine_on_timer(e);
    }
}

static void test_engine_runs_a_dag_on_a_poll_host(void)
{
    poll_host h;
    zkf_host host;
    zkf_engine *e;
    reply r;
    char run_id[128], uri[512];
    int done = 0;

    memset(&h, 0, sizeof(h));
    h.timer_ms = -1;
    host.watch_fd = ph_watch;
    host.set_timer = ph_timer;
    host.ud = &h;
    e = zkf_engine_new_host(&host, NULL, 0);
    ASSERT(e != NULL);
    ASSERT_EQ(ZKF_OK, setup(e));

    memset(&r, 0, sizeof(r));
    zkf_engine_http(e, "POST", "/api/v1/dags/pair/runs", NULL, 0, on_reply, &r);
    for (int i = 0; i < 100 && !r.got; i++)
        ph_turn(&h, e);
    ASSERT_EQ(201, r.status);
    ASSERT_EQ(0, run_id_of(r.body, run_id, sizeof(run_id)));
    snprintf(uri, sizeof(uri), "/api/v1/dags/pair/runs/%s", run_id);
    for (int i = 0; i < 500 && !done; i++) {
        ph_turn(&h, e);
        memset(&r, 0, sizeof(r));
        zkf_engine_http(e, "GET", uri, NULL, 0, on_reply, &r);
        done = strstr(r.body, "\"state\":\"success\",\"tasks\"") != NULL;
    }
    ASSERT(done);
    ASSERT(strstr(r.body, "one two") != NULL);
    zkf_engine_free(e);
}

int main(void)
{
    make_dags();
    RUN(test_engine_rejects_unknown_option);
    RUN(test_engine_strerror_names_every_code);
    RUN(test_engine_runs_a_triggered_dag_on_libevent);
    RUN(test_engine_runs_a_dag_on_a_poll_host);
    remove_dir();
    return test_report();
}
