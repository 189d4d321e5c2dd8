/*
 * json/json.c - the JSON codec between text and Lua values (jansson's
 * dialect, without a jansson tree), and base64.  lua/json.c makes it
 * core.json_encode, core.json_decode and core.base64_*.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json/json.h"
#include <lauxlib.h>

const char zkf_json_null_sentinel = 0;

#define ARRAY_MT "zkflow.JsonArray"

/* One step of the path to the value being converted, for error messages:
 * a string key (borrowed from the Lua stack, where lua_next keeps it while
 * we are below it), or with key NULL an integer: an object key when
 * `named`, else an array index. */
typedef struct path_step {
    const char *key;
    size_t keylen;
    lua_Integer index;
    int named;
} path_step;

/* Writes "json: $.a.b[2]: reason" into `out`. */
static void format_error(const path_step *path, int depth, const char *reason,
                         char *out, size_t outlen)
{
    char where[160];
    size_t n = 1;
    int i;

    where[0] = '$';
    for (i = 0; i < depth && n < sizeof where - 1; i++) {
        const path_step *p = &path[i];
        int w;

        if (p->key)
            w = snprintf(where + n, sizeof where - n, ".%.*s",
                         (int)(p->keylen > 40 ? 40 : p->keylen), p->key);
        else
            w = snprintf(where + n, sizeof where - n,
                         p->named ? ".%lld" : "[%lld]",
                         (long long)p->index);
        if (w < 0)
            break;
        n += (size_t)w;
    }
    where[n < sizeof where ? n : sizeof where - 1] = '\0';
    if (out && outlen)
        snprintf(out, outlen, "json: %s: %s", where, reason);
}

/* How the table at `idx` encodes: 1 array, 0 object, or -1 with the
 * reason in *why.  *n is the number of keys. */
static int table_kind(lua_State *L, int idx, lua_Integer *n, const char **why)
{
    lua_Integer count = 0, max = 0;
    int strings = 0, forced = -1;

    if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
        const char *k = lua_tostring(L, -1);

        if (k && strcmp(k, "array") == 0)
            forced = 1;
        else if (k && strcmp(k, "object") == 0)
            forced = 0;
        lua_pop(L, 1);
        if (forced < 0) {
            *why = "__jsontype must be \"array\" or \"object\"";
            return -1;
        }
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
            *why = "table keys must be strings or integers";
            return -1;
        }
    }
    *n = count;
    if (forced == 0)
        return 0;
    if (forced == 1) {
        if (count > 0 && (strings || max != count)) {
            *why = "table marked as array has keys other than 1..n";
            return -1;
        }
        return 1;
    }
    return count > 0 && !strings && max == count;
}

/* ---- Lua -> JSON text -------------------------------------------------- */

/*
 * core.json_encode writes the text straight from the Lua value into one
 * growable buffer, without a jansson tree: the scheduler encodes a record
 * per state change, and building and dumping the tree cost four times the
 * walk.  The output is byte for byte what json_dumps() printed (jansson's
 * number formats, escapes and indentation), so stored records and specs do
 * not change.
 *
 * The writer lives on the C stack of one call and starts with a buffer
 * there; a longer text moves to a userdata held in one stack slot, so an
 * error raised from any depth (luaL_error) leaks nothing, and a finalizer
 * that encodes JSON while we allocate gets a writer of its own.
 */

typedef struct writer {
    lua_State *L;
    char *buf;
    size_t len, cap;
    int bufidx;                 /* the stack slot that owns a grown buf */
    int depth;
    int pretty, sort;
    path_step path[ZKF_JSON_MAX_DEPTH + 1];
    char init[1024];
} writer;

/* Raises "json: $.path: reason". */
static void w_fail(writer *w, const char *reason)
{
    char msg[256];

    format_error(w->path, w->depth, reason, msg, sizeof msg);
    luaL_error(w->L, "%s", msg);
}

static char *w_grow(writer *w, size_t n)
{
    size_t cap = w->cap;
    char *p;

    if (n > (size_t)-1 / 2 - w->len)
        w_fail(w, "out of memory");
    while (cap - w->len < n)
        cap *= 2;
    /* the old buffer stays referenced until the new slot owner replaces
     * it */
    p = lua_newuserdatauv(w->L, cap, 0);
    memcpy(p, w->buf, w->len);
    lua_replace(w->L, w->bufidx);
    w->buf = p;
    w->cap = cap;
    return p + w->len;
}

