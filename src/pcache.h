/* pcache.h -- the prompt cache: prefill a prompt reusing the longest stored prefix.
 *
 *   keys of all boundaries -> longest key whose blob can be had and validates
 *   (checksum, model, KV types, tokens, state layout) -> restore -> prefill
 *   the rest, snapshotting the state at every new boundary -> store.
 *
 * Where blobs come from, per boundary: the local store (exact), then remote
 * holders whose catalog may hold the key -- the shared Redis tier and the
 * mesh's peers (km_remote) -- with no round trip without a catalog hit. With
 * measured rates (planner) the candidates are tried fastest first and those
 * slower than recomputing are dropped. A fetched state is kept locally; new
 * snapshots go to the local store at once and to Redis write-behind.
 *
 * A blob that fails validation is reported, counted, removed from the store,
 * and the next shorter prefix is tried: a bad blob costs time, never a wrong
 * answer. The result is bit-identical to a cold prefill (see engine.h).
 *
 * Trust: a remote holder with a key (km_remote.key: the Redis tier's store
 * key, the mesh's key) must send blobs carrying its MAC; one that does not
 * verify is "unauthenticated": counted, removed there (Redis: DEL), never
 * stored here, and the next shorter prefix is tried. A state's next-token
 * hint is only answered with when its origin is trusted: the local store's
 * own bytes (km_store_get_origin) or a blob authenticated just now. Any other
 * hint is checked instead: the last prompt token is decoded and its greedy
 * token compared. A hint that ever disagrees with the computed token is an
 * error: counted, logged, and the blob removed from every tier it came from. */
#ifndef KVMESH_PCACHE_H
#define KVMESH_PCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob.h"
#include "engine.h"
#include "planner.h"
#include "redis_tier.h"
#include "store.h"

enum { KM_TIER_NONE = 0, KM_TIER_LOCAL = 1, KM_TIER_REDIS = 2, KM_TIER_PEER = 3 };

/* A remote holder of states other than the Redis tier (which km_pcache_opts
 * names directly, since it also takes uploads): a peer of the mesh. Called
 * from the request's thread; the callbacks lock whatever they share. */
typedef struct km_remote {
    int tier;         /* KM_TIER_PEER */
    const char *name; /* for messages (the peer's id or address) */
    void *ud;
    /* Catalog check, no I/O: may the holder have key? */
    bool (*maybe_has)(void *ud, km_key key);
    /* Fetch a blob of at most max_len bytes (the largest the key's state can
     * be; a larger value is never read whole): 0 got it (*blob malloc'd),
     * 1 not there (a catalog false positive), 2 a value that can never be a
     * blob (e.g. larger), -1 error. */
    int (*get)(void *ud, km_key key, size_t max_len, uint8_t **blob, size_t *len, km_error *err);
    /* A fetched blob failed validation (or was unusable): tell the holder's side. */
    void (*reject)(void *ud, km_key key, const char *why);
    /* Copy of the measured link to the holder (for the planner). */
    void (*link)(void *ud, km_linkfit *out);
    /* Feed the link: a GET of wire_bytes took ms; a blob of wire_bytes held state_bytes. */
    void (*observe_fetch)(void *ud, size_t wire_bytes, double ms);
    void (*observe_wire)(void *ud, size_t wire_bytes, size_t state_bytes);
    /* States from it must carry a MAC made with this key (km_blob_verify);
     * NULL: the holder is trusted as is (its hints are checked, not used). */
    const km_blob_key *key;
} km_remote;

typedef struct km_pcache_opts {
    const char *salt;   /* key-space salt (NULL: none) */
    bool lookup;        /* reuse stored states (default true) */
    bool save;          /* store snapshots of new boundaries (default true) */
    size_t max_blob;    /* largest blob accepted from a tier (default 1 GiB) */
    km_redis *redis;    /* shared tier (default NULL: none) */
    const km_remote *remotes; /* peers holding states (default none) */
    int n_remotes;
    km_planner *planner; /* measured rates: fetch a remote state only when that is
                            estimated faster than recomputing it (NULL: always fetch) */
    bool skip_catalog;  /* ask the shared tier about every boundary, catalog or not
                           (only to measure what the catalog saves) */
    bool next_hint;     /* a full hit may answer with the stored greedy next token
                           instead of decoding the last prompt token (see below) */
} km_pcache_opts;

km_pcache_opts km_pcache_default_opts(void);

