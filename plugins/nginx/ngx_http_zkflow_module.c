
/*
 * ngx_http_zkflow_module.c - zkflow inside nginx.
 *
 *   http {
 *       zkflow_dags     /srv/dags;
 *       zkflow_db       /var/lib/zkflow/zkflow.db;  # or: zkflow_zk HOSTS;
 *       zkflow_log_dir  /var/lib/zkflow/logs;       # optional: task logs
 *       zkflow_zk_auth  user:password;              # optional: digest auth
 *       zkflow_zk_acl   creator;                    # optional: created nodes' ACL
 *       zkflow_auth     on;                         # optional: zkflow's users
 *       server {
 *           location /zkflow/ { zkflow_api; }
 *       }
 *   }
 *
 * Every worker opens an engine (core/include/zkflow.h) on the same store and
 * answers the HTTP API from it.  Exactly one worker - the one holding an
 * flock on "<db>.nginx.lock" (on ZooKeeper: "<log dir>/zkflow.scheduler.
 * lock") - runs the scheduler; the others retry the lock every second, so a
 * crashed worker's replacement or the workers of a reload take over.  Its
 * engine schedules while it owns the store ("<db>.scheduler.lock", taken
 * by the engine as by every zkflow scheduler).  On
 * ZooKeeper that worker's engine is a cluster member: its scheduler contends
 * with every other zkflow scheduler on the ensemble, and a zkflow worker
 * beside it runs tries from the queue.  The engine connects on its own time:
 * `nginx -t` checks the address only, and the API answers 503 until the
 * session is there.  Each engine is driven by nginx's own event loop: its
 * one timer is an ngx_event_t, every descriptor it watches gets a fake
 * ngx_connection_t (as ngx_resolver's or the upstream's sockets do), so the
 * worker never blocks and there is no second loop.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <grp.h>
#include <pwd.h>
#include <sys/file.h>

#include "zkflow.h"
#include "engine/http.h"   /* libzkflow.a's reply with headers */


#define NGX_HTTP_ZKFLOW_LOCK_RETRY  1000

/* A worker whose engine cannot start (its user cannot open the store or
 * the log folder) tries again after 0.5 s, then twice as long each time,
 * at most 16 s apart: fixing the permissions heals it without a reload. */
#define NGX_HTTP_ZKFLOW_START_RETRY      500
#define NGX_HTTP_ZKFLOW_START_RETRY_MAX  16000


typedef struct ngx_http_zkflow_worker_s  ngx_http_zkflow_worker_t;


typedef struct {
    ngx_str_t                  dags;
    ngx_str_t                  db;
    ngx_str_t                  zk;
    ngx_str_t                  zk_auth;  /* digest "user:password" */
    ngx_str_t                  zk_acl;
    ngx_str_t                  log_dir;
    ngx_flag_t                 api;      /* some location has zkflow_api */
    ngx_flag_t                 auth;     /* the API asks for zkflow users */
    time_t                     dag_load_timeout;       /* seconds */
    ngx_int_t                  dag_load_instructions;
    size_t                     dag_load_memory;        /* bytes */

    /* the state of this worker process, NULL in the master */
    ngx_http_zkflow_worker_t  *worker;
} ngx_http_zkflow_main_conf_t;


typedef struct {
    ngx_flag_t                 api;
    ngx_str_t                  prefix;   /* stripped before the router */
} ngx_http_zkflow_loc_conf_t;


struct ngx_http_zkflow_worker_s {
    zkf_engine                    *engine;
    ngx_http_zkflow_main_conf_t   *conf;
    ngx_log_t                     *log;

    ngx_event_t                    timer;       /* the engine's one timer */
    ngx_event_t                    lock_timer;  /* retries the lock */
    ngx_event_t                    start_timer; /* retries a failed start */
    ngx_msec_t                     backoff;     /* its delay, 0: started */

    ngx_connection_t             **conns;       /* watched fds, by fd */
    ngx_int_t                      nconns;

    ngx_fd_t                       lock_fd;
    u_char                        *lock_path;
    ngx_err_t                      lock_err;    /* logged, 0: none */

    u_char                         failure[512]; /* logged, "": none */
    u_char                        *log_dir;     /* the tasks' log folder */

    unsigned                       scheduler:1;
    unsigned                       stopped:1;
};


/* One API request waiting for the engine's reply.  Allocated apart from
 * the request's pool: the reply may come after nginx freed the request
 * (the engine holds `ctx` until it answers), so whichever of the two ends
 * last frees it. */
typedef struct {
    ngx_http_request_t            *r;
    ngx_event_t                    posted;      /* sends an async reply */

    ngx_uint_t                     status;
    ngx_str_t                      content_type;
    ngx_str_t                      body;
    ngx_array_t                   *headers;     /* ngx_keyval_t: the rest */

    ngx_int_t                      rc;          /* of a synchronous send */
    unsigned                       sync:1;
    unsigned                       replied:1;
} ngx_http_zkflow_ctx_t;


static ngx_int_t ngx_http_zkflow_handler(ngx_http_request_t *r);
static void ngx_http_zkflow_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_zkflow_dispatch(ngx_http_request_t *r);
static ngx_int_t ngx_http_zkflow_uri(ngx_http_request_t *r,
    ngx_http_zkflow_loc_conf_t *zlcf, ngx_str_t *uri);
static void ngx_http_zkflow_reply(void *ud, int status,
    const char *content_type, const char *const *headers, const char *body,
    size_t len);
static void ngx_http_zkflow_posted_reply(ngx_event_t *ev);
static ngx_int_t ngx_http_zkflow_send(ngx_http_request_t *r,
    ngx_http_zkflow_ctx_t *ctx);
static void ngx_http_zkflow_cleanup(void *data);

static int ngx_http_zkflow_watch_fd(void *ud, int fd, int what);
static int ngx_http_zkflow_set_timer(void *ud, long ms);
static void ngx_http_zkflow_fd_handler(ngx_event_t *ev);
static void ngx_http_zkflow_timer_handler(ngx_event_t *ev);
static void ngx_http_zkflow_lock_handler(ngx_event_t *ev);
static void ngx_http_zkflow_start_handler(ngx_event_t *ev);
static void ngx_http_zkflow_boot(ngx_http_zkflow_worker_t *w);
static ngx_int_t ngx_http_zkflow_unavailable(ngx_http_request_t *r,
    ngx_http_zkflow_worker_t *w);
static void ngx_http_zkflow_log(void *ud, int level, const char *msg);

static ngx_int_t ngx_http_zkflow_try_lock(ngx_http_zkflow_worker_t *w);
static ngx_int_t ngx_http_zkflow_start(ngx_http_zkflow_worker_t *w);
static void ngx_http_zkflow_stop(ngx_http_zkflow_worker_t *w);
static void ngx_http_zkflow_release_conn(ngx_http_zkflow_worker_t *w,
    int fd);

