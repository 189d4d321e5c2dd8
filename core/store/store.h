/*
 * store.h - the store: znodes, as ZooKeeper has them, behind one interface.
 *
 * The scheduler persists through this interface and nothing else.  Two
 * backends implement it: store/sqlite.c (one machine, SQLite in WAL mode,
 * the default) and store/zk.c (a real ensemble, over zk/zk.c).  Both must
 * pass spec/store_spec.lua.
 *
 * Every operation takes a completion `cb(result, arg)`.  When the operation
 * function returns ZKF_ZOK the completion is called exactly once: with the
 * outcome, or with ZKF_ZCLOSING when the store is freed first.  When it
 * returns anything else the request was refused and `cb` is never called.
 * `cb` may be NULL when the caller does not care.
 *
 * The SQLite backend completes synchronously: `cb` runs before the
 * operation function returns.  Callers must allow that (do not touch state
 * after the call that the callback may have freed), and must not assume it
 * either, since the ZooKeeper backend completes on a later loop turn.  The
 * SQLite backend calls `cb` as its very last step, with its own state
 * consistent, so a callback may longjmp out (a Lua error) without harm.
 *
 * Watches are one-shot: `watch(type, path, arg)` is called at most once
 * with a ZKF_WATCH_* event, on the loop, never from inside the call that set
 * it or the call that caused the change.  A watch is set when the
 * completion's rc is ZKF_ZOK (for exists, also ZKF_ZNONODE); otherwise it
 * is never called and `arg` stays the caller's.  When the store is freed first,
 * each watch still registered is called once with ZKF_WATCH_CLOSED so its
 * owner can free `arg`.
 *
 * Thread: loop thread only.
 */
#ifndef ZKF_STORE_H
#define ZKF_STORE_H

#include <stddef.h>
#include <stdint.h>
#include "loop/loop.h"

typedef struct zkf_store zkf_store;

/* ZooKeeper's error codes, with ZooKeeper's numeric values, so the two
 * backends and the Lua API report the same names. */
enum {
    ZKF_ZOK = 0,
    ZKF_ZSYSTEMERROR = -1,            /* a SQLite or system error */
    ZKF_ZRUNTIMEINCONSISTENCY = -2,   /* the database contradicts itself */
    ZKF_ZCONNECTIONLOSS = -4,         /* the server went away (zk only) */
    ZKF_ZMARSHALLINGERROR = -5,       /* could not encode a request */
    ZKF_ZOPERATIONTIMEOUT = -7,       /* the write lock was busy too long */
    ZKF_ZBADARGUMENTS = -8,           /* bad path, data over 1 MiB, ... */
    ZKF_ZINVALIDSTATE = -9,           /* the handle cannot serve requests */
    ZKF_ZAPIERROR = -100,             /* misuse of this interface */
    ZKF_ZNONODE = -101,               /* the node (or its parent) is missing */
    ZKF_ZNOAUTH = -102,               /* the ACL forbids it */
    ZKF_ZBADVERSION = -103,           /* expected version does not match */
    ZKF_ZNOCHILDRENFOREPHEMERALS = -108, /* parent is ephemeral */
    ZKF_ZNODEEXISTS = -110,           /* create: the node already exists */
    ZKF_ZNOTEMPTY = -111,             /* delete: the node has children */
    ZKF_ZSESSIONEXPIRED = -112,       /* the session is gone (zk only) */
    ZKF_ZINVALIDACL = -114,           /* the ACL is malformed */
    ZKF_ZCLOSING = -116,              /* the store is being freed */
    ZKF_ZNOTHING = -117               /* no server responses to process */
};

/* Returns the name of `rc` ("ZNONODE"), or "ZUNKNOWN".  Static text. */
const char *zkf_store_errname(int rc);

/* ZooKeeper's Stat.  Times are wall-clock milliseconds since the epoch. */
typedef struct zkf_stat {
    int64_t czxid;            /* zxid of the create */
    int64_t mzxid;            /* zxid of the last set */
    int64_t pzxid;            /* zxid of the last child create/delete */
    int64_t ctime;
    int64_t mtime;
    int32_t version;          /* number of sets */
    int32_t cversion;         /* number of child creates + deletes */
    int32_t aversion;         /* number of ACL changes (always 0 here) */
    int64_t ephemeral_owner;  /* owning session id, 0 when persistent */
    int32_t data_length;
    int32_t num_children;
} zkf_stat;

/* create() flags. */
enum {
    ZKF_STORE_EPHEMERAL = 1,   /* deleted with the creating session */
    ZKF_STORE_SEQUENTIAL = 2,  /* append the parent's cversion as %010d */
    ZKF_STORE_PARENTS = 4      /* create missing ancestors (empty, persistent) */
};

