/*
 * loop.c - timers, fd watchers, end-of-turn hooks and cross-thread wakeups
 * on top of a host that only knows "watch this fd" and "call me back in N
 * milliseconds" (see loop.h; libcurl's multi socket interface is the model).
 *
 * Timers live in a binary min-heap ordered by (deadline, sequence), so equal
 * deadlines fire in the order they were started.  Watchers live in a table
 * indexed by fd.  After every change the host is told the new interest set
 * of the fd and, when it moved, the new earliest deadline.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "loop/loop.h"

#define NOT_IN_HEAP SIZE_MAX

struct zkf_timer {
    zkf_loop *loop;
    double due;             /* monotonic ms */
    uint64_t seq;           /* tie-break: start order */
    size_t idx;             /* heap slot, NOT_IN_HEAP while firing */
    zkf_timer_cb cb;
    void *arg;
};

struct zkf_io {
    zkf_loop *loop;
    int fd;
    int events;
    zkf_io_cb cb;
    void *arg;
};

typedef struct turn_hook {
    zkf_turn_cb cb;         /* NULL: removed while the hooks were running */
    void *arg;
} turn_hook;

typedef struct wake_item {
    struct wake_item *next;
    zkf_turn_cb cb;
    zkf_turn_cb drop;       /* runs instead when the loop is freed first */
    void *arg;
} wake_item;

struct zkf_loop {
    zkf_loop_hooks hooks;

    zkf_timer **heap;
    size_t nheap, capheap;
    uint64_t next_seq;
    double told_due;        /* deadline the host knows; -1 none, -2 unknown */

    zkf_io **ios;           /* indexed by fd */
    int nios;               /* size of `ios` */
    int live_ios;           /* watchers, the wake watcher excluded */

    turn_hook *turn;
    size_t nturn, capturn;
    int in_turn_end;        /* the hooks are running: removals only mark */
    int turn_dirty;         /* some hook was marked removed */

    int refs;
    int dispatching;        /* inside on_fd/on_timer: refuse re-entry */

    /* zkf_loop_wake(): the only state touched by other threads. */
    pthread_mutex_t wake_mu;
    wake_item *wake_head, *wake_tail;
    int wake_fd;
    zkf_io *wake_io;
};

/* ---- clocks ---------------------------------------------------------- */

double zkf_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

double zkf_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- timer heap ------------------------------------------------------ */

static int timer_less(const zkf_timer *a, const zkf_timer *b)
{
    if (a->due != b->due)
        return a->due < b->due;
    return a->seq < b->seq;
}

static void heap_set(zkf_loop *loop, size_t i, zkf_timer *t)
{
    loop->heap[i] = t;
    t->idx = i;
}

static void heap_up(zkf_loop *loop, size_t i)
{
    zkf_timer *t = loop->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_less(t, loop->heap[parent]))
            break;
        heap_set(loop, i, loop->heap[parent]);
        i = parent;
    }
    heap_set(loop, i, t);
}

static void heap_down(zkf_loop *loop, size_t i)
{
    zkf_timer *t = loop->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const zkf_timer *best = t;
        if (l < loop->nheap && timer_less(loop->heap[l], best)) {
            m = l;
            best = loop->heap[l];
        }
        if (r < loop->nheap && timer_less(loop->heap[r], best))
            m = r;
        if (m == i)
            break;
        heap_set(loop, i, loop->heap[m]);
        i = m;
    }
    heap_set(loop, i, t);
}

static void heap_remove(zkf_loop *loop, zkf_timer *t)
{
    size_t i = t->idx;
    assert(i < loop->nheap && loop->heap[i] == t);
    loop->nheap--;
    t->idx = NOT_IN_HEAP;
    if (i == loop->nheap)
        return;
    zkf_timer *last = loop->heap[loop->nheap];
    heap_set(loop, i, last);
    heap_up(loop, i);
    heap_down(loop, last->idx);
}

