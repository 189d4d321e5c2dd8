/*
 * test_loop.c - loop.c with both hosts: timers, watchers, wakeups,
 * end-of-turn hooks and the re-entrancy guard.
 */
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include <event2/event.h>

#include "loop/loop.h"
#include "test.h"

/* A poll host and its loop, the pair every test needs. */
typedef struct pair {
    zkf_pollhost *h;
    zkf_loop *loop;
} pair;

static pair pair_new(void)
{
    pair p;
    p.h = zkf_pollhost_new();
    p.loop = zkf_loop_new(zkf_pollhost_hooks(p.h));
    zkf_pollhost_attach(p.h, p.loop);
    return p;
}

static void pair_free(pair *p)
{
    zkf_loop_free(p->loop);
    zkf_pollhost_free(p->h);
}

/* ---- timers ---------------------------------------------------------- */

typedef struct trace {
    char buf[64];
    int n;
} trace;

typedef struct mark {
    trace *tr;
    char c;
} mark;

static void mark_cb(zkf_timer *t, void *arg)
{
    (void)t;
    mark *m = arg;
    m->tr->buf[m->tr->n++] = m->c;
}

/* Deadlines are 100 ms apart: the timers are started one after another
 * with a fresh clock each, so under valgrind on a loaded machine 10 ms
 * gaps reordered them (the test, not the loop, was wrong). */
static void test_timer_fires_in_deadline_order(void)
{
    pair p = pair_new();
    trace tr = { { 0 }, 0 };
    mark m[5] = { { &tr, 'c' }, { &tr, 'a' }, { &tr, 'd' }, { &tr, 'b' },
                  { &tr, 'e' } };
    zkf_timer_start(p.loop, 300, mark_cb, &m[0]);
    zkf_timer_start(p.loop, 100, mark_cb, &m[1]);
    zkf_timer_start(p.loop, 300, mark_cb, &m[2]);   /* same deadline: after c */
    zkf_timer_start(p.loop, 200, mark_cb, &m[3]);
    zkf_timer_start(p.loop, 400, mark_cb, &m[4]);
    double t0 = zkf_mono_ms();
    ASSERT_EQ(0, zkf_pollhost_run(p.h));
    ASSERT(zkf_mono_ms() - t0 >= 400);
    ASSERT_STR_EQ("abcde", tr.buf);
    ASSERT_EQ(0, zkf_loop_alive(p.loop));
    pair_free(&p);
}

static void test_timer_equal_deadlines_keep_start_order(void)
{
    pair p = pair_new();
    trace tr = { { 0 }, 0 };
    mark m[8];
    for (int i = 0; i < 8; i++) {
        m[i].tr = &tr;
        m[i].c = (char)('0' + i);
        zkf_timer_start(p.loop, 0, mark_cb, &m[i]);
    }
    zkf_pollhost_run(p.h);
    ASSERT_STR_EQ("01234567", tr.buf);
    pair_free(&p);
}

typedef struct canceller {
    trace *tr;
    zkf_timer *victim;
} canceller;

static void cancel_cb(zkf_timer *t, void *arg)
{
    canceller *c = arg;
    c->tr->buf[c->tr->n++] = 'x';
    zkf_timer_stop(c->victim);
    zkf_timer_stop(t);      /* itself, while firing: a no-op */
}

static void test_timer_cancel_inside_callback(void)
{
    pair p = pair_new();
    trace tr = { { 0 }, 0 };
    mark later = { &tr, 'L' }, after = { &tr, 'A' };
    canceller c = { &tr, NULL };
    zkf_timer_start(p.loop, 5, cancel_cb, &c);
    /* Due in the same pass as the canceller, started after it. */
    c.victim = zkf_timer_start(p.loop, 5, mark_cb, &later);
    zkf_timer_start(p.loop, 5, mark_cb, &after);
    usleep(10000);
    ASSERT_EQ(0, zkf_loop_on_timer(p.loop));
    ASSERT_STR_EQ("xA", tr.buf);
    ASSERT_EQ(0, zkf_loop_alive(p.loop));
    pair_free(&p);
}

typedef struct restarter {
    zkf_loop *loop;
    int fired;
} restarter;

static void restart_cb(zkf_timer *t, void *arg)
{
    (void)t;
    restarter *r = arg;
    r->fired++;
    zkf_timer_start(r->loop, 0, restart_cb, r);
}

static void test_timer_zero_ms_from_callback_runs_next_turn(void)
{
    pair p = pair_new();
    restarter r = { p.loop, 0 };
    zkf_timer_start(p.loop, 0, restart_cb, &r);
    ASSERT_EQ(0, zkf_loop_on_timer(p.loop));
    ASSERT_EQ(1, r.fired);
    ASSERT_EQ(0, zkf_loop_on_timer(p.loop));
    ASSERT_EQ(2, r.fired);
    ASSERT_EQ(1, zkf_loop_alive(p.loop));
    pair_free(&p);      /* frees the pending restart */
}

