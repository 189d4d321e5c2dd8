/*
 * core_module.c - `require "zkflow.core"` in plain lua5.4: the same module
 * the engine preloads, with a loop of its own driven by core.run().
 */
#include <lua.h>
#include <lauxlib.h>

#include "lua/lbind.h"

int luaopen_zkflow_core(lua_State *L);

int luaopen_zkflow_core(lua_State *L)
{
    return zkf_lua_open_core(L);
}
