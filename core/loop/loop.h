/*
 * loop.h - the engine's one internal loop interface.
 *
 * Every source of work (file descriptors, timers, child exits, store
 * commits) reaches the engine through a zkf_loop.  The loop never waits on
 * anything itself: like libcurl's multi socket interface, it tells its host
 * which descriptors to watch (hooks.watch_fd) and when its single timer must
 * fire (hooks.set_timer); the host calls zkf_loop_on_fd()/zkf_loop_on_timer()
 * back.  loop/event.c adapts it to libevent, loop/poll.c to plain poll().
 *
 * Thread: every function here is for the loop thread only, except
 * zkf_loop_wake(), which any thread may call.
 */
#ifndef ZKF_LOOP_H
#define ZKF_LOOP_H

#include <stdint.h>

typedef struct zkf_loop zkf_loop;
typedef struct zkf_io zkf_io;
typedef struct zkf_timer zkf_timer;

enum {
    ZKF_IO_IN = 1,      /* readable (or hang-up / error) */
    ZKF_IO_OUT = 2,     /* writable */
    ZKF_IO_REMOVE = 4   /* to watch_fd: stop watching this fd */
};

/* What a host provides.  watch_fd() is told the full new interest set of
 * `fd` (IN, OUT, both, or REMOVE); set_timer() is told the delay in
 * milliseconds after which the host must call zkf_loop_on_timer(); a new
 * value replaces the old one and -1 cancels.  Both return 0 on success. */
typedef struct zkf_loop_hooks {
    int (*watch_fd)(void *host, int fd, int what);
    int (*set_timer)(void *host, long ms);
    void *host;
} zkf_loop_hooks;

typedef void (*zkf_io_cb)(zkf_io *io, int fd, int events, void *arg);
typedef void (*zkf_timer_cb)(zkf_timer *t, void *arg);
typedef void (*zkf_turn_cb)(void *arg);

/* Returns a new loop that copies `hooks`; free it with zkf_loop_free().
 * NULL when out of memory. */
zkf_loop *zkf_loop_new(const zkf_loop_hooks *hooks);

/* Frees `loop`, its timers, io watchers and pending wakeups (their
 * callbacks are not called); the host is told to forget the fds and the
 * timer, so it must still be alive.  Not from inside a loop callback. */
void zkf_loop_free(zkf_loop *loop);

/* Host entry points: `fd` is ready for `events` (ZKF_IO_IN/OUT), or the
 * timer set by set_timer() expired.  Each runs due callbacks and then the
 * end-of-turn callbacks.  Return 0; -1 when called from inside one of the
 * loop's own callbacks (nothing is run: curl's CURLM_RECURSIVE_API_CALL).
 * A host reports a hang-up or error on `fd` as ZKF_IO_IN|ZKF_IO_OUT; the
 * watcher gets the part of it that it asked for.  Timers started from a
 * timer callback run on the next on_timer() call at the earliest, even
 * with 0 ms, so a timer that re-arms itself cannot starve the fds. */
int zkf_loop_on_fd(zkf_loop *loop, int fd, int events);
int zkf_loop_on_timer(zkf_loop *loop);

/* Watch `fd` for `events`; returns a watcher owned by the loop, valid
 * until zkf_io_stop().  One watcher per fd. NULL on error. */
zkf_io *zkf_io_start(zkf_loop *loop, int fd, int events, zkf_io_cb cb,
                     void *arg);
/* Changes the interest set of a watcher. */
int zkf_io_update(zkf_io *io, int events);
/* Stops and frees the watcher; safe from inside its own callback. */
void zkf_io_stop(zkf_io *io);

/* Calls `cb` once after `ms` milliseconds (0: on the next turn).  Returns a
 * timer owned by the loop until it fires or zkf_timer_stop() is called;
 * after it fired the pointer is dead.  NULL on error. */
zkf_timer *zkf_timer_start(zkf_loop *loop, double ms, zkf_timer_cb cb,
                           void *arg);
/* Cancels and frees a pending timer; safe from inside any loop callback,
 * including for a timer due in the same pass.  Called on the firing timer
 * from its own callback it does nothing (the loop frees it on return). */
void zkf_timer_stop(zkf_timer *t);

/* Registers `cb` to run at the end of every loop turn (after the callbacks
 * of one on_fd/on_timer call): the store's group commit hangs here.
 * Returns 0, or -1 when out of memory. */
int zkf_loop_on_turn_end(zkf_loop *loop, zkf_turn_cb cb, void *arg);
void zkf_loop_off_turn_end(zkf_loop *loop, zkf_turn_cb cb, void *arg);

/* Runs end-of-turn callbacks now (used by synchronous drivers). */
void zkf_loop_end_turn(zkf_loop *loop);

/* Wakes the loop from any thread: `cb(arg)` runs on the loop thread on its
 * next turn.  The only thread-safe call here. Returns 0 or -1. */
int zkf_loop_wake(zkf_loop *loop, zkf_turn_cb cb, void *arg);

/* zkf_loop_wake(), and when the loop is freed before `cb` ran, `drop(arg)`
 * runs instead (on the freeing thread), so that what the wake holds (a
 * reference, a buffer) is released.  A wake pending at zkf_loop_free()
 * without `drop` is discarded. */
int zkf_loop_wake_ex(zkf_loop *loop, zkf_turn_cb cb, zkf_turn_cb drop,
                     void *arg);

/* Number of live io watchers + pending timers (the poll runner stops when
 * it reaches zero and nothing else is keeping the loop alive). */
int zkf_loop_alive(const zkf_loop *loop);

/* Monotonic milliseconds and wall-clock seconds (UTC epoch, fractional). */
double zkf_mono_ms(void);
double zkf_wall(void);

/* Hosts.  A host is created first, the loop on its hooks, then the two are
 * attached: zkf_loop_new(zkf_pollhost_hooks(h)); zkf_pollhost_attach(h, l).
 *
 * The poll() host: zkf_pollhost_run() runs until zkf_pollhost_stop() or
 * until the loop has nothing alive (zkf_loop_alive() == 0).  Returns 0.
 * Returns a new host; free it with zkf_pollhost_free() after the loop. */
typedef struct zkf_pollhost zkf_pollhost;
zkf_pollhost *zkf_pollhost_new(void);
const zkf_loop_hooks *zkf_pollhost_hooks(zkf_pollhost *h);
void zkf_pollhost_attach(zkf_pollhost *h, zkf_loop *loop);
int zkf_pollhost_run(zkf_pollhost *h);
void zkf_pollhost_stop(zkf_pollhost *h);
void zkf_pollhost_free(zkf_pollhost *h);

/* The libevent host: events on `base` (borrowed; must outlive the host). */
struct event_base;
typedef struct zkf_evhost zkf_evhost;
zkf_evhost *zkf_evhost_new(struct event_base *base);
const zkf_loop_hooks *zkf_evhost_hooks(zkf_evhost *h);
void zkf_evhost_attach(zkf_evhost *h, zkf_loop *loop);
void zkf_evhost_free(zkf_evhost *h);

/* Keeps the loop "alive" for zkf_pollhost_run() while > 0 (e.g. a pending
 * coroutine that waits on something other than an fd or timer). */
void zkf_loop_ref(zkf_loop *loop);
void zkf_loop_unref(zkf_loop *loop);

#endif
