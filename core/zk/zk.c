/*
 * zk/zk.c - the asynchronous ZooKeeper client (see zk.h).
 *
 * libzookeeper_mt calls completions and watchers on its own threads.  Each
 * of those callbacks fills a message that was allocated before the request
 * was made (so a completion never depends on malloc) and pushes it on the
 * mailbox, a mutex-protected queue; the first push wakes the loop through
 * zkf_loop_wake().  On the loop, drain() pops messages one at a time and
 * runs the user callbacks.  Nothing else crosses threads.
 *
 * The mailbox is reference counted apart from the client, because a wake
 * queued on the loop may outlive the client that asked for it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zookeeper/zookeeper.h>

#include "zk/zk.h"

#define DEFAULT_SESSION_MS 10000

enum { M_DONE, M_WATCH, M_SESSION, M_NOTIFY, M_LOST };
enum { R_CREATE, R_GET, R_SET, R_DELETE, R_EXISTS, R_CHILDREN, R_MULTI };

typedef struct msg {
    struct msg *next;
    int kind;
    struct req *req;          /* M_DONE */
    struct zwatch *w;         /* M_WATCH */
    unsigned gen;             /* M_SESSION: the handle it came from */
    int rc, type, state;
    char *path;
    char *data;
    size_t data_len;
    int has_stat;
    zkf_stat stat;
    char **children;
    size_t n_children;
} msg;

typedef struct mailbox {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    msg *head, *tail;
    int refs;                 /* the client's + one per queued wake */
    int wake_pending;
    zkf_zk *zk;               /* NULL once the client is freed */
    zkf_loop *loop;
} mailbox;

/* What the session watcher of one handle needs; freed after its close. */
typedef struct hctx {
    mailbox *mb;
    unsigned gen;
} hctx;

typedef struct zwatch {
    struct zwatch *next, *prev;
    zkf_zk_watch_cb cb;
    void *arg;
    mailbox *mb;
    msg *m;                   /* preallocated event message */
    int lost;                 /* its session expired */
} zwatch;

typedef struct req {
    struct req *next, *prev;
    int kind;
    int held;                 /* not yet given to libzookeeper */
    double deadline;          /* held: when it fails ZCONNECTIONLOSS */
    zkf_zk_cb cb;
    void *arg;
    void *tag;
    zwatch *w;
    mailbox *mb;
    msg *m;                   /* preallocated completion message */
    char *path;
    char *data;
    size_t len;
    int flags, version;
    /* multi */
    size_t nops;
    zkf_store_op *ops;
    zoo_op_t *zops;
    zoo_op_result_t *zres;
    struct Stat *stats;
    char **pbufs;
} req;

struct zkf_zk {
    zkf_loop *loop;
    mailbox *mb;
    zhandle_t *zh;
    hctx *hc;
    unsigned gen;
    char *hosts;
    char *auth;
    int session_ms, connect_ms;
    struct ACL_vector acl;    /* owned unless acl_static */
    const struct ACL_vector *aclp;
    zkf_zk_event_cb on_session;
    void *arg;
    int state;
    int closing;
    long long session_id;
    req *reqs;                /* every request not yet completed */
    zwatch *watches;          /* every watch not yet delivered */
    int pending;              /* reqs + watches: holds a loop ref */
    zkf_timer *held_timer;
    void *tag;
    int waiting;              /* inside zkf_zk_wait() */
    char errmsg[256];
};

/* ===================================================================
 * Names and small helpers
 * =================================================================== */

const char *zkf_zk_statename(int state)
{
    switch (state) {
    case ZKF_ZK_CONNECTING: return "connecting";
    case ZKF_ZK_CONNECTED: return "connected";
    case ZKF_ZK_LOST: return "lost";
    case ZKF_ZK_EXPIRED: return "expired";
    case ZKF_ZK_AUTH_FAILED: return "auth_failed";
    case ZKF_ZK_CLOSED: return "closed";
    default: return "unknown";
    }
}

static void copy_stat(zkf_stat *d, const struct Stat *s)
{
    d->czxid = s->czxid;
    d->mzxid = s->mzxid;
    d->pzxid = s->pzxid;
    d->ctime = s->ctime;
    d->mtime = s->mtime;
    d->version = s->version;
    d->cversion = s->cversion;
    d->aversion = s->aversion;
    d->ephemeral_owner = s->ephemeralOwner;
    d->data_length = s->dataLength;
    d->num_children = s->numChildren;
}

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

static void msg_free(msg *m)
{
    size_t i;

    if (!m)
        return;
    free(m->path);
    free(m->data);
    for (i = 0; i < m->n_children; i++)
        free(m->children[i]);
    free(m->children);
    free(m);
}

static void pending_add(zkf_zk *zk, int d)
{
    int before = zk->pending;

    zk->pending += d;
    if (before == 0 && zk->pending > 0)
        zkf_loop_ref(zk->loop);
    else if (before > 0 && zk->pending == 0)
        zkf_loop_unref(zk->loop);
}

/* ===================================================================
 * The mailbox: the only state other threads touch
 * =================================================================== */

static void mb_unref(mailbox *mb)
{
    int last;

    pthread_mutex_lock(&mb->mu);
    last = --mb->refs == 0;
    pthread_mutex_unlock(&mb->mu);
    if (!last)
        return;
    while (mb->head) {
        msg *m = mb->head;
        mb->head = m->next;
        msg_free(m);
    }
    pthread_mutex_destroy(&mb->mu);
    pthread_cond_destroy(&mb->cond);
    free(mb);
}

