/*
 * test_json.c - core/json/json.c's reader (core.json_decode), proven by a
 * differential test against jansson, whose dialect it implements: the
 * same documents go to zkf_json_decode() and to
 * json_loadb(JSON_DECODE_ANY | JSON_ALLOW_NUL) - any value at the top,
 * "\u0000" allowed inside strings, which is the contract of json.c - and
 * both must accept or reject alike and, when both accept, hold the same
 * value.  jansson is a test-only dependency: libzkflow does not link it.
 *
 * The documents: the corpus in spec/fixtures/json/ (y_*: both accept,
 * n_*: both reject, d_*: a deliberate difference, below), then random
 * documents and mutations of corpus and random documents.
 * ZKFLOW_JSON_FUZZ_ITERATIONS (default 200000, about 2 s) and
 * ZKFLOW_JSON_FUZZ_SEED (default 1) make a longer or another run; a
 * failure prints the seed, the iteration and the document in hex.
 *
 * How values compare:
 *   - objects: the same set of keys (bytes, NULs included) with equal
 *     values; a decoded object is a table without metatable.  Duplicate
 *     keys keep the last value in both readers.
 *   - arrays: the same length and equal elements in order; a decoded array
 *     carries the metatable with __jsontype = "array".
 *   - strings: the same bytes.
 *   - integers (no '.', no exponent): both are 64-bit integers and equal
 *     exactly; both refuse what does not fit.
 *   - reals: bit for bit.  Both readers hand the token to the C library's
 *     strtod (ours through lua_stringtonumber), which rounds correctly,
 *     so there is no precision to allow for; -0.0 keeps its sign.  Both
 *     refuse overflow to infinity and accept underflow.
 *   - true, false, null (core.null) by kind.
 *
 * Deliberate differences, where ours rejects what jansson accepts:
 *   - nesting deeper than ZKF_JSON_MAX_DEPTH (200) levels; jansson goes to
 *     JSON_PARSER_MAX_DEPTH (2048).  Our encoder has the same limit, so
 *     what we read we can write back.
 *   - a NUL byte right after a number or a literal: jansson's lexer drops
 *     it ("1\0" is 1, "[1\0,2]" is [1,2]; anywhere else a raw NUL is an
 *     error to it too).  Ours refuses every raw NUL outside a string, where
 *     JSON allows none.
 * Error messages are not compared: ours keep jansson's shape ("line L
 * column C: reason") but not always its column.
 */
#include <math.h>
#include <stdint.h>
#include <dirent.h>
#include <jansson.h>
#include <lua.h>
#include <lauxlib.h>

#include "json/json.h"
#include "test.h"

#define JANSSON_FLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)
#define MAX_DOC (64 * 1024)

/* ---- comparing the two readers ----------------------------------------- */

static int is_array_table(lua_State *L, int idx)
{
    int arr = 0;

    if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
        arr = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "array") == 0;
        lua_pop(L, 1);
    }
    return arr;
}

/* 1 when the Lua value at `idx` holds what `j` holds; else 0 with the
 * first difference in `why`. */
