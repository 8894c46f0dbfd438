/* fuzz_catalog.c -- libFuzzer target for km_catalog_decode. Built and run by
 * tests/fuzz/run.sh.
 *
 * Properties checked on every input: a rejection always says why, and an
 * accepted catalog re-encodes to exactly the input bytes (so nothing in the
 * input was ignored or misread) and answers checks without faults.
 *
 * Random bytes almost never describe a filter whose bit count is the one
 * libbloom computes for its capacity and error rate, so a third of the inputs
 * are used differently: they choose parameters and keys, a valid catalog is
 * built and encoded, and the rest of the input edits that encoding (with the
 * checksum recomputed) before it is decoded. That reaches the code behind the
 * size checks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "catalog.h"

#define HDR 44
#define O_CHECKSUM 40
#define MAX_LEN (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void reseal(uint8_t *buf, size_t len) {
    XXH32_state_t *st = XXH32_createState();
    if (!st) abort();
    XXH32_reset(st, 0);
    XXH32_update(st, buf, O_CHECKSUM);
    XXH32_update(st, buf + HDR, len - HDR);
    km_put_u32(buf + O_CHECKSUM, XXH32_digest(st));
    XXH32_freeState(st);
}

/* Decode and check the properties above. */
static void decode_and_check(const uint8_t *buf, size_t len) {
    km_error err;
    err.msg[0] = 0;
    km_catalog *c = km_catalog_decode(buf, len, MAX_LEN, &err);
    if (!c) {
        if (err.msg[0] == 0) abort(); /* every rejection says why */
        return;
    }
    uint8_t *out = NULL;
    size_t olen = 0;
    if (km_catalog_encode(c, &out, &olen, &err) != 0) abort();
    if (olen != len || memcmp(out, buf, len) != 0) abort();
    if (km_catalog_bytes(c) + HDR != len) abort();
    km_key k;
    memset(&k, 0, sizeof k);
    for (int i = 0; i < 16 && (size_t)i < len; i++) {
        k.b[i % KM_KEY_LEN] ^= buf[len - 1 - (size_t)i];
        (void)km_catalog_check(c, k);
    }
    free(out);
    km_catalog_free(c);
}

/* Input: [mode][capacity step][error index][n keys][keys: 16 bytes each ...]
 * then edits of (offset u16, value) triples applied to the encoding. */
static void structured(const uint8_t *data, size_t size) {
    static const double errors[] = {0.5, 0.3, 0.1, 0.05, 0.01, 0.001, 1e-4, 1e-6};
    if (size < 4) return;
    km_catalog_params p = {.capacity = 1000u + (uint32_t)data[1] * 37u, .error = errors[data[2] & 7]};
    size_t nkeys = data[3];
    data += 4;
    size -= 4;
    if (nkeys * KM_KEY_LEN > size) nkeys = size / KM_KEY_LEN;
    km_error err;
    km_catalog *c = km_catalog_new(&p, &err);
    if (!c) abort(); /* these parameters are all valid */
    for (size_t i = 0; i < nkeys; i++) {
        km_key k;
        memcpy(k.b, data + i * KM_KEY_LEN, KM_KEY_LEN);
        km_catalog_add(c, k);
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (km_catalog_encode(c, &buf, &len, &err) != 0) abort();
    /* The unedited encoding must decode to the same answers. */
    km_catalog *d = km_catalog_decode(buf, len, MAX_LEN, &err);
    if (!d) abort();
    for (size_t i = 0; i < nkeys; i++) {
        km_key k;
        memcpy(k.b, data + i * KM_KEY_LEN, KM_KEY_LEN);
        if (!km_catalog_check(d, k)) abort(); /* a false negative */
    }
    if (km_catalog_version(d) != km_catalog_version(c) || km_catalog_count(d) != km_catalog_count(c)) abort();
    km_catalog_free(d);
    km_catalog_free(c);

    /* Edits: each triple overwrites one byte (offsets mostly in the header),
     * the length may shrink or grow by the last byte's low bits. */
    const uint8_t *e = data + nkeys * KM_KEY_LEN;
    size_t elen = size - nkeys * KM_KEY_LEN;
    size_t newlen = len;
    if (elen % 3 == 1) newlen = len + (e[elen - 1] & 7) - 3;
    uint8_t *t = calloc(1, newlen + 1);
    if (!t) abort();
    memcpy(t, buf, len < newlen ? len : newlen);
    for (size_t i = 0; i + 3 <= elen; i += 3) {
        size_t off = (size_t)(e[i] | (e[i + 1] << 8));
        if (off >= 0x8000) off = off - 0x8000; /* anywhere */
        else off %= HDR;                       /* in the header */
        if (off < newlen) t[off] = e[i + 2];
    }
    if (newlen >= HDR && !(elen % 3 == 2 && (e[elen - 1] & 1))) reseal(t, newlen);
    decode_and_check(t, newlen);
    free(t);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 0 && data[0] % 3 == 2) {
        structured(data, size);
        return 0;
    }
    /* Raw bytes; half of them get a valid checksum so that the fuzzer gets
     * past it to the fields behind it. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) abort();
    memcpy(copy, data, size);
    if (size >= HDR && (size & 1)) reseal(copy, size);
    decode_and_check(copy, size);
    free(copy);
    return 0;
}
