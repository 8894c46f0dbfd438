/* catalog.c -- see catalog.h.
 *
 * The filter is libbloom's (Debian 12: libbloom 1.6). Two things libbloom does
 * not give us are done here:
 *
 *  - Serialization. libbloom 1.6 has no save/load, so we read and write the bit
 *    array through struct bloom's `bf` field, which bloom.h marks private. In
 *    1.6 it is a plain array of `bytes` bytes, bit x of the filter being bit
 *    (x & 7) of byte x >> 3. To make that safe the decoder never trusts the
 *    sizes it reads: it rebuilds the filter with bloom_init(capacity, error) and
 *    only copies the bytes in if libbloom arrives at exactly the bit, byte and
 *    hash counts of the header.
 *
 *  - Interoperability. A shipped catalog is only useful if the receiver's
 *    libbloom puts a key's bits where the sender's did; equal sizes are not
 *    enough (another libbloom release could hash differently, and murmurhash2
 *    as libbloom uses it reads native-endian words, so a big-endian host would
 *    too). Before the first catalog is made or decoded we therefore check the
 *    library against a known answer (library_check below) and refuse to work
 *    with one that disagrees, rather than ship filters that give false
 *    negatives elsewhere.
 *
 * Counting policy: km_catalog_count() counts the adds that changed the filter
 * (bloom_add returned 0), exactly the adds that bump the version. Adding a key
 * that is already present is therefore not counted, and neither, at about the
 * false-positive rate, is a new key whose bits all happened to be set already.
 * That makes the count a measure of how full the filter is -- which is what
 * its false-positive rate depends on, and what a caller comparing it with the
 * capacity wants to know -- and it can never exceed the bit count, which the
 * decoder checks.
 *
 * Header layout. catalog.h lists the fields as magic(4) format(2) hsize(2)
 * capacity(4) error(8) hashes(4) bits(4) version(8) count(4) checksum(4):
 * 44 bytes, not the 40 its comment says. The header-size field holds 44, the
 * offset of the filter bytes, as in the blob format where the header size
 * includes the checksum. */
#include "catalog.h"

#include <bloom.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define CAT_MAGIC "KVMC"
#define CAT_FORMAT 1
#define CAT_HEADER_SIZE 44
#define OFF_FORMAT 4
#define OFF_HSIZE 6
#define OFF_CAPACITY 8
#define OFF_ERROR 12
#define OFF_HASHES 20
#define OFF_BITS 24
#define OFF_VERSION 28
#define OFF_COUNT 36
#define OFF_CHECKSUM 40

#define CAT_MIN_CAPACITY 1000u        /* libbloom refuses fewer entries */
#define CAT_MAX_CAPACITY (1u << 28)   /* bounds what a forged header can ask for */
#define CAT_MAX_ERROR 0.5             /* above this a Bloom filter is useless */
#define LN2_SQUARED 0.480453013918201 /* the constant libbloom sizes with */

struct km_catalog {
    struct bloom bloom;
    km_catalog_params params;
    uint64_t version;
    uint32_t count;
};

km_catalog_params km_catalog_default_params(void) {
    km_catalog_params p = {.capacity = 100000, .error = 0.01};
    return p;
}

/* ---------------------------------------------------------- library check */

/* The answer libbloom 1.6 gives on a little-endian host: a 1000-key, 1 %
 * filter holding the four 16-byte keys {0..15}, {16..31}, {32..47}, {48..63}
 * has 9585 bits in 1199 bytes, 7 hashes, and bytes whose XXH32 is this. */
#define PROBE_BITS 9585
#define PROBE_BYTES 1199
#define PROBE_HASHES 7
#define PROBE_SUM 0x0f0a63c7u