/* Room for `n` more bytes at the end; the pointer is valid until the next
 * reserve. */
static inline char *w_reserve(writer *w, size_t n)
{
    if (w->cap - w->len >= n)
        return w->buf + w->len;
    return w_grow(w, n);
}

static inline void w_putc(writer *w, char c)
{
    *w_reserve(w, 1) = c;
    w->len++;
}

static inline void w_put(writer *w, const char *s, size_t n)
{
    memcpy(w_reserve(w, n), s, n);
    w->len += n;
}

/* jansson's JSON_INDENT(2): a newline, then two spaces a level. */
static void w_newline(writer *w, int depth)
{
    size_t n = (size_t)depth * 2;
    char *p = w_reserve(w, n + 1);

    *p = '\n';
    memset(p + 1, ' ', n);
    w->len += n + 1;
}

/* Writes the decimal digits of `v` into `out` (room for 21) and returns
 * how many. */
static size_t fmt_integer(char *out, lua_Integer v)
{
    char tmp[24];
    unsigned long long u = (unsigned long long)v;
    size_t n = 0, i = 0;

    if (v < 0)
        u = 0ULL - u;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        out[i++] = '-';
    while (n)
        out[i++] = tmp[--n];
    return i;
}

static void w_integer(writer *w, lua_Integer v)
{
    w->len += fmt_integer(w_reserve(w, 24), v);
}

/* As jansson's jsonp_dtostr() with its default precision: "%.17g", then
 * ".0" when that reads as an integer (so it decodes as a float again), and
 * no '+' or leading zeros in the exponent. */
static void w_real(writer *w, double d)
{
    char *p = w_reserve(w, 40);
    char *e;
    int n, i, dot = 0;

    if (!isfinite(d))
        w_fail(w, "cannot encode NaN or infinity");
    /* integral values, the common case of a float that came from
     * arithmetic on integers, without the cost of printf */
    if (d > -1e15 && d < 1e15 && d == (double)(long long)d) {
        size_t k = 0;

        if (d == 0 && signbit(d))
            p[k++] = '-';
        k += fmt_integer(p + k, (lua_Integer)d);
        memcpy(p + k, ".0", 2);
        w->len += k + 2;
        return;
    }
    n = snprintf(p, 40, "%.17g", d);
    if (n <= 0 || n >= 40)
        w_fail(w, "cannot format a number");
    e = NULL;
    for (i = 0; i < n; i++) {
        char c = p[i];

        if (c == 'e') {
            e = p + i;
        } else if (c != '-' && c != '+' && (c < '0' || c > '9')) {
            p[i] = '.';     /* the locale's decimal point */
            dot = 1;
        }
    }
    if (!e && !dot) {
        memcpy(p + n, ".0", 2);
        n += 2;
    } else if (e) {
        char *start = e + 1, *end = e + 2;

        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, (size_t)(p + n - end));
            n -= (int)(end - start);
        }
    }
    w->len += (size_t)n;
}

/* Byte classes for strings: 0 copied as is, 1 escaped, 2 starts a UTF-8
 * sequence to check. */
