/*
 * test_store.c - the SQLite store: znode semantics, group commit, watches,
 * ephemerals across processes.
 *
 * Child processes are this binary re-executed with a mode argument (see
 * main), so they start clean: no inherited SQLite connection, nothing for
 * valgrind to report in a forked copy.
 */
#include "test.h"
#include "store/store.h"
#include "loop/loop.h"

#include <stdint.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static char db_path[256];
static char self_exe[1024];

/* ---- harness ---------------------------------------------------------- */

typedef struct env {
    zkf_pollhost *host;
    zkf_loop *loop;
    zkf_store *st;
} env;

static zkf_store *open_store(zkf_loop *loop, const char *sync)
{
    zkf_sqlite_opts o = { sync, 0, 20 };
    char err[256];
    zkf_store *s = zkf_store_sqlite_new(loop, db_path, &o, err, sizeof err);
    if (!s)
        fprintf(stderr, "open: %s\n", err);
    return s;
}

static void fresh_db(void)
{
    char p[300];
    static int n;
    snprintf(db_path, sizeof db_path, "/tmp/zkf_test_store_%d_%d.db",
             (int)getpid(), n++);
    unlink(db_path);
    snprintf(p, sizeof p, "%s-wal", db_path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", db_path);
    unlink(p);
}

static void remove_db(void)
{
    char p[300];
    unlink(db_path);
    snprintf(p, sizeof p, "%s-wal", db_path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", db_path);
    unlink(p);
}

static int env_open(env *e)
{
    fresh_db();
    e->host = zkf_pollhost_new();
    e->loop = zkf_loop_new(zkf_pollhost_hooks(e->host));
    zkf_pollhost_attach(e->host, e->loop);
    e->st = open_store(e->loop, "normal");
    return e->st ? 0 : -1;
}

static void env_close(env *e)
{
    zkf_store_free(e->st);
    zkf_loop_free(e->loop);
    zkf_pollhost_free(e->host);
    remove_db();
}

/* A completion that copies what the tests look at. */
typedef struct res {
    int called;
    int rc;
    char path[256];
    char data[256];
    size_t data_len;
    zkf_stat stat;
    int has_stat;
    char children[16][64];
    size_t n_children;
    int failed_index;
    int op_rc[8];
    char op_path[8][64];
} res;

static void collect(const zkf_store_result *r, void *arg)
{
    res *x = arg;
    size_t i;

    memset(x, 0, sizeof *x);
    x->called = 1;
    x->rc = r->rc;
    if (r->path)
        snprintf(x->path, sizeof x->path, "%s", r->path);
    if (r->data) {
        x->data_len = r->data_len;
        memcpy(x->data, r->data, r->data_len < 255 ? r->data_len : 255);
    }
    if (r->stat) {
        x->stat = *r->stat;
        x->has_stat = 1;
    }
    for (i = 0; i < r->n_children && i < 16; i++)
        snprintf(x->children[i], 64, "%s", r->children[i]);
    x->n_children = r->n_children;
    x->failed_index = r->failed_index;
    for (i = 0; i < r->n_results && i < 8; i++) {
        x->op_rc[i] = r->results[i].rc;
        if (r->results[i].path)
            snprintf(x->op_path[i], 64, "%s", r->results[i].path);
    }
}

/* These return the completion's rc, 999 when it did not complete before
 * the call returned, 998 when the call refused. */
static int do_create(zkf_store *s, const char *path, const char *data,
                     int flags, res *out)
{
    res tmp;
    if (!out)
        out = &tmp;
    out->called = 0;
    if (zkf_store_create(s, path, data, data ? strlen(data) : 0, flags,
                         collect, out) != ZKF_ZOK)
        return 998;
    return out->called ? out->rc : 999;
}

static int do_get(zkf_store *s, const char *path, res *out)
{
    out->called = 0;
    if (zkf_store_get(s, path, NULL, NULL, collect, out) != ZKF_ZOK)
        return 998;
    return out->called ? out->rc : 999;
}

static int do_set(zkf_store *s, const char *path, const char *data,
                  int version, res *out)
{
    res tmp;
    if (!out)
        out = &tmp;
    out->called = 0;
    if (zkf_store_set(s, path, data, strlen(data), version, collect,
                      out) != ZKF_ZOK)
        return 998;
    return out->called ? out->rc : 999;
}

static int do_delete(zkf_store *s, const char *path, int version, int flags)
{
    res out = {0};
    if (zkf_store_delete(s, path, version, flags, collect, &out) != ZKF_ZOK)
        return 998;
    return out.called ? out.rc : 999;
}

static int do_exists(zkf_store *s, const char *path)
{
    res out = {0};
    if (zkf_store_exists(s, path, NULL, NULL, collect, &out) != ZKF_ZOK)
        return 998;
    return out.called ? out.rc : 999;
}

static int do_children(zkf_store *s, const char *path, res *out)
{
    out->called = 0;
    if (zkf_store_children(s, path, NULL, NULL, collect, out) != ZKF_ZOK)
        return 998;
    return out->called ? out->rc : 999;
}

/* Watches record what they saw. */
typedef struct wrec {
    int fired;
    int type;
    char path[128];
    zkf_pollhost *stop;
} wrec;

static void on_watch(int type, const char *path, void *arg)
{
    wrec *w = arg;
    w->fired++;
    w->type = type;
    snprintf(w->path, sizeof w->path, "%s", path);
    if (w->stop && type != ZKF_WATCH_CLOSED)
        zkf_pollhost_stop(w->stop);
}

typedef struct deadline {
    zkf_pollhost *host;
    int fired;
} deadline;

static void on_deadline(zkf_timer *t, void *arg)
{
    deadline *d = arg;
    (void)t;
    d->fired = 1;
    zkf_pollhost_stop(d->host);
}

/* Runs the loop until a watch stops it or `ms` pass. */
static void run_for(env *e, double ms)
{
    deadline d = { e->host, 0 };
    zkf_timer *t = zkf_timer_start(e->loop, ms, on_deadline, &d);
    zkf_pollhost_run(e->host);
    if (!d.fired)
        zkf_timer_stop(t);
}

/* ---- tests ------------------------------------------------------------ */

static void test_store_errnames(void)
{
    ASSERT_STR_EQ("ZOK", zkf_store_errname(ZKF_ZOK));
    ASSERT_STR_EQ("ZNONODE", zkf_store_errname(-101));
    ASSERT_STR_EQ("ZNODEEXISTS", zkf_store_errname(-110));
    ASSERT_STR_EQ("ZCLOSING", zkf_store_errname(-116));
    ASSERT_STR_EQ("ZUNKNOWN", zkf_store_errname(-9999));
    ASSERT_EQ(-108, ZKF_ZNOCHILDRENFOREPHEMERALS);
    ASSERT_EQ(-117, ZKF_ZNOTHING);
}

static void test_store_rejects_bad_options(void)
{
    zkf_pollhost *h = zkf_pollhost_new();
    zkf_loop *l = zkf_loop_new(zkf_pollhost_hooks(h));
    zkf_sqlite_opts o = { "sometimes", 0, 0 };
    char err[256];

    zkf_pollhost_attach(h, l);
    fresh_db();
    ASSERT(zkf_store_sqlite_new(l, db_path, &o, err, sizeof err) == NULL);
    ASSERT(strstr(err, "synchronous") != NULL);
    ASSERT(zkf_store_sqlite_new(l, "/nonexistent/dir/x.db", NULL, err,
                                sizeof err) == NULL);
    ASSERT(strstr(err, "/nonexistent/dir/x.db") != NULL);
    zkf_loop_free(l);
    zkf_pollhost_free(h);
    remove_db();
}

static void test_store_create_get_set(void)
{
    env e;
    res r, g;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/a", "hello", 0, &r));
    ASSERT_STR_EQ("/a", r.path);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/a", &g));
    ASSERT_EQ(5, g.data_len);
    ASSERT_STR_EQ("hello", g.data);
    ASSERT_EQ(0, g.stat.version);
    ASSERT_EQ(5, g.stat.data_length);
    ASSERT_EQ(0, g.stat.ephemeral_owner);
    ASSERT(g.stat.czxid > 0);
    ASSERT_EQ(g.stat.czxid, g.stat.mzxid);
    ASSERT(g.stat.ctime > 1600000000000LL);

    ASSERT_EQ(ZKF_ZOK, do_set(e.st, "/a", "bye", -1, &r));
    ASSERT_EQ(1, r.stat.version);
    ASSERT_EQ(3, r.stat.data_length);
    ASSERT(r.stat.mzxid > g.stat.mzxid);
    ASSERT_EQ(ZKF_ZOK, do_set(e.st, "/a", "again", 1, &r));
    ASSERT_EQ(2, r.stat.version);
    ASSERT_EQ(ZKF_ZBADVERSION, do_set(e.st, "/a", "x", 1, NULL));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/a", &g));
    ASSERT_STR_EQ("again", g.data);
    ASSERT_EQ(ZKF_ZNONODE, do_set(e.st, "/nope", "x", -1, NULL));
    ASSERT_EQ(ZKF_ZNONODE, do_get(e.st, "/nope", &g));

    /* empty data is kept as empty, not missing */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/empty", NULL, 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/empty", &g));
    ASSERT_EQ(0, g.data_len);
    ASSERT_EQ(0, g.stat.data_length);
    env_close(&e);
}

