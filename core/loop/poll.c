/*
 * loop/poll.c - the smallest host: poll() over the watched fds, with the
 * loop's single timer as poll()'s timeout.  Used by plain lua5.4
 * (core.run()) and by the command line tools; the engine proper runs on
 * whatever loop its embedder has (loop/event.c for libevent).
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "loop/loop.h"

struct zkf_pollhost {
    zkf_loop_hooks hooks;
    zkf_loop *loop;
    int *want;              /* interest set per fd, 0: not watched */
    int nwant;
    int nwatched;           /* fds with want != 0 */
    struct pollfd *pfds;
    int cappfds;
    double deadline;        /* monotonic ms, -1: no timer */
    int stopped;
    int running;
};

static int host_watch_fd(void *host, int fd, int what)
{
    zkf_pollhost *h = host;
    if (fd < 0)
        return -1;
    if (fd >= h->nwant) {
        if (what & ZKF_IO_REMOVE)
            return 0;
        int n = h->nwant ? h->nwant : 64;
        while (n <= fd)
            n *= 2;
        int *a = realloc(h->want, (size_t)n * sizeof *a);
        if (!a)
            return -1;
        memset(a + h->nwant, 0, (size_t)(n - h->nwant) * sizeof *a);
        h->want = a;
        h->nwant = n;
    }
    int was = h->want[fd];
    int now = what & ZKF_IO_REMOVE ? 0 : what & (ZKF_IO_IN | ZKF_IO_OUT);
    h->want[fd] = now;
    h->nwatched += (now != 0) - (was != 0);
    return 0;
}

static int host_set_timer(void *host, long ms)
{
    zkf_pollhost *h = host;
    h->deadline = ms < 0 ? -1 : zkf_mono_ms() + (double)ms;
    return 0;
}

zkf_pollhost *zkf_pollhost_new(void)
{
    zkf_pollhost *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->hooks.watch_fd = host_watch_fd;
    h->hooks.set_timer = host_set_timer;
    h->hooks.host = h;
    h->deadline = -1;
    return h;
}

const zkf_loop_hooks *zkf_pollhost_hooks(zkf_pollhost *h)
{
    return h ? &h->hooks : NULL;
}

void zkf_pollhost_attach(zkf_pollhost *h, zkf_loop *loop)
{
    if (h)
        h->loop = loop;
}

/* Fills h->pfds from the interest table; returns the count or -1. */
static int collect(zkf_pollhost *h)
{
    if (h->nwatched > h->cappfds) {
        int cap = h->nwatched * 2;
        struct pollfd *p = realloc(h->pfds, (size_t)cap * sizeof *p);
        if (!p)
            return -1;
        h->pfds = p;
        h->cappfds = cap;
    }
    int n = 0;
    for (int fd = 0; fd < h->nwant && n < h->nwatched; fd++) {
        if (!h->want[fd])
            continue;
        h->pfds[n].fd = fd;
        h->pfds[n].events = (short)((h->want[fd] & ZKF_IO_IN ? POLLIN : 0) |
                                    (h->want[fd] & ZKF_IO_OUT ? POLLOUT : 0));
        h->pfds[n].revents = 0;
        n++;
    }
    return n;
}

int zkf_pollhost_run(zkf_pollhost *h)
{
    if (!h || !h->loop || h->running)
        return -1;
    h->running = 1;
    h->stopped = 0;
    int rc = 0;
    while (!h->stopped && zkf_loop_alive(h->loop) > 0) {
        int n = collect(h);
        if (n < 0) {
            rc = -1;
            break;
        }
        int timeout = -1;
        if (h->deadline >= 0) {
            double ms = ceil(h->deadline - zkf_mono_ms());
            timeout = ms <= 0 ? 0 : ms > 86400000 ? 86400000 : (int)ms;
        }
        int r = poll(h->pfds, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
        if (h->deadline >= 0 && zkf_mono_ms() >= h->deadline) {
            h->deadline = -1;
            zkf_loop_on_timer(h->loop);
        }
        for (int i = 0; r > 0 && i < n && !h->stopped; i++) {
            short re = h->pfds[i].revents;
            int fd = h->pfds[i].fd;
            if (!re)
                continue;
            int ev = 0;
            if (re & POLLIN)
                ev |= ZKF_IO_IN;
            if (re & POLLOUT)
                ev |= ZKF_IO_OUT;
            if (re & (POLLHUP | POLLERR | POLLNVAL))
                ev |= ZKF_IO_IN | ZKF_IO_OUT;
            /* An earlier callback of this round may have stopped the
             * watcher (or closed the fd): ask the table, not pfds. */
            if (fd < h->nwant)
                ev &= h->want[fd];
            if (ev)
                zkf_loop_on_fd(h->loop, fd, ev);
        }
    }
    h->running = 0;
    return rc;
}

void zkf_pollhost_stop(zkf_pollhost *h)
{
    if (h)
        h->stopped = 1;
}

void zkf_pollhost_free(zkf_pollhost *h)
{
    if (!h)
        return;
    free(h->want);
    free(h->pfds);
    free(h);
}
