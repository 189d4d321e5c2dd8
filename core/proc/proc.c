/*
 * proc.c - child processes: posix_spawn into a new process group, one
 * output pipe read by the loop, exit seen through a pidfd (proc.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc/proc.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

extern char **environ;

#define READ_CHUNK 65536
#define READS_PER_TURN 16

struct zkf_proc {
    zkf_loop *loop;
    pid_t pid;              /* the child, leader of its process group */
    pid_t wpid;             /* what is waited for: the child or its
                               supervisor (opts.contain) */
    zkf_proc_exit_cb cb;
    void *arg;

    int pidfd;              /* -1 once reaped */
    int status_fd;          /* contained: the supervisor's report of the
                               child's wait status; -1 otherwise */
    zkf_io *status_io;
    int have_status, status_raw;
    char *exe;              /* contained, during the spawn: the program
                               found (held here so that the forked copies'
                               heap still reaches it: valgrind checks them
                               for leaks at their exec) */
    zkf_io *pid_io;
    zkf_timer *reap_timer;  /* no pidfd (valgrind, Linux < 5.3): polling */
    double reap_ms;
    int exited;
    int code, sig;
    int done;               /* the exit callback has fired */

    int out_fd;             /* read end of stdout+stderr; -1 after EOF */
    zkf_io *out_io;
    zkf_timer *drain;       /* pending after exit while out_fd is open */
    int log_fd;             /* -1: keep output in memory */
    char *buf;              /* memory output, up to 2 * OUTPUT_MAX */
    size_t len, cap;

    int in_fd;              /* write end of stdin; -1 when fed or none */
    zkf_io *in_io;
    char *in_data;          /* a copy of opts->stdin_data */
    size_t in_len, in_off;
};

static void proc_step(zkf_proc *p);
static void reap(zkf_proc *p, int options);
static void exited(zkf_proc *p);
static void reap_cb(zkf_timer *t, void *arg);

/* ---- helpers --------------------------------------------------------- */

/* Creates the parent directories of `path` (not `path` itself). */
static int mkdirs_for(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        free(dir);
        return 0;
    }
    *slash = '\0';
    for (char *s = dir + 1; ; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
            int e = errno;
            free(dir);
            errno = e;
            return -1;
        }
        *s = c;
        if (c == '\0')
            break;
    }
    free(dir);
    return 0;
}

/* write() that cannot raise SIGPIPE in this process: a child that closes
 * its stdin early must not kill the scheduler.  The signal is blocked in
 * this thread for the call and a SIGPIPE it caused is consumed. */
static ssize_t write_nosigpipe(int fd, const void *data, size_t len)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t r = write(fd, data, len);
    int e = errno;
    if (r < 0 && e == EPIPE && !was_pending) {
        struct timespec zero = { 0, 0 };
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return r;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static int keylen(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (int)(eq - kv) : (int)strlen(kv);
}

/* The parent's environment with `extra` added or replacing.  Returns a new
 * array of borrowed pointers (free the array only), NULL when out of
 * memory. */
static const char **build_env(const char *const *extra)
{
    size_t n = 0, m = 0;
    while (environ && environ[n])
        n++;
    while (extra && extra[m])
        m++;
    const char **env = malloc((n + m + 1) * sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int kl = keylen(environ[i]), replaced = 0;
        for (size_t j = 0; j < m && !replaced; j++)
            replaced = keylen(extra[j]) == kl &&
                       strncmp(extra[j], environ[i], (size_t)kl) == 0;
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++)
        env[k++] = extra[j];
    env[k] = NULL;
    return env;
}

/* ---- output ---------------------------------------------------------- */

static void keep_output(zkf_proc *p, const char *data, size_t n)
{
    if (p->log_fd >= 0) {
        while (n > 0) {
            ssize_t w = write(p->log_fd, data, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return;         /* disk full: the task's log is lost */
            data += w;
            n -= (size_t)w;
        }
        return;
    }
    if (n > ZKF_PROC_OUTPUT_MAX) {
        data += n - ZKF_PROC_OUTPUT_MAX;
        n = ZKF_PROC_OUTPUT_MAX;
    }
    /* Keep a window of up to twice the cap and slide it rarely: the tail
     * is what is kept, at amortised constant cost per byte. */
    if (p->len + n > 2 * (size_t)ZKF_PROC_OUTPUT_MAX) {
        size_t keep = ZKF_PROC_OUTPUT_MAX - n;
        memmove(p->buf, p->buf + p->len - keep, keep);
        p->len = keep;
    }
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->len + n)
            cap *= 2;
        if (cap > 2 * (size_t)ZKF_PROC_OUTPUT_MAX)
            cap = 2 * (size_t)ZKF_PROC_OUTPUT_MAX;
        char *b = realloc(p->buf, cap);
        if (!b)
            return;
        p->buf = b;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, data, n);
    p->len += n;
}