typedef struct km_prefill_report {
    int n_prompt;        /* prompt tokens */
    int n_bounds;        /* boundaries (the last is n_prompt - 1) */
    int n_bounds_merged; /* segment ends or blocks left out: at most KM_MAX_BOUNDS per prompt (km_pcache_run) */
    int hit_index;       /* boundary restored from (0-based), -1 on a miss */
    int hit_tier;        /* KM_TIER_* the restored state came from */
    int hit_remote;      /* index into opts->remotes of a KM_TIER_PEER hit, else -1 */
    int n_reused;        /* tokens restored from the cache */
    int n_prefilled;     /* tokens computed */
    int n_rejected;      /* stored blobs that failed validation (removed) */
    int n_unauthenticated; /* remote blobs whose MAC did not verify (removed there, not used) */
    int n_hint_mismatches; /* next-token hints that disagreed with the computed token (blob removed) */
    int n_saved;         /* snapshots stored */
    size_t bytes_loaded; /* blob bytes restored */
    size_t bytes_saved;  /* blob bytes stored */
    int n_remote_gets;   /* GETs sent to remote holders (each after a catalog hit) */
    int n_false_positives; /* catalog hits whose GET found nothing */
    size_t bytes_remote; /* blob bytes fetched from remote holders */
    int n_uploaded;      /* snapshots queued for the shared tier (write-behind) */
    size_t bytes_uploaded;
    double t_remote_ms;  /* time in remote GETs (part of t_lookup_ms) */
    double t_lookup_ms;  /* key hashing + store lookups + blob validation */
    double t_restore_ms; /* llama_state_seq_set_data */
    double t_prefill_ms; /* decoding, excluding snapshots */
    double t_save_ms;    /* snapshots: state export + blob build + store put */
    int n_planned_skips; /* remote states not fetched: recomputing was estimated faster */
    double est_fetch_ms, est_recompute_ms; /* the planner's figures for the longest remote candidate */
    int32_t next_hint;   /* >= 0: greedy first token supplied by a full hit; the last
                            prompt token is then NOT decoded yet (km_pcache_decode_last) */
    km_key hit_key;      /* key of the restored state (hit_index >= 0) */
    bool hit_trusted;    /* its origin is trusted (see Trust above) */
} km_prefill_report;

/* Prefill tokens[0..n_tokens) into seq (cleared first) using and feeding the
 * store (may be NULL: plain chunked prefill). bounds as from km_boundaries.
 *
 * Next-token hint: the state of the end boundary (all prompt tokens but the
 * last) is stored after the last token was decoded, together with that
 * token and the token greedy decoding picks next. A later greedy request for
 * the same prompt (opts->next_hint) then gets its first token with no compute
 * at all: rep->next_hint -- if the state's origin is trusted; otherwise the
 * last token is decoded and the hint compared (see Trust). The state is
 * restored all the same; call km_pcache_decode_last before generating more,
 * and the continuation is bit-identical to a cold run. */
int km_pcache_prefill(km_ctx *c, km_store *store, int seq, const int32_t *tokens, int n_tokens, const int *bounds,
                      int n_bounds, const km_pcache_opts *opts, km_prefill_report *rep, km_error *err);

/* A sealed blob holding a state exported at n_tokens tokens (as passed to a
 * km_boundary_fn). *out is malloc'd. */
int km_blob_from_state(km_ctx *c, const int32_t *tokens, int n_tokens, const uint8_t *state, size_t state_len,
                       uint8_t **out, size_t *len, km_error *err);

/* After a prefill that returned a next_hint: decode the last prompt token, so
 * the logits are ready as after any prefill. */
int km_pcache_decode_last(km_ctx *c, int seq, const int32_t *tokens, int n_tokens, km_error *err);

/* Validate a blob for a request and restore it into seq. info (may be NULL)
 * gets the parsed header (pointers into blob). */
int km_pcache_restore_blob(km_ctx *c, int seq, const uint8_t *blob, size_t len, size_t max_blob,
                           const int32_t *req_tokens, int n_req, int expect_tokens, km_blob_info *info, km_error *err);


/* One whole request: tokenize, prefill through the cache, generate. This is
 * the single code path of `kvmesh run`, the demo and the benchmarks.
 * n_predict 0 prefills (and caches) the prompt and generates nothing, hit or
 * miss: the hint is not used then. */
typedef struct km_request {
    const char *const *segs;   /* prompt text, as segments */
    int n_segs;
    bool segment_bounds;       /* boundaries at segment ends; else fixed blocks */
    bool special;              /* segments are chat-template output: parse special tokens */
    int block_size;            /* fixed-block size when !segment_bounds (0: none) */
    km_sampling sampling;
    int n_predict;
    km_token_fn on_token;      /* each generated token (may be NULL) */
    void *ud;
    const km_pcache_opts *opts; /* NULL: defaults */
} km_request;

typedef struct km_result {
    km_prefill_report prefill;
    int n_generated;
    double ttft_ms; /* request start -> first token sampled (prefill end if none) */
    double ttlt_ms; /* request start -> last token sampled */
} km_result;

/* Run a request on seq. Timings count from the call. */
int km_pcache_run(km_ctx *c, km_store *store, int seq, const km_request *req, km_result *res, km_error *err);

/* Tokenize a prompt given as text segments: each segment is tokenized on its
 * own (BOS before the first) and the results concatenated, so a segment's
 * tokens never depend on the text that follows it and equal prefixes give
 * equal keys. *seg_ends gets the token offset where each segment ends.
 * special: parse special-token text (prompts made by a chat template). */
int km_tokenize_segments(const km_model *m, const char *const *segs, int n_segs, bool special, int32_t **tokens,
                         int *n_tokens, int **seg_ends, km_error *err);

#endif
