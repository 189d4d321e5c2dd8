/*
 * cluster_raw.c - the ceiling for bench/cluster.sh: zkflow's cluster
 * protocol done with raw asynchronous libzookeeper_mt and nothing else.
 * Each of N tries is four transactions, one after the other, as in
 * lua/zkflow/cluster/ (cluster/leader.lua, cluster/worker.lua):
 *
 *   1. the leader queues it:   multi(set its record, create queue/ti- sequential)
 *   2. a worker claims it:     multi(create claims/<key> ephemeral, delete the queue node)
 *   3. the worker reports:     multi(create results/<key>, delete claims/<key>)
 *   4. the leader applies it:  multi(set its record, delete results/<key>)
 *
 * Tries are pipelined: at most WINDOW of them in flight, each issuing its
 * next transaction from the completion of the previous one.  The N record
 * nodes are created before the clock starts and removed after it stops.
 * Node sizes and names follow a real run's (REC, QUEUE, CLAIM, RESULT
 * and KEY below).  Timed from the first request to the last completion.
 *
 *   cluster_raw HOSTS N [WINDOW]
 *   prints "RESULT raw_tx=TX/S raw_tries=TRIES/S n=N window=WINDOW"
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

/* Bytes, as in a run of bench/dags/cluster_noop.lua: a task instance's
 * record (203 queued, about 330 once it ended), a queue node, a claim, a
 * result. */
enum { REC = 270, QUEUE = 250, CLAIM = 120, RESULT = 350 };
/* A try's key as zkflow names it: <dag_id>~<run_id>~<task_id>~<try>. */
#define KEY "bench_cluster_noop~manual__2026-01-01T00:00:00.000000+00:00~t%07d~1"

typedef struct bench bench;

typedef struct try_ {
    bench *b;
    int i;
    int step;                  /* the transaction in flight, 1..4 */
    char rec[96], claim[160], result[160];
    char qnode[128];           /* the sequential node's name, from step 1 */
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    struct Stat stat;
} try_;