static const char *library_probe(void) {
    struct bloom b;
    if (bloom_init(&b, 1000, 0.01) != 0) return "bloom_init(1000, 0.01) failed";
    for (int i = 0; i < 4; i++) {
        uint8_t k[KM_KEY_LEN];
        for (int j = 0; j < KM_KEY_LEN; j++) k[j] = (uint8_t)(i * KM_KEY_LEN + j);
        bloom_add(&b, k, KM_KEY_LEN);
    }
    const char *why = NULL;
    if (b.bits != PROBE_BITS || b.bytes != PROBE_BYTES || b.hashes != PROBE_HASHES)
        why = "it sizes filters differently";
    else if (XXH32(b.bf, (size_t)b.bytes, 0) != PROBE_SUM)
        why = "it places bits differently";
    bloom_free(&b);
    return why;
}

/* 0 if this process's libbloom lays filters out like libbloom 1.6 on a
 * little-endian host (the layout the wire format carries). Computed once; two
 * threads racing here both compute the same answer, which is harmless. */
static int library_check(km_error *err) {
    static _Atomic int state; /* 0 unknown, 1 good, -1 bad */
    static const char *_Atomic why;
    int s = atomic_load(&state);
    if (s == 0) {
        const char *w = library_probe();
        atomic_store(&why, w);
        s = w ? -1 : 1;
        atomic_store(&state, s);
    }
    if (s > 0) return 0;
    return km_error_set(err, "libbloom %s is not compatible with the catalog format (%s); catalogs made with it "
                        "would give false negatives on other hosts",
                        bloom_version(), atomic_load(&why));
}

/* ---------------------------------------------------------- parameters */

/* Checks the parameters and, before libbloom computes anything, that the
 * filter fits libbloom's int-sized bit count: bloom_init converts the double
 * entries * bits-per-entry to int, which for too large a product is
 * undefined. Returns the predicted bit count (libbloom's formula, in double). */
static int check_params(uint32_t capacity, double error, double *bits, km_error *err) {
    if (capacity < CAT_MIN_CAPACITY)
        return km_error_set(err, "catalog capacity %u is below libbloom's minimum of %u keys", capacity, CAT_MIN_CAPACITY);
    if (capacity > CAT_MAX_CAPACITY)
        return km_error_set(err, "catalog capacity %u exceeds the limit of %u keys", capacity, CAT_MAX_CAPACITY);
    /* Written so that NaN fails too. */
    if (!(error > 0.0 && error <= CAT_MAX_ERROR))
        return km_error_set(err, "catalog error rate %g is outside (0, %g]", error, CAT_MAX_ERROR);
    double b = (double)capacity * (-log(error) / LN2_SQUARED);
    if (!(b < (double)INT_MAX))
        return km_error_set(err, "catalog of %u keys at error rate %g would need %.0f bits, more than libbloom supports (%d)",
                            capacity, error, b, INT_MAX);
    *bits = b;
    return 0;
}

static km_catalog *catalog_alloc(uint32_t capacity, double error, km_error *err) {
    km_catalog *c = calloc(1, sizeof *c);
    if (!c) {
        km_error_set(err, "out of memory for a catalog");
        return NULL;
    }
    if (bloom_init(&c->bloom, (int)capacity, error) != 0) {
        km_error_set(err, "out of memory for a catalog filter of %u keys at error rate %g", capacity, error);
        free(c);
        return NULL;
    }
    c->params.capacity = capacity;
    c->params.error = error;
    c->version = 1;
    return c;
}

/* NULL p means the defaults. */
km_catalog *km_catalog_new(const km_catalog_params *p, km_error *err) {
    km_catalog_params d = km_catalog_default_params();
    if (!p) p = &d;
    double bits = 0;
    if (check_params(p->capacity, p->error, &bits, err) != 0) return NULL;
    if (library_check(err) != 0) return NULL;
    return catalog_alloc(p->capacity, p->error, err);
}

void km_catalog_free(km_catalog *c) {
    if (!c) return;
    bloom_free(&c->bloom);
    free(c);
}

/* ---------------------------------------------------------- operations */

