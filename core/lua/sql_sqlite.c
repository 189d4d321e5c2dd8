/*
 * lua/sql_sqlite.c - `core.sqlite_open(path)`: a SQL connection to a SQLite
 * file, the SQLite half of the SQL connection contract that the history
 * store (lua/zkflow/history) is written against (its other half is the
 * PostgreSQL driver, `core.pg_open`).
 *
 *   local conn = core.sqlite_open(path)      -- or nil, "SQL: <path>: why"
 *   rows, affected = conn:query(sql, params) -- ONE statement, $1..$n
 *   conn:exec(script)                        -- several, no parameters
 *   conn:close()                             -- idempotent; also __gc
 *   conn.driver                              -- "sqlite"
 *
 * Parameters are written $1, $2 ... as PostgreSQL writes them; SQLite
 * binds "$1" by name.  A NULL parameter is `core.sql_null`.  Rows are
 * tables keyed by column name, NULL columns absent.  Errors raise a Lua
 * error starting "SQL: " with SQLite's own message.
 *
 * This connection is separate from the embedded store's (store/sqlite.c),
 * even on the same file: WAL lets either read while the other writes.  A
 * write waits up to 2 s (busy_timeout) for another connection's write
 * lock, so a caller in the process that owns the store commits the
 * store's open turn (store:flush()) before writing here: the store holds
 * its write lock until the end of the loop turn, and a wait on it in the
 * same thread could only time out.  Every call completes synchronously.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>

#include "lua/lbind.h"

#define SQL_MT "zkflow.SqlSqlite"
#define BUSY_MS 2000
#define NCACHE 32               /* prepared statements kept per connection */

typedef struct cached {
    char *sql;                  /* owned */
    sqlite3_stmt *st;
    unsigned long used;         /* last use, for eviction */
} cached;

typedef struct lsql {
    sqlite3 *db;                /* NULL once closed */
    cached cache[NCACHE];
    unsigned long tick;
} lsql;

static lsql *check_conn(lua_State *L)
{
    lsql *c = luaL_checkudata(L, 1, SQL_MT);

    if (c->db == NULL)
        luaL_error(L, "SQL: the connection is closed");
    return c;
}

static void drop_cache(lsql *c)
{
    for (int i = 0; i < NCACHE; i++) {
        if (c->cache[i].st)
            sqlite3_finalize(c->cache[i].st);
        free(c->cache[i].sql);
        c->cache[i].st = NULL;
        c->cache[i].sql = NULL;
    }
}

/* The prepared statement for `sql`, from the cache or made now (the least
 * recently used entry gives way).  Borrowed: valid until the next call on
 * `c`.  NULL with SQLite's message in the connection when it fails. */
static sqlite3_stmt *prepare(lsql *c, const char *sql, size_t len)
{
    int slot = 0;
    sqlite3_stmt *st = NULL;
    char *copy;

    for (int i = 0; i < NCACHE; i++) {
        if (c->cache[i].sql && strcmp(c->cache[i].sql, sql) == 0) {
            c->cache[i].used = ++c->tick;
            return c->cache[i].st;
        }
        if (c->cache[i].used < c->cache[slot].used)
            slot = i;
    }
    if (sqlite3_prepare_v3(c->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT,
                           &st, NULL) != SQLITE_OK || st == NULL) {
        sqlite3_finalize(st);
        return NULL;
    }
    copy = malloc(len + 1);
    if (copy == NULL)
        return st;              /* uncached: the caller finalizes it */
    memcpy(copy, sql, len + 1);
    if (c->cache[slot].st)
        sqlite3_finalize(c->cache[slot].st);
    free(c->cache[slot].sql);
    c->cache[slot].sql = copy;
    c->cache[slot].st = st;
    c->cache[slot].used = ++c->tick;
    return st;
}

static int is_cached(lsql *c, sqlite3_stmt *st)
{
    for (int i = 0; i < NCACHE; i++)
        if (c->cache[i].st == st)
            return 1;
    return 0;
}

/* Resets (or, uncached, finalizes) `st` and raises "SQL: <msg>"; `msg`
 * is copied first because the reset may change SQLite's message. */
static int fail(lua_State *L, lsql *c, sqlite3_stmt *st, const char *msg)
{
    lua_pushfstring(L, "SQL: %s", msg);
    if (st) {
        sqlite3_clear_bindings(st);
        if (is_cached(c, st))
            sqlite3_reset(st);
        else
            sqlite3_finalize(st);
    }
    return lua_error(L);
}

static void push_column(lua_State *L, sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
        break;
    case SQLITE_FLOAT:
        lua_pushnumber(L, sqlite3_column_double(st, i));
        break;
    default: {
        const void *p = sqlite3_column_blob(st, i);
        int n = sqlite3_column_bytes(st, i);
        lua_pushlstring(L, p ? p : "", (size_t)n);
        break;
    }
    }
}

