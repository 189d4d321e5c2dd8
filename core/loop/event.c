/*
 * loop/event.c - the libevent host: one persistent `struct event` per
 * watched fd and one timer event, all on the embedder's event_base.  There
 * is no loop here; the embedder runs event_base_dispatch() (curl's
 * docs/examples/hiperfifo.c is the same adapter for libcurl).
 */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "loop/loop.h"

struct zkf_evhost {
    zkf_loop_hooks hooks;
    zkf_loop *loop;
    struct event_base *base;    /* borrowed */
    struct event **evs;         /* indexed by fd */
    int *what;                  /* interest set behind evs[fd] */
    int nevs;
    struct event *timer;
};

static void on_fd_event(evutil_socket_t fd, short ev, void *arg)
{
    zkf_evhost *h = arg;
    int what = 0;
    if (ev & EV_READ)
        what |= ZKF_IO_IN;
    if (ev & EV_WRITE)
        what |= ZKF_IO_OUT;
    if (h->loop)
        zkf_loop_on_fd(h->loop, (int)fd, what);
}

static void on_timer_event(evutil_socket_t fd, short ev, void *arg)
{
    (void)fd;
    (void)ev;
    zkf_evhost *h = arg;
    if (h->loop)
        zkf_loop_on_timer(h->loop);
}

static int grow(zkf_evhost *h, int fd)
{
    int n = h->nevs ? h->nevs : 64;
    while (n <= fd)
        n *= 2;
    struct event **e = realloc(h->evs, (size_t)n * sizeof *e);
    if (!e)
        return -1;
    h->evs = e;
    int *w = realloc(h->what, (size_t)n * sizeof *w);
    if (!w)
        return -1;
    h->what = w;
    memset(e + h->nevs, 0, (size_t)(n - h->nevs) * sizeof *e);
    memset(w + h->nevs, 0, (size_t)(n - h->nevs) * sizeof *w);
    h->nevs = n;
    return 0;
}

static int host_watch_fd(void *host, int fd, int what)
{
    zkf_evhost *h = host;
    if (fd < 0)
        return -1;
    if (fd >= h->nevs) {
        if (what & ZKF_IO_REMOVE)
            return 0;
        if (grow(h, fd) != 0)
            return -1;
    }
    int want = what & ZKF_IO_REMOVE ? 0 : what & (ZKF_IO_IN | ZKF_IO_OUT);
    if (h->evs[fd] && h->what[fd] == want)
        return 0;
    /* libevent cannot change an added event's flags: replace it. */
    if (h->evs[fd]) {
        event_free(h->evs[fd]);
        h->evs[fd] = NULL;
        h->what[fd] = 0;
    }
    if (!want)
        return 0;
    short flags = EV_PERSIST;
    if (want & ZKF_IO_IN)
        flags |= EV_READ;
    if (want & ZKF_IO_OUT)
        flags |= EV_WRITE;
    struct event *ev = event_new(h->base, fd, flags, on_fd_event, h);
    if (!ev)
        return -1;
    if (event_add(ev, NULL) != 0) {
        event_free(ev);
        return -1;
    }
    h->evs[fd] = ev;
    h->what[fd] = want;
    return 0;
}

static int host_set_timer(void *host, long ms)
{
    zkf_evhost *h = host;
    if (ms < 0)
        return event_del(h->timer);
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return evtimer_add(h->timer, &tv);
}

zkf_evhost *zkf_evhost_new(struct event_base *base)
{
    if (!base)
        return NULL;
    zkf_evhost *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->base = base;
    h->timer = evtimer_new(base, on_timer_event, h);
    if (!h->timer) {
        free(h);
        return NULL;
    }
    h->hooks.watch_fd = host_watch_fd;
    h->hooks.set_timer = host_set_timer;
    h->hooks.host = h;
    return h;
}

const zkf_loop_hooks *zkf_evhost_hooks(zkf_evhost *h)
{
    return h ? &h->hooks : NULL;
}

void zkf_evhost_attach(zkf_evhost *h, zkf_loop *loop)
{
    if (h)
        h->loop = loop;
}

void zkf_evhost_free(zkf_evhost *h)
{
    if (!h)
        return;
    for (int fd = 0; fd < h->nevs; fd++)
        if (h->evs[fd])
            event_free(h->evs[fd]);
    free(h->evs);
    free(h->what);
    event_free(h->timer);
    free(h);
}