static void test_store_binary_data(void)
{
    env e;
    res r;
    static const char bin[] = {'a', '\0', 'b', '\xff'};
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, zkf_store_create(e.st, "/b", bin, 4, 0, collect, &r));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/b", &r));
    ASSERT_EQ(4, r.data_len);
    ASSERT(memcmp(bin, r.data, 4) == 0);
    env_close(&e);
}

static void test_store_create_errors(void)
{
    env e;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/a", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNODEEXISTS, do_create(e.st, "/a", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNODEEXISTS, do_create(e.st, "/", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNONODE, do_create(e.st, "/x/y", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/eph", "", ZKF_STORE_EPHEMERAL,
                                 NULL));
    ASSERT_EQ(ZKF_ZNOCHILDRENFOREPHEMERALS,
              do_create(e.st, "/eph/c", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNOCHILDRENFOREPHEMERALS,
              do_create(e.st, "/eph/c/d", "", ZKF_STORE_PARENTS, NULL));
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/eph/c"));
    env_close(&e);
}

static void test_store_bad_paths(void)
{
    static const char *const bad[] = {
        "", "a", "a/b", "/a/", "//", "/a//b", "/.", "/a/./b", "/a/..",
        "/../a", "/a\001b", "/a\177",
    };
    env e;
    res r;
    size_t i;
    ASSERT_EQ(0, env_open(&e));
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (do_create(e.st, bad[i], "", 0, NULL) != ZKF_ZBADARGUMENTS)
            TEST_FAIL_("create accepted \"%s\"", bad[i]);
        if (do_get(e.st, bad[i], &r) != ZKF_ZBADARGUMENTS)
            TEST_FAIL_("get accepted \"%s\"", bad[i]);
        if (do_set(e.st, bad[i], "", -1, NULL) != ZKF_ZBADARGUMENTS)
            TEST_FAIL_("set accepted \"%s\"", bad[i]);
        if (do_delete(e.st, bad[i], -1, 0) != ZKF_ZBADARGUMENTS)
            TEST_FAIL_("delete accepted \"%s\"", bad[i]);
        if (do_exists(e.st, bad[i]) != ZKF_ZBADARGUMENTS)
            TEST_FAIL_("exists accepted \"%s\"", bad[i]);
        if (do_children(e.st, bad[i], &r) != ZKF_ZBADARGUMENTS)
            TEST_FAIL_("children accepted \"%s\"", bad[i]);
    }
    /* names that merely contain dots are fine */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/a.b", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/...", "", 0, NULL));
    ASSERT_EQ(ZKF_ZBADARGUMENTS, do_delete(e.st, "/", -1, 0));
    env_close(&e);
}