/* Versions only move forward; a catalog set to UINT64_MAX stays there rather
 * than wrapping to a value peers would take for an old catalog. */
static void bump(km_catalog *c) {
    if (c->version != UINT64_MAX) c->version++;
}

void km_catalog_add(km_catalog *c, km_key k) {
    if (bloom_add(&c->bloom, k.b, KM_KEY_LEN) == 0) {
        bump(c);
        c->count++; /* cannot overflow: each counted add set a bit, bits <= INT_MAX */
    }
}

bool km_catalog_check(const km_catalog *c, km_key k) {
    /* bloom_check only reads the filter; its prototype just lacks the const. */
    return bloom_check((struct bloom *)&c->bloom, k.b, KM_KEY_LEN) == 1;
}

void km_catalog_clear(km_catalog *c) {
    bloom_reset(&c->bloom);
    c->count = 0;
    bump(c);
}

uint64_t km_catalog_version(const km_catalog *c) { return c->version; }
void km_catalog_set_version(km_catalog *c, uint64_t v) { c->version = v; }
uint32_t km_catalog_count(const km_catalog *c) { return c->count; }
size_t km_catalog_bytes(const km_catalog *c) { return (size_t)c->bloom.bytes; }

/* ---------------------------------------------------------- wire format */

/* XXH32 of the header before the checksum field and of the filter bytes. */
static int catalog_checksum(const uint8_t *buf, size_t len, uint32_t *out, km_error *err) {
    XXH32_state_t *st = XXH32_createState();
    if (!st) return km_error_set(err, "out of memory for the catalog checksum");
    XXH32_reset(st, 0);
    XXH32_update(st, buf, OFF_CHECKSUM);
    XXH32_update(st, buf + CAT_HEADER_SIZE, len - CAT_HEADER_SIZE);
    *out = XXH32_digest(st);
    XXH32_freeState(st);
    return 0;
}

int km_catalog_encode(const km_catalog *c, uint8_t **out, size_t *len, km_error *err) {
    size_t nbytes = (size_t)c->bloom.bytes;
    size_t total = CAT_HEADER_SIZE + nbytes;
    uint8_t *buf = malloc(total);
    if (!buf) return km_error_set(err, "out of memory for a %zu-byte catalog", total);
    uint64_t ebits;
    memcpy(&ebits, &c->params.error, sizeof ebits); /* IEEE-754 binary64, sent little-endian */
    memcpy(buf, CAT_MAGIC, 4);
    km_put_u16(buf + OFF_FORMAT, CAT_FORMAT);
    km_put_u16(buf + OFF_HSIZE, CAT_HEADER_SIZE);
    km_put_u32(buf + OFF_CAPACITY, c->params.capacity);
    km_put_u64(buf + OFF_ERROR, ebits);
    km_put_u32(buf + OFF_HASHES, (uint32_t)c->bloom.hashes);
    km_put_u32(buf + OFF_BITS, (uint32_t)c->bloom.bits);
    km_put_u64(buf + OFF_VERSION, c->version);
    km_put_u32(buf + OFF_COUNT, c->count);
    memcpy(buf + CAT_HEADER_SIZE, c->bloom.bf, nbytes); /* libbloom 1.6's private bit array, see the top */
    uint32_t sum = 0;
    if (catalog_checksum(buf, total, &sum, err) != 0) {
        free(buf);
        return -1;
    }
    km_put_u32(buf + OFF_CHECKSUM, sum);
    *out = buf;
    *len = total;
    return 0;
}

