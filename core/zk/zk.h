/*
 * zk.h - an asynchronous ZooKeeper client on the engine's loop, over
 * libzookeeper_mt, and the store backend built on it (store/zk.c).
 *
 * Threads: libzookeeper_mt runs its I/O and every completion and watcher
 * on threads of its own.  Those callbacks only copy their results into a
 * message, push it on a locked queue and wake the loop (zkf_loop_wake);
 * everything else here, including every callback this interface makes,
 * runs on the loop thread.  Nothing in this header is thread-safe.
 *
 * Requests: each request function returns ZKF_ZOK and then calls its
 * completion exactly once on the loop (never from inside the call), with
 * the outcome, with ZKF_ZCONNECTIONLOSS when no session could be had
 * within the connect timeout, or with ZKF_ZCLOSING when the client is
 * freed first.  Any other return value means the request was refused and
 * the completion is never called.  Requests made while the client has no
 * connected session wait (unsent) for one, up to the connect timeout.
 *
 * Sessions: state changes reach `on_session` on the loop.  After an expiry
 * the client closes the dead handle, fails what it still held with
 * ZKF_ZSESSIONEXPIRED, tells each live watch ZKF_ZK_WATCH_LOST, and opens
 * a new session (auth re-applied); on_session then sees ZKF_ZK_EXPIRED,
 * ZKF_ZK_CONNECTING and later ZKF_ZK_CONNECTED, the owner's cue to
 * re-create its ephemeral nodes and re-arm its watches.
 */
#ifndef ZKF_ZK_H
#define ZKF_ZK_H

#include <stddef.h>
#include "loop/loop.h"
#include "store/store.h"

typedef struct zkf_zk zkf_zk;

/* Session states, as on_session receives them. */
enum {
    ZKF_ZK_CONNECTING = 1,   /* looking for a server (first time) */
    ZKF_ZK_CONNECTED = 2,    /* a session is usable */
    ZKF_ZK_LOST = 3,         /* the connection dropped; the session may live */
    ZKF_ZK_EXPIRED = 4,      /* the session is gone; a new one is coming */
    ZKF_ZK_AUTH_FAILED = 5,  /* the server refused the credentials */
    ZKF_ZK_CLOSED = 6        /* the client is being freed */
};

/* Watch events besides ZKF_WATCH_*: the session that held the watch
 * expired, so the watch will never fire; re-arm it on the new session. */
enum { ZKF_ZK_WATCH_LOST = -2 };

/* Returns "connecting", "connected", "lost", "expired", "auth_failed",
 * "closed" or "unknown".  Static text. */
const char *zkf_zk_statename(int state);

typedef void (*zkf_zk_event_cb)(zkf_zk *zk, int state, void *arg);

/* What a completion receives; everything is borrowed for the callback. */
typedef struct zkf_zk_result {
    int rc;                   /* ZKF_ZOK or a ZooKeeper error */
    const char *path;         /* create: the path created */
    const char *data;         /* get: data (not NUL-terminated, may be NULL) */
    size_t data_len;
    const zkf_stat *stat;     /* get, set, exists, children on ZOK */
    const char *const *children; /* children: names, sorted */
    size_t n_children;
    const zkf_store_op_result *results; /* multi: one per op */
    size_t n_results;
    int failed_index;         /* multi: 0-based failing op, or -1 */
} zkf_zk_result;

typedef void (*zkf_zk_cb)(zkf_zk *zk, const zkf_zk_result *r, void *arg);
/* `type` is a ZKF_WATCH_* event, ZKF_ZK_WATCH_LOST, or ZKF_WATCH_CLOSED
 * when the client is freed first; called once.  `path` is borrowed. */
typedef void (*zkf_zk_watch_cb)(zkf_zk *zk, int type, const char *path,
                                void *arg);

/* Options; zero fields take the defaults. */
typedef struct zkf_zk_opts {
    int session_timeout_ms;   /* default 10000 */
    int connect_timeout_ms;   /* wait for a session; default session timeout */
    const char *auth;         /* digest "user:password", or NULL */
    const char *acl;          /* ACL of every create: "scheme:id:perms,..."
                                 (perms from "rwcda"), "open", "creator" or
                                 "read"; default "creator" with auth, else
                                 "open" */
    zkf_zk_event_cb on_session;
    void *arg;                /* on_session's */
} zkf_zk_opts;

