/*
 * zkflow.h - the embedding API of zkflow, the only header a host includes.
 *
 * An engine runs the scheduler, its Lua state and its store on the host's
 * event loop.  The engine never owns the thread and never blocks it.  Two
 * ways to drive it:
 *
 *   - libevent: zkf_engine_new(base) and run the base as usual.
 *   - any loop (the model is libcurl's multi socket interface): pass a
 *     zkf_host to zkf_engine_new_host().  The engine calls host->watch_fd
 *     to say which descriptors to watch for what, and host->set_timer to say
 *     when it next needs to run; the host calls zkf_engine_on_fd() when a
 *     descriptor is ready and zkf_engine_on_timer() when the timer expires.
 *
 * Threads: every function is for the thread that drives the loop.  The
 * engine's helper threads (ZooKeeper's) never call the host or Lua; they wake
 * the loop through a descriptor that the host watches like any other.
 *
 * Errors: functions that can fail return ZKF_OK (0) or a negative ZKF_E*;
 * zkf_strerror() names the code and zkf_errmsg() gives the detail of the
 * last failure on an engine.  The library never prints, exits or aborts on
 * bad input.  Calling an engine from inside one of its own callbacks returns
 * ZKF_ERECURSIVE.
 */
#ifndef ZKFLOW_H
#define ZKFLOW_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1: the first release; 2: zkf_engine_http_headers(). */
#define ZKF_API_VERSION 2
#define ZKF_VERSION "0.1.0"

/* The library is built with -fvisibility=hidden: the functions declared
 * here are the only symbols libzkflow.so exports (spec/c/abi_test.sh
 * checks it).  Its SONAME is libzkflow.so.0. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define ZKF_EXPORT __attribute__((visibility("default")))
#else
#define ZKF_EXPORT
#endif

typedef struct zkf_engine zkf_engine;

typedef enum {
    ZKF_OK = 0,
    ZKF_ENOMEM = -1,      /* out of memory */
    ZKF_EINVAL = -2,      /* a bad argument or option value */
    ZKF_ELUA = -3,        /* Lua raised an error; see zkf_errmsg() */
    ZKF_ESTORE = -4,      /* the store could not be opened or written */
    ZKF_ERECURSIVE = -5,  /* called from inside one of the engine's callbacks */
    ZKF_EIO = -6,         /* an operating system call failed */
    ZKF_ESTATE = -7       /* not allowed in the engine's current state */
} zkf_code;

/* Static text for `rc`.  Never NULL. */
ZKF_EXPORT const char *zkf_strerror(int rc);

/* Interest sets for zkf_host.watch_fd and zkf_engine_on_fd(). */
enum { ZKF_WATCH_IN = 1, ZKF_WATCH_OUT = 2, ZKF_WATCH_REMOVE = 4 };

/* A host loop, for zkf_engine_new_host().  watch_fd() receives the whole new
 * interest set of `fd` (ZKF_WATCH_IN/OUT, or ZKF_WATCH_REMOVE); set_timer()
 * the delay in milliseconds after which zkf_engine_on_timer() is due (a new
 * value replaces the old one, -1 cancels).  Both return 0 on success. */
typedef struct zkf_host {
    int (*watch_fd)(void *ud, int fd, int what);
    int (*set_timer)(void *ud, long ms);
    void *ud;
} zkf_host;

struct event_base;

/* Returns a new engine on libevent `base` (borrowed: it must outlive the
 * engine); free it with zkf_engine_free().  NULL on failure, with the reason
 * in `err` (may be NULL). */
ZKF_EXPORT zkf_engine *zkf_engine_new(struct event_base *base, char *err,
                                      size_t errlen);

/* Returns a new engine driven by `host` (copied); free it with
 * zkf_engine_free().  NULL on failure, with the reason in `err`. */
ZKF_EXPORT zkf_engine *zkf_engine_new_host(const zkf_host *host, char *err,
                                           size_t errlen);

/* Host callbacks for zkf_engine_new_host() engines. */
ZKF_EXPORT int zkf_engine_on_fd(zkf_engine *e, int fd, int events);
ZKF_EXPORT int zkf_engine_on_timer(zkf_engine *e);

