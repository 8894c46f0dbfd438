/* api.c -- see api.h. */
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <sodium.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "chat.h"
#include "mesh.h"
#include "peerauth.h"
#include "peerframe.h"
#include "proxy.h"

/* A streamed response blocks at most this long for the next token before it
 * sends an SSE comment: the write is how a vanished client is noticed. */
#define KEEPALIVE_MS 10000
#define MAX_MESSAGES 1024
/* A plain (not streamed) request checks this often whether its client is
 * still there while it waits for its job. */
#define CLIENT_CHECK_MS 200
/* The watchdog's period: a slow request is closed at most this late. */
#define WATCHDOG_MS 100
/* km_api_stop waits at most this long for answers being written. */
#define STOP_GRACE_MS 5000
/* A connection thread's stack. The deepest path is jansson parsing a body
 * nested to its limit of 2048 levels: 728 KiB measured (a chat of 1024
 * messages, tokenizing: < 100 KiB). 1024 threads at the default 8 MiB would
 * reserve 8 GiB of address space (only touched pages are memory). */
#define THREAD_STACK_BYTES ((size_t)2 << 20)

/* A connection as the watchdog sees it: while it is receiving a request --
 * from its accept, or the end of its previous answer, to the last byte of
 * the body -- it must be done within request_timeout_s. */
typedef struct sock {
    MHD_socket fd;
    double since;  /* start of the receiving, ms */
    bool handling; /* the request is whole: being computed or answered */
    bool shut;     /* by the watchdog */
    struct sock *prev, *next;
} sock;

struct km_api {
    km_api_params p;
    char *api_key;
    char *mesh_off; /* why the node runs without a mesh (NULL: it has one, or will) */
    km_node *node;
    km_metrics *metrics;
    struct MHD_Daemon *d;
    int port;
    atomic_bool draining;
    _Atomic(km_mesh *) mesh;
    atomic_uint_fast64_t next_id;
    /* the open connections, for the watchdog (under socks_lock) */
    pthread_mutex_t socks_lock;
    pthread_cond_t wd_wake;
    sock *socks;
    bool wd_stop, wd_started;
    pthread_t watchdog;
    km_counter *timeouts;
};

km_api_params km_api_default_params(void) {
    km_api_params p = {.listen = "127.0.0.1:8080", .api_key = NULL, .max_body = (size_t)4 << 20,
                       .max_connections = 1024, .max_connections_per_ip = 256, .request_timeout_s = 10,
                       .timeout_s = 300};
    return p;
}

/* ------------------------------------------------------------ addresses */

int km_parse_hostport(const char *s, char *host, size_t host_len, int *port, km_error *err) {
    const char *colon;
    const char *h = s;
    size_t hl;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') return km_error_set(err, "bad address '%s': expected [v6-address]:port", s);
        h = s + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return km_error_set(err, "bad address '%s': expected host:port", s);
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= host_len) return km_error_set(err, "bad address '%s': empty or too long host", s);
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || v < 0 || v > 65535)
        return km_error_set(err, "bad address '%s': port must be 0-65535", s);
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = (int)v;
    return 0;
}

bool km_host_is_loopback(const char *host) {
    if (strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0) return true;
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/* ------------------------------------------------------------ utilities */

/* Copy of s with every invalid UTF-8 sequence replaced by U+FFFD (a model
 * can emit byte tokens that don't form characters; JSON needs valid text). */
static char *utf8_clean(const char *s, size_t len, size_t *out_len) {
    char *out = malloc(len * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = need > 0 && i + need <= len;
        for (size_t k = 1; ok && k < need; k++) ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
        if (ok && need > 1) { /* overlong forms, surrogates, > U+10FFFF */
            uint32_t cp = need == 2 ? (c & 0x1Fu) : need == 3 ? (c & 0x0Fu) : (c & 0x07u);
            for (size_t k = 1; k < need; k++) cp = (cp << 6) | ((unsigned char)s[i + k] & 0x3Fu);
            ok = !(need == 2 && cp < 0x80) && !(need == 3 && cp < 0x800) && !(need == 4 && cp < 0x10000) &&
                 !(cp >= 0xD800 && cp <= 0xDFFF) && cp <= 0x10FFFF;
        }
        if (ok && c != 0) {
            memcpy(out + o, s + i, need);
            o += need;
            i += need;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

static json_t *json_text(const char *s, size_t len) {
    size_t cl;
    char *clean = utf8_clean(s ? s : "", s ? len : 0, &cl);
    json_t *j = clean ? json_stringn(clean, cl) : NULL;
    free(clean);
    return j ? j : json_string("");
}

static bool consttime_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la && i < lb; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* ------------------------------------------------------------ responses */

typedef struct conn {
    char *body;
    size_t len, cap;
    bool too_large;
} conn;

static void count_request(km_api *a, const char *endpoint, unsigned status) {
    if (!a->metrics) return;
    char labels[128];
    snprintf(labels, sizeof labels, "endpoint=\"%s\",code=\"%u\"", endpoint, status);
    km_counter *c = km_metrics_counter(a->metrics, "kvmesh_http_requests_total", "HTTP requests by endpoint and status",
                                       labels);
    if (c) km_counter_inc(c);
}

/* retry_ms >= 0: when to retry, as Retry-After (whole seconds, at least 1)
 * and retry-after-ms (exact; OpenAI's clients read it first). */
static enum MHD_Result send_bytes(struct MHD_Connection *c, unsigned status, const char *type, char *data, size_t len,
                                  double retry_ms) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (retry_ms >= 0) {
        char secs[32], ms[32];
        snprintf(secs, sizeof secs, "%.0f", retry_ms < 1000 ? 1 : ceil(retry_ms / 1000));
        snprintf(ms, sizeof ms, "%.0f", ceil(retry_ms));
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, secs);
        MHD_add_response_header(r, "retry-after-ms", ms);
    }
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *j, double retry_ms) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return MHD_NO;
    return send_bytes(c, status, "application/json", s, strlen(s), retry_ms);
}

/* A 200 JSON answer to a forwarded request (req_auth: its signature): the
 * head signed, the body framed, for the forwarding node to check (proxy.h). */
static enum MHD_Result send_json_signed(struct MHD_Connection *c, km_peerauth *auth, const char *req_auth, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN], *framed = NULL;
    size_t len = 0;
    char hv[KM_PEERAUTH_HEADER_MAX + 1];
    int rc = s ? km_peerauth_sign_stream(auth, req_auth, MHD_HTTP_OK, "application/json", hv, sizeof hv, key) : -1;
    if (rc == 0) rc = km_peerframe_seal(key, (const uint8_t *)s, strlen(s), &framed, &len);
    sodium_memzero(key, sizeof key);
    free(s);
    if (rc != 0) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, framed, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(framed);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, KM_PEERAUTH_RESPONSE_HEADER, hv);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* OpenAI's error object with its code (NULL: none); retry_ms as send_bytes. */