/* Starts connecting to `hosts` ("host:port,...[/chroot]") on `loop`.
 * Returns a new client; free it with zkf_zk_free().  `loop` is borrowed
 * and must outlive the client; `hosts` and `opts` (may be NULL) are
 * copied.  Never waits for the connection.  On error (bad ACL, bad hosts,
 * out of memory) returns NULL with a message in `err`. */
zkf_zk *zkf_zk_new(zkf_loop *loop, const char *hosts,
                   const zkf_zk_opts *opts, char *err, size_t errlen);

/* The current session id, 0 before the first connection. */
long long zkf_zk_session_id(const zkf_zk *zk);

/* Copies the current session's 16-byte password into `out`; returns 0, or
 * -1 before the first connection.  For tests that take the session over
 * from a second client to force its expiry. */
int zkf_zk_session_passwd(const zkf_zk *zk, char out[16]);

/* The detail of the last failure ("" when none).  Borrowed; valid until
 * the next call on `zk`. */
const char *zkf_zk_errmsg(const zkf_zk *zk);

/* Tags the requests made from now on (and the follow-ups made from their
 * completions) with `tag`, for zkf_zk_wait().  Borrowed, never read. */
void zkf_zk_set_tag(zkf_zk *zk, void *tag);

/* Blocks the loop thread until `*done` becomes non-zero, running only the
 * completions of requests tagged `tag` (session changes are applied, their
 * callbacks and every watch wait for the loop), or `timeout_ms` passes.
 * For callers that cannot yield (plain Lua's main thread).  Returns 0, or
 * -1 on timeout.  `done` is borrowed. */
int zkf_zk_wait(zkf_zk *zk, void *tag, const int *done, int timeout_ms);

/* Requests.  Strings and data are copied; `data` of `len` bytes.  `flags`
 * of create: ZKF_STORE_EPHEMERAL | ZKF_STORE_SEQUENTIAL.  `watch` (may be
 * NULL) is set only when the request succeeds (exists: also on ZNONODE);
 * otherwise it is never called.  `version` -1: any. */
int zkf_zk_create(zkf_zk *zk, const char *path, const char *data,
                  size_t len, int flags, zkf_zk_cb cb, void *arg);
int zkf_zk_get(zkf_zk *zk, const char *path, zkf_zk_watch_cb watch,
               void *warg, zkf_zk_cb cb, void *arg);
int zkf_zk_set(zkf_zk *zk, const char *path, const char *data, size_t len,
               int version, zkf_zk_cb cb, void *arg);
int zkf_zk_delete(zkf_zk *zk, const char *path, int version, zkf_zk_cb cb,
                  void *arg);
int zkf_zk_exists(zkf_zk *zk, const char *path, zkf_zk_watch_cb watch,
                  void *warg, zkf_zk_cb cb, void *arg);
int zkf_zk_children(zkf_zk *zk, const char *path, zkf_zk_watch_cb watch,
                    void *warg, zkf_zk_cb cb, void *arg);
/* `ops` is borrowed for the call only (copied); flags of create ops as
 * above (PARENTS and RECURSIVE are the store's business). */
int zkf_zk_multi(zkf_zk *zk, const zkf_store_op *ops, size_t n,
                 zkf_zk_cb cb, void *arg);

/* Closes the session (its ephemeral nodes go at once), completes pending
 * requests with ZKF_ZCLOSING, calls live watches with ZKF_WATCH_CLOSED,
 * on_session with ZKF_ZK_CLOSED, and frees `zk`.  May be called from any
 * of its callbacks.  NULL is a no-op. */
void zkf_zk_free(zkf_zk *zk);

/* The store over ZooKeeper (store/zk.c).  Returns a new store; free it
 * with zkf_store_free().  `loop` is borrowed and must outlive it; `hosts`
 * and `opts` (may be NULL) are copied; opts->on_session receives the
 * client.  On error returns NULL with a message in `err`. */
zkf_store *zkf_store_zk_new(zkf_loop *loop, const char *hosts,
                            const zkf_zk_opts *opts, char *err,
                            size_t errlen);

/* The client under a store made by zkf_store_zk_new(), or NULL for any
 * other store.  Borrowed; valid while the store lives. */
zkf_zk *zkf_store_zk_client(zkf_store *s);

#endif
