/* redis_tier.h -- the shared cache server tier (Redis, through hiredis).
 *
 * Devices share prompt states through one Redis server, as in the paper. State
 * blobs live under a namespace derived from the model fingerprint:
 *
 *     kvmesh:v1:<fingerprint hex>:s:<key hex>      the blob (SET with optional TTL)
 *
 * Reads are synchronous on the request path, bounded by the I/O timeout.
 * Uploads are write-behind: a put queues the blob and returns at once; a
 * writer thread with its own connection sends it, so an upload never adds to
 * the TTFT or TTLT of the request that produced it. The writer also zstd-
 * compresses each state blob right before its SET (km_blob_compress; values
 * that are not blobs, or do not shrink, go as given), so compression costs no
 * request time either. km_redis_close flushes the queue (bounded by a
 * deadline) and reports what it could not send.
 *
 * Redis down is not an error for requests: the tier marks itself down, warns
 * once, and retries with exponential backoff (100 ms to 5 s) while requests
 * fall back to the local tiers and recompute. Fetched blobs are untrusted: the
 * caller validates them exactly like local ones (and deletes bad ones).
 *
 * Store secret: with one (params.secret), the writer authenticates every
 * state blob it uploads, after compressing it, with the store key derived
 * from it (km_blob_key_derive "store"), and km_redis_key gives the caller
 * that key to verify what it fetches: a blob anyone else wrote into Redis is
 * "unauthenticated". Without one, the tier is trusted as is (said once at
 * open): its states are used after validation, their next-token hints only
 * after the node computed the same token (km_redis_log_trust says which).
 *
 * Catalog: so that a device never asks Redis about states nobody has, every
 * client keeps a local Bloom-filter copy of what the tier holds
 * (km_redis_maybe_has) and a background thread keeps it in sync:
 *
 *     kvmesh:v1:<fp>:added      list of the raw 16-byte keys of every upload
 *                               (pushed in the same round trip as the SET)
 *     kvmesh:v1:<fp>:catalog    the master catalog (km_catalog wire format);
 *                               its version = how many list entries it covers
 *     kvmesh:v1:<fp>:epoch      a random token naming the current list (SET NX
 *                               by the first client to find none)
 *
 * A sync fetches only the list entries past the position it has (the delta);
 * every full_refresh_ms it reloads the master catalog and continues from its
 * version. A changed epoch (Redis restarted empty, or a rebuild recreated the
 * list) or a list shorter than the position drops the copy and reloads. A
 * client adds its own uploads to its copy at once. Evictions (TTL,
 * maxmemory) leave stale entries: a GET that then misses is a false positive,
 * and km_redis_catalog_rebuild (periodic, and `kvmesh catalog rebuild`)
 * rebuilds the master from the keys actually present (and replaces a list
 * key holding another type of value or more than keys, with a new epoch).
 * Nothing a Redis writer stores is read whole beyond a bound: a state value
 * up to the caller's bound (km_redis_get), the master up to 64 MiB, new list
 * entries only once the list's memory shows nothing but keys. */
#ifndef KVMESH_REDIS_TIER_H
#define KVMESH_REDIS_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob.h"
#include "catalog.h"
#include "link.h"
#include "prefix.h"
#include "util.h"

typedef struct km_redis km_redis;

typedef struct km_redis_params {
    const char *url;           /* redis://[user:password@]host:port[/db] */
    int connect_timeout_ms;    /* default 500 */
    int io_timeout_ms;         /* default 2000 */
    int ttl_s;                 /* expiry of stored states, 0 = none (default) */
    size_t max_blob;           /* larger blobs are neither sent nor accepted (default 1 GiB) */
    size_t queue_budget;       /* bytes of pending uploads; over it the oldest are dropped and counted (default 512 MiB) */
    km_catalog_params catalog; /* local copy's capacity / error rate */
    int sync_period_ms;        /* catalog delta sync (default 500; 0 = no background sync) */
    int full_refresh_ms;       /* reload the master catalog (default 30000) */
    int rebuild_period_ms;     /* rebuild the master from the keys present (default 0 = never) */
    km_link *link;             /* emulated link for every call (NULL: none; caller owns it) */
    int compress_level;        /* zstd level of uploaded state blobs (default 1; 0 = send as queued) */
    const uint8_t *secret;     /* store secret (km_peerauth_load_secret; NULL: the tier is trusted as is) */
    size_t secret_len;
} km_redis_params;

