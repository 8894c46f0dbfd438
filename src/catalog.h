/* catalog.h -- a Bloom-filter summary of the keys a holder has (libbloom).
 *
 * A catalog answers "might holder H have the state for key k?" with no false
 * negatives for keys added, and false positives at about the configured rate
 * while it holds at most `capacity` keys. It is how a device avoids asking the
 * network about states nobody has (the paper's catalog), and what peers
 * gossip about each other (later). Catalogs are rebuilt from the exact key set
 * rather than deleted from (Bloom filters cannot delete).
 *
 * Wire format (little-endian), for shipping and storing a catalog:
 *   magic "KVMC", u16 format version, u16 header size (44),
 *   u32 capacity, f64 error rate, u32 hash count, u32 bit count,
 *   u64 version (bumped on every change), u32 key count,
 *   u32 checksum (XXH32 of the header up to here and the bits),
 *   then the filter's bytes (bit count / 8 rounded up).
 * km_catalog_decode validates every field before using it. */
#ifndef KVMESH_CATALOG_H
#define KVMESH_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefix.h"
#include "util.h"

typedef struct km_catalog km_catalog;

typedef struct km_catalog_params {
    uint32_t capacity; /* keys it is sized for (default 100000; libbloom needs >= 1000) */
    double error;      /* false-positive rate at capacity (default 0.01) */
} km_catalog_params;

km_catalog_params km_catalog_default_params(void);

km_catalog *km_catalog_new(const km_catalog_params *p, km_error *err);
void km_catalog_free(km_catalog *c);

/* Add a key (version bumps if the filter changed). */
void km_catalog_add(km_catalog *c, km_key k);
/* Maybe present (true) or certainly absent (false). */
bool km_catalog_check(const km_catalog *c, km_key k);
/* Forget everything (for a rebuild); the version still increases. */
void km_catalog_clear(km_catalog *c);

uint64_t km_catalog_version(const km_catalog *c);
void km_catalog_set_version(km_catalog *c, uint64_t v);
uint32_t km_catalog_count(const km_catalog *c); /* keys added since the last clear */
size_t km_catalog_bytes(const km_catalog *c);   /* size of the filter bits */

/* Serialize (*out malloc'd). */
int km_catalog_encode(const km_catalog *c, uint8_t **out, size_t *len, km_error *err);
/* Parse and validate a serialized catalog (untrusted bytes); max_len bounds it. */
km_catalog *km_catalog_decode(const uint8_t *buf, size_t len, size_t max_len, km_error *err);

#endif