static void test_store_data_limit(void)
{
    env e;
    res r;
    char *big = calloc(1, 1048577);
    ASSERT(big != NULL);
    if (env_open(&e) != 0) {
        free(big);
        TEST_FAIL_("open");
    }
    zkf_store_create(e.st, "/big", big, 1048576, 0, collect, &r);
    ASSERT_EQ(ZKF_ZOK, r.rc);
    zkf_store_create(e.st, "/big2", big, 1048577, 0, collect, &r);
    ASSERT_EQ(ZKF_ZBADARGUMENTS, r.rc);
    zkf_store_set(e.st, "/big", big, 1048577, -1, collect, &r);
    ASSERT_EQ(ZKF_ZBADARGUMENTS, r.rc);
    zkf_store_exists(e.st, "/big", NULL, NULL, collect, &r);
    ASSERT_EQ(1048576, r.stat.data_length);
    free(big);
    env_close(&e);
}

static void test_store_parents(void)
{
    env e;
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/q/r", "leaf", ZKF_STORE_PARENTS,
                                 &r));
    ASSERT_STR_EQ("/p/q/r", r.path);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p/q", &r));
    ASSERT_EQ(0, r.data_len);
    ASSERT_EQ(0, r.stat.ephemeral_owner);
    ASSERT_EQ(1, r.stat.num_children);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p/q/r", &r));
    ASSERT_STR_EQ("leaf", r.data);
    /* existing ancestors are left alone */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/q/s", "", ZKF_STORE_PARENTS,
                                 NULL));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p/q", &r));
    ASSERT_EQ(2, r.stat.num_children);
    ASSERT_EQ(ZKF_ZNODEEXISTS, do_create(e.st, "/p/q/s", "",
                                         ZKF_STORE_PARENTS, NULL));
    env_close(&e);
}

static void test_store_sequential_names(void)
{
    env e;
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/q", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/q/n-", "", ZKF_STORE_SEQUENTIAL,
                                 &r));
    ASSERT_STR_EQ("/q/n-0000000000", r.path);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/q/n-", "", ZKF_STORE_SEQUENTIAL,
                                 &r));
    ASSERT_STR_EQ("/q/n-0000000001", r.path);
    /* the counter is the parent's cversion: deletes advance it too */
    ASSERT_EQ(ZKF_ZOK, do_delete(e.st, "/q/n-0000000001", -1, 0));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/q/other", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/q/", "",
                                 ZKF_STORE_SEQUENTIAL | ZKF_STORE_EPHEMERAL,
                                 &r));
    ASSERT_STR_EQ("/q/0000000004", r.path);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/q/0000000004", &r));
    ASSERT(r.stat.ephemeral_owner != 0);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/s/x-", "",
                                 ZKF_STORE_SEQUENTIAL | ZKF_STORE_PARENTS,
                                 &r));
    ASSERT_STR_EQ("/s/x-0000000000", r.path);
    env_close(&e);
}

static void test_store_versions_and_cversion(void)
{
    env e;
    res r, before;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/v", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/v", &before));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/v/a", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/v/b", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_delete(e.st, "/v/a", -1, 0));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/v", &r));
    ASSERT_EQ(3, r.stat.cversion);
    ASSERT_EQ(1, r.stat.num_children);
    ASSERT_EQ(0, r.stat.version);
    ASSERT_EQ(before.stat.mzxid, r.stat.mzxid);
    ASSERT(r.stat.pzxid > before.stat.pzxid);
    ASSERT_EQ(ZKF_ZOK, do_set(e.st, "/v/b", "1", -1, NULL));
    ASSERT_EQ(ZKF_ZBADVERSION, do_delete(e.st, "/v/b", 0, 0));
    ASSERT_EQ(ZKF_ZOK, do_delete(e.st, "/v/b", 1, 0));
    ASSERT_EQ(ZKF_ZNONODE, do_delete(e.st, "/v/b", -1, 0));
    env_close(&e);
}