static enum MHD_Result send_error_code(km_api *a, struct MHD_Connection *c, const char *endpoint, unsigned status,
                                       const char *type, const char *param, const char *code, double retry_ms,
                                       const char *msg) {
    count_request(a, endpoint, status);
    json_t *e = json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message", json_text(msg, strlen(msg)), "type", type,
                          "param", param ? json_string(param) : json_null(), "code", code ? json_string(code) : json_null());
    return send_json(c, status, e, retry_ms);
}

/* OpenAI's error object (a 503 says to retry in a second). */
static enum MHD_Result send_error(km_api *a, struct MHD_Connection *c, const char *endpoint, unsigned status,
                                  const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static enum MHD_Result send_error(km_api *a, struct MHD_Connection *c, const char *endpoint, unsigned status,
                                  const char *type, const char *param, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_error_code(a, c, endpoint, status, type, param, NULL,
                           status == MHD_HTTP_SERVICE_UNAVAILABLE ? 1000 : -1, msg);
}

/* ------------------------------------------------------- request parsing */

typedef struct gen_req {
    bool chat, stream, include_usage;
    char **segs; /* owned */
    int n_segs;
    bool special;
    km_sampling sampling;
    int n_predict;
    const char *stop[4];
    int n_stop;
    double est_ms; /* the planner's estimate of queue + TTFT here (0: none) */
} gen_req;

static void gen_req_free(gen_req *g) {
    for (int i = 0; i < g->n_segs; i++) free(g->segs[i]);
    free(g->segs);
}

/* A JSON number field within [lo, hi]; absent leaves *out. */
static int get_number(json_t *root, const char *name, double lo, double hi, double *out, km_error *err) {
    json_t *v = json_object_get(root, name);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return km_error_set(err, "'%s' must be a number", name);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return km_error_set(err, "'%s' must be between %g and %g", name, lo, hi);
    *out = d;
    return 0;
}

/* As get_number, for a field that counts: a whole number (2.0 is 2, 2.7 is
 * an error, not 2). */
static int get_integer(json_t *root, const char *name, double lo, double hi, double *out, km_error *err) {
    json_t *v = json_object_get(root, name);
    if (v && json_is_real(v) && json_real_value(v) != floor(json_real_value(v)))
        return km_error_set(err, "'%s' must be an integer", name);
    return get_number(root, name, lo, hi, out, err);
}

/* The text of a chat message's content: a string, or OpenAI's array of
 * parts of which only text parts are supported. *out malloc'd. */
static int message_text(json_t *content, int i, char **out, km_error *err) {
    if (json_is_string(content)) {
        *out = strdup(json_string_value(content));
        return *out ? 0 : km_error_set(err, "out of memory");
    }
    if (!json_is_array(content)) return km_error_set(err, "messages[%d].content must be a string or an array", i);
    size_t total = 1, k;
    json_t *part;
    json_array_foreach(content, k, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 || !json_is_string(text))
            return km_error_set(err, "messages[%d].content[%zu]: only {\"type\": \"text\", \"text\": ...} parts are supported",
                                i, k);
        total += json_string_length(text);
    }
    char *s = malloc(total);
    if (!s) return km_error_set(err, "out of memory");
    size_t o = 0;
    json_array_foreach(content, k, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(s + o, json_string_value(text), json_string_length(text));
        o += json_string_length(text);
    }
    s[o] = '\0';
    *out = s;
    return 0;
}

static int parse_chat(km_node *node, json_t *root, gen_req *g, km_error *err) {
    json_t *msgs = json_object_get(root, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) return km_error_set(err, "'messages' must be a non-empty array");
    size_t n = json_array_size(msgs);
    if (n > MAX_MESSAGES) return km_error_set(err, "at most %d messages", MAX_MESSAGES);
    km_chat_msg *cm = calloc(n, sizeof *cm);
    char **texts = calloc(n, sizeof *texts);
    int rc = cm && texts ? 0 : km_error_set(err, "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role)) {
            rc = km_error_set(err, "messages[%zu] must be an object with a string 'role'", i);
            break;
        }
        const char *r = json_string_value(role);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "developer")) {
            rc = km_error_set(err, "messages[%zu].role '%.40s' is not supported (system, developer, user, assistant)", i, r);
            break;
        }
        cm[i].role = strcmp(r, "developer") == 0 ? "system" : r;
        json_t *content = json_object_get(m, "content");
        rc = message_text(content ? content : json_null(), (int)i, &texts[i], err);
        cm[i].content = texts[i];
    }
    if (rc == 0) rc = km_chat_segments(km_node_model(node), cm, (int)n, &g->segs, &g->n_segs, err);
    g->special = true;
    for (size_t i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    free(cm);
    return rc;
}

static int parse_completion_prompt(json_t *root, gen_req *g, km_error *err) {
    json_t *prompt = json_object_get(root, "prompt"), *segs = json_object_get(root, "cache_segments");
    if (json_is_array(prompt)) { /* OpenAI allows a batch; one prompt per request here */
        if (json_array_size(prompt) != 1 || !json_is_string(json_array_get(prompt, 0)))
            return km_error_set(err, "'prompt' must be a string (or an array of exactly one string)");
        prompt = json_array_get(prompt, 0);
    }
    if (prompt && !json_is_string(prompt)) return km_error_set(err, "'prompt' must be a string");
    if (segs) {
        if (!json_is_array(segs) || json_array_size(segs) == 0 || json_array_size(segs) > MAX_MESSAGES)
            return km_error_set(err, "'cache_segments' must be an array of 1 to %d strings", MAX_MESSAGES);
        size_t n = json_array_size(segs), total = 0;
        g->segs = calloc(n, sizeof *g->segs);
        if (!g->segs) return km_error_set(err, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_array_get(segs, i);
            if (!json_is_string(s)) return km_error_set(err, "cache_segments[%zu] must be a string", i);
            if (!(g->segs[g->n_segs++] = strdup(json_string_value(s)))) return km_error_set(err, "out of memory");
            total += json_string_length(s);
        }
        if (prompt) { /* both given: they must agree */
            bool same = json_string_length(prompt) == total;
            for (size_t i = 0, off = 0; same && i < n; off += strlen(g->segs[i]), i++)
                same = memcmp(json_string_value(prompt) + off, g->segs[i], strlen(g->segs[i])) == 0;
            if (!same) return km_error_set(err, "'prompt' differs from the concatenation of 'cache_segments'");
        }
        return 0;
    }
    if (!prompt) return km_error_set(err, "'prompt' is required");
    g->segs = calloc(1, sizeof *g->segs);
    if (!g->segs || !(g->segs[0] = strdup(json_string_value(prompt)))) return km_error_set(err, "out of memory");
    g->n_segs = 1;
    return 0;
}