static const unsigned char str_class[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,     /* '"' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,     /* '\\' */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

/* The length of the UTF-8 sequence at `s` (at most `avail` bytes), or 0
 * when it is not one jansson accepts: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned long cp;
    size_t n, i;

    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (cp >= 0xd800 && cp <= 0xdfff)
        || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

/* Writes `s` as a JSON string; returns -1 (nothing to undo: the caller
 * raises) when it is not valid UTF-8. */
static int w_string(writer *w, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *u = (const unsigned char *)s;
    char *p = w_reserve(w, len + 2);
    size_t i = 0, o = 0;

    p[o++] = '"';
    while (i < len) {
        unsigned char c = u[i];

        if (str_class[c] == 0) {
            p[o++] = (char)c;
            i++;
        } else if (str_class[c] == 2) {
            size_t n = utf8_seq(u + i, len - i);

            if (n == 0)
                return -1;
            memcpy(p + o, u + i, n);
            o += n;
            i += n;
        } else {
            char esc = 0;

            /* up to six bytes for this one, one each for the rest */
            w->len += o;
            p = w_reserve(w, 6 + len - i + 1);
            w->len -= o;
            p -= o;
            switch (c) {
            case '"': esc = '"'; break;
            case '\\': esc = '\\'; break;
            case '\b': esc = 'b'; break;
            case '\f': esc = 'f'; break;
            case '\n': esc = 'n'; break;
            case '\r': esc = 'r'; break;
            case '\t': esc = 't'; break;
            default: break;
            }
            p[o++] = '\\';
            if (esc) {
                p[o++] = esc;
            } else {
                memcpy(p + o, "u00", 3);
                p[o + 3] = hex[c >> 4];
                p[o + 4] = hex[c & 15];
                o += 5;
            }
            i++;
        }
    }
    p[o++] = '"';
    w->len += o;
    return 0;
}

static void w_value(writer *w, int idx);

/* Whether the string key `s` is what an integer key prints as, so that
 * both could be in one table. */
static int integer_like(const char *s, size_t len)
{
    char *end;
    long long v;
    char digits[24];

    if (len == 0 || len > 20 || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
        return 0;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end != s + len)
        return 0;
    return fmt_integer(digits, (lua_Integer)v) == len
           && memcmp(digits, s, len) == 0;
}

/* Raises when a string key of the table at `idx` is also there as an
 * integer: both would print as the same JSON key. */
static void check_conflicts(writer *w, int idx)
{
    lua_State *L = w->L;

    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);

            if (integer_like(s, len)) {
                int t = lua_rawgeti(L, idx, (lua_Integer)strtoll(s, NULL, 10));

                lua_pop(L, 1);
                if (t != LUA_TNIL) {
                    w->path[w->depth - 1].key = s;
                    w->path[w->depth - 1].keylen = len;
                    w_fail(w, "key appears both as an integer and as a "
                           "string");
                }
            }
        }
    }
}

/* Writes the key of the pair on top of the stack (key at -2) and the
 * separator after it; `flags` collects which kinds of keys were seen. */
