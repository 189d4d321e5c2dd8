/*
 * main.c - the `zkflow` command: a libevent host for one engine.
 *
 * The commands themselves are Lua (lua/zkflow/cli/, a git-style command
 * table); this file owns the process: the event base, signals, the log
 * sink, and the exit code.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "zkflow.h"

typedef struct cli {
    struct event_base *base;
    zkf_engine *engine;
    int code;
    int done;
    int signals;
    int min_level;
} cli;

static void on_log(void *ud, int level, const char *msg)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    cli *c = ud;

    if (level < c->min_level)
        return;
    fprintf(stderr, "zkflow: %s: %s\n", names[level & 3], msg);
}

static void on_done(void *ud, int code)
{
    cli *c = ud;

    c->code = code;
    c->done = 1;
    event_base_loopbreak(c->base);
}

/* First SIGINT/SIGTERM: a graceful stop (running tasks are terminated and
 * their runs resume on the next start).  Second: leave now. */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    cli *c = arg;

    (void)what;
    if (++c->signals > 1) {
        fprintf(stderr, "zkflow: second signal %d, exiting now\n", (int)sig);
        c->code = 130;
        c->done = 1;
        event_base_loopbreak(c->base);
        return;
    }
    if (zkf_engine_shutdown(c->engine) != ZKF_OK) {
        fprintf(stderr, "zkflow: %s\n", zkf_errmsg(c->engine));
        c->code = 1;
        c->done = 1;
        event_base_loopbreak(c->base);
    }
}

static int level_from_env(int argc, char **argv)
{
    const char *s = getenv("ZKFLOW_LOG_LEVEL");

    if (s != NULL) {
        if (strcmp(s, "debug") == 0) return 0;
        if (strcmp(s, "info") == 0) return 1;
        if (strcmp(s, "warn") == 0) return 2;
        if (strcmp(s, "error") == 0) return 3;
    }
    /* Daemons say what they do; one-shot commands keep stderr for errors. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "standalone") == 0 ||
            strcmp(argv[i], "scheduler") == 0 ||
            strcmp(argv[i], "worker") == 0)
            return 1;
        if (argv[i][0] != '-')
            break;
    }
    return 2;
}

int main(int argc, char **argv)
{
    cli c;
    char err[512];
    struct event *sigint, *sigterm;
    int rc;

    memset(&c, 0, sizeof(c));
    signal(SIGPIPE, SIG_IGN);
    c.min_level = level_from_env(argc, argv);
    c.base = event_base_new();
    if (c.base == NULL) {
        fprintf(stderr, "zkflow: cannot create the event loop\n");
        return 1;
    }
    c.engine = zkf_engine_new(c.base, err, sizeof(err));
    if (c.engine == NULL) {
        fprintf(stderr, "zkflow: %s\n", err);
        event_base_free(c.base);
        return 1;
    }
    zkf_engine_set_log(c.engine, on_log, &c);
    sigint = evsignal_new(c.base, SIGINT, on_signal, &c);
    sigterm = evsignal_new(c.base, SIGTERM, on_signal, &c);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);

    rc = zkf_engine_main(c.engine, argc - 1, argv + 1, on_done, &c);
    if (rc != ZKF_OK) {
        fprintf(stderr, "zkflow: %s\n", zkf_errmsg(c.engine));
        c.code = 1;
        c.done = 1;
    }
    /* The signal events keep the base busy, so dispatch returns only on
     * loopbreak (on_done, a second signal). */
    if (!c.done)
        event_base_dispatch(c.base);
    event_free(sigint);
    event_free(sigterm);
    fflush(stdout);
    zkf_engine_free(c.engine);
    event_base_free(c.base);
    return c.code;
}