/* Fields common to both endpoints; OpenAI's defaults. */
static int parse_gen(km_node *node, json_t *root, bool chat, gen_req *g, const char **param, km_error *err) {
    memset(g, 0, sizeof *g);
    g->chat = chat;
    g->sampling = km_sampling_default();
    g->sampling.temp = 1.0f;
    g->sampling.top_p = 1.0f;
    g->sampling.top_k = 0;
    g->sampling.seed = (uint32_t)time(NULL);
    g->n_predict = chat ? -1 : 16;
    json_t *v;
    if ((v = json_object_get(root, "model")) && !json_is_string(v) && !json_is_null(v))
        return *param = "model", km_error_set(err, "'model' must be a string");
    if ((v = json_object_get(root, "stream")) && !json_is_boolean(v) && !json_is_null(v))
        return *param = "stream", km_error_set(err, "'stream' must be a boolean");
    g->stream = json_is_true(v);
    if ((v = json_object_get(root, "stream_options")) && json_is_object(v))
        g->include_usage = json_is_true(json_object_get(v, "include_usage"));
    double d;
    d = g->sampling.temp;
    if (get_number(root, "temperature", 0, 2, &d, err)) return *param = "temperature", -1;
    g->sampling.temp = (float)d;
    d = g->sampling.top_p;
    if (get_number(root, "top_p", 0, 1, &d, err)) return *param = "top_p", -1;
    g->sampling.top_p = d <= 0 ? 1e-6f : (float)d;
    d = 0;
    if (get_integer(root, "top_k", 0, 1000000, &d, err)) return *param = "top_k", -1;
    g->sampling.top_k = (int)d;
    d = g->sampling.seed;
    if (get_integer(root, "seed", -9.2e18, 9.2e18, &d, err)) return *param = "seed", -1;
    g->sampling.seed = (uint32_t)(int64_t)d;
    const char *max_name = json_object_get(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    d = g->n_predict;
    if (get_integer(root, max_name, 0, 1 << 24, &d, err)) return *param = max_name, -1;
    if (json_is_number(json_object_get(root, max_name))) g->n_predict = (int)d;
    d = 1;
    if (get_integer(root, "n", 1, 1, &d, err)) return *param = "n", km_error_set(err, "only n = 1 is supported");
    if ((v = json_object_get(root, "stop")) && !json_is_null(v)) {
        if (json_is_string(v)) {
            g->stop[g->n_stop++] = json_string_value(v);
        } else if (json_is_array(v) && json_array_size(v) <= 4) {
            size_t i;
            json_t *s;
            json_array_foreach(v, i, s) {
                if (!json_is_string(s)) return *param = "stop", km_error_set(err, "'stop' entries must be strings");
                g->stop[g->n_stop++] = json_string_value(s);
            }
        } else {
            return *param = "stop", km_error_set(err, "'stop' must be a string or an array of at most 4 strings");
        }
    }
    int rc = chat ? parse_chat(node, root, g, err) : parse_completion_prompt(root, g, err);
    if (rc != 0) *param = chat ? "messages" : "prompt";
    return rc;
}

/* ----------------------------------------------------------- responses */

static const char *finish_name(km_finish f) {
    return f == KM_FINISH_LENGTH ? "length" : f == KM_FINISH_STOP ? "stop" : "error";
}

static const char *tier_name(int tier) {
    return tier == KM_TIER_LOCAL ? "local" : tier == KM_TIER_REDIS ? "redis" : tier == KM_TIER_PEER ? "peer" : "none";
}

static json_t *timings_json(const km_job_status *st) {
    const km_prefill_report *p = &st->result.prefill;
    return json_pack("{s:i,s:i,s:s,s:i,s:b,s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:i,s:i}", "prompt_n", st->n_prompt, "cached_n",
                     p->n_reused, "cache_source", tier_name(p->hit_index >= 0 ? p->hit_tier : KM_TIER_NONE),
                     "prefilled_n", p->n_prefilled, "first_token_cached", p->next_hint >= 0, "predicted_n",
                     st->n_generated, "queue_ms", st->queue_ms, "ttft_ms", st->result.ttft_ms, "ttlt_ms",
                     st->result.ttlt_ms, "lookup_ms", p->t_lookup_ms, "restore_ms", p->t_restore_ms, "prefill_ms",
                     p->t_prefill_ms, "fetched_bytes", (json_int_t)p->bytes_remote, "remote_gets", p->n_remote_gets,
                     "false_positives", p->n_false_positives);
}

static json_t *usage_json(const km_job_status *st) {
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", st->n_prompt, "completion_tokens", st->n_generated,
                     "total_tokens", st->n_prompt + st->n_generated, "prompt_tokens_details", "cached_tokens",
                     st->result.prefill.n_reused);
}

static json_t *response_json(km_api *a, const gen_req *g, const char *id, long created, const char *text, size_t len,
                             const km_job_status *st) {
    json_t *choice;
    if (g->chat)
        choice = json_pack("{s:i,s:{s:s,s:o},s:n,s:s}", "index", 0, "message", "role", "assistant", "content",
                           json_text(text, len), "logprobs", "finish_reason", finish_name(st->finish));
    else
        choice = json_pack("{s:i,s:o,s:n,s:s}", "index", 0, "text", json_text(text, len), "logprobs", "finish_reason",
                           finish_name(st->finish));
    return json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o,s:o}", "id", id, "object", g->chat ? "chat.completion" : "text_completion",
                     "created", (json_int_t)created, "model", km_node_model_name(a->node), "choices", choice, "usage",
                     usage_json(st), "timings", timings_json(st));
}

/* One streamed event: a chunk of text, or (text NULL) the closing chunk. */
static json_t *chunk_json(km_api *a, const gen_req *g, const char *id, long created, const char *text, size_t len,
                          bool first, const km_job_status *fin) {
    json_t *choice;
    if (g->chat) {
        json_t *delta = json_object();
        if (first) json_object_set_new(delta, "role", json_string("assistant"));
        if (text) json_object_set_new(delta, "content", json_text(text, len));
        choice = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "delta", delta, "logprobs", "finish_reason",
                           fin ? json_string(finish_name(fin->finish)) : json_null());
    } else {
        choice = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", json_text(text, text ? len : 0), "logprobs",
                           "finish_reason", fin ? json_string(finish_name(fin->finish)) : json_null());
    }
    json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", id, "object",
                          g->chat ? "chat.completion.chunk" : "text_completion", "created", (json_int_t)created,
                          "model", km_node_model_name(a->node), "choices", choice);
    if (fin) json_object_set_new(c, "timings", timings_json(fin));
    return c;
}