/* Reads what the pipe has; returns 1 at end of file (or error), else 0. */
static int read_output(zkf_proc *p)
{
    char chunk[READ_CHUNK];
    for (int i = 0; i < READS_PER_TURN; i++) {
        ssize_t r = read(p->out_fd, chunk, sizeof chunk);
        if (r > 0) {
            keep_output(p, chunk, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        return 1;
    }
    return 0;
}

static void stop_output(zkf_proc *p)
{
    zkf_io_stop(p->out_io);
    p->out_io = NULL;
    close_fd(&p->out_fd);
    zkf_timer_stop(p->drain);
    p->drain = NULL;
}

static void out_cb(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)fd;
    (void)events;
    zkf_proc *p = arg;
    if (!read_output(p))
        return;
    stop_output(p);
    /* Most children close their output by exiting: without a pidfd,
     * look now rather than at the next poll of the reap timer. */
    if (p->reap_timer && !p->exited) {
        reap(p, WNOHANG);
        if (p->exited) {
            exited(p);
            return;
        }
        zkf_timer_stop(p->reap_timer);
        p->reap_ms = 1;
        p->reap_timer = zkf_timer_start(p->loop, p->reap_ms, reap_cb, p);
        if (!p->reap_timer)
            reap(p, 0);     /* out of memory: wait for it here */
        if (p->exited)
            exited(p);
        return;
    }
    proc_step(p);
}

static void drain_cb(zkf_timer *t, void *arg)
{
    (void)t;
    zkf_proc *p = arg;
    p->drain = NULL;        /* fired: the loop frees it */
    /* Whatever is already in the pipe is still the task's output. */
    int i = 0;
    while (p->out_fd >= 0 && !read_output(p) && ++i < 64)
        ;
    stop_output(p);
    proc_step(p);
}

/* ---- stdin ----------------------------------------------------------- */

static void stop_input(zkf_proc *p)
{
    zkf_io_stop(p->in_io);
    p->in_io = NULL;
    close_fd(&p->in_fd);
    free(p->in_data);
    p->in_data = NULL;
}

/* Writes what the pipe takes; returns 1 when stdin is finished. */
static int feed_input(zkf_proc *p)
{
    while (p->in_off < p->in_len) {
        ssize_t w = write_nosigpipe(p->in_fd, p->in_data + p->in_off,
                                    p->in_len - p->in_off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return 0;
        if (w <= 0)
            return 1;       /* EPIPE: the child does not want the rest */
        p->in_off += (size_t)w;
    }
    return 1;
}

static void in_cb(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)fd;
    (void)events;
    zkf_proc *p = arg;
    if (feed_input(p))
        stop_input(p);
}

/* ---- exit ------------------------------------------------------------ */

static void reap(zkf_proc *p, int options)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = -1;
    errno = EINVAL;
    if (p->pidfd >= 0) {
        do
            r = waitid((idtype_t)P_PIDFD, (id_t)p->pidfd, &si,
                       WEXITED | options);
        while (r < 0 && errno == EINTR);
    }
    if (r < 0 && errno == EINVAL) {
        /* No pidfd, or a kernel without P_PIDFD (before 5.4): the pid is
         * ours until reaped, so waitpid on it is just as safe. */
        int st;
        pid_t w;
        do
            w = waitpid(p->wpid, &st, options);
        while (w < 0 && errno == EINTR);
        if (w == 0)
            return;
        p->exited = 1;
        if (w > 0 && WIFEXITED(st)) {
            p->code = WEXITSTATUS(st);
        } else if (w > 0 && WIFSIGNALED(st)) {
            p->code = -1;
            p->sig = WTERMSIG(st);
        } else {
            p->code = -1;
        }
        return;
    }
    if (r == 0 && si.si_pid == 0)
        return;             /* WNOHANG and still running */
    p->exited = 1;
    if (r < 0) {
        p->code = -1;       /* ECHILD: somebody else's waitpid(-1) won */
    } else if (si.si_code == CLD_EXITED) {
        p->code = si.si_status;
    } else {
        p->code = -1;
        p->sig = si.si_status;
    }
}

static void read_status(zkf_proc *p);

static void exited(zkf_proc *p)
{
    if (p->status_fd >= 0)
        read_status(p);
    if (p->have_status && WIFEXITED(p->status_raw)) {
        p->code = WEXITSTATUS(p->status_raw);
        p->sig = 0;
    } else if (p->have_status && WIFSIGNALED(p->status_raw)) {
        p->code = -1;
        p->sig = WTERMSIG(p->status_raw);
    }
    zkf_io_stop(p->pid_io);
    p->pid_io = NULL;
    close_fd(&p->pidfd);
    zkf_timer_stop(p->reap_timer);
    p->reap_timer = NULL;
    proc_step(p);
}

