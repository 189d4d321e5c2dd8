/*
 * test_zk.c - the ZooKeeper client (zk/zk.c) and the zk store (store/zk.c)
 * against a real server: ZKFLOW_TEST_ZK=127.0.0.1:PORT, as
 * spec/zk_test.sh starts it.  Without it every test reports itself
 * skipped, so the plain c/asan/valgrind suites pass on a machine with no
 * server.
 */
#include "test.h"
#include "zk/zk.h"
#include "loop/loop.h"

#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

static const char *hosts;
static char root[64];          /* a fresh chroot per test */
static char chroot_hosts[512];

/* ---- harness ---------------------------------------------------------- */

typedef struct env {
    zkf_pollhost *host;
    zkf_loop *loop;
    zkf_store *st;
    int states[16];
    int n_states;
} env;

typedef struct res {
    int done, rc;
    char path[256];
    char data[64];
    size_t data_len;
    int version;
    size_t n_children;
    char first_child[64];
} res;

static void on_res(const zkf_store_result *r, void *arg)
{
    res *x = arg;
    x->done = 1;
    x->rc = r->rc;
    if (r->path)
        snprintf(x->path, sizeof x->path, "%s", r->path);
    if (r->data) {
        x->data_len = r->data_len < sizeof x->data - 1 ? r->data_len
                                                        : sizeof x->data - 1;
        memcpy(x->data, r->data, x->data_len);
        x->data[x->data_len] = '\0';
    }
    if (r->stat)
        x->version = r->stat->version;
    x->n_children = r->n_children;
    if (r->n_children)
        snprintf(x->first_child, sizeof x->first_child, "%s", r->children[0]);
}

typedef struct tick {
    env *e;
    const int *flag;
    double until;
} tick;

static void tick_cb(zkf_timer *t, void *arg)
{
    tick *k = arg;
    (void)t;
    if ((k->flag && *k->flag) || zkf_mono_ms() >= k->until) {
        zkf_pollhost_stop(k->e->host);
        return;
    }
    zkf_timer_start(k->e->loop, 5, tick_cb, k);
}

/* Runs the loop until *flag or `ms` pass; returns *flag (1 without one). */
static int run_until(env *e, const int *flag, int ms)
{
    tick k = { e, flag, zkf_mono_ms() + ms };
    zkf_timer *t = zkf_timer_start(e->loop, 0, tick_cb, &k);
    (void)t;
    zkf_pollhost_run(e->host);
    return flag ? *flag : 1;
}

static void on_state(zkf_zk *zk, int state, void *arg)
{
    env *e = arg;
    (void)zk;
    if (e->n_states < 16)
        e->states[e->n_states++] = state;
}

static int saw(const env *e, int state)
{
    int i;
    for (i = 0; i < e->n_states; i++)
        if (e->states[i] == state)
            return 1;
    return 0;
}

static void env_init(env *e)
{
    memset(e, 0, sizeof *e);
    e->host = zkf_pollhost_new();
    e->loop = zkf_loop_new(zkf_pollhost_hooks(e->host));
    zkf_pollhost_attach(e->host, e->loop);
}

static zkf_store *open_zk(env *e, const char *h, int session_ms)
{
    zkf_zk_opts o;
    char err[256];
    zkf_store *s;

    memset(&o, 0, sizeof o);
    o.session_timeout_ms = session_ms;
    o.on_session = on_state;
    o.arg = e;
    s = zkf_store_zk_new(e->loop, h, &o, err, sizeof err);
    if (!s)
        fprintf(stdout, "  open: %s\n", err);
    return s;
}

/* Opens a store in a fresh chroot (made through a store without one). */
static int env_open(env *e)
{
    static int n;
    res r = {0};
    zkf_store *top;

    env_init(e);
    snprintf(root, sizeof root, "/zkflow-test-c-%d-%d", (int)getpid(), n++);
    snprintf(chroot_hosts, sizeof chroot_hosts, "%s%s", hosts, root);
    top = open_zk(e, hosts, 4000);
    if (!top)
        return -1;
    if (zkf_store_create(top, root, "", 0, 0, on_res, &r) != ZKF_ZOK ||
        !run_until(e, &r.done, 8000) || r.rc != ZKF_ZOK) {
        zkf_store_free(top);
        return -1;
    }
    zkf_store_free(top);
    e->n_states = 0;
    e->st = open_zk(e, chroot_hosts, 4000);
    return e->st ? 0 : -1;
}

