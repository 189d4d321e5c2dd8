/*
 * engine/http.h - the engine's HTTP entry with the answer's headers, for
 * the front doors that ship with zkflow (api.c's evhttp server and the
 * nginx module, which links libzkflow.a).  Not part of the public ABI:
 * zkflow.h's zkf_reply_fn has no header list, and a host that embeds the
 * engine through it gets the status, type and body as before.  Loop
 * thread only, as zkf_engine_http().
 */
#ifndef ZKF_ENGINE_HTTP_H
#define ZKF_ENGINE_HTTP_H

#include <stddef.h>
#include "zkflow.h"

/* As zkf_reply_fn, with the answer's other headers: `headers` is NULL or
 * an array of name, value strings ended by a NULL name (WWW-Authenticate,
 * Set-Cookie, Allow ...), never Content-Type.  Every string is borrowed
 * for the call only. */
typedef void (*zkf_reply_ex_fn)(void *ud, int status,
                                const char *content_type,
                                const char *const *headers,
                                const char *body, size_t len);

/* zkf_engine_http_headers() answering through `reply`, which receives the
 * answer's headers too.  Copies what it is given; `reply` is called
 * exactly once, maybe before this returns. */
int zkf_engine_http_ex(zkf_engine *e, const char *method, const char *uri,
                       const char *const *headers, const char *body,
                       size_t len, zkf_reply_ex_fn reply, void *ud);

#endif