/* delete() flags. */
enum {
    ZKF_STORE_RECURSIVE = 1    /* delete the subtree, in one transaction */
};

/* Watch event types: ZooKeeper's ZOO_*_EVENT values. */
enum {
    ZKF_WATCH_CLOSED = -1,     /* the store was freed before the watch fired */
    ZKF_WATCH_CREATED = 1,
    ZKF_WATCH_DELETED = 2,
    ZKF_WATCH_CHANGED = 3,
    ZKF_WATCH_CHILD = 4
};

/* Returns "created", "deleted", "changed", "child" or "closed".  Static. */
const char *zkf_store_watchname(int type);

/* multi() operations. */
enum {
    ZKF_STORE_OP_CREATE = 1,
    ZKF_STORE_OP_DELETE = 2,
    ZKF_STORE_OP_SET = 5,
    ZKF_STORE_OP_CHECK = 13
};

/* One multi() operation.  Every pointer is borrowed for the call only. */
typedef struct zkf_store_op {
    int type;                 /* ZKF_STORE_OP_* */
    const char *path;
    const char *data;         /* create, set; NULL with data_len 0 is empty */
    size_t data_len;
    int flags;                /* create: ZKF_STORE_*; delete: RECURSIVE */
    int version;              /* set, delete, check: expected, -1 any */
} zkf_store_op;

/* The outcome of one multi() operation. */
typedef struct zkf_store_op_result {
    int rc;                   /* ZKF_ZOK, the error, or ZKF_ZRUNTIMEINCONSISTENCY
                                 for the ops rolled back with the failing one */
    const char *path;         /* create: the path created; else NULL */
    zkf_stat stat;            /* set: the new stat */
} zkf_store_op_result;

/* What a completion receives.  Everything is borrowed for the duration of
 * the callback only: copy what you keep. */
typedef struct zkf_store_result {
    int rc;                   /* ZKF_ZOK or a ZKF_Z* error */
    const char *path;         /* create: the path created (with sequence) */
    const char *data;         /* get: the data (not NUL-terminated) */
    size_t data_len;
    const zkf_stat *stat;     /* get, set, exists (ZOK only); else NULL */
    const char *const *children; /* children: sorted names */
    size_t n_children;
    const zkf_store_op_result *results; /* multi: one per op */
    size_t n_results;
    int failed_index;         /* multi: 0-based index of the failing op, -1 */
} zkf_store_result;

typedef void (*zkf_store_cb)(const zkf_store_result *r, void *arg);
typedef void (*zkf_store_watch_cb)(int type, const char *path, void *arg);

/* The backend vtable: a backend fills one in statically and embeds
 * `zkf_store` (whose first member points at it) in its own handle. */
typedef struct zkf_store_vtable {
    const char *name;
    int (*create)(zkf_store *s, const char *path, const char *data,
                  size_t len, int flags, zkf_store_cb cb, void *arg);
    int (*get)(zkf_store *s, const char *path, zkf_store_watch_cb w,
               void *warg, zkf_store_cb cb, void *arg);
    int (*set)(zkf_store *s, const char *path, const char *data, size_t len,
               int version, zkf_store_cb cb, void *arg);
    int (*del)(zkf_store *s, const char *path, int version, int flags,
               zkf_store_cb cb, void *arg);
    int (*exists)(zkf_store *s, const char *path, zkf_store_watch_cb w,
                  void *warg, zkf_store_cb cb, void *arg);
    int (*children)(zkf_store *s, const char *path, zkf_store_watch_cb w,
                    void *warg, zkf_store_cb cb, void *arg);
    int (*multi)(zkf_store *s, const zkf_store_op *ops, size_t n,
                 zkf_store_cb cb, void *arg);
    int (*flush)(zkf_store *s);
    const char *(*errmsg)(zkf_store *s);
    void (*free)(zkf_store *s);
} zkf_store_vtable;

struct zkf_store {
    const zkf_store_vtable *vt;
};

/* Options of the SQLite backend; zero fields take the defaults. */
typedef struct zkf_sqlite_opts {
    const char *synchronous;  /* "off" | "normal" (default) | "full" | "extra" */
    int busy_timeout_ms;      /* wait for another writer; default 5000 */
    int poll_ms;              /* data_version poll while watched; default 100 */
} zkf_sqlite_opts;