/* conn:query(sql [, params]) -> rows, affected */
static int l_query(lua_State *L)
{
    lsql *c = check_conn(L);
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    sqlite3_stmt *st;
    lua_Integer n = 0;
    int rc, ncol, row = 0;

    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        n = luaL_len(L, 3);
    }
    st = prepare(c, sql, len);
    if (st == NULL)
        return fail(L, c, NULL, sqlite3_errmsg(c->db));
    for (lua_Integer i = 1; i <= n; i++) {
        char name[24];
        int idx;

        snprintf(name, sizeof name, "$%lld", (long long)i);
        idx = sqlite3_bind_parameter_index(st, name);
        lua_geti(L, 3, i);
        if (idx == 0) {
            lua_pop(L, 1);
            continue;           /* a parameter the statement does not use */
        }
        switch (lua_type(L, -1)) {
        case LUA_TSTRING: {
            size_t sl;
            const char *s = lua_tolstring(L, -1, &sl);
            rc = sqlite3_bind_text(st, idx, s, (int)sl, SQLITE_TRANSIENT);
            break;
        }
        case LUA_TNUMBER:
            if (lua_isinteger(L, -1))
                rc = sqlite3_bind_int64(st, idx, lua_tointeger(L, -1));
            else
                rc = sqlite3_bind_double(st, idx, lua_tonumber(L, -1));
            break;
        case LUA_TBOOLEAN:
            rc = sqlite3_bind_int(st, idx, lua_toboolean(L, -1));
            break;
        case LUA_TLIGHTUSERDATA:
            if (lua_touserdata(L, -1) == zkf_lua_sql_null()) {
                rc = sqlite3_bind_null(st, idx);
                break;
            }
            /* fall through */
        default: {
            char msg[96];
            snprintf(msg, sizeof msg, "parameter $%lld: a %s cannot be bound",
                     (long long)i, luaL_typename(L, -1));
            return fail(L, c, st, msg);
        }
        }
        lua_pop(L, 1);
        if (rc != SQLITE_OK)
            return fail(L, c, st, sqlite3_errmsg(c->db));
    }
    ncol = sqlite3_column_count(st);
    lua_newtable(L);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        lua_createtable(L, 0, ncol);
        for (int i = 0; i < ncol; i++) {
            if (sqlite3_column_type(st, i) == SQLITE_NULL)
                continue;
            push_column(L, st, i);
            lua_setfield(L, -2, sqlite3_column_name(st, i));
        }
        lua_rawseti(L, -2, ++row);
    }
    if (rc != SQLITE_DONE)
        return fail(L, c, st, sqlite3_errmsg(c->db));
    lua_pushinteger(L, sqlite3_stmt_readonly(st) ? 0 : sqlite3_changes(c->db));
    sqlite3_clear_bindings(st);
    if (is_cached(c, st))
        sqlite3_reset(st);
    else
        sqlite3_finalize(st);
    return 2;
}

/* conn:exec(script): several statements, no parameters (migrations). */
static int l_exec(lua_State *L)
{
    lsql *c = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    char *err = NULL;

    if (sqlite3_exec(c->db, sql, NULL, NULL, &err) != SQLITE_OK) {
        lua_pushfstring(L, "SQL: %s", err ? err : sqlite3_errmsg(c->db));
        sqlite3_free(err);
        return lua_error(L);
    }
    return 0;
}

/* close, __gc and __close: idempotent. */
static int l_close(lua_State *L)
{
    lsql *c = luaL_checkudata(L, 1, SQL_MT);

    if (c->db) {
        drop_cache(c);
        sqlite3_close_v2(c->db);
        c->db = NULL;
    }
    return 0;
}

static int l_tostring(lua_State *L)
{
    lsql *c = luaL_checkudata(L, 1, SQL_MT);

    lua_pushfstring(L, "zkflow.SqlSqlite (%s)",
                    c->db ? sqlite3_db_filename(c->db, "main") : "closed");
    return 1;
}

/* core.sqlite_open(path) -> conn, or nil and "SQL: <path>: <why>".  The
 * file is made when missing; WAL journal, synchronous NORMAL (the
 * store's default: docs/durability.md), busy_timeout 2 s. */
static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lsql *c = lua_newuserdatauv(L, sizeof *c, 0);
    char *err = NULL;

    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, SQL_MT);
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE |
                        SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "SQL: %s: %s", path,
                        c->db ? sqlite3_errmsg(c->db) : "out of memory");
        sqlite3_close_v2(c->db);
        c->db = NULL;
        return 2;
    }
    sqlite3_busy_timeout(c->db, BUSY_MS);
    if (sqlite3_exec(c->db, "PRAGMA journal_mode=WAL;"
                     "PRAGMA synchronous=NORMAL", NULL, NULL,
                     &err) != SQLITE_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "SQL: %s: %s", path,
                        err ? err : sqlite3_errmsg(c->db));
        sqlite3_free(err);
        sqlite3_close_v2(c->db);
        c->db = NULL;
        return 2;
    }
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"query", l_query},
    {"exec", l_exec},
    {"close", l_close},
    {NULL, NULL}
};

void zkf_lua_open_sqlite(lua_State *L)
{
    if (luaL_newmetatable(L, SQL_MT)) {
        luaL_newlib(L, conn_methods);
        lua_pushliteral(L, "sqlite");
        lua_setfield(L, -2, "driver");
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "sqlite_open");
}