/* ------------------------------------------------------------ streaming */

typedef struct stream {
    km_api *a;
    gen_req g;
    km_job *job;
    char id[48];
    long created;
    size_t seen;
    bool sent_first, finished;
    char *out; /* pending bytes */
    size_t out_len, out_pos;
    km_peerframe_writer *frames; /* a forwarded request's answer: framed (NULL: plain) */
    bool end_framed;
} stream;

static void stream_emit(stream *s, json_t *j) {
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    size_t bl = body ? strlen(body) : 0;
    char *out = realloc(s->out, s->out_len - s->out_pos + bl + 9);
    if (!out) {
        free(body);
        return;
    }
    if (s->out_pos > 0) { /* compact what is left */
        memmove(out, out + s->out_pos, s->out_len - s->out_pos);
        s->out_len -= s->out_pos;
        s->out_pos = 0;
    }
    s->out = out;
    s->out_len += (size_t)sprintf(out + s->out_len, "data: %s\n\n", body ? body : "{}");
    free(body);
}

static void stream_append_raw(stream *s, const char *raw) {
    size_t rl = strlen(raw);
    char *out = realloc(s->out, s->out_len + rl + 1);
    if (!out) return;
    s->out = out;
    memcpy(out + s->out_len, raw, rl + 1);
    s->out_len += rl;
}

/* Turn what the job has produced since last time into events. */
static void stream_advance(stream *s, int timeout_ms) {
    char *chunk;
    size_t cl;
    km_job_status st;
    int done = km_job_wait(s->job, s->seen, timeout_ms, &chunk, &cl, &st);
    if (chunk && cl > 0) {
        stream_emit(s, chunk_json(s->a, &s->g, s->id, s->created, chunk, cl, !s->sent_first, NULL));
        s->sent_first = true;
        s->seen += cl;
    }
    free(chunk);
    if (done) {
        if (st.finish == KM_FINISH_ERROR || st.finish == KM_FINISH_CANCELLED) {
            /* headers are out: report the failure in-band, as OpenAI's stream does */
            json_t *e = json_pack("{s:{s:o,s:s}}", "error", "message", json_text(st.error, strlen(st.error)), "type",
                                  "server_error");
            stream_emit(s, e);
        } else {
            km_node_observe_estimate(s->a->node, "local", s->g.est_ms, st.queue_ms + st.result.ttft_ms);
            stream_emit(s, chunk_json(s->a, &s->g, s->id, s->created, NULL, 0, !s->sent_first, &st));
            if (s->g.include_usage)
                stream_emit(s, json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", s->id, "object",
                                         s->g.chat ? "chat.completion.chunk" : "text_completion", "created",
                                         (json_int_t)s->created, "model", km_node_model_name(s->a->node), "choices",
                                         "usage", usage_json(&st)));
        }
        stream_append_raw(s, "data: [DONE]\n\n");
        s->finished = true;
    } else if (!chunk) {
        stream_append_raw(s, ": keep-alive\n\n");
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *s = cls;
    if (s->out_pos >= s->out_len) {
        if (s->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        s->out_len = s->out_pos = 0;
        stream_advance(s, KEEPALIVE_MS);
        if (s->out_len == 0) return MHD_CONTENT_READER_END_WITH_ERROR; /* out of memory */
    }
    size_t n = s->out_len - s->out_pos;
    if (n > max) n = max;
    memcpy(buf, s->out + s->out_pos, n);
    s->out_pos += n;
    return (ssize_t)n;
}

/* stream_read for the forwarding node: the same events in frames
 * (peerframe.h), then the end frame. */
static ssize_t stream_read_framed(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *s = cls;
    if (s->end_framed) return MHD_CONTENT_READER_END_OF_STREAM;
    if (max <= KM_PEERFRAME_OVERHEAD) return 0; /* MHD's block is 16 KB: not seen */
    uint8_t *out = (uint8_t *)buf;
    ssize_t n = stream_read(s, pos, buf + 4, max - KM_PEERFRAME_OVERHEAD); /* in place: a frame's payload is at 4 */
    if (n == MHD_CONTENT_READER_END_OF_STREAM) {
        s->end_framed = true;
        return (ssize_t)km_peerframe_write_end(s->frames, out);
    }
    if (n <= 0) return n;
    return (ssize_t)km_peerframe_write(s->frames, out + 4, (size_t)n, out);
}

/* The response is gone (sent, or the client vanished): release the job,
 * which stops it if it is still generating. */
static void stream_free(void *cls) {
    stream *s = cls;
    km_peerframe_writer_free(s->frames);
    km_job_release(s->job);
    gen_req_free(&s->g);
    free(s->out);
    free(s);
}

/* ------------------------------------------------------------ forwarding */

/* A request is forwarded at most once: the peer runs it itself. */
#define HOPS_HEADER "X-Kvmesh-Hops"
#define FORWARDED_TO_HEADER "X-Kvmesh-Forwarded-To"

typedef struct relay {
    km_api *a;
    km_proxy *proxy;
    char peer_id[KM_MEMBER_ID_MAX + 1];
    double t0;
    bool failed;
} relay;

static ssize_t relay_read(void *cls, uint64_t pos, char *buf, size_t max) {
    relay *r = cls;
    ssize_t n = km_proxy_read(r->proxy, buf, max);
    if (n < 0) r->failed = true;
    return n > 0 ? n : n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void relay_free(void *cls) {
    relay *r = cls;
    km_proxy_free(r->proxy);
    km_mesh *mesh = atomic_load(&r->a->mesh);
    if (mesh) km_mesh_forward_end(mesh, r->peer_id, !r->failed, km_now_ms() - r->t0);
    free(r);
}

/* Send the request to the peer the planner chose and relay its answer.
 * Returns true if the answer is on its way; false to run the request here
 * (the peer could not be reached, was busy, or failed). */
static bool try_forward(km_api *a, km_mesh *mesh, struct MHD_Connection *c, conn *cn, const char *url,
                        const km_route *route, const gen_req *g, enum MHD_Result *ret) {
    /* The peer takes the request on the mesh's signature (bound to it); no
     * credential of the client's goes along (its API key is ours to check). */
    char auth[KM_PEERAUTH_HEADER_MAX + 1], auth_line[KM_PEERAUTH_HEADER_MAX + 32];
    km_mesh_sign(mesh, route->id, "POST", url, (const uint8_t *)cn->body, cn->len, auth, sizeof auth);
    snprintf(auth_line, sizeof auth_line, "%s: %s", KM_PEERAUTH_HEADER, auth);
    const char *headers[4] = {"Content-Type: application/json", HOPS_HEADER ": 1"};
    int nh = 2;
    if (auth[0]) headers[nh++] = auth_line;
    km_mesh_forward_begin(mesh, route->id, route->peer_work_ms);
    double t0 = km_now_ms();
    long status = 0;
    char type[128];
    km_error err;
    km_proxy *p = km_proxy_start(route->addr, url, cn->body ? cn->body : "", cn->len, headers, km_mesh_auth(mesh), auth,
                                 1000, &status, type, sizeof type, &err);
    /* The emulated link (--link) as for every peer call: a round trip and
     * the request's bytes, on top of the time the peer took (the answer's
     * few hundred bytes are not shaped). */
    km_link *link = km_node_link(a->node);
    if (link) km_link_request(link, km_now_ms(), cn->len + 512, 0);
    if (p && (status == MHD_HTTP_SERVICE_UNAVAILABLE || status == MHD_HTTP_UNAUTHORIZED || status >= 500)) {
        km_error_set(&err, "peer %s answered %ld", route->addr, status);
        km_proxy_free(p);
        p = NULL;
    }
    if (!p) {
        km_mesh_forward_end(mesh, route->id, false, km_now_ms() - t0);
        km_warn("forward to %s failed (%s); running the request here", route->addr, err.msg);
        return false;
    }
    if (g->stream) km_node_observe_estimate(a->node, "forward", route->est_ms, km_now_ms() - t0);
    relay *r = calloc(1, sizeof *r);
    struct MHD_Response *resp = r ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, relay_read, r, relay_free)
                                  : NULL;
    if (!resp) {
        km_proxy_free(p);
        km_mesh_forward_end(mesh, route->id, false, km_now_ms() - t0);
        free(r);
        *ret = MHD_NO;
        return true;
    }
    r->a = a;
    r->proxy = p;
    r->t0 = t0;
    snprintf(r->peer_id, sizeof r->peer_id, "%s", route->id);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, FORWARDED_TO_HEADER, route->addr);
    count_request(a, g->chat ? "chat" : "completions", (unsigned)status);
    *ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return true;
}

