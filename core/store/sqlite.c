/*
 * store/sqlite.c - the embedded store: znodes in one SQLite file.
 *
 * One row per znode, keyed by its path; the stat columns are ZooKeeper's.
 * A global zxid lives in `meta`.  Several processes may open the same file:
 * SQLite's locking serialises their writes, and each process notices the
 * others' commits by polling `PRAGMA data_version` while it has watches.
 *
 * Writes are group-committed: the first write of a loop turn opens
 * BEGIN IMMEDIATE and the loop's end-of-turn hook commits it, so a turn that
 * writes ten thousand nodes pays for one fsync (or none, see
 * docs/durability.md).  Every operation completes synchronously.
 */
#include "store/store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>

#define MAX_DATA 1048576
#define WATCH_BUCKETS 256

/* ===================================================================
 * Names
 * =================================================================== */

const char *zkf_store_errname(int rc)
{
    switch (rc) {
    case ZKF_ZOK: return "ZOK";
    case ZKF_ZSYSTEMERROR: return "ZSYSTEMERROR";
    case ZKF_ZRUNTIMEINCONSISTENCY: return "ZRUNTIMEINCONSISTENCY";
    case ZKF_ZCONNECTIONLOSS: return "ZCONNECTIONLOSS";
    case ZKF_ZMARSHALLINGERROR: return "ZMARSHALLINGERROR";
    case ZKF_ZOPERATIONTIMEOUT: return "ZOPERATIONTIMEOUT";
    case ZKF_ZBADARGUMENTS: return "ZBADARGUMENTS";
    case ZKF_ZINVALIDSTATE: return "ZINVALIDSTATE";
    case ZKF_ZAPIERROR: return "ZAPIERROR";
    case ZKF_ZNONODE: return "ZNONODE";
    case ZKF_ZNOAUTH: return "ZNOAUTH";
    case ZKF_ZBADVERSION: return "ZBADVERSION";
    case ZKF_ZNOCHILDRENFOREPHEMERALS: return "ZNOCHILDRENFOREPHEMERALS";
    case ZKF_ZNODEEXISTS: return "ZNODEEXISTS";
    case ZKF_ZNOTEMPTY: return "ZNOTEMPTY";
    case ZKF_ZSESSIONEXPIRED: return "ZSESSIONEXPIRED";
    case ZKF_ZINVALIDACL: return "ZINVALIDACL";
    case ZKF_ZCLOSING: return "ZCLOSING";
    case ZKF_ZNOTHING: return "ZNOTHING";
    default: return "ZUNKNOWN";
    }
}

const char *zkf_store_watchname(int type)
{
    switch (type) {
    case ZKF_WATCH_CREATED: return "created";
    case ZKF_WATCH_DELETED: return "deleted";
    case ZKF_WATCH_CHANGED: return "changed";
    case ZKF_WATCH_CHILD: return "child";
    default: return "closed";
    }
}

/* ===================================================================
 * Dispatch: the public functions go through the backend's vtable
 * =================================================================== */

int zkf_store_create(zkf_store *s, const char *path, const char *data,
                     size_t len, int flags, zkf_store_cb cb, void *arg)
{
    if (!s || !path)
        return ZKF_ZBADARGUMENTS;
    return s->vt->create(s, path, data, len, flags, cb, arg);
}

int zkf_store_get(zkf_store *s, const char *path, zkf_store_watch_cb watch,
                  void *warg, zkf_store_cb cb, void *arg)
{
    if (!s || !path)
        return ZKF_ZBADARGUMENTS;
    return s->vt->get(s, path, watch, warg, cb, arg);
}

int zkf_store_set(zkf_store *s, const char *path, const char *data,
                  size_t len, int version, zkf_store_cb cb, void *arg)
{
    if (!s || !path)
        return ZKF_ZBADARGUMENTS;
    return s->vt->set(s, path, data, len, version, cb, arg);
}

int zkf_store_delete(zkf_store *s, const char *path, int version, int flags,
                     zkf_store_cb cb, void *arg)
{
    if (!s || !path)
        return ZKF_ZBADARGUMENTS;
    return s->vt->del(s, path, version, flags, cb, arg);
}

int zkf_store_exists(zkf_store *s, const char *path,
                     zkf_store_watch_cb watch, void *warg,
                     zkf_store_cb cb, void *arg)
{
    if (!s || !path)
        return ZKF_ZBADARGUMENTS;
    return s->vt->exists(s, path, watch, warg, cb, arg);
}

int zkf_store_children(zkf_store *s, const char *path,
                       zkf_store_watch_cb watch, void *warg,
                       zkf_store_cb cb, void *arg)
{
    if (!s || !path)
        return ZKF_ZBADARGUMENTS;
    return s->vt->children(s, path, watch, warg, cb, arg);
}

int zkf_store_multi(zkf_store *s, const zkf_store_op *ops, size_t n,
                    zkf_store_cb cb, void *arg)
{
    if (!s || (!ops && n))
        return ZKF_ZBADARGUMENTS;
    return s->vt->multi(s, ops, n, cb, arg);
}

int zkf_store_flush(zkf_store *s)
{
    if (!s)
        return ZKF_ZBADARGUMENTS;
    return s->vt->flush(s);
}

const char *zkf_store_errmsg(zkf_store *s)
{
    if (!s)
        return "";
    return s->vt->errmsg(s);
}

void zkf_store_free(zkf_store *s)
{
    if (s)
        s->vt->free(s);
}

/* ===================================================================
 * The SQLite handle
 * =================================================================== */