static void w_key(writer *w, int *flags)
{
    lua_State *L = w->L;
    path_step *step = &w->path[w->depth - 1];

    if (lua_type(L, -2) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -2, &len);

        step->key = s;
        step->keylen = len;
        if (len && (s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
            *flags |= 2;
        if (w_string(w, s, len) != 0)
            w_fail(w, "key is not valid UTF-8");
    } else if (lua_isinteger(L, -2)) {
        lua_Integer k = lua_tointeger(L, -2);
        char *p = w_reserve(w, 24);

        *flags |= 1;
        /* never lua_tostring() the key: that would confuse lua_next */
        step->key = NULL;
        step->index = k;
        step->named = 1;
        p[0] = '"';
        w->len += 1 + fmt_integer(p + 1, k);
        w_putc(w, '"');
    } else {
        w->depth--;
        w_fail(w, "table keys must be strings or integers");
    }
    if (w->pretty)
        w_put(w, ": ", 2);
    else
        w_putc(w, ':');
}

/* An object in lua_next() order, as jansson kept insertion order; with
 * `have_first` the first pair is already on the stack. */
static void w_object(writer *w, int idx, int have_first)
{
    lua_State *L = w->L;
    int flags = 0, first = 1;

    w->path[w->depth].key = NULL;
    w->path[w->depth].index = 0;
    w->path[w->depth].named = 0;
    w->depth++;
    w_putc(w, '{');
    if (!have_first) {
        lua_pushnil(L);
        if (lua_next(L, idx) == 0) {
            w_putc(w, '}');
            w->depth--;
            return;
        }
    }
    do {
        if (!first)
            w_putc(w, ',');
        first = 0;
        if (w->pretty)
            w_newline(w, w->depth);
        w_key(w, &flags);
        w_value(w, lua_gettop(L));
        lua_pop(L, 1);
    } while (lua_next(L, idx) != 0);
    if (flags == 3)
        check_conflicts(w, idx);
    if (w->pretty)
        w_newline(w, w->depth - 1);
    w_putc(w, '}');
    w->depth--;
}

/* One key of a sorted object: a string key borrowed from the table (which
 * keeps it alive), or an integer key printed into `num`. */
typedef struct sort_key {
    const char *s;
    size_t len;
    lua_Integer ikey;
    int is_int;
    char num[24];
} sort_key;

static int sort_key_cmp(const void *a, const void *b)
{
    const sort_key *x = a, *y = b;
    const char *xs = x->is_int ? x->num : x->s;
    const char *ys = y->is_int ? y->num : y->s;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(xs, ys, n);

    if (c)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* sort_keys: jansson's order (bytewise, shorter first), for the CLI's
 * stable output; slower than w_object(), which the scheduler uses. */
static void w_object_sorted(writer *w, int idx)
{
    lua_State *L = w->L;
    sort_key *keys;
    size_t n = 0, i;

    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        n++;
    }
    if (n == 0) {
        w_put(w, "{}", 2);
        return;
    }
    if (n > (size_t)-1 / sizeof *keys)
        w_fail(w, "out of memory");
    /* a userdata, so that an error below frees it */
    keys = lua_newuserdatauv(L, n * sizeof *keys, 0);
    i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        sort_key *k = &keys[i++];

        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TSTRING) {
            k->s = lua_tolstring(L, -1, &k->len);
            k->is_int = 0;
        } else if (lua_isinteger(L, -1)) {
            k->ikey = lua_tointeger(L, -1);
            k->len = fmt_integer(k->num, k->ikey);
            k->s = NULL;
            k->is_int = 1;
        } else {
            w_fail(w, "table keys must be strings or integers");
        }
    }
    qsort(keys, n, sizeof *keys, sort_key_cmp);
    w->path[w->depth].key = NULL;
    w->path[w->depth].named = 0;
    w->depth++;
    w_putc(w, '{');
    for (i = 0; i < n; i++) {
        sort_key *k = &keys[i];
        path_step *step = &w->path[w->depth - 1];

        if (k->is_int) {
            step->key = NULL;
            step->index = k->ikey;
            step->named = 1;
        } else {
            step->key = k->s;
            step->keylen = k->len;
        }
        if (i > 0 && sort_key_cmp(k, k - 1) == 0)
            w_fail(w, "key appears both as an integer and as a string");
        if (i > 0)
            w_putc(w, ',');
        if (w->pretty)
            w_newline(w, w->depth);
        if (k->is_int) {
            w_putc(w, '"');
            w_put(w, k->num, k->len);
            w_putc(w, '"');
            lua_rawgeti(L, idx, k->ikey);
        } else {
            if (w_string(w, k->s, k->len) != 0)
                w_fail(w, "key is not valid UTF-8");
            lua_pushlstring(L, k->s, k->len);
            lua_rawget(L, idx);
        }
        if (w->pretty)
            w_put(w, ": ", 2);
        else
            w_putc(w, ':');
        w_value(w, lua_gettop(L));
        lua_pop(L, 1);
    }
    if (w->pretty)
        w_newline(w, w->depth - 1);
    w_putc(w, '}');
    w->depth--;
    lua_pop(L, 1);
}

static void w_array(writer *w, int idx, lua_Integer n)
{
    lua_State *L = w->L;
    lua_Integer i;

    if (n == 0) {
        w_put(w, "[]", 2);
        return;
    }
    w->path[w->depth].key = NULL;
    w->path[w->depth].named = 0;
    w->depth++;
    w_putc(w, '[');
    for (i = 1; i <= n; i++) {
        if (i > 1)
            w_putc(w, ',');
        if (w->pretty)
            w_newline(w, w->depth);
        w->path[w->depth - 1].index = i;
        lua_rawgeti(L, idx, i);
        w_value(w, lua_gettop(L));
        lua_pop(L, 1);
    }
    if (w->pretty)
        w_newline(w, w->depth - 1);
    w_putc(w, ']');
    w->depth--;
}

