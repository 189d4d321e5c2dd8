/*
 * host_poll.c - a program that embeds zkflow in a bare poll() loop.
 *
 *   host_poll DAGS_DIR DB SECONDS
 *
 * The same program as host_libevent.c, for a host whose loop is not
 * libevent: the engine says which descriptors to watch (watch_fd) and
 * when it next needs to run (set_timer); the loop calls it back through
 * zkf_engine_on_fd() and zkf_engine_on_timer().  Only <zkflow.h> and
 * POSIX are used.
 *
 *   cc host_poll.c $(pkg-config --cflags --libs zkflow)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* pipe2() */
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zkflow.h>

#define MAX_FDS 256

typedef struct host {
    struct pollfd fds[MAX_FDS];   /* fds[0] is the signal pipe */
    int nfds;
    long long timer_at;           /* monotonic ms; -1: no timer */
    zkf_engine *engine;
} host;

/* A signal handler can reach no handle, so the write end of the self-pipe
 * is the one thing kept outside `host`; it is set before the handlers are
 * installed and never changes after. */
static int sig_pipe = -1;

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_log(void *ud, int level, const char *msg)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };

    (void)ud;
    if (level < 0 || level > 3)
        level = 3;
    fprintf(stderr, "host_poll: %s: %s\n", names[level], msg);
}

static void on_health(void *ud, int status, const char *content_type,
                      const char *body, size_t len)
{
    (void)ud;
    printf("GET /api/v1/health -> %d %s %.*s\n", status, content_type,
           (int)len, body);
    fflush(stdout);
}

/* The engine hands over the whole interest set each time, so an entry is
 * replaced, never merged. */
static int watch_fd(void *ud, int fd, int what)
{
    host *h = ud;
    int i;

    for (i = 1; i < h->nfds && h->fds[i].fd != fd; i++)
        ;
    if (what & ZKF_WATCH_REMOVE) {
        if (i < h->nfds)
            h->fds[i] = h->fds[--h->nfds];
        return 0;
    }
    if (i == h->nfds) {
        if (h->nfds == MAX_FDS)
            return -1;
        h->nfds++;
    }
    h->fds[i].fd = fd;
    h->fds[i].events = (short)(((what & ZKF_WATCH_IN) ? POLLIN : 0)
                               | ((what & ZKF_WATCH_OUT) ? POLLOUT : 0));
    return 0;
}

static int set_timer(void *ud, long ms)
{
    host *h = ud;

    h->timer_at = ms < 0 ? -1 : now_ms() + ms;
    return 0;
}

/* Only write(2) here: it is async-signal-safe, and the loop does the rest
 * on its own thread, where calling the engine is allowed.  A full pipe
 * already holds a wake-up, so a failed write loses nothing. */
static void on_signal(int sig)
{
    unsigned char b = (unsigned char)sig;
    int saved = errno;

    if (write(sig_pipe, &b, 1) < 0) {
        /* nothing to do: see above */
    }
    errno = saved;
}

/* One poll() and its callbacks; returns the signal read, or 0. */
static int turn(host *h, long long deadline)
{
    struct pollfd ready[MAX_FDS];
    long long now = now_ms(), until = deadline;
    int n, i, sig = 0;

    if (h->timer_at >= 0 && h->timer_at < until)
        until = h->timer_at;
    /* A copy: the callbacks below may change h->fds under us. */
    n = h->nfds;
    memcpy(ready, h->fds, sizeof(ready[0]) * (size_t)n);
    if (poll(ready, (nfds_t)n, until > now ? (int)(until - now) : 0) > 0) {
        unsigned char b;

        if ((ready[0].revents & POLLIN) && read(ready[0].fd, &b, 1) == 1)
            sig = b;
        for (i = 1; i < n; i++) {
            int ev = 0;

            if (ready[i].revents & (POLLIN | POLLHUP | POLLERR))
                ev |= ZKF_WATCH_IN;
            if (ready[i].revents & POLLOUT)
                ev |= ZKF_WATCH_OUT;
            if (ev != 0)
                zkf_engine_on_fd(h->engine, ready[i].fd, ev);
        }
    }
    /* Cleared first: on_timer usually sets the next one. */
    if (h->timer_at >= 0 && h->timer_at <= now_ms()) {
        h->timer_at = -1;
        zkf_engine_on_timer(h->engine);
    }
    return sig;
}