static void test_store_children_sorted(void)
{
    env e;
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_children(e.st, "/", &r));
    ASSERT_EQ(0, r.n_children);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/c", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/c/zeta", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/c/alpha", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/c/mid", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/c/mid/deep", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/cc", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_children(e.st, "/c", &r));
    ASSERT_EQ(3, r.n_children);
    ASSERT_STR_EQ("alpha", r.children[0]);
    ASSERT_STR_EQ("mid", r.children[1]);
    ASSERT_STR_EQ("zeta", r.children[2]);
    ASSERT_EQ(ZKF_ZOK, do_children(e.st, "/", &r));
    ASSERT_EQ(2, r.n_children);
    ASSERT_STR_EQ("c", r.children[0]);
    ASSERT_STR_EQ("cc", r.children[1]);
    ASSERT_EQ(ZKF_ZNONODE, do_children(e.st, "/none", &r));
    env_close(&e);
}

static void test_store_delete_recursive(void)
{
    env e;
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/t/a/b", "", ZKF_STORE_PARENTS,
                                 NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/t/c", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/t0", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/t.x", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNOTEMPTY, do_delete(e.st, "/t", -1, 0));
    ASSERT_EQ(ZKF_ZBADVERSION, do_delete(e.st, "/t", 5,
                                         ZKF_STORE_RECURSIVE));
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/t/a/b"));
    ASSERT_EQ(ZKF_ZOK, do_delete(e.st, "/t", -1, ZKF_STORE_RECURSIVE));
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/t"));
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/t/a/b"));
    /* neighbours that share the prefix survive */
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/t0"));
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/t.x"));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/", &r));
    ASSERT_EQ(2, r.stat.num_children);
    env_close(&e);
}

static void test_store_multi_commits_all(void)
{
    env e;
    res r;
    zkf_store_op ops[4] = {
        { ZKF_STORE_OP_CREATE, "/m", "x", 1, 0, -1 },
        { ZKF_STORE_OP_CREATE, "/m/s-", "", 0, ZKF_STORE_SEQUENTIAL, -1 },
        { ZKF_STORE_OP_SET, "/m", "y", 1, 0, 0 },
        { ZKF_STORE_OP_CHECK, "/m", NULL, 0, 0, 1 },
    };
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, zkf_store_multi(e.st, ops, 4, collect, &r));
    ASSERT_EQ(ZKF_ZOK, r.rc);
    ASSERT_EQ(-1, r.failed_index);
    ASSERT_STR_EQ("/m", r.op_path[0]);
    ASSERT_STR_EQ("/m/s-0000000000", r.op_path[1]);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/m", &r));
    ASSERT_STR_EQ("y", r.data);
    ASSERT_EQ(1, r.stat.version);
    env_close(&e);
}

static void test_store_multi_rolls_back(void)
{
    env e;
    res r;
    zkf_store_op ops[4] = {
        { ZKF_STORE_OP_CREATE, "/r", "x", 1, 0, -1 },
        { ZKF_STORE_OP_SET, "/keep", "changed", 7, 0, -1 },
        { ZKF_STORE_OP_DELETE, "/keep", NULL, 0, 0, 3 },
        { ZKF_STORE_OP_CREATE, "/r2", "", 0, 0, -1 },
    };
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/keep", "orig", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, zkf_store_multi(e.st, ops, 4, collect, &r));
    ASSERT_EQ(ZKF_ZBADVERSION, r.rc);
    ASSERT_EQ(2, r.failed_index);
    ASSERT_EQ(ZKF_ZOK, r.op_rc[0]);
    ASSERT_EQ(ZKF_ZBADVERSION, r.op_rc[2]);
    ASSERT_EQ(ZKF_ZRUNTIMEINCONSISTENCY, r.op_rc[3]);
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/r"));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/keep", &r));
    ASSERT_STR_EQ("orig", r.data);
    ASSERT_EQ(0, r.stat.version);
    /* the store goes on working after a rollback, in the same turn */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/after", "", 0, NULL));
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/after"));
    env_close(&e);
}

static void test_store_ephemerals_go_at_close(void)
{
    env e;
    zkf_store *other;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/svc", "", 0, NULL));
    zkf_loop_end_turn(e.loop);
    other = open_store(e.loop, "normal");
    ASSERT(other != NULL);
    ASSERT_EQ(ZKF_ZOK, do_create(other, "/svc/me", "", ZKF_STORE_EPHEMERAL,
                                 NULL));
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/svc/me"));
    zkf_store_free(other);
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/svc/me"));
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/svc"));
    env_close(&e);
}

/* Child modes: run by re-executing this binary. */
static int child_ephemeral_then_die(const char *db)
{
    zkf_pollhost *h = zkf_pollhost_new();
    zkf_loop *l = zkf_loop_new(zkf_pollhost_hooks(h));
    zkf_store *s;
    char err[256];

    zkf_pollhost_attach(h, l);
    s = zkf_store_sqlite_new(l, db, NULL, err, sizeof err);
    if (!s)
        return 3;
    if (do_create(s, "/svc/child", "", ZKF_STORE_EPHEMERAL, NULL) != 0)
        return 4;
    if (zkf_store_flush(s) != ZKF_ZOK)
        return 5;
    _exit(0);   /* no close: the session dies with the process */
}