static int same_value(lua_State *L, int idx, const json_t *j, char *why,
                      size_t n)
{
    idx = lua_absindex(L, idx);
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        size_t keylen, count = 0;
        json_t *v;

        if (lua_type(L, idx) != LUA_TTABLE || is_array_table(L, idx)) {
            snprintf(why, n, "object: ours is a %s", luaL_typename(L, idx));
            return 0;
        }
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            lua_pop(L, 1);
            count++;
        }
        if (count != json_object_size(j)) {
            snprintf(why, n, "object: %zu keys, ours %zu",
                     json_object_size(j), count);
            return 0;
        }
        json_object_keylen_foreach((json_t *)j, key, keylen, v) {
            int ok;

            lua_pushlstring(L, key, keylen);
            lua_rawget(L, idx);
            ok = !lua_isnil(L, -1) && same_value(L, -1, v, why, n);
            lua_pop(L, 1);
            if (!ok) {
                if (!why[0])
                    snprintf(why, n, "object: ours lacks key '%.*s'",
                             (int)(keylen > 40 ? 40 : keylen), key);
                return 0;
            }
        }
        return 1;
    }
    case JSON_ARRAY: {
        size_t i, len = json_array_size(j);

        if (lua_type(L, idx) != LUA_TTABLE || !is_array_table(L, idx)) {
            snprintf(why, n, "array: ours is not one");
            return 0;
        }
        if (lua_rawlen(L, idx) != len) {
            snprintf(why, n, "array: %zu items, ours %zu", len,
                     (size_t)lua_rawlen(L, idx));
            return 0;
        }
        for (i = 0; i < len; i++) {
            int ok;

            lua_rawgeti(L, idx, (lua_Integer)i + 1);
            ok = same_value(L, -1, json_array_get(j, i), why, n);
            lua_pop(L, 1);
            if (!ok)
                return 0;
        }
        return 1;
    }
    case JSON_STRING: {
        size_t len;
        const char *s;

        if (lua_type(L, idx) != LUA_TSTRING) {
            snprintf(why, n, "string: ours is a %s", luaL_typename(L, idx));
            return 0;
        }
        s = lua_tolstring(L, idx, &len);
        if (len != json_string_length(j)
            || memcmp(s, json_string_value(j), len) != 0) {
            snprintf(why, n, "string: different bytes");
            return 0;
        }
        return 1;
    }
    case JSON_INTEGER:
        if (!lua_isinteger(L, idx)
            || lua_tointeger(L, idx) != (lua_Integer)json_integer_value(j)) {
            snprintf(why, n, "integer %lld: ours differs",
                     (long long)json_integer_value(j));
            return 0;
        }
        return 1;
    case JSON_REAL: {
        double a = json_real_value(j), b;

        if (lua_type(L, idx) != LUA_TNUMBER || lua_isinteger(L, idx)) {
            snprintf(why, n, "real %.17g: ours is not a float", a);
            return 0;
        }
        b = (double)lua_tonumber(L, idx);
        if (memcmp(&a, &b, sizeof a) != 0) {
            snprintf(why, n, "real %.17g: ours %.17g", a, b);
            return 0;
        }
        return 1;
    }
    case JSON_TRUE:
    case JSON_FALSE:
        if (lua_type(L, idx) != LUA_TBOOLEAN
            || lua_toboolean(L, idx) != json_is_true(j)) {
            snprintf(why, n, "boolean: ours differs");
            return 0;
        }
        return 1;
    default:
        if (lua_touserdata(L, idx) != ZKF_JSON_NULL) {
            snprintf(why, n, "null: ours is a %s", luaL_typename(L, idx));
            return 0;
        }
        return 1;
    }
}

static int tree_depth(const json_t *j)
{
    int d = 0;

    if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j); i++) {
            int c = tree_depth(json_array_get(j, i));
            d = c > d ? c : d;
        }
        return d + 1;
    }
    if (json_is_object(j)) {
        const char *key;
        json_t *v;

        json_object_foreach((json_t *)j, key, v) {
            int c = tree_depth(v);
            d = c > d ? c : d;
        }
        return d + 1;
    }
    return 0;
}

/* jansson's lexer drops a NUL byte that directly follows a number or a
 * literal (its one-byte lookahead cannot put a NUL back): "1\0" is 1 and
 * "[1\0,2]" is [1,2] to it.  Copies `s` without such NULs into `out` (room
 * for `len` bytes) and returns the new length, or 0 when there was none. */
static size_t drop_jansson_nuls(const char *s, size_t len, char *out)
{
    size_t o = 0, dropped = 0;
    int in = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char prev = i ? (unsigned char)s[i - 1] : 0;

        if (!in && s[i] == '\0' && i > 0
            && ((prev >= '0' && prev <= '9') || (prev >= 'a' && prev <= 'z')
                || (prev >= 'A' && prev <= 'Z'))) {
            dropped++;
            continue;
        }
        if (in && s[i] == '\\' && i + 1 < len) {
            out[o++] = s[i++];
        } else if (s[i] == '"') {
            in = !in;
        }
        out[o++] = s[i];
    }
    return dropped ? o : 0;
}

enum { BOTH_ACCEPT, BOTH_REJECT, DELIBERATE, DISAGREE };