/* ---- io watchers ----------------------------------------------------- */

typedef struct reader {
    char got[32];
    int n;
    int eof;
    zkf_pollhost *h;
} reader;

static void read_cb(zkf_io *io, int fd, int events, void *arg)
{
    reader *r = arg;
    if (!(events & ZKF_IO_IN))
        return;
    ssize_t k = read(fd, r->got + r->n, sizeof r->got - 1 - (size_t)r->n);
    if (k > 0) {
        r->n += (int)k;
        return;
    }
    r->eof = 1;
    zkf_io_stop(io);    /* inside its own callback */
}

static void write_later_cb(zkf_timer *t, void *arg)
{
    (void)t;
    int *wfd = arg;
    ssize_t k = write(*wfd, "hello", 5);
    (void)k;
    close(*wfd);
}

static void test_io_watcher_reads_a_pipe(void)
{
    pair p = pair_new();
    int fds[2];
    ASSERT_EQ(0, pipe(fds));
    reader r = { { 0 }, 0, 0, p.h };
    ASSERT(zkf_io_start(p.loop, fds[0], ZKF_IO_IN, read_cb, &r) != NULL);
    /* One watcher per fd. */
    ASSERT(zkf_io_start(p.loop, fds[0], ZKF_IO_IN, read_cb, &r) == NULL);
    zkf_timer_start(p.loop, 5, write_later_cb, &fds[1]);
    ASSERT_EQ(0, zkf_pollhost_run(p.h));    /* ends: nothing alive */
    ASSERT_STR_EQ("hello", r.got);
    ASSERT_EQ(1, r.eof);
    close(fds[0]);
    pair_free(&p);
}

/* ---- end of turn ----------------------------------------------------- */

static void count_cb(void *arg)
{
    (*(int *)arg)++;
}

static void nop_timer(zkf_timer *t, void *arg)
{
    (void)t;
    (void)arg;
}

static void test_turn_end_runs_once_per_turn(void)
{
    pair p = pair_new();
    int turns = 0;
    ASSERT_EQ(0, zkf_loop_on_turn_end(p.loop, count_cb, &turns));
    for (int i = 0; i < 5; i++)
        zkf_timer_start(p.loop, 0, nop_timer, NULL);
    ASSERT_EQ(0, zkf_loop_on_timer(p.loop));  /* five timers, one turn */
    ASSERT_EQ(1, turns);
    ASSERT_EQ(0, zkf_loop_on_fd(p.loop, 999, ZKF_IO_IN));
    ASSERT_EQ(2, turns);
    zkf_loop_off_turn_end(p.loop, count_cb, &turns);
    ASSERT_EQ(0, zkf_loop_on_timer(p.loop));
    ASSERT_EQ(2, turns);
    pair_free(&p);
}

/* ---- re-entrancy ----------------------------------------------------- */

typedef struct reenter {
    zkf_loop *loop;
    int on_timer_rc, on_fd_rc;
} reenter;

static void reenter_cb(zkf_timer *t, void *arg)
{
    (void)t;
    reenter *re = arg;
    re->on_timer_rc = zkf_loop_on_timer(re->loop);
    re->on_fd_rc = zkf_loop_on_fd(re->loop, 0, ZKF_IO_IN);
}

static void test_reentrant_dispatch_is_refused(void)
{
    pair p = pair_new();
    reenter re = { p.loop, 0, 0 };
    zkf_timer_start(p.loop, 0, reenter_cb, &re);
    ASSERT_EQ(0, zkf_loop_on_timer(p.loop));
    ASSERT_EQ(-1, re.on_timer_rc);
    ASSERT_EQ(-1, re.on_fd_rc);
    pair_free(&p);
}

/* ---- wakeups --------------------------------------------------------- */

typedef struct waker {
    zkf_loop *loop;
    zkf_pollhost *h;
    pthread_t loop_thread;
    int ran_on_loop_thread;
    int count;
} waker;

static void woken_cb(void *arg)
{
    waker *w = arg;
    w->ran_on_loop_thread = pthread_equal(pthread_self(), w->loop_thread);
    if (++w->count == 100) {
        zkf_loop_unref(w->loop);
    }
}

static void *wake_thread(void *arg)
{
    waker *w = arg;
    usleep(5000);
    for (int i = 0; i < 100; i++)
        zkf_loop_wake(w->loop, woken_cb, w);
    return NULL;
}

static void test_wake_from_another_thread(void)
{
    pair p = pair_new();
    waker w = { p.loop, p.h, pthread_self(), 0, 0 };
    ASSERT_EQ(0, zkf_loop_alive(p.loop));   /* the wake fd does not count */
    zkf_loop_ref(p.loop);                   /* until all wakes arrived */
    pthread_t th;
    ASSERT_EQ(0, pthread_create(&th, NULL, wake_thread, &w));
    ASSERT_EQ(0, zkf_pollhost_run(p.h));
    pthread_join(th, NULL);
    ASSERT_EQ(100, w.count);
    ASSERT_EQ(1, w.ran_on_loop_thread);
    pair_free(&p);
}

