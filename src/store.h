/* store.h -- the local state store: a RAM tier and a disk tier, keyed by prefix key.
 *
 * RAM tier: an LRU under a byte budget. Disk tier (optional): one file per key,
 * <dir>/<key hex>.kvb, survives restarts; an LRU under its own byte budget,
 * evicted by the writer thread before it writes. Its recency order is kept in
 * memory and in the files' modification times (a get marks the file), so it
 * holds across processes too. Disk writes are crash-safe (temp file,
 * fsync, rename, directory fsync): a half-written entry is never served, and
 * when a store opens it removes the temp files of writers that are gone (dead
 * pid, or untouched for an hour); a live writer's, e.g. another `kvmesh run`
 * sharing the directory, stays. Directories shared between hosts (NFS) are
 * not supported: a pid names a process of this host only.
 *
 * Puts go to RAM at once and to disk on a background writer thread, so a put
 * never waits for the disk (it sits on the prefill path). km_store_flush waits
 * until every queued write is on disk; km_store_close flushes.
 *
 * Origin: every entry records whether its bytes are trusted -- put by this
 * process as its own (km_store_put) rather than as foreign bytes
 * (km_store_put_untrusted, e.g. a state fetched from a tier trusted as is) --
 * and km_store_get_origin reports it. A file found on disk when the store
 * opened was left by an earlier process (or put there by someone else): not
 * trusted. Neither is a file this process wrote that changed since (another
 * inode, ctime or size than right after the write; best effort: the cache
 * directory must still be writable by the node's user only).
 *
 * The store holds opaque bytes: it does not validate blobs (the caller
 * validates what it gets, and calls km_store_remove for a bad one). The one
 * exception is write-behind compression: the disk writer stores what parses as
 * an uncompressed state blob as its zstd-compressed form (km_blob_compress)
 * and anything else as given. The RAM tier keeps what it was given; a get
 * served from disk returns the bytes of the file, compressed or not.
 * Thread-safe. */
#ifndef KVMESH_STORE_H
#define KVMESH_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefix.h"
#include "util.h"

typedef struct km_store km_store;

typedef struct km_store_params {
    size_t ram_budget;     /* bytes of blob data kept in RAM (default 256 MiB; 0 = no RAM tier) */
    const char *disk_dir;  /* NULL = no disk tier; created if missing */
    uint64_t disk_budget;  /* bytes on disk (default 4 GiB; 0 = unlimited); least recently used files go first */
    size_t max_blob_size;  /* larger puts and files are refused (default, and 0: 1 GiB) */
    int compress_level;    /* zstd level of state blobs written to disk (default 1; 0 = as given) */
} km_store_params;

typedef struct km_store_stats {
    uint64_t ram_bytes, ram_entries;
    uint64_t disk_bytes, disk_entries;
    uint64_t ram_hits, disk_hits, misses;
    uint64_t ram_evictions, disk_evictions;
    uint64_t disk_write_errors;
} km_store_stats;

km_store_params km_store_default_params(void);

km_store *km_store_open(const km_store_params *p, km_error *err);
/* Flushes pending disk writes, then frees everything. */
void km_store_close(km_store *s);

/* Store a copy of blob under key (replacing any previous entry). A blob larger
 * than the RAM budget skips the RAM tier. Returns -1 for a blob over
 * max_blob_size or when out of memory. */
int km_store_put(km_store *s, km_key key, const uint8_t *blob, size_t len, km_error *err);

/* km_store_put for bytes this process did not make and could not
 * authenticate: km_store_get_origin reports them as not trusted. */
int km_store_put_untrusted(km_store *s, km_key key, const uint8_t *blob, size_t len, km_error *err);

/* Fetch a copy (malloc'd; caller frees). RAM first, then disk (promoted to RAM).
 * Returns 0 on hit, 1 on miss, -1 on a read error (err set). */
int km_store_get(km_store *s, km_key key, uint8_t **blob, size_t *len, km_error *err);
/* km_store_get, and *trusted: the bytes are this process's own (see Origin). */
int km_store_get_origin(km_store *s, km_key key, uint8_t **blob, size_t *len, bool *trusted, km_error *err);

/* Whether the key is present in either tier (no I/O beyond an in-memory index). */
bool km_store_contains(km_store *s, km_key key);

/* Delete from both tiers (e.g. a blob that failed validation). */
void km_store_remove(km_store *s, km_key key);

/* Every key held now (RAM, queued, on disk; a key may appear twice), for
 * rebuilding a catalog; *keys malloc'd. *changes (may be NULL) gets the
 * change counter the list corresponds to. Returns -1 when out of memory. */
int km_store_keys(km_store *s, km_key **keys, size_t *n, uint64_t *changes);
/* A counter bumped by every put, remove and eviction: a catalog built at
 * one value is stale once it moved. */
uint64_t km_store_changes(km_store *s);

/* Wait until every queued disk write has completed. */
void km_store_flush(km_store *s);

km_store_stats km_store_get_stats(km_store *s);

#endif
