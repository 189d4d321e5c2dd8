/*
 * lua/fs.c - the file helpers Lua's io library lacks: core.listdir,
 * core.stat, core.mkdirs, core.read_file, core.write_file (atomic) and
 * core.lock_file (who schedules a store).
 *
 * Failures return nil, "<path>: <strerror>", errno, as io.open does: a
 * missing file is an answer, not a bug.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lua/lbind.h"

#define HANDLE_MT "zkflow.FsHandle"

/* A directory stream or a file descriptor that a Lua error (out of memory
 * while building the answer) must not leak: __gc closes it. */
typedef struct fs_handle {
    DIR *dir;
    int fd;
} fs_handle;

static int handle_close(lua_State *L)
{
    fs_handle *h = luaL_checkudata(L, 1, HANDLE_MT);

    if (h->dir)
        closedir(h->dir);
    h->dir = NULL;
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    return 0;
}

/* Pushes a closed handle; the caller opens into it. */
static fs_handle *new_handle(lua_State *L)
{
    fs_handle *h = lua_newuserdatauv(L, sizeof *h, 0);

    h->dir = NULL;
    h->fd = -1;
    luaL_setmetatable(L, HANDLE_MT);
    return h;
}

static int fail_errno(lua_State *L, const char *path, int err)
{
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(err));
    lua_pushinteger(L, err);
    return 3;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* listdir(path) -> sorted array of names without "." and "..". */
static int l_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    fs_handle *h = new_handle(L);          /* index 2 */
    const char **names;
    struct dirent *de;
    lua_Integer n = 0, i;

    h->dir = opendir(path);
    if (!h->dir)
        return fail_errno(L, path, errno);
    lua_newtable(L);                        /* 3: the names, unsorted */
    for (;;) {
        errno = 0;
        de = readdir(h->dir);
        if (!de)
            break;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        lua_pushstring(L, de->d_name);
        lua_rawseti(L, 3, ++n);
    }
    if (errno != 0) {
        int e = errno;

        closedir(h->dir);
        h->dir = NULL;
        return fail_errno(L, path, e);
    }
    closedir(h->dir);
    h->dir = NULL;

    /* sort pointers into the strings table 3 keeps alive */
    names = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *names, 0);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        names[i - 1] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    qsort(names, (size_t)n, sizeof *names, cmp_names);
    lua_createtable(L, (int)n, 0);
    for (i = 1; i <= n; i++) {
        lua_pushstring(L, names[i - 1]);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

/* stat(path) -> {size=, mtime=, type="file"|"dir"|"other"}. */
static int l_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;

    if (stat(path, &st) != 0)
        return fail_errno(L, path, errno);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec
                      + (lua_Number)st.st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    lua_pushstring(L, S_ISREG(st.st_mode) ? "file"
                      : S_ISDIR(st.st_mode) ? "dir" : "other");
    lua_setfield(L, -2, "type");
    return 1;
}

/* mkdir -p on buf (modified in place, restored). Returns 0 or an errno. */
static int mkdirs(char *buf)
{
    struct stat st;
    char *p;

    for (p = buf + 1;; p++) {
        char c = *p;

        if (c != '/' && c != '\0')
            continue;
        if (p[-1] == '/') {         /* "a//b" or a trailing slash */
            if (c == '\0')
                break;
            continue;
        }
        *p = '\0';
        if (mkdir(buf, 0777) != 0) {
            int e = errno;

            if (e != EEXIST || stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
                *p = c;
                return e == EEXIST ? ENOTDIR : e;
            }
        }
        *p = c;
        if (c == '\0')
            break;
    }
    return 0;
}

/* mkdirs(path) -> true: creates path and its missing parents. */
static int l_mkdirs(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    char *buf;
    int e;

    luaL_argcheck(L, len > 0, 1, "empty path");
    buf = lua_newuserdatauv(L, len + 1, 0);
    memcpy(buf, path, len + 1);
    e = mkdirs(buf);
    if (e != 0)
        return fail_errno(L, path, e);
    lua_pushboolean(L, 1);
    return 1;
}

