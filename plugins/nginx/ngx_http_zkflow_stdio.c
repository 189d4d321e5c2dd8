/*
 * ngx_http_zkflow_stdio.c - stdin, stdout and stderr for the Lua 5.4 that
 * is linked into the module.
 *
 * Debian's liblua5.4.a is compiled as position-dependent (PIE) code, which
 * can only go into a shared object when every symbol it refers to by
 * PC-relative address resolves inside that object.  Its functions do (they
 * are local through --exclude-libs), libc's three stream pointers do not.
 * So the module carries hidden copies of them, filled from libc's when it
 * is loaded; a FILE * never changes after start-up (freopen keeps it).
 *
 * No <stdio.h> here: it declares the libc ones.
 */

#include <dlfcn.h>


struct _IO_FILE;

__attribute__((visibility("hidden"))) struct _IO_FILE  *stdin;
__attribute__((visibility("hidden"))) struct _IO_FILE  *stdout;
__attribute__((visibility("hidden"))) struct _IO_FILE  *stderr;


static struct _IO_FILE *
ngx_http_zkflow_libc_stream(const char *name)
{
    struct _IO_FILE  **p;

    p = dlsym(RTLD_DEFAULT, name);

    return p ? *p : 0;
}


__attribute__((constructor)) static void
ngx_http_zkflow_stdio_init(void)
{
    stdin = ngx_http_zkflow_libc_stream("stdin");
    stdout = ngx_http_zkflow_libc_stream("stdout");
    stderr = ngx_http_zkflow_libc_stream("stderr");
}