enum {
    ST_BEGIN, ST_COMMIT, ST_ROLLBACK, ST_SAVEPOINT, ST_RELEASE,
    ST_ROLLBACK_TO, ST_GET, ST_STAT, ST_INSERT, ST_PARENT, ST_SET,
    ST_DELETE, ST_CHILDREN, ST_DESC, ST_DELRANGE, ST_EPHEMERALS,
    ST_ZXID_GET, ST_ZXID_PUT, ST_DATA_VERSION, ST_SESSION_NEW,
    ST_SESSION_DEL, ST_PARENT_N, ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT zkf_multi",
    [ST_RELEASE] = "RELEASE zkf_multi",
    [ST_ROLLBACK_TO] = "ROLLBACK TO zkf_multi",
    [ST_GET] = "SELECT czxid, mzxid, pzxid, ctime, mtime, version, cversion,"
               " aversion, owner, length(data), nchildren, data"
               " FROM znodes WHERE path = ?1",
    [ST_STAT] = "SELECT czxid, mzxid, pzxid, ctime, mtime, version, cversion,"
                " aversion, owner, length(data), nchildren"
                " FROM znodes WHERE path = ?1",
    [ST_INSERT] = "INSERT INTO znodes (path, parent, data, czxid, mzxid,"
                  " pzxid, ctime, mtime, version, cversion, aversion, owner,"
                  " nchildren) VALUES (?1, ?2, ?3, ?4, ?4, ?4, ?5, ?5, 0, 0,"
                  " 0, ?6, 0)",
    [ST_PARENT] = "UPDATE znodes SET cversion = cversion + 1, pzxid = ?2,"
                  " nchildren = nchildren + ?3 WHERE path = ?1",
    [ST_SET] = "UPDATE znodes SET data = ?2, version = version + 1,"
               " mzxid = ?3, mtime = ?4 WHERE path = ?1",
    [ST_DELETE] = "DELETE FROM znodes WHERE path = ?1",
    [ST_CHILDREN] = "SELECT path FROM znodes WHERE parent = ?1 ORDER BY path",
    [ST_DESC] = "SELECT path FROM znodes WHERE path > ?1 AND path < ?2",
    [ST_DELRANGE] = "DELETE FROM znodes WHERE path > ?1 AND path < ?2",
    [ST_EPHEMERALS] = "SELECT path FROM znodes WHERE owner = ?1"
                      " AND owner <> 0",
    [ST_ZXID_GET] = "SELECT value FROM meta WHERE key = 'zxid'",
    [ST_ZXID_PUT] = "UPDATE meta SET value = ?1 WHERE key = 'zxid'",
    [ST_DATA_VERSION] = "PRAGMA data_version",
    [ST_SESSION_NEW] = "INSERT INTO sessions (pid, started) VALUES (?1, ?2)",
    [ST_SESSION_DEL] = "DELETE FROM sessions WHERE id = ?1",
    [ST_PARENT_N] = "UPDATE znodes SET cversion = cversion + ?3, pzxid = ?2,"
                    " nchildren = nchildren + ?3 WHERE path = ?1",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS meta ("
    " key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('zxid', 0);"
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1);"
    "CREATE TABLE IF NOT EXISTS znodes ("
    " path TEXT PRIMARY KEY,"
    " parent TEXT NOT NULL,"
    " data BLOB NOT NULL,"
    " czxid INTEGER NOT NULL, mzxid INTEGER NOT NULL, pzxid INTEGER NOT NULL,"
    " ctime INTEGER NOT NULL, mtime INTEGER NOT NULL,"
    " version INTEGER NOT NULL, cversion INTEGER NOT NULL,"
    " aversion INTEGER NOT NULL,"
    " owner INTEGER NOT NULL,"      /* ephemeral owner: a sessions.id or 0 */
    " nchildren INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS znodes_parent ON znodes (parent, path);"
    "CREATE INDEX IF NOT EXISTS znodes_owner ON znodes (owner)"
    " WHERE owner <> 0;"
    "CREATE TABLE IF NOT EXISTS sessions ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " pid INTEGER NOT NULL, started INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO znodes VALUES ('/', '', x'', 0, 0, 0, 0, 0, 0, 0,"
    " 0, 0, 0);";

/* Watch kinds: which call set it decides which events fire it. */
enum { W_DATA, W_EXISTS, W_CHILD };

typedef struct watch {
    struct watch *next;       /* bucket chain, then fire queue */
    char *path;
    int kind;
    int fire_type;            /* set when queued */
    /* the node as the watch saw it, to judge other processes' changes */
    int existed;
    int64_t czxid, mzxid;
    int32_t cversion;
    zkf_store_watch_cb cb;
    void *arg;
} watch;

/* What a write did, matched against the watches once the write stands. */
enum { EV_CREATED, EV_DELETED, EV_CHANGED, EV_CHILD };

typedef struct event {
    int type;
    char *path;
} event;

typedef struct sq {
    zkf_store base;
    zkf_loop *loop;
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    int64_t session;
    int in_txn;
    int64_t zxid;             /* last zxid handed out; valid while in_txn */
    int zxid_dirty;
    int turn_hooked;

    /* result buffers, reused so a callback that longjmps leaks nothing */
    char *buf;
    size_t bufcap;
    char *pbuf;               /* created path */
    size_t pbufcap;
    const char **names;
    size_t namescap;
    zkf_store_op_result *mres;
    size_t mrescap;
    size_t *moff;
    size_t moffcap;

    event *ev;
    size_t nev, evcap;

    watch *buckets[WATCH_BUCKETS];
    size_t nwatches;
    watch *fire_head, **fire_tail;
    watch **firing;           /* the batch being fired, for free() to drain */
    zkf_timer *fire_timer;
    zkf_timer *poll_timer;
    int64_t data_version;
    int poll_ms;
    int *dead;                /* set to 1 when freed inside a watch */

    /* The parent of the last create, while a transaction is open: a run
     * of creates under one node (every task instance of a run) reads the
     * parent once and writes its cversion/pzxid/nchildren once, not once
     * per child.  pc_st is the parent as it will be once pc_pending is
     * written back (pc_flush), which happens before any other statement
     * reads or writes nodes.  The write lock is ours for the whole
     * transaction, so no other process can change the parent meanwhile. */
    char *pc_path;            /* owned */
    size_t pc_n, pc_cap;
    int pc_valid;
    zkf_stat pc_st;
    int pc_pending;           /* children created, not yet written back */
    int in_multi;

    zkf_store_commit_cb commit_cb;
    void *commit_arg;

    char err[256];
} sq;

static const zkf_store_vtable sq_vtable;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int sqlerr(sq *s, const char *what)
{
    snprintf(s->err, sizeof s->err, "%s: %s", what, sqlite3_errmsg(s->db));
    return ZKF_ZSYSTEMERROR;
}

/* Steps a statement that returns no rows and resets it. */
static int run(sq *s, int id)
{
    sqlite3_stmt *st = s->st[id];
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        return ZKF_ZOK;
    if (rc == SQLITE_BUSY)
        return ZKF_ZOPERATIONTIMEOUT;
    return sqlerr(s, sql_text[id]);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t n;
    void *np;

    if (need <= *cap)
        return 0;
    n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    np = realloc(*p, n * elem);
    if (!np)
        return -1;
    *p = np;
    *cap = n;
    return 0;
}

/* ===================================================================
 * Paths
 * =================================================================== */

#define valid_path zkf_store_valid_path

/* Length of the parent's path ("/" for a top-level node). */
static size_t parent_len(const char *p, size_t n)
{
    while (n > 0 && p[n - 1] != '/')
        n--;
    return n > 1 ? n - 1 : 1;
}

/* ===================================================================
 * Rows
 * =================================================================== */

static void stat_from(sqlite3_stmt *st, zkf_stat *out)
{
    out->czxid = sqlite3_column_int64(st, 0);
    out->mzxid = sqlite3_column_int64(st, 1);
    out->pzxid = sqlite3_column_int64(st, 2);
    out->ctime = sqlite3_column_int64(st, 3);
    out->mtime = sqlite3_column_int64(st, 4);
    out->version = sqlite3_column_int(st, 5);
    out->cversion = sqlite3_column_int(st, 6);
    out->aversion = sqlite3_column_int(st, 7);
    out->ephemeral_owner = sqlite3_column_int64(st, 8);
    out->data_length = sqlite3_column_int(st, 9);
    out->num_children = sqlite3_column_int(st, 10);
}

/* Reads the stat of `path` (length `n`), and its data into s->buf when
 * `data` is set.  ZOK, ZNONODE or ZSYSTEMERROR. */
static int pc_flush(sq *s);
static void pc_discard(sq *s);

static int read_node(sq *s, const char *path, size_t n, zkf_stat *out,
                     int data)
{
    sqlite3_stmt *st = s->st[data ? ST_GET : ST_STAT];
    int rc;

    if (s->pc_pending) {
        rc = pc_flush(s);
        if (rc != ZKF_ZOK)
            return rc;
    }

    sqlite3_bind_text(st, 1, path, (int)n, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        stat_from(st, out);
        if (data) {
            const void *b = sqlite3_column_blob(st, 11);
            size_t len = (size_t)sqlite3_column_bytes(st, 11);
            if (grow((void **)&s->buf, &s->bufcap, len + 1, 1) < 0) {
                sqlite3_reset(st);
                snprintf(s->err, sizeof s->err, "out of memory");
                return ZKF_ZSYSTEMERROR;
            }
            if (len)
                memcpy(s->buf, b, len);
            s->buf[len] = '\0';
        }
        sqlite3_reset(st);
        return ZKF_ZOK;
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return ZKF_ZNONODE;
    return sqlerr(s, "read");
}

static int insert_session(sq *s)
{
    sqlite3_stmt *st = s->st[ST_SESSION_NEW];
    int rc;

    sqlite3_bind_int64(st, 1, (int64_t)getpid());
    sqlite3_bind_int64(st, 2, now_ms());
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sqlerr(s, "sessions");
    s->session = sqlite3_last_insert_rowid(s->db);
    return ZKF_ZOK;
}

static int begin_write(sq *s)
{
    sqlite3_stmt *st;
    int rc;

    if (s->in_txn)
        return ZKF_ZOK;
    rc = run(s, ST_BEGIN);
    if (rc == ZKF_ZOPERATIONTIMEOUT) {
        snprintf(s->err, sizeof s->err,
                 "database is locked by another writer");
        return rc;
    }
    if (rc != ZKF_ZOK)
        return rc;
    st = s->st[ST_ZXID_GET];
    if (sqlite3_step(st) != SQLITE_ROW) {
        rc = sqlerr(s, "read zxid");
        sqlite3_reset(st);
        run(s, ST_ROLLBACK);
        return rc;
    }
    s->zxid = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    /* The session row is written with the first write, not at open, so
     * that opening a handle (or one that only reads) never waits for the
     * write lock another handle holds for its turn. */
    if (s->session == 0) {
        rc = insert_session(s);
        if (rc != ZKF_ZOK) {
            run(s, ST_ROLLBACK);
            return rc;
        }
    }
    s->in_txn = 1;
    s->zxid_dirty = 0;
    return ZKF_ZOK;
}

static int commit(sq *s)
{
    int rc = ZKF_ZOK;

    if (!s->in_txn)
        return ZKF_ZOK;
    rc = pc_flush(s);
    s->pc_valid = 0;
    if (rc == ZKF_ZOK && s->zxid_dirty) {
        sqlite3_bind_int64(s->st[ST_ZXID_PUT], 1, s->zxid);
        rc = run(s, ST_ZXID_PUT);
    }
    if (rc == ZKF_ZOK)
        rc = run(s, ST_COMMIT);
    if (rc != ZKF_ZOK) {
        /* The turn's writes are lost; say so rather than leave the write
         * lock held for ever. */
        char keep[sizeof s->err];
        memcpy(keep, s->err, sizeof keep);
        run(s, ST_ROLLBACK);
        memcpy(s->err, keep, sizeof keep);
    }
    pc_discard(s);
    s->in_txn = 0;
    s->zxid_dirty = 0;
    /* Last: the callback may write again (a new transaction). */
    if (s->commit_cb) {
        char msg[sizeof s->err];
        memcpy(msg, s->err, sizeof msg);
        s->commit_cb(rc, rc == ZKF_ZOK ? NULL : msg, s->commit_arg);
        if (rc != ZKF_ZOK)
            memcpy(s->err, msg, sizeof msg);
    }
    return rc;
}

static void on_turn_end(void *arg)
{
    commit(arg);
}

/* ===================================================================
 * Watches
 * =================================================================== */

static unsigned hash_path(const char *p)
{
    unsigned h = 2166136261u;
    while (*p)
        h = (h ^ (unsigned char)*p++) * 16777619u;
    return h % WATCH_BUCKETS;
}

static void add_event(sq *s, int type, const char *path, size_t n)
{
    char *p;

    /* Nobody is listening in this process: skip the copies. */
    if (s->nwatches == 0)
        return;
    if (grow((void **)&s->ev, &s->evcap, s->nev + 1, sizeof *s->ev) < 0)
        return;
    p = malloc(n + 1);
    if (!p)
        return;
    memcpy(p, path, n);
    p[n] = '\0';
    s->ev[s->nev].type = type;
    s->ev[s->nev].path = p;
    s->nev++;
}

static void drop_events(sq *s, size_t from)
{
    while (s->nev > from)
        free(s->ev[--s->nev].path);
}

static void on_fire(zkf_timer *t, void *arg);

static void queue_fire(sq *s, watch *w, int type)
{
    w->fire_type = type;
    w->next = NULL;
    *s->fire_tail = w;
    s->fire_tail = &w->next;
    if (!s->fire_timer)
        s->fire_timer = zkf_timer_start(s->loop, 0, on_fire, s);
}

/* Moves the watches on `path` that `match(kind)` says an event fires into
 * the fire queue. */
static void trigger(sq *s, const char *path, int type_for_kind[3])
{
    watch **pp = &s->buckets[hash_path(path)];

    while (*pp) {
        watch *w = *pp;
        if (type_for_kind[w->kind] && strcmp(w->path, path) == 0) {
            *pp = w->next;
            s->nwatches--;
            queue_fire(s, w, type_for_kind[w->kind]);
        } else {
            pp = &w->next;
        }
    }
}

/* The write stands: match its events against the watches. */
static void dispatch_events(sq *s)
{
    size_t i;

    for (i = 0; i < s->nev; i++) {
        event *e = &s->ev[i];
        int map[3] = {0, 0, 0};
        switch (e->type) {
        case EV_CREATED:
            map[W_EXISTS] = ZKF_WATCH_CREATED;
            break;
        case EV_DELETED:
            map[W_DATA] = map[W_EXISTS] = map[W_CHILD] = ZKF_WATCH_DELETED;
            break;
        case EV_CHANGED:
            map[W_DATA] = map[W_EXISTS] = ZKF_WATCH_CHANGED;
            break;
        case EV_CHILD:
            map[W_CHILD] = ZKF_WATCH_CHILD;
            break;
        }
        if (s->nwatches)
            trigger(s, e->path, map);
    }
    drop_events(s, 0);
}

static void on_fire(zkf_timer *t, void *arg)
{
    sq *s = arg;
    watch *batch, *w;
    int dead = 0;

    (void)t;
    s->fire_timer = NULL;
    /* Fire only this batch: watches that the callbacks trigger go to a new
     * batch on a new timer, so a watch that re-arms itself cannot starve
     * the loop. */
    batch = s->fire_head;
    s->fire_head = NULL;
    s->fire_tail = &s->fire_head;
    s->firing = &batch;
    s->dead = &dead;
    while (batch) {
        w = batch;
        batch = w->next;
        w->cb(w->fire_type, w->path, w->arg);
        free(w->path);
        free(w);
        if (dead)
            return;
    }
    s->firing = NULL;
    s->dead = NULL;
}

static void on_poll(zkf_timer *t, void *arg);

static int add_watch(sq *s, const char *path, int kind, const zkf_stat *st,
                     zkf_store_watch_cb cb, void *arg)
{
    watch *w = calloc(1, sizeof *w);
    unsigned h;

    if (!w)
        return -1;
    w->path = strdup(path);
    if (!w->path) {
        free(w);
        return -1;
    }
    w->kind = kind;
    w->existed = st != NULL;
    if (st) {
        w->czxid = st->czxid;
        w->mzxid = st->mzxid;
        w->cversion = st->cversion;
    }
    w->cb = cb;
    w->arg = arg;
    h = hash_path(path);
    w->next = s->buckets[h];
    s->buckets[h] = w;
    s->nwatches++;
    if (!s->poll_timer && s->poll_ms > 0)
        s->poll_timer = zkf_timer_start(s->loop, s->poll_ms, on_poll, s);
    return 0;
}

/* Another process committed: compare every watched node with what its
 * watch saw. */
static void check_watches(sq *s)
{
    unsigned b;

    for (b = 0; b < WATCH_BUCKETS; b++) {
        watch **pp = &s->buckets[b];
        while (*pp) {
            watch *w = *pp;
            zkf_stat st;
            int type = 0;
            int rc = read_node(s, w->path, strlen(w->path), &st, 0);
            int exists = rc == ZKF_ZOK;

            if (rc != ZKF_ZOK && rc != ZKF_ZNONODE) {
                pp = &w->next;
                continue;
            }
            if (!w->existed) {
                if (exists)
                    type = ZKF_WATCH_CREATED;
            } else if (!exists || st.czxid != w->czxid) {
                type = ZKF_WATCH_DELETED;
            } else if (w->kind == W_CHILD) {
                if (st.cversion != w->cversion)
                    type = ZKF_WATCH_CHILD;
            } else if (st.mzxid != w->mzxid) {
                type = ZKF_WATCH_CHANGED;
            }
            if (type) {
                *pp = w->next;
                s->nwatches--;
                queue_fire(s, w, type);
            } else {
                pp = &w->next;
            }
        }
    }
}

static int read_data_version(sq *s, int64_t *out)
{
    sqlite3_stmt *st = s->st[ST_DATA_VERSION];
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

static void on_poll(zkf_timer *t, void *arg)
{
    sq *s = arg;
    int64_t v;

    (void)t;
    s->poll_timer = NULL;
    if (read_data_version(s, &v) == 0 && v != s->data_version) {
        s->data_version = v;
        check_watches(s);
    }
    if (s->nwatches > 0)
        s->poll_timer = zkf_timer_start(s->loop, s->poll_ms, on_poll, s);
}

/* ===================================================================
 * Writes (inside the turn's transaction)
 * =================================================================== */

static int64_t next_zxid(sq *s)
{
    s->zxid_dirty = 1;
    return ++s->zxid;
}

/* Writes the summed parent update of the cached creates back. */
static int pc_flush(sq *s)
{
    sqlite3_stmt *st = s->st[ST_PARENT_N];
    int pending = s->pc_pending;

    if (pending == 0)
        return ZKF_ZOK;
    s->pc_pending = 0;
    sqlite3_bind_text(st, 1, s->pc_path, (int)s->pc_n, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, s->pc_st.pzxid);
    sqlite3_bind_int(st, 3, pending);
    return run(s, ST_PARENT_N);
}

/* Writes back and forgets the cached parent. */
static int pc_drop(sq *s)
{
    int rc = pc_flush(s);

    s->pc_valid = 0;
    return rc;
}

/* Forgets the cached parent and what it had not written (a rollback). */
static void pc_discard(sq *s)
{
    s->pc_pending = 0;
    s->pc_valid = 0;
}

static void pc_set(sq *s, const char *path, size_t pn, const zkf_stat *st)
{
    if (grow((void **)&s->pc_path, &s->pc_cap, pn + 1, 1) < 0) {
        s->pc_valid = 0;
        return;
    }
    memcpy(s->pc_path, path, pn);
    s->pc_path[pn] = '\0';
    s->pc_n = pn;
    s->pc_st = *st;
    s->pc_valid = 1;
}

static int bump_parent(sq *s, const char *path, size_t n, int64_t zxid,
                       int delta)
{
    size_t pn = parent_len(path, n);
    sqlite3_stmt *st = s->st[ST_PARENT];
    int rc = pc_drop(s);

    if (rc != ZKF_ZOK)
        return rc;

    sqlite3_bind_text(st, 1, path, (int)pn, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, zxid);
    sqlite3_bind_int(st, 3, delta);
    add_event(s, EV_CHILD, path, pn);
    return run(s, ST_PARENT);
}

/* Inserts one node under an existing, non-ephemeral parent. */
static int insert_row(sq *s, const char *path, size_t n, const char *data,
                      size_t len, int64_t owner, int64_t zxid)
{
    sqlite3_stmt *st = s->st[ST_INSERT];
    int rc;

    sqlite3_bind_text(st, 1, path, (int)n, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, path, (int)parent_len(path, n), SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, len ? data : "", (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, zxid);
    sqlite3_bind_int64(st, 5, now_ms());
    sqlite3_bind_int64(st, 6, owner);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc == SQLITE_CONSTRAINT)
        return ZKF_ZNODEEXISTS;
    if (rc != SQLITE_DONE)
        return sqlerr(s, "create");
    add_event(s, EV_CREATED, path, n);
    return ZKF_ZOK;
}

static int insert_node(sq *s, const char *path, size_t n, const char *data,
                       size_t len, int64_t owner)
{
    int64_t zxid = next_zxid(s);
    int rc = insert_row(s, path, n, data, len, owner, zxid);

    if (rc != ZKF_ZOK)
        return rc;
    return bump_parent(s, path, n, zxid, 1);
}

/* Creates the missing ancestors of `path`.  Every check happens before the
 * first insert, so a refusal leaves nothing behind. */
static int create_parents(sq *s, const char *path, size_t n)
{
    size_t i;
    int parent_ephemeral = 0, creating = 0;

    for (i = 1; i < n; i++) {
        zkf_stat st;
        int rc;

        if (path[i] != '/')
            continue;
        if (!creating) {
            rc = read_node(s, path, i, &st, 0);
            if (rc == ZKF_ZOK) {
                parent_ephemeral = st.ephemeral_owner != 0;
                continue;
            }
            if (rc != ZKF_ZNONODE)
                return rc;
            if (parent_ephemeral)
                return ZKF_ZNOCHILDRENFOREPHEMERALS;
            creating = 1;
        }
        rc = insert_node(s, path, i, NULL, 0, 0);
        if (rc != ZKF_ZOK)
            return rc;
    }
    return ZKF_ZOK;
}

/* Ensures s->pbuf holds `n` + 1 bytes. */
static int pbuf_need(sq *s, size_t n)
{
    if (grow((void **)&s->pbuf, &s->pbufcap, n + 1, 1) < 0) {
        snprintf(s->err, sizeof s->err, "out of memory");
        return ZKF_ZSYSTEMERROR;
    }
    return ZKF_ZOK;
}

/* Create; the created path is left in s->pbuf. */
static int do_create(sq *s, const char *path, const char *data, size_t len,
                     int flags)
{
    size_t n = strlen(path), pn;
    zkf_stat pst;
    int rc;

    if (!valid_path(path, flags & ZKF_STORE_SEQUENTIAL) || len > MAX_DATA ||
        (len && !data))
        return ZKF_ZBADARGUMENTS;
    if (n == 1)
        return ZKF_ZNODEEXISTS;
    rc = begin_write(s);
    if (rc != ZKF_ZOK)
        return rc;
    pn = parent_len(path, n);
    if (s->pc_valid && !s->in_multi && pn == s->pc_n &&
        memcmp(path, s->pc_path, pn) == 0) {
        int64_t zxid;

        pst = s->pc_st;
        if (pst.ephemeral_owner != 0)
            return ZKF_ZNOCHILDRENFOREPHEMERALS;
        rc = pbuf_need(s, n + 16);
        if (rc != ZKF_ZOK)
            return rc;
        memcpy(s->pbuf, path, n + 1);
        if (flags & ZKF_STORE_SEQUENTIAL)
            n += (size_t)sprintf(s->pbuf + n, "%010d", pst.cversion);
        zxid = next_zxid(s);
        rc = insert_row(s, s->pbuf, n, data, len,
                        (flags & ZKF_STORE_EPHEMERAL) ? s->session : 0, zxid);
        if (rc != ZKF_ZOK)
            return rc;
        add_event(s, EV_CHILD, s->pbuf, pn);
        s->pc_pending++;
        s->pc_st.cversion++;
        s->pc_st.num_children++;
        s->pc_st.pzxid = zxid;
        return ZKF_ZOK;
    }
    rc = read_node(s, path, pn, &pst, 0);
    if (rc == ZKF_ZNONODE && (flags & ZKF_STORE_PARENTS)) {
        rc = create_parents(s, path, n);
        if (rc == ZKF_ZOK)
            rc = read_node(s, path, pn, &pst, 0);
    }
    if (rc != ZKF_ZOK)
        return rc;
    if (pst.ephemeral_owner != 0)
        return ZKF_ZNOCHILDRENFOREPHEMERALS;
    rc = pbuf_need(s, n + 16);
    if (rc != ZKF_ZOK)
        return rc;
    memcpy(s->pbuf, path, n + 1);
    if (flags & ZKF_STORE_SEQUENTIAL)
        n += (size_t)sprintf(s->pbuf + n, "%010d", pst.cversion);
    rc = insert_node(s, s->pbuf, n, data, len,
                     (flags & ZKF_STORE_EPHEMERAL) ? s->session : 0);
    if (rc == ZKF_ZOK && !s->in_multi) {
        /* The parent as insert_node left it: the next create under it
         * needs no read. */
        pst.cversion++;
        pst.num_children++;
        pst.pzxid = s->zxid;
        pc_set(s, s->pbuf, pn, &pst);
    }
    return rc;
}

static int do_set(sq *s, const char *path, const char *data, size_t len,
                  int version, zkf_stat *out)
{
    size_t n = strlen(path);
    sqlite3_stmt *st = s->st[ST_SET];
    int64_t zxid, t;
    int rc;

    if (!valid_path(path, 0) || len > MAX_DATA || (len && !data))
        return ZKF_ZBADARGUMENTS;
    rc = begin_write(s);
    if (rc != ZKF_ZOK)
        return rc;
    rc = read_node(s, path, n, out, 0);
    if (rc != ZKF_ZOK)
        return rc;
    if (version != -1 && version != out->version)
        return ZKF_ZBADVERSION;
    zxid = next_zxid(s);
    t = now_ms();
    sqlite3_bind_text(st, 1, path, (int)n, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, len ? data : "", (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, zxid);
    sqlite3_bind_int64(st, 4, t);
    rc = run(s, ST_SET);
    if (rc != ZKF_ZOK)
        return rc;
    out->version++;
    out->mzxid = zxid;
    out->mtime = t;
    out->data_length = (int32_t)len;
    add_event(s, EV_CHANGED, path, n);
    return ZKF_ZOK;
}

/* The descendants of `path` are the keys strictly between "path/" and
 * "path0" ('0' follows '/'); the root's are between "/" and "0". */
static int bind_range(sq *s, sqlite3_stmt *st, const char *path, size_t n)
{
    int rc = pbuf_need(s, 2 * n + 4);
    char *lo, *hi;

    if (rc != ZKF_ZOK)
        return rc;
    lo = s->pbuf;
    hi = s->pbuf + n + 2;
    memcpy(lo, path, n);
    if (n > 1)
        lo[n++] = '/';
    lo[n] = '\0';
    memcpy(hi, lo, n + 1);
    hi[n - 1] = '0';
    sqlite3_bind_text(st, 1, lo, (int)n, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, hi, (int)n, SQLITE_STATIC);
    return ZKF_ZOK;
}

static int delete_subtree(sq *s, const char *path, size_t n)
{
    sqlite3_stmt *st;
    int rc;

    if (s->nwatches) {
        st = s->st[ST_DESC];
        rc = bind_range(s, st, path, n);
        if (rc != ZKF_ZOK)
            return rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *p = (const char *)sqlite3_column_text(st, 0);
            size_t pl = (size_t)sqlite3_column_bytes(st, 0);
            add_event(s, EV_DELETED, p, pl);
            add_event(s, EV_CHILD, p, parent_len(p, pl));
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return sqlerr(s, "delete");
    }
    st = s->st[ST_DELRANGE];
    rc = bind_range(s, st, path, n);
    if (rc != ZKF_ZOK)
        return rc;
    return run(s, ST_DELRANGE);
}

static int do_delete(sq *s, const char *path, int version, int flags)
{
    size_t n = strlen(path);
    zkf_stat st;
    int rc;

    if (!valid_path(path, 0) || n == 1)
        return ZKF_ZBADARGUMENTS;
    /* A delete may take the cached parent (or its ancestors) away. */
    rc = pc_drop(s);
    if (rc != ZKF_ZOK)
        return rc;
    rc = begin_write(s);
    if (rc != ZKF_ZOK)
        return rc;
    rc = read_node(s, path, n, &st, 0);
    if (rc != ZKF_ZOK)
        return rc;
    if (version != -1 && version != st.version)
        return ZKF_ZBADVERSION;
    if (st.num_children > 0) {
        if (!(flags & ZKF_STORE_RECURSIVE))
            return ZKF_ZNOTEMPTY;
        rc = delete_subtree(s, path, n);
        if (rc != ZKF_ZOK)
            return rc;
    }
    sqlite3_bind_text(s->st[ST_DELETE], 1, path, (int)n, SQLITE_STATIC);
    rc = run(s, ST_DELETE);
    if (rc != ZKF_ZOK)
        return rc;
    add_event(s, EV_DELETED, path, n);
    return bump_parent(s, path, n, next_zxid(s), -1);
}

static int do_check(sq *s, const char *path, int version)
{
    zkf_stat st;
    int rc;

    if (!valid_path(path, 0))
        return ZKF_ZBADARGUMENTS;
    rc = read_node(s, path, strlen(path), &st, 0);
    if (rc != ZKF_ZOK)
        return rc;
    if (version != -1 && version != st.version)
        return ZKF_ZBADVERSION;
    return ZKF_ZOK;
}

/* Deletes the ephemeral nodes of `session`, inside the open transaction. */
static int delete_ephemerals(sq *s, int64_t session)
{
    sqlite3_stmt *st = s->st[ST_EPHEMERALS];
    char **paths = NULL;
    size_t np = 0, cap = 0, i;
    int rc = ZKF_ZOK, src;

    /* Collect first: deleting while the select steps would disturb it. */
    sqlite3_bind_int64(st, 1, session);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        char *p = strdup((const char *)sqlite3_column_text(st, 0));
        if (!p || grow((void **)&paths, &cap, np + 1, sizeof *paths) < 0) {
            free(p);
            rc = ZKF_ZSYSTEMERROR;
            break;
        }
        paths[np++] = p;
    }
    if (src != SQLITE_DONE && rc == ZKF_ZOK)
        rc = sqlerr(s, "ephemerals");
    sqlite3_reset(st);
    for (i = 0; i < np; i++) {
        if (rc == ZKF_ZOK) {
            int r = do_delete(s, paths[i], -1, ZKF_STORE_RECURSIVE);
            if (r != ZKF_ZOK && r != ZKF_ZNONODE)
                rc = r;
        }
        free(paths[i]);
    }
    free(paths);
    return rc;
}

/* ===================================================================
 * Operations
 * =================================================================== */

/* The one exit of every operation: make the write's events stand or fall,
 * then complete, last, so the callback may longjmp. */
static int finish(sq *s, zkf_store_result *r, zkf_store_cb cb, void *arg)
{
    if (r->rc == ZKF_ZOK)
        dispatch_events(s);
    else
        drop_events(s, 0);
    if (cb)
        cb(r, arg);
    return ZKF_ZOK;
}

static int sq_create(zkf_store *base, const char *path, const char *data,
                     size_t len, int flags, zkf_store_cb cb, void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };

    s->err[0] = '\0';
    r.rc = do_create(s, path, data, len, flags);
    if (r.rc == ZKF_ZOK)
        r.path = s->pbuf;
    return finish(s, &r, cb, arg);
}

static int sq_get(zkf_store *base, const char *path, zkf_store_watch_cb w,
                  void *warg, zkf_store_cb cb, void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };
    zkf_stat st;

    s->err[0] = '\0';
    if (!valid_path(path, 0)) {
        r.rc = ZKF_ZBADARGUMENTS;
    } else {
        r.rc = read_node(s, path, strlen(path), &st, 1);
        if (r.rc == ZKF_ZOK) {
            r.data = s->buf;
            r.data_len = (size_t)st.data_length;
            r.stat = &st;
            if (w && add_watch(s, path, W_DATA, &st, w, warg) < 0)
                r.rc = ZKF_ZSYSTEMERROR;
        }
    }
    return finish(s, &r, cb, arg);
}

static int sq_set(zkf_store *base, const char *path, const char *data,
                  size_t len, int version, zkf_store_cb cb, void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };
    zkf_stat st;

    s->err[0] = '\0';
    r.rc = do_set(s, path, data, len, version, &st);
    if (r.rc == ZKF_ZOK)
        r.stat = &st;
    return finish(s, &r, cb, arg);
}

static int sq_delete(zkf_store *base, const char *path, int version,
                     int flags, zkf_store_cb cb, void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };
    int rc;

