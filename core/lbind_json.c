/*
 * lbind_json.c - JSON (through jansson) and base64 for Lua:
 * core.json_encode, core.json_decode, core.null, core.base64_encode,
 * core.base64_decode, and the C conversions json.h declares.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "lbind.h"

const char zkf_json_null_sentinel = 0;

#define ARRAY_MT "zkflow.JsonArray"
#define BOX_MT "zkflow.JsonBox"

/* ---- Lua -> JSON ------------------------------------------------------- */

/* One step of the path to the value being converted, for error messages:
 * an array index, an integer key, or a string key (borrowed from the Lua
 * stack, where lua_next keeps it while we are below it). */
typedef struct path_step {
    const char *key;
    size_t keylen;
    lua_Integer index;
} path_step;

typedef struct encoder {
    lua_State *L;
    int depth;
    path_step path[ZKF_JSON_MAX_DEPTH + 1];
    char *err;
    size_t errlen;
} encoder;

static int enc_fail(encoder *e, const char *reason)
{
    char where[160];
    size_t n = 1;
    int i;

    where[0] = '$';
    for (i = 0; i < e->depth && n < sizeof where - 1; i++) {
        const path_step *p = &e->path[i];
        int w;

        if (p->key)
            w = snprintf(where + n, sizeof where - n, ".%.*s",
                         (int)(p->keylen > 40 ? 40 : p->keylen), p->key);
        else
            w = snprintf(where + n, sizeof where - n, "[%lld]",
                         (long long)p->index);
        if (w < 0)
            break;
        n += (size_t)w;
    }
    where[n < sizeof where ? n : sizeof where - 1] = '\0';
    if (e->err && e->errlen)
        snprintf(e->err, e->errlen, "json: %s: %s", where, reason);
    return -1;
}

static json_t *enc_value(encoder *e, int idx);

/* How a table encodes: 1 array, 0 object, -1 error (already reported).
 * *n is the array length. */
static int table_kind(encoder *e, int idx, lua_Integer *n)
{
    lua_State *L = e->L;
    lua_Integer count = 0, max = 0;
    int strings = 0, forced = -1;

    if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
        const char *k = lua_tostring(L, -1);

        if (k && strcmp(k, "array") == 0)
            forced = 1;
        else if (k && strcmp(k, "object") == 0)
            forced = 0;
        lua_pop(L, 1);
        if (forced < 0)
            return enc_fail(e, "__jsontype must be \"array\" or \"object\"");
    }

    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        count++;
        if (lua_type(L, -1) == LUA_TSTRING) {
            strings = 1;
        } else if (lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);

            if (k < 1)
                strings = 1;    /* 0 or negative: an object key */
            else if (k > max)
                max = k;
        } else {
            lua_pop(L, 1);
            return enc_fail(e, "table keys must be strings or integers");
        }
    }
    *n = count;
    if (forced == 0)
        return 0;
    if (forced == 1) {
        if (count > 0 && (strings || max != count))
            return enc_fail(e, "table marked as array has keys other "
                            "than 1..n");
        return 1;
    }
    return count > 0 && !strings && max == count;
}