typedef struct km_redis_stats {
    uint64_t gets, hits, misses, get_errors, bad_values;
    uint64_t bytes_down, bytes_up; /* bytes_up: as sent (compressed) */
    uint64_t bytes_up_raw;         /* the same uploads as queued (before compression) */
    uint64_t uploads_done, uploads_failed, uploads_dropped, uploads_pending;
    uint64_t deletes;
    double get_ms, upload_ms; /* total time in GETs (request path) and in uploads (writer) */
    double compress_ms;       /* writer time spent compressing uploads (not in upload_ms) */
    bool up;                  /* last known state of the connection */
    uint64_t catalog_version;   /* list position the local copy covers */
    uint64_t catalog_syncs, catalog_full_loads, catalog_delta_keys, catalog_rebuilds;
    uint64_t catalog_resets;     /* copies dropped because the upload list was reset (Redis restarted empty) */
    uint64_t catalog_bytes_down; /* catalog transfer: master loads + deltas */
    size_t catalog_bytes;       /* size of the local copy's filter */
} km_redis_stats;

km_redis_params km_redis_default_params(void);

/* Parse a redis:// URL; fills host (buffer of host_len), port, db, user and
 * password (NULL when absent; malloc'd). Returns 0 or -1 with err set. */
int km_redis_parse_url(const char *url, char *host, size_t host_len, int *port, int *db, char **user, char **password,
                       km_error *err);

/* Open the tier for one model. Fails only on a bad URL; an unreachable server
 * is reported (once) and retried later. */
km_redis *km_redis_open(const km_redis_params *p, const uint8_t fingerprint[KM_FINGERPRINT_LEN], km_error *err);
/* Flush uploads (waiting at most flush_ms), report unsent ones, disconnect, free. */
void km_redis_close(km_redis *r, int flush_ms);

/* GET the blob of key, if at most max_len bytes (0: max_blob; the caller
 * knows the largest state its key can name): 0 hit (*blob malloc'd), 1 miss,
 * 2 a value that cannot be a blob (larger, or not a string: the caller
 * deletes it), -1 error or tier down. Reads at most max_len + 1 bytes of a
 * value, whatever its size. */
int km_redis_get(km_redis *r, km_key key, size_t max_len, uint8_t **blob, size_t *len, km_error *err);
/* Queue an upload (copies blob). Returns -1 if refused (too large). */
int km_redis_put_async(km_redis *r, km_key key, const uint8_t *blob, size_t len, km_error *err);
/* Delete a key (e.g. a blob that failed validation). Synchronous. */
int km_redis_del(km_redis *r, km_key key, km_error *err);
/* Wait until the upload queue is empty, deadline_ms passed, or the server
 * proved unreachable (two more failed connection attempts); returns the
 * number of uploads still pending. */
int km_redis_flush(km_redis *r, int deadline_ms);

km_redis_stats km_redis_get_stats(km_redis *r);

/* The key that authenticates this tier's states (see Store secret), or NULL
 * when the tier is trusted as is. */
const km_blob_key *km_redis_key(const km_redis *r);
/* Say how far the tier's states are trusted (once, at the start of a program
 * that reads states from it). */
void km_redis_log_trust(const km_redis *r);

/* Whether the tier may hold key (local catalog copy; no network). */
bool km_redis_maybe_has(km_redis *r, km_key key);
/* One catalog sync now, synchronously (full load if due or forced). */
int km_redis_catalog_sync(km_redis *r, bool force_full, km_error *err);
/* Rebuild the master catalog from the state keys present (SCAN); *n_keys gets
 * their count. Then reloads the local copy. */
int km_redis_catalog_rebuild(km_redis *r, uint32_t *n_keys, km_error *err);
/* The Redis key of a state (buffer of at least 128 bytes). */
void km_redis_state_key(const km_redis *r, km_key key, char *out, size_t len);

#endif
