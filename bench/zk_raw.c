/*
 * zk_raw.c - the floor for zkflow's ZooKeeper benchmark: raw asynchronous
 * libzookeeper_mt, N creates then N sets of 100-byte nodes, pipelined with
 * at most WINDOW requests in flight, timed from the first request to the
 * last completion.  bench/zk_bench.sh builds and runs it.
 *
 *   zk_raw HOSTS N [WINDOW]   prints "RESULT raw_create=OPS raw_set=OPS"
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zookeeper/zookeeper.h>

typedef struct bench {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    int done;
    int errors;
    int connected;
} bench;

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

static void on_create(int rc, const char *value, const void *data)
{
    (void)value;
    finish((bench *)data, rc);
}

static void on_stat(int rc, const struct Stat *stat, const void *data)
{
    (void)stat;
    finish((bench *)data, rc);
}

static void on_void(int rc, const void *data)
{
    finish((bench *)data, rc);
}

/* A request refused before it was sent gets no completion: count it. */
static void sent(bench *b, int rc)
{
    if (rc != ZOK)
        finish(b, rc);
}

static void watcher(zhandle_t *zh, int type, int state, const char *path,
                    void *ctx)
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

/* Waits until fewer than `window` requests are in flight. */
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

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: zk_raw HOSTS N [WINDOW]\n");
        return 2;
    }
    const char *hosts = argv[1];
    int n = atoi(argv[2]);
    int window = argc > 3 ? atoi(argv[3]) : 1000;
    char base[64], path[96], value[100];
    bench b;
    double t0, t_create, t_set;

    memset(&b, 0, sizeof b);
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    memset(value, 'v', sizeof value);
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    zhandle_t *zh = zookeeper_init(hosts, watcher, 10000, NULL, &b, 0);
    if (!zh) {
        perror("zookeeper_init");
        return 1;
    }
    pthread_mutex_lock(&b.mu);
    while (!b.connected)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);

    snprintf(base, sizeof base, "/bench-raw-%d", (int)getpid());
    wait_window(&b, window);
    sent(&b, zoo_acreate(zh, base, "", 0, &ZOO_OPEN_ACL_UNSAFE, 0, on_create, &b));
    wait_all(&b, 1);

    t0 = now_s();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/n%07d", base, i);
        wait_window(&b, window);
        sent(&b, zoo_acreate(zh, path, value, sizeof value, &ZOO_OPEN_ACL_UNSAFE, 0,
                    on_create, &b));
    }
    wait_all(&b, n);
    t_create = now_s() - t0;

    t0 = now_s();
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/n%07d", base, i);
        wait_window(&b, window);
        sent(&b, zoo_aset(zh, path, value, sizeof value, -1, on_stat, &b));
    }
    wait_all(&b, n);
    t_set = now_s() - t0;

    int errors = b.errors;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/n%07d", base, i);
        wait_window(&b, window);
        sent(&b, zoo_adelete(zh, path, -1, on_void, &b));
    }
    wait_all(&b, n);
    wait_window(&b, window);
    sent(&b, zoo_adelete(zh, base, -1, on_void, &b));
    wait_all(&b, 1);
    zookeeper_close(zh);
    if (errors) {
        fprintf(stderr, "zk_raw: %d requests failed\n", errors);
        return 1;
    }
    printf("RESULT raw_create=%.0f raw_set=%.0f n=%d window=%d\n",
           n / t_create, n / t_set, n, window);
    return 0;
}