km_catalog *km_catalog_decode(const uint8_t *buf, size_t len, size_t max_len, km_error *err) {
    if (len < CAT_HEADER_SIZE) {
        km_error_set(err, "catalog truncated: %zu bytes, header needs %d", len, CAT_HEADER_SIZE);
        return NULL;
    }
    if (memcmp(buf, CAT_MAGIC, 4) != 0) {
        km_error_set(err, "not a kvmesh catalog (bad magic)");
        return NULL;
    }
    uint16_t format = km_get_u16(buf + OFF_FORMAT);
    if (format != CAT_FORMAT) {
        km_error_set(err, "catalog format version %u, this kvmesh reads version %d", format, CAT_FORMAT);
        return NULL;
    }
    uint16_t hsize = km_get_u16(buf + OFF_HSIZE);
    if (hsize != CAT_HEADER_SIZE) {
        km_error_set(err, "catalog header size %u, expected %d", hsize, CAT_HEADER_SIZE);
        return NULL;
    }
    if (len > max_len) {
        km_error_set(err, "catalog of %zu bytes exceeds the limit of %zu", len, max_len);
        return NULL;
    }

    uint32_t capacity = km_get_u32(buf + OFF_CAPACITY);
    uint64_t ebits = km_get_u64(buf + OFF_ERROR);
    double error;
    memcpy(&error, &ebits, sizeof error);
    uint32_t hashes = km_get_u32(buf + OFF_HASHES);
    uint32_t bits = km_get_u32(buf + OFF_BITS);
    uint64_t version = km_get_u64(buf + OFF_VERSION);
    uint32_t count = km_get_u32(buf + OFF_COUNT);

    double predicted = 0;
    if (check_params(capacity, error, &predicted, err) != 0) return NULL;
    size_t nbytes = ((size_t)bits + 7) / 8;
    if (len - CAT_HEADER_SIZE != nbytes) {
        km_error_set(err, "catalog is %zu bytes but its header describes %zu (%u filter bits; truncated or padded)", len,
                     CAT_HEADER_SIZE + nbytes, bits);
        return NULL;
    }
    if (count > bits) {
        km_error_set(err, "catalog claims %u keys changed a filter of only %u bits", count, bits);
        return NULL;
    }
    /* libbloom never sets the bits past `bits` in the last byte; requiring
     * them clear keeps the encoding canonical (decode then encode gives back
     * the same bytes). */
    if (bits % 8 != 0 && (buf[len - 1] >> (bits % 8)) != 0) {
        km_error_set(err, "catalog has bits set past the end of its %u-bit filter", bits);
        return NULL;
    }
    uint32_t sum = 0;
    if (catalog_checksum(buf, len, &sum, err) != 0) return NULL;
    if (sum != km_get_u32(buf + OFF_CHECKSUM)) {
        km_error_set(err, "catalog checksum mismatch (corrupted in storage or transit)");
        return NULL;
    }
    /* A rough check first, so that a forged header cannot make bloom_init
     * allocate much more than the input holds (bits <= 8 * max_len here). */
    if (fabs(predicted - (double)bits) > 8.0) {
        km_error_set(err, "catalog header says %u bits for %u keys at error rate %g, libbloom would use about %.0f "
                     "(forged, or from another libbloom)",
                     bits, capacity, error, predicted);
        return NULL;
    }
    if (library_check(err) != 0) return NULL;
    km_catalog *c = catalog_alloc(capacity, error, err);
    if (!c) return NULL;
    /* The exact check: only if this libbloom builds the very same filter do
     * the header's bytes mean anything to it. */
    if ((uint32_t)c->bloom.bits != bits || (size_t)c->bloom.bytes != nbytes || (uint32_t)c->bloom.hashes != hashes) {
        km_error_set(err, "catalog header says %u bits / %zu bytes / %u hashes for %u keys at error rate %g, libbloom %s "
                     "makes %d / %d / %d (forged, or from another libbloom)",
                     bits, nbytes, hashes, capacity, error, bloom_version(), c->bloom.bits, c->bloom.bytes, c->bloom.hashes);
        km_catalog_free(c);
        return NULL;
    }
    memcpy(c->bloom.bf, buf + CAT_HEADER_SIZE, nbytes);
    c->version = version;
    c->count = count;
    return c;
}