    s->err[0] = '\0';
    if (flags & ZKF_STORE_RECURSIVE) {
        /* The subtree goes in one step or not at all. */
        rc = begin_write(s);
        if (rc == ZKF_ZOK)
            rc = run(s, ST_SAVEPOINT);
        if (rc == ZKF_ZOK) {
            rc = do_delete(s, path, version, flags);
            if (rc != ZKF_ZOK)
                run(s, ST_ROLLBACK_TO);
            run(s, ST_RELEASE);
        }
        r.rc = rc;
    } else {
        r.rc = do_delete(s, path, version, flags);
    }
    return finish(s, &r, cb, arg);
}

static int sq_exists(zkf_store *base, const char *path, zkf_store_watch_cb w,
                     void *warg, zkf_store_cb cb, void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };
    zkf_stat st;

    s->err[0] = '\0';
    if (!valid_path(path, 0)) {
        r.rc = ZKF_ZBADARGUMENTS;
    } else {
        r.rc = read_node(s, path, strlen(path), &st, 0);
        if (r.rc == ZKF_ZOK)
            r.stat = &st;
        if ((r.rc == ZKF_ZOK || r.rc == ZKF_ZNONODE) && w &&
            add_watch(s, path, W_EXISTS, r.stat, w, warg) < 0)
            r.rc = ZKF_ZSYSTEMERROR;
    }
    return finish(s, &r, cb, arg);
}