struct bench {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;              /* tries, not transactions */
    int done;
    int errors;
    int connected;
    zhandle_t *zh;
    char base[64];
    char rec_data[REC], queue_data[QUEUE], claim_data[CLAIM], result_data[RESULT];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void finish(bench *b, int rc)
{
    pthread_mutex_lock(&b->mu);
    b->inflight--;
    b->done++;
    if (rc != ZOK)
        b->errors++;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void step(try_ *t);

static void on_multi(int rc, const void *data)
{
    try_ *t = (try_ *)data;
    if (rc != ZOK) {
        fprintf(stderr, "cluster_raw: try %d step %d: %s\n", t->i, t->step, zerror(rc));
        finish(t->b, rc);
        return;
    }
    if (t->step == 4) {
        finish(t->b, ZOK);
        return;
    }
    t->step++;
    step(t);
}

/* Sends transaction t->step of try t. */
static void step(try_ *t)
{
    bench *b = t->b;
    char qpath[96];
    switch (t->step) {
    case 1:
        snprintf(qpath, sizeof qpath, "%s/queue/ti-", b->base);
        zoo_set_op_init(&t->ops[0], t->rec, b->rec_data, REC, -1, &t->stat);
        zoo_create_op_init(&t->ops[1], qpath, b->queue_data, QUEUE, &ZOO_OPEN_ACL_UNSAFE,
                           ZOO_SEQUENCE, t->qnode, sizeof t->qnode);
        break;
    case 2:
        zoo_create_op_init(&t->ops[0], t->claim, b->claim_data, CLAIM, &ZOO_OPEN_ACL_UNSAFE,
                           ZOO_EPHEMERAL, NULL, 0);
        zoo_delete_op_init(&t->ops[1], t->qnode, -1);
        break;
    case 3:
        zoo_create_op_init(&t->ops[0], t->result, b->result_data, RESULT,
                           &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);
        zoo_delete_op_init(&t->ops[1], t->claim, -1);
        break;
    default:
        zoo_set_op_init(&t->ops[0], t->rec, b->rec_data, REC, -1, &t->stat);
        zoo_delete_op_init(&t->ops[1], t->result, -1);
        break;
    }
    /* The client copies the paths and data when it serializes the request. */
    int rc = zoo_amulti(b->zh, 2, t->ops, t->res, on_multi, t);
    if (rc != ZOK) {
        fprintf(stderr, "cluster_raw: try %d step %d not sent: %s\n", t->i, t->step,
                zerror(rc));
        finish(b, rc);
    }
}

static void on_void(int rc, const void *data)
{
    finish((bench *)data, rc == ZNODEEXISTS ? ZOK : rc);
}

static void on_create(int rc, const char *value, const void *data)
{
    (void)value;
    on_void(rc, data);
}

static void watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    bench *b = ctx;
    if (type == ZOO_SESSION_EVENT && state == ZOO_CONNECTED_STATE) {
        pthread_mutex_lock(&b->mu);
        b->connected = 1;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}

static void wait_window(bench *b, int window)
{
    pthread_mutex_lock(&b->mu);
    while (b->inflight >= window)
        pthread_cond_wait(&b->cv, &b->mu);
    b->inflight++;
    pthread_mutex_unlock(&b->mu);
}

static void wait_all(bench *b, int n)
{
    pthread_mutex_lock(&b->mu);
    while (b->done < n)
        pthread_cond_wait(&b->cv, &b->mu);
    b->done = 0;
    pthread_mutex_unlock(&b->mu);
}

/* Plain creates or deletes of `paths`, pipelined (not timed). */
static void each(bench *b, char **paths, int n, int create, int window)
{
    for (int i = 0; i < n; i++) {
        wait_window(b, window);
        int rc = create ? zoo_acreate(b->zh, paths[i], b->rec_data, REC,
                                      &ZOO_OPEN_ACL_UNSAFE, 0, on_create, b)
                        : zoo_adelete(b->zh, paths[i], -1, on_void, b);
        if (rc != ZOK)
            finish(b, rc);
    }
    wait_all(b, n);
}

int main(int argc, char **argv)
{
    if (argc < 3 || atoi(argv[2]) < 1) {
        fprintf(stderr, "usage: cluster_raw HOSTS N [WINDOW]\n");
        return 2;
    }
    const char *hosts = argv[1];
    int n = atoi(argv[2]);
    int window = argc > 3 ? atoi(argv[3]) : 256;
    bench b;
    if (window < 1)
        window = 1;

    memset(&b, 0, sizeof b);
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    memset(b.rec_data, 'r', REC);
    memset(b.queue_data, 'q', QUEUE);
    memset(b.claim_data, 'c', CLAIM);
    memset(b.result_data, 'x', RESULT);
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    b.zh = zookeeper_init(hosts, watcher, 10000, NULL, &b, 0);
    if (!b.zh) {
        perror("zookeeper_init");
        return 1;
    }
    pthread_mutex_lock(&b.mu);
    while (!b.connected)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);

    snprintf(b.base, sizeof b.base, "/bench-cluster-%d", (int)getpid());
    char dirs[5][96];
    char *dirp[5];
    const char *names[5] = { "", "/runs", "/queue", "/claims", "/results" };
    for (int k = 0; k < 5; k++) {
        snprintf(dirs[k], sizeof dirs[k], "%s%s", b.base, names[k]);
        dirp[k] = dirs[k];
        each(&b, &dirp[k], 1, 1, 1);
    }

    try_ *tries = calloc((size_t)n, sizeof *tries);
    char **recs = calloc((size_t)n, sizeof *recs);
    if (!tries || !recs) {
        perror("calloc");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        try_ *t = &tries[i];
        t->b = &b;
        t->i = i;
        snprintf(t->rec, sizeof t->rec, "%s/runs/t%07d", b.base, i);
        snprintf(t->claim, sizeof t->claim, "%s/claims/" KEY, b.base, i);
        snprintf(t->result, sizeof t->result, "%s/results/" KEY, b.base, i);
        recs[i] = t->rec;
    }
    each(&b, recs, n, 1, 1000);
    int setup_errors = b.errors;

    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        wait_window(&b, window);
        tries[i].step = 1;
        step(&tries[i]);
    }
    wait_all(&b, n);
    double elapsed = now_s() - t0;
    int errors = b.errors - setup_errors;

    each(&b, recs, n, 0, 1000);
    for (int k = 4; k >= 0; k--)
        each(&b, &dirp[k], 1, 0, 1);
    zookeeper_close(b.zh);
    free(tries);
    free(recs);
    if (errors || setup_errors) {
        fprintf(stderr, "cluster_raw: %d requests failed\n", errors + setup_errors);
        return 1;
    }
    printf("RESULT raw_tx=%.0f raw_tries=%.0f n=%d window=%d\n", 4.0 * n / elapsed,
           n / elapsed, n, window);
    return 0;
}
