/*
 * lua/watch.c - `core.watch_tree(dir, fn [, quiet_ms])`: a folder and its
 * subfolders watched with inotify, for hot reload of DAG files.
 *
 * Changes are collected and delivered as one call fn({path, ...}) after
 * `quiet_ms` (default 50) without further events, so an editor's
 * write-to-temp-then-rename, or a `cp -r` of a whole folder, arrives as one
 * change rather than many.  New subfolders are watched as they appear.
 * Returns a zkflow.TreeWatch handle; h:close() (also __gc/__close) stops it.
 * While open, the handle holds a registry reference to itself: the loop
 * owns it.
 */
#include <errno.h>
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lua/lbind.h"

#define WATCH_MT "zkflow.TreeWatch"
#define MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | \
              IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_ATTRIB)

typedef struct wdir {
    int wd;
    char *path;             /* owned */
} wdir;

typedef struct treewatch {
    int fd;                 /* inotify fd, -1 when closed */
    zkf_io *io;
    zkf_timer *quiet;       /* pending delivery */
    double quiet_ms;
    lua_State *L;           /* main thread */
    int fn, self;           /* registry refs */
    wdir *dirs;             /* owned array */
    int ndirs, cap;
    char **changed;         /* owned paths since the last delivery */
    int nchanged, ccap;
} treewatch;

static const char *dir_of(treewatch *w, int wd)
{
    for (int i = 0; i < w->ndirs; i++)
        if (w->dirs[i].wd == wd)
            return w->dirs[i].path;
    return NULL;
}

static void forget_wd(treewatch *w, int wd)
{
    for (int i = 0; i < w->ndirs; i++) {
        if (w->dirs[i].wd == wd) {
            free(w->dirs[i].path);
            w->dirs[i] = w->dirs[--w->ndirs];
            return;
        }
    }
}

/* Watches `path` and, recursively, its subfolders (not hidden ones). */
static void add_tree(treewatch *w, const char *path)
{
    int wd = inotify_add_watch(w->fd, path, MASK);
    DIR *d;
    struct dirent *de;

    if (wd < 0)
        return;
    if (dir_of(w, wd) == NULL) {
        if (w->ndirs == w->cap) {
            int cap = w->cap ? w->cap * 2 : 16;
            wdir *nd = realloc(w->dirs, sizeof(*nd) * (size_t)cap);
            if (nd == NULL)
                return;
            w->dirs = nd;
            w->cap = cap;
        }
        w->dirs[w->ndirs].wd = wd;
        w->dirs[w->ndirs].path = strdup(path);
        if (w->dirs[w->ndirs].path == NULL)
            return;
        w->ndirs++;
    }
    d = opendir(path);
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        char sub[PATH_MAX];
        struct stat st;
        if (de->d_name[0] == '.')
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            add_tree(w, sub);
    }
    closedir(d);
}

static void note_change(treewatch *w, const char *path)
{
    for (int i = 0; i < w->nchanged; i++)
        if (strcmp(w->changed[i], path) == 0)
            return;
    if (w->nchanged == w->ccap) {
        int cap = w->ccap ? w->ccap * 2 : 16;
        char **nc = realloc(w->changed, sizeof(*nc) * (size_t)cap);
        if (nc == NULL)
            return;
        w->changed = nc;
        w->ccap = cap;
    }
    w->changed[w->nchanged] = strdup(path);
    if (w->changed[w->nchanged] != NULL)
        w->nchanged++;
}

static void deliver(zkf_timer *t, void *arg)
{
    treewatch *w = arg;
    lua_State *L = w->L;

    (void)t;
    w->quiet = NULL;
    if (w->fn == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->fn);
    lua_createtable(L, w->nchanged, 0);
    for (int i = 0; i < w->nchanged; i++) {
        lua_pushstring(L, w->changed[i]);
        lua_rawseti(L, -2, i + 1);
        free(w->changed[i]);
    }
    w->nchanged = 0;
    zkf_lua_pcall(L, 1);
}

static void on_events(zkf_io *io, int fd, int events, void *arg)
{
    treewatch *w = arg;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;

    (void)io;
    (void)events;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            const char *dir = dir_of(w, ev->wd);
            char path[PATH_MAX];

            p += sizeof(*ev) + ev->len;
            if (ev->mask & IN_IGNORED) {
                forget_wd(w, ev->wd);
                continue;
            }
            if (dir == NULL)
                continue;
            if (ev->len > 0)
                snprintf(path, sizeof(path), "%s/%s", dir, ev->name);
            else
                snprintf(path, sizeof(path), "%s", dir);
            if ((ev->mask & (IN_CREATE | IN_MOVED_TO)) && (ev->mask & IN_ISDIR))
                add_tree(w, path);
            note_change(w, path);
        }
    }
    if (w->nchanged > 0) {
        /* Restart the quiet period: deliver once the burst is over. */
        if (w->quiet != NULL)
            zkf_timer_stop(w->quiet);
        w->quiet = zkf_timer_start(zkf_lua_loop(w->L), w->quiet_ms, deliver, w);
    }
}

static void watch_close(lua_State *L, treewatch *w)
{
    if (w->quiet != NULL) {
        zkf_timer_stop(w->quiet);
        w->quiet = NULL;
    }
    if (w->io != NULL) {
        zkf_io_stop(w->io);
        w->io = NULL;
    }
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    for (int i = 0; i < w->ndirs; i++)
        free(w->dirs[i].path);
    free(w->dirs);
    w->dirs = NULL;
    w->ndirs = w->cap = 0;
    for (int i = 0; i < w->nchanged; i++)
        free(w->changed[i]);
    free(w->changed);
    w->changed = NULL;
    w->nchanged = w->ccap = 0;
    luaL_unref(L, LUA_REGISTRYINDEX, w->fn);
    luaL_unref(L, LUA_REGISTRYINDEX, w->self);
    w->fn = w->self = LUA_NOREF;
}

static int l_close(lua_State *L)
{
    watch_close(L, luaL_checkudata(L, 1, WATCH_MT));
    return 0;
}

static int l_tostring(lua_State *L)
{
    treewatch *w = luaL_checkudata(L, 1, WATCH_MT);

    lua_pushfstring(L, "zkflow.TreeWatch (%s, %d folders)",
                    w->fd >= 0 ? "open" : "closed", w->ndirs);
    return 1;
}

static int l_watch_tree(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    double quiet = luaL_optnumber(L, 3, 50);
    struct stat st;
    treewatch *w;

    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: not a folder", dir);
        return 2;
    }
    w = lua_newuserdatauv(L, sizeof(*w), 0);
    memset(w, 0, sizeof(*w));
    w->fd = -1;
    w->fn = w->self = LUA_NOREF;
    luaL_setmetatable(L, WATCH_MT);
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "inotify: %s", strerror(errno));
        return 2;
    }
    w->quiet_ms = quiet;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    w->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    w->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    w->self = luaL_ref(L, LUA_REGISTRYINDEX);
    add_tree(w, dir);
    w->io = zkf_io_start(zkf_lua_loop(L), w->fd, ZKF_IO_IN, on_events, w);
    if (w->io == NULL) {
        watch_close(L, w);
        lua_pushnil(L);
        lua_pushliteral(L, "watch_tree: cannot watch the inotify descriptor");
        return 2;
    }
    return 1;
}

static const luaL_Reg methods[] = {
    {"close", l_close},
    {NULL, NULL}
};

void zkf_lua_open_watch(lua_State *L)
{
    if (luaL_newmetatable(L, WATCH_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_watch_tree);
    lua_setfield(L, -2, "watch_tree");
}