/* ------------------------------------------------------------- handlers */

/* Whether the client closed its connection (or it broke): a peek finds the
 * end of the stream or an error. Bytes of a next request stay unread. */
static bool client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t r = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* km_job_wait (no time limit) for the connection's own job, checking at
 * *next_check (ms; then every CLIENT_CHECK_MS, however fast the tokens come)
 * that the client is still there: -1 if it left, after cancelling the job
 * (it stops at its next token, or is dropped unstarted). */
static int wait_job(struct MHD_Connection *c, km_job *job, size_t seen, char **chunk, size_t *cl, km_job_status *st,
                    double *next_check) {
    for (;;) {
        double left = *next_check - km_now_ms();
        int done = km_job_wait(job, seen, left > 0 ? (int)left + 1 : 0, chunk, cl, st);
        if (done) return done;
        if (km_now_ms() >= *next_check) {
            if (client_gone(c)) {
                free(*chunk);
                *chunk = NULL;
                *cl = 0;
                km_job_cancel(job);
                return -1;
            }
            *next_check = km_now_ms() + CLIENT_CHECK_MS;
        }
        if (*cl > 0) return 0;
        free(*chunk);
    }
}

/* The answer to a request the node has no room for: 503 with when to retry. */
static enum MHD_Result send_busy(km_api *a, struct MHD_Connection *c, const char *ep, const char *msg) {
    return send_error_code(a, c, ep, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, NULL,
                           km_node_retry_after_ms(a->node), msg);
}

