/* bundle.h - the Lua standard library compiled in (build/gen/lua_bundle.c). */
#ifndef ZKF_BUNDLE_H
#define ZKF_BUNDLE_H
#include <stddef.h>
/* Returns the source of module `name` ("zkflow.dag") and its length in
 * *len, or NULL.  Static data: never freed. */
const char *zkf_bundle_find(const char *name, size_t *len);
#endif