/* read_file(path) -> the whole content. */
static int l_read_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    fs_handle *h = new_handle(L);
    luaL_Buffer b;

    h->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (h->fd < 0)
        return fail_errno(L, path, errno);
    luaL_buffinit(L, &b);
    for (;;) {
        char *p = luaL_prepbuffsize(&b, 65536);
        ssize_t n = read(h->fd, p, 65536);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;

            close(h->fd);
            h->fd = -1;
            return fail_errno(L, path, e);
        }
        if (n == 0)
            break;
        luaL_addsize(&b, (size_t)n);
    }
    close(h->fd);
    h->fd = -1;
    luaL_pushresult(&b);
    return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* write_file(path, data) -> true.  Readers see the old content or the new,
 * never a part: data goes to a temporary file in the same directory, is
 * fsync'ed, and renamed over path; the directory is fsync'ed so that the
 * rename survives a crash.  New files get mode 0644; an existing file
 * keeps its mode. */
static int l_write_file(lua_State *L)
{
    size_t plen, dlen;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    const char *slash = strrchr(path, '/');
    fs_handle *h;
    struct stat st;
    char *tmp, *dir;
    size_t dirlen = slash ? (size_t)(slash - path) : 0;
    mode_t mode = 0644;
    int e, dfd;

    luaL_argcheck(L, plen > 0 && path[plen - 1] != '/', 1,
                  "not a file path");
    h = new_handle(L);
    tmp = lua_newuserdatauv(L, plen + 16, 0);
    memcpy(tmp, path, dirlen);
    memcpy(tmp + dirlen, slash ? "/.tmp.XXXXXX" : ".tmp.XXXXXX",
           slash ? 13 : 12);
    if (stat(path, &st) == 0)
        mode = st.st_mode & 07777;

    h->fd = mkostemp(tmp, O_CLOEXEC);
    if (h->fd < 0)
        return fail_errno(L, path, errno);
    e = write_all(h->fd, data, dlen);
    if (e == 0 && fchmod(h->fd, mode) != 0)
        e = errno;
    if (e == 0 && fsync(h->fd) != 0)
        e = errno;
    if (close(h->fd) != 0 && e == 0)
        e = errno;
    h->fd = -1;
    if (e == 0 && rename(tmp, path) != 0)
        e = errno;
    if (e != 0) {
        unlink(tmp);
        return fail_errno(L, path, e);
    }

    dir = lua_newuserdatauv(L, dirlen + 2, 0);
    if (slash && dirlen == 0) {
        strcpy(dir, "/");
    } else if (slash) {
        memcpy(dir, path, dirlen);
        dir[dirlen] = '\0';
    } else {
        strcpy(dir, ".");
    }
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);     /* best effort: some filesystems refuse it */
        close(dfd);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.lock_file(path): an exclusive flock(2) on `path` (created 0600),
 * held until the handle's close() or collection: the handle, or false when
 * another open file holds it, or nil, message, errno.  flock, not fcntl: the
 * lock belongs to this open file, so the nginx module's and the CLI's
 * exclude each other even inside one process, and closing some other
 * descriptor of the file does not drop it.  CLOEXEC: a task process must
 * not keep the lock after us. */
static int l_lock_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    fs_handle *h = new_handle(L);
    int err;

    h->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (h->fd < 0)
        return fail_errno(L, path, errno);
    if (flock(h->fd, LOCK_EX | LOCK_NB) == 0)
        return 1;
    err = errno;
    close(h->fd);
    h->fd = -1;
    if (err == EWOULDBLOCK) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return fail_errno(L, path, err);
}

static const luaL_Reg fs_funcs[] = {
    { "lock_file", l_lock_file },
    { "listdir", l_listdir },
    { "stat", l_stat },
    { "mkdirs", l_mkdirs },
    { "read_file", l_read_file },
    { "write_file", l_write_file },
    { NULL, NULL }
};

void zkf_lua_open_fs(lua_State *L)
{
    if (luaL_newmetatable(L, HANDLE_MT)) {
        lua_pushcfunction(L, handle_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, handle_close);
        lua_setfield(L, -2, "__close");
        lua_newtable(L);
        lua_pushcfunction(L, handle_close);
        lua_setfield(L, -2, "close");
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, fs_funcs, 0);
}