static void w_table(writer *w, int idx)
{
    lua_State *L = w->L;
    lua_Integer n = 0;
    const char *why = NULL;
    int forced = -1, kind;

    if (w->depth >= ZKF_JSON_MAX_DEPTH)
        w_fail(w, "nested deeper than 200 (a cycle?)");
    if (!lua_checkstack(L, 6))
        w_fail(w, "out of Lua stack");
    if (lua_getmetatable(L, idx)) {
        lua_pop(L, 1);
        if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
            const char *k = lua_tostring(L, -1);

            if (k && strcmp(k, "array") == 0)
                forced = 1;
            else if (k && strcmp(k, "object") == 0)
                forced = 0;
            lua_pop(L, 1);
            if (forced < 0)
                w_fail(w, "__jsontype must be \"array\" or \"object\"");
        }
    }
    if (!w->sort && forced != 1) {
        /* the common record: a first key that is a string makes an
         * object, written in the same pass that checks the keys */
        lua_pushnil(L);
        if (lua_next(L, idx) == 0) {
            w_put(w, "{}", 2);
            return;
        }
        if (lua_type(L, -2) == LUA_TSTRING) {
            w_object(w, idx, 1);
            return;
        }
        lua_pop(L, 2);
    }
    kind = table_kind(L, idx, &n, &why);
    if (kind < 0)
        w_fail(w, why);
    if (kind == 1)
        w_array(w, idx, n);
    else if (w->sort)
        w_object_sorted(w, idx);
    else
        w_object(w, idx, 0);
}

static void w_value(writer *w, int idx)
{
    lua_State *L = w->L;

    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        w_put(w, "null", 4);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            w_put(w, "true", 4);
        else
            w_put(w, "false", 5);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            w_integer(w, lua_tointeger(L, idx));
        else
            w_real(w, (double)lua_tonumber(L, idx));
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);

        if (w_string(w, s, len) != 0)
            w_fail(w, "string is not valid UTF-8");
        break;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != ZKF_JSON_NULL)
            w_fail(w, "cannot encode a light userdata");
        w_put(w, "null", 4);
        break;
    case LUA_TTABLE:
        w_table(w, idx);
        break;
    default: {
        char reason[64];

        snprintf(reason, sizeof reason, "cannot encode a %s",
                 luaL_typename(L, idx));
        w_fail(w, reason);
    }
    }
}

void zkf_json_encode(lua_State *L, int idx, int flags)
{
    writer w;

    idx = lua_absindex(L, idx);
    lua_pushnil(L);             /* the owner of a grown buffer */
    w.L = L;
    w.buf = w.init;
    w.len = 0;
    w.cap = sizeof w.init;
    w.bufidx = lua_gettop(L);
    w.depth = 0;
    w.pretty = (flags & ZKF_JSON_PRETTY) != 0;
    w.sort = (flags & ZKF_JSON_SORT_KEYS) != 0;
    w_value(&w, idx);
    lua_pushlstring(L, w.buf, w.len);
    lua_remove(L, w.bufidx);
}

/* ---- JSON text -> Lua -------------------------------------------------- */

/*
 * core.json_decode parses the text straight into Lua values: going through
 * a jansson tree cost three times as much (17 us for a 1 KB record).  It
 * accepts what json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL) accepted, with
 * the same values: integers that fit in 64 bits, reals through strtod
 * (overflow is an error, underflow is not), strict UTF-8, the last of
 * duplicate keys, no NUL in keys.  Messages keep jansson's shape, "line L
 * column C: reason near 'token'".
 */

typedef struct reader {
    lua_State *L;
    const char *start, *p, *end;
    const char *tok;            /* start of the token being read */
    int depth;
    int array_mt;               /* stack slot of the array metatable */
    char err[160];
} reader;

/* Records the error at the current position; returns -1. */
static int r_fail(reader *r, const char *reason)
{
    const char *q, *line_start = r->start;
    int line = 1, column = 0;
    char near[48];

    for (q = r->start; q < r->p; q++) {
        if (*q == '\n') {
            line++;
            line_start = q + 1;
        }
    }
    for (q = line_start; q < r->p; q++)
        if (((unsigned char)*q & 0xc0) != 0x80)
            column++;
    if (r->tok && r->tok < r->p) {
        int n = (int)(r->p - r->tok);

        snprintf(near, sizeof near, " near '%.*s'", n > 20 ? 20 : n, r->tok);
    } else if (r->p >= r->end) {
        snprintf(near, sizeof near, " near end of file");
    } else {
        near[0] = '\0';
    }
    snprintf(r->err, sizeof r->err, "json: line %d column %d: %s%s", line,
             column, reason, near);
    return -1;
}

