/* api.h -- the node's HTTP server (libmicrohttpd): the OpenAI-compatible API.
 *
 *   POST /v1/completions        prompt -> text      (stream: server-sent events)
 *   POST /v1/chat/completions   messages -> message (stream: server-sent events)
 *   GET  /v1/models             the one model this node serves
 *   GET  /health                200 while serving, 503 when shutting down
 *   GET  /metrics               Prometheus text format
 *   /peer/v1/...                the mesh's peer endpoints (mesh.h); 403 when the mesh
 *                               is disabled (an API key without a mesh secret)
 *
 * Requests follow OpenAI's API; errors use its error object
 * ({"error": {"message", "type", "param", "code"}}). Every response carries
 * `timings` (like llama.cpp's server): where the reused prefix came from, how
 * many tokens were reused and computed, TTFT. Cache segments: a chat's
 * messages are segments by themselves (see chat.h); a completion can give
 * its prompt as `cache_segments` (an array of strings whose concatenation is
 * the prompt), so that e.g. instruction and few-shot examples are cached as
 * prefixes of their own. docs/api.md has the details.
 *
 * One thread per connection (bounded by max_connections, and per client
 * address by max_connections_per_ip): a connection blocks on its job while
 * the node's workers compute, which keeps streaming simple; a client that
 * leaves cancels its request. A request must arrive whole -- head and body,
 * from the connection's start or the end of its previous answer -- within
 * request_timeout_s, else the connection is closed (slow senders cannot
 * hold connections). Bodies are bounded (max_body) and parsed strictly.
 * Refusals for load (503) carry Retry-After (s) and retry-after-ms: when
 * the node expects to have room (km_node_retry_after_ms). */
#ifndef KVMESH_API_H
#define KVMESH_API_H

#include <stdbool.h>
#include <stddef.h>

#include "metrics.h"
#include "node.h"

typedef struct km_api km_api;

typedef struct km_api_params {
    const char *listen;     /* host:port (port 0: any free port) */
    const char *api_key;    /* required as "Authorization: Bearer <key>" on /v1/ (NULL: none) */
    size_t max_body;        /* bytes of a request body (default 4 MiB) */
    int max_connections;    /* at once (default 1024) */
    int max_connections_per_ip; /* at once from one client address (default 256; 0 = no limit) */
    int request_timeout_s;  /* to receive a whole request, head and body (default 10) */
    int timeout_s;          /* idle connection timeout, e.g. a client not reading its answer (default 300) */
    const char *mesh_off;   /* why the node runs without a mesh: /peer/ answers 403 with it,
                               /health shows it (NULL: a mesh is set with km_api_set_mesh) */
} km_api_params;

km_api_params km_api_default_params(void);

/* Listen and serve node. metrics (may be NULL) is rendered on /metrics and
 * gets the HTTP series. */
km_api *km_api_start(const km_api_params *p, km_node *node, km_metrics *metrics, km_error *err);
/* Serve the mesh's peer endpoints (/peer/...) from now on (NULL: none; they
 * answer 503 until set). */
struct km_mesh;
void km_api_set_mesh(km_api *a, struct km_mesh *mesh);
/* Refuse new requests (/health says 503); running ones go on. */
void km_api_drain(km_api *a);
/* Close the listening socket and every connection, once the answers being
 * written have gone out (5 s at most; shut the node down first), free. */
void km_api_stop(km_api *a);
/* The port actually bound. */
int km_api_port(const km_api *a);

/* Split "host:port" / "[v6]:port"; host gets at most host_len - 1 chars. */
int km_parse_hostport(const char *s, char *host, size_t host_len, int *port, km_error *err);
/* Whether host names a loopback address (127.0.0.0/8, ::1, localhost). */
bool km_host_is_loopback(const char *host);

#endif
