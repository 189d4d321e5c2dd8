/*
 * test_proc.c - child processes on a poll host: exit codes, signals,
 * output to memory and to a log file, env, cwd, process groups.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loop/loop.h"
#include "proc/proc.h"
#include "test.h"

typedef struct env {
    zkf_pollhost *h;
    zkf_loop *loop;
} env;

static env env_new(void)
{
    env e;
    e.h = zkf_pollhost_new();
    e.loop = zkf_loop_new(zkf_pollhost_hooks(e.h));
    zkf_pollhost_attach(e.h, e.loop);
    return e;
}

static void env_free(env *e)
{
    zkf_loop_free(e->loop);
    zkf_pollhost_free(e->h);
}

typedef struct result {
    int calls;
    int code, sig;
    char out[4096];
    double at;              /* monotonic ms of the exit callback */
} result;

static void on_exit_cb(zkf_proc *p, int code, int sig, void *arg)
{
    result *r = arg;
    r->calls++;
    r->code = code;
    r->sig = sig;
    r->at = zkf_mono_ms();
    size_t n;
    const char *o = zkf_proc_output(p, &n);
    if (n >= sizeof r->out)
        n = sizeof r->out - 1;
    memcpy(r->out, o, n);
    r->out[n] = '\0';
}

/* Runs `argv` to its end with `opts` (argv filled in) and frees it. */
static int run(env *e, zkf_proc_opts *o, result *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    zkf_proc *p = zkf_proc_spawn(e->loop, o, on_exit_cb, r, err, errlen);
    if (!p)
        return -1;
    zkf_pollhost_run(e->h);
    zkf_proc_free(p);
    return 0;
}

static void test_proc_exit_code_and_output(void)
{
    env e = env_new();
    const char *argv[] = { "sh", "-c", "echo out; echo err >&2; exit 3", NULL };
    zkf_proc_opts o = { .argv = argv };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(3, r.code);
    ASSERT_EQ(0, r.sig);
    ASSERT_STR_EQ("out\nerr\n", r.out);
    env_free(&e);
}

static void test_proc_stdin_from_string(void)
{
    env e = env_new();
    const char *argv[] = { "/bin/cat", NULL };
    zkf_proc_opts o = { .argv = argv, .stdin_data = "fed\0x", .stdin_len = 3 };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_EQ(0, r.code);
    ASSERT_STR_EQ("fed", r.out);
    /* No stdin: /dev/null, so cat ends at once. */
    zkf_proc_opts o2 = { .argv = argv };
    ASSERT_EQ(0, run(&e, &o2, &r, err, sizeof err));
    ASSERT_STR_EQ("", r.out);
    env_free(&e);
}

static void test_proc_large_stdin_to_a_child_that_ignores_it(void)
{
    env e = env_new();
    size_t n = 1 << 20;
    char *big = malloc(n);
    memset(big, 'x', n);
    const char *argv[] = { "true", NULL };
    zkf_proc_opts o = { .argv = argv, .stdin_data = big, .stdin_len = n };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));  /* no SIGPIPE death */
    ASSERT_EQ(0, r.code);
    const char *argv2[] = { "wc", "-c", NULL };
    o.argv = argv2;
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_STR_EQ("1048576\n", r.out);
    free(big);
    env_free(&e);
}

static void test_proc_killed_by_signal(void)
{
    env e = env_new();
    const char *argv[] = { "sleep", "100", NULL };
    zkf_proc_opts o = { .argv = argv };
    result r;
    memset(&r, 0, sizeof r);
    char err[256];
    zkf_proc *p = zkf_proc_spawn(e.loop, &o, on_exit_cb, &r, err, sizeof err);
    ASSERT(p != NULL);
    ASSERT(zkf_proc_pid(p) > 0);
    ASSERT_EQ(0, zkf_proc_kill(p, SIGTERM));
    zkf_pollhost_run(e.h);
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(-1, r.code);
    ASSERT_EQ(SIGTERM, r.sig);
    ASSERT_EQ(-1, zkf_proc_kill(p, SIGTERM));   /* after the callback */
    zkf_proc_free(p);
    env_free(&e);
}

static void test_proc_log_file_appended_and_dirs_created(void)
{
    env e = env_new();
    char dir[] = "/tmp/zkf_test_procXXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/a/b/task.log", dir);
    const char *argv[] = { "sh", "-c", "echo one; echo two >&2", NULL };
    zkf_proc_opts o = { .argv = argv, .log_path = path };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_STR_EQ("", r.out);       /* nothing kept in memory */
    FILE *f = fopen(path, "r");
    ASSERT(f != NULL);
    char buf[128] = { 0 };
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    ASSERT_STR_EQ("one\ntwo\none\ntwo\n", buf);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ASSERT_EQ(0, system(cmd));
    env_free(&e);
}

