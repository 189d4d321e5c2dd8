/*
 * lua/lbind.h - how the pieces of `zkflow.core` (the C module shared by the
 * engine's Lua state and plain lua5.4) are put together.
 *
 * lua/module.c creates the module table and calls each zkf_lua_open_*()
 * with that table on top of the stack; each adds its functions and metatables and
 * leaves the stack as it found it.  Loop thread only.
 */
#ifndef ZKF_LBIND_H
#define ZKF_LBIND_H

#include <lua.h>
#include <lauxlib.h>
#include "loop/loop.h"

/* The loop the module in `L` is bound to: the engine's when the engine
 * created the state, otherwise one created on first use with a poll() host
 * (freed when `L` closes).  Borrowed.  Raises a Lua error when out of
 * memory. */
zkf_loop *zkf_lua_loop(lua_State *L);

/* Plain Lua only: the poll host behind zkf_lua_loop(), or NULL inside the
 * engine (whose host runs the loop).  Borrowed. */
zkf_pollhost *zkf_lua_pollhost(lua_State *L);

/* Calls the function at stack index `idx` (a registry ref is usual) with
 * `nargs` arguments below it... the convention for loop callbacks into Lua:
 * push the function, push arguments, then zkf_lua_pcall(L, nargs), which
 * reports an error through core.log and pops everything.  Returns 0 or -1. */
int zkf_lua_pcall(lua_State *L, int nargs);

/* Logs `msg` at `level` ("debug", "info", "warn", "error") through the
 * engine's log callback (stderr in plain Lua). */
void zkf_lua_log(lua_State *L, const char *level, const char *msg);

void zkf_lua_open_loop(lua_State *L);   /* lua/loop.c: now mono timer spawn run stop */
void zkf_lua_open_store(lua_State *L);  /* lua/store.c: store */
void zkf_lua_open_cron(lua_State *L);   /* lua/cron.c: cron */
void zkf_lua_open_json(lua_State *L);   /* json/json.c: json_encode json_decode null base64_* */
void zkf_lua_open_fs(lua_State *L);     /* lua/fs.c: listdir stat mkdirs read_file write_file */
void zkf_lua_open_watch(lua_State *L);  /* lua/watch.c: watch_tree (inotify) */
void zkf_lua_open_net(lua_State *L);    /* lua/net.c: tcp_request */
void zkf_lua_open_curl(lua_State *L);   /* lua/curl.c: http_request curl_version */
void zkf_lua_open_crypto(lua_State *L); /* lua/crypto.c: sha256 hmac_sha256 pbkdf2_sha256 random_hex equal_ct */
void zkf_lua_open_notify(lua_State *L); /* lua/notify.c: sd_notify */
void zkf_lua_open_sqlite(lua_State *L); /* lua/sql_sqlite.c: sqlite_open */
void zkf_lua_open_probe(lua_State *L);  /* lua/probe.c: probe_spawn */
void zkf_lua_open_pg(lua_State *L);     /* lua/pg.c: pg_open */

/* The value of `core.sql_null`, the NULL of SQL parameters (a light
 * userdata every SQL driver accepts).  Static; never freed. */
void *zkf_lua_sql_null(void);

/* The whole module: returns 1 (the table).  luaopen_zkflow_core calls it. */
int zkf_lua_open_core(lua_State *L);

#endif