static enum MHD_Result handle_generate(km_api *a, struct MHD_Connection *c, conn *cn, const char *url, bool chat) {
    const char *ep = chat ? "chat" : "completions";
    if (atomic_load(&a->draining))
        return send_error(a, c, ep, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, "the node is shutting down");
    /* A request a peer forwarded to us: only on the mesh's signature (for
     * this node), checked before anything else; with a mesh secret, the
     * answer is signed back (fwd_auth: the request's signature). */
    km_mesh *mesh = atomic_load(&a->mesh);
    const char *hops = MHD_lookup_connection_value(c, MHD_HEADER_KIND, HOPS_HEADER);
    const char *fwd_auth = NULL;
    if (hops) {
        km_error verr;
        const char *pa = MHD_lookup_connection_value(c, MHD_HEADER_KIND, KM_PEERAUTH_HEADER);
        if (!mesh || km_mesh_verify(mesh, "POST", url, (const uint8_t *)cn->body, cn->len, pa, &verr) != 0)
            return send_error(a, c, ep, MHD_HTTP_UNAUTHORIZED, "invalid_request_error", NULL, "forwarded request: %s",
                              mesh ? verr.msg : "no mesh here");
        if (km_mesh_auth(mesh)) fwd_auth = pa;
    }
    json_error_t jerr;
    json_t *root = json_loadb(cn->body ? cn->body : "", cn->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return send_error(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL,
                          "the body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return send_error(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, "the body must be a JSON object");
    }
    gen_req g;
    km_error err = {{0}};
    const char *param = NULL;
    if (parse_gen(a->node, root, chat, &g, &param, &err) != 0) {
        gen_req_free(&g);
        json_decref(root);
        return send_error(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", param, "%s", err.msg);
    }
    /* a text that cannot fit is refused before it is tokenized (seconds for megabytes) */
    if (km_node_check_length(a->node, (const char *const *)g.segs, g.n_segs, &err) != 0) {
        gen_req_free(&g);
        json_decref(root);
        return send_error_code(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", chat ? "messages" : "prompt",
                               "context_length_exceeded", -1, err.msg);
    }
    /* Where to run it: here, or (not for a request a peer forwarded to us)
     * at the peer that holds its prefix, if the planner says that is faster. */
    km_prompt_plan plan;
    bool planned = false;
    if (!hops && mesh) {
        if (km_node_plan(a->node, (const char *const *)g.segs, g.n_segs, g.special, &plan, &err) == 0) {
            planned = true;
            km_route route;
            km_mesh_route(mesh, &plan, &route);
            km_debug("planner: %s, est %.1f ms (best local %.1f ms)%s%s", route.path, route.est_ms, route.est_local_ms,
                     route.forward ? " -> " : "", route.forward ? route.addr : "");
            g.est_ms = route.est_local_ms;
            enum MHD_Result ret;
            if (route.forward && try_forward(a, mesh, c, cn, url, &route, &g, &ret)) {
                km_prompt_plan_free(&plan);
                gen_req_free(&g);
                json_decref(root);
                return ret;
            }
        }
    }
    km_job_spec spec = {.segs = (const char *const *)g.segs, .n_segs = g.n_segs, .special = g.special,
                        .sampling = g.sampling, .n_predict = g.n_predict, .stop = g.stop, .n_stop = g.n_stop,
                        .plan = planned ? &plan : NULL};
    bool busy;
    km_job *job = km_node_submit(a->node, &spec, &busy, &err);
    if (planned) km_prompt_plan_free(&plan);
    json_decref(root); /* the stop strings were copied by submit */
    g.n_stop = 0;
    if (!job) {
        gen_req_free(&g);
        return busy ? send_busy(a, c, ep, err.msg)
                    : send_error(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, "%s", err.msg);
    }
    char id[48];
    snprintf(id, sizeof id, "%s-%016llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)atomic_fetch_add(&a->next_id, 1));
    long created = (long)time(NULL);

    /* Wait for the first text or the end: until then the status is open (a
     * prompt that is too long is still a 400, even when streaming). */
    char *chunk;
    size_t cl;
    km_job_status st;
    double next_check = km_now_ms() + CLIENT_CHECK_MS;
    int done = wait_job(c, job, 0, &chunk, &cl, &st, &next_check);
    if (done < 0) { /* the client left: nobody to answer */
        km_job_release(job);
        gen_req_free(&g);
        return MHD_NO;
    }
    if (done && st.finish == KM_FINISH_ERROR) {
        free(chunk);
        km_job_release(job);
        gen_req_free(&g);
        if (st.too_long)
            return send_error_code(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", chat ? "messages" : "prompt",
                                   "context_length_exceeded", -1, st.error);
        return st.bad_request ? send_error(a, c, ep, MHD_HTTP_BAD_REQUEST, "invalid_request_error", NULL, "%s", st.error)
                              : send_error(a, c, ep, MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, "%s", st.error);
    }
    if (done && st.finish == KM_FINISH_CANCELLED) {
        free(chunk);
        km_job_release(job);
        gen_req_free(&g);
        return send_error(a, c, ep, MHD_HTTP_SERVICE_UNAVAILABLE, "server_error", NULL, "%s", st.error);
    }
    if (!g.stream) {
        size_t seen = cl;
        while (done == 0) { /* collect the rest */
            char *more;
            size_t ml;
            done = wait_job(c, job, seen, &more, &ml, &st, &next_check);
            if (done < 0) { /* the client left */
                free(chunk);
                km_job_release(job);
                gen_req_free(&g);
                return MHD_NO;
            }
            if (ml) {
                char *grown = realloc(chunk, seen + ml + 1);
                if (grown) {
                    memcpy(grown + seen, more, ml);
                    grown[seen + ml] = '\0';
                    chunk = grown;
                    seen += ml;
                }
            }
            free(more);
        }
        km_job_release(job);
        enum MHD_Result r;
        if (st.finish == KM_FINISH_ERROR || st.finish == KM_FINISH_CANCELLED)
            r = send_error(a, c, ep, st.finish == KM_FINISH_ERROR ? MHD_HTTP_INTERNAL_SERVER_ERROR
                                                                  : MHD_HTTP_SERVICE_UNAVAILABLE,
                           "server_error", NULL, "%s", st.error);
        else {
            km_node_observe_estimate(a->node, "local", g.est_ms, st.queue_ms + st.result.ttft_ms);
            count_request(a, ep, MHD_HTTP_OK);
            json_t *j = response_json(a, &g, id, created, chunk, seen, &st);
            r = fwd_auth ? send_json_signed(c, km_mesh_auth(mesh), fwd_auth, j) : send_json(c, MHD_HTTP_OK, j, -1);
        }
        free(chunk);
        gen_req_free(&g);
        return r;
    }
    stream *s = calloc(1, sizeof *s);
    if (!s) {
        free(chunk);
        km_job_release(job);
        gen_req_free(&g);
        return MHD_NO;
    }
    s->a = a;
    s->g = g;
    s->job = job;
    uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN];
    char resp_auth[KM_PEERAUTH_HEADER_MAX + 1] = "";
    if (fwd_auth && (km_peerauth_sign_stream(km_mesh_auth(mesh), fwd_auth, MHD_HTTP_OK, "text/event-stream", resp_auth,
                                             sizeof resp_auth, key) != 0 ||
                     !(s->frames = km_peerframe_writer_new(key)))) {
        free(chunk);
        stream_free(s);
        return MHD_NO;
    }
    sodium_memzero(key, sizeof key);
    snprintf(s->id, sizeof s->id, "%s", id);
    s->created = created;
    if (chunk && cl) {
        stream_emit(s, chunk_json(a, &g, id, created, chunk, cl, true, NULL));
        s->sent_first = true;
        s->seen = cl;
    }
    free(chunk);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                               s->frames ? stream_read_framed : stream_read, s, stream_free);
    if (!r) {
        stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    if (resp_auth[0]) MHD_add_response_header(r, KM_PEERAUTH_RESPONSE_HEADER, resp_auth);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    count_request(a, ep, MHD_HTTP_OK);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle_models(km_api *a, struct MHD_Connection *c) {
    count_request(a, "models", MHD_HTTP_OK);
    json_t *m = json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id", km_node_model_name(a->node),
                          "object", "model", "created", (json_int_t)0, "owned_by", "kvmesh");
    return send_json(c, MHD_HTTP_OK, m, -1);
}

static enum MHD_Result handle_health(km_api *a, struct MHD_Connection *c) {
    km_node_load l = km_node_get_load(a->node);
    bool draining = atomic_load(&a->draining);
    unsigned status = draining ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK;
    count_request(a, "health", status);
    json_t *h = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:I}", "status", draining ? "shutting down" : "ok", "model",
                          km_node_model_name(a->node), "queued", l.queued, "running", l.running, "parallel", l.parallel,
                          "queue_max", l.queue_max, "backlog_ms", (json_int_t)(l.backlog_ms + 0.5));
    km_mesh *mesh = atomic_load(&a->mesh);
    if (mesh) { /* what this node knows of its peers */
        km_peer_info peers[64];
        int n = km_mesh_peers(mesh, peers, 64);
        json_t *arr = json_array();
        for (int i = 0; i < n && i < 64; i++)
            json_array_append_new(
                arr, json_pack("{s:s,s:s,s:s,s:b,s:o,s:i,s:f,s:f}", "id", peers[i].id, "addr", peers[i].addr, "state",
                               km_member_state_name(peers[i].state), "same_model", peers[i].same_model, "catalog_keys",
                               peers[i].has_catalog ? json_integer(peers[i].catalog_keys) : json_null(), "backlog_ms",
                               peers[i].backlog_ms, "link_rtt_ms", peers[i].link_rtt_ms, "link_mbit",
                               peers[i].link_mbit));
        json_object_set_new(h, "mesh", json_string("enabled"));
        json_object_set_new(h, "mesh_id", json_string(km_mesh_id(mesh)));
        json_object_set_new(h, "peers", arr);
    } else if (a->mesh_off) {
        json_object_set_new(h, "mesh", json_string("disabled"));
        json_object_set_new(h, "mesh_disabled", json_string(a->mesh_off));
    }
    return send_json(c, status, h, -1);
}