static void test_proc_env_and_cwd(void)
{
    env e = env_new();
    setenv("ZKF_TEST_KEEP", "kept", 1);
    setenv("ZKF_TEST_OVER", "old", 1);
    const char *argv[] = { "sh", "-c",
        "echo $ZKF_TEST_KEEP $ZKF_TEST_OVER $ZKF_TEST_NEW; pwd", NULL };
    const char *extra[] = { "ZKF_TEST_OVER=new", "ZKF_TEST_NEW=added", NULL };
    zkf_proc_opts o = { .argv = argv, .env = extra, .cwd = "/tmp" };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_STR_EQ("kept new added\n/tmp\n", r.out);
    unsetenv("ZKF_TEST_KEEP");
    unsetenv("ZKF_TEST_OVER");
    env_free(&e);
}

/* glibc reports a failed exec as posix_spawn's error; under valgrind
 * (no CLONE_VFORK) the child exits 127 instead.  Either is fine. */
static int spawn_failed(env *e, zkf_proc_opts *o, char *err, size_t errlen)
{
    result r;
    if (run(e, o, &r, err, errlen) != 0)
        return 1;
    return r.calls == 1 && r.code == 127 ? 127 : 0;
}

static void test_proc_missing_program_is_an_error(void)
{
    env e = env_new();
    const char *argv[] = { "zkf-no-such-program", NULL };
    zkf_proc_opts o = { .argv = argv };
    result r;
    char err[256];
    int rc = spawn_failed(&e, &o, err, sizeof err);
    ASSERT(rc != 0);
    if (rc == 1)
        ASSERT_STR_EQ("spawn 'zkf-no-such-program': "
                      "No such file or directory", err);
    const char *argv2[] = { "/nonexistent/prog", NULL };
    o.argv = argv2;
    ASSERT(spawn_failed(&e, &o, err, sizeof err) != 0);
    /* Through the shell the same mistake is exit status 127. */
    const char *argv3[] = { "sh", "-c", "zkf-no-such-program 2>/dev/null",
                            NULL };
    o.argv = argv3;
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_EQ(127, r.code);
    /* A bad cwd fails the spawn too. */
    const char *argv4[] = { "true", NULL };
    zkf_proc_opts o4 = { .argv = argv4, .cwd = "/nonexistent" };
    ASSERT(spawn_failed(&e, &o4, err, sizeof err) != 0);
    ASSERT_EQ(0, zkf_loop_alive(e.loop));
    env_free(&e);
}

/* Running, that is: a zombie whose parent (the container's init may not
 * reap) has not collected it counts as dead. */
