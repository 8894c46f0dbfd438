/* node.h -- a serving node: one model, a bounded queue, N contexts at work.
 *
 *   submit -> queue (bounded by count and by the estimated wait: refused,
 *   the caller answers 503 with km_node_retry_after_ms) ->
 *   one of n_parallel workers, each with its own llama context and planner ->
 *   km_pcache_run (local store, Redis tier, peers) -> tokens -> the job
 *
 * A job is the handle between the thread that submitted a request (an HTTP
 * connection) and the worker computing it: the worker appends text, the
 * submitter waits for it (km_job_wait), so streaming and plain responses are
 * the same code. Text is released only when it is final: never half a UTF-8
 * character, never the beginning of what may turn into a stop string.
 *
 * Nothing accepted is lost: a job is finished exactly once -- completed,
 * failed with a message, or cancelled (client gone, node stopping) -- and
 * km_node_shutdown lets running jobs finish and fails the queued ones;
 * km_node_free then flushes the write-behind uploads and keeps the disk cache. */
#ifndef KVMESH_NODE_H
#define KVMESH_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "engine.h"
#include "metrics.h"
#include "pcache.h"
#include "store.h"

typedef struct km_node km_node;
typedef struct km_job km_job;

/* How a node uses its peers (the planner, or the fixed policies it is
 * compared with in `kvmesh bench fleet`). */
typedef enum km_route_mode {
    KM_ROUTE_PLANNER = 0, /* the fastest estimated path: reuse, fetch, forward or recompute */
    KM_ROUTE_FETCH,       /* always fetch a peer's longer prefix, never forward (the paper's way) */
    KM_ROUTE_FORWARD,     /* forward to the peer with the longest prefix, never fetch (arXiv 2606.17059) */
    KM_ROUTE_ISOLATED,    /* no sharing: own states only */
} km_route_mode;

/* "planner", "fetch", "forward", "isolated" <-> km_route_mode. */
int km_route_mode_parse(const char *s, km_route_mode *out);
const char *km_route_mode_name(km_route_mode m);

typedef struct km_node_params {
    const char *model_path;
    int n_parallel;         /* requests computed at once, one context each (default 1) */
    int queue_max;          /* requests waiting for a context; beyond: refused (default 16) */
    int max_wait_ms;        /* refuse a request whose estimated wait for a context is longer
                               (default 30000; 0 = no limit) */
    km_ctx_params ctx;      /* per context: n_ctx, threads, KV type, slowdown */
    km_store_params store;  /* local tiers (disk_dir = --cache-dir) */
    const char *store_url;  /* Redis tier (NULL: none) */
    const uint8_t *store_secret; /* authenticates the Redis tier's states (NULL: trusted as is; copied) */
    size_t store_secret_len;
    const char *link_spec;  /* emulated link for Redis and peer traffic (NULL: none) */
    const char *salt;       /* key-space salt (NULL: none) */
    int block_size;         /* cache every N tokens of prompts without segments (default 256) */
    km_catalog_params catalog; /* the catalog of this node's states (gossiped to peers) */
    km_route_mode route;    /* default KM_ROUTE_PLANNER */
} km_node_params;

km_node_params km_node_default_params(void);
km_route_mode km_node_route_mode(const km_node *n);

/* Load the model, create the contexts, open the stores, start the workers.
 * metrics (may be NULL) gets the node's series. */
km_node *km_node_start(const km_node_params *p, km_metrics *metrics, km_error *err);
/* Stop taking jobs: running ones finish, queued ones are finished as
 * cancelled; returns when the workers are idle. Idempotent. */
void km_node_shutdown(km_node *n);
/* Shut down if not done yet, flush uploads and disk writes, free. */
void km_node_free(km_node *n);

km_model *km_node_model(km_node *n);
/* The model's name for the API (file name without .gguf). */
const char *km_node_model_name(const km_node *n);
km_store *km_node_store(km_node *n);
/* The emulated link of remote traffic (--link), NULL if none; owned by the node. */
struct km_link *km_node_link(km_node *n);

/* ---- requests ---- */

typedef struct km_job_spec {
    const char *const *segs; /* prompt text as segments (copied) */
    int n_segs;
    bool special;            /* chat-template output: parse special tokens */
    km_sampling sampling;
    int n_predict;           /* tokens at most (the context bounds it too) */
    const char *const *stop; /* stop strings (copied; at most 4 of at most 64 bytes) */
    int n_stop;
    const struct km_prompt_plan *plan; /* km_node_plan of these segments, if the caller made one (else the
                                          node makes it: the job's work estimate needs the tokens) */
} km_job_spec;

typedef enum km_finish {
    KM_FINISH_RUNNING = 0,
    KM_FINISH_STOP,      /* end of generation or a stop string */
    KM_FINISH_LENGTH,    /* n_predict reached */
    KM_FINISH_ERROR,     /* failed: see message */
    KM_FINISH_CANCELLED, /* km_job_cancel or the node stopping */
} km_finish;