/* Sets option `name` to `value` (both copied) before zkf_engine_start():
 *   "dags"      DAG folder                     (default "./dags")
 *   "db"        embedded store file            (default "./zkflow.db")
 *   "db_sync"   off | normal | full | extra    (default "normal")
 *   "root"      znode root                     (default "/zkflow")
 *   "log_dir"   task logs                      (default "<db dir>/logs";
 *               with "zk": "./logs")
 *   "scheduler" "off": serve the API from the store without scheduling
 *               (another engine on the same store schedules; the nginx
 *               module runs one scheduler among its workers this way).
 *               Otherwise the engine schedules the "db" store while it
 *               owns it (an flock on "<db>.scheduler.lock"); while another
 *               process does, it serves the API and takes over when that
 *               one ends
 *   "zk"        HOST:PORT[,HOST:PORT...][/chroot]: a ZooKeeper ensemble
 *               instead of "db".  The engine is a cluster member: its
 *               scheduler contends for leadership with every zkflow
 *               scheduler on the ensemble and a worker beside it runs
 *               tries from the queue ("scheduler" "off": the API only).
 *               zkf_engine_start() checks the address and returns at
 *               once; the session comes on the loop.  Until it does, the
 *               API answers 503 ({"status":"connecting"} on
 *               /api/v1/health), and an ensemble that cannot be reached is
 *               logged (an error naming the hosts) and tried again: each
 *               attempt waits up to the 10 s session timeout, the next
 *               starts 5 s after a failed one.
 *   "zk_auth"   digest "USER:PASSWORD" for the ZooKeeper session
 *   "zk_acl"    ACL of every node the engine creates: "creator" (the
 *               default with zk_auth), "open" (without), "read", or
 *               "scheme:id:perms,..." (perms from "rwcda")
 *   "api_auth"  "on": the API asks every request for a user of the store
 *               (`zkflow users`: a token, HTTP basic or the page's session
 *               cookie); "off" (the default): the host guards it
 *   "dag_load_timeout"      seconds a DAG file may take to load: it
 *               loads first in a child process that is killed past it,
 *               and becomes an import error (default "30"; "0": no child)
 *   "dag_load_instructions" Lua instructions a load may run
 *               (default "200000000")
 *   "dag_load_memory"       bytes a load may allocate (default "536870912")
 *   (/config's keys of the same names win over these three)
 * Returns ZKF_EINVAL for an unknown name. */
ZKF_EXPORT int zkf_engine_setopt(zkf_engine *e, const char *name,
                                const char *value);

/* Log messages from the engine go to `fn` (level 0 debug .. 3 error); the
 * message is borrowed for the call.  Without it the engine is silent. */
typedef void (*zkf_log_fn)(void *ud, int level, const char *msg);
ZKF_EXPORT void zkf_engine_set_log(zkf_engine *e, zkf_log_fn fn, void *ud);

/* Opens the store, loads the DAGs and starts scheduling on the loop.
 * Returns at once; ZKF_OK or an error with zkf_errmsg(). */
ZKF_EXPORT int zkf_engine_start(zkf_engine *e);

/* Runs the command line `argv` (as `zkflow` takes it, argv[0] excluded) as a
 * coroutine on the loop.  When it finishes, `done(ud, exit_code)` is called
 * from the loop; a command that keeps running (standalone) calls it only
 * when it stops.  Copies argv. */
typedef void (*zkf_done_fn)(void *ud, int code);
ZKF_EXPORT int zkf_engine_main(zkf_engine *e, int argc, char **argv,
                               zkf_done_fn done, void *ud);

/* Asks a running engine to stop its work (standalone, scheduler): no new
 * task starts, running tasks are terminated, the store is flushed, and the
 * pending zkf_engine_main() completes.  Safe from a signal-handling
 * callback of the host, not from a signal handler. */
ZKF_EXPORT int zkf_engine_shutdown(zkf_engine *e);

/* One HTTP request for the API router (every front door calls this: the
 * evhttp server, the nginx module).  `reply(ud, status, content_type, body,
 * len)` is called exactly once, possibly before this returns; its strings
 * are borrowed for the call.  Copies its arguments. */
typedef void (*zkf_reply_fn)(void *ud, int status, const char *content_type,
                             const char *body, size_t len);
ZKF_EXPORT int zkf_engine_http(zkf_engine *e, const char *method,
                               const char *uri, const char *body, size_t len,
                               zkf_reply_fn reply, void *ud);

/* As zkf_engine_http(), with the request's headers, which the router reads
 * to refuse cross-site requests (Origin, Sec-Fetch-Site, Content-Type):
 * `headers` is NULL or an array of name, value strings ended by a NULL
 * name; names in any case.  Copies them.  zkf_engine_http() is this with
 * no headers: a request the host vouches for, such as its own. */
ZKF_EXPORT int zkf_engine_http_headers(zkf_engine *e, const char *method,
                                       const char *uri,
                                       const char *const *headers,
                                       const char *body, size_t len,
                                       zkf_reply_fn reply, void *ud);

/* The detail of the last failure on `e`.  Borrowed; valid until the next
 * call on `e`. */
ZKF_EXPORT const char *zkf_errmsg(const zkf_engine *e);

/* Kills every task process group still running (SIGKILL), commits the store
 * and frees the engine.  Runs left unfinished resume when an engine starts
 * again on the same store. */
ZKF_EXPORT void zkf_engine_free(zkf_engine *e);

#ifdef __cplusplus
}
#endif

#endif