static int child_set(const char *db, const char *path)
{
    zkf_pollhost *h = zkf_pollhost_new();
    zkf_loop *l = zkf_loop_new(zkf_pollhost_hooks(h));
    zkf_store *s;
    char err[256];
    int rc;

    zkf_pollhost_attach(h, l);
    s = zkf_store_sqlite_new(l, db, NULL, err, sizeof err);
    if (!s)
        return 3;
    rc = do_set(s, path, "from child", -1, NULL);
    zkf_store_free(s);
    zkf_loop_free(l);
    zkf_pollhost_free(h);
    return rc == ZKF_ZOK ? 0 : 4;
}

static int spawn_child(const char *mode, const char *a, const char *b)
{
    pid_t pid = fork();
    int status;

    if (pid == 0) {
        execl(self_exe, self_exe, mode, a, b, (char *)NULL);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
}

static void test_store_reaps_dead_sessions(void)
{
    env e;
    zkf_store *again;
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/svc", "", 0, NULL));
    zkf_store_flush(e.st);
    ASSERT_EQ(0, spawn_child("ephemeral-then-die", db_path, ""));
    /* our own open handle does not reap: only a new open does */
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/svc/child"));
    again = open_store(e.loop, "normal");
    ASSERT(again != NULL);
    ASSERT_EQ(ZKF_ZNONODE, do_exists(again, "/svc/child"));
    ASSERT_EQ(ZKF_ZOK, do_get(again, "/svc", &r));
    ASSERT_EQ(0, r.stat.num_children);
    ASSERT_EQ(2, r.stat.cversion);
    zkf_store_free(again);
    env_close(&e);
}

static void test_store_watch_fires_once_on_the_loop(void)
{
    env e;
    wrec w = {0}, c = {0}, d = {0};
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, zkf_store_exists(e.st, "/w", on_watch, &w, collect,
                                        &r));
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    ASSERT_EQ(ZKF_ZOK, zkf_store_children(e.st, "/", on_watch, &c, collect,
                                          &r));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/w", "1", 0, NULL));
    /* never from inside the call that caused the change */
    ASSERT_EQ(0, w.fired);
    ASSERT_EQ(0, c.fired);
    ASSERT_EQ(ZKF_ZOK, do_set(e.st, "/w", "2", -1, NULL));
    run_for(&e, 50);
    ASSERT_EQ(1, w.fired);
    ASSERT_EQ(ZKF_WATCH_CREATED, w.type);
    ASSERT_STR_EQ("/w", w.path);
    ASSERT_EQ(1, c.fired);
    ASSERT_EQ(ZKF_WATCH_CHILD, c.type);
    ASSERT_STR_EQ("/", c.path);

    /* get watch: changed, then nothing more */
    ASSERT_EQ(ZKF_ZOK, zkf_store_get(e.st, "/w", on_watch, &d, collect, &r));
    ASSERT_EQ(ZKF_ZOK, do_set(e.st, "/w", "3", -1, NULL));
    ASSERT_EQ(ZKF_ZOK, do_set(e.st, "/w", "4", -1, NULL));
    run_for(&e, 50);
    ASSERT_EQ(1, d.fired);
    ASSERT_EQ(ZKF_WATCH_CHANGED, d.type);
    ASSERT_EQ(1, w.fired);
    env_close(&e);
}

static void test_store_watch_on_delete(void)
{
    env e;
    wrec g = {0}, ch = {0}, ex = {0}, par = {0};
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/d/x", "", ZKF_STORE_PARENTS, NULL));
    zkf_store_get(e.st, "/d/x", on_watch, &g, collect, &r);
    zkf_store_children(e.st, "/d/x", on_watch, &ch, collect, &r);
    zkf_store_exists(e.st, "/d/x", on_watch, &ex, collect, &r);
    zkf_store_children(e.st, "/d", on_watch, &par, collect, &r);
    ASSERT_EQ(ZKF_ZOK, do_delete(e.st, "/d", -1, ZKF_STORE_RECURSIVE));
    run_for(&e, 50);
    ASSERT_EQ(1, g.fired);
    ASSERT_EQ(ZKF_WATCH_DELETED, g.type);
    ASSERT_EQ(1, ch.fired);
    ASSERT_EQ(ZKF_WATCH_DELETED, ch.type);
    ASSERT_EQ(1, ex.fired);
    ASSERT_EQ(ZKF_WATCH_DELETED, ex.type);
    ASSERT_EQ(1, par.fired);
    env_close(&e);
}

static void test_store_watch_not_fired_by_rolled_back_multi(void)
{
    env e;
    wrec w = {0};
    res r;
    zkf_store_op ops[2] = {
        { ZKF_STORE_OP_CREATE, "/rb", "", 0, 0, -1 },
        { ZKF_STORE_OP_CHECK, "/missing", NULL, 0, 0, -1 },
    };
    ASSERT_EQ(0, env_open(&e));
    zkf_store_exists(e.st, "/rb", on_watch, &w, collect, &r);
    zkf_store_multi(e.st, ops, 2, collect, &r);
    ASSERT_EQ(ZKF_ZNONODE, r.rc);
    ASSERT_EQ(1, r.failed_index);
    run_for(&e, 40);
    ASSERT_EQ(0, w.fired);
    /* still armed: closing tells it once */
    zkf_store_free(e.st);
    e.st = NULL;
    ASSERT_EQ(1, w.fired);
    ASSERT_EQ(ZKF_WATCH_CLOSED, w.type);
    env_close(&e);
}

