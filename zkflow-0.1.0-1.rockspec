-- zkflow's Lua modules and their C module (zkflow.core) for LuaRocks.
-- The tree's Makefile builds it: `luarocks make` in a checkout (the
-- project has no public download yet, so source.url names the checkout).
rockspec_format = "3.0"
package = "zkflow"
version = "0.1.0-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "A workflow scheduler: DAGs in Lua, SQLite or ZooKeeper store",
  detailed = [[
    zkflow schedules and runs DAGs of tasks, in the spirit of Apache
    Airflow.  This rock has the Lua modules (require "zkflow") and the C
    module zkflow.core they run on, for a plain Lua 5.4.
  ]],
  license = "none stated",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
-- libcurl too (Debian: libcurl4-openssl-dev), which the Makefile finds with
-- pkg-config: its header sits in a multiarch folder LuaRocks does not search.
external_dependencies = {
  LIBEVENT = { header = "event2/event.h" },
  SQLITE = { header = "sqlite3.h" },
  ZOOKEEPER = { header = "zookeeper/zookeeper.h" },
  PQ = { header = "postgresql/libpq-fe.h" },
}
build = {
  type = "make",
  build_target = "build/zkflow.so",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LUA = "$(LUA)",
  },
  install_target = "install-lua",
  install_variables = {
    LUA_LMOD = "$(LUADIR)",
    LUA_CMOD = "$(LIBDIR)",
    LUA = "$(LUA)",
  },
}