static void drain(zkf_zk *zk);

/* The loop was freed with our wake still queued: its reference goes. */
static void mb_drop_wake(void *arg)
{
    mb_unref(arg);
}

static void on_wake(void *arg)
{
    mailbox *mb = arg;

    pthread_mutex_lock(&mb->mu);
    mb->wake_pending = 0;
    pthread_mutex_unlock(&mb->mu);
    if (mb->zk && !mb->zk->waiting)
        drain(mb->zk);
    mb_unref(mb);
}

/* Any thread. */
static void push(mailbox *mb, msg *m)
{
    int wake = 0;

    m->next = NULL;
    pthread_mutex_lock(&mb->mu);
    if (mb->tail)
        mb->tail->next = m;
    else
        mb->head = m;
    mb->tail = m;
    if (!mb->wake_pending) {
        mb->wake_pending = 1;
        mb->refs++;
        wake = 1;
    }
    pthread_cond_broadcast(&mb->cond);
    pthread_mutex_unlock(&mb->mu);
    if (wake && zkf_loop_wake_ex(mb->loop, on_wake, mb_drop_wake, mb) < 0) {
        pthread_mutex_lock(&mb->mu);
        mb->wake_pending = 0;
        mb->refs--;
        pthread_mutex_unlock(&mb->mu);
    }
}

static msg *pop(mailbox *mb)
{
    msg *m;

    pthread_mutex_lock(&mb->mu);
    m = mb->head;
    if (m) {
        mb->head = m->next;
        if (!mb->head)
            mb->tail = NULL;
    }
    pthread_mutex_unlock(&mb->mu);
    return m;
}

/* ===================================================================
 * libzookeeper_mt's threads: copy and push, nothing else
 * =================================================================== */

static void done_string(int rc, const char *value, const void *data)
{
    req *r = (req *)data;
    msg *m = r->m;

    m->rc = rc;
    if (rc == ZOK && value)
        m->path = dupn(value, strlen(value));
    push(r->mb, m);
}

static void done_data(int rc, const char *value, int len,
                      const struct Stat *stat, const void *data)
{
    req *r = (req *)data;
    msg *m = r->m;

    m->rc = rc;
    if (rc == ZOK) {
        if (value && len > 0) {
            m->data = dupn(value, (size_t)len);
            m->data_len = m->data ? (size_t)len : 0;
            if (!m->data)
                m->rc = ZSYSTEMERROR;
        }
        if (stat) {
            copy_stat(&m->stat, stat);
            m->has_stat = 1;
        }
    }
    push(r->mb, m);
}

static void done_stat(int rc, const struct Stat *stat, const void *data)
{
    req *r = (req *)data;
    msg *m = r->m;

    m->rc = rc;
    if (rc == ZOK && stat) {
        copy_stat(&m->stat, stat);
        m->has_stat = 1;
    }
    push(r->mb, m);
}

