/*
 * json/json.h - the JSON codec between text and Lua values, and base64.
 * Its Lua face is core.json_encode, core.json_decode, core.null and
 * core.base64_* (zkf_lua_open_json); the HTTP API, the store records and
 * zk dump/restore all go through it from Lua.  The text is jansson's
 * dialect (see json.c), checked against jansson by spec/c/test_json.c.
 *
 * Mapping: nil and core.null (ZKF_JSON_NULL) are null; integers stay
 * integers and floats stay reals; a table whose keys are exactly 1..n
 * (n >= 1) is an array, any other table an object, an empty table `{}`
 * unless its metatable says __jsontype = "array" (or "object" to force an
 * object).  Decoded arrays carry such a metatable, so `[]` round-trips.
 * Nesting is limited to ZKF_JSON_MAX_DEPTH both ways.  Loop thread only.
 */
#ifndef ZKF_JSON_H
#define ZKF_JSON_H

#include <stddef.h>
#include <lua.h>

#define ZKF_JSON_MAX_DEPTH 200

/* The address whose lightuserdata is core.null (JSON null inside tables). */
extern const char zkf_json_null_sentinel;
#define ZKF_JSON_NULL ((void *)&zkf_json_null_sentinel)

/* Flags for zkf_json_encode(). */
#define ZKF_JSON_PRETTY    1    /* two-space indent, ": " after keys */
#define ZKF_JSON_SORT_KEYS 2    /* object keys in byte order (slower) */

/* Pushes the JSON text of the Lua value at `idx` (compact, object keys in
 * lua_next() order unless `flags` say otherwise), the text json_dumps()
 * writes for the same value.  Raises "json: $.path: reason" on a value JSON
 * cannot carry (and leaks nothing when it does: a long text is built in a
 * userdata). */
void zkf_json_encode(lua_State *L, int idx, int flags);

/* Pushes the value of the JSON text `s` (`len` bytes, NULs included) and
 * returns 0, or pushes nothing and returns -1 with "json: line L column C:
 * reason" in `err`.  Arrays get the metatable that marks them as arrays
 * (created in `L` on first use).  Raises a Lua error only when Lua runs out
 * of memory. */
int zkf_json_decode(lua_State *L, const char *s, size_t len, char *err,
                    size_t errlen);

/* Base64 (RFC 4648, standard alphabet, padded).  zkf_base64_encode()
 * writes exactly zkf_base64_len(n) bytes (no NUL) into `out`.
 * zkf_base64_decode() skips ASCII white space, accepts missing padding,
 * writes at most n / 4 * 3 + 3 bytes to `out` and returns how many, or -1
 * with "base64: ..." in `err`. */
size_t zkf_base64_len(size_t n);
void zkf_base64_encode(const unsigned char *in, size_t n, char *out);
long long zkf_base64_decode(const char *in, size_t n, unsigned char *out,
                            char *err, size_t errlen);

#endif