static void pid_cb(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)fd;
    (void)events;
    zkf_proc *p = arg;
    reap(p, WNOHANG);
    if (p->exited)
        exited(p);
}

/* Without a pidfd the only signal-free way to see an exit is to ask:
 * every 1 ms at first, backing off to 50 ms for long-running children. */
static void reap_cb(zkf_timer *t, void *arg)
{
    (void)t;
    zkf_proc *p = arg;
    p->reap_timer = NULL;   /* fired: the loop frees it */
    reap(p, WNOHANG);
    if (p->exited) {
        exited(p);
        return;
    }
    p->reap_ms = p->reap_ms * 2 > 50 ? 50 : p->reap_ms * 2;
    p->reap_timer = zkf_timer_start(p->loop, p->reap_ms, reap_cb, p);
}

/* Fires the callback once the child exited and its output ended; arms
 * the drain timer when only the output is missing.  Last thing its
 * callers do: the callback may free `p`. */
static void proc_step(zkf_proc *p)
{
    if (!p->exited || p->done)
        return;
    if (p->out_fd >= 0) {
        if (!p->drain)
            p->drain = zkf_timer_start(p->loop, ZKF_PROC_DRAIN_MS, drain_cb,
                                       p);
        if (p->drain)
            return;
        stop_output(p);     /* out of memory: give up the pipe now */
    }
    stop_input(p);
    p->done = 1;
    if (p->cb)
        p->cb(p, p->code, p->sig, p->arg);
}

/* ---- contained children: the per-try supervisor ------------------------
 *
 * The supervisor is a forked copy of a process that may have other threads
 * (libzookeeper_mt's, a host's) and never execs: only async-signal-safe
 * calls are allowed there (and glibc's posix_spawn, a vfork and an exec
 * that take no lock), so no malloc, no stdio, no opendir; what it needs is
 * prepared before the fork. */

/* A message on the status pipe: the child's pid, or why it did not start. */
enum { MSG_PID = 1, MSG_ERRNO = 2, MSG_STATUS = 3 };

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static void put_msg(int fd, int tag, int val)
{
    int m[2] = { tag, val };
    ssize_t w;
    do
        w = write(fd, m, sizeof m);
    while (w < 0 && errno == EINTR);
}

/* Ends the supervisor when it cannot go on (or its host is gone), running
 * nothing of the host's at exit.  Normally the host kills it instead, once
 * it has read the child's status (supervise()). */
static void die(void)
{
    kill(getpid(), SIGKILL);
    _exit(127);
}

/* The parent pid in /proc/<pid>/stat (a stack buffer, no stdio); -1 when
 * the process is gone. */
static pid_t ppid_of(const char *pid)
{
    char path[64] = "/proc/", buf[512];
    size_t n = strlen(path);
    for (const char *c = pid; *c && n < sizeof path - 6; c++)
        path[n++] = *c;
    memcpy(path + n, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return -1;
    buf[r] = '\0';
    /* "pid (comm) S ppid ...": comm may hold spaces and parentheses. */
    char *close_paren = strrchr(buf, ')');
    if (!close_paren || close_paren[1] != ' ' || !close_paren[2] ||
        close_paren[3] != ' ')
        return -1;
    pid_t pp = 0;
    for (char *c = close_paren + 4; *c >= '0' && *c <= '9'; c++)
        pp = pp * 10 + (*c - '0');
    return pp;
}

/* ---- the try's cgroup (cgroup v2, where this process may make one) ---- */

/* Appends `src` to `dst` (capacity `n`, used `at`); returns the new
 * length, or n when it does not fit. */
static size_t append(char *dst, size_t n, size_t at, const char *src)
{
    while (at < n && *src)
        dst[at++] = *src++;
    if (at >= n || *src)
        return n;
    dst[at] = '\0';
    return at;
}

static size_t append_int(char *dst, size_t n, size_t at, long v)
{
    char digits[24];
    int k = 0;
    do {
        digits[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 && k < (int)sizeof digits);
    char rev[24];
    for (int i = 0; i < k; i++)
        rev[i] = digits[k - 1 - i];
    rev[k] = '\0';
    return append(dst, n, at, rev);
}

/* Writes `val` to `dir`/`file`; 0 or -1. */
static int cg_write(const char *dir, const char *file, const char *val)
{
    char path[PATH_MAX];
    size_t at = append(path, sizeof path, 0, dir);
    at = append(path, sizeof path, at, "/");
    at = append(path, sizeof path, at, file);
    if (at >= sizeof path)
        return -1;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, val, strlen(val));
    close(fd);
    return w < 0 ? -1 : 0;
}

/* Sends `sig` to every process in the cgroup `dir`; returns how many. */
static int cg_signal(const char *dir, int sig)
{
    char path[PATH_MAX], buf[1024];
    size_t at = append(path, sizeof path, 0, dir);
    at = append(path, sizeof path, at, "/cgroup.procs");
    if (at >= sizeof path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int seen = 0;
    long pid = 0;
    int digits = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] >= '0' && buf[i] <= '9') {
                pid = pid * 10 + (buf[i] - '0');
                digits = 1;
            } else if (digits) {
                kill((pid_t)pid, sig);
                seen++;
                pid = 0;
                digits = 0;
            }
        }
    }
    if (digits) {
        kill((pid_t)pid, sig);
        seen++;
    }
    close(fd);
    return seen;
}