static void done_void(int rc, const void *data)
{
    req *r = (req *)data;

    r->m->rc = rc;
    push(r->mb, r->m);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void done_children(int rc, const struct String_vector *sv,
                          const struct Stat *stat, const void *data)
{
    req *r = (req *)data;
    msg *m = r->m;
    int32_t i;

    m->rc = rc;
    if (rc == ZOK) {
        if (sv && sv->count > 0) {
            m->children = calloc((size_t)sv->count, sizeof *m->children);
            if (!m->children)
                m->rc = ZSYSTEMERROR;
            for (i = 0; m->children && i < sv->count; i++) {
                m->children[i] = dupn(sv->data[i], strlen(sv->data[i]));
                if (!m->children[i]) {
                    m->rc = ZSYSTEMERROR;
                    break;
                }
                m->n_children++;
            }
            if (m->rc == ZOK)
                qsort(m->children, m->n_children, sizeof *m->children,
                      cmp_str);
        }
        if (stat) {
            copy_stat(&m->stat, stat);
            m->has_stat = 1;
        }
    }
    push(r->mb, m);
}

static void watch_fn(zhandle_t *zh, int type, int state, const char *path,
                     void *ctx)
{
    zwatch *w = ctx;
    msg *m;

    (void)zh;
    (void)state;
    /* Session events reach every path watcher too; the session watcher
     * handles them.  A real event comes once: the server forgets the
     * watch as it sends it. */
    if (type == ZOO_SESSION_EVENT || type == ZOO_NOTWATCHING_EVENT || !w->m)
        return;
    m = w->m;
    w->m = NULL;
    m->type = type == ZOO_CREATED_EVENT ? ZKF_WATCH_CREATED
            : type == ZOO_DELETED_EVENT ? ZKF_WATCH_DELETED
            : type == ZOO_CHANGED_EVENT ? ZKF_WATCH_CHANGED
            : ZKF_WATCH_CHILD;
    if (path)
        m->path = dupn(path, strlen(path));
    push(w->mb, m);
}

static void session_fn(zhandle_t *zh, int type, int state, const char *path,
                       void *ctx)
{
    hctx *hc = ctx;
    msg *m;

    (void)zh;
    (void)path;
    if (type != ZOO_SESSION_EVENT)
        return;
    m = calloc(1, sizeof *m);
    if (!m)
        return;
    m->kind = M_SESSION;
    m->gen = hc->gen;
    m->state = state;
    push(hc->mb, m);
}

static void auth_done(int rc, const void *data)
{
    (void)rc;
    (void)data;   /* a refusal also arrives as ZOO_AUTH_FAILED_STATE */
}

/* libzookeeper logs through this when ZKFLOW_ZK_DEBUG is set; the library
 * never prints otherwise. */
static void zk_log(const char *message)
{
    (void)message;
}

static void zk_log_stderr(const char *message)
{
    fprintf(stderr, "zookeeper: %s\n", message);
}

/* ===================================================================
 * ACLs
 * =================================================================== */

static int parse_perms(const char *s, int32_t *perms)
{
    *perms = 0;
    for (; *s; s++) {
        switch (*s) {
        case 'r': *perms |= ZOO_PERM_READ; break;
        case 'w': *perms |= ZOO_PERM_WRITE; break;
        case 'c': *perms |= ZOO_PERM_CREATE; break;
        case 'd': *perms |= ZOO_PERM_DELETE; break;
        case 'a': *perms |= ZOO_PERM_ADMIN; break;
        default: return -1;
        }
    }
    return *perms ? 0 : -1;
}

static void acl_clear(struct ACL_vector *v)
{
    int32_t i;

    for (i = 0; i < v->count; i++) {
        free(v->data[i].id.scheme);
        free(v->data[i].id.id);
    }
    free(v->data);
    v->data = NULL;
    v->count = 0;
}

/* "scheme:id:perms,...": the id may hold colons (digest's user:hash), so
 * the scheme ends at the first colon and the perms start after the last. */
static int parse_acl(zkf_zk *zk, const char *spec, char *err, size_t errlen)
{
    const char *p = spec;

    if (strcmp(spec, "open") == 0) {
        zk->aclp = &ZOO_OPEN_ACL_UNSAFE;
        return 0;
    }
    if (strcmp(spec, "creator") == 0) {
        zk->aclp = &ZOO_CREATOR_ALL_ACL;
        return 0;
    }
    if (strcmp(spec, "read") == 0) {
        zk->aclp = &ZOO_READ_ACL_UNSAFE;
        return 0;
    }
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char *item = dupn(p, n), *c1, *c2;
        struct ACL *a;
        int32_t perms;

        if (!item)
            goto oom;
        c1 = strchr(item, ':');
        c2 = strrchr(item, ':');
        if (!c1 || c2 == c1 || c1 == item ||
            parse_perms(c2 + 1, &perms) < 0) {
            snprintf(err, errlen, "bad ACL entry '%s' (want scheme:id:perms,"
                     " perms from rwcda)", item);
            free(item);
            acl_clear(&zk->acl);
            return -1;
        }
        a = realloc(zk->acl.data, (size_t)(zk->acl.count + 1) * sizeof *a);
        if (!a) {
            free(item);
            goto oom;
        }
        zk->acl.data = a;
        a = &zk->acl.data[zk->acl.count];
        a->perms = perms;
        a->id.scheme = dupn(item, (size_t)(c1 - item));
        a->id.id = dupn(c1 + 1, (size_t)(c2 - c1 - 1));
        free(item);
        zk->acl.count++;
        if (!a->id.scheme || !a->id.id)
            goto oom;
        p += n;
        if (*p == ',')
            p++;
    }
    if (zk->acl.count == 0) {
        snprintf(err, errlen, "empty ACL");
        return -1;
    }
    zk->aclp = &zk->acl;
    return 0;
oom:
    acl_clear(&zk->acl);
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* ===================================================================
 * Handles and sessions
 * =================================================================== */

static int open_handle(zkf_zk *zk)
{
    hctx *hc = malloc(sizeof *hc);

    if (!hc)
        return -1;
    hc->mb = zk->mb;
    hc->gen = ++zk->gen;
    errno = 0;
    zk->zh = zookeeper_init2(zk->hosts, session_fn, zk->session_ms, NULL, hc,
                             0, getenv("ZKFLOW_ZK_DEBUG") ? zk_log_stderr
                                                          : zk_log);
    if (!zk->zh) {
        snprintf(zk->errmsg, sizeof zk->errmsg, "zookeeper_init '%s': %s",
                 zk->hosts, strerror(errno ? errno : EINVAL));
        free(hc);
        return -1;
    }
    zk->hc = hc;
    /* The client resolves the host names again each time its I/O thread
     * wakes (about ten system calls, at every request): once a minute is
     * enough to follow DNS changes, and a connection loss still resolves
     * at once. */
    zoo_set_servers_resolution_delay(zk->zh, 60000);
    if (zk->auth)
        zoo_add_auth(zk->zh, "digest", zk->auth, (int)strlen(zk->auth),
                     auth_done, NULL);
    zk->state = ZKF_ZK_CONNECTING;
    return 0;
}

/* Closes the current handle.  libzookeeper completes what it still had
 * in flight (ZCLOSING) on this thread, through the mailbox. */
static void close_handle(zkf_zk *zk)
{
    if (!zk->zh)
        return;
    zookeeper_close(zk->zh);
    zk->zh = NULL;
    free(zk->hc);
    zk->hc = NULL;
}

static void notify(zkf_zk *zk, int state)
{
    msg *m = calloc(1, sizeof *m);

    if (!m)
        return;
    m->kind = M_NOTIFY;
    m->state = state;
    push(zk->mb, m);
}

static int submit(zkf_zk *zk, req *r);
static void fail_req(zkf_zk *zk, req *r, int rc);

static void arm_held_timer(zkf_zk *zk);

static void flush_held(zkf_zk *zk)
{
    req *r, *next;

    for (r = zk->reqs; r; r = next) {
        next = r->next;
        if (r->held) {
            int rc;
            r->held = 0;
            rc = submit(zk, r);
            if (rc == ZINVALIDSTATE)
                r->held = 1;   /* the connection went again: wait on */
            else if (rc != ZOK)
                fail_req(zk, r, rc);
        }
    }
    arm_held_timer(zk);
}

static void expire(zkf_zk *zk)
{
    zwatch *w;
    req *r;
    msg *m;

    close_handle(zk);
    for (w = zk->watches; w; w = w->next)
        w->lost = 1;
    /* A request held for a session (not sent yet) keeps its watch: it goes
     * to the new handle with the request.  Lost, deliver_lost() freed it
     * while the request still pointed at it, and the new handle then fired
     * (or a failed request freed) a freed watch. */
    for (r = zk->reqs; r; r = r->next)
        if (r->held && r->w)
            r->w->lost = 0;
    m = calloc(1, sizeof *m);
    if (m) {
        m->kind = M_LOST;
        push(zk->mb, m);
    }
    notify(zk, ZKF_ZK_EXPIRED);
    zk->session_id = 0;
    if (open_handle(zk) < 0)
        zk->state = ZKF_ZK_EXPIRED;   /* held requests time out */
}

/* Applies a session change; the owner hears of it through M_NOTIFY, so
 * this never calls back (zkf_zk_wait() relies on that). */
static void on_session_msg(zkf_zk *zk, const msg *m)
{
    if (m->gen != zk->gen || !zk->zh)
        return;
    if (m->state == ZOO_CONNECTED_STATE) {
        const clientid_t *id = zoo_client_id(zk->zh);
        zk->state = ZKF_ZK_CONNECTED;
        zk->session_id = id ? (long long)id->client_id : 0;
        zk->errmsg[0] = '\0';
        flush_held(zk);
        notify(zk, ZKF_ZK_CONNECTED);
    } else if (m->state == ZOO_CONNECTING_STATE ||
               m->state == ZOO_ASSOCIATING_STATE) {
        if (zk->state == ZKF_ZK_CONNECTED) {
            zk->state = ZKF_ZK_LOST;
            notify(zk, ZKF_ZK_LOST);
        }
    } else if (m->state == ZOO_EXPIRED_SESSION_STATE) {
        expire(zk);
    } else if (m->state == ZOO_AUTH_FAILED_STATE) {
        req *r, *next;
        zk->state = ZKF_ZK_AUTH_FAILED;
        snprintf(zk->errmsg, sizeof zk->errmsg,
                 "authentication failed on '%s'", zk->hosts);
        for (r = zk->reqs; r; r = next) {
            next = r->next;
            if (r->held)
                fail_req(zk, r, ZAUTHFAILED);
        }
        notify(zk, ZKF_ZK_AUTH_FAILED);
    }
}

/* ===================================================================
 * Requests
 * =================================================================== */

static void req_free(req *r)
{
    size_t i;

    free(r->path);
    free(r->data);
    for (i = 0; i < r->nops; i++) {
        free((char *)r->ops[i].path);
        free((char *)r->ops[i].data);
        if (r->pbufs)
            free(r->pbufs[i]);
    }
    free(r->ops);
    free(r->zops);
    free(r->zres);
    free(r->stats);
    free(r->pbufs);
    free(r);
}

static void watch_unlink(zkf_zk *zk, zwatch *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        zk->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    pending_add(zk, -1);
}

static void watch_free(zwatch *w)
{
    msg_free(w->m);
    free(w);
}

static void req_unlink(zkf_zk *zk, req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        zk->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
    pending_add(zk, -1);
}

static int zmode(int flags)
{
    return ((flags & ZKF_STORE_EPHEMERAL) ? ZOO_EPHEMERAL : 0) |
           ((flags & ZKF_STORE_SEQUENTIAL) ? ZOO_SEQUENCE : 0);
}

static int submit_multi(zkf_zk *zk, req *r)
{
    size_t i;

    /* zoo_amulti on a handle whose session expired (the I/O thread knows,
     * the loop has not heard yet) fails its first op's check and still
     * frees a request path for every later op, one it never set: it
     * freed our earlier op's path, which we free again.  That double
     * free killed workers that woke from a freeze past their session
     * (the cluster suite's flaky re-registration checks).  So a multi goes only to a connected handle; otherwise it
     * waits with the held requests.  A connected handle reaches the
     * expired state only through a reconnection (a round trip), never in
     * the moment between this check and the call. */
    if (zoo_state(zk->zh) != ZOO_CONNECTED_STATE)
        return ZINVALIDSTATE;

    for (i = 0; i < r->nops; i++) {
        const zkf_store_op *o = &r->ops[i];
        switch (o->type) {
        case ZKF_STORE_OP_CREATE:
            zoo_create_op_init(&r->zops[i], o->path, o->data ? o->data : "",
                               (int)o->data_len, zk->aclp, zmode(o->flags),
                               r->pbufs[i], (int)strlen(o->path) + 16);
            break;
        case ZKF_STORE_OP_DELETE:
            zoo_delete_op_init(&r->zops[i], o->path, o->version);
            break;
        case ZKF_STORE_OP_SET:
            zoo_set_op_init(&r->zops[i], o->path, o->data ? o->data : "",
                            (int)o->data_len, o->version, &r->stats[i]);
            break;
        default:
            zoo_check_op_init(&r->zops[i], o->path, o->version);
            break;
        }
    }
    return zoo_amulti(zk->zh, (int)r->nops, r->zops, r->zres, done_void, r);
}

static int submit(zkf_zk *zk, req *r)
{
    zwatch *w = r->w;
    const char *data = r->data ? r->data : "";

    switch (r->kind) {
    case R_CREATE:
        return zoo_acreate(zk->zh, r->path, data, (int)r->len, zk->aclp,
                           zmode(r->flags), done_string, r);
    case R_GET:
        return zoo_awget(zk->zh, r->path, w ? watch_fn : NULL, w, done_data,
                         r);
    case R_SET:
        return zoo_aset(zk->zh, r->path, data, (int)r->len, r->version,
                        done_stat, r);
    case R_DELETE:
        return zoo_adelete(zk->zh, r->path, r->version, done_void, r);
    case R_EXISTS:
        return zoo_awexists(zk->zh, r->path, w ? watch_fn : NULL, w,
                            done_stat, r);
    case R_CHILDREN:
        return zoo_awget_children2(zk->zh, r->path, w ? watch_fn : NULL, w,
                                   done_children, r);
    default:
        return submit_multi(zk, r);
    }
}

/* Completes `r` with `rc` through the mailbox, so that its callback runs
 * on the loop and never inside the caller. */
static void fail_req(zkf_zk *zk, req *r, int rc)
{
    (void)zk;
    r->held = 0;
    r->m->rc = rc;
    push(r->mb, r->m);
}

static void held_timer_cb(zkf_timer *t, void *arg);

static void arm_held_timer(zkf_zk *zk)
{
    double next = -1, now = zkf_mono_ms();
    req *r;

    for (r = zk->reqs; r; r = r->next)
        if (r->held && (next < 0 || r->deadline < next))
            next = r->deadline;
    if (zk->held_timer) {
        zkf_timer_stop(zk->held_timer);
        zk->held_timer = NULL;
    }
    if (next >= 0)
        zk->held_timer = zkf_timer_start(zk->loop, next > now ? next - now : 0,
                                         held_timer_cb, zk);
}

static void expire_held(zkf_zk *zk)
{
    double now = zkf_mono_ms();
    req *r;

    for (r = zk->reqs; r; r = r->next) {
        if (r->held && r->deadline <= now) {
            if (zk->state != ZKF_ZK_AUTH_FAILED)
                snprintf(zk->errmsg, sizeof zk->errmsg,
                         "no ZooKeeper session with '%s' within %d ms",
                         zk->hosts, zk->connect_ms);
            fail_req(zk, r, ZCONNECTIONLOSS);
        }
    }
}

static void held_timer_cb(zkf_timer *t, void *arg)
{
    zkf_zk *zk = arg;

    (void)t;
    zk->held_timer = NULL;
    expire_held(zk);
    arm_held_timer(zk);
}

static req *req_new(zkf_zk *zk, int kind, const char *path, zkf_zk_cb cb,
                    void *arg)
{
    req *r = calloc(1, sizeof *r);

    if (!r)
        return NULL;
    r->m = calloc(1, sizeof *r->m);
    r->path = path ? dupn(path, strlen(path)) : NULL;
    if (!r->m || (path && !r->path)) {
        free(r->m);
        free(r->path);
        free(r);
        return NULL;
    }
    r->m->kind = M_DONE;
    r->m->req = r;
    r->kind = kind;
    r->cb = cb;
    r->arg = arg;
    r->tag = zk->tag;
    r->mb = zk->mb;
    r->version = -1;
    return r;
}

static zwatch *watch_new(zkf_zk *zk, zkf_zk_watch_cb cb, void *arg)
{
    zwatch *w;

    if (!cb)
        return NULL;
    w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->m = calloc(1, sizeof *w->m);
    if (!w->m) {
        free(w);
        return NULL;
    }
    w->m->kind = M_WATCH;
    w->m->w = w;
    w->cb = cb;
    w->arg = arg;
    w->mb = zk->mb;
    return w;
}

/* Takes `r` (and its watch): sends it, or holds it until a session is
 * connected.  Always ZOK: failures complete through the mailbox. */
static int start(zkf_zk *zk, req *r)
{
    int rc;

    r->next = zk->reqs;
    if (zk->reqs)
        zk->reqs->prev = r;
    zk->reqs = r;
    pending_add(zk, 1);
    if (r->w) {
        r->w->next = zk->watches;
        if (zk->watches)
            zk->watches->prev = r->w;
        zk->watches = r->w;
        pending_add(zk, 1);
    }
    if (zk->state == ZKF_ZK_CONNECTED && zk->zh) {
        rc = submit(zk, r);
        if (rc == ZOK)
            return ZKF_ZOK;
        if (rc != ZINVALIDSTATE) {
            fail_req(zk, r, rc);
            return ZKF_ZOK;
        }
        /* The handle died and the loop has not heard yet: wait. */
    }
    if (zk->state == ZKF_ZK_AUTH_FAILED) {
        fail_req(zk, r, ZAUTHFAILED);
        return ZKF_ZOK;
    }
    r->held = 1;
    r->deadline = zkf_mono_ms() + zk->connect_ms;
    if (!zk->held_timer)
        arm_held_timer(zk);
    return ZKF_ZOK;
}

static int refuse(zkf_zk *zk)
{
    if (!zk)
        return ZKF_ZBADARGUMENTS;
    return zk->closing ? ZKF_ZCLOSING : ZKF_ZOK;
}

int zkf_zk_create(zkf_zk *zk, const char *path, const char *data,
                  size_t len, int flags, zkf_zk_cb cb, void *arg)
{
    req *r;
    int rc = refuse(zk);

    if (rc != ZKF_ZOK || !path)
        return rc != ZKF_ZOK ? rc : ZKF_ZBADARGUMENTS;
    r = req_new(zk, R_CREATE, path, cb, arg);
    if (!r)
        return ZKF_ZSYSTEMERROR;
    r->flags = flags;
    r->len = len;
    if (len) {
        r->data = dupn(data, len);
        if (!r->data) {
            msg_free(r->m);
            req_free(r);
            return ZKF_ZSYSTEMERROR;
        }
    }
    return start(zk, r);
}

int zkf_zk_set(zkf_zk *zk, const char *path, const char *data, size_t len,
               int version, zkf_zk_cb cb, void *arg)
{
    req *r;
    int rc = refuse(zk);

    if (rc != ZKF_ZOK || !path)
        return rc != ZKF_ZOK ? rc : ZKF_ZBADARGUMENTS;
    r = req_new(zk, R_SET, path, cb, arg);
    if (!r)
        return ZKF_ZSYSTEMERROR;
    r->version = version;
    r->len = len;
    if (len) {
        r->data = dupn(data, len);
        if (!r->data) {
            msg_free(r->m);
            req_free(r);
            return ZKF_ZSYSTEMERROR;
        }
    }
    return start(zk, r);
}

int zkf_zk_delete(zkf_zk *zk, const char *path, int version, zkf_zk_cb cb,
                  void *arg)
{
    req *r;
    int rc = refuse(zk);

    if (rc != ZKF_ZOK || !path)
        return rc != ZKF_ZOK ? rc : ZKF_ZBADARGUMENTS;
    r = req_new(zk, R_DELETE, path, cb, arg);
    if (!r)
        return ZKF_ZSYSTEMERROR;
    r->version = version;
    return start(zk, r);
}

static int watched(zkf_zk *zk, int kind, const char *path,
                   zkf_zk_watch_cb watch, void *warg, zkf_zk_cb cb,
                   void *arg)
{
    req *r;
    int rc = refuse(zk);

    if (rc != ZKF_ZOK || !path)
        return rc != ZKF_ZOK ? rc : ZKF_ZBADARGUMENTS;
    r = req_new(zk, kind, path, cb, arg);
    if (!r)
        return ZKF_ZSYSTEMERROR;
    if (watch) {
        r->w = watch_new(zk, watch, warg);
        if (!r->w) {
            msg_free(r->m);
            req_free(r);
            return ZKF_ZSYSTEMERROR;
        }
    }
    return start(zk, r);
}

int zkf_zk_get(zkf_zk *zk, const char *path, zkf_zk_watch_cb watch,
               void *warg, zkf_zk_cb cb, void *arg)
{
    return watched(zk, R_GET, path, watch, warg, cb, arg);
}

int zkf_zk_exists(zkf_zk *zk, const char *path, zkf_zk_watch_cb watch,
                  void *warg, zkf_zk_cb cb, void *arg)
{
    return watched(zk, R_EXISTS, path, watch, warg, cb, arg);
}

int zkf_zk_children(zkf_zk *zk, const char *path, zkf_zk_watch_cb watch,
                    void *warg, zkf_zk_cb cb, void *arg)
{
    return watched(zk, R_CHILDREN, path, watch, warg, cb, arg);
}

int zkf_zk_multi(zkf_zk *zk, const zkf_store_op *ops, size_t n,
                 zkf_zk_cb cb, void *arg)
{
    req *r;
    size_t i;
    int rc = refuse(zk);

    if (rc != ZKF_ZOK || (n && !ops))
        return rc != ZKF_ZOK ? rc : ZKF_ZBADARGUMENTS;
    r = req_new(zk, R_MULTI, NULL, cb, arg);
    if (!r)
        return ZKF_ZSYSTEMERROR;
    r->ops = calloc(n ? n : 1, sizeof *r->ops);
    r->zops = calloc(n ? n : 1, sizeof *r->zops);
    r->zres = calloc(n ? n : 1, sizeof *r->zres);
    r->stats = calloc(n ? n : 1, sizeof *r->stats);
    r->pbufs = calloc(n ? n : 1, sizeof *r->pbufs);
    if (!r->ops || !r->zops || !r->zres || !r->stats || !r->pbufs)
        goto oom;
    for (i = 0; i < n; i++) {
        zkf_store_op *o = &r->ops[i];
        *o = ops[i];
        o->path = dupn(ops[i].path ? ops[i].path : "",
                       ops[i].path ? strlen(ops[i].path) : 0);
        o->data = ops[i].data_len ? dupn(ops[i].data, ops[i].data_len) : NULL;
        r->pbufs[i] = malloc(strlen(o->path ? o->path : "") + 16);
        r->nops = i + 1;
        if (!o->path || (ops[i].data_len && !o->data) || !r->pbufs[i])
            goto oom;
    }
    return start(zk, r);
oom:
    msg_free(r->m);
    req_free(r);
    return ZKF_ZSYSTEMERROR;
}

/* ===================================================================
 * The loop side: delivering messages
 * =================================================================== */

static void deliver_done(zkf_zk *zk, msg *m)
{
    req *r = m->req;
    zkf_zk_result res;
    zkf_store_op_result *ors = NULL;
    zwatch *w = r->w;
    mailbox *mb = zk->mb;
    size_t i;

    req_unlink(zk, r);
    memset(&res, 0, sizeof res);
    res.rc = m->rc;
    if (res.rc == ZCLOSING && !zk->closing)
        res.rc = ZSESSIONEXPIRED;   /* the handle closed under it */
    if (zk->closing)
        res.rc = ZCLOSING;
    res.failed_index = -1;
    res.path = m->path;
    res.data = m->data;
    res.data_len = m->data_len;
    res.stat = m->has_stat && res.rc == ZOK ? &m->stat : NULL;
    res.children = (const char *const *)m->children;
    res.n_children = m->n_children;
    if (r->kind == R_MULTI && (res.rc == ZOK || res.rc < ZAPIERROR)) {
        /* A server answer: the per-op results are filled in. */
        ors = calloc(r->nops ? r->nops : 1, sizeof *ors);
        for (i = 0; ors && i < r->nops; i++) {
            int e = r->zres[i].err;
            ors[i].rc = e;
            if (res.rc != ZOK) {
                if (e != ZOK && e != ZRUNTIMEINCONSISTENCY &&
                    res.failed_index < 0) {
                    res.failed_index = (int)i;
                    res.rc = e;
                } else {
                    ors[i].rc = ZRUNTIMEINCONSISTENCY;
                }
                continue;
            }
            if (r->ops[i].type == ZKF_STORE_OP_CREATE)
                ors[i].path = r->pbufs[i];
            else if (r->ops[i].type == ZKF_STORE_OP_SET)
                copy_stat(&ors[i].stat, &r->stats[i]);
        }
        if (ors) {
            res.results = ors;
            res.n_results = r->nops;
        } else {
            res.rc = ZSYSTEMERROR;
        }
    }
    /* A watch is set only by a request that succeeded (exists: also one
     * that found no node); otherwise libzookeeper never calls it. */
    if (w && !(res.rc == ZOK || (r->kind == R_EXISTS && res.rc == ZNONODE))) {
        watch_unlink(zk, w);
        watch_free(w);
    }
    zk->tag = r->tag;
    if (r->cb)
        r->cb(zk, &res, r->arg);
    if (mb->zk == zk)   /* the callback may have freed the client */
        zk->tag = NULL;
    free(ors);
    msg_free(m);
    req_free(r);
}

static void deliver_watch(zkf_zk *zk, msg *m, int type)
{
    zwatch *w = m->w;
    zkf_zk_watch_cb cb = w->cb;
    void *arg = w->arg;

    watch_unlink(zk, w);
    cb(zk, type, m->path ? m->path : "", arg);
    msg_free(m);
    free(w);
}

static void deliver_lost(zkf_zk *zk, msg *m)
{
    mailbox *mb = zk->mb;
    zwatch *w;

    msg_free(m);
    for (;;) {
        for (w = zk->watches; w && !w->lost; w = w->next)
            ;
        if (!w)
            return;
        watch_unlink(zk, w);
        w->cb(zk, ZKF_ZK_WATCH_LOST, "", w->arg);
        watch_free(w);
        if (mb->zk != zk)
            return;
    }
}

static void dispatch(zkf_zk *zk, msg *m)
{
    switch (m->kind) {
    case M_DONE:
        deliver_done(zk, m);
        break;
    case M_WATCH:
        deliver_watch(zk, m, m->type);
        break;
    case M_SESSION:
        on_session_msg(zk, m);
        msg_free(m);
        break;
    case M_LOST:
        deliver_lost(zk, m);
        break;
    default:
        if (zk->on_session)
            zk->on_session(zk, m->state, zk->arg);
        msg_free(m);
        break;
    }
}

static void drain(zkf_zk *zk)
{
    mailbox *mb = zk->mb;
    msg *m;

    pthread_mutex_lock(&mb->mu);
    mb->refs++;
    pthread_mutex_unlock(&mb->mu);
    while (mb->zk == zk && !zk->closing) {
        m = pop(mb);
        if (!m)
            break;
        dispatch(zk, m);
    }
    mb_unref(mb);
}

/* ===================================================================
 * Blocking wait (plain Lua's main thread)
 * =================================================================== */

static int wanted(const msg *m, void *tag)
{
    return m->kind == M_SESSION || (m->kind == M_DONE && m->req->tag == tag);
}

int zkf_zk_wait(zkf_zk *zk, void *tag, const int *done, int timeout_ms)
{
    mailbox *mb = zk->mb;
    double deadline = zkf_mono_ms() + timeout_ms;
    int rc = 0;

    pthread_mutex_lock(&mb->mu);
    mb->refs++;
    pthread_mutex_unlock(&mb->mu);
    zk->waiting++;
    while (!*done && mb->zk == zk) {
        msg *m, *prev = NULL;
        double now = zkf_mono_ms(), until = deadline;
        req *r;

        pthread_mutex_lock(&mb->mu);
        for (m = mb->head; m && !wanted(m, tag); m = m->next)
            prev = m;
        if (m) {
            if (prev)
                prev->next = m->next;
            else
                mb->head = m->next;
            if (mb->tail == m)
                mb->tail = prev;
            pthread_mutex_unlock(&mb->mu);
            dispatch(zk, m);
            continue;
        }
        if (now >= deadline) {
            pthread_mutex_unlock(&mb->mu);
            rc = -1;
            break;
        }
        for (r = zk->reqs; r; r = r->next)
            if (r->held && r->deadline < until)
                until = r->deadline;
        if (until > now) {
            struct timespec ts;
            double ms = until - now + 1;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)(ms / 1000);
            ts.tv_nsec += (long)((ms - (double)(long)(ms / 1000) * 1000)
                                 * 1e6);
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&mb->cond, &mb->mu, &ts);
        }
        pthread_mutex_unlock(&mb->mu);
        expire_held(zk);
    }
    /* What was left for the loop reaches it through the wake that its
     * first push queued. */
    if (mb->zk == zk)
        zk->waiting--;
    mb_unref(mb);
    return rc;
}