static int alive(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static void kill_cb(zkf_timer *t, void *arg)
{
    (void)t;
    zkf_proc_kill(arg, SIGTERM);
}

static void test_proc_kill_reaches_the_whole_group(void)
{
    env e = env_new();
    /* The shell forks two sleeps and prints their pids. */
    const char *argv[] = { "sh", "-c",
        "sleep 100 & echo $!; sleep 100 & echo $!; wait", NULL };
    zkf_proc_opts o = { .argv = argv };
    result r;
    memset(&r, 0, sizeof r);
    char err[256];
    zkf_proc *p = zkf_proc_spawn(e.loop, &o, on_exit_cb, &r, err, sizeof err);
    ASSERT(p != NULL);
    zkf_timer_start(e.loop, 200, kill_cb, p);
    zkf_pollhost_run(e.h);
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(SIGTERM, r.sig);
    int a = 0, b = 0;
    ASSERT_EQ(2, sscanf(r.out, "%d %d", &a, &b));
    /* Orphans are reaped by init; give it a moment. */
    for (int i = 0; i < 100 && (alive(a) || alive(b)); i++)
        usleep(10000);
    ASSERT(!alive(a));
    ASSERT(!alive(b));
    zkf_proc_free(p);
    env_free(&e);
}

static void test_proc_grandchild_holding_the_pipe_does_not_hang(void)
{
    env e = env_new();
    const char *argv[] = { "sh", "-c", "echo start; sleep 5 & exit 0", NULL };
    zkf_proc_opts o = { .argv = argv };
    result r;
    memset(&r, 0, sizeof r);
    char err[256];
    double t0 = zkf_mono_ms();
    zkf_proc *p = zkf_proc_spawn(e.loop, &o, on_exit_cb, &r, err, sizeof err);
    ASSERT(p != NULL);
    zkf_pollhost_run(e.h);
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(0, r.code);
    ASSERT_STR_EQ("start\n", r.out);
    ASSERT(r.at - t0 >= ZKF_PROC_DRAIN_MS);
    ASSERT(r.at - t0 < 2000);
    ASSERT_EQ(-1, zkf_proc_kill(p, SIGKILL));   /* done: refused */
    kill(-zkf_proc_pid(p), SIGKILL);    /* the test's own cleanup */
    zkf_proc_free(p);
    env_free(&e);
}

static void free_in_cb(zkf_proc *p, int code, int sig, void *arg)
{
    (void)sig;
    *(int *)arg = code;
    zkf_proc_free(p);
}

static void test_proc_free_inside_exit_callback(void)
{
    env e = env_new();
    const char *argv[] = { "sh", "-c", "exit 7", NULL };
    zkf_proc_opts o = { .argv = argv };
    int code = 0;
    char err[256];
    ASSERT(zkf_proc_spawn(e.loop, &o, free_in_cb, &code, err, sizeof err));
    zkf_pollhost_run(e.h);
    ASSERT_EQ(7, code);
    env_free(&e);
}

static void test_proc_free_of_a_live_child(void)
{
    env e = env_new();
    const char *argv[] = { "sleep", "100", NULL };
    zkf_proc_opts o = { .argv = argv };
    result r1;
    memset(&r1, 0, sizeof r1);
    char err[256];

    /* Freed while running: killed and reaped, no callback. */
    zkf_proc *p3 = zkf_proc_spawn(e.loop, &o, on_exit_cb, &r1, err, sizeof err);
    ASSERT(p3 != NULL);
    pid_t pid = zkf_proc_pid(p3);
    r1.calls = 0;
    zkf_proc_free(p3);
    ASSERT_EQ(0, r1.calls);
    ASSERT(!alive(pid));
    ASSERT_EQ(0, zkf_loop_alive(e.loop));
    env_free(&e);
}

/* ---- contain: the try's whole tree ends with it ---------------------- */

/* Reads a pid the child printed on its line `n` (0-based) of `out`. */
static pid_t pid_on_line(const char *out, int n)
{
    const char *s = out;
    for (int i = 0; i < n && s; i++) {
        s = strchr(s, '\n');
        if (s)
            s++;
    }
    return s ? (pid_t)atoi(s) : 0;
}

/* Alive and not a zombie waiting for its parent. */
static int running(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *c = strrchr(buf, ')');
    return c && c[1] == ' ' && c[2] != 'Z' && c[2] != 'X';
}

static void test_proc_contain_ends_background_children(void)
{
    env e = env_new();
    /* One child in the group, one in a session of its own, and one that
     * a setsid'd shell started: none may outlive the try. */
    const char *argv[] = { "sh", "-c",
        "sleep 1000 & echo $!; setsid sleep 1001 & echo $!; "
        "setsid sh -c 'sleep 1002 & echo $!; sleep 1003' & sleep 0.2; exit 4",
        NULL };
    zkf_proc_opts o = { .argv = argv, .contain = 1 };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(4, r.code);
    ASSERT_EQ(0, r.sig);
    for (int i = 0; i < 3; i++) {
        pid_t pid = pid_on_line(r.out, i);
        ASSERT(pid > 0);
        ASSERT(!running(pid));
    }
    /* The same tree without contain: the group's sleep outlives the
     * shell (what a try did before). */
    zkf_proc_opts o2 = { .argv = argv };
    ASSERT_EQ(0, run(&e, &o2, &r, err, sizeof err));
    pid_t left = pid_on_line(r.out, 0);
    ASSERT(left > 0 && running(left));
    for (int i = 0; i < 3; i++)
        kill(pid_on_line(r.out, i), SIGKILL);
    env_free(&e);
}

static void test_proc_contain_kill_and_status(void)
{
    env e = env_new();
    const char *argv[] = { "sh", "-c", "setsid sleep 1004 & echo $!; "
                           "exec sleep 100", NULL };
    zkf_proc_opts o = { .argv = argv, .contain = 1 };
    result r;
    memset(&r, 0, sizeof r);
    char err[256];
    zkf_proc *p = zkf_proc_spawn(e.loop, &o, on_exit_cb, &r, err, sizeof err);
    ASSERT(p != NULL);
    /* The pid is the child's, leader of its own group, not the
     * supervisor's. */
    ASSERT_EQ(zkf_proc_pid(p), getpgid(zkf_proc_pid(p)));
    usleep(100 * 1000);
    ASSERT_EQ(0, zkf_proc_kill(p, SIGTERM));
    zkf_pollhost_run(e.h);
    ASSERT_EQ(1, r.calls);
    ASSERT_EQ(-1, r.code);
    ASSERT_EQ(SIGTERM, r.sig);
    pid_t escaped = pid_on_line(r.out, 0);
    ASSERT(escaped > 0);
    ASSERT(!running(escaped));
    zkf_proc_free(p);
    env_free(&e);
}

static void test_proc_contain_missing_program_and_free(void)
{
    env e = env_new();
    const char *argv[] = { "no-such-program-zkflow", NULL };
    zkf_proc_opts o = { .argv = argv, .contain = 1 };
    char err[256];
    result r;
    ASSERT_EQ(-1, run(&e, &o, &r, err, sizeof err));
    ASSERT(strstr(err, "No such file or directory") != NULL);
    const char *argv2[] = { "/nonexistent/x", NULL };
    o.argv = argv2;
    ASSERT_EQ(-1, run(&e, &o, &r, err, sizeof err));
    ASSERT(strstr(err, "No such file or directory") != NULL);
    /* Freed while running: the tree is gone when free returns. */
    const char *argv3[] = { "sh", "-c", "setsid sleep 1005 & echo $!; "
                            "sleep 100", NULL };
    o.argv = argv3;
    o.log_path = NULL;
    zkf_proc *p = zkf_proc_spawn(e.loop, &o, on_exit_cb, &r, err, sizeof err);
    ASSERT(p != NULL);
    pid_t pid = zkf_proc_pid(p);
    usleep(100 * 1000);
    zkf_proc_free(p);
    ASSERT(!running(pid));
    ASSERT_EQ(0, zkf_loop_alive(e.loop));
    env_free(&e);
}

static void test_proc_contain_cgroup_where_allowed(void)
{
    env e = env_new();
    /* The try's cgroup, where this process may make one (cgroup v2, its
     * own cgroup writable): the child is in it from its first
     * instruction, and it is removed with the try. */
    const char *argv[] = { "sh", "-c", "sleep 1000 & grep '^0::' /proc/self/cgroup",
                           NULL };
    zkf_proc_opts o = { .argv = argv, .contain = 1 };
    result r;
    char err[256];
    ASSERT_EQ(0, run(&e, &o, &r, err, sizeof err));
    ASSERT_EQ(0, r.code);
    const char *try_cg = strstr(r.out, "/zkflow-try-");
    if (!try_cg) {
        printf("  note: no writable cgroup v2 here, the subreaper alone "
               "(%s)\n", r.out);
    } else {
        char name[64];
        size_t n = strcspn(try_cg + 1, "\n");
        ASSERT(n < sizeof name);
        memcpy(name, try_cg + 1, n);
        name[n] = '\0';
        /* Gone from whichever cgroup2 mount holds it. */
        FILE *f = fopen("/proc/self/mountinfo", "r");
        char line[4096], mnt[1024] = "";
        while (f && fgets(line, sizeof line, f))
            if (strstr(line, " - cgroup2 ") &&
                sscanf(line, "%*s %*s %*s %*s %1023s", mnt) == 1)
                break;
        if (f)
            fclose(f);
        char own[4096] = "", path[5200];
        f = fopen("/proc/self/cgroup", "r");
        while (f && fgets(line, sizeof line, f))
            if (strncmp(line, "0::", 3) == 0) {
                line[strcspn(line, "\n")] = '\0';
                snprintf(own, sizeof own, "%s", line + 3);
            }
        if (f)
            fclose(f);
        snprintf(path, sizeof path, "%s%s/%s", mnt,
                 strcmp(own, "/") ? own : "", name);
        struct stat sb;
        ASSERT(stat(path, &sb) != 0);
    }
    env_free(&e);
}

int main(void)
{
    RUN(test_proc_exit_code_and_output);
    RUN(test_proc_stdin_from_string);
    RUN(test_proc_large_stdin_to_a_child_that_ignores_it);
    RUN(test_proc_killed_by_signal);
    RUN(test_proc_log_file_appended_and_dirs_created);
    RUN(test_proc_env_and_cwd);
    RUN(test_proc_missing_program_is_an_error);
    RUN(test_proc_kill_reaches_the_whole_group);
    RUN(test_proc_grandchild_holding_the_pipe_does_not_hang);
    RUN(test_proc_free_inside_exit_callback);
    RUN(test_proc_free_of_a_live_child);
    RUN(test_proc_contain_ends_background_children);
    RUN(test_proc_contain_kill_and_status);
    RUN(test_proc_contain_missing_program_and_free);
    RUN(test_proc_contain_cgroup_where_allowed);
    return test_report();
}