static void env_close(env *e)
{
    res r = {0};
    zkf_store *top;

    zkf_store_free(e->st);
    top = open_zk(e, hosts, 4000);
    if (top) {
        zkf_store_delete(top, root, -1, ZKF_STORE_RECURSIVE, on_res, &r);
        run_until(e, &r.done, 8000);
        zkf_store_free(top);
    }
    zkf_loop_free(e->loop);
    zkf_pollhost_free(e->host);
}

#define SKIP_WITHOUT_ZK() do { if (!hosts) return; } while (0)

/* ---- tests ------------------------------------------------------------ */

static void test_zk_connects_and_reports_the_session(void)
{
    env e;
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    run_until(&e, NULL, 50);
    {
        res r = {0};
        ASSERT_EQ(ZKF_ZOK, zkf_store_exists(e.st, "/", NULL, NULL, on_res, &r));
        ASSERT_EQ(0, r.done);      /* never inside the call */
        ASSERT(run_until(&e, &r.done, 5000));
        ASSERT_EQ(ZKF_ZOK, r.rc);
    }
    ASSERT(saw(&e, ZKF_ZK_CONNECTED));
    ASSERT(zkf_zk_session_id(zkf_store_zk_client(e.st)) != 0);
    env_close(&e);
}

static void test_zk_round_trips_create_get_set_delete(void)
{
    env e;
    res r;
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    memset(&r, 0, sizeof r);
    zkf_store_create(e.st, "/a/b", "hi", 2, ZKF_STORE_PARENTS, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    ASSERT_STR_EQ("/a/b", r.path);
    memset(&r, 0, sizeof r);
    zkf_store_get(e.st, "/a/b", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_STR_EQ("hi", r.data);
    ASSERT_EQ(0, r.version);
    memset(&r, 0, sizeof r);
    zkf_store_set(e.st, "/a/b", "yo", 2, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(1, r.version);
    memset(&r, 0, sizeof r);
    zkf_store_set(e.st, "/a/b", "no", 2, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZBADVERSION, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_children(e.st, "/a", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(1, r.n_children);
    ASSERT_STR_EQ("b", r.first_child);
    memset(&r, 0, sizeof r);
    zkf_store_delete(e.st, "/a", -1, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNOTEMPTY, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_delete(e.st, "/a", -1, ZKF_STORE_RECURSIVE, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_exists(e.st, "/a/b", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    env_close(&e);
}

typedef struct wrec {
    int n, type;
} wrec;

static void on_watch(int type, const char *path, void *arg)
{
    wrec *w = arg;
    (void)path;
    w->n++;
    w->type = type;
}

static void test_zk_watch_fires_once(void)
{
    env e;
    res r = {0};
    wrec w = {0, 0};
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    zkf_store_exists(e.st, "/w", on_watch, &w, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_create(e.st, "/w", "", 0, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    memset(&r, 0, sizeof r);
    zkf_store_set(e.st, "/w", "x", 1, -1, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    run_until(&e, NULL, 100);
    ASSERT_EQ(1, w.n);
    ASSERT_EQ(ZKF_WATCH_CREATED, w.type);
    env_close(&e);
}

static void test_zk_refuses_bad_paths_and_big_data(void)
{
    env e;
    res r = {0};
    char *big;
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZBADARGUMENTS,
              zkf_store_create(e.st, "a/b", "", 0, 0, on_res, &r));
    ASSERT_EQ(ZKF_ZBADARGUMENTS,
              zkf_store_get(e.st, "/a//b", NULL, NULL, on_res, &r));
    ASSERT_EQ(ZKF_ZBADARGUMENTS,
              zkf_store_delete(e.st, "/", -1, ZKF_STORE_RECURSIVE, on_res, &r));
    big = calloc(1, 1048577);
    ASSERT(big);
    ASSERT_EQ(ZKF_ZBADARGUMENTS,
              zkf_store_create(e.st, "/big", big, 1048577, 0, on_res, &r));
    free(big);
    ASSERT_EQ(0, r.done);
    env_close(&e);
}

/* Session expiry: a second client takes over the session with its id and
 * password and closes it, so the server expires it for the first. */
typedef struct taker {
    volatile int connected;
} taker;

static void taker_watch(zhandle_t *zh, int type, int state, const char *path,
                        void *ctx)
{
    taker *t = ctx;
    (void)zh;
    (void)path;
    if (type == ZOO_SESSION_EVENT && state == ZOO_CONNECTED_STATE)
        t->connected = 1;
}

static void quiet_log(const char *m)
{
    (void)m;
}

static void test_zk_expiry_makes_a_new_session(void)
{
    env e;
    res r = {0};
    wrec w = {0, 0};
    clientid_t id;
    taker t = {0};
    zhandle_t *zh;
    zkf_zk *zk;
    long long old;
    int i;
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    zkf_store_create(e.st, "/eph", "", 0, ZKF_STORE_EPHEMERAL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_get(e.st, "/eph", on_watch, &w, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    zk = zkf_store_zk_client(e.st);
    old = zkf_zk_session_id(zk);
    id.client_id = old;
    ASSERT_EQ(0, zkf_zk_session_passwd(zk, id.passwd));
    zh = zookeeper_init2(chroot_hosts, taker_watch, 4000, &id, &t, 0,
                         quiet_log);
    ASSERT(zh);
    for (i = 0; i < 500 && !t.connected; i++)
        usleep(10000);
    zookeeper_close(zh);
    ASSERT(t.connected);
    e.n_states = 0;
    for (i = 0; i < 400 && !(saw(&e, ZKF_ZK_EXPIRED) &&
                            saw(&e, ZKF_ZK_CONNECTED)); i++)
        run_until(&e, NULL, 50);
    ASSERT(saw(&e, ZKF_ZK_EXPIRED));
    ASSERT(saw(&e, ZKF_ZK_CONNECTED));
    ASSERT(zkf_zk_session_id(zk) != old);
    ASSERT(zkf_zk_session_id(zk) != 0);
    /* The ephemeral went with the session; the watch set on it was
     * re-armed on the new session and fired for the deletion. */
    run_until(&e, NULL, 200);
    ASSERT_EQ(1, w.n);
    ASSERT_EQ(ZKF_WATCH_DELETED, w.type);
    memset(&r, 0, sizeof r);
    zkf_store_exists(e.st, "/eph", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    env_close(&e);
}

/* A multi made after the session expired but before the loop heard of it
 * (a process that wakes from a freeze past its session): it waits for the
 * new session and runs there.  zoo_amulti on the expired handle used to
 * free the ops' paths, which crashed the process with a double free. */
static void test_zk_multi_waits_out_an_expiry_the_loop_has_not_heard(void)
{
    env e;
    res r = {0};
    clientid_t id;
    taker t = {0};
    zhandle_t *zh;
    zkf_zk *zk;
    zkf_store_op ops[3];
    int i;
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    zkf_store_create(e.st, "/x", "", 0, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    zk = zkf_store_zk_client(e.st);
    id.client_id = zkf_zk_session_id(zk);
    ASSERT_EQ(0, zkf_zk_session_passwd(zk, id.passwd));
    zh = zookeeper_init2(chroot_hosts, taker_watch, 4000, &id, &t, 0,
                         quiet_log);
    ASSERT(zh);
    for (i = 0; i < 500 && !t.connected; i++)
        usleep(10000);
    zookeeper_close(zh);
    ASSERT(t.connected);
    /* The client's own thread finds the session expired; the loop does
     * not run meanwhile, so the client still takes itself for connected. */
    usleep(2500000);
    memset(ops, 0, sizeof ops);
    ops[0].type = ZKF_STORE_OP_CREATE;
    ops[0].path = "/y";
    ops[0].version = -1;
    ops[1].type = ZKF_STORE_OP_DELETE;
    ops[1].path = "/x";
    ops[1].version = -1;
    ops[2].type = ZKF_STORE_OP_CHECK;
    ops[2].path = "/y";
    ops[2].version = 0;
    memset(&r, 0, sizeof r);
    ASSERT_EQ(ZKF_ZOK, zkf_store_multi(e.st, ops, 3, on_res, &r));
    ASSERT(run_until(&e, &r.done, 8000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    ASSERT(saw(&e, ZKF_ZK_EXPIRED));
    memset(&r, 0, sizeof r);
    zkf_store_exists(e.st, "/x", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    env_close(&e);
}

static void test_zk_unreachable_ensemble_errors_within_the_timeout(void)
{
    env e;
    res r = {0};
    zkf_store *s;
    double t0;
    SKIP_WITHOUT_ZK();
    env_init(&e);
    s = open_zk(&e, "127.0.0.1:1", 1000);
    ASSERT(s);
    t0 = zkf_mono_ms();
    ASSERT_EQ(ZKF_ZOK, zkf_store_exists(s, "/", NULL, NULL, on_res, &r));
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZCONNECTIONLOSS, r.rc);
    ASSERT(zkf_mono_ms() - t0 < 3000);
    ASSERT(strstr(zkf_store_errmsg(s), "127.0.0.1:1") != NULL);
    zkf_store_free(s);
    zkf_loop_free(e.loop);
    zkf_pollhost_free(e.host);
}

static void test_zk_close_completes_pending_with_zclosing(void)
{
    env e;
    res r = {0};
    wrec w = {0, 0};
    zkf_store *s;
    SKIP_WITHOUT_ZK();
    env_init(&e);
    s = open_zk(&e, "127.0.0.1:1", 5000);
    ASSERT(s);
    ASSERT_EQ(ZKF_ZOK, zkf_store_get(s, "/x", on_watch, &w, on_res, &r));
    zkf_store_free(s);
    ASSERT_EQ(1, r.done);
    ASSERT_EQ(ZKF_ZCLOSING, r.rc);
    ASSERT_EQ(0, w.n);          /* never set: the get did not succeed */
    zkf_loop_free(e.loop);
    zkf_pollhost_free(e.host);
}

static void test_zk_multi_is_all_or_nothing(void)
{
    env e;
    res r = {0};
    zkf_store_op ops[2];
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    memset(ops, 0, sizeof ops);
    ops[0].type = ZKF_STORE_OP_CREATE;
    ops[0].path = "/m";
    ops[0].version = -1;
    ops[1].type = ZKF_STORE_OP_CHECK;
    ops[1].path = "/m";
    ops[1].version = 3;
    zkf_store_multi(e.st, ops, 2, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZBADVERSION, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_exists(e.st, "/m", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    env_close(&e);
}

static zkf_store *open_auth(env *e, const char *auth, const char *acl)
{
    zkf_zk_opts o;
    char err[256];
    zkf_store *s;

    memset(&o, 0, sizeof o);
    o.session_timeout_ms = 4000;
    o.auth = auth;
    o.acl = acl;
    s = zkf_store_zk_new(e->loop, chroot_hosts, &o, err, sizeof err);
    if (!s)
        fprintf(stdout, "  open: %s\n", err);
    return s;
}

static void test_zk_acl_refuses_a_client_without_credentials(void)
{
    env e;
    res r = {0};
    zkf_store *alice, *bob;
    char err[256];
    SKIP_WITHOUT_ZK();
    ASSERT_EQ(0, env_open(&e));
    alice = open_auth(&e, "alice:secret", NULL);   /* creator-all ACL */
    ASSERT(alice);
    zkf_store_create(alice, "/sec", "s", 1, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_get(e.st, "/sec", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNOAUTH, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_get(alice, "/sec", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    ASSERT_STR_EQ("s", r.data);
    /* A readable-by-all list: world may read, not write. */
    bob = open_auth(&e, "bob:pw", "auth::rwcda,world:anyone:r");
    ASSERT(bob);
    memset(&r, 0, sizeof r);
    zkf_store_create(bob, "/pub", "p", 1, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_get(e.st, "/pub", NULL, NULL, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    memset(&r, 0, sizeof r);
    zkf_store_set(e.st, "/pub", "x", 1, -1, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZNOAUTH, r.rc);
    zkf_store_free(bob);
    zkf_store_free(alice);
    /* The chroot's cleanup must be able to delete what alice made. */
    alice = open_auth(&e, "alice:secret", NULL);
    ASSERT(alice);
    memset(&r, 0, sizeof r);
    zkf_store_delete(alice, "/sec", -1, 0, on_res, &r);
    ASSERT(run_until(&e, &r.done, 5000));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    zkf_store_free(alice);
    ASSERT(zkf_store_zk_new(e.loop, hosts, &(zkf_zk_opts){ .acl = "bad" },
                            err, sizeof err) == NULL);
    ASSERT(strstr(err, "bad ACL entry") != NULL);
    env_close(&e);
}

int main(void)
{
    hosts = getenv("ZKFLOW_TEST_ZK");
    if (hosts && !*hosts)
        hosts = NULL;
    if (!hosts) {
        printf("ok test_zk (skipped: no ZKFLOW_TEST_ZK)\n");
        return test_report();
    }
    RUN(test_zk_connects_and_reports_the_session);
    RUN(test_zk_round_trips_create_get_set_delete);
    RUN(test_zk_watch_fires_once);
    RUN(test_zk_refuses_bad_paths_and_big_data);
    RUN(test_zk_expiry_makes_a_new_session);
    RUN(test_zk_multi_waits_out_an_expiry_the_loop_has_not_heard);
    RUN(test_zk_unreachable_ensemble_errors_within_the_timeout);
    RUN(test_zk_close_completes_pending_with_zclosing);
    RUN(test_zk_multi_is_all_or_nothing);
    RUN(test_zk_acl_refuses_a_client_without_credentials);
    return test_report();
}