static int usage(void)
{
    fprintf(stderr, "usage: host_poll DAGS_DIR DB SECONDS\n");
    return 2;
}

int main(int argc, char **argv)
{
    host h;
    zkf_host zh;
    struct sigaction sa;
    char err[256], log_dir[PATH_MAX];
    const char *slash, *why = "time is up";
    char *end;
    long secs;
    long long deadline;
    int rc, sig = 0, pipefd[2] = { -1, -1 }, status = 1;

    if (argc != 4)
        return usage();
    errno = 0;
    secs = strtol(argv[3], &end, 10);
    if (errno != 0 || *end != '\0' || secs <= 0)
        return usage();
    slash = strrchr(argv[2], '/');
    if (slash == NULL)
        snprintf(log_dir, sizeof(log_dir), "logs");
    else
        snprintf(log_dir, sizeof(log_dir), "%.*s/logs",
                 (int)(slash - argv[2]), argv[2]);

    /* Non-blocking both ways: the handler must never block, nor the loop
     * on a spurious wake-up.  CLOEXEC keeps it out of task processes. */
    if (pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) != 0) {
        perror("host_poll: pipe2");
        return 1;
    }
    memset(&h, 0, sizeof(h));
    h.fds[0].fd = pipefd[0];
    h.fds[0].events = POLLIN;
    h.nfds = 1;
    h.timer_at = -1;
    zh.watch_fd = watch_fd;
    zh.set_timer = set_timer;
    zh.ud = &h;
    h.engine = zkf_engine_new_host(&zh, err, sizeof(err));
    if (h.engine == NULL) {
        fprintf(stderr, "host_poll: zkf_engine_new_host: %s\n", err);
        goto out;
    }
    zkf_engine_set_log(h.engine, on_log, NULL);
    if (zkf_engine_setopt(h.engine, "dags", argv[1]) != ZKF_OK
        || zkf_engine_setopt(h.engine, "db", argv[2]) != ZKF_OK
        || zkf_engine_setopt(h.engine, "log_dir", log_dir) != ZKF_OK) {
        fprintf(stderr, "host_poll: setopt: %s\n", zkf_errmsg(h.engine));
        goto out;
    }
    rc = zkf_engine_start(h.engine);
    if (rc != ZKF_OK) {
        fprintf(stderr, "host_poll: start: %s: %s\n", zkf_strerror(rc),
                zkf_errmsg(h.engine));
        goto out;
    }
    rc = zkf_engine_http(h.engine, "GET", "/api/v1/health", NULL, 0,
                         on_health, NULL);
    if (rc != ZKF_OK)
        fprintf(stderr, "host_poll: http: %s: %s\n", zkf_strerror(rc),
                zkf_errmsg(h.engine));

    sig_pipe = pipefd[1];
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) != 0
        || sigaction(SIGTERM, &sa, NULL) != 0) {
        perror("host_poll: sigaction");
        goto out;
    }

    deadline = now_ms() + (long long)secs * 1000;
    while (sig == 0 && now_ms() < deadline)
        sig = turn(&h, deadline);
    if (sig != 0)
        why = sig == SIGINT ? "SIGINT" : "SIGTERM";
    /* As in host_libevent: shut down (tasks end, the store is flushed),
     * then leave the loop and free. */
    fprintf(stderr, "host_poll: stopping (%s)\n", why);
    rc = zkf_engine_shutdown(h.engine);
    if (rc != ZKF_OK)
        fprintf(stderr, "host_poll: shutdown: %s: %s\n", zkf_strerror(rc),
                zkf_errmsg(h.engine));
    status = 0;

out:
    zkf_engine_free(h.engine);
    /* Back to the defaults before the pipe closes under the handler. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    close(pipefd[0]);
    close(pipefd[1]);
    return status;
}