/* Whether `s` differs from what jansson read (`j`) only by the NULs it
 * dropped: then ours reads `s` without them as the same value. */
static int nul_difference(lua_State *L, const char *s, size_t len,
                          const json_t *j)
{
    char *copy = malloc(len ? len : 1), err[256], why[256];
    size_t n = drop_jansson_nuls(s, len, copy);
    int same = n > 0 && zkf_json_decode(L, copy, n, err, sizeof err) == 0
               && same_value(L, -1, j, why, sizeof why);

    free(copy);
    return same;
}

/* Runs both readers on `s`; returns one of the above, with the reason of a
 * disagreement in `why`. */
static int judge(lua_State *L, const char *s, size_t len, char *why,
                 size_t n)
{
    char err[256];
    json_error_t jerr;
    json_t *j = json_loadb(s, len, JANSSON_FLAGS, &jerr);
    int ours = zkf_json_decode(L, s, len, err, sizeof err) == 0;
    int verdict;

    why[0] = '\0';
    if (ours && j) {
        verdict = same_value(L, -1, j, why, n) ? BOTH_ACCEPT : DISAGREE;
    } else if (!ours && !j) {
        verdict = BOTH_REJECT;
    } else if (ours) {
        snprintf(why, n, "jansson rejects (%.160s), ours accepts", jerr.text);
        verdict = DISAGREE;
    } else if (strstr(err, "nested deeper than") && tree_depth(j) >
               ZKF_JSON_MAX_DEPTH) {
        verdict = DELIBERATE;
    } else if (nul_difference(L, s, len, j)) {
        verdict = DELIBERATE;
    } else {
        snprintf(why, n, "jansson accepts, ours rejects (%.160s)", err);
        verdict = DISAGREE;
    }
    json_decref(j);
    lua_settop(L, 0);
    return verdict;
}

static void print_doc(const char *s, size_t len)
{
    printf("  document (%zu bytes):", len);
    for (size_t i = 0; i < len && i < 400; i++)
        printf(" %02x", (unsigned char)s[i]);
    printf("%s\n", len > 400 ? " ..." : "");
}

/* ---- the corpus ---------------------------------------------------------- */

typedef struct doc {
    char *name;
    char *text;
    size_t len;
} doc;

static doc corpus[256];
static size_t ncorpus;

static const char *corpus_dir(void)
{
    const char *d = getenv("ZKFLOW_JSON_CORPUS");
    return d && *d ? d : "spec/fixtures/json";
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const doc *)a)->name, ((const doc *)b)->name);
}

static void load_corpus(void)
{
    DIR *dir = opendir(corpus_dir());
    struct dirent *de;

    if (!dir)
        return;
    while ((de = readdir(dir)) != NULL && ncorpus < 256) {
        char path[1024];
        FILE *f;
        doc *d = &corpus[ncorpus];

        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", corpus_dir(), de->d_name);
        f = fopen(path, "rb");
        if (!f)
            continue;
        d->text = malloc(MAX_DOC);
        d->len = fread(d->text, 1, MAX_DOC, f);
        fclose(f);
        d->name = strdup(de->d_name);
        ncorpus++;
    }
    closedir(dir);
    qsort(corpus, ncorpus, sizeof *corpus, by_name);
}

static void free_corpus(void)
{
    for (size_t i = 0; i < ncorpus; i++) {
        free(corpus[i].name);
        free(corpus[i].text);
    }
    ncorpus = 0;
}

static void test_json_corpus_agrees_with_jansson(void)
{
    lua_State *L = luaL_newstate();
    size_t bad = 0, kinds[3] = { 0, 0, 0 };
    char why[256];

    ASSERT(L != NULL);
    ASSERT(ncorpus >= 40);
    for (size_t i = 0; i < ncorpus; i++) {
        const doc *d = &corpus[i];
        int want = d->name[0] == 'y' ? BOTH_ACCEPT
                   : d->name[0] == 'n' ? BOTH_REJECT : DELIBERATE;
        int got = judge(L, d->text, d->len, why, sizeof why);

        if (got != want) {
            printf("  %s: expected verdict %d, got %d %s\n", d->name, want,
                   got, why);
            bad++;
        } else {
            kinds[want]++;
        }
    }
    lua_close(L);
    ASSERT_EQ(0, bad);
    ASSERT(kinds[BOTH_ACCEPT] > 0 && kinds[BOTH_REJECT] > 0
           && kinds[DELIBERATE] > 0);
}