static void test_store_watch_sees_other_process(void)
{
    env e;
    wrec w = {0};
    res r;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/x", "v", 0, NULL));
    zkf_store_flush(e.st);
    w.stop = e.host;
    ASSERT_EQ(ZKF_ZOK, zkf_store_get(e.st, "/x", on_watch, &w, collect, &r));
    ASSERT_EQ(0, spawn_child("set", db_path, "/x"));
    ASSERT_EQ(0, w.fired);
    run_for(&e, 2000);
    ASSERT_EQ(1, w.fired);
    ASSERT_EQ(ZKF_WATCH_CHANGED, w.type);
    ASSERT_STR_EQ("/x", w.path);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/x", &r));
    ASSERT_STR_EQ("from child", r.data);
    env_close(&e);
}

static void test_store_group_commit_at_turn_end(void)
{
    env e;
    zkf_store *reader;
    int i;
    char p[32];
    ASSERT_EQ(0, env_open(&e));
    reader = open_store(e.loop, "normal");
    ASSERT(reader != NULL);
    for (i = 0; i < 100; i++) {
        snprintf(p, sizeof p, "/g%d", i);
        ASSERT_EQ(ZKF_ZOK, do_create(e.st, p, "", 0, NULL));
    }
    /* the writer sees its own turn; another connection does not yet */
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/g99"));
    ASSERT_EQ(ZKF_ZNONODE, do_exists(reader, "/g0"));
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_exists(reader, "/g0"));
    ASSERT_EQ(ZKF_ZOK, do_exists(reader, "/g99"));
    /* flush commits without waiting for the turn */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/flushed", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNONODE, do_exists(reader, "/flushed"));
    ASSERT_EQ(ZKF_ZOK, zkf_store_flush(e.st));
    ASSERT_EQ(ZKF_ZOK, do_exists(reader, "/flushed"));
    zkf_store_free(reader);
    env_close(&e);
}

static void test_store_survives_reopen(void)
{
    env e;
    res r;
    int64_t zxid;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/keep", "data", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/keep", &r));
    zxid = r.stat.czxid;
    zkf_store_free(e.st);
    e.st = open_store(e.loop, "full");
    ASSERT(e.st != NULL);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/keep", &r));
    ASSERT_STR_EQ("data", r.data);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/next", "", 0, &r));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/next", &r));
    ASSERT(r.stat.czxid > zxid);
    env_close(&e);
}

static void test_store_many_writes_in_one_turn(void)
{
    env e;
    res r;
    char p[64];
    int i;
    double t0;
    ASSERT_EQ(0, env_open(&e));
    t0 = zkf_mono_ms();
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/runs/d/r", "",
                                 ZKF_STORE_PARENTS, NULL));
    for (i = 0; i < 10000; i++) {
        snprintf(p, sizeof p, "/runs/d/r/task%05d", i);
        if (do_create(e.st, p, "{\"state\":\"queued\"}", 0, NULL) != 0)
            TEST_FAIL_("create %s", p);
    }
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/runs/d/r", &r));
    ASSERT_EQ(10000, r.stat.num_children);
    if (getenv("ZKF_TEST_VERBOSE"))
        printf("  10000 creates + commit: %.0f ms\n", zkf_mono_ms() - t0);
    env_close(&e);
}

/* A watch that frees the store it belongs to, as `st:close()` inside a Lua
 * watch does. */
typedef struct closer {
    env *e;
    int calls;
} closer;

static void on_watch_close_store(int type, const char *path, void *arg)
{
    closer *c = arg;
    (void)path;
    c->calls++;
    if (type != ZKF_WATCH_CLOSED && c->e->st) {
        zkf_store *st = c->e->st;
        c->e->st = NULL;
        zkf_store_free(st);
    }
}

static void test_store_freed_inside_a_watch(void)
{
    env e;
    closer a = { &e, 0 }, b = { &e, 0 };
    wrec later = {0};
    res r;
    ASSERT_EQ(0, env_open(&e));
    zkf_store_exists(e.st, "/a", on_watch_close_store, &a, collect, &r);
    zkf_store_exists(e.st, "/a", on_watch_close_store, &b, collect, &r);
    zkf_store_exists(e.st, "/later", on_watch, &later, collect, &r);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/a", "", 0, NULL));
    run_for(&e, 30);
    /* the first closed the store; the second, queued in the same batch,
     * and the one never triggered hear ZKF_WATCH_CLOSED, once each */
    ASSERT_EQ(1, a.calls);
    ASSERT_EQ(1, b.calls);
    ASSERT_EQ(1, later.fired);
    ASSERT_EQ(ZKF_WATCH_CLOSED, later.type);
    ASSERT(e.st == NULL);
    env_close(&e);
}

static void test_store_free_before_fire_closes_queued(void)
{
    env e;
    wrec w = {0};
    res r;
    ASSERT_EQ(0, env_open(&e));
    zkf_store_exists(e.st, "/q", on_watch, &w, collect, &r);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/q", "", 0, NULL));
    zkf_store_free(e.st);
    e.st = NULL;
    ASSERT_EQ(1, w.fired);
    ASSERT_EQ(ZKF_WATCH_CLOSED, w.type);
    env_close(&e);
}

