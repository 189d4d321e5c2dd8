/*
 * host_libevent.c - a program that embeds zkflow in its own libevent loop.
 *
 *   host_libevent DAGS_DIR DB SECONDS
 *
 * The program owns the loop; the engine only adds its events to it.  It
 * schedules the DAGs in DAGS_DIR against the embedded store DB, answers
 * one API request through zkf_engine_http() (the entry every front door
 * uses), and stops after SECONDS or on SIGINT/SIGTERM.  Only
 * <zkflow.h> and libevent are used: nothing here reaches into the core.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include <zkflow.h>

typedef struct host {
    struct event_base *base;
    zkf_engine *engine;
    int stopping;
} host;

static void on_log(void *ud, int level, const char *msg)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };

    (void)ud;
    if (level < 0 || level > 3)
        level = 3;
    fprintf(stderr, "host_libevent: %s: %s\n", names[level], msg);
}

/* The engine may answer before zkf_engine_http() returns or on a later
 * loop turn; either way exactly once, with borrowed strings. */
static void on_health(void *ud, int status, const char *content_type,
                      const char *body, size_t len)
{
    (void)ud;
    printf("GET /api/v1/health -> %d %s %.*s\n", status, content_type,
           (int)len, body);
    fflush(stdout);
}

/* Both the timeout and the signals end here.  Shutting the engine down
 * first lets it end its task processes and flush the store; the loop
 * break then returns control to main(), which frees the engine. */
static void stop(host *h, const char *why)
{
    int rc;

    if (h->stopping)
        return;
    h->stopping = 1;
    fprintf(stderr, "host_libevent: stopping (%s)\n", why);
    rc = zkf_engine_shutdown(h->engine);
    if (rc != ZKF_OK)
        fprintf(stderr, "host_libevent: shutdown: %s: %s\n",
                zkf_strerror(rc), zkf_errmsg(h->engine));
    event_base_loopbreak(h->base);
}

static void on_timeout(evutil_socket_t fd, short what, void *ud)
{
    (void)fd;
    (void)what;
    stop(ud, "time is up");
}

static void on_signal(evutil_socket_t sig, short what, void *ud)
{
    (void)what;
    stop(ud, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static int usage(void)
{
    fprintf(stderr, "usage: host_libevent DAGS_DIR DB SECONDS\n");
    return 2;
}

int main(int argc, char **argv)
{
    host h = { 0 };
    struct event *timer = NULL, *sigint = NULL, *sigterm = NULL;
    struct timeval tv = { 0, 0 };
    char err[256], log_dir[PATH_MAX];
    const char *slash;
    char *end;
    long secs;
    int rc, status = 1;

    if (argc != 4)
        return usage();
    errno = 0;
    secs = strtol(argv[3], &end, 10);
    if (errno != 0 || *end != '\0' || secs <= 0)
        return usage();
    tv.tv_sec = secs;

    /* Task logs beside the store, as the engine would put them anyway;
     * set here to show the option. */
    slash = strrchr(argv[2], '/');
    if (slash == NULL)
        snprintf(log_dir, sizeof(log_dir), "logs");
    else
        snprintf(log_dir, sizeof(log_dir), "%.*s/logs",
                 (int)(slash - argv[2]), argv[2]);

    h.base = event_base_new();
    if (h.base == NULL) {
        fprintf(stderr, "host_libevent: event_base_new failed\n");
        return 1;
    }
    h.engine = zkf_engine_new(h.base, err, sizeof(err));
    if (h.engine == NULL) {
        fprintf(stderr, "host_libevent: zkf_engine_new: %s\n", err);
        goto out;
    }
    zkf_engine_set_log(h.engine, on_log, NULL);
    if (zkf_engine_setopt(h.engine, "dags", argv[1]) != ZKF_OK
        || zkf_engine_setopt(h.engine, "db", argv[2]) != ZKF_OK
        || zkf_engine_setopt(h.engine, "log_dir", log_dir) != ZKF_OK) {
        fprintf(stderr, "host_libevent: setopt: %s\n", zkf_errmsg(h.engine));
        goto out;
    }
    rc = zkf_engine_start(h.engine);
    if (rc != ZKF_OK) {
        fprintf(stderr, "host_libevent: start: %s: %s\n", zkf_strerror(rc),
                zkf_errmsg(h.engine));
        goto out;
    }
    rc = zkf_engine_http(h.engine, "GET", "/api/v1/health", NULL, 0,
                         on_health, NULL);
    if (rc != ZKF_OK)
        fprintf(stderr, "host_libevent: http: %s: %s\n", zkf_strerror(rc),
                zkf_errmsg(h.engine));

    /* Signals as libevent events, not handlers: the callback runs on the
     * loop thread, where calling the engine is allowed. */
    timer = evtimer_new(h.base, on_timeout, &h);
    sigint = evsignal_new(h.base, SIGINT, on_signal, &h);
    sigterm = evsignal_new(h.base, SIGTERM, on_signal, &h);
    if (timer == NULL || sigint == NULL || sigterm == NULL
        || evtimer_add(timer, &tv) != 0 || evsignal_add(sigint, NULL) != 0
        || evsignal_add(sigterm, NULL) != 0) {
        fprintf(stderr, "host_libevent: cannot add the host's events\n");
        goto out;
    }
    if (event_base_dispatch(h.base) < 0) {
        fprintf(stderr, "host_libevent: event_base_dispatch failed\n");
        goto out;
    }
    status = 0;

out:
    if (timer != NULL)
        event_free(timer);
    if (sigint != NULL)
        event_free(sigint);
    if (sigterm != NULL)
        event_free(sigterm);
    /* The engine's events live on the base: free the engine first. */
    zkf_engine_free(h.engine);
    event_base_free(h.base);
    return status;
}