static void r_skip_space(reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\t'
                             || *r->p == '\r'))
        r->p++;
}

static int hex4(const char *s)
{
    int v = 0, i;

    for (i = 0; i < 4; i++) {
        int c = (unsigned char)s[i], d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    return v;
}

static size_t put_utf8(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Checks the string token at r->p (the opening quote) and returns its
 * length up to the closing quote; *escaped says whether it has escapes. */
static int r_scan_string(reader *r, size_t *len, int *escaped)
{
    const unsigned char *s = (const unsigned char *)r->p + 1;
    const unsigned char *end = (const unsigned char *)r->end;
    char reason[48];

    r->tok = r->p;
    *escaped = 0;
    while (s < end) {
        unsigned char c = *s;

        if (c == '"') {
            *len = (size_t)(s - (const unsigned char *)r->p) - 1;
            return 0;
        }
        if (c == '\\') {
            *escaped = 1;
            s += 2;
            continue;
        }
        if (c < 0x20) {
            r->p = (const char *)s;
            snprintf(reason, sizeof reason, "control character 0x%x", c);
            return r_fail(r, reason);
        }
        if (c >= 0x80) {
            size_t n = utf8_seq(s, (size_t)(end - s));

            if (n == 0) {
                r->p = (const char *)s;
                snprintf(reason, sizeof reason,
                         "unable to decode byte 0x%x", c);
                return r_fail(r, reason);
            }
            s += n;
            continue;
        }
        s++;
    }
    r->p = r->end;
    return r_fail(r, "premature end of input");
}

/* Writes the unescaped string (`len` bytes after the opening quote at
 * r->p) into `out`, which has room for `len` bytes, and returns its
 * length, or -1.  *nul says whether it holds a NUL. */
static long r_unescape(reader *r, size_t len, char *out, int *nul)
{
    const char *s = r->p + 1, *end = s + len;
    size_t o = 0;

    *nul = 0;
    while (s < end) {
        const char *run = s;

        while (s < end && *s != '\\')
            s++;
        memcpy(out + o, run, (size_t)(s - run));
        o += (size_t)(s - run);
        if (s >= end)
            break;
        s++;        /* the backslash */
        switch (s < end ? *s : 0) {
        case '"': out[o++] = '"'; s++; break;
        case '\\': out[o++] = '\\'; s++; break;
        case '/': out[o++] = '/'; s++; break;
        case 'b': out[o++] = '\b'; s++; break;
        case 'f': out[o++] = '\f'; s++; break;
        case 'n': out[o++] = '\n'; s++; break;
        case 'r': out[o++] = '\r'; s++; break;
        case 't': out[o++] = '\t'; s++; break;
        case 'u': {
            long cp = end - s >= 5 ? hex4(s + 1) : -1;
            char reason[48];

            if (cp < 0) {
                r->p = end;
                return r_fail(r, "invalid escape");
            }
            s += 5;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                long lo = end - s >= 6 && s[0] == '\\' && s[1] == 'u'
                          ? hex4(s + 2) : -1;

                if (lo < 0xdc00 || lo > 0xdfff) {
                    r->p = end + 1;
                    if (lo < 0)
                        snprintf(reason, sizeof reason,
                                 "invalid Unicode '\\u%04lX'", cp);
                    else
                        snprintf(reason, sizeof reason,
                                 "invalid Unicode '\\u%04lX\\u%04lX'",
                                 cp, lo);
                    return r_fail(r, reason);
                }
                s += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                r->p = end + 1;
                snprintf(reason, sizeof reason, "invalid Unicode '\\u%04lX'",
                         cp);
                return r_fail(r, reason);
            } else if (cp == 0) {
                *nul = 1;
            }
            o += put_utf8(out + o, (unsigned long)cp);
            break;
        }
        default:
            r->p = s < end ? s + 1 : end;
            return r_fail(r, "invalid escape");
        }
    }
    return (long)o;
}

/* Pushes the string token at r->p and moves past it. */
static int r_string(reader *r, int is_key)
{
    size_t len = 0;
    int escaped = 0, nul = 0;

    if (r_scan_string(r, &len, &escaped) != 0)
        return -1;
    if (!escaped) {
        lua_pushlstring(r->L, r->p + 1, len);
    } else {
        char small[256];
        /* escapes only shrink the text */
        char *out = len <= sizeof small ? small
                    : lua_newuserdatauv(r->L, len, 0);
        long n = r_unescape(r, len, out, &nul);

        if (n < 0)
            return -1;
        if (is_key && nul) {
            r->p += len + 2;
            return r_fail(r, "NUL byte in object key not supported");
        }
        lua_pushlstring(r->L, out, (size_t)n);
        if (out != small)
            lua_remove(r->L, -2);
    }
    r->p += len + 2;
    r->tok = NULL;
    return 0;
}

static int r_number(reader *r)
{
    const char *s = r->p, *end = r->end;
    int neg = 0, real = 0;
    char reason[32];

    r->tok = s;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    if (s < end && *s == '0') {
        s++;
    } else if (s < end && *s >= '1' && *s <= '9') {
        while (s < end && *s >= '0' && *s <= '9')
            s++;
    } else {
        r->p = s + (s < end);
        return r_fail(r, "invalid token");
    }
    if (s < end && *s == '.') {
        s++;
        real = 1;
        if (!(s < end && *s >= '0' && *s <= '9')) {
            r->p = s;
            return r_fail(r, "invalid token");
        }
        while (s < end && *s >= '0' && *s <= '9')
            s++;
    }
    if (s < end && (*s == 'e' || *s == 'E')) {
        s++;
        real = 1;
        if (s < end && (*s == '+' || *s == '-'))
            s++;
        if (!(s < end && *s >= '0' && *s <= '9')) {
            r->p = s;
            return r_fail(r, "invalid token");
        }
        while (s < end && *s >= '0' && *s <= '9')
            s++;
    }
    if (s < end && *s >= '0' && *s <= '9') {
        /* a leading zero followed by digits */
        r->p = s;
        return r_fail(r, "invalid token");
    }
    r->p = s;
    if (!real) {
        unsigned long long v = 0, lim = neg ? (unsigned long long)LLONG_MAX + 1
                                            : (unsigned long long)LLONG_MAX;
        const char *d;

        for (d = r->tok + neg; d < s; d++) {
            unsigned digit = (unsigned)(*d - '0');

            if (v > (lim - digit) / 10) {
                snprintf(reason, sizeof reason, "too big %sinteger",
                         neg ? "negative " : "");
                return r_fail(r, reason);
            }
            v = v * 10 + digit;
        }
        lua_pushinteger(r->L, neg ? (lua_Integer)(0ULL - v) : (lua_Integer)v);
    } else {
        char small[64];
        size_t n = (size_t)(s - r->tok);
        char *buf = n < sizeof small ? small
                    : lua_newuserdatauv(r->L, n + 1, 0);
        double d;

        memcpy(buf, r->tok, n);
        buf[n] = '\0';
        /* lua_stringtonumber() copes with a locale's decimal comma */
        if (lua_stringtonumber(r->L, buf) == 0)
            return r_fail(r, "invalid token");
        if (buf != small)
            lua_remove(r->L, -2);
        d = (double)lua_tonumber(r->L, -1);
        if (!lua_isinteger(r->L, -1) && isinf(d)) {
            lua_pop(r->L, 1);
            return r_fail(r, "real number overflow");
        }
        if (lua_isinteger(r->L, -1)) {
            /* cannot happen for a token with '.' or 'e', but be sure */
            lua_pushnumber(r->L, (lua_Number)lua_tointeger(r->L, -1));
            lua_remove(r->L, -2);
        }
    }
    r->tok = NULL;
    return 0;
}

static int r_value(reader *r);

static int r_enter(reader *r)
{
    if (r->depth >= ZKF_JSON_MAX_DEPTH) {
        snprintf(r->err, sizeof r->err, "json: nested deeper than %d",
                 ZKF_JSON_MAX_DEPTH);
        return -1;
    }
    if (!lua_checkstack(r->L, 4)) {
        snprintf(r->err, sizeof r->err, "json: out of Lua stack");
        return -1;
    }
    r->depth++;
    return 0;
}

static int r_array(reader *r)
{
    lua_State *L = r->L;
    lua_Integer n = 0;

    if (r_enter(r) != 0)
        return -1;
    r->p++;
    lua_createtable(L, 4, 0);
    r_skip_space(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
    } else {
        for (;;) {
            if (r_value(r) != 0)
                return -1;
            lua_rawseti(L, -2, ++n);
            r_skip_space(r);
            if (r->p < r->end && *r->p == ',') {
                r->p++;
                continue;
            }
            if (r->p < r->end && *r->p == ']') {
                r->p++;
                break;
            }
            r->tok = r->p;
            r->p += r->p < r->end;
            return r_fail(r, "']' expected");
        }
    }
    lua_pushvalue(L, r->array_mt);
    lua_setmetatable(L, -2);
    r->depth--;
    return 0;
}

static int r_object(reader *r)
{
    lua_State *L = r->L;

    if (r_enter(r) != 0)
        return -1;
    r->p++;
    lua_createtable(L, 0, 4);
    r_skip_space(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        r->depth--;
        return 0;
    }
    for (;;) {
        if (!(r->p < r->end && *r->p == '"')) {
            r->tok = r->p;
            r->p += r->p < r->end;
            return r_fail(r, "string or '}' expected");
        }
        if (r_string(r, 1) != 0)
            return -1;
        r_skip_space(r);
        if (!(r->p < r->end && *r->p == ':')) {
            r->tok = r->p;
            r->p += r->p < r->end;
            return r_fail(r, "':' expected");
        }
        r->p++;
        if (r_value(r) != 0)
            return -1;
        lua_rawset(L, -3);
        r_skip_space(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            r_skip_space(r);
            continue;
        }
        if (r->p < r->end && *r->p == '}') {
            r->p++;
            break;
        }
        r->tok = r->p;
        r->p += r->p < r->end;
        return r_fail(r, "'}' expected");
    }
    r->depth--;
    return 0;
}

static int r_value(reader *r)
{
    const char *s;

    r_skip_space(r);
    if (r->p >= r->end) {
        r->tok = NULL;
        return r_fail(r, "unexpected token");
    }
    switch (*r->p) {
    case '"':
        return r_string(r, 0);
    case '{':
        return r_object(r);
    case '[':
        return r_array(r);
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return r_number(r);
    default:
        break;
    }
    s = r->p;
    r->tok = s;
    while (s < r->end && ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
        s++;
    r->p = s;
    if (s - r->tok == 4 && memcmp(r->tok, "true", 4) == 0)
        lua_pushboolean(r->L, 1);
    else if (s - r->tok == 5 && memcmp(r->tok, "false", 5) == 0)
        lua_pushboolean(r->L, 0);
    else if (s - r->tok == 4 && memcmp(r->tok, "null", 4) == 0)
        lua_pushlightuserdata(r->L, ZKF_JSON_NULL);
    else if (s == r->tok && (unsigned char)*s >= 0x80
             && utf8_seq((const unsigned char *)s, (size_t)(r->end - s)) == 0) {
        char reason[48];

        r->tok = NULL;
        snprintf(reason, sizeof reason, "unable to decode byte 0x%x",
                 (unsigned char)*s);
        return r_fail(r, reason);
    } else {
        if (s == r->tok)
            r->p++;
        return r_fail(r, (r->tok[0] == ']' || r->tok[0] == '}'
                          || r->tok[0] == ',' || r->tok[0] == ':')
                         ? "unexpected token" : "invalid token");
    }
    r->tok = NULL;
    return 0;
}

int zkf_json_decode(lua_State *L, const char *s, size_t len, char *err,
                    size_t errlen)
{
    reader r;
    int top = lua_gettop(L);

    r.L = L;
    r.start = r.p = s;
    r.end = s + len;
    r.tok = NULL;
    r.depth = 0;
    if (luaL_newmetatable(L, ARRAY_MT)) {
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__jsontype");
    }
    r.array_mt = lua_gettop(L);
    if (r_value(&r) == 0) {
        r_skip_space(&r);
        if (r.p == r.end) {
            lua_remove(L, r.array_mt);
            return 0;
        }
        r.tok = r.p;
        r.p++;
        r_fail(&r, "end of file expected");
    }
    lua_settop(L, top);
    snprintf(err, errlen, "%s", r.err);
    return -1;
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