static int sq_children(zkf_store *base, const char *path,
                       zkf_store_watch_cb w, void *warg, zkf_store_cb cb,
                       void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };
    sqlite3_stmt *st = s->st[ST_CHILDREN];
    zkf_stat pst;
    size_t n = strlen(path), used = 0, count = 0, i;
    size_t skip = n == 1 ? 1 : n + 1;
    int rc;

    s->err[0] = '\0';
    if (!valid_path(path, 0)) {
        r.rc = ZKF_ZBADARGUMENTS;
        return finish(s, &r, cb, arg);
    }
    r.rc = read_node(s, path, n, &pst, 0);
    if (r.rc != ZKF_ZOK)
        return finish(s, &r, cb, arg);
    /* Names are packed into s->buf, pointers set once it stops moving. */
    sqlite3_bind_text(st, 1, path, (int)n, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *p = (const char *)sqlite3_column_text(st, 0);
        size_t pl = (size_t)sqlite3_column_bytes(st, 0);
        size_t nl = pl > skip ? pl - skip : 0;
        if (grow((void **)&s->buf, &s->bufcap, used + nl + 1, 1) < 0)
            break;
        memcpy(s->buf + used, p + skip, nl);
        s->buf[used + nl] = '\0';
        used += nl + 1;
        count++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        r.rc = rc == SQLITE_ROW ? ZKF_ZSYSTEMERROR : sqlerr(s, "children");
        return finish(s, &r, cb, arg);
    }
    if (grow((void **)&s->names, &s->namescap, count + 1,
             sizeof *s->names) < 0) {
        r.rc = ZKF_ZSYSTEMERROR;
        return finish(s, &r, cb, arg);
    }
    used = 0;
    for (i = 0; i < count; i++) {
        s->names[i] = s->buf + used;
        used += strlen(s->buf + used) + 1;
    }
    s->names[count] = NULL;
    r.children = s->names;
    r.n_children = count;
    if (w && add_watch(s, path, W_CHILD, &pst, w, warg) < 0)
        r.rc = ZKF_ZSYSTEMERROR;
    return finish(s, &r, cb, arg);
}