static void test_wake_pending_at_free_is_dropped(void)
{
    pair p = pair_new();
    int n = 0;
    ASSERT_EQ(0, zkf_loop_wake(p.loop, count_cb, &n));
    pair_free(&p);      /* no leak, no call */
    ASSERT_EQ(0, n);
}

/* What a pending wake holds is released when the loop goes first (the zk
 * client's mailbox reference leaked that way). */
static void test_wake_pending_at_free_runs_its_drop(void)
{
    pair p = pair_new();
    int n = 0, dropped = 0;
    ASSERT_EQ(0, zkf_loop_wake_ex(p.loop, count_cb, count_cb, &dropped));
    ASSERT_EQ(0, zkf_loop_wake_ex(p.loop, count_cb, NULL, &n));
    pair_free(&p);
    ASSERT_EQ(1, dropped);
    ASSERT_EQ(0, n);
}

/* ---- poll host ------------------------------------------------------- */

static void stop_cb(zkf_timer *t, void *arg)
{
    (void)t;
    zkf_pollhost_stop(arg);
}

static void test_pollhost_stops_on_stop_and_when_idle(void)
{
    pair p = pair_new();
    ASSERT_EQ(0, zkf_pollhost_run(p.h));    /* nothing alive: returns */
    zkf_timer_start(p.loop, 1, stop_cb, p.h);
    zkf_timer *late = zkf_timer_start(p.loop, 60000, nop_timer, NULL);
    double t0 = zkf_mono_ms();
    ASSERT_EQ(0, zkf_pollhost_run(p.h));
    ASSERT(zkf_mono_ms() - t0 < 1000);
    ASSERT_EQ(1, zkf_loop_alive(p.loop));
    zkf_timer_stop(late);
    ASSERT_EQ(0, zkf_loop_alive(p.loop));
    zkf_loop_ref(p.loop);
    ASSERT_EQ(1, zkf_loop_alive(p.loop));
    zkf_loop_unref(p.loop);
    pair_free(&p);
}

/* ---- libevent host --------------------------------------------------- */

static void evstop_cb(zkf_timer *t, void *arg)
{
    (void)t;
    event_base_loopbreak(arg);
}

static void test_evhost_drives_timers_and_fds(void)
{
    struct event_base *base = event_base_new();
    zkf_evhost *h = zkf_evhost_new(base);
    zkf_loop *loop = zkf_loop_new(zkf_evhost_hooks(h));
    zkf_evhost_attach(h, loop);

    trace tr = { { 0 }, 0 };
    mark m[2] = { { &tr, 'b' }, { &tr, 'a' } };
    zkf_timer_start(loop, 200, mark_cb, &m[0]);
    zkf_timer_start(loop, 100, mark_cb, &m[1]);
    int fds[2];
    ASSERT_EQ(0, pipe(fds));
    reader r = { { 0 }, 0, 0, NULL };
    zkf_io_start(loop, fds[0], ZKF_IO_IN, read_cb, &r);
    zkf_timer_start(loop, 50, write_later_cb, &fds[1]);
    int n = 0;
    zkf_loop_wake(loop, count_cb, &n);
    zkf_timer_start(loop, 400, evstop_cb, base);

    event_base_dispatch(base);
    ASSERT_STR_EQ("ab", tr.buf);
    ASSERT_STR_EQ("hello", r.got);
    ASSERT_EQ(1, r.eof);
    ASSERT_EQ(1, n);
    ASSERT_EQ(0, zkf_loop_alive(loop));

    close(fds[0]);
    zkf_loop_free(loop);
    zkf_evhost_free(h);
    event_base_free(base);
}

static void test_clocks(void)
{
    double m0 = zkf_mono_ms();
    usleep(2000);
    ASSERT(zkf_mono_ms() - m0 >= 2);
    ASSERT(zkf_wall() > 1.6e9);
}

int main(void)
{
    RUN(test_timer_fires_in_deadline_order);
    RUN(test_timer_equal_deadlines_keep_start_order);
    RUN(test_timer_cancel_inside_callback);
    RUN(test_timer_zero_ms_from_callback_runs_next_turn);
    RUN(test_io_watcher_reads_a_pipe);
    RUN(test_turn_end_runs_once_per_turn);
    RUN(test_reentrant_dispatch_is_refused);
    RUN(test_wake_from_another_thread);
    RUN(test_wake_pending_at_free_is_dropped);
    RUN(test_wake_pending_at_free_runs_its_drop);
    RUN(test_pollhost_stops_on_stop_and_when_idle);
    RUN(test_evhost_drives_timers_and_fds);
    RUN(test_clocks);
    return test_report();
}