/* Tells the host the earliest deadline when it differs from what the host
 * already knows.  Deferred while dispatching: a timer callback that starts
 * ten timers should cost one set_timer(), not ten. */
static void sync_timer(zkf_loop *loop)
{
    double due = loop->nheap ? loop->heap[0]->due : -1;
    if (loop->dispatching || due == loop->told_due)
        return;
    loop->told_due = due;
    if (!loop->hooks.set_timer)
        return;
    if (due < 0) {
        loop->hooks.set_timer(loop->hooks.host, -1);
        return;
    }
    /* Round up: a host that wakes a little early would find nothing due
     * and spin until the deadline. */
    double ms = ceil(due - zkf_mono_ms());
    loop->hooks.set_timer(loop->hooks.host, ms < 0 ? 0 : (long)ms);
}

zkf_timer *zkf_timer_start(zkf_loop *loop, double ms, zkf_timer_cb cb,
                           void *arg)
{
    if (!loop || !cb)
        return NULL;
    if (!(ms >= 0))     /* negative or NaN */
        ms = 0;
    if (loop->nheap == loop->capheap) {
        size_t cap = loop->capheap ? loop->capheap * 2 : 16;
        zkf_timer **h = realloc(loop->heap, cap * sizeof *h);
        if (!h)
            return NULL;
        loop->heap = h;
        loop->capheap = cap;
    }
    zkf_timer *t = malloc(sizeof *t);
    if (!t)
        return NULL;
    t->loop = loop;
    t->due = zkf_mono_ms() + ms;
    t->seq = loop->next_seq++;
    t->cb = cb;
    t->arg = arg;
    loop->heap[loop->nheap] = t;
    t->idx = loop->nheap++;
    heap_up(loop, t->idx);
    sync_timer(loop);
    return t;
}

void zkf_timer_stop(zkf_timer *t)
{
    if (!t)
        return;
    /* A timer inside its own callback is out of the heap already and is
     * freed by on_timer when the callback returns. */
    if (t->idx == NOT_IN_HEAP)
        return;
    zkf_loop *loop = t->loop;
    heap_remove(loop, t);
    free(t);
    sync_timer(loop);
}

/* ---- io watchers ----------------------------------------------------- */

static int tell_fd(zkf_loop *loop, int fd, int what)
{
    if (!loop->hooks.watch_fd)
        return 0;
    return loop->hooks.watch_fd(loop->hooks.host, fd, what);
}

static zkf_io *io_start(zkf_loop *loop, int fd, int events, zkf_io_cb cb,
                        void *arg)
{
    if (!loop || fd < 0 || !cb)
        return NULL;
    if (fd >= loop->nios) {
        int n = loop->nios ? loop->nios : 64;
        while (n <= fd)
            n *= 2;
        zkf_io **a = realloc(loop->ios, (size_t)n * sizeof *a);
        if (!a)
            return NULL;
        memset(a + loop->nios, 0, (size_t)(n - loop->nios) * sizeof *a);
        loop->ios = a;
        loop->nios = n;
    }
    if (loop->ios[fd])
        return NULL;            /* one watcher per fd */
    zkf_io *io = malloc(sizeof *io);
    if (!io)
        return NULL;
    io->loop = loop;
    io->fd = fd;
    io->events = events & (ZKF_IO_IN | ZKF_IO_OUT);
    io->cb = cb;
    io->arg = arg;
    if (io->events && tell_fd(loop, fd, io->events) != 0) {
        free(io);
        return NULL;
    }
    loop->ios[fd] = io;
    return io;
}

zkf_io *zkf_io_start(zkf_loop *loop, int fd, int events, zkf_io_cb cb,
                     void *arg)
{
    zkf_io *io = io_start(loop, fd, events, cb, arg);
    if (io)
        loop->live_ios++;
    return io;
}

int zkf_io_update(zkf_io *io, int events)
{
    if (!io)
        return -1;
    events &= ZKF_IO_IN | ZKF_IO_OUT;
    if (events == io->events)
        return 0;
    io->events = events;
    return tell_fd(io->loop, io->fd, events ? events : ZKF_IO_REMOVE);
}