/* Sends `sig` to the child's group and to every child of this process
 * (the subreaper: orphaned descendants are its children, whatever group
 * or session they moved to).  Returns how many children were seen. */
static int signal_tree(pid_t child, const char *cg, int sig)
{
    pid_t self = getpid();
    int seen = 0;
    kill(-child, sig);
    if (cg) {
        /* The cgroup kills all at once, racing no fork (Linux >= 5.14;
         * older kernels: each member in turn). */
        if (sig == SIGKILL)
            cg_write(cg, "cgroup.kill", "1");
        seen += cg_signal(cg, sig);
    }
    int dir = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return 0;
    char buf[4096];
    for (;;) {
        long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            off += d->d_reclen;
            if (d->d_name[0] < '1' || d->d_name[0] > '9')
                continue;
            if (ppid_of(d->d_name) != self)
                continue;
            pid_t pid = 0;
            for (const char *c = d->d_name; *c; c++)
                pid = pid * 10 + (*c - '0');
            /* A descendant that made a group of its own may have
             * children in it that are not ours yet: the group too. */
            kill(-pid, sig);
            kill(pid, sig);
            seen++;
        }
    }
    close(dir);
    return seen;
}

/* Reaps what has exited; returns 1 when no child is left. */
static int reap_all(pid_t child, int *child_status, int *child_done)
{
    for (;;) {
        int st;
        pid_t w = waitpid(-1, &st, WNOHANG);
        if (w > 0) {
            if (w == child) {
                *child_status = st;
                *child_done = 1;
            }
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        return w < 0 && errno == ECHILD;
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Ends every process of the tree: SIGTERM, then SIGKILL after the grace,
 * again and again until none is left (a killed parent's children come to
 * this subreaper, and are killed in the next round); then removes the
 * cgroup `cg` (NULL: none). */
static void end_tree(pid_t child, const char *cg, int *child_status,
                     int *child_done)
{
    long waited = 0;
    /* No child left means no descendant left: each one's chain of
     * parents reaches this process through a child. */
    if (!reap_all(child, child_status, child_done)) {
        signal_tree(child, cg, SIGTERM);
        while (!reap_all(child, child_status, child_done) &&
               waited < ZKF_PROC_GRACE_MS) {
            sleep_ms(5);
            waited += 5;
        }
        for (int round = 0; round < 20000; round++) {
            if (reap_all(child, child_status, child_done))
                break;
            signal_tree(child, cg, SIGKILL);
            sleep_ms(1);
        }
    }
    /* Empty once its last member has exited; that may lag the reaping by
     * a moment. */
    for (int i = 0; cg && i < 1000; i++) {
        if (rmdir(cg) == 0 || errno == ENOENT)
            break;
        if (errno != EBUSY)
            break;
        cg_signal(cg, SIGKILL);
        sleep_ms(1);
    }
}

/* The supervisor: starts the child, waits for it, ends its tree, reports
 * the child's wait status and dies.  Never returns.  fd 3: the child's
 * stdin, 4: its stdout/stderr, 5: the exec pipe (close-on-exec: its end of
 * file tells the host the exec happened), 6: the status pipe. */
static void supervise(pid_t parent, const char *path, char *const *argv,
                      char *const *envp, const char *cwd,
                      const char *cg_base)
{
    sigset_t all, none, wanted;
    sigfillset(&all);
    sigemptyset(&none);
    /* The host's handlers must never run here: every signal stays
     * blocked and the ones that matter are taken with sigwaitinfo. */
    sigprocmask(SIG_SETMASK, &all, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &dfl, NULL);     /* SIG_IGN would reap for us */
    setpgid(0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() != parent)
        die();                          /* the host died before we were set */

    /* A cgroup of the try's own where this process may make one: the
     * child joins it before its exec, so nothing it starts is outside. */
    char cgbuf[PATH_MAX];
    const char *cg = NULL;
    if (cg_base && *cg_base) {
        size_t at = append(cgbuf, sizeof cgbuf, 0, cg_base);
        at = append(cgbuf, sizeof cgbuf, at, "/zkflow-try-");
        at = append_int(cgbuf, sizeof cgbuf, at, (long)getpid());
        if (at < sizeof cgbuf && mkdir(cgbuf, 0755) == 0)
            cg = cgbuf;
    }

    /* The child is started with posix_spawn (a vfork and an exec), not
     * fork: a forked copy that execs has its heap checked for leaks under
     * valgrind.  File actions would need malloc, so the supervisor sets
     * up the descriptors and the directory itself; it joins the try's
     * cgroup for the spawn and leaves it at once, so the child is in it
     * from its first instruction. */
    fcntl(6, F_SETFD, FD_CLOEXEC);
    if (dup2(3, 0) < 0 || dup2(4, 1) < 0 || dup2(4, 2) < 0) {
        put_msg(5, MSG_ERRNO, errno);
        die();
    }
    close(3);
    close(4);
    if (cwd && chdir(cwd) != 0) {
        put_msg(5, MSG_ERRNO, errno);
        die();
    }
    if (cg && cg_write(cg, "cgroup.procs", "0") != 0)
        cg = NULL;                      /* the subreaper still finds it */
    posix_spawnattr_t at;
    sigset_t dflt;
    sigfillset(&dflt);
    sigdelset(&dflt, SIGKILL);
    sigdelset(&dflt, SIGSTOP);
    pid_t child = -1;
    int rc = posix_spawnattr_init(&at);
    if (rc == 0)
        rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP |
                                      POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    if (rc == 0)
        rc = posix_spawnattr_setpgroup(&at, 0);
    if (rc == 0)
        rc = posix_spawnattr_setsigmask(&at, &none);
    if (rc == 0)
        rc = posix_spawnattr_setsigdefault(&at, &dflt);
    if (rc == 0)
        rc = posix_spawn(&child, path, NULL, &at, argv, envp);
    if (cg && cg_write(cg_base, "cgroup.procs", "0") != 0)
        cg = NULL;      /* still in it: its kill would be ours too; the
                           subreaper ends the tree, the folder stays */
    if (rc != 0) {
        put_msg(5, MSG_ERRNO, rc);
        die();
    }
    put_msg(6, MSG_PID, (int)child);
    close(5);

    sigemptyset(&wanted);
    sigaddset(&wanted, SIGCHLD);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGHUP);
    int status = 0, done = 0;
    for (;;) {
        reap_all(child, &status, &done);
        if (done)
            break;
        siginfo_t si;
        int sig = sigwaitinfo(&wanted, &si);
        if (sig < 0 || sig == SIGCHLD)
            continue;
        break;                          /* told to stop, or the host died */
    }
    end_tree(child, cg, &status, &done);
    if (!done)
        status = SIGKILL;               /* as a wait status: killed */
    put_msg(6, MSG_STATUS, status);
    /* The host kills this process once it has read the status: dying of
     * its own hand would be seen by valgrind, which then checks this copy
     * of the host's heap for leaks.  A host that died meanwhile: the
     * PDEATHSIG. */
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&wanted, &si);
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP)
            die();
    }
}

