/*
 * proc.h - child processes on the loop.
 *
 * A child is started with posix_spawn in a process group of its own (so a
 * kill reaches everything it started), with the signal mask and signal
 * dispositions reset.  stdout and stderr share one pipe that the loop reads:
 * its bytes are appended to a log file, or kept in memory when no log file
 * is given.  The exit is seen through a pidfd; no SIGCHLD handler is
 * installed, so an embedding application keeps its own.  Where pidfd_open
 * is missing (Linux < 5.3, valgrind) the child is polled with
 * waitpid(WNOHANG), every 1 ms at first backing off to 50 ms, and at once
 * when its output ends.
 *
 * The exit callback fires exactly once, after the child exited AND its
 * output pipe reached end of file.  A grandchild that keeps the pipe open
 * (`cmd &`) is given 100 ms after the child's exit; then reading stops and
 * the callback fires anyway.
 *
 * Loop thread only.
 */
#ifndef ZKF_PROC_H
#define ZKF_PROC_H

#include <stddef.h>
#include <sys/types.h>

#include "loop/loop.h"

typedef struct zkf_proc zkf_proc;

/* Without a log file, the last ZKF_PROC_OUTPUT_MAX bytes of output are kept
 * (the tail: that is where the error, and a BashOperator's xcom, is). */
#define ZKF_PROC_OUTPUT_MAX (1024 * 1024)

/* How long output is still read after the child exited, for grandchildren
 * that hold the pipe. */
#define ZKF_PROC_DRAIN_MS 100

/* How long a contained child's leftover descendants have between SIGTERM
 * and SIGKILL once the child itself has exited. */
#define ZKF_PROC_GRACE_MS 200

/* Everything is borrowed for the duration of zkf_proc_spawn() only. */
typedef struct zkf_proc_opts {
    /* NULL-terminated, argv[0] the program: searched in the parent's PATH
     * when it has no slash (posix_spawnp), taken as a path otherwise. */
    const char *const *argv;
    /* NULL-terminated "KEY=VALUE" strings added to the parent's environment,
     * replacing variables of the same name; NULL for none. */
    const char *const *env;
    const char *cwd;            /* NULL: the parent's */
    /* stdout+stderr appended here (O_APPEND, created 0644, parent dirs
     * created 0755); NULL: kept in memory, see zkf_proc_output(). */
    const char *log_path;
    /* Fed to stdin, which is then closed; NULL: stdin is /dev/null. */
    const char *stdin_data;
    size_t stdin_len;
    /* Non-zero: the child's whole process tree ends with it (a try's
     * `sleep 1000 &` and `setsid sleep 1000 &` included).  The child is
     * started under a small supervisor process, forked from the caller
     * and never exec'd, that is a child subreaper
     * (PR_SET_CHILD_SUBREAPER) so every orphaned descendant becomes its
     * child.  When the child exits, the supervisor sends SIGTERM to its
     * process group and to every descendant, SIGKILL after
     * ZKF_PROC_GRACE_MS, reaps them all, then reports the child's
     * status (what the exit callback receives) and is killed.  Where this
     * process's own cgroup (v2) is writable, the child also runs in a
     * cgroup of its own, joined before its exec, killed with
     * cgroup.kill and removed at the end.  The supervisor has
     * PR_SET_PDEATHSIG: when the thread that spawned it dies (kill -9 of
     * the host) it does the same at once, so the tree dies with the
     * host.  The subreaper attribute is the supervisor's, never the
     * host's: an nginx or other C host keeps its own process semantics. */
    int contain;
} zkf_proc_opts;

/* `code` is the exit status (0..255) when the child exited, -1 when a
 * signal killed it; `sig` is that signal, 0 otherwise.  `p` stays valid
 * after the callback until zkf_proc_free(), which may be called from the
 * callback itself. */
typedef void (*zkf_proc_exit_cb)(zkf_proc *p, int code, int sig, void *arg);

/* Starts a child.  Returns a new proc owned by the caller (free it with
 * zkf_proc_free(), normally from or after the exit callback), or NULL with
 * a message in `err` ("spawn 'prog': No such file or directory") when the
 * program could not be started, the log file could not be opened or the
 * loop refused a watcher; then nothing is left running. */
zkf_proc *zkf_proc_spawn(zkf_loop *loop, const zkf_proc_opts *opts,
                         zkf_proc_exit_cb cb, void *arg, char *err,
                         size_t errlen);

/* Sends `sig` to the child's whole process group.  0, or -1 with errno
 * (ESRCH once the exit callback has fired: the group id may be reused). */
int zkf_proc_kill(zkf_proc *p, int sig);

/* The child's pid, which is also its process group id (with `contain`,
 * the child's, not its supervisor's). */
pid_t zkf_proc_pid(const zkf_proc *p);

/* The output kept in memory (no log file): the last ZKF_PROC_OUTPUT_MAX
 * bytes, `*len` set, not NUL-terminated.  Borrowed; valid until
 * zkf_proc_free().  Empty when a log file was given. */
const char *zkf_proc_output(const zkf_proc *p, size_t *len);

/* Frees `p`.  A child still running is killed first: its group gets
 * SIGKILL and the child is reaped (waitpid blocks for that moment); its
 * exit callback is not called.  Safe from inside the exit callback. */
void zkf_proc_free(zkf_proc *p);

#endif