static int sq_multi(zkf_store *base, const zkf_store_op *ops, size_t n,
                    zkf_store_cb cb, void *arg)
{
    sq *s = (sq *)base;
    zkf_store_result r = { .failed_index = -1 };
    size_t i, used = 0;
    int64_t zxid_mark;
    int rc;

    s->err[0] = '\0';
    if (grow((void **)&s->mres, &s->mrescap, n + 1, sizeof *s->mres) < 0 ||
        grow((void **)&s->moff, &s->moffcap, n + 1, sizeof *s->moff) < 0) {
        r.rc = ZKF_ZSYSTEMERROR;
        return finish(s, &r, cb, arg);
    }
    memset(s->mres, 0, (n + 1) * sizeof *s->mres);
    /* A multi may roll back to its savepoint: nothing of it is cached. */
    rc = pc_drop(s);
    if (rc == ZKF_ZOK)
        rc = begin_write(s);
    if (rc == ZKF_ZOK)
        rc = run(s, ST_SAVEPOINT);
    if (rc != ZKF_ZOK) {
        r.rc = rc;
        return finish(s, &r, cb, arg);
    }
    s->in_multi = 1;
    zxid_mark = s->zxid;
    for (i = 0; i < n && rc == ZKF_ZOK; i++) {
        const zkf_store_op *op = &ops[i];
        zkf_store_op_result *res = &s->mres[i];
        s->moff[i] = (size_t)-1;
        if (!op->path) {
            rc = ZKF_ZBADARGUMENTS;
        } else if (op->type == ZKF_STORE_OP_CREATE) {
            rc = do_create(s, op->path, op->data, op->data_len, op->flags);
            if (rc == ZKF_ZOK) {
                /* s->pbuf is reused by the next op: keep a copy in buf */
                size_t pl = strlen(s->pbuf);
                if (grow((void **)&s->buf, &s->bufcap, used + pl + 1, 1) < 0)
                    rc = ZKF_ZSYSTEMERROR;
                else {
                    memcpy(s->buf + used, s->pbuf, pl + 1);
                    s->moff[i] = used;
                    used += pl + 1;
                }
            }
        } else if (op->type == ZKF_STORE_OP_SET) {
            rc = do_set(s, op->path, op->data, op->data_len, op->version,
                        &res->stat);
        } else if (op->type == ZKF_STORE_OP_DELETE) {
            rc = do_delete(s, op->path, op->version, op->flags);
        } else if (op->type == ZKF_STORE_OP_CHECK) {
            rc = do_check(s, op->path, op->version);
        } else {
            rc = ZKF_ZBADARGUMENTS;
        }
        res->rc = rc;
        if (rc != ZKF_ZOK)
            r.failed_index = (int)i;
    }
    s->in_multi = 0;
    if (rc != ZKF_ZOK) {
        run(s, ST_ROLLBACK_TO);
        run(s, ST_RELEASE);
        s->zxid = zxid_mark;
        /* As ZooKeeper reports it: ops before the failure ZOK (rolled
         * back), the failing one its error, those after it
         * ZRUNTIMEINCONSISTENCY. */
        for (i = 0; i < n; i++) {
            if ((int)i < r.failed_index)
                s->mres[i].rc = ZKF_ZOK;
            else if ((int)i > r.failed_index)
                s->mres[i].rc = ZKF_ZRUNTIMEINCONSISTENCY;
            s->mres[i].path = NULL;
            memset(&s->mres[i].stat, 0, sizeof s->mres[i].stat);
        }
    } else {
        rc = run(s, ST_RELEASE);
        for (i = 0; i < n; i++)
            if (s->moff[i] != (size_t)-1)
                s->mres[i].path = s->buf + s->moff[i];
    }
    r.rc = rc;
    r.results = s->mres;
    r.n_results = n;
    return finish(s, &r, cb, arg);
}