static json_t *enc_array(encoder *e, int idx, lua_Integer n)
{
    json_t *a = json_array();
    lua_Integer i;

    if (!a) {
        enc_fail(e, "out of memory");
        return NULL;
    }
    for (i = 1; i <= n; i++) {
        json_t *v;

        e->path[e->depth - 1].key = NULL;
        e->path[e->depth - 1].index = i;
        lua_rawgeti(e->L, idx, i);
        v = enc_value(e, lua_gettop(e->L));
        lua_pop(e->L, 1);
        if (!v || json_array_append_new(a, v) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *enc_object(encoder *e, int idx)
{
    lua_State *L = e->L;
    json_t *o = json_object();

    if (!o) {
        enc_fail(e, "out of memory");
        return NULL;
    }
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        char buf[32];
        const char *key;
        size_t keylen;
        json_t *v;

        if (lua_type(L, -2) == LUA_TSTRING) {
            key = lua_tolstring(L, -2, &keylen);
        } else {
            /* an integer, table_kind() checked; never lua_tostring() the
             * key itself, that would confuse lua_next */
            keylen = (size_t)snprintf(buf, sizeof buf, "%lld",
                                      (long long)lua_tointeger(L, -2));
            key = buf;
        }
        e->path[e->depth - 1].key = key;
        e->path[e->depth - 1].keylen = keylen;
        if (json_object_getn(o, key, keylen)) {
            lua_pop(L, 2);
            json_decref(o);
            enc_fail(e, "key appears both as an integer and as a string");
            return NULL;
        }
        v = enc_value(e, lua_gettop(L));
        lua_pop(L, 1);
        if (!v) {
            lua_pop(L, 1);
            json_decref(o);
            return NULL;
        }
        if (json_object_setn_new(o, key, keylen, v) != 0) {
            lua_pop(L, 1);
            json_decref(o);
            enc_fail(e, "key is not valid UTF-8");
            return NULL;
        }
    }
    return o;
}

static json_t *enc_table(encoder *e, int idx)
{
    lua_Integer n = 0;
    json_t *j;
    int kind;

    if (e->depth >= ZKF_JSON_MAX_DEPTH) {
        enc_fail(e, "nested deeper than 200 (a cycle?)");
        return NULL;
    }
    if (!lua_checkstack(e->L, 6)) {
        enc_fail(e, "out of Lua stack");
        return NULL;
    }
    kind = table_kind(e, idx, &n);
    if (kind < 0)
        return NULL;
    e->path[e->depth].key = NULL;
    e->path[e->depth].index = 0;
    e->depth++;
    j = kind ? enc_array(e, idx, n) : enc_object(e, idx);
    e->depth--;
    return j;
}

static json_t *enc_value(encoder *e, int idx)
{
    lua_State *L = e->L;
    json_t *j = NULL;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        j = json_null();
        break;
    case LUA_TBOOLEAN:
        j = json_boolean(lua_toboolean(L, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            j = json_integer((json_int_t)lua_tointeger(L, idx));
        } else {
            double d = (double)lua_tonumber(L, idx);

            if (!isfinite(d)) {
                enc_fail(e, "cannot encode NaN or infinity");
                return NULL;
            }
            j = json_real(d);
        }
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);

        j = json_stringn(s, len);
        if (!j) {
            enc_fail(e, "string is not valid UTF-8");
            return NULL;
        }
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == ZKF_JSON_NULL) {
            j = json_null();
            break;
        }
        enc_fail(e, "cannot encode a light userdata");
        return NULL;
    case LUA_TTABLE:
        return enc_table(e, idx);
    default: {
        char reason[64];

        snprintf(reason, sizeof reason, "cannot encode a %s",
                 luaL_typename(L, idx));
        enc_fail(e, reason);
        return NULL;
    }
    }
    if (!j)
        enc_fail(e, "out of memory");
    return j;
}

json_t *zkf_json_from_lua(lua_State *L, int idx, char *err, size_t errlen)
{
    encoder *e;
    json_t *j;

    idx = lua_absindex(L, idx);
    /* the path is too big for the C stack of a coroutine-heavy host;
     * a Lua userdata keeps it collectable if Lua raises under us */
    e = lua_newuserdatauv(L, sizeof *e, 0);
    e->L = L;
    e->depth = 0;
    e->err = err;
    e->errlen = errlen;
    if (err && errlen)
        err[0] = '\0';
    j = enc_value(e, idx);
    lua_pop(L, 1);
    return j;
}

/* ---- JSON -> Lua ------------------------------------------------------- */

static int push_value(lua_State *L, const json_t *j, int depth, char *err,
                      size_t errlen)
{
    int container = json_is_object(j) || json_is_array(j);

    if (container && depth >= ZKF_JSON_MAX_DEPTH) {
        if (err && errlen)
            snprintf(err, errlen, "json: nested deeper than %d",
                     ZKF_JSON_MAX_DEPTH);
        return -1;
    }
    if (!lua_checkstack(L, 4)) {
        if (err && errlen)
            snprintf(err, errlen, "json: out of Lua stack");
        return -1;
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        size_t keylen;
        json_t *v;

        lua_createtable(L, 0, (int)json_object_size(j));
        json_object_keylen_foreach((json_t *)j, key, keylen, v) {
            lua_pushlstring(L, key, keylen);
            if (push_value(L, v, depth + 1, err, errlen) != 0) {
                lua_pop(L, 2);
                return -1;
            }
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i, n = json_array_size(j);

        lua_createtable(L, n > 1000000 ? 1000000 : (int)n, 0);
        for (i = 0; i < n; i++) {
            if (push_value(L, json_array_get(j, i), depth + 1, err,
                           errlen) != 0) {
                lua_pop(L, 1);
                return -1;
            }
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        luaL_setmetatable(L, ARRAY_MT);
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(j));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        lua_pushlightuserdata(L, ZKF_JSON_NULL);
        break;
    }
    return 0;
}

int zkf_json_push(lua_State *L, const json_t *j, char *err, size_t errlen)
{
    /* the array metatable must exist in states that never opened us */
    if (luaL_newmetatable(L, ARRAY_MT)) {
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__jsontype");
    }
    lua_pop(L, 1);
    return push_value(L, j, 0, err, errlen);
}

/* ---- the Lua functions ------------------------------------------------- */

/* jansson memory that must be released even when Lua raises (out of
 * memory while building the result): held by a userdata with __gc. */
typedef struct box {
    json_t *j;
    char *s;
} box;

static int box_gc(lua_State *L)
{
    box *b = luaL_checkudata(L, 1, BOX_MT);

    json_decref(b->j);
    b->j = NULL;
    free(b->s);
    b->s = NULL;
    return 0;
}

static box *new_box(lua_State *L)
{
    box *b = lua_newuserdatauv(L, sizeof *b, 0);

    b->j = NULL;
    b->s = NULL;
    luaL_setmetatable(L, BOX_MT);
    return b;
}

static int l_json_encode(lua_State *L)
{
    size_t flags = JSON_ENCODE_ANY | JSON_COMPACT;
    char err[256];
    box *b;

    luaL_checkany(L, 1);
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "pretty") != LUA_TNIL && lua_toboolean(L, -1))
            flags = JSON_ENCODE_ANY | JSON_INDENT(2);
        if (lua_getfield(L, 2, "sort_keys") != LUA_TNIL
            && lua_toboolean(L, -1))
            flags |= JSON_SORT_KEYS;
        lua_pop(L, 2);
    }
    lua_settop(L, 1);
    b = new_box(L);
    b->j = zkf_json_from_lua(L, 1, err, sizeof err);
    if (!b->j)
        return luaL_error(L, "%s", err);
    b->s = json_dumps(b->j, flags);
    if (!b->s)
        return luaL_error(L, "json: out of memory");
    lua_pushstring(L, b->s);
    json_decref(b->j);
    b->j = NULL;
    free(b->s);
    b->s = NULL;
    return 1;
}

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    json_error_t jerr;
    char err[256];
    box *b = new_box(L);

    b->j = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!b->j) {
        lua_pushnil(L);
        lua_pushfstring(L, "json: line %d column %d: %s", jerr.line,
                        jerr.column, jerr.text);
        return 2;
    }
    if (zkf_json_push(L, b->j, err, sizeof err) != 0) {
        json_decref(b->j);
        b->j = NULL;
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    json_decref(b->j);
    b->j = NULL;
    return 1;
}

