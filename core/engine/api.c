/*
 * api.c - the HTTP front door on libevent's evhttp.  It only moves bytes:
 * every request goes to zkf_engine_http(), the one router that the nginx
 * module calls too, so an answer never depends on the host.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "engine/engine.h"

/* Limits of the front door (nginx has its own: client_max_body_size,
 * large_client_header_buffers, client_header_timeout).  A request's body
 * is at most a run's conf (256 KiB, zkflow.api) in JSON; headers as
 * nginx's default large buffers allow.  IO_TIMEOUT closes a client that
 * goes quiet in the middle of a request or of its answer (or an idle
 * keep-alive one); libevent 2.1 times each read and write, not the whole
 * request, so the header size bounds a client that drips. */
#define MAX_BODY (1024 * 1024)
#define MAX_HEADERS_SIZE (32 * 1024)
#define IO_TIMEOUT 10

struct zkf_api {
    zkf_engine *e;
    struct evhttp *http;
};

static const char *method_name(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "UNKNOWN";
    }
}

/* The router may answer later (a store call yields); evhttp keeps the
 * request alive until evhttp_send_reply(). */
static void on_reply(void *ud, int status, const char *ctype,
                     const char *const *headers, const char *body,
                     size_t len)
{
    struct evhttp_request *req = ud;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *buf = evbuffer_new();

    evhttp_add_header(out, "Content-Type", ctype);
    evhttp_add_header(out, "Cache-Control", "no-store");
    /* WWW-Authenticate on a 401, Set-Cookie of a login, Allow on a 405:
     * the router's own values (evhttp also refuses a bare CR or LF) */
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i += 2)
        evhttp_add_header(out, headers[i], headers[i + 1]);
    if (buf != NULL)
        evbuffer_add(buf, body, len);
    evhttp_send_reply(req, status, status < 400 ? "OK" : "Error", buf);
    if (buf != NULL)
        evbuffer_free(buf);
}

/* The router reads a few headers (Origin, Sec-Fetch-Site, Content-Type,
 * Host); more than MAX_HEADERS are not passed on. */
#define MAX_HEADERS 64

static void on_request(struct evhttp_request *req, void *arg)
{
    struct zkf_api *api = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    struct evkeyvalq *hq = evhttp_request_get_input_headers(req);
    struct evkeyval *kv;
    const char *headers[2 * MAX_HEADERS + 1];
    size_t len = evbuffer_get_length(in), n = 0;
    const char *body = NULL;

    TAILQ_FOREACH(kv, hq, next) {
        if (n == 2 * MAX_HEADERS)
            break;
        headers[n++] = kv->key;
        headers[n++] = kv->value;
    }
    headers[n] = NULL;
    if (len > 0)
        body = (const char *)evbuffer_pullup(in, -1);
    zkf_engine_http_ex(api->e, method_name(evhttp_request_get_command(req)),
                       evhttp_request_get_uri(req), headers, body, len,
                       on_reply, req);
}

struct zkf_api *zkf_api_listen(zkf_engine *e, const char *addr, int port,
                               char *err, size_t errlen)
{
    struct zkf_api *api = calloc(1, sizeof(*api));

    if (api == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    api->e = e;
    api->http = evhttp_new(zkf_engine_base(e));
    if (api->http == NULL) {
        snprintf(err, errlen, "evhttp_new failed");
        free(api);
        return NULL;
    }
    evhttp_set_max_body_size(api->http, MAX_BODY);
    evhttp_set_max_headers_size(api->http, MAX_HEADERS_SIZE);
    evhttp_set_timeout(api->http, IO_TIMEOUT);
    evhttp_set_allowed_methods(api->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                               EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                               EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                               EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(api->http, on_request, api);
    if (evhttp_bind_socket(api->http, addr, (ev_uint16_t)port) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d", addr, port);
        evhttp_free(api->http);
        free(api);
        return NULL;
    }
    return api;
}

void zkf_api_close(struct zkf_api *api)
{
    if (api == NULL)
        return;
    evhttp_free(api->http);
    free(api);
}