/* Opens (creating if needed) the SQLite store at `path` on `loop`.
 * Returns a new store; free it with zkf_store_free().  `loop` is borrowed
 * and must outlive the store; `path` and `opts` (may be NULL) are copied.
 * On error returns NULL with a message in `err` (`errlen` bytes).
 *
 * Each handle is one session (its ephemeral nodes die with it); opening
 * also removes the sessions, and ephemerals, of processes that are gone.
 * Writes join the loop turn's transaction, committed by the loop's
 * end-of-turn hook (see docs/durability.md); another handle's write waits
 * up to busy_timeout_ms for that commit, then fails ZKF_ZOPERATIONTIMEOUT. */
zkf_store *zkf_store_sqlite_new(zkf_loop *loop, const char *path,
                                const zkf_sqlite_opts *opts,
                                char *err, size_t errlen);

/* What the SQLite store says after each commit of a transaction that had
 * writes (the end-of-turn commit, zkf_store_flush(), closing): ZKF_ZOK, or
 * the error with SQLite's message in `msg` ("COMMIT: database or disk is
 * full"; borrowed for the call).  A failed commit is rolled back: the
 * writes of that transaction, each already completed ZKF_ZOK, are not in
 * the database, and their writers must write them again. */
typedef void (*zkf_store_commit_cb)(int rc, const char *msg, void *arg);

/* Sets the commit callback of a SQLite store (NULL removes it); `arg` is
 * borrowed.  Other backends: no effect (a ZooKeeper write reports its
 * own outcome).  The callback runs on the loop thread and must not free
 * `s`. */
void zkf_store_sqlite_on_commit(zkf_store *s, zkf_store_commit_cb cb,
                                void *arg);

/* Creates `path` with a copy of `data` (`len` bytes, at most 1 MiB) and
 * ZKF_STORE_* `flags`.  `path` is copied.  Result: path. */
int zkf_store_create(zkf_store *s, const char *path, const char *data,
                     size_t len, int flags, zkf_store_cb cb, void *arg);

/* Reads `path`; result: data, stat.  `watch` (may be NULL) fires once on
 * the node's change or deletion; it is set only when the get succeeds. */
int zkf_store_get(zkf_store *s, const char *path, zkf_store_watch_cb watch,
                  void *warg, zkf_store_cb cb, void *arg);

/* Replaces the data of `path` with a copy of `data` when its version is
 * `version` (-1: any).  Result: stat. */
int zkf_store_set(zkf_store *s, const char *path, const char *data,
                  size_t len, int version, zkf_store_cb cb, void *arg);

/* Deletes `path` when its version is `version` (-1: any); with
 * ZKF_STORE_RECURSIVE its whole subtree, in one transaction. */
int zkf_store_delete(zkf_store *s, const char *path, int version, int flags,
                     zkf_store_cb cb, void *arg);

/* Stat of `path`: ZKF_ZOK with stat, or ZKF_ZNONODE.  `watch` (may be NULL)
 * is set either way and fires on creation, change or deletion. */
int zkf_store_exists(zkf_store *s, const char *path,
                     zkf_store_watch_cb watch, void *warg,
                     zkf_store_cb cb, void *arg);

/* Sorted child names of `path`.  `watch` (may be NULL) fires once when a
 * child is created or deleted (ZKF_WATCH_CHILD) or `path` is deleted. */
int zkf_store_children(zkf_store *s, const char *path,
                       zkf_store_watch_cb watch, void *warg,
                       zkf_store_cb cb, void *arg);

/* Runs `n` operations all or nothing.  `ops` is borrowed for the call.
 * Result: results[n]; on failure rc is the failing op's error and
 * failed_index its index. */
int zkf_store_multi(zkf_store *s, const zkf_store_op *ops, size_t n,
                    zkf_store_cb cb, void *arg);

/* Makes every completed write durable now (per the synchronous setting)
 * instead of at the end of the loop turn.  Returns ZKF_ZOK or an error. */
int zkf_store_flush(zkf_store *s);

/* The detail of the last error on `s` ("" when none).  Borrowed; valid
 * until the next call on `s`. */
const char *zkf_store_errmsg(zkf_store *s);

/* Commits, deletes this session's ephemeral nodes, completes pending
 * requests with ZKF_ZCLOSING, calls remaining watches with
 * ZKF_WATCH_CLOSED, and frees `s`.  NULL is a no-op. */
void zkf_store_free(zkf_store *s);

/* ZooKeeper's PathUtils.validatePath: absolute, no empty, "." or ".."
 * component, no control characters; with `sequential`, a trailing '/'
 * is allowed (the sequence number completes the name).  Returns 1 or 0;
 * both backends check with it, so they refuse the same paths. */
int zkf_store_valid_path(const char *path, int sequential);

#endif