/* ---- base64 ------------------------------------------------------------ */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t zkf_base64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void zkf_base64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t i;

    for (i = 0; i + 2 < n; i += 3) {
        unsigned long v = (unsigned long)in[i] << 16
                          | (unsigned long)in[i + 1] << 8 | in[i + 2];

        *out++ = b64_alphabet[v >> 18 & 63];
        *out++ = b64_alphabet[v >> 12 & 63];
        *out++ = b64_alphabet[v >> 6 & 63];
        *out++ = b64_alphabet[v & 63];
    }
    if (i < n) {
        unsigned long v = (unsigned long)in[i] << 16;

        if (i + 1 < n)
            v |= (unsigned long)in[i + 1] << 8;
        *out++ = b64_alphabet[v >> 18 & 63];
        *out++ = b64_alphabet[v >> 12 & 63];
        *out++ = i + 1 < n ? b64_alphabet[v >> 6 & 63] : '=';
        *out++ = '=';
    }
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long long zkf_base64_decode(const char *in, size_t n, unsigned char *out,
                            char *err, size_t errlen)
{
    unsigned long acc = 0;
    long long len = 0;
    int bits = 0, quad = 0, pad = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int v;

        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad++;
            if (quad + pad > 4 || quad < 2)
                goto bad_pad;
            continue;
        }
        v = b64_value(c);
        if (v < 0) {
            if (err && errlen)
                snprintf(err, errlen, (c >= 0x20 && c < 0x7f)
                         ? "base64: invalid character '%c' at offset %zu"
                         : "base64: invalid byte 0x%02x at offset %zu",
                         c, i);
            return -1;
        }
        if (pad)
            goto bad_pad;
        acc = (acc << 6 | (unsigned long)v) & 0xffffff;
        bits += 6;
        quad = (quad + 1) % 4;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    if (quad == 1 || (pad && quad + pad != 4))
        goto bad_pad;
    return len;

bad_pad:
    if (err && errlen)
        snprintf(err, errlen, "base64: bad length or padding");
    return -1;
}

static int l_base64_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *out;

    out = luaL_buffinitsize(L, &b, zkf_base64_len(n));
    zkf_base64_encode((const unsigned char *)s, n, out);
    luaL_pushresultsize(&b, zkf_base64_len(n));
    return 1;
}

static int l_base64_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[96];
    luaL_Buffer b;
    unsigned char *out;
    long long len;

    out = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
    len = zkf_base64_decode(s, n, out, err, sizeof err);
    if (len < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    luaL_pushresultsize(&b, (size_t)len);
    return 1;
}

static const luaL_Reg json_funcs[] = {
    { "json_encode", l_json_encode },
    { "json_decode", l_json_decode },
    { "base64_encode", l_base64_encode },
    { "base64_decode", l_base64_decode },
    { NULL, NULL }
};

void zkf_lua_open_json(lua_State *L)
{
    if (luaL_newmetatable(L, BOX_MT)) {
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ARRAY_MT)) {
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__jsontype");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, json_funcs, 0);
    lua_pushlightuserdata(L, ZKF_JSON_NULL);
    lua_setfield(L, -2, "null");
}