static void io_free(zkf_io *io)
{
    zkf_loop *loop = io->loop;
    if (io->events)
        tell_fd(loop, io->fd, ZKF_IO_REMOVE);
    loop->ios[io->fd] = NULL;
    free(io);
}

void zkf_io_stop(zkf_io *io)
{
    if (!io)
        return;
    /* Freed at once: on_fd never touches a watcher after its callback. */
    io->loop->live_ios--;
    io_free(io);
}

/* ---- end-of-turn hooks ----------------------------------------------- */

int zkf_loop_on_turn_end(zkf_loop *loop, zkf_turn_cb cb, void *arg)
{
    if (!loop || !cb)
        return -1;
    if (loop->nturn == loop->capturn) {
        size_t cap = loop->capturn ? loop->capturn * 2 : 4;
        turn_hook *a = realloc(loop->turn, cap * sizeof *a);
        if (!a)
            return -1;
        loop->turn = a;
        loop->capturn = cap;
    }
    loop->turn[loop->nturn].cb = cb;
    loop->turn[loop->nturn].arg = arg;
    loop->nturn++;
    return 0;
}

static void turn_compact(zkf_loop *loop)
{
    size_t j = 0;
    for (size_t i = 0; i < loop->nturn; i++)
        if (loop->turn[i].cb)
            loop->turn[j++] = loop->turn[i];
    loop->nturn = j;
    loop->turn_dirty = 0;
}

void zkf_loop_off_turn_end(zkf_loop *loop, zkf_turn_cb cb, void *arg)
{
    if (!loop)
        return;
    for (size_t i = 0; i < loop->nturn; i++) {
        if (loop->turn[i].cb == cb && loop->turn[i].arg == arg) {
            loop->turn[i].cb = NULL;
            loop->turn_dirty = 1;
            break;
        }
    }
    if (!loop->in_turn_end)
        turn_compact(loop);
}

void zkf_loop_end_turn(zkf_loop *loop)
{
    if (!loop || loop->in_turn_end)
        return;
    loop->in_turn_end = 1;
    /* Hooks added by a hook run from the next turn on. */
    size_t n = loop->nturn;
    for (size_t i = 0; i < n; i++) {
        turn_hook h = loop->turn[i];
        if (h.cb)
            h.cb(h.arg);
    }
    loop->in_turn_end = 0;
    if (loop->turn_dirty)
        turn_compact(loop);
}

/* ---- dispatch -------------------------------------------------------- */

static void finish_turn(zkf_loop *loop)
{
    loop->dispatching = 0;
    zkf_loop_end_turn(loop);
    sync_timer(loop);
}

int zkf_loop_on_fd(zkf_loop *loop, int fd, int events)
{
    if (!loop || loop->dispatching)
        return -1;
    loop->dispatching = 1;
    if (fd >= 0 && fd < loop->nios && loop->ios[fd]) {
        zkf_io *io = loop->ios[fd];
        /* Hosts report a hang-up or error as IN|OUT; each watcher gets
         * the half it asked for and finds out from read()/write(). */
        int ev = events & io->events;
        if (ev)
            io->cb(io, fd, ev, io->arg);
    }
    finish_turn(loop);
    return 0;
}

int zkf_loop_on_timer(zkf_loop *loop)
{
    if (!loop || loop->dispatching)
        return -1;
    loop->dispatching = 1;
    /* The host's timer is spent: make sync_timer() arm it again. */
    loop->told_due = -2;
    double now = zkf_mono_ms();
    /* Timers started by these callbacks wait for the next turn, even with
     * 0 ms, so a timer that restarts itself cannot starve the fds. */
    uint64_t limit = loop->next_seq;
    while (loop->nheap) {
        zkf_timer *t = loop->heap[0];
        if (t->due > now || t->seq >= limit)
            break;
        heap_remove(loop, t);
        t->cb(t, t->arg);
        free(t);
    }
    finish_turn(loop);
    return 0;
}