static void test_store_opens_while_another_handle_writes(void)
{
    env e;
    zkf_store *second;
    zkf_sqlite_opts o = { "normal", 100, 0 };
    char err[256];
    double t0;
    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/busy", "", 0, NULL));
    /* e.st holds the write lock for its turn: opening and reading through
     * another handle must not wait for it */
    t0 = zkf_mono_ms();
    second = zkf_store_sqlite_new(e.loop, db_path, &o, err, sizeof err);
    ASSERT(second != NULL);
    ASSERT_EQ(ZKF_ZNONODE, do_exists(second, "/busy"));
    ASSERT(zkf_mono_ms() - t0 < 90);
    /* its first write does wait, and gives up after busy_timeout */
    ASSERT_EQ(ZKF_ZOPERATIONTIMEOUT, do_create(second, "/other", "", 0,
                                               NULL));
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_create(second, "/other", "", 0, NULL));
    zkf_store_free(second);
    env_close(&e);
}

/* A run of creates under one parent reads and writes the parent once
 * (store/sqlite.c's parent cache); everything a reader sees in between must
 * be as if each create had updated it. */
static void test_store_creates_under_one_parent_keep_its_stat(void)
{
    env e;
    res r;
    int64_t last_czxid = 0;

    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p", "", 0, NULL));
    zkf_loop_end_turn(e.loop);
    for (int i = 0; i < 5; i++) {
        char path[32];
        snprintf(path, sizeof path, "/p/c%d", i);
        ASSERT_EQ(ZKF_ZOK, do_create(e.st, path, "x", 0, &r));
    }
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/s-", "", ZKF_STORE_SEQUENTIAL, &r));
    ASSERT_STR_EQ("/p/s-0000000005", r.path);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p/s-0000000005", &r));
    last_czxid = r.stat.czxid;
    /* in the same turn, before the commit */
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p", &r));
    ASSERT_EQ(6, r.stat.num_children);
    ASSERT_EQ(6, r.stat.cversion);
    ASSERT_EQ(last_czxid, r.stat.pzxid);
    ASSERT_EQ(ZKF_ZOK, do_children(e.st, "/p", &r));
    ASSERT_EQ(6, r.n_children);
    /* more creates after a read, then after the commit */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/c9", "x", 0, NULL));
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/s-", "", ZKF_STORE_SEQUENTIAL, &r));
    ASSERT_STR_EQ("/p/s-0000000007", r.path);
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p", &r));
    ASSERT_EQ(8, r.stat.num_children);
    ASSERT_EQ(8, r.stat.cversion);
    env_close(&e);
}

static void test_store_cached_parent_forgets_a_deleted_parent(void)
{
    env e;
    res r;

    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/a", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/b", "", 0, NULL));
    ASSERT_EQ(ZKF_ZNOTEMPTY, do_delete(e.st, "/p", -1, 0));
    ASSERT_EQ(ZKF_ZOK, do_delete(e.st, "/p", -1, ZKF_STORE_RECURSIVE));
    ASSERT_EQ(ZKF_ZNONODE, do_create(e.st, "/p/c", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/c", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p", &r));
    ASSERT_EQ(1, r.stat.num_children);
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p", &r));
    ASSERT_EQ(1, r.stat.num_children);
    ASSERT_EQ(1, r.stat.cversion);
    env_close(&e);
}

static void test_store_multi_after_cached_creates_sees_the_parent(void)
{
    env e;
    res r;
    zkf_store_op ops[] = {
        { ZKF_STORE_OP_CREATE, "/p/m", "", 0, 0, -1 },
        { ZKF_STORE_OP_CREATE, "/p/a", "", 0, 0, -1 },   /* exists: fails */
    };

    ASSERT_EQ(0, env_open(&e));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/a", "", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/b", "", 0, NULL));
    memset(&r, 0, sizeof r);
    ASSERT_EQ(ZKF_ZOK, zkf_store_multi(e.st, ops, 2, collect, &r));
    ASSERT_EQ(ZKF_ZNODEEXISTS, r.rc);
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/p/m"));
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/p/s-", "", ZKF_STORE_SEQUENTIAL, &r));
    ASSERT_STR_EQ("/p/s-0000000002", r.path);
    zkf_loop_end_turn(e.loop);
    ASSERT_EQ(ZKF_ZOK, do_get(e.st, "/p", &r));
    ASSERT_EQ(3, r.stat.num_children);
    ASSERT_EQ(3, r.stat.cversion);
    env_close(&e);
}

/* Two nginx workers open a new store at the same moment: every opener must
 * get it (the loser of the race to WAL mode used to fail at once with
 * "database is locked"). */