/* The cgroup v2 folder where this process may make its tries' cgroups:
 * its own cgroup, when writable (root, or a subtree that systemd
 * delegated).  Fills `out`, "" when there is none.  Before the fork: it
 * reads /proc with stdio. */
static void cgroup_base(char *out, size_t n)
{
    char line[4096], mnt[1024] = "", own[1024] = "";
    out[0] = '\0';
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        /* id parent maj:min root mount-point options ... - type source */
        char *dash = strstr(line, " - cgroup2 ");
        if (!dash)
            continue;
        if (sscanf(line, "%*s %*s %*s %*s %1023s", mnt) != 1)
            mnt[0] = '\0';
        break;
    }
    fclose(f);
    f = fopen("/proc/self/cgroup", "re");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "0::", 3) != 0)
            continue;
        line[strcspn(line, "\n")] = '\0';
        if (strlen(line + 3) < sizeof own)
            memcpy(own, line + 3, strlen(line + 3) + 1);
        break;
    }
    fclose(f);
    if (!mnt[0] || own[0] != '/' || strstr(own, "(deleted)"))
        return;
    int len = snprintf(out, n, "%s%s", mnt, strcmp(own, "/") ? own : "");
    if (len < 0 || (size_t)len >= n || access(out, W_OK) != 0)
        out[0] = '\0';
}

/* `prog` found as execvp would find it (in the parent, before the fork:
 * the search needs memory).  Returns a new string or NULL with errno. */