static void *ngx_http_zkflow_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_zkflow_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_zkflow_dags(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_zkflow_db(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_zkflow_zk(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_zkflow_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_zkflow_zk_auth(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_zkflow_log_dir(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_zkflow_valid_zk(ngx_str_t *hosts);
static ngx_int_t ngx_http_zkflow_load_limits(zkf_engine *e,
    ngx_http_zkflow_main_conf_t *zmcf);
static ngx_int_t ngx_http_zkflow_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_zkflow_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_zkflow_init_process(ngx_cycle_t *cycle);
static void ngx_http_zkflow_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_http_zkflow_commands[] = {

    { ngx_string("zkflow_dags"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_zkflow_dags,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, dags),
      NULL },

    { ngx_string("zkflow_db"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_zkflow_db,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, db),
      NULL },

    { ngx_string("zkflow_zk"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_zkflow_zk,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, zk),
      NULL },

    { ngx_string("zkflow_zk_auth"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_zkflow_zk_auth,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, zk_auth),
      NULL },

    { ngx_string("zkflow_zk_acl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, zk_acl),
      NULL },

    { ngx_string("zkflow_log_dir"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_zkflow_log_dir,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, log_dir),
      NULL },

    { ngx_string("zkflow_auth"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, auth),
      NULL },

    { ngx_string("zkflow_dag_load_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, dag_load_timeout),
      NULL },

    { ngx_string("zkflow_dag_load_instructions"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, dag_load_instructions),
      NULL },

    { ngx_string("zkflow_dag_load_memory"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_zkflow_main_conf_t, dag_load_memory),
      NULL },

    { ngx_string("zkflow_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_zkflow_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_zkflow_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_zkflow_init,                  /* postconfiguration */

    ngx_http_zkflow_create_main_conf,      /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_zkflow_create_loc_conf,       /* create location configuration */
    NULL                                   /* merge location configuration:
                                              a content handler is not
                                              inherited, nor its prefix */
};


ngx_module_t  ngx_http_zkflow_module = {
    NGX_MODULE_V1,
    &ngx_http_zkflow_module_ctx,           /* module context */
    ngx_http_zkflow_commands,              /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_zkflow_init_module,           /* init module */
    ngx_http_zkflow_init_process,          /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_zkflow_exit_process,          /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* ---- the API location ------------------------------------------------- */

static ngx_int_t
ngx_http_zkflow_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->method & (NGX_HTTP_POST|NGX_HTTP_PUT|NGX_HTTP_PATCH)) {
        /* JSON bodies are small: keep them in memory, in one buffer */
        r->request_body_in_single_buf = 1;

        rc = ngx_http_read_client_request_body(r,
                                               ngx_http_zkflow_body_handler);

        if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
            return rc;
        }

        return NGX_DONE;
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_zkflow_dispatch(r);

    if (rc == NGX_DONE) {
        /* the reply comes later from the engine: hold the request */
        r->main->count++;
    }

    return rc;
}


static void
ngx_http_zkflow_body_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_zkflow_dispatch(r);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    /* NGX_DONE: reading the body holds the request already */
}


/* The request's headers as name, value C strings ended by a NULL name,
 * from the request pool, for zkf_engine_http_ex() (the router reads
 * Origin, Sec-Fetch-Site, Content-Type, Host, Authorization and Cookie
 * from them), then X-Zkflow-Prefix: the location's prefix this module
 * strips, which the router puts in the Path of its session cookie. */
static const char **
ngx_http_zkflow_headers(ngx_http_request_t *r,
    ngx_http_zkflow_loc_conf_t *zlcf)
{
    ngx_uint_t        i, n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;
    const char      **out;

    n = 0;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        n += part->nelts;
    }

    out = ngx_pnalloc(r->pool, (2 * n + 3) * sizeof(char *));

    if (out == NULL) {
        return NULL;
    }

    n = 0;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            out[n] = (const char *) ngx_pnalloc(r->pool, h[i].key.len + 1);
            out[n + 1] = (const char *) ngx_pnalloc(r->pool,
                                                    h[i].value.len + 1);

            if (out[n] == NULL || out[n + 1] == NULL) {
                return NULL;
            }

            ngx_cpystrn((u_char *) out[n], h[i].key.data, h[i].key.len + 1);
            ngx_cpystrn((u_char *) out[n + 1], h[i].value.data,
                        h[i].value.len + 1);
            n += 2;
        }
    }

    out[n] = "X-Zkflow-Prefix";
    out[n + 1] = (const char *) ngx_pnalloc(r->pool, zlcf->prefix.len + 1);

    if (out[n + 1] == NULL) {
        return NULL;
    }

    ngx_cpystrn((u_char *) out[n + 1], zlcf->prefix.data,
                zlcf->prefix.len + 1);
    n += 2;

    out[n] = NULL;

    return out;
}


/* Hands the request to the engine.  Returns what the handler returns: the
 * result of sending a reply that came at once, an error status, or
 * NGX_DONE when the reply will come from the event loop. */
static ngx_int_t
ngx_http_zkflow_dispatch(ngx_http_request_t *r)
{
    u_char                       *method, *uri, *p;
    size_t                        len;
    ngx_int_t                     rc;
    ngx_str_t                     path;
    ngx_chain_t                  *cl;
    const char                   *body;
    const char                  **headers;
    ngx_pool_cleanup_t           *cln;
    ngx_http_zkflow_ctx_t        *ctx;
    ngx_http_zkflow_loc_conf_t   *zlcf;
    ngx_http_zkflow_main_conf_t  *zmcf;

    zmcf = ngx_http_get_module_main_conf(r, ngx_http_zkflow_module);
    zlcf = ngx_http_get_module_loc_conf(r, ngx_http_zkflow_module);

    rc = ngx_http_zkflow_uri(r, zlcf, &path);

    if (rc != NGX_OK) {
        return rc;
    }

    if (zmcf->worker == NULL || zmcf->worker->engine == NULL) {
        /* the worker logged why, once */
        return ngx_http_zkflow_unavailable(r, zmcf->worker);
    }

    method = ngx_pnalloc(r->pool, r->method_name.len + 1);
    uri = ngx_pnalloc(r->pool, path.len + 1);

    if (method == NULL || uri == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn(method, r->method_name.data, r->method_name.len + 1);
    ngx_cpystrn(uri, path.data, path.len + 1);

    body = NULL;
    len = 0;

    if (r->request_body && r->request_body->bufs) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            if (cl->buf->in_file) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "zkflow: request body is too large "
                              "(raise client_body_buffer_size)");
                return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            }

            len += cl->buf->last - cl->buf->pos;
        }

        p = ngx_pnalloc(r->pool, len + 1);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        body = (const char *) p;

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
        }

        *p = '\0';
    }

    ctx = ngx_calloc(sizeof(ngx_http_zkflow_ctx_t), r->connection->log);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_free(ctx);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_zkflow_cleanup;
    cln->data = ctx;

    ctx->r = r;
    ctx->sync = 1;
    ctx->posted.handler = ngx_http_zkflow_posted_reply;
    ctx->posted.data = ctx;
    ctx->posted.log = r->connection->log;

    headers = ngx_http_zkflow_headers(r, zlcf);

    if (headers == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (zkf_engine_http_ex(zmcf->worker->engine, (char *) method,
                           (char *) uri, headers, body, len,
                           ngx_http_zkflow_reply, ctx)
        == ZKF_ERECURSIVE)
    {
        /* cannot happen from a request handler; the reply never comes */
        ctx->replied = 1;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->sync = 0;

    if (ctx->replied) {
        return ctx->rc;
    }

    return NGX_DONE;
}


/* 503 with a JSON body, as every API error is, while this worker's engine
 * is down (it retries: Retry-After says when).  The reason, with paths and
 * the worker's user, is in the error log, not in an answer to anyone. */
static ngx_int_t
ngx_http_zkflow_unavailable(ngx_http_request_t *r,
    ngx_http_zkflow_worker_t *w)
{
    ngx_int_t         rc;
    ngx_buf_t        *b;
    ngx_chain_t       out;
    ngx_msec_t        ms;
    ngx_table_elt_t  *h;

    static u_char  body[] =
        "{\"error\":\"the zkflow engine of this nginx worker is not running: "
        "it cannot open its store or log folder (the error log says which "
        "and as which user); it retries\"}\n";

    r->headers_out.status = NGX_HTTP_SERVICE_UNAVAILABLE;
    r->headers_out.content_length_n = sizeof(body) - 1;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    if (w && w->start_timer.timer_set) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ms = w->start_timer.timer.key > ngx_current_msec
             ? w->start_timer.timer.key - ngx_current_msec : 0;

        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        h->value.data = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
        if (h->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->value.len = ngx_sprintf(h->value.data, "%M", (ms + 999) / 1000)
                       - h->value.data;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body;
    b->last = body + sizeof(body) - 1;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* The request's path under the location, with its query: "/zkflow/api/v1
 * /dags?x" in "location /zkflow/" is "/api/v1/dags?x".  The raw URI is
 * used when it starts with the prefix, so the router decodes it once. */
static ngx_int_t
ngx_http_zkflow_uri(ngx_http_request_t *r, ngx_http_zkflow_loc_conf_t *zlcf,
    ngx_str_t *uri)
{
    u_char           *p;
    size_t            plen;
    ngx_str_t         rest;
    ngx_table_elt_t  *location;

    plen = zlcf->prefix.len;

    if (plen && zlcf->prefix.data[plen - 1] == '/') {
        plen--;
    }

    if (r->unparsed_uri.len >= plen
        && ngx_strncmp(r->unparsed_uri.data, zlcf->prefix.data, plen) == 0)
    {
        rest.data = r->unparsed_uri.data + plen;
        rest.len = r->unparsed_uri.len - plen;

    } else if (r->uri.len >= plen
               && ngx_strncmp(r->uri.data, zlcf->prefix.data, plen) == 0)
    {
        rest.len = r->uri.len - plen + (r->args.len ? 1 + r->args.len : 0);
        rest.data = ngx_pnalloc(r->pool, rest.len);
        if (rest.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_cpymem(rest.data, r->uri.data + plen, r->uri.len - plen);

        if (r->args.len) {
            *p++ = '?';
            ngx_memcpy(p, r->args.data, r->args.len);
        }

    } else {
        return NGX_HTTP_NOT_FOUND;
    }

    if (rest.len == 0 || rest.data[0] == '?') {

        /* "/zkflow" -> "/zkflow/": the page's links are relative */

        location = ngx_list_push(&r->headers_out.headers);
        if (location == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        location->value.len = plen + 1 + rest.len;
        location->value.data = ngx_pnalloc(r->pool, location->value.len);
        if (location->value.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_cpymem(location->value.data, zlcf->prefix.data, plen);
        *p++ = '/';
        ngx_memcpy(p, rest.data, rest.len);

        location->hash = 1;
        ngx_str_set(&location->key, "Location");

        ngx_http_clear_location(r);
        r->headers_out.location = location;

        return NGX_HTTP_MOVED_PERMANENTLY;
    }

    if (rest.data[0] != '/') {
        /* "location /zkflow" also matches "/zkflowx" */
        return NGX_HTTP_NOT_FOUND;
    }

    *uri = rest;

    return NGX_OK;
}


/* zkf_reply_ex_fn: exactly once per request, maybe before
 * zkf_engine_http_ex() returns.  The strings are borrowed for the call:
 * they are copied into the request's pool. */
static void
ngx_http_zkflow_reply(void *ud, int status, const char *content_type,
    const char *const *headers, const char *body, size_t len)
{
    ngx_http_zkflow_ctx_t  *ctx = ud;

    size_t               n;
    ngx_keyval_t        *kv;
    ngx_http_request_t  *r;

    ctx->replied = 1;
    r = ctx->r;

    if (r == NULL) {
        /* the request is gone: nobody else holds ctx */
        ngx_free(ctx);
        return;
    }

    ctx->status = (status >= 100 && status < 600)
                  ? (ngx_uint_t) status : NGX_HTTP_INTERNAL_SERVER_ERROR;

    ctx->content_type.len = content_type ? ngx_strlen(content_type) : 0;
    ctx->content_type.data = ngx_pnalloc(r->pool, ctx->content_type.len + 1);
    ctx->body.len = len;
    ctx->body.data = ngx_pnalloc(r->pool, len + 1);

    if (ctx->content_type.data == NULL || ctx->body.data == NULL) {
        ctx->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        ngx_str_null(&ctx->content_type);
        ngx_str_null(&ctx->body);

    } else {
        ngx_memcpy(ctx->content_type.data, content_type,
                   ctx->content_type.len);
        ngx_memcpy(ctx->body.data, body, len);
    }

    /* WWW-Authenticate of a 401, Set-Cookie of a login, Allow of a 405 */
    for (n = 0; headers != NULL && headers[n] != NULL; n += 2) { /* void */ }

    if (n > 0) {
        ctx->headers = ngx_array_create(r->pool, n / 2, sizeof(ngx_keyval_t));

        for (n = 0; ctx->headers && headers[n] != NULL; n += 2) {
            kv = ngx_array_push(ctx->headers);

            if (kv == NULL) {
                break;
            }

            kv->key.len = ngx_strlen(headers[n]);
            kv->key.data = ngx_pnalloc(r->pool, kv->key.len);
            kv->value.len = ngx_strlen(headers[n + 1]);
            kv->value.data = ngx_pnalloc(r->pool, kv->value.len);

            if (kv->key.data == NULL || kv->value.data == NULL) {
                ctx->headers->nelts--;
                break;
            }

            ngx_memcpy(kv->key.data, headers[n], kv->key.len);
            ngx_memcpy(kv->value.data, headers[n + 1], kv->value.len);
        }
    }

    if (ctx->sync) {
        ctx->rc = ngx_http_zkflow_send(r, ctx);
        return;
    }

    /*
     * We are inside the engine's own callback (zkf_engine_on_fd or
     * _on_timer): finishing the request from here could reach the engine
     * again, so the reply goes out from nginx's posted events instead.
     */

    ngx_post_event(&ctx->posted, &ngx_posted_events);
}


static void
ngx_http_zkflow_posted_reply(ngx_event_t *ev)
{
    ngx_http_zkflow_ctx_t  *ctx = ev->data;

    ngx_http_request_t  *r;

    r = ctx->r;

    ngx_http_finalize_request(r, ngx_http_zkflow_send(r, ctx));

    /* r and maybe ctx (through the cleanup) are freed now */
}


static ngx_int_t
ngx_http_zkflow_send(ngx_http_request_t *r, ngx_http_zkflow_ctx_t *ctx)
{
    ngx_int_t          rc;
    ngx_buf_t         *b;
    ngx_uint_t         i;
    ngx_chain_t        out;
    ngx_keyval_t      *kv;
    ngx_table_elt_t   *h;

    if (ctx->status >= NGX_HTTP_SPECIAL_RESPONSE && ctx->body.len == 0) {
        return ctx->status;
    }

    r->headers_out.status = ctx->status;
    r->headers_out.content_length_n = ctx->body.len;

    kv = ctx->headers ? ctx->headers->elts : NULL;

    for (i = 0; ctx->headers && i < ctx->headers->nelts; i++) {
        h = ngx_list_push(&r->headers_out.headers);

        if (h == NULL) {
            return NGX_ERROR;
        }

        /* nginx 1.23 added h->next; ngx_list_push's memory is not zeroed,
         * and 1.22 (Debian 12) has no such field: clear the element */
        ngx_memzero(h, sizeof(ngx_table_elt_t));
        h->hash = 1;
        h->key = kv[i].key;
        h->value = kv[i].value;
    }

    if (ctx->content_type.len) {
        r->headers_out.content_type = ctx->content_type;
        r->headers_out.content_type_len = ctx->content_type.len;
    }

    if (ctx->body.len == 0) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = ctx->body.data;
    b->last = ctx->body.data + ctx->body.len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_zkflow_cleanup(void *data)
{
    ngx_http_zkflow_ctx_t  *ctx = data;

    if (ctx->posted.posted) {
        ngx_delete_posted_event(&ctx->posted);
    }

    if (ctx->replied) {
        ngx_free(ctx);
        return;
    }

    /* the engine still holds ctx: its reply frees it */
    ctx->r = NULL;
}


/* ---- the engine on nginx's event loop ----------------------------------- */

/* zkf_host.watch_fd: the whole new interest set of `fd`. */
static int
ngx_http_zkflow_watch_fd(void *ud, int fd, int what)
{
    ngx_http_zkflow_worker_t  *w = ud;

    ngx_int_t          n;
    ngx_connection_t  *c, **conns;

    if (what & ZKF_WATCH_REMOVE) {
        ngx_http_zkflow_release_conn(w, fd);
        return 0;
    }

    if (fd >= w->nconns) {
        n = w->nconns ? w->nconns : 64;

        while (n <= fd) {
            n *= 2;
        }

        conns = ngx_alloc(n * sizeof(ngx_connection_t *), w->log);
        if (conns == NULL) {
            return -1;
        }

        ngx_memzero(conns, n * sizeof(ngx_connection_t *));

        if (w->conns) {
            ngx_memcpy(conns, w->conns,
                       w->nconns * sizeof(ngx_connection_t *));
            ngx_free(w->conns);
        }

        w->conns = conns;
        w->nconns = n;
    }

    c = w->conns[fd];

    if (c == NULL) {
        c = ngx_get_connection(fd, w->log);
        if (c == NULL) {
            return -1;
        }

        c->data = w;
        c->read->handler = ngx_http_zkflow_fd_handler;
        c->write->handler = ngx_http_zkflow_fd_handler;
        c->read->log = w->log;
        c->write->log = w->log;

        w->conns[fd] = c;
    }

    /*
     * Level-triggered (flags 0, not NGX_CLEAR_EVENT): the engine's loop
     * reads what it wants, not necessarily until EAGAIN, as poll() lets it.
     */

    if ((what & ZKF_WATCH_IN) && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }

    } else if (!(what & ZKF_WATCH_IN) && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    if ((what & ZKF_WATCH_OUT) && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }

    } else if (!(what & ZKF_WATCH_OUT) && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return -1;
        }
    }

    return 0;
}


static void
ngx_http_zkflow_release_conn(ngx_http_zkflow_worker_t *w, int fd)
{
    ngx_connection_t  *c;

    if (fd < 0 || fd >= w->nconns || w->conns[fd] == NULL) {
        return;
    }

    c = w->conns[fd];
    w->conns[fd] = NULL;

    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);

    /* the engine owns and closes the fd; nginx must not count it open */
    c->fd = (ngx_socket_t) -1;
}


/* zkf_host.set_timer: a new delay replaces the old one, -1 cancels. */
static int
ngx_http_zkflow_set_timer(void *ud, long ms)
{
    ngx_http_zkflow_worker_t  *w = ud;

    if (ms < 0) {
        if (w->timer.timer_set) {
            ngx_del_timer(&w->timer);
        }

        return 0;
    }

    if (w->stopped || ngx_exiting) {
        /* a shutting-down worker re-arming a cancelable timer would keep
         * ngx_event_cancel_timers() calling it forever */
        return 0;
    }

    ngx_add_timer(&w->timer, (ngx_msec_t) ms);

    return 0;
}


static void
ngx_http_zkflow_fd_handler(ngx_event_t *ev)
{
    int                        fd;
    ngx_connection_t          *c;
    ngx_http_zkflow_worker_t  *w;

    c = ev->data;
    w = c->data;
    fd = c->fd;

    if (w->engine == NULL) {
        return;
    }

    /* c may be released inside: the engine can stop watching fd */
    (void) zkf_engine_on_fd(w->engine, fd,
                            ev->write ? ZKF_WATCH_OUT : ZKF_WATCH_IN);
}


static void
ngx_http_zkflow_timer_handler(ngx_event_t *ev)
{
    ngx_http_zkflow_worker_t  *w = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        /* ngx_event_cancel_timers() of a worker that shuts down gracefully:
         * stop now, so that the scheduler lock passes to the new workers
         * without waiting for the last keepalive connection to close */
        ngx_http_zkflow_stop(w);
        return;
    }

    if (w->engine) {
        (void) zkf_engine_on_timer(w->engine);
    }
}


static void
ngx_http_zkflow_lock_handler(ngx_event_t *ev)
{
    ngx_http_zkflow_worker_t  *w = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit || w->stopped) {
        return;
    }

    if (ngx_http_zkflow_try_lock(w) != NGX_OK) {
        ngx_add_timer(&w->lock_timer, NGX_HTTP_ZKFLOW_LOCK_RETRY);
        return;
    }

    /* the scheduler's worker is gone: this one takes over, with a fresh
     * engine that resumes the runs from the store */

    ngx_log_error(NGX_LOG_NOTICE, w->log, 0,
                  "zkflow: worker %P takes over the scheduler", ngx_pid);

    if (w->engine) {
        (void) zkf_engine_shutdown(w->engine);
        zkf_engine_free(w->engine);
        w->engine = NULL;
    }

    ngx_http_zkflow_boot(w);
}


static void
ngx_http_zkflow_start_handler(ngx_event_t *ev)
{
    ngx_http_zkflow_worker_t  *w = ev->data;

    if (ngx_exiting || ngx_terminate || ngx_quit || w->stopped) {
        return;
    }

    ngx_http_zkflow_boot(w);
}


/* Starts the engine, or arranges the next try: the lock goes back for
 * another worker to take, the API answers 503 meanwhile. */
static void
ngx_http_zkflow_boot(ngx_http_zkflow_worker_t *w)
{
    if (!w->scheduler) {
        (void) ngx_http_zkflow_try_lock(w);
    }

    if (ngx_http_zkflow_start(w) == NGX_OK) {
        if (w->backoff) {
            ngx_log_error(NGX_LOG_NOTICE, w->log, 0,
                          "zkflow: worker %P started its engine: the store "
                          "and the log folder can be opened now", ngx_pid);
        }

        w->backoff = 0;
        w->failure[0] = '\0';

        if (!w->scheduler) {
            ngx_add_timer(&w->lock_timer, NGX_HTTP_ZKFLOW_LOCK_RETRY);
        }

        return;
    }

    if (w->scheduler) {
        /* let another worker try: this one could not run the engine */
        (void) close(w->lock_fd);
        w->lock_fd = NGX_INVALID_FILE;
        w->scheduler = 0;
    }

    w->backoff = w->backoff ? ngx_min(w->backoff * 2,
                                      NGX_HTTP_ZKFLOW_START_RETRY_MAX)
                            : NGX_HTTP_ZKFLOW_START_RETRY;

    ngx_add_timer(&w->start_timer, w->backoff);
}


static void
ngx_http_zkflow_log(void *ud, int level, const char *msg)
{
    ngx_http_zkflow_worker_t  *w = ud;

    static const ngx_uint_t  levels[] = {
        NGX_LOG_DEBUG, NGX_LOG_INFO, NGX_LOG_WARN, NGX_LOG_ERR
    };

    if (level < 0 || level > 3) {
        level = 3;
    }

    ngx_log_error(levels[level], w->log, 0, "zkflow: %s", msg);
}


static ngx_int_t
ngx_http_zkflow_try_lock(ngx_http_zkflow_worker_t *w)
{
    if (w->lock_fd == NGX_INVALID_FILE) {
        /* CLOEXEC: a task process must not keep the lock after us */
        w->lock_fd = open((char *) w->lock_path,
                          O_RDWR|O_CREAT|O_CLOEXEC, 0600);

        if (w->lock_fd == NGX_INVALID_FILE) {
            /* once: the lock is retried every second */
            if (w->lock_err != ngx_errno) {
                w->lock_err = ngx_errno;
                ngx_log_error(NGX_LOG_ERR, w->log, ngx_errno,
                              "zkflow: open(\"%s\") failed", w->lock_path);
            }

            return NGX_ERROR;
        }

        w->lock_err = 0;
    }

    if (flock(w->lock_fd, LOCK_EX|LOCK_NB) != 0) {
        return NGX_DECLINED;
    }

    w->scheduler = 1;

    return NGX_OK;
}


/* Logs why the engine cannot start, with the worker's user and the paths
 * it needs, once: the same failure again, at each retry, only at debug. */
static void
ngx_http_zkflow_failed(ngx_http_zkflow_worker_t *w, const char *why)
{
    struct passwd                *pw;
    ngx_http_zkflow_main_conf_t  *zmcf = w->conf;

    if (ngx_strcmp(w->failure, why) == 0) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, w->log, 0,
                       "zkflow: cannot start the engine: %s", why);
        return;
    }

    ngx_cpystrn(w->failure, (u_char *) why, sizeof(w->failure));

    pw = getpwuid(geteuid());

    ngx_log_error(NGX_LOG_ERR, w->log, 0,
                  "zkflow: worker %P running as user \"%s\" (uid %d) "
                  "cannot start its engine: %s (store \"%V\", log folder "
                  "\"%s\"); the API answers 503 and the worker retries, "
                  "at most %M s apart",
                  ngx_pid, pw ? pw->pw_name : "?", (int) geteuid(), why,
                  zmcf->db.len ? &zmcf->db : &zmcf->zk, w->log_dir,
                  (ngx_msec_t) NGX_HTTP_ZKFLOW_START_RETRY_MAX / 1000);
}


/* Opens this worker's engine: with the scheduler when it holds the lock,
 * serving the API only otherwise. */
static ngx_int_t
ngx_http_zkflow_start(ngx_http_zkflow_worker_t *w)
{
    char                          err[256];
    zkf_host                      host;
    zkf_engine                   *e;
    ngx_err_t                     ferr;
    ngx_http_zkflow_main_conf_t  *zmcf = w->conf;

    /* the engine would start without a log folder it can write, and its
     * tasks fail one by one: this worker is not usable then either */
    ferr = ngx_create_full_path(w->log_dir, 0755);
    if (ferr == 0 && ngx_create_dir(w->log_dir, 0755) == NGX_FILE_ERROR
        && ngx_errno != NGX_EEXIST)
    {
        ferr = ngx_errno;
    }

    if (ferr == 0 && access((char *) w->log_dir, W_OK|X_OK) != 0) {
        ferr = ngx_errno;
    }

    if (ferr) {
        ngx_snprintf((u_char *) err, sizeof(err) - 1,
                     "cannot write in the log folder: %s%Z", strerror(ferr));
        ngx_http_zkflow_failed(w, err);
        return NGX_ERROR;
    }

    host.watch_fd = ngx_http_zkflow_watch_fd;
    host.set_timer = ngx_http_zkflow_set_timer;
    host.ud = w;

    e = zkf_engine_new_host(&host, err, sizeof(err));
    if (e == NULL) {
        ngx_log_error(NGX_LOG_ALERT, w->log, 0,
                      "zkflow: cannot create the engine: %s", err);
        return NGX_ERROR;
    }

    zkf_engine_set_log(e, ngx_http_zkflow_log, w);

    if (zkf_engine_setopt(e, "dags", (char *) zmcf->dags.data) != ZKF_OK
        || (zmcf->db.len
            && zkf_engine_setopt(e, "db", (char *) zmcf->db.data) != ZKF_OK)
        || (zmcf->zk.len
            && zkf_engine_setopt(e, "zk", (char *) zmcf->zk.data) != ZKF_OK)
        || (zmcf->zk_auth.len
            && zkf_engine_setopt(e, "zk_auth", (char *) zmcf->zk_auth.data)
               != ZKF_OK)
        || (zmcf->zk_acl.len
            && zkf_engine_setopt(e, "zk_acl", (char *) zmcf->zk_acl.data)
               != ZKF_OK)
        || (zmcf->log_dir.len
            && zkf_engine_setopt(e, "log_dir", (char *) zmcf->log_dir.data)
               != ZKF_OK)
        || zkf_engine_setopt(e, "scheduler", w->scheduler ? "on" : "off")
           != ZKF_OK
        || zkf_engine_setopt(e, "api_auth", zmcf->auth == 1 ? "on" : "off")
           != ZKF_OK
        || ngx_http_zkflow_load_limits(e, zmcf) != NGX_OK
        || zkf_engine_start(e) != ZKF_OK)
    {
        ngx_http_zkflow_failed(w, zkf_errmsg(e));
        zkf_engine_free(e);
        return NGX_ERROR;
    }

    w->engine = e;

    ngx_log_error(NGX_LOG_INFO, w->log, 0,
                  "zkflow: engine started in worker %P%s", ngx_pid,
                  w->scheduler ? " with the scheduler" : "");

    return NGX_OK;
}


/* Ends this worker's part: no task keeps running (zkf_engine_free kills
 * their process groups), runs left unfinished resume in the next
 * scheduler, and the lock goes to whoever asks next. */
static void
ngx_http_zkflow_stop(ngx_http_zkflow_worker_t *w)
{
    if (w->stopped) {
        return;
    }

    w->stopped = 1;

    if (w->lock_timer.timer_set) {
        ngx_del_timer(&w->lock_timer);
    }

    if (w->start_timer.timer_set) {
        ngx_del_timer(&w->start_timer);
    }

    if (w->engine) {
        (void) zkf_engine_shutdown(w->engine);
        zkf_engine_free(w->engine);
        w->engine = NULL;
    }

    if (w->timer.timer_set) {
        ngx_del_timer(&w->timer);
    }

    if (w->lock_fd != NGX_INVALID_FILE) {
        (void) close(w->lock_fd);
        w->lock_fd = NGX_INVALID_FILE;
    }

    if (w->conns) {
        ngx_free(w->conns);
        w->conns = NULL;
        w->nconns = 0;
    }
}


/* ---- configuration -------------------------------------------------------- */

/*
 * The zkflow_dag_load_* directives as engine options; those not given keep
 * the engine's defaults (and /config's keys win over both).
 */
static ngx_int_t
ngx_http_zkflow_load_limits(zkf_engine *e, ngx_http_zkflow_main_conf_t *zmcf)
{
    u_char  buf[NGX_INT64_LEN + 1];

    if (zmcf->dag_load_timeout != NGX_CONF_UNSET) {
        *ngx_sprintf(buf, "%T", zmcf->dag_load_timeout) = '\0';
        if (zkf_engine_setopt(e, "dag_load_timeout", (char *) buf) != ZKF_OK) {
            return NGX_ERROR;
        }
    }

    if (zmcf->dag_load_instructions != NGX_CONF_UNSET) {
        *ngx_sprintf(buf, "%i", zmcf->dag_load_instructions) = '\0';
        if (zkf_engine_setopt(e, "dag_load_instructions", (char *) buf)
            != ZKF_OK)
        {
            return NGX_ERROR;
        }
    }

    if (zmcf->dag_load_memory != NGX_CONF_UNSET_SIZE) {
        *ngx_sprintf(buf, "%uz", zmcf->dag_load_memory) = '\0';
        if (zkf_engine_setopt(e, "dag_load_memory", (char *) buf) != ZKF_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void *
ngx_http_zkflow_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_zkflow_main_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_zkflow_main_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->dags = { 0, NULL };
     *     conf->db = { 0, NULL };
     *     conf->zk = { 0, NULL };
     *     conf->log_dir = { 0, NULL };
     *     conf->api = 0;
     *     conf->worker = NULL;
     */

    conf->auth = NGX_CONF_UNSET;
    conf->dag_load_timeout = NGX_CONF_UNSET;
    conf->dag_load_instructions = NGX_CONF_UNSET;
    conf->dag_load_memory = NGX_CONF_UNSET_SIZE;

    return conf;
}


static void *
ngx_http_zkflow_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_zkflow_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_zkflow_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     conf->api = 0;
     *     conf->prefix = { 0, NULL };
     */

    return conf;
}


/* A path directive's value, relative to the prefix (-p), NUL-terminated. */
static char *
ngx_http_zkflow_path(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char       *rv;
    ngx_str_t  *field;

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    field = (ngx_str_t *) ((char *) conf + cmd->offset);

    if (field->len == 0) {
        return "has an empty value";
    }

    if (ngx_conf_full_name(cf->cycle, field, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_zkflow_dags(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_zkflow_main_conf_t *zmcf = conf;

    char             *rv;
    ngx_file_info_t   fi;

    rv = ngx_http_zkflow_path(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_file_info(zmcf->dags.data, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "zkflow_dags: no DAG folder \"%V\"", &zmcf->dags);
        return NGX_CONF_ERROR;
    }

    if (!ngx_is_dir(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zkflow_dags: \"%V\" is not a directory",
                           &zmcf->dags);
        return NGX_CONF_ERROR;
    }

    if (access((char *) zmcf->dags.data, R_OK|X_OK) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "zkflow_dags: cannot read \"%V\"", &zmcf->dags);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_zkflow_db(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_zkflow_main_conf_t *zmcf = conf;

    char             *rv;
    u_char           *dir, *slash;
    ngx_file_info_t   fi;

    if (zmcf->zk.len) {
        return "cannot be used with zkflow_zk";
    }

    rv = ngx_http_zkflow_path(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    /* SQLite in WAL mode creates "-wal" and "-shm" files beside the store:
     * its folder must be writable, and the store itself if it exists */

    dir = ngx_pnalloc(cf->pool, zmcf->db.len + 1);
    if (dir == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_cpystrn(dir, zmcf->db.data, zmcf->db.len + 1);

    slash = (u_char *) strrchr((char *) dir, '/');

    if (slash == dir) {
        slash[1] = '\0';

    } else {
        *slash = '\0';
    }

    if (ngx_file_info(dir, &fi) == NGX_FILE_ERROR || !ngx_is_dir(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "zkflow_db: no folder \"%s\" for the store \"%V\"",
                           dir, &zmcf->db);
        return NGX_CONF_ERROR;
    }

    if (access((char *) dir, W_OK|X_OK) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "zkflow_db: cannot write in \"%s\" "
                           "for the store \"%V\"", dir, &zmcf->db);
        return NGX_CONF_ERROR;
    }

    if (ngx_file_info(zmcf->db.data, &fi) != NGX_FILE_ERROR) {

        if (!ngx_is_file(&fi)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "zkflow_db: \"%V\" is not a file",
                               &zmcf->db);
            return NGX_CONF_ERROR;
        }

        if (access((char *) zmcf->db.data, R_OK|W_OK) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "zkflow_db: cannot read and write \"%V\"",
                               &zmcf->db);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_zkflow_zk(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_zkflow_main_conf_t *zmcf = conf;

    char  *rv;

    if (zmcf->db.len) {
        return "cannot be used with zkflow_db";
    }

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_http_zkflow_valid_zk(&zmcf->zk) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zkflow_zk: invalid address \"%V\", expected "
                           "HOST:PORT[,HOST:PORT...][/chroot]", &zmcf->zk);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* Digest credentials of the ZooKeeper session: "user:password". */
static char *
ngx_http_zkflow_zk_auth(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_zkflow_main_conf_t *zmcf = conf;

    char  *rv;

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_strlchr(zmcf->zk_auth.data,
                    zmcf->zk_auth.data + zmcf->zk_auth.len, ':') == NULL)
    {
        return "expects USER:PASSWORD";
    }

    return NGX_CONF_OK;
}


/* Task logs; the worker creates the folder.  Default: "<db dir>/logs" with
 * zkflow_db, "<prefix>/logs/zkflow" with zkflow_zk. */
static char *
ngx_http_zkflow_log_dir(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_zkflow_main_conf_t *zmcf = conf;

    char             *rv;
    ngx_file_info_t   fi;

    rv = ngx_http_zkflow_path(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    if (ngx_file_info(zmcf->log_dir.data, &fi) != NGX_FILE_ERROR
        && !ngx_is_dir(&fi))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zkflow_log_dir: \"%V\" is not a directory",
                           &zmcf->log_dir);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* HOST:PORT[,HOST:PORT...][/chroot], HOST a name, an IPv4 address or a
 * bracketed IPv6 one, PORT 1..65535, a chroot without a trailing '/'. */
static ngx_int_t
ngx_http_zkflow_valid_zk(ngx_str_t *hosts)
{
    u_char      *p, *last, *end, *colon;
    ngx_int_t    port;

    p = hosts->data;
    last = p + hosts->len;

    end = ngx_strlchr(p, last, '/');

    if (end) {
        if (end + 1 == last || last[-1] == '/') {
            return NGX_ERROR;
        }

    } else {
        end = last;
    }

    while (p < end) {
        last = ngx_strlchr(p, end, ',');
        if (last == NULL) {
            last = end;
        }

        if (*p == '[') {
            colon = ngx_strlchr(p, last, ']');
            if (colon == NULL || colon == p + 1 || colon + 1 >= last
                || colon[1] != ':')
            {
                return NGX_ERROR;
            }

            colon++;

        } else {
            colon = ngx_strlchr(p, last, ':');
            if (colon == NULL || colon == p) {
                return NGX_ERROR;
            }

            for ( /* void */ ; p < colon; p++) {
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
                      || (*p >= '0' && *p <= '9')
                      || *p == '.' || *p == '-' || *p == '_'))
                {
                    return NGX_ERROR;
                }
            }
        }

        port = ngx_atoi(colon + 1, last - colon - 1);
        if (port < 1 || port > 65535) {
            return NGX_ERROR;
        }

        if (last == end) {
            return NGX_OK;
        }

        p = last + 1;
    }

    return NGX_ERROR;
}


static char *
ngx_http_zkflow_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_zkflow_loc_conf_t *zlcf = conf;

    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_zkflow_main_conf_t  *zmcf;

    if (zlcf->api) {
        return "is duplicate";
    }

    zlcf->api = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_zkflow_handler;

    /* a regex location has no prefix to strip: the router sees the URI */
#if (NGX_PCRE)
    if (clcf->regex == NULL)
#endif
    {
        zlcf->prefix = clcf->name;

        /* "/zkflow" in "location /zkflow/" is redirected by nginx itself */
        clcf->auto_redirect = 1;
    }

    zmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_zkflow_module);
    zmcf->api = 1;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_zkflow_init(ngx_conf_t *cf)
{
    ngx_http_zkflow_main_conf_t  *zmcf;

    zmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_zkflow_module);

    if (zmcf->dags.len == 0) {
        if (zmcf->api || zmcf->db.len || zmcf->zk.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "zkflow: \"zkflow_dags\" is not set in http{}");
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (zmcf->db.len == 0 && zmcf->zk.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zkflow: a store is needed: set \"zkflow_db\" or "
                           "\"zkflow_zk\" in http{}");
        return NGX_ERROR;
    }

    /*
     * ZooKeeper is not asked here: an ensemble that is down when nginx
     * starts must not keep nginx from starting.  The engines connect in the
     * workers, retrying, and answer 503 "connecting" meanwhile.
     */

    if (zmcf->zk.len && zmcf->log_dir.len == 0) {
        ngx_str_set(&zmcf->log_dir, "logs/zkflow");

        if (ngx_conf_full_name(cf->cycle, &zmcf->log_dir, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* ---- the workers' user -------------------------------------------------- */

static u_char *
ngx_http_zkflow_strdup0(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;

    p = ngx_pnalloc(pool, s->len + 1);
    if (p) {
        ngx_cpystrn(p, s->data, s->len + 1);
    }

    return p;
}


/* The folder of the tasks' logs, NUL-terminated: zkflow_log_dir, or the
 * engine's default "<db dir>/logs". */
static u_char *
ngx_http_zkflow_log_dir_of(ngx_pool_t *pool, ngx_http_zkflow_main_conf_t *zmcf)
{
    u_char  *dir, *slash;

    if (zmcf->log_dir.len) {
        return ngx_http_zkflow_strdup0(pool, &zmcf->log_dir);
    }

    dir = ngx_pnalloc(pool, zmcf->db.len + sizeof("/logs"));
    if (dir == NULL) {
        return NULL;
    }

    ngx_cpystrn(dir, zmcf->db.data, zmcf->db.len + 1);

    slash = (u_char *) strrchr((char *) dir, '/');
    ngx_cpystrn(slash, (u_char *) "/logs", sizeof("/logs"));

    return dir;
}


/* May user `uid` (group `gid`, supplementary `groups`) open `path` for
 * `want` (R_OK|W_OK|X_OK), by the mode bits of the path and of every
 * folder above it?  ACLs are not read: this is for a warning. */
static ngx_int_t
ngx_http_zkflow_user_can(u_char *path, ngx_uid_t uid, ngx_gid_t gid,
    gid_t *groups, int ngroups, int want)
{
    int          i, bits, shift, need;
    u_char      *p, save;
    struct stat  st;

    if (uid == 0) {
        return 1;
    }

    for (p = path + 1; /* void */; p++) {
        if (*p != '/' && *p != '\0') {
            continue;
        }

        save = *p;
        *p = '\0';

        if (stat((char *) path, &st) != 0) {
            *p = save;
            return 0;
        }

        *p = save;
        need = (save == '\0') ? want : X_OK;

        if (st.st_uid == uid) {
            shift = 6;

        } else {
            shift = 0;

            if (st.st_gid == gid) {
                shift = 3;
            }

            for (i = 0; shift == 0 && i < ngroups; i++) {
                if (st.st_gid == groups[i]) {
                    shift = 3;
                }
            }
        }

        bits = (st.st_mode >> shift) & 7;

        if ((bits & need) != need) {
            return 0;
        }

        if (save == '\0') {
            return 1;
        }
    }
}


/* nginx -t, a start and a reload: warns when the user the workers will
 * run as cannot use the DAG folder, the store's folder, the store or the
 * log folder.  Only a warning: the master checked them as itself, and
 * the workers retry until they can (a folder made later is fine). */
static ngx_int_t
ngx_http_zkflow_init_module(ngx_cycle_t *cycle)
{
    int                           ngroups;
    gid_t                         groups[64];
    u_char                       *dir, *slash, *logs;
    ngx_uint_t                    i;
    ngx_core_conf_t              *ccf;
    ngx_http_zkflow_main_conf_t  *zmcf;

    struct {
        u_char      *path;
        int          want;
        const char  *what;
    } checks[4];

    zmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_zkflow_module);
    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (zmcf == NULL || zmcf->dags.len == 0 || geteuid() != 0
        || ccf->user == (ngx_uid_t) NGX_CONF_UNSET_UINT || ccf->user == 0)
    {
        /* workers of the master's own user: the directives checked */
        return NGX_OK;
    }

    ngroups = 64;

    if (getgrouplist(ccf->username, ccf->group, groups, &ngroups) < 0) {
        ngroups = 0;
    }

    ngx_memzero(checks, sizeof(checks));

    checks[0].path = zmcf->dags.data;
    checks[0].want = R_OK|X_OK;
    checks[0].what = "read the DAG folder";

    if (zmcf->db.len) {
        dir = ngx_http_zkflow_strdup0(cycle->pool, &zmcf->db);
        if (dir == NULL) {
            return NGX_ERROR;
        }

        slash = (u_char *) strrchr((char *) dir, '/');
        *(slash == dir ? slash + 1 : slash) = '\0';

        checks[1].path = dir;
        checks[1].want = W_OK|X_OK;
        checks[1].what = "write in the store's folder";

        if (access((char *) zmcf->db.data, F_OK) == 0) {
            checks[2].path = zmcf->db.data;
            checks[2].want = R_OK|W_OK;
            checks[2].what = "read and write the store";
        }
    }

    logs = ngx_http_zkflow_log_dir_of(cycle->pool, zmcf);
    if (logs == NULL) {
        return NGX_ERROR;
    }

    if (access((char *) logs, F_OK) == 0) {
        checks[3].path = logs;
        checks[3].want = W_OK|X_OK;
        checks[3].what = "write in the log folder";
    }

    for (i = 0; i < 4; i++) {
        if (checks[i].path
            && !ngx_http_zkflow_user_can(checks[i].path, ccf->user,
                                         ccf->group, groups, ngroups,
                                         checks[i].want))
        {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "zkflow: the workers' user \"%s\" cannot %s "
                          "\"%s\": its engine will answer 503 until it "
                          "can", ccf->username, checks[i].what,
                          checks[i].path);
        }
    }

    return NGX_OK;
}


/* ---- worker processes ------------------------------------------------------ */

static ngx_int_t
ngx_http_zkflow_init_process(ngx_cycle_t *cycle)
{
    u_char                       *p;
    ngx_err_t                     err;
    ngx_str_t                    *base;
    struct sigaction              sa;
    ngx_http_zkflow_worker_t     *w;
    ngx_http_zkflow_main_conf_t  *zmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    zmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_zkflow_module);

    if (zmcf == NULL || zmcf->dags.len == 0) {
        return NGX_OK;
    }

    /*
     * nginx's SIGCHLD handler reaps every child with waitpid(-1), which
     * would take the exit status of task processes from the engine.  A
     * worker has no children of nginx's own, so the default disposition
     * (not SIG_IGN: that reaps too) is safe.
     */

    ngx_memzero(&sa, sizeof(struct sigaction));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);

    if (ngx_process == NGX_PROCESS_WORKER
        && sigaction(SIGCHLD, &sa, NULL) == -1)
    {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "zkflow: sigaction(SIGCHLD) failed");
    }

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_http_zkflow_worker_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->conf = zmcf;
    w->log = cycle->log;
    w->lock_fd = NGX_INVALID_FILE;

    w->timer.handler = ngx_http_zkflow_timer_handler;
    w->timer.data = w;
    w->timer.log = cycle->log;
    w->timer.cancelable = 1;

    w->lock_timer.handler = ngx_http_zkflow_lock_handler;
    w->lock_timer.data = w;
    w->lock_timer.log = cycle->log;
    w->lock_timer.cancelable = 1;

    w->start_timer.handler = ngx_http_zkflow_start_handler;
    w->start_timer.data = w;
    w->start_timer.log = cycle->log;
    w->start_timer.cancelable = 1;

    /* "<db>.nginx.lock" picks the worker whose engine schedules; that
     * engine then owns the store through "<db>.scheduler.lock", the lock
     * every zkflow scheduler takes (zkflow.node), and stands by while
     * another process (a zkflow standalone) holds it.  A ZooKeeper cluster
     * elects its scheduler in ZooKeeper, but the workers of this nginx
     * still take one lock, in the log folder (which they must be able to
     * write anyway) */

    base = zmcf->db.len ? &zmcf->db : &zmcf->log_dir;

    w->lock_path = ngx_pnalloc(cycle->pool,
                               base->len + sizeof("/zkflow.scheduler.lock"));
    if (w->lock_path == NULL) {
        return NGX_ERROR;
    }

    if (zmcf->db.len) {
        p = ngx_cpymem(w->lock_path, base->data, base->len);
        ngx_cpystrn(p, (u_char *) ".nginx.lock", sizeof(".nginx.lock"));

    } else {
        p = ngx_cpymem(w->lock_path, base->data, base->len);
        ngx_cpystrn(p, (u_char *) "/zkflow.scheduler.lock",
                    sizeof("/zkflow.scheduler.lock"));

        /* the folder, created as the worker's user: its tasks write there */
        err = ngx_create_full_path(w->lock_path, 0755);
        if (err) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, err,
                          "zkflow: cannot create the log folder \"%V\" "
                          "(set zkflow_log_dir to a folder the workers can "
                          "write)", &zmcf->log_dir);
        }
    }

    w->log_dir = ngx_http_zkflow_log_dir_of(cycle->pool, zmcf);
    if (w->log_dir == NULL) {
        return NGX_ERROR;
    }

    zmcf->worker = w;

    ngx_http_zkflow_boot(w);

    return NGX_OK;
}


static void
ngx_http_zkflow_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_zkflow_main_conf_t  *zmcf;

    zmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_zkflow_module);

    if (zmcf == NULL || zmcf->worker == NULL) {
        return;
    }

    ngx_http_zkflow_stop(zmcf->worker);
}