static void test_store_many_processes_open_a_new_store_at_once(void)
{
    enum { N = 8 };
    pid_t kids[N];
    int ok = 0;
    int gate[2];

    fresh_db();
    ASSERT_EQ(0, pipe(gate));
    for (int i = 0; i < N; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            char c;
            zkf_pollhost *h;
            zkf_loop *l;
            zkf_store *st;
            char path[32];
            int rc = 1;

            close(gate[1]);
            /* all children start opening when the parent closes the gate */
            if (read(gate[0], &c, 1) < 0)
                _exit(3);
            h = zkf_pollhost_new();
            l = zkf_loop_new(zkf_pollhost_hooks(h));
            zkf_pollhost_attach(h, l);
            st = open_store(l, "normal");
            if (st != NULL) {
                snprintf(path, sizeof path, "/k%d", i);
                rc = do_create(st, path, "x", 0, NULL) == ZKF_ZOK ? 0 : 2;
                zkf_store_free(st);
            }
            zkf_loop_free(l);
            zkf_pollhost_free(h);
            _exit(rc);
        }
    }
    close(gate[0]);
    close(gate[1]);
    for (int i = 0; i < N; i++) {
        int status = 0;
        if (kids[i] > 0 && waitpid(kids[i], &status, 0) == kids[i] &&
            WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
    }
    remove_db();
    ASSERT_EQ(N, ok);
}

typedef struct commits {
    int ok, failed;
    char msg[256];
} commits;

static void on_commit_cb(int rc, const char *msg, void *arg)
{
    commits *c = arg;
    if (rc == ZKF_ZOK) {
        c->ok++;
        return;
    }
    c->failed++;
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "");
}

/* A commit that fails (a file size limit stands in for a full disk: no
 * root needed) is reported with SQLite's message, rolled back, and the
 * store commits again once the limit is lifted. */
static void test_store_failed_commit_is_reported(void)
{
    env e;
    commits c;
    struct rlimit old, low;
    memset(&c, 0, sizeof c);
    ASSERT_EQ(0, env_open(&e));
    zkf_store_sqlite_on_commit(e.st, on_commit_cb, &c);
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/before", "x", 0, NULL));
    ASSERT_EQ(ZKF_ZOK, zkf_store_flush(e.st));
    ASSERT_EQ(1, c.ok);
    ASSERT_EQ(0, c.failed);
    /* Nothing to commit, nothing reported. */
    ASSERT_EQ(ZKF_ZOK, zkf_store_flush(e.st));
    ASSERT_EQ(1, c.ok);

    static char big[200001];
    memset(big, 'y', sizeof big - 1);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    ASSERT_EQ(0, getrlimit(RLIMIT_FSIZE, &old));
    low = old;
    low.rlim_cur = 64 * 1024;
    ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &low));
    /* The write completes into the open transaction; its commit fails,
     * says why, and rolls it back. */
    int rc = do_create(e.st, "/big", big, 0, NULL);
    int frc = zkf_store_flush(e.st);
    ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &old));
    signal(SIGXFSZ, prev);
    ASSERT_EQ(ZKF_ZOK, rc);      /* in the open transaction */
    ASSERT(frc != ZKF_ZOK);
    ASSERT_EQ(1, c.failed);
    ASSERT(c.msg[0] != '\0');
    ASSERT_STR_EQ(zkf_store_errmsg(e.st), c.msg);
    ASSERT_EQ(ZKF_ZNONODE, do_exists(e.st, "/big"));
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/before"));

    /* Space again: the same write commits. */
    ASSERT_EQ(ZKF_ZOK, do_create(e.st, "/big", big, 0, NULL));
    ASSERT_EQ(ZKF_ZOK, zkf_store_flush(e.st));
    ASSERT_EQ(ZKF_ZOK, do_exists(e.st, "/big"));
    ASSERT(c.ok >= 2);
    zkf_store_sqlite_on_commit(e.st, NULL, NULL);
    env_close(&e);
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n > 0)
        self_exe[n] = '\0';
    if (argc >= 3 && strcmp(argv[1], "ephemeral-then-die") == 0)
        return child_ephemeral_then_die(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "set") == 0)
        return child_set(argv[2], argv[3]);

    RUN(test_store_errnames);
    RUN(test_store_rejects_bad_options);
    RUN(test_store_create_get_set);
    RUN(test_store_binary_data);
    RUN(test_store_create_errors);
    RUN(test_store_bad_paths);
    RUN(test_store_data_limit);
    RUN(test_store_parents);
    RUN(test_store_sequential_names);
    RUN(test_store_versions_and_cversion);
    RUN(test_store_children_sorted);
    RUN(test_store_delete_recursive);
    RUN(test_store_multi_commits_all);
    RUN(test_store_multi_rolls_back);
    RUN(test_store_ephemerals_go_at_close);
    RUN(test_store_reaps_dead_sessions);
    RUN(test_store_watch_fires_once_on_the_loop);
    RUN(test_store_watch_on_delete);
    RUN(test_store_watch_not_fired_by_rolled_back_multi);
    RUN(test_store_watch_sees_other_process);
    RUN(test_store_freed_inside_a_watch);
    RUN(test_store_free_before_fire_closes_queued);
    RUN(test_store_group_commit_at_turn_end);
    RUN(test_store_failed_commit_is_reported);
    RUN(test_store_opens_while_another_handle_writes);
    RUN(test_store_survives_reopen);
    RUN(test_store_many_writes_in_one_turn);
    RUN(test_store_creates_under_one_parent_keep_its_stat);
    RUN(test_store_cached_parent_forgets_a_deleted_parent);
    RUN(test_store_multi_after_cached_creates_sees_the_parent);
    RUN(test_store_many_processes_open_a_new_store_at_once);
    return test_report();
}
