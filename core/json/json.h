/*
 * json.h - Lua values <-> JSON (jansson) and base64, for C code that
 * serves JSON from Lua tables (the HTTP API, zk dump/restore) and for
 * json/json.c, which is their Lua face (core.json_encode ...; those
 * two read and write text directly, with the same mapping).
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
#include <jansson.h>
#include <lua.h>

#define ZKF_JSON_MAX_DEPTH 200

/* The address whose lightuserdata is core.null (JSON null inside tables). */
extern const char zkf_json_null_sentinel;
#define ZKF_JSON_NULL ((void *)&zkf_json_null_sentinel)

/* Flags for zkf_json_encode(). */
#define ZKF_JSON_PRETTY    1    /* two-space indent, ": " after keys */
#define ZKF_JSON_SORT_KEYS 2    /* object keys in byte order (slower) */

/* Pushes the JSON text of the Lua value at `idx` (compact, object keys in
 * lua_next() order unless `flags` say otherwise): the same text
 * json_dumps() writes for zkf_json_from_lua()'s tree, without building
 * it.  Raises "json: $.path: reason" on a value JSON cannot carry (and
 * leaks nothing when it does: a long text is built in a userdata). */
void zkf_json_encode(lua_State *L, int idx, int flags);

/* Converts the Lua value at `idx` to JSON.  Returns a new reference (free
 * it with json_decref()), or NULL with "json: $.path: reason" in `err`.
 * Raises a Lua error only when Lua runs out of memory. */
json_t *zkf_json_from_lua(lua_State *L, int idx, char *err, size_t errlen);

/* Pushes `j` (borrowed) as a Lua value and returns 0, or pushes nothing
 * and returns -1 with "json: ..." in `err` when it nests too deep. */
int zkf_json_push(lua_State *L, const json_t *j, char *err, size_t errlen);

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
