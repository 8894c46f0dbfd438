/* fuzz_blob.c -- libFuzzer target for the state blob parser, payload decoder,
 * compressor, request check and MAC (authenticate, verify, drop hint). Built
 * and run by tests/fuzz/run.sh. Every input must either be rejected with a
 * message or parse into fields that lie inside the input; a parsed payload
 * must decode (within 1 MiB) or be rejected with a message, and an
 * uncompressed one must survive compression byte for byte. km_blob_verify
 * must answer every input (a message when it refuses), and only blobs that
 * parse may verify; a parsed blob, once authenticated, verifies with its key
 * only, and not after any one byte changed. With KVMESH_FUZZ_SEED_OUT=<prefix>,
 * writes seed blobs (plain, compressed, shuffled and compressed, MAC'd) to
 * <prefix>-*.kvb first. */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"

#define MAX_RAW ((size_t)1 << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static km_blob_key key, other_key; /* what the seeds are MAC'd with, and a wrong one */

/* A seed: n tokens, a KV-like payload (small 16-bit values), optionally
 * compressed, with its checksum field zeroed: the target seals such inputs,
 * so mutations of the frame get past the checksum. */
static void write_seed(const char *prefix, const char *name, int type, size_t plen, bool compress, bool hint, bool mac) {
    static const uint8_t fp[KM_FINGERPRINT_LEN] = {0};
    int32_t toks[8];
    for (int i = 0; i < 8; i++) toks[i] = i;
    size_t len = km_blob_size(8, plen);
    uint8_t *b = malloc(len), *z = NULL;
    uint8_t *p = km_blob_begin(b, fp, type, type, toks, 8, plen);
    uint32_t x = 12345;
    for (size_t i = 0; i < plen; i += 2) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)(x >> 16);
        if (i + 1 < plen) p[i + 1] = (uint8_t)(0x38 + ((x >> 24) & 3));
    }
    if (hint) km_blob_set_next(b, 8, 42);
    km_blob_seal(b, len);
    size_t zlen;
    if (compress && km_blob_compress(b, len, 1, &z, &zlen, NULL) == 0) {
        free(b);
        b = z;
        len = zlen;
    }
    if (mac) km_blob_authenticate(b, len, &key, NULL); /* the MAC covers the checksum: keep it */
    else km_put_u64(b + 56, 0);
    char path[4096];
    snprintf(path, sizeof path, "%s-%s.kvb", prefix, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "fuzz_blob: cannot write %s\n", path);
        exit(1);
    }
    free(b);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    static const char secret[] = "fuzz secret of enough length";
    if (km_blob_key_derive(&key, (const uint8_t *)secret, sizeof secret - 1, "store") != 0 ||
        km_blob_key_derive(&other_key, (const uint8_t *)secret, sizeof secret - 1, "mesh") != 0)
        abort();
    const char *seed = getenv("KVMESH_FUZZ_SEED_OUT");
    if (seed) {
        write_seed(seed, "plain", 1, 600, false, false, false);
        write_seed(seed, "zstd-shuffle", 1, 2000, true, true, false);
        write_seed(seed, "zstd-odd", 1, 1999, true, false, false);
        write_seed(seed, "zstd-q8", 8, 2000, true, false, false);
        write_seed(seed, "mac-plain", 1, 600, false, true, true);
        write_seed(seed, "mac-zstd", 1, 2000, true, true, true);
    }
    return 0;
}

/* The payload of a parsed blob: decoded within MAX_RAW, or rejected with a
 * message. An uncompressed one is then compressed and must come back the same. */