static enum MHD_Result handle_metrics(km_api *a, struct MHD_Connection *c) {
    if (!a->metrics) return send_error(a, c, "metrics", MHD_HTTP_NOT_FOUND, "invalid_request_error", NULL, "no metrics");
    count_request(a, "metrics", MHD_HTTP_OK); /* counted before rendering: this request is in it */
    char *text;
    size_t len;
    km_error err;
    if (km_metrics_render(a->metrics, &text, &len, &err) != 0)
        return send_error(a, c, "metrics", MHD_HTTP_INTERNAL_SERVER_ERROR, "server_error", NULL, "%s", err.msg);
    return send_bytes(c, MHD_HTTP_OK, "text/plain; version=0.0.4", text, len, -1);
}

static enum MHD_Result handle_peer(km_api *a, struct MHD_Connection *c, conn *cn, const char *method, const char *url) {
    km_mesh *mesh = atomic_load(&a->mesh);
    if (!mesh && a->mesh_off) { /* for good: say why */
        count_request(a, "peer", MHD_HTTP_FORBIDDEN);
        char msg[600];
        int n = snprintf(msg, sizeof msg, "mesh disabled: %.500s\n", a->mesh_off);
        return send_bytes(c, MHD_HTTP_FORBIDDEN, "text/plain", strndup(msg, (size_t)n), (size_t)n, -1);
    }
    if (!mesh) {
        count_request(a, "peer", MHD_HTTP_SERVICE_UNAVAILABLE);
        return send_bytes(c, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain", strdup("no mesh"), 7, 1000);
    }
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, KM_PEERAUTH_HEADER);
    int status;
    uint8_t *body;
    size_t len;
    const char *type;
    char resp_auth[KM_PEERAUTH_HEADER_MAX + 1];
    km_mesh_handle(mesh, method, url, auth, (const uint8_t *)cn->body, cn->len, &status, &body, &len, &type, resp_auth,
                   sizeof resp_auth);
    count_request(a, "peer", (unsigned)status);
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body ? body : (uint8_t *)"", body ? MHD_RESPMEM_MUST_FREE
                                                                                                    : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (resp_auth[0]) MHD_add_response_header(r, KM_PEERAUTH_RESPONSE_HEADER, resp_auth);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static bool authorized(km_api *a, struct MHD_Connection *c) {
    if (!a->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return h && strncmp(h, "Bearer ", 7) == 0 && consttime_equal(h + 7, a->api_key);
}

/* ------------------------------------------------------------ connections
 *
 * libmicrohttpd's idle timeout restarts with every byte, so a client sending
 * a byte now and then holds a connection (and its thread) for as long as it
 * likes. The watchdog closes every connection still receiving its request
 * request_timeout_s after it started: shutdown() wakes the connection's
 * thread, which sees the end of the stream and closes. The socket stays open
 * until libmicrohttpd has told on_connection it closed (and the list lock
 * orders the two), so the fd shut is never another connection's. */

/* Mark the connection's request whole (handling) or done. Found by its
 * socket, unique among open connections (libmicrohttpd's socket-context info
 * is documented ambiguously across versions: pointer or its address). */
static void sock_set(km_api *a, struct MHD_Connection *c, bool handling) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return;
    pthread_mutex_lock(&a->socks_lock);
    for (sock *k = a->socks; k; k = k->next)
        if (k->fd == ci->connect_fd) {
            k->handling = handling;
            k->since = km_now_ms();
            break;
        }
    pthread_mutex_unlock(&a->socks_lock);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    km_api *a = cls;
    sock *k = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci || !(k = calloc(1, sizeof *k))) return; /* untracked: the idle timeout still applies */
        k->fd = ci->connect_fd;
        k->since = km_now_ms();
        pthread_mutex_lock(&a->socks_lock);
        k->next = a->socks;
        if (a->socks) a->socks->prev = k;
        a->socks = k;
        pthread_mutex_unlock(&a->socks_lock);
        *socket_context = k;
    } else if (k) { /* closed */
        pthread_mutex_lock(&a->socks_lock);
        if (k->prev) k->prev->next = k->next;
        else a->socks = k->next;
        if (k->next) k->next->prev = k->prev;
        pthread_mutex_unlock(&a->socks_lock);
        free(k);
        *socket_context = NULL;
    }
}

static void *watchdog_main(void *arg) {
    km_api *a = arg;
    double limit = a->p.request_timeout_s * 1000.0;
    pthread_mutex_lock(&a->socks_lock);
    while (!a->wd_stop) {
        double now = km_now_ms();
        for (sock *k = a->socks; k; k = k->next)
            if (!k->handling && !k->shut && now - k->since > limit) {
                shutdown(k->fd, SHUT_RDWR);
                k->shut = true; /* once */
                if (a->timeouts) km_counter_inc(a->timeouts);
            }
        km_cond_wait_ms(&a->wd_wake, &a->socks_lock, WATCHDOG_MS);
    }
    pthread_mutex_unlock(&a->socks_lock);
    return NULL;
}

/* libmicrohttpd's messages are about clients (closed connections, malformed
 * requests): debug level, or slow or broken clients would flood the log. */
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    if (km_log_level < 2) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    km_debug("http: %s", msg);
}

/* A request that says a peer forwarded it carries no client credential: with
 * a mesh secret, handle_generate takes it on the mesh's signature alone (and
 * refuses it without one), so the API key is not asked for. */