static int sq_flush(zkf_store *base)
{
    sq *s = (sq *)base;
    s->err[0] = '\0';
    return commit(s);
}

void zkf_store_sqlite_on_commit(zkf_store *base, zkf_store_commit_cb cb,
                                void *arg)
{
    if (!base || base->vt != &sq_vtable)
        return;
    sq *s = (sq *)base;
    s->commit_cb = cb;
    s->commit_arg = arg;
}

static const char *sq_errmsg(zkf_store *base)
{
    return ((sq *)base)->err;
}

/* ===================================================================
 * Open and close
 * =================================================================== */

static void close_watch(watch *w)
{
    w->cb(ZKF_WATCH_CLOSED, w->path, w->arg);
    free(w->path);
    free(w);
}

static void sq_free(zkf_store *base)
{
    sq *s = (sq *)base;
    unsigned b;
    int i;

    if (s->db && s->st[ST_BEGIN]) {
        commit(s);
        /* The session ends with the handle: its ephemerals go, as when a
         * ZooKeeper session closes. */
        if (s->session != 0 && begin_write(s) == ZKF_ZOK) {
            delete_ephemerals(s, s->session);
            sqlite3_bind_int64(s->st[ST_SESSION_DEL], 1, s->session);
            run(s, ST_SESSION_DEL);
            commit(s);
        }
    }
    drop_events(s, 0);
    if (s->turn_hooked)
        zkf_loop_off_turn_end(s->loop, on_turn_end, s);
    if (s->fire_timer)
        zkf_timer_stop(s->fire_timer);
    if (s->poll_timer)
        zkf_timer_stop(s->poll_timer);
    s->fire_timer = s->poll_timer = NULL;
    if (s->dead)
        *s->dead = 1;
    /* Every watch hears once, even now, so its owner can free its arg. */
    if (s->firing) {
        while (*s->firing) {
            watch *w = *s->firing;
            *s->firing = w->next;
            close_watch(w);
        }
    }
    while (s->fire_head) {
        watch *w = s->fire_head;
        s->fire_head = w->next;
        close_watch(w);
    }
    for (b = 0; b < WATCH_BUCKETS; b++) {
        while (s->buckets[b]) {
            watch *w = s->buckets[b];
            s->buckets[b] = w->next;
            close_watch(w);
        }
    }
    for (i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    free(s->buf);
    free(s->pbuf);
    free(s->pc_path);
    free(s->names);
    free(s->mres);
    free(s->moff);
    free(s->ev);
    free(s);
}

static int exec_sql(sq *s, const char *sql)
{
    char *msg = NULL;

    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(s->err, sizeof s->err, "%s", msg ? msg : "sqlite error");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* exec_sql, again and again while the database is busy, for up to `ms`:
 * two processes opening a new store at once (two nginx workers) race for
 * the switch to WAL, and SQLite answers the loser "database is locked" at
 * once, without its busy handler. */
static int exec_sql_patient(sq *s, const char *sql, int ms)
{
    for (int waited = 0;; waited += 10) {
        int rc;
        if (exec_sql(s, sql) == 0)
            return 0;
        rc = sqlite3_errcode(s->db);
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || waited >= ms)
            return -1;
        usleep(10000);
    }
}

/* Whether the tables exist: then opening needs no write lock. */
static int schema_ready(sq *s)
{
    sqlite3_stmt *st;
    int n = 0;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT count(*) FROM sqlite_master WHERE type ="
                           " 'table' AND name IN ('meta', 'znodes',"
                           " 'sessions')", -1, &st, NULL) != SQLITE_OK)
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n == 3;
}

