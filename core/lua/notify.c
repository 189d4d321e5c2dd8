/*
 * lua/notify.c - core.sd_notify(state): systemd's readiness protocol, so
 * that a unit of Type=notify starts its dependants only once the store is
 * open and the API listens.
 *
 * The protocol is one datagram of "VAR=value" lines to the unix socket
 * named by $NOTIFY_SOCKET (sd_notify(3)); a leading '@' names a socket in
 * the abstract namespace.  Written here rather than linked from libsystemd:
 * the protocol is twenty lines and stable, and libzkflow should not pull
 * libsystemd into every host that embeds it.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lua/lbind.h"

/* core.sd_notify(state) -> true when sent, false when $NOTIFY_SOCKET is
 * unset (not under systemd: nothing to tell), nil and a message when the
 * socket cannot be reached. */
static int l_sd_notify(lua_State *L)
{
    size_t len;
    const char *state = luaL_checklstring(L, 1, &len);
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    socklen_t salen;
    size_t plen;
    ssize_t n;
    int fd, err;

    if (path == NULL || path[0] == '\0') {
        lua_pushboolean(L, 0);
        return 1;
    }
    plen = strlen(path);
    /* sun_path need not be NUL-terminated, but an abstract name's length
     * is what the address length says, so both forms fit when < size. */
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof(sa.sun_path)) {
        lua_pushnil(L);
        lua_pushfstring(L, "NOTIFY_SOCKET '%s': not a socket path", path);
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, plen);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = errno;
        lua_pushnil(L);
        lua_pushfstring(L, "NOTIFY_SOCKET: socket: %s", strerror(err));
        return 2;
    }
    n = sendto(fd, state, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    err = errno;
    close(fd);
    if (n < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "NOTIFY_SOCKET '%s': %s", path, strerror(err));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

void zkf_lua_open_notify(lua_State *L)
{
    lua_pushcfunction(L, l_sd_notify);
    lua_setfield(L, -2, "sd_notify");
}