static bool forwarded_by_peer(km_api *a, struct MHD_Connection *c, const char *method, const char *url) {
    km_mesh *mesh = atomic_load(&a->mesh);
    return strcmp(method, MHD_HTTP_METHOD_POST) == 0 && MHD_lookup_connection_value(c, MHD_HEADER_KIND, HOPS_HEADER) &&
           mesh && km_mesh_auth(mesh) &&
           (strcmp(url, "/v1/completions") == 0 || strcmp(url, "/v1/chat/completions") == 0);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    km_api *a = cls;
    conn *cn = *con_cls;
    if (!cn) { /* first call: headers only */
        cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        *con_cls = cn;
        /* without the key, not even the body is read (nor kept in memory) */
        if (strncmp(url, "/v1/", 4) == 0 && !forwarded_by_peer(a, c, method, url) && !authorized(a, c)) {
            sock_set(a, c, true);
            return send_error(a, c, "auth", MHD_HTTP_UNAUTHORIZED, "invalid_request_error", NULL,
                              "missing or wrong API key (Authorization: Bearer <key>)");
        }
        return MHD_YES;
    }
    if (*upload_size) { /* body data, possibly in several calls */
        if (!cn->too_large && cn->len + *upload_size <= a->p.max_body) {
            if (cn->len + *upload_size + 1 > cn->cap) {
                size_t cap = cn->cap ? cn->cap : 4096;
                while (cap < cn->len + *upload_size + 1) cap *= 2;
                char *b = realloc(cn->body, cap);
                if (!b) return MHD_NO;
                cn->body = b;
                cn->cap = cap;
            }
            memcpy(cn->body + cn->len, upload, *upload_size);
            cn->len += *upload_size;
        } else {
            cn->too_large = true; /* keep reading (and dropping) so the answer can be sent */
        }
        *upload_size = 0;
        return MHD_YES;
    }
    sock_set(a, c, true); /* the request is whole: no deadline while it is served */
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0, get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    if (cn->too_large)
        return send_error(a, c, "body", MHD_HTTP_CONTENT_TOO_LARGE, "invalid_request_error", NULL,
                          "request body over %zu bytes", a->p.max_body);
    if (strcmp(url, "/v1/completions") == 0 || strcmp(url, "/v1/chat/completions") == 0) {
        if (!post)
            return send_error(a, c, "method", MHD_HTTP_METHOD_NOT_ALLOWED, "invalid_request_error", NULL,
                              "%s needs POST", url);
        return handle_generate(a, c, cn, url, url[4] == 'c' && url[5] == 'h');
    }
    if (strncmp(url, "/peer/", 6) == 0) return handle_peer(a, c, cn, method, url);
    if (get && strcmp(url, "/v1/models") == 0) return handle_models(a, c);
    if (get && strcmp(url, "/health") == 0) return handle_health(a, c);
    if (get && strcmp(url, "/metrics") == 0) return handle_metrics(a, c);
    return send_error(a, c, "other", MHD_HTTP_NOT_FOUND, "invalid_request_error", NULL, "no route for %s %s", method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    sock_set(cls, c, false); /* a next request on this connection has its own deadline */
    conn *cn = *con_cls;
    if (!cn) return;
    free(cn->body);
    free(cn);
    *con_cls = NULL;
}

km_api *km_api_start(const km_api_params *p, km_node *node, km_metrics *metrics, km_error *err) {
    char host[256];
    int port;
    if (km_parse_hostport(p->listen, host, sizeof host, &port, err) != 0) return NULL;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = getaddrinfo(host, ps, &hints, &ai);
    if (gai != 0) return km_error_set(err, "cannot resolve '%s': %s", host, gai_strerror(gai)), NULL;
    km_api *a = calloc(1, sizeof *a);
    if (!a) {
        freeaddrinfo(ai);
        return km_error_set(err, "out of memory"), NULL;
    }
    a->p = *p;
    a->node = node;
    a->metrics = metrics;
    a->api_key = p->api_key ? strdup(p->api_key) : NULL;
    a->mesh_off = p->mesh_off ? strdup(p->mesh_off) : NULL;
    a->p.api_key = NULL;
    a->p.mesh_off = NULL;
    a->p.listen = NULL;
    pthread_mutex_init(&a->socks_lock, NULL);
    pthread_cond_init(&a->wd_wake, NULL);
    if (metrics)
        a->timeouts = km_metrics_counter(metrics, "kvmesh_http_request_timeouts_total",
                                         "Connections closed for not sending a whole request within --request-timeout",
                                         NULL);
    /* poll, not select: select cannot watch descriptors past 1024 */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    a->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, a, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, a, MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)p->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)p->max_connections_per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p->timeout_s, MHD_OPTION_THREAD_STACK_SIZE,
                            THREAD_STACK_BYTES, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (a->d && pthread_create(&a->watchdog, NULL, watchdog_main, a) == 0) a->wd_started = true;
    if (!a->wd_started) {
        if (a->d) MHD_stop_daemon(a->d);
        pthread_mutex_destroy(&a->socks_lock);
        pthread_cond_destroy(&a->wd_wake);
        free(a->api_key);
        free(a->mesh_off);
        free(a);
        return km_error_set(err, "cannot listen on %s (in use, or not an address of this machine?)", p->listen), NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->d, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info ? info->port : port;
    return a;
}

void km_api_drain(km_api *a) { atomic_store(&a->draining, true); }

void km_api_set_mesh(km_api *a, km_mesh *mesh) { atomic_store(&a->mesh, mesh); }

void km_api_stop(km_api *a) {
    if (!a) return;
    /* Answers being written go out before the connections are closed (their
     * jobs are done when the node was shut down first); a client that does
     * not read its answer holds this up for STOP_GRACE_MS at most. */
    double until = km_now_ms() + STOP_GRACE_MS;
    pthread_mutex_lock(&a->socks_lock);
    for (bool busy = true; busy && km_now_ms() < until;) {
        busy = false;
        for (sock *k = a->socks; k && !busy; k = k->next) busy = k->handling && !k->shut;
        if (busy) km_cond_wait_ms(&a->wd_wake, &a->socks_lock, 10);
    }
    pthread_mutex_unlock(&a->socks_lock);
    MHD_stop_daemon(a->d); /* every connection closed: the list is empty */
    pthread_mutex_lock(&a->socks_lock);
    a->wd_stop = true;
    pthread_cond_signal(&a->wd_wake);
    pthread_mutex_unlock(&a->socks_lock);
    pthread_join(a->watchdog, NULL);
    pthread_mutex_destroy(&a->socks_lock);
    pthread_cond_destroy(&a->wd_wake);
    free(a->api_key);
    free(a->mesh_off);
    free(a);
}

int km_api_port(const km_api *a) { return a->port; }