static void check_payload(const uint8_t *blob, size_t size, const km_blob_info *b) {
    uint8_t *owned;
    const uint8_t *raw;
    size_t raw_len;
    km_error err;
    err.msg[0] = 0;
    if (km_blob_payload_decode(b, MAX_RAW, &owned, &raw, &raw_len, &err) != 0) {
        if (err.msg[0] == 0 || owned || raw || raw_len) abort();
        return;
    }
    if (raw_len != b->raw_len) abort();
    if (!(b->flags & KM_BLOB_F_ZSTD) && (owned || raw != b->payload)) abort();
    if (raw_len) {
        volatile uint8_t sink = raw[0] ^ raw[raw_len - 1]; /* the whole buffer is there (ASan) */
        (void)sink;
    }
    if (!(b->flags & KM_BLOB_F_ZSTD)) {
        uint8_t *z;
        size_t zlen;
        int rc = km_blob_compress(blob, size, 1, &z, &zlen, &err);
        if (rc < 0) abort(); /* it parsed: only out of memory could fail */
        if (rc == 0) {
            km_blob_info c;
            uint8_t *o2;
            const uint8_t *r2;
            size_t n2;
            if (zlen >= size || km_blob_parse(z, zlen, SIZE_MAX, &c, &err) != 0) abort();
            if (!(c.flags & KM_BLOB_F_ZSTD) || c.has_next != b->has_next || c.next_token != b->next_token) abort();
            if (km_blob_payload_decode(&c, raw_len, &o2, &r2, &n2, &err) != 0) abort();
            if (n2 != raw_len || memcmp(r2, raw, raw_len) != 0) abort();
            free(o2);
            free(z);
        }
    }
    free(owned);
}

/* A parsed blob, authenticated: verifies with its key only, parses with the
 * MAC flag, and refuses any one changed byte; dropping the hint drops the MAC. */
static void check_mac(const uint8_t *blob, size_t size, const km_blob_info *b) {
    uint8_t *m = malloc(size);
    memcpy(m, blob, size);
    km_error err;
    km_blob_info info;
    if (km_blob_authenticate(m, size, &key, &err) != 0) abort(); /* it parsed */
    if (km_blob_verify(m, size, &key, &err) != 0 || km_blob_verify(m, size, &other_key, &err) == 0) abort();
    if (km_blob_parse(m, size, MAX_RAW, &info, &err) != 0 || !info.has_mac || info.flags != (b->flags | KM_BLOB_F_MAC))
        abort();
    size_t at = (size_t)km_get_u32(blob + 64) % size; /* some byte the input chooses */
    m[at] ^= 0x01;
    if (km_blob_verify(m, size, &key, &err) == 0) abort();
    m[at] ^= 0x01;
    km_blob_drop_hint(m, size);
    if (km_blob_parse(m, size, MAX_RAW, &info, &err) != 0 || info.has_mac || info.has_next) abort();
    free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The input as received: verification answers everything, and what
     * verifies was made by km_blob_authenticate, so it parses. */
    km_error verr;
    verr.msg[0] = 0;
    int verified = km_blob_verify(data, size, &key, &verr);
    if (verified != 0 && strstr(verr.msg, "unauthenticated") == NULL) abort();
    if (verified == 0) {
        km_blob_info vb;
        if (km_blob_parse(data, size, SIZE_MAX, &vb, &verr) != 0 || !vb.has_mac) abort();
    }
    /* Half of the inputs (odd sizes), and those with a zero checksum field
     * (the seeds), get a valid checksum, so the fuzzer explores the fields and
     * frames behind it instead of stopping at the checksum every time. */
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    if (size >= KM_BLOB_HEADER_SIZE && ((size & 1) || km_get_u64(copy + 56) == 0)) km_blob_seal(copy, size);
    km_blob_info b;
    km_error err;
    err.msg[0] = 0;
    if (km_blob_parse(copy, size, MAX_RAW, &b, &err) == 0) {
        if (b.payload < copy || b.payload + b.payload_len != copy + size) abort();
        if (km_blob_size(b.n_tokens, b.payload_len) != size) abort();
        if (!(b.flags & KM_BLOB_F_ZSTD) && b.raw_len != b.payload_len) abort();
        if (b.raw_len > MAX_RAW) abort();
        int32_t req[64];
        for (int i = 0; i < 64; i++) req[i] = i;
        uint8_t fp[KM_FINGERPRINT_LEN] = {0};
        (void)km_blob_check_request(&b, fp, 1, 1, req, 64, &err);
        for (uint32_t i = 0; i < b.n_tokens; i++) (void)km_blob_token(&b, i);
        check_payload(copy, size, &b);
        check_mac(copy, size, &b);
    } else if (err.msg[0] == 0) {
        abort(); /* every rejection says why */
    }
    free(copy);
    return 0;
}