/* Removes the sessions of processes that no longer exist, and their
 * ephemerals, as ZooKeeper expires a session whose client is gone.  The
 * scan only reads: the write lock is taken when someone did die. */
static int reap_dead_sessions(sq *s)
{
    sqlite3_stmt *st;
    int64_t dead[64];
    size_t nd = 0, i;
    int rc;

    if (sqlite3_prepare_v2(s->db, "SELECT id, pid FROM sessions", -1, &st,
                           NULL) != SQLITE_OK)
        return sqlerr(s, "sessions");
    while (nd < sizeof dead / sizeof dead[0] &&
           sqlite3_step(st) == SQLITE_ROW) {
        pid_t pid = (pid_t)sqlite3_column_int64(st, 1);
        if (pid <= 0 || (kill(pid, 0) < 0 && errno == ESRCH))
            dead[nd++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (nd == 0)
        return ZKF_ZOK;
    rc = begin_write(s);
    for (i = 0; i < nd && rc == ZKF_ZOK; i++) {
        rc = delete_ephemerals(s, dead[i]);
        if (rc != ZKF_ZOK)
            break;
        sqlite3_bind_int64(s->st[ST_SESSION_DEL], 1, dead[i]);
        rc = run(s, ST_SESSION_DEL);
    }
    if (rc != ZKF_ZOK) {
        if (s->in_txn)
            run(s, ST_ROLLBACK);
        s->in_txn = 0;
        return rc;
    }
    return commit(s);
}

zkf_store *zkf_store_sqlite_new(zkf_loop *loop, const char *path,
                                const zkf_sqlite_opts *opts,
                                char *err, size_t errlen)
{
    static const char *const syncs[] = {"off", "normal", "full", "extra"};
    const char *sync = opts && opts->synchronous ? opts->synchronous
                                                 : "normal";
    int busy = opts && opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms
                                                  : 5000;
    char sql[64];
    sq *s;
    size_t i;
    int ok = 0;

    if (!err || errlen == 0) {
        err = sql;
        errlen = sizeof sql;
    }
    err[0] = '\0';
    if (!loop || !path) {
        snprintf(err, errlen, "store: loop and path are required");
        return NULL;
    }
    for (i = 0; i < sizeof syncs / sizeof syncs[0]; i++)
        if (strcmp(sync, syncs[i]) == 0)
            ok = 1;
    if (!ok) {
        snprintf(err, errlen,
                 "store: synchronous must be off, normal, full or extra,"
                 " got '%s'", sync);
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "store: out of memory");
        return NULL;
    }
    s->base.vt = &sq_vtable;
    s->loop = loop;
    s->fire_tail = &s->fire_head;
    s->poll_ms = opts && opts->poll_ms > 0 ? opts->poll_ms : 100;

    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                        SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "store: %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, busy);
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", sync);
    if (exec_sql_patient(s, "PRAGMA journal_mode=WAL", busy) < 0 ||
        exec_sql(s, sql) < 0)
        goto fail_msg;
    if (!schema_ready(s)) {
        if (exec_sql_patient(s, "BEGIN IMMEDIATE", busy) < 0)
            goto fail_msg;
        if (exec_sql(s, schema_sql) < 0) {
            exec_sql(s, "ROLLBACK");
            goto fail_msg;
        }
        if (exec_sql(s, "COMMIT") < 0)
            goto fail_msg;
    }
    for (i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, sql_text[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            sqlerr(s, sql_text[i]);
            goto fail_msg;
        }
    }
    if (reap_dead_sessions(s) != ZKF_ZOK)
        goto fail_msg;
    if (read_data_version(s, &s->data_version) < 0) {
        sqlerr(s, "data_version");
        goto fail_msg;
    }
    if (zkf_loop_on_turn_end(loop, on_turn_end, s) < 0) {
        snprintf(s->err, sizeof s->err, "out of memory");
        goto fail_msg;
    }
    s->turn_hooked = 1;
    return &s->base;

fail_msg:
    snprintf(err, errlen, "store: %s: %s", path, s->err);
fail:
    /* No session yet (or a half-made one the next open reaps): skip the
     * closing work of sq_free. */
    for (i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    free(s);
    return NULL;
}

static const zkf_store_vtable sq_vtable = {
    "sqlite",
    sq_create,
    sq_get,
    sq_set,
    sq_delete,
    sq_exists,
    sq_children,
    sq_multi,
    sq_flush,
    sq_errmsg,
    sq_free,
};
