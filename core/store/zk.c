/*
 * store/zk.c - the store (store.h) over a real ZooKeeper ensemble.
 *
 * Most operations are one request of zk/zk.c.  Two are not, because
 * ZooKeeper has no such request: a create with ZKF_STORE_PARENTS makes the
 * missing ancestors one by one (ignoring ZNODEEXISTS from a racing
 * creator), and a recursive delete walks the subtree children first,
 * listing a node again when a delete finds it not empty.  Neither is one
 * transaction here, unlike the SQLite backend.
 *
 * Watches outlive a session expiry: zk/zk.c reports each lost watch, and the
 * store sets it again on the new session, comparing what it sees with what
 * the watch was set on (existence, mzxid, pzxid), and fires at once when
 * the node changed in between.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zk/zk.h"

#define MAX_DATA 1048576
#define DELETE_RETRIES 20

typedef struct zstore {
    zkf_store base;
    zkf_zk *zk;
    zkf_zk_event_cb user_cb;
    void *user_arg;
    char errmsg[256];
} zstore;

enum { W_GET, W_EXISTS, W_CHILDREN };

/* One store watch.  The zk/zk.c watch that carries it calls back exactly
 * once; after a user event has fired (`fired`) that call only frees it. */
typedef struct swatch {
    zstore *s;
    int kind;
    zkf_store_watch_cb cb;
    void *arg;
    char *path;
    int existed;
    int64_t zxid;             /* mzxid (get, exists) or pzxid (children) */
    int fired;
} swatch;

enum { O_SIMPLE, O_PARENTS, O_RDELETE };

typedef struct zop {
    zstore *s;
    int kind;
    int exists_op;            /* ZNONODE is an answer, not a failure */
    zkf_store_cb cb;
    void *arg;
    swatch *w;
    char *path;
    char *data;
    size_t len;
    int flags, version;
    size_t pos;               /* parents: end of the ancestor being made;
                                 recursive delete: 1 when the top of the
                                 stack is childless */
    int tries;                /* retries after a race */
    char **stack;             /* recursive delete: nodes still to remove */
    size_t n, cap;
} zop;

/* ---- helpers --------------------------------------------------------- */

#define valid_path zkf_store_valid_path

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        if (n)
            memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void op_free(zop *o)
{
    size_t i;

    for (i = 0; i < o->n; i++)
        free(o->stack[i]);
    free(o->stack);
    free(o->path);
    free(o->data);
    free(o);
}

static zop *op_new(zstore *s, int kind, const char *path, zkf_store_cb cb,
                   void *arg)
{
    zop *o = calloc(1, sizeof *o);

    if (!o)
        return NULL;
    o->path = dupn(path, strlen(path));
    if (!o->path) {
        free(o);
        return NULL;
    }
    o->s = s;
    o->kind = kind;
    o->cb = cb;
    o->arg = arg;
    o->version = -1;
    return o;
}

/* Calls the caller's completion last, with everything freed that the
 * callback could not need (it may longjmp). */
static void finish(zop *o, const zkf_zk_result *zr, int rc)
{
    zkf_store_result r;
    zkf_store_cb cb = o->cb;
    void *arg = o->arg;

    memset(&r, 0, sizeof r);
    r.failed_index = -1;
    r.rc = rc;
    if (zr && zr->rc == rc) {
        r.path = zr->path;
        r.data = zr->data;
        r.data_len = zr->data_len;
        r.stat = zr->stat;
        r.children = zr->children;
        r.n_children = zr->n_children;
        r.results = zr->results;
        r.n_results = zr->n_results;
        r.failed_index = zr->failed_index;
    }
    if (rc == ZKF_ZOK && o->kind == O_PARENTS)
        r.path = zr ? zr->path : o->path;
    op_free(o);
    if (cb)
        cb(&r, arg);
}

/* ---- watches --------------------------------------------------------- */

static void sw_free(swatch *w)
{
    free(w->path);
    free(w);
}

static void sw_fire(swatch *w, int type, const char *path)
{
    w->fired = 1;
    w->cb(type, path, w->arg);
}

static void rearm(swatch *w);