static char *find_program(const char *prog)
{
    if (strchr(prog, '/')) {
        /* Checked here, as the search checks: an exec that fails in the
         * spawned child is seen late (and, under valgrind, not at all). */
        struct stat sb;
        if (access(prog, X_OK) != 0)
            return NULL;
        if (stat(prog, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            errno = EACCES;
            return NULL;
        }
        return strdup(prog);
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/bin:/usr/bin";
    int err = ENOENT;
    for (const char *dir = path;; ) {
        const char *end = strchr(dir, ':');
        size_t dl = end ? (size_t)(end - dir) : strlen(dir);
        size_t n = dl + strlen(prog) + 2;
        char *full = malloc(n);
        if (!full)
            return NULL;
        snprintf(full, n, "%.*s%s%s", (int)dl, dir, dl ? "/" : "", prog);
        if (access(full, X_OK) == 0) {
            struct stat sb;
            if (stat(full, &sb) == 0 && S_ISREG(sb.st_mode))
                return full;
        } else if (errno == EACCES) {
            err = EACCES;
        }
        free(full);
        if (!end)
            break;
        dir = end + 1;
    }
    errno = err;
    return NULL;
}

/* Puts `fd` at `target` in the supervisor (dup2 clears close-on-exec). */
static int move_fd(int fd, int target)
{
    return fd == target ? 0 : (dup2(fd, target) < 0 ? -1 : 0);
}

/* Closes every descriptor from `from` up, async-signal-safely. */
static void close_from(int from)
{
    if (syscall(SYS_close_range, (unsigned)from, ~0U, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = from; fd < max; fd++)
        close(fd);
}

/* Starts the child under a supervisor (proc.h, `contain`).  Returns 0 with
 * p->pid (the child), p->wpid (the supervisor) and p->status_fd set, or an
 * errno. */
static int spawn_contained(zkf_proc *p, const zkf_proc_opts *opts,
                           const char **env, int in_child, int out_child)
{
    char *path = find_program(opts->argv[0]);
    if (!path)
        return errno;
    p->exe = path;
    int ex[2], st[2];
    if (pipe2(ex, O_CLOEXEC) != 0) {
        int e = errno;
        p->exe = NULL;
        free(path);
        return e;
    }
    if (pipe2(st, O_CLOEXEC) != 0) {
        int e = errno;
        p->exe = NULL;
        free(path);
        close(ex[0]);
        close(ex[1]);
        return e;
    }
    char cg_base[PATH_MAX];
    cgroup_base(cg_base, sizeof cg_base);
    pid_t parent = getpid();
    pid_t sup = fork();
    if (sup < 0) {
        int e = errno;
        p->exe = NULL;
        free(path);
        close(ex[0]);
        close(ex[1]);
        close(st[0]);
        close(st[1]);
        return e;
    }
    if (sup == 0) {
        /* High copies first, so that moving one to 3..6 cannot clobber
         * another that happens to sit there. */
        int a = fcntl(in_child, F_DUPFD, 10);
        int b = fcntl(out_child, F_DUPFD, 10);
        int c = fcntl(ex[1], F_DUPFD, 10);
        int d = fcntl(st[1], F_DUPFD, 10);
        if (a < 0 || b < 0 || c < 0 || d < 0 || move_fd(a, 3) ||
            move_fd(b, 4) || move_fd(c, 5) || move_fd(d, 6))
            die();
        fcntl(5, F_SETFD, FD_CLOEXEC);
        /* Nothing else of the host's stays open here: another try's stdin
         * pipe held by this process would never see its end of file. */
        close_from(7);
        supervise(parent, path, (char *const *)opts->argv,
                  (char *const *)env, opts->cwd, cg_base);
    }
    p->exe = NULL;
    free(path);
    close(ex[1]);
    close(st[1]);
    p->wpid = sup;
    p->status_fd = st[0];
    int err = 0, m[2];
    ssize_t r;
    do
        r = read(st[0], m, sizeof m);
    while (r < 0 && errno == EINTR);
    if (r == (ssize_t)sizeof m && m[0] == MSG_PID)
        p->pid = (pid_t)m[1];
    for (;;) {
        r = read(ex[0], m, sizeof m);
        if (r < 0 && errno == EINTR)
            continue;
        if (r != (ssize_t)sizeof m)
            break;                      /* end of file: exec'd */
        if (m[0] == MSG_ERRNO)
            err = m[1];
    }
    close(ex[0]);
    if (err == 0 && p->pid <= 0)
        err = ECHILD;                   /* the supervisor died first */
    if (err == 0 && fcntl(p->status_fd, F_SETFL, O_NONBLOCK) != 0)
        err = errno;
    if (err != 0) {
        if (p->pid > 0)
            kill(-p->pid, SIGKILL);
        kill(sup, SIGKILL);
        int s2;
        while (waitpid(sup, &s2, 0) < 0 && errno == EINTR)
            ;
        close_fd(&p->status_fd);
        p->wpid = p->pid = -1;
    }
    return err;
}

/* Reads the supervisor's report of the child's wait status, if it is
 * there; once read, the supervisor is killed (it waits for that, see
 * supervise()).  End of file: the supervisor died without a report. */
static void read_status(zkf_proc *p)
{
    int m[2];
    ssize_t r;
    do
        r = read(p->status_fd, m, sizeof m);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EAGAIN)
        return;
    zkf_io_stop(p->status_io);
    p->status_io = NULL;
    close_fd(&p->status_fd);
    if (r == (ssize_t)sizeof m && m[0] == MSG_STATUS) {
        p->have_status = 1;
        p->status_raw = m[1];
    }
    if (p->wpid > 0 && !p->exited)
        kill(p->wpid, SIGKILL);
}

static void status_cb(zkf_io *io, int fd, int events, void *arg)
{
    (void)io;
    (void)fd;
    (void)events;
    read_status(arg);
}

/* ---- public ---------------------------------------------------------- */

zkf_proc *zkf_proc_spawn(zkf_loop *loop, const zkf_proc_opts *opts,
                         zkf_proc_exit_cb cb, void *arg, char *err,
                         size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    if (!loop || !opts || !opts->argv || !opts->argv[0]) {
        snprintf(err, errlen, "spawn: no program given");
        return NULL;
    }
    const char *prog = opts->argv[0];
    zkf_proc *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "spawn '%s': out of memory", prog);
        return NULL;
    }
    p->loop = loop;
    p->cb = cb;
    p->arg = arg;
    p->pidfd = p->out_fd = p->log_fd = p->in_fd = p->status_fd = -1;
    p->pid = p->wpid = -1;

    int out[2] = { -1, -1 }, in_child = -1, rc = 0;
    const char **env = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int fa_ok = 0, at_ok = 0;

    if (opts->log_path) {
        /* The folder usually exists (the run's earlier tasks made it):
         * try the open first and walk the path only when it is missing. */
        p->log_fd = open(opts->log_path,
                         O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (p->log_fd < 0 && errno == ENOENT) {
            if (mkdirs_for(opts->log_path) != 0) {
                snprintf(err, errlen, "log '%s': %s", opts->log_path,
                         strerror(errno));
                goto fail;
            }
            p->log_fd = open(opts->log_path,
                             O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        }
        if (p->log_fd < 0) {
            snprintf(err, errlen, "log '%s': %s", opts->log_path,
                     strerror(errno));
            goto fail;
        }
    }
    if (pipe2(out, O_CLOEXEC) != 0)
        goto fail_errno;
    p->out_fd = out[0];
    if (fcntl(p->out_fd, F_SETFL, O_NONBLOCK) != 0)
        goto fail_errno;
    if (opts->stdin_data) {
        int in[2];
        if (pipe2(in, O_CLOEXEC) != 0)
            goto fail_errno;
        in_child = in[0];
        p->in_fd = in[1];
        if (fcntl(p->in_fd, F_SETFL, O_NONBLOCK) != 0)
            goto fail_errno;
        p->in_len = opts->stdin_len;
        p->in_data = malloc(p->in_len ? p->in_len : 1);
        if (!p->in_data)
            goto fail_nomem;
        memcpy(p->in_data, opts->stdin_data, p->in_len);
    } else {
        in_child = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (in_child < 0)
            goto fail_errno;
    }
    env = build_env(opts->env);
    if (!env)
        goto fail_nomem;

    if (opts->contain) {
        rc = spawn_contained(p, opts, env, in_child, out[1]);
        if (rc != 0)
            goto fail_rc;
        goto spawned;
    }
    rc = posix_spawn_file_actions_init(&fa);
    if (rc != 0)
        goto fail_rc;
    fa_ok = 1;
    /* dup2 clears close-on-exec on the copies, and only on them. */
    rc = posix_spawn_file_actions_adddup2(&fa, in_child, 0);
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    if (rc == 0)
        rc = posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    if (rc == 0 && opts->cwd)
        rc = posix_spawn_file_actions_addchdir_np(&fa, opts->cwd);
    if (rc != 0)
        goto fail_rc;
    rc = posix_spawnattr_init(&at);
    if (rc != 0)
        goto fail_rc;
    at_ok = 1;
    /* A group of its own, so kill(-pgid) reaches what the task started;
     * no blocked or ignored signal of ours leaks into it. */
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    rc = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP |
                                  POSIX_SPAWN_SETSIGMASK |
                                  POSIX_SPAWN_SETSIGDEF);
    if (rc == 0)
        rc = posix_spawnattr_setpgroup(&at, 0);
    if (rc == 0)
        rc = posix_spawnattr_setsigmask(&at, &none);
    if (rc == 0)
        rc = posix_spawnattr_setsigdefault(&at, &all);
    if (rc != 0)
        goto fail_rc;

    char *const *cargv = (char *const *)opts->argv;
    char *const *cenv = (char *const *)env;
    if (strchr(prog, '/'))
        rc = posix_spawn(&p->pid, prog, &fa, &at, cargv, cenv);
    else
        rc = posix_spawnp(&p->pid, prog, &fa, &at, cargv, cenv);
    if (rc != 0) {
        p->pid = -1;
        goto fail_rc;
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    fa_ok = at_ok = 0;
    p->wpid = p->pid;
spawned:
    free(env);
    env = NULL;
    close_fd(&out[1]);
    close_fd(&in_child);

    p->pidfd = (int)syscall(SYS_pidfd_open, p->wpid, 0);
    if (p->pidfd >= 0) {
        p->pid_io = zkf_io_start(loop, p->pidfd, ZKF_IO_IN, pid_cb, p);
        if (!p->pid_io)
            goto fail_nomem;
    } else if (errno == ENOSYS) {
        p->reap_ms = 1;
        p->reap_timer = zkf_timer_start(loop, p->reap_ms, reap_cb, p);
        if (!p->reap_timer)
            goto fail_nomem;
    } else {
        goto fail_errno;
    }
    if (p->status_fd >= 0) {
        p->status_io = zkf_io_start(loop, p->status_fd, ZKF_IO_IN, status_cb,
                                    p);
        if (!p->status_io)
            goto fail_nomem;
    }
    p->out_io = zkf_io_start(loop, p->out_fd, ZKF_IO_IN, out_cb, p);
    if (!p->out_io)
        goto fail_nomem;
    if (p->in_fd >= 0) {
        if (feed_input(p)) {
            stop_input(p);
        } else {
            p->in_io = zkf_io_start(loop, p->in_fd, ZKF_IO_OUT, in_cb, p);
            if (!p->in_io)
                goto fail_nomem;
        }
    }
    return p;

fail_nomem:
    rc = ENOMEM;
    goto fail_rc;
fail_errno:
    rc = errno;
fail_rc:
    snprintf(err, errlen, "spawn '%s': %s", prog, strerror(rc));
fail:
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    if (at_ok)
        posix_spawnattr_destroy(&at);
    free(env);
    close_fd(&out[1]);
    close_fd(&in_child);
    p->cb = NULL;
    zkf_proc_free(p);       /* kills and reaps a child already started */
    return NULL;
}

int zkf_proc_kill(zkf_proc *p, int sig)
{
    if (!p || p->pid <= 0 || p->done) {
        errno = ESRCH;
        return -1;
    }
    return kill(-p->pid, sig);
}

pid_t zkf_proc_pid(const zkf_proc *p)
{
    return p ? p->pid : -1;
}

const char *zkf_proc_output(const zkf_proc *p, size_t *len)
{
    if (!p || !p->buf) {
        *len = 0;
        return "";
    }
    if (p->len > ZKF_PROC_OUTPUT_MAX) {
        *len = ZKF_PROC_OUTPUT_MAX;
        return p->buf + p->len - ZKF_PROC_OUTPUT_MAX;
    }
    *len = p->len;
    return p->buf;
}

void zkf_proc_free(zkf_proc *p)
{
    if (!p)
        return;
    if (p->wpid > 0 && !p->exited) {
        /* A supervisor, seeing its child die, ends the rest of the tree
         * and reports: this wait lasts ZKF_PROC_GRACE_MS at most then.
         * It is killed once its report is read. */
        if (p->pid > 0)
            kill(-p->pid, SIGKILL);
        if (p->status_fd >= 0) {
            int fl = fcntl(p->status_fd, F_GETFL);
            if (fl >= 0)
                fcntl(p->status_fd, F_SETFL, fl & ~O_NONBLOCK);
            read_status(p);
        }
        if (p->wpid != p->pid)
            kill(p->wpid, SIGKILL);
        int st;
        while (waitpid(p->wpid, &st, 0) < 0 && errno == EINTR)
            ;
    }
    zkf_io_stop(p->pid_io);
    close_fd(&p->pidfd);
    zkf_io_stop(p->status_io);
    close_fd(&p->status_fd);
    zkf_timer_stop(p->reap_timer);
    stop_output(p);
    stop_input(p);
    close_fd(&p->log_fd);
    free(p->buf);
    free(p);
}