/* ---- wakeups from other threads -------------------------------------- */

static void wake_cb(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)events;
    zkf_loop *loop = arg;
    uint64_t n;
    /* Drain the counter before taking the queue: a wake that lands in
     * between writes the eventfd again and is seen next turn. */
    while (read(fd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&loop->wake_mu);
    wake_item *w = loop->wake_head;
    loop->wake_head = loop->wake_tail = NULL;
    pthread_mutex_unlock(&loop->wake_mu);
    while (w) {
        wake_item *next = w->next;
        w->cb(w->arg);
        free(w);
        w = next;
    }
}

int zkf_loop_wake(zkf_loop *loop, zkf_turn_cb cb, void *arg)
{
    return zkf_loop_wake_ex(loop, cb, NULL, arg);
}

int zkf_loop_wake_ex(zkf_loop *loop, zkf_turn_cb cb, zkf_turn_cb drop,
                     void *arg)
{
    if (!loop || !cb)
        return -1;
    wake_item *w = malloc(sizeof *w);
    if (!w)
        return -1;
    w->next = NULL;
    w->cb = cb;
    w->drop = drop;
    w->arg = arg;
    pthread_mutex_lock(&loop->wake_mu);
    if (loop->wake_tail)
        loop->wake_tail->next = w;
    else
        loop->wake_head = w;
    loop->wake_tail = w;
    pthread_mutex_unlock(&loop->wake_mu);
    uint64_t one = 1;
    ssize_t r;
    do
        r = write(loop->wake_fd, &one, sizeof one);
    while (r < 0 && errno == EINTR);
    /* EAGAIN means the counter is saturated: the loop is awake anyway. */
    return r < 0 && errno != EAGAIN ? -1 : 0;
}

/* ---- life cycle ------------------------------------------------------ */

zkf_loop *zkf_loop_new(const zkf_loop_hooks *hooks)
{
    zkf_loop *loop = calloc(1, sizeof *loop);
    if (!loop)
        return NULL;
    if (hooks)
        loop->hooks = *hooks;
    loop->told_due = -1;
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->wake_fd < 0) {
        free(loop);
        return NULL;
    }
    if (pthread_mutex_init(&loop->wake_mu, NULL) != 0) {
        close(loop->wake_fd);
        free(loop);
        return NULL;
    }
    loop->wake_io = io_start(loop, loop->wake_fd, ZKF_IO_IN, wake_cb, loop);
    if (!loop->wake_io) {
        pthread_mutex_destroy(&loop->wake_mu);
        close(loop->wake_fd);
        free(loop->ios);
        free(loop);
        return NULL;
    }
    return loop;
}

void zkf_loop_free(zkf_loop *loop)
{
    if (!loop)
        return;
    for (int fd = 0; fd < loop->nios; fd++)
        if (loop->ios[fd])
            io_free(loop->ios[fd]);
    free(loop->ios);
    for (size_t i = 0; i < loop->nheap; i++)
        free(loop->heap[i]);
    free(loop->heap);
    if (loop->told_due != -1 && loop->hooks.set_timer)
        loop->hooks.set_timer(loop->hooks.host, -1);
    free(loop->turn);
    wake_item *w = loop->wake_head;
    while (w) {
        wake_item *next = w->next;
        if (w->drop)
            w->drop(w->arg);
        free(w);
        w = next;
    }
    pthread_mutex_destroy(&loop->wake_mu);
    close(loop->wake_fd);
    free(loop);
}

int zkf_loop_alive(const zkf_loop *loop)
{
    if (!loop)
        return 0;
    return (int)loop->nheap + loop->live_ios + loop->refs;
}

void zkf_loop_ref(zkf_loop *loop)
{
    if (loop)
        loop->refs++;
}

void zkf_loop_unref(zkf_loop *loop)
{
    if (loop && loop->refs > 0)
        loop->refs--;
}