static void on_zk_watch(zkf_zk *zk, int type, const char *path, void *arg)
{
    swatch *w = arg;

    (void)zk;
    if (w->fired) {
        sw_free(w);
        return;
    }
    if (type == ZKF_ZK_WATCH_LOST) {
        rearm(w);
        return;
    }
    sw_fire(w, type, path[0] ? path : w->path);
    sw_free(w);
}

static void rearm_done(zkf_zk *zk, const zkf_zk_result *r, void *arg)
{
    swatch *w = arg;
    int set = r->rc == ZKF_ZOK ||
              (w->kind != W_CHILDREN && r->rc == ZKF_ZNONODE);

    (void)zk;
    if (!set) {
        /* No watch now; tell the owner something may have changed. */
        if (r->rc == ZKF_ZCLOSING)
            w->cb(ZKF_WATCH_CLOSED, w->path, w->arg);
        else if (r->rc == ZKF_ZNONODE)
            w->cb(ZKF_WATCH_DELETED, w->path, w->arg);
        else
            w->cb(w->kind == W_CHILDREN ? ZKF_WATCH_CHILD : ZKF_WATCH_CHANGED,
                  w->path, w->arg);
        sw_free(w);
        return;
    }
    if (w->kind == W_CHILDREN) {
        if (r->stat && r->stat->pzxid != w->zxid)
            sw_fire(w, ZKF_WATCH_CHILD, w->path);
        return;
    }
    if (r->rc == ZKF_ZNONODE) {
        if (w->existed)
            sw_fire(w, ZKF_WATCH_DELETED, w->path);
    } else if (!w->existed) {
        sw_fire(w, ZKF_WATCH_CREATED, w->path);
    } else if (r->stat && r->stat->mzxid != w->zxid) {
        sw_fire(w, ZKF_WATCH_CHANGED, w->path);
    }
}

/* The session that held `w` expired: set it again on the new one. */
static void rearm(swatch *w)
{
    zkf_zk *zk = w->s->zk;
    int rc;

    zkf_zk_set_tag(zk, NULL);
    if (w->kind == W_CHILDREN)
        rc = zkf_zk_children(zk, w->path, on_zk_watch, w, rearm_done, w);
    else
        rc = zkf_zk_exists(zk, w->path, on_zk_watch, w, rearm_done, w);
    if (rc != ZKF_ZOK) {
        w->cb(ZKF_WATCH_CLOSED, w->path, w->arg);
        sw_free(w);
    }
}

static swatch *sw_new(zstore *s, int kind, const char *path,
                      zkf_store_watch_cb cb, void *arg)
{
    swatch *w;

    if (!cb)
        return NULL;
    w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->path = dupn(path, strlen(path));
    if (!w->path) {
        free(w);
        return NULL;
    }
    w->s = s;
    w->kind = kind;
    w->cb = cb;
    w->arg = arg;
    return w;
}

/* ---- simple operations ----------------------------------------------- */

static void simple_done(zkf_zk *zk, const zkf_zk_result *r, void *arg)
{
    zop *o = arg;
    swatch *w = o->w;

    (void)zk;
    if (w) {
        if (r->rc == ZKF_ZOK) {
            w->existed = 1;
            if (r->stat)
                w->zxid = w->kind == W_CHILDREN ? r->stat->pzxid
                                                : r->stat->mzxid;
        } else if (!(o->exists_op && r->rc == ZKF_ZNONODE)) {
            sw_free(w);   /* zk/zk.c never calls a watch it did not set */
        }
    }
    finish(o, r, r->rc);
}

