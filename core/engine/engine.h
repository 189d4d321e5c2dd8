/*
 * engine/engine.h - what the rest of core/ may ask of the engine.
 * Loop thread only.
 */
#ifndef ZKF_ENGINE_INTERNAL_H
#define ZKF_ENGINE_INTERNAL_H

#include <stddef.h>
#include <lua.h>
#include "zkflow.h"
#include "engine/http.h"
#include "loop/loop.h"

/* The engine that owns `L`, or NULL in plain Lua.  Borrowed. */
zkf_engine *zkf_engine_from_lua(lua_State *L);

/* Logs through the engine's log callback; `level` is "debug", "info",
 * "warn" or "error".  `msg` is borrowed. */
void zkf_engine_log(zkf_engine *e, const char *level, const char *msg);

/* Caps the bytes the Lua state may hold (0: no cap) / reports them. */
void zkf_engine_mem_limit(zkf_engine *e, size_t limit);
size_t zkf_engine_mem_used(const zkf_engine *e);
/* Drops log messages below `level` (0 debug .. 3 error) before the host's
 * callback sees them (/config's log_level). */
void zkf_engine_log_min(zkf_engine *e, int level);

/* The event base of a libevent engine, else NULL.  Borrowed. */
struct event_base *zkf_engine_base(zkf_engine *e);

/* Adds the engine-only functions (api_listen, ...) to the `zkflow.core`
 * table on the top of the stack; nothing in plain Lua. */
void zkf_engine_open_lua(lua_State *L);

/* api.c: serves HTTP on `addr`:`port` through zkf_engine_http() on the
 * engine's event base.  Returns 0 or -1 with the reason in `err`.  The
 * listener is freed by zkf_api_close() (zkf_engine_free calls it). */
struct zkf_api;
struct zkf_api *zkf_api_listen(zkf_engine *e, const char *addr, int port,
                               char *err, size_t errlen);
void zkf_api_close(struct zkf_api *api);

#endif
