/*
 * lua/crypto.c - core.sha256, core.hmac_sha256, core.pbkdf2_sha256,
 * core.random_hex and core.equal_ct: what the API's users and tokens
 * (lua/zkflow/auth.lua) need, on core/crypto/sha256.c and getrandom(2).
 * Digests are returned as lower-case hex.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "crypto/sha256.h"
#include "lua/lbind.h"

static void push_hex(lua_State *L, const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        luaL_addchar(&b, digits[p[i] >> 4]);
        luaL_addchar(&b, digits[p[i] & 15]);
    }
    luaL_pushresult(&b);
}

/* core.sha256(data) -> hex */
static int l_sha256(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char out[ZKF_SHA256_LEN];

    zkf_sha256(s, len, out);
    push_hex(L, out, sizeof(out));
    return 1;
}

/* core.hmac_sha256(key, msg) -> hex */
static int l_hmac_sha256(lua_State *L)
{
    size_t kl, ml;
    const char *k = luaL_checklstring(L, 1, &kl);
    const char *m = luaL_checklstring(L, 2, &ml);
    unsigned char out[ZKF_SHA256_LEN];

    zkf_hmac_sha256(k, kl, m, ml, out);
    push_hex(L, out, sizeof(out));
    return 1;
}

/* core.pbkdf2_sha256(password, salt, iterations [, bytes = 32]) -> hex.
 * Iterations are bounded so a stored record cannot stall the loop. */
static int l_pbkdf2_sha256(lua_State *L)
{
    size_t pl, sl;
    const char *p = luaL_checklstring(L, 1, &pl);
    const char *s = luaL_checklstring(L, 2, &sl);
    lua_Integer iter = luaL_checkinteger(L, 3);
    lua_Integer n = luaL_optinteger(L, 4, ZKF_SHA256_LEN);
    unsigned char out[64];

    luaL_argcheck(L, iter >= 1 && iter <= 10000000, 3, "1 to 10000000");
    luaL_argcheck(L, n >= 1 && n <= (lua_Integer)sizeof(out), 4, "1 to 64");
    zkf_pbkdf2_sha256(p, pl, s, sl, (unsigned long)iter, out, (size_t)n);
    push_hex(L, out, (size_t)n);
    return 1;
}

/* core.random_hex(bytes) -> hex of `bytes` random bytes from the kernel. */
static int l_random_hex(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    unsigned char buf[256];
    size_t got = 0;

    luaL_argcheck(L, n >= 1 && n <= (lua_Integer)sizeof(buf), 1, "1 to 256");
    while (got < (size_t)n) {
        ssize_t r = getrandom(buf + got, (size_t)n - got, 0);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return luaL_error(L, "getrandom: %s", strerror(errno));
        got += (size_t)r;
    }
    push_hex(L, buf, (size_t)n);
    return 1;
}

/* core.equal_ct(a, b) -> bool, in time independent of where they differ
 * (comparing secrets). */
static int l_equal_ct(lua_State *L)
{
    size_t al, bl;
    const char *a = luaL_checklstring(L, 1, &al);
    const char *b = luaL_checklstring(L, 2, &bl);
    unsigned char d = al != bl;

    for (size_t i = 0; i < al && i < bl; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    lua_pushboolean(L, d == 0);
    return 1;
}

void zkf_lua_open_crypto(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"sha256", l_sha256},
        {"hmac_sha256", l_hmac_sha256},
        {"pbkdf2_sha256", l_pbkdf2_sha256},
        {"random_hex", l_random_hex},
        {"equal_ct", l_equal_ct},
        {NULL, NULL},
    };

    luaL_setfuncs(L, funcs, 0);
}