static int store_get(zkf_store *st, const char *path, zkf_store_watch_cb wcb,
                     void *warg, zkf_store_cb cb, void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    int rc;

    if (!valid_path(path, 0))
        return ZKF_ZBADARGUMENTS;
    o = op_new(s, O_SIMPLE, path, cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    o->w = sw_new(s, W_GET, path, wcb, warg);
    if (wcb && !o->w) {
        op_free(o);
        return ZKF_ZSYSTEMERROR;
    }
    zkf_zk_set_tag(s->zk, arg);
    rc = zkf_zk_get(s->zk, path, o->w ? on_zk_watch : NULL, o->w,
                    simple_done, o);
    zkf_zk_set_tag(s->zk, NULL);
    if (rc != ZKF_ZOK) {
        if (o->w)
            sw_free(o->w);
        op_free(o);
    }
    return rc;
}

static int store_exists(zkf_store *st, const char *path,
                        zkf_store_watch_cb wcb, void *warg, zkf_store_cb cb,
                        void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    int rc;

    if (!valid_path(path, 0))
        return ZKF_ZBADARGUMENTS;
    o = op_new(s, O_SIMPLE, path, cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    o->exists_op = 1;
    o->w = sw_new(s, W_EXISTS, path, wcb, warg);
    if (wcb && !o->w) {
        op_free(o);
        return ZKF_ZSYSTEMERROR;
    }
    zkf_zk_set_tag(s->zk, arg);
    rc = zkf_zk_exists(s->zk, path, o->w ? on_zk_watch : NULL, o->w,
                       simple_done, o);
    zkf_zk_set_tag(s->zk, NULL);
    if (rc != ZKF_ZOK) {
        if (o->w)
            sw_free(o->w);
        op_free(o);
    }
    return rc;
}

static int store_children(zkf_store *st, const char *path,
                          zkf_store_watch_cb wcb, void *warg,
                          zkf_store_cb cb, void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    int rc;

    if (!valid_path(path, 0))
        return ZKF_ZBADARGUMENTS;
    o = op_new(s, O_SIMPLE, path, cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    o->w = sw_new(s, W_CHILDREN, path, wcb, warg);
    if (wcb && !o->w) {
        op_free(o);
        return ZKF_ZSYSTEMERROR;
    }
    zkf_zk_set_tag(s->zk, arg);
    rc = zkf_zk_children(s->zk, path, o->w ? on_zk_watch : NULL, o->w,
                         simple_done, o);
    zkf_zk_set_tag(s->zk, NULL);
    if (rc != ZKF_ZOK) {
        if (o->w)
            sw_free(o->w);
        op_free(o);
    }
    return rc;
}

static int store_set(zkf_store *st, const char *path, const char *data,
                     size_t len, int version, zkf_store_cb cb, void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    int rc;

    if (!valid_path(path, 0) || len > MAX_DATA || (len && !data))
        return ZKF_ZBADARGUMENTS;
    o = op_new(s, O_SIMPLE, path, cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    zkf_zk_set_tag(s->zk, arg);
    rc = zkf_zk_set(s->zk, path, data, len, version, simple_done, o);
    zkf_zk_set_tag(s->zk, NULL);
    if (rc != ZKF_ZOK)
        op_free(o);
    return rc;
}

static int store_multi(zkf_store *st, const zkf_store_op *ops, size_t n,
                       zkf_store_cb cb, void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    size_t i;
    int rc;

    for (i = 0; i < n; i++) {
        const zkf_store_op *op = &ops[i];
        int seq = op->type == ZKF_STORE_OP_CREATE &&
                  (op->flags & ZKF_STORE_SEQUENTIAL);
        /* ZooKeeper's multi has neither: see docs/internals.md. */
        if (!op->path || !valid_path(op->path, seq) ||
            op->data_len > MAX_DATA || (op->data_len && !op->data) ||
            (op->type == ZKF_STORE_OP_CREATE &&
             (op->flags & ZKF_STORE_PARENTS)) ||
            (op->type == ZKF_STORE_OP_DELETE &&
             (op->flags & ZKF_STORE_RECURSIVE)))
            return ZKF_ZBADARGUMENTS;
    }
    o = op_new(s, O_SIMPLE, "", cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    zkf_zk_set_tag(s->zk, arg);
    rc = zkf_zk_multi(s->zk, ops, n, simple_done, o);
    zkf_zk_set_tag(s->zk, NULL);
    if (rc != ZKF_ZOK)
        op_free(o);
    return rc;
}

/* ---- create, with parents -------------------------------------------- */

static void parents_done(zkf_zk *zk, const zkf_zk_result *r, void *arg);

/* The next step of a create with parents: the ancestor ending at o->pos,
 * or (pos 0) the node itself. */
static void parents_step(zop *o)
{
    zkf_zk *zk = o->s->zk;
    int rc;

    zkf_zk_set_tag(zk, o->arg);
    if (o->pos) {
        char save = o->path[o->pos];
        o->path[o->pos] = '\0';
        rc = zkf_zk_create(zk, o->path, NULL, 0, 0, parents_done, o);
        o->path[o->pos] = save;
    } else {
        rc = zkf_zk_create(zk, o->path, o->data, o->len,
                           o->flags & ~ZKF_STORE_PARENTS, parents_done, o);
    }
    zkf_zk_set_tag(zk, NULL);
    if (rc != ZKF_ZOK)
        finish(o, NULL, rc);
}

static void parents_done(zkf_zk *zk, const zkf_zk_result *r, void *arg)
{
    zop *o = arg;
    char *slash;

    (void)zk;
    if (o->pos == 0) {
        /* The node itself: a missing parent means a first try, or that
         * somebody removed an ancestor we had just made. */
        slash = strchr(o->path + 1, '/');
        if (r->rc == ZKF_ZNONODE && slash && o->tries++ < 3) {
            o->pos = (size_t)(slash - o->path);
            parents_step(o);
            return;
        }
        finish(o, r, r->rc);
        return;
    }
    if (r->rc != ZKF_ZOK && r->rc != ZKF_ZNODEEXISTS) {
        finish(o, NULL, r->rc);
        return;
    }
    slash = strchr(o->path + o->pos + 1, '/');
    o->pos = slash ? (size_t)(slash - o->path) : 0;
    parents_step(o);
}

static int store_create(zkf_store *st, const char *path, const char *data,
                        size_t len, int flags, zkf_store_cb cb, void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    int rc;

    if (!valid_path(path, flags & ZKF_STORE_SEQUENTIAL) || len > MAX_DATA ||
        (len && !data))
        return ZKF_ZBADARGUMENTS;
    if (!(flags & ZKF_STORE_PARENTS)) {
        o = op_new(s, O_SIMPLE, path, cb, arg);
        if (!o)
            return ZKF_ZSYSTEMERROR;
        zkf_zk_set_tag(s->zk, arg);
        rc = zkf_zk_create(s->zk, path, data, len, flags, simple_done, o);
        zkf_zk_set_tag(s->zk, NULL);
        if (rc != ZKF_ZOK)
            op_free(o);
        return rc;
    }
    o = op_new(s, O_PARENTS, path, cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    o->flags = flags;
    o->len = len;
    if (len) {
        o->data = dupn(data, len);
        if (!o->data) {
            op_free(o);
            return ZKF_ZSYSTEMERROR;
        }
    }
    parents_step(o);
    return ZKF_ZOK;
}

/* ---- delete, recursive ----------------------------------------------- */

static void rdel_next(zop *o);

static int push_path(zop *o, const char *path)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        char **st = realloc(o->stack, cap * sizeof *st);
        if (!st)
            return -1;
        o->stack = st;
        o->cap = cap;
    }
    o->stack[o->n] = dupn(path, strlen(path));
    if (!o->stack[o->n])
        return -1;
    o->n++;
    return 0;
}

static void pop_path(zop *o)
{
    free(o->stack[--o->n]);
}

static void rdel_children(zkf_zk *zk, const zkf_zk_result *r, void *arg)
{
    zop *o = arg;
    const char *top = o->stack[o->n - 1];
    size_t i;

    (void)zk;
    if (r->rc == ZKF_ZNONODE && o->n > 1) {
        pop_path(o);
    } else if (r->rc != ZKF_ZOK) {
        finish(o, NULL, r->rc);
        return;
    } else if (r->n_children == 0) {
        o->pos = 1;            /* childless: delete `top` next */
    } else {
        char *base = dupn(top, strlen(top));
        if (!base) {
            finish(o, NULL, ZKF_ZSYSTEMERROR);
            return;
        }
        for (i = 0; i < r->n_children; i++) {
            size_t bl = strlen(base), cl = strlen(r->children[i]);
            char *p = malloc(bl + cl + 2);
            int bad = !p;
            if (p) {
                memcpy(p, base, bl);
                p[bl] = '/';
                memcpy(p + bl + 1, r->children[i], cl + 1);
                bad = push_path(o, p) < 0;
                free(p);
            }
            if (bad) {
                free(base);
                finish(o, NULL, ZKF_ZSYSTEMERROR);
                return;
            }
        }
        free(base);
    }
    rdel_next(o);
}

static void rdel_deleted(zkf_zk *zk, const zkf_zk_result *r, void *arg)
{
    zop *o = arg;

    (void)zk;
    o->pos = 0;                /* list the next top first */
    if (r->rc == ZKF_ZNOTEMPTY && o->tries++ < DELETE_RETRIES) {
        rdel_next(o);          /* a child appeared meanwhile */
        return;
    }
    if (o->n == 1) {
        finish(o, r, r->rc);   /* the subtree's root, with its version */
        return;
    }
    if (r->rc != ZKF_ZOK && r->rc != ZKF_ZNONODE) {
        finish(o, NULL, r->rc);
        return;
    }
    pop_path(o);
    rdel_next(o);
}

/* Deletes the top of the stack when it was just found childless (pos 1),
 * else lists its children. */
static void rdel_next(zop *o)
{
    zkf_zk *zk = o->s->zk;
    const char *top = o->stack[o->n - 1];
    int rc;

    zkf_zk_set_tag(zk, o->arg);
    if (o->pos == 1)
        rc = zkf_zk_delete(zk, top, o->n == 1 ? o->version : -1,
                           rdel_deleted, o);
    else
        rc = zkf_zk_children(zk, top, NULL, NULL, rdel_children, o);
    zkf_zk_set_tag(zk, NULL);
    if (rc != ZKF_ZOK)
        finish(o, NULL, rc);
}

static void del_first(zkf_zk *zk, const zkf_zk_result *r, void *arg)
{
    zop *o = arg;

    (void)zk;
    if (r->rc == ZKF_ZNOTEMPTY && (o->flags & ZKF_STORE_RECURSIVE)) {
        o->kind = O_RDELETE;
        if (push_path(o, o->path) < 0) {
            finish(o, NULL, ZKF_ZSYSTEMERROR);
            return;
        }
        rdel_next(o);
        return;
    }
    finish(o, r, r->rc);
}

static int store_del(zkf_store *st, const char *path, int version, int flags,
                     zkf_store_cb cb, void *arg)
{
    zstore *s = (zstore *)st;
    zop *o;
    int rc;

    if (!valid_path(path, 0) || strcmp(path, "/") == 0)
        return ZKF_ZBADARGUMENTS;
    o = op_new(s, O_SIMPLE, path, cb, arg);
    if (!o)
        return ZKF_ZSYSTEMERROR;
    o->flags = flags;
    o->version = version;
    zkf_zk_set_tag(s->zk, arg);
    rc = zkf_zk_delete(s->zk, path, version, del_first, o);
    zkf_zk_set_tag(s->zk, NULL);
    if (rc != ZKF_ZOK)
        op_free(o);
    return rc;
}

/* ---- the rest of the vtable ------------------------------------------ */

static int store_flush(zkf_store *st)
{
    (void)st;   /* every write is durable once its completion ran */
    return ZKF_ZOK;
}

static const char *store_errmsg(zkf_store *st)
{
    zstore *s = (zstore *)st;
    const char *m = zkf_zk_errmsg(s->zk);

    return m[0] ? m : s->errmsg;
}

static void store_free(zkf_store *st)
{
    zstore *s = (zstore *)st;

    zkf_zk_free(s->zk);
    free(s);
}

static const zkf_store_vtable zk_vtable = {
    "zk",
    store_create,
    store_get,
    store_set,
    store_del,
    store_exists,
    store_children,
    store_multi,
    store_flush,
    store_errmsg,
    store_free
};

static void on_session(zkf_zk *zk, int state, void *arg)
{
    zstore *s = arg;

    if (s->user_cb)
        s->user_cb(zk, state, s->user_arg);
}

zkf_store *zkf_store_zk_new(zkf_loop *loop, const char *hosts,
                            const zkf_zk_opts *opts, char *err,
                            size_t errlen)
{
    zstore *s = calloc(1, sizeof *s);
    zkf_zk_opts o;

    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memset(&o, 0, sizeof o);
    if (opts)
        o = *opts;
    s->base.vt = &zk_vtable;
    s->user_cb = o.on_session;
    s->user_arg = o.arg;
    o.on_session = on_session;
    o.arg = s;
    s->zk = zkf_zk_new(loop, hosts, &o, err, errlen);
    if (!s->zk) {
        free(s);
        return NULL;
    }
    return &s->base;
}

zkf_zk *zkf_store_zk_client(zkf_store *st)
{
    if (!st || st->vt != &zk_vtable)
        return NULL;
    return ((zstore *)st)->zk;
}