/* ===================================================================
 * Life cycle
 * =================================================================== */

zkf_zk *zkf_zk_new(zkf_loop *loop, const char *hosts,
                   const zkf_zk_opts *opts, char *err, size_t errlen)
{
    zkf_zk *zk;
    pthread_condattr_t ca;

    if (!loop || !hosts || !*hosts) {
        snprintf(err, errlen, "no ZooKeeper hosts given");
        return NULL;
    }
    zk = calloc(1, sizeof *zk);
    if (!zk)
        goto oom;
    zk->loop = loop;
    zk->session_ms = opts && opts->session_timeout_ms > 0
                   ? opts->session_timeout_ms : DEFAULT_SESSION_MS;
    zk->connect_ms = opts && opts->connect_timeout_ms > 0
                   ? opts->connect_timeout_ms : zk->session_ms;
    zk->on_session = opts ? opts->on_session : NULL;
    zk->arg = opts ? opts->arg : NULL;
    zk->hosts = dupn(hosts, strlen(hosts));
    if (!zk->hosts)
        goto oom;
    if (opts && opts->auth) {
        zk->auth = dupn(opts->auth, strlen(opts->auth));
        if (!zk->auth)
            goto oom;
    }
    zk->aclp = zk->auth ? &ZOO_CREATOR_ALL_ACL : &ZOO_OPEN_ACL_UNSAFE;
    if (opts && opts->acl && parse_acl(zk, opts->acl, err, errlen) < 0)
        goto fail;
    zk->mb = calloc(1, sizeof *zk->mb);
    if (!zk->mb)
        goto oom;
    pthread_mutex_init(&zk->mb->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&zk->mb->cond, &ca);
    pthread_condattr_destroy(&ca);
    zk->mb->refs = 1;
    zk->mb->zk = zk;
    zk->mb->loop = loop;
    if (open_handle(zk) < 0) {
        snprintf(err, errlen, "%s", zk->errmsg);
        goto fail;
    }
    return zk;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    if (zk) {
        if (zk->mb) {
            zk->mb->zk = NULL;
            mb_unref(zk->mb);
        }
        acl_clear(&zk->acl);
        free(zk->hosts);
        free(zk->auth);
        free(zk);
    }
    return NULL;
}