/* ---- random and mutated documents ---------------------------------------- */

static uint64_t rng;

static uint64_t next_u64(void)
{
    /* xorshift64*: enough for test data, the same on every machine */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

static unsigned pick(unsigned n)
{
    return (unsigned)(next_u64() % n);
}

typedef struct buf {
    char s[MAX_DOC];
    size_t len;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->len + n > MAX_DOC)
        n = MAX_DOC - b->len;
    memcpy(b->s + b->len, s, n);
    b->len += n;
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void gen_space(buf *b)
{
    static const char *ws[] = { "", "", "", " ", "\n", "\t", "\r\n  " };
    puts_(b, ws[pick(7)]);
}

static void gen_number(buf *b)
{
    static const char *edge[] = {
        "0", "-0", "0.0", "-0.0", "9223372036854775807",
        "-9223372036854775808", "9223372036854775808",
        "-9223372036854775809", "18446744073709551616", "1e308", "1e309",
        "-1e309", "1e-400", "2.2250738585072014e-308", "4.9e-324",
        "1.7976931348623157e308", "0.1", "1E2", "1e+2", "1e-2", "123.456e7",
        "100000000000000000000000000000", "0.30000000000000004",
    };
    char tmp[64];

    switch (pick(4)) {
    case 0:
        puts_(b, edge[pick(sizeof edge / sizeof *edge)]);
        break;
    case 1:
        snprintf(tmp, sizeof tmp, "%lld", (long long)next_u64());
        puts_(b, tmp);
        break;
    case 2:
        snprintf(tmp, sizeof tmp, "%d", (int)pick(2000) - 1000);
        puts_(b, tmp);
        break;
    default:
        snprintf(tmp, sizeof tmp, "%s%u.%u%s%d", pick(2) ? "-" : "",
                 pick(100000), pick(1000000),
                 pick(2) ? "e" : "E", (int)pick(700) - 350);
        puts_(b, tmp);
        break;
    }
}

static void gen_string(buf *b)
{
    static const char *piece[] = {
        "a", "key", " ", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r",
        "\\t", "\\u0000", "\\u0041", "\\u00e9", "\\u20AC", "\\uFFFF",
        "\\ud83d\\ude00", "\\uD800\\uDC00", "\\udbff\\udfff", "\\ud800",
        "\\udc00", "\\ud800\\u0041", "\xc3\xa9", "\xe2\x82\xac",
        "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80",
    };
    int n = (int)pick(6);

    puts_(b, "\"");
    for (int i = 0; i < n; i++)
        puts_(b, piece[pick(sizeof piece / sizeof *piece)]);
    puts_(b, "\"");
}

static void gen_value(buf *b, int depth)
{
    int k = (int)pick(depth > 6 ? 5 : 8);

    gen_space(b);
    switch (k) {
    case 0: puts_(b, "null"); break;
    case 1: puts_(b, pick(2) ? "true" : "false"); break;
    case 2: gen_number(b); break;
    case 3: case 4: gen_string(b); break;
    case 5: case 6: {
        int n = (int)pick(4);

        puts_(b, "[");
        for (int i = 0; i < n; i++) {
            if (i)
                puts_(b, ",");
            gen_value(b, depth + 1);
        }
        gen_space(b);
        puts_(b, "]");
        break;
    }
    default: {
        int n = (int)pick(4);

        puts_(b, "{");
        for (int i = 0; i < n; i++) {
            if (i)
                puts_(b, ",");
            gen_space(b);
            if (pick(3) == 0)
                puts_(b, "\"k\"");      /* duplicate keys */
            else
                gen_string(b);
            gen_space(b);
            puts_(b, ":");
            gen_value(b, depth + 1);
        }
        gen_space(b);
        puts_(b, "}");
        break;
    }
    }
    gen_space(b);
}

static void close_deep(buf *b, const char *open, size_t n)
{
    for (size_t i = n; i-- > 0;)
        puts_(b, open[i] == '[' ? "]" : "}");
}

/* Nesting around the limits: 199..202 levels, sometimes 2049. */
static void gen_deep_doc(buf *b)
{
    char open[2100];
    size_t n = pick(8) == 0 ? 2049 : 199 + pick(4);

    for (size_t i = 0; i < n; i++) {
        open[i] = pick(4) ? '[' : '{';
        puts_(b, open[i] == '[' ? "[" : "{\"a\":");
    }
    gen_value(b, 7);
    close_deep(b, open, n);
}

static void mutate(buf *b)
{
    static const char bytes[] = {
        '"', '\\', '{', '}', '[', ']', ',', ':', '0', '1', '-', '+', 'e',
        '.', 'u', 'd', 'n', 't', ' ', '\n', '\0', '\x01', '\x7f',
        (char)0x80, (char)0xbf, (char)0xc0, (char)0xc3, (char)0xe2,
        (char)0xed, (char)0xf0, (char)0xf4, (char)0xf5, (char)0xff,
    };
    int n = 1 + (int)pick(3);

    for (int k = 0; k < n; k++) {
        size_t at = b->len ? pick((unsigned)b->len + 1) : 0;

        switch (pick(5)) {
        case 0:         /* replace a byte */
            if (at < b->len)
                b->s[at] = bytes[pick(sizeof bytes)];
            break;
        case 1:         /* insert a byte */
            if (b->len < MAX_DOC) {
                memmove(b->s + at + 1, b->s + at, b->len - at);
                b->s[at] = bytes[pick(sizeof bytes)];
                b->len++;
            }
            break;
        case 2:         /* delete a byte */
            if (at < b->len) {
                memmove(b->s + at, b->s + at + 1, b->len - at - 1);
                b->len--;
            }
            break;
        case 3:         /* truncate */
            b->len = at;
            break;
        default: {      /* repeat a slice */
            size_t m = pick(8);

            if (at + m <= b->len && b->len + m <= MAX_DOC) {
                memmove(b->s + at + m, b->s + at, b->len - at);
                b->len += m;
            }
            break;
        }
        }
    }
}

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

static void test_json_fuzz_agrees_with_jansson(void)
{
    long iterations = env_long("ZKFLOW_JSON_FUZZ_ITERATIONS", 200000);
    long seed = env_long("ZKFLOW_JSON_FUZZ_SEED", 1);
    long counts[4] = { 0, 0, 0, 0 };
    lua_State *L = luaL_newstate();
    buf *b = malloc(sizeof *b);
    char why[256];

    ASSERT(L != NULL && b != NULL);
    rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)seed;
    for (long i = 0; i < iterations; i++) {
        unsigned how = pick(10);
        int v;

        b->len = 0;
        if (how < 3 && ncorpus) {
            const doc *d = &corpus[pick((unsigned)ncorpus)];
            put(b, d->text, d->len);
        } else if (how == 3) {
            gen_deep_doc(b);
        } else {
            gen_value(b, 0);
        }
        if (how != 9)   /* a tenth stays as generated */
            mutate(b);
        v = judge(L, b->s, b->len, why, sizeof why);
        counts[v]++;
        if (v == DISAGREE) {
            printf("  seed %ld iteration %ld: %s\n", seed, i, why);
            print_doc(b->s, b->len);
            break;
        }
        if (i % 4096 == 0)
            lua_gc(L, LUA_GCCOLLECT);
    }
    printf("  %ld documents: %ld both accept, %ld both reject, "
           "%ld deliberate\n", iterations, counts[BOTH_ACCEPT],
           counts[BOTH_REJECT], counts[DELIBERATE]);
    free(b);
    lua_close(L);
    ASSERT_EQ(0, counts[DISAGREE]);
    ASSERT(counts[BOTH_ACCEPT] > 0 && counts[BOTH_REJECT] > 0);
}

int main(void)
{
    load_corpus();
    RUN(test_json_corpus_agrees_with_jansson);
    RUN(test_json_fuzz_agrees_with_jansson);
    free_corpus();
    return test_report();
}
