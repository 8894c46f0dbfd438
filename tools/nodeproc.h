/* nodeproc.h -- local `kvmesh node` processes, and a small client to talk to them.
 *
 * `kvmesh demo` and `kvmesh bench fleet` run a mesh of real node processes on
 * loopback, started from the kvmesh binary itself (/proc/self/exe), so what
 * they show is what a deployment does: separate address spaces, real HTTP,
 * real gossip. Each node listens on a port the kernel picks (no races over
 * "free" ports) and reports it through a port file.
 *
 * Nodes never outlive us: each child gets PR_SET_PDEATHSIG (it dies with the
 * thread that started it -- start nodes from a thread that outlives them,
 * normally the main thread), an atexit hook kills whatever is still running,
 * and SIGINT/SIGTERM (when nobody else handles them) kill every node, remove
 * their temp files and then end the process with the same signal. */
#ifndef KVMESH_NODEPROC_H
#define KVMESH_NODEPROC_H

#include <stddef.h>

#include "util.h"

typedef struct km_nodeproc km_nodeproc;

/* How long km_nodeproc_start waits for the port file (model loading under a
 * sanitizer build is slow). */
#define KM_NODEPROC_START_TIMEOUT_MS 120000

/* Start `kvmesh node <node_args...> --listen 127.0.0.1:0 --port-file <tmp>`
 * (node_args: NULL-terminated, the options after "node", e.g. --model M).
 * Its stdout and stderr go to log_path (NULL: a temp file). Returns once it
 * listens; NULL with err (naming the cause, with the tail of its log) if it
 * exited or did not listen within KM_NODEPROC_START_TIMEOUT_MS. */
km_nodeproc *km_nodeproc_start(const char *const *node_args, const char *log_path, km_error *err);
/* The port it listens on. */
int km_nodeproc_port(const km_nodeproc *p);
/* "http://127.0.0.1:<port>", for the HTTP calls below. */
const char *km_nodeproc_url(const km_nodeproc *p);
/* "127.0.0.1:<port>": what --peers takes and X-Kvmesh-Forwarded-To names. */
const char *km_nodeproc_addr(const km_nodeproc *p);
/* Its process id. */
int km_nodeproc_pid(const km_nodeproc *p);
/* Where its output goes. */
const char *km_nodeproc_log(const km_nodeproc *p);
/* Ask it to stop (SIGTERM) without waiting: to stop several nodes in the
 * time of one, terminate each, then km_nodeproc_stop each. */
void km_nodeproc_terminate(km_nodeproc *p);
/* SIGTERM (the node finishes running requests), wait at most timeout_ms,
 * then SIGKILL; reap, remove the temp files (a given log_path is kept), free.
 * Returns the exit code, 128 + signal number if it was killed, -1 on NULL. */
int km_nodeproc_stop(km_nodeproc *p, int timeout_ms);
/* SIGKILL every node still running and remove their temp files, without
 * freeing anything (async-signal-safe; the atexit hook and the signal handler
 * call it). */
void km_nodeproc_kill_all(void);

/* ---- HTTP to the nodes (libcurl) ---- */

typedef struct km_http_info {
    double ttft_ms;          /* event stream: until the first `data:` event carrying text
                                (the first event if none does); otherwise = total_ms */
    double total_ms;         /* until the whole answer was read */
    char forwarded_to[128];  /* X-Kvmesh-Forwarded-To: the peer that ran it ("" = the node itself) */
    char content_type[64];
} km_http_info;

/* POST a JSON body to base_url + path. On any HTTP answer returns 0 with
 * *status and the body (*resp malloc'd, NUL-terminated; *len may be NULL);
 * -1 with err on transport errors and after timeout_ms. info may be NULL. */
int km_http_post_json(const char *base_url, const char *path, const char *body, int timeout_ms, long *status,
                      char **resp, size_t *len, km_http_info *info, km_error *err);
/* GET base_url + path (e.g. /metrics, /health); as km_http_post_json. */
int km_http_get(const char *base_url, const char *path, int timeout_ms, long *status, char **resp, size_t *len,
                km_error *err);

/* The text of a streamed completion (each event's choices[0].text or
 * .delta.content, concatenated) into *text, and the JSON of its last event
 * (it carries `timings`) into *last (NULL to skip); both malloc'd. -1 with
 * err if an event is not JSON or carries an error. */
int km_sse_collect(const char *body, char **text, char **last, km_error *err);

/* The value of one sample in Prometheus text, e.g. series
 * `kvmesh_cache_hits_total{tier="peer"}`: the line that starts with exactly
 * that series (never a # HELP / # TYPE line). NAN if there is none. */
double km_metrics_scrape(const char *text, const char *series);

#endif