long long zkf_zk_session_id(const zkf_zk *zk)
{
    return zk->session_id;
}

int zkf_zk_session_passwd(const zkf_zk *zk, char out[16])
{
    const clientid_t *id;

    if (!zk->zh || zk->state != ZKF_ZK_CONNECTED)
        return -1;
    id = zoo_client_id(zk->zh);
    if (!id)
        return -1;
    memcpy(out, id->passwd, 16);
    return 0;
}

const char *zkf_zk_errmsg(const zkf_zk *zk)
{
    return zk ? zk->errmsg : "";
}

void zkf_zk_set_tag(zkf_zk *zk, void *tag)
{
    zk->tag = tag;
}

void zkf_zk_free(zkf_zk *zk)
{
    mailbox *mb;
    msg *m;
    req *r;
    zwatch *w;

    if (!zk || zk->closing)
        return;
    zk->closing = 1;
    mb = zk->mb;
    if (zk->held_timer) {
        zkf_timer_stop(zk->held_timer);
        zk->held_timer = NULL;
    }
    close_handle(zk);
    /* Everything is on this thread now.  Completions first (as
     * ZCLOSING), then what was never sent, then the watches. */
    while ((m = pop(mb)) != NULL) {
        if (m->kind == M_DONE)
            deliver_done(zk, m);
        else if (m->kind == M_WATCH)
            deliver_watch(zk, m, ZKF_WATCH_CLOSED);
        else
            msg_free(m);
    }
    while ((r = zk->reqs) != NULL) {
        r->held = 0;
        r->m->rc = ZCLOSING;
        deliver_done(zk, r->m);
        while ((m = pop(mb)) != NULL)   /* a callback's own failures */
            if (m->kind == M_DONE)
                deliver_done(zk, m);
            else
                msg_free(m);
    }
    while ((w = zk->watches) != NULL) {
        watch_unlink(zk, w);
        w->cb(zk, ZKF_WATCH_CLOSED, "", w->arg);
        watch_free(w);
    }
    if (zk->on_session)
        zk->on_session(zk, ZKF_ZK_CLOSED, zk->arg);
    if (zk->pending > 0)
        zkf_loop_unref(zk->loop);
    mb->zk = NULL;
    mb_unref(mb);
    acl_clear(&zk->acl);
    free(zk->hosts);
    free(zk->auth);
    free(zk);
}