typedef struct km_job_status {
    km_finish finish;
    size_t text_len;     /* final text so far */
    int n_prompt;        /* tokens of the prompt (once prefilled) */
    int n_generated;
    double queue_ms;     /* submit -> a worker took it */
    km_result result;    /* valid once finished (timings count from the worker's start) */
    bool bad_request;    /* an error caused by the request itself (e.g. too long) */
    bool too_long;       /* that error: the prompt does not fit the context */
    char error[512]; /* as km_error */
} km_job_status;

/* Queue a request. NULL with err set when the node has no room for it --
 * the queue is full, or the estimated wait for a context is over max_wait_ms
 * -- (*busy = true: answer 503, see km_node_retry_after_ms) or the spec is
 * invalid (*busy = false). The job is owned by the caller: km_job_release it
 * when done. */
km_job *km_node_submit(km_node *n, const km_job_spec *spec, bool *busy, km_error *err);
/* When a refused request should come back, in ms from now: once the work
 * ahead is done (the backlog over the contexts), and one request's turn (the
 * mean service time over the contexts; 1 s until measured) after the
 * requests refused before it, so that a burst's retries arrive at the pace
 * the node serves them. Books that turn: call once per refusal. */
double km_node_retry_after_ms(km_node *n);
/* Fail, without tokenizing, when the text of segs cannot fit the context
 * whatever it tokenizes to: n bytes are at least n / km_model_max_piece_len
 * tokens. km_node_plan (and so km_node_submit) checks this first. */
int km_node_check_length(km_node *n, const char *const *segs, int n_segs, km_error *err);

/* Wait (at most timeout_ms; < 0 forever) until text past `seen` bytes is
 * final or the job has finished; *chunk (malloc'd, may be NULL) gets that
 * text. Returns 1 when finished and everything was handed out, 0 otherwise. */
int km_job_wait(km_job *j, size_t seen, int timeout_ms, char **chunk, size_t *chunk_len, km_job_status *st);
/* Stop the job at the next token (client went away), or take it out of the
 * queue at once if it waits there; it finishes as cancelled. */
void km_job_cancel(km_job *j);
void km_job_release(km_job *j);

/* ---- planning (where to run a request) ---- */

/* A prompt as the cache sees it, with this node's estimate of serving it. */
typedef struct km_prompt_plan {
    int n_tokens, n_bounds;
    int *bounds;          /* malloc'd (km_prompt_plan_free) */
    km_key *keys;         /* key of each boundary */
    int local_hit;        /* longest boundary held locally or computed by a job ahead of this one, -1 none */
    bool local_pending;   /* local_hit is not stored yet: a queued or running job is computing it */
    double wait_ms;       /* estimated wait for a context here (the backlog ahead) */
    double local_ms;      /* estimated wait + prefill here, reusing the local hit; < 0 unknown */
    double prefill_tok_ms; /* this node's measured prefill rate (0 = unknown) */
    double first_extra_ms; /* mean time to the first token beyond the prefill (lookup, restore, a step) */
} km_prompt_plan;

/* Tokenize and key a prompt given as for a job, and estimate it here. */
int km_node_plan(km_node *n, const char *const *segs, int n_segs, bool special, km_prompt_plan *out, km_error *err);
void km_prompt_plan_free(km_prompt_plan *p);
/* Estimated state bytes of a prefix of n_tokens (for fetch estimates). */
size_t km_node_state_size_estimate(km_node *n, int n_tokens);
/* Record how a request the plan estimated at est_ms actually went (ms from
 * submit to first token), for the estimate-error metric. */
void km_node_observe_estimate(km_node *n, const char *path, double est_ms, double actual_ms);

/* ---- state for the API and the mesh ---- */

typedef struct km_node_load {
    int queued, running, parallel, queue_max;
    double prefill_tok_s; /* measured (0 until known) */
    double backlog_ms;    /* estimated compute left in the running and queued jobs, all contexts together */
} km_node_load;

km_node_load km_node_get_load(km_node *n);
/* Prefixes being computed now, for peers to forward to: the boundary keys
 * of the running and queued requests but their last (a prompt's own end is
 * rarely anyone else's), longest first, running requests first; returns the
 * count (at most max). */
int km_node_pending(km_node *n, km_key *out, int max);
/* The version of the catalog of local states (changes when the store does). */
uint64_t km_node_catalog_version(km_node *n);

/* Where requests find peers holding states (the mesh): acquire gives the
 * remotes for one request (count returned), release takes them back. */
typedef struct km_peer_source {
    int (*acquire)(void *ud, km_remote **out);
    void (*release)(void *ud, km_remote *remotes, int n);
    void *ud;
} km_peer_source;

/* Install (or with NULL detach) the peer source; detaching waits until no
 * running request still uses the old one. */
void km_node_set_peer_source(km_node *n, const km_peer_source *src);
/* The Bloom catalog of this node's local states, encoded (*out malloc'd). */
int km_node_catalog(km_node *n, uint8_t **out, size_t *len, uint64_t *version, km_error *err);

#endif
