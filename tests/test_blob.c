/* test_blob.c -- state blob encoding and validation: every corruption is
 * caught; compression round-trips exactly, and a forged or broken frame is
 * rejected before it can cost more memory than the caller allows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

#include "blob.h"
#include "testutil.h"

static const char SECRET[] = "correct horse battery staple";

#define TYPE_F16 1 /* ggml type ids */
#define TYPE_Q8_0 8

static const uint8_t FP[KM_FINGERPRINT_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const int32_t TOKS[6] = {2, 100, 200, 300, 400, 500};

/* A sealed blob of the first n tokens of TOKS with KV types type/type and the
 * given payload (NULL: a recognisable pattern). */
static uint8_t *make_blob_of(int n, int type, const uint8_t *payload, size_t plen, size_t *len) {
    *len = km_blob_size((uint32_t)n, plen);
    uint8_t *b = malloc(*len);
    uint8_t *p = km_blob_begin(b, FP, type, type, TOKS, (uint32_t)n, plen);
    for (size_t i = 0; i < plen; i++) p[i] = payload ? payload[i] : (uint8_t)(i * 7 + 3);
    km_blob_seal(b, *len);
    return b;
}

static uint8_t *make_blob(int n, size_t plen, size_t *len) { return make_blob_of(n, TYPE_F16, NULL, plen, len); }

/* Deterministic test data: xorshift64, Box-Muller, f16 by hand. */
static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double gaussian(void) {
    double u1 = ((double)(next_u64() >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(next_u64() >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

/* IEEE half from float: round half up, tiny values to zero (none are here). */
static uint16_t to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    int exp = (int)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (exp <= 0) return sign;
    if (exp >= 31) return sign | 0x7c00;
    uint16_t h = (uint16_t)(sign | (exp << 10) | (mant >> 13));
    if (mant & 0x1000) h++; /* a carry into the exponent is still right */
    return h;
}

/* A KV-like payload: n f16 values of a seeded N(0, 1.5^2), little-endian. */
static uint8_t *f16_payload(size_t n, uint64_t seed) {
    rng = seed;
    uint8_t *p = malloc(2 * n);
    for (size_t i = 0; i < n; i++) km_put_u16(p + 2 * i, to_f16((float)(1.5 * gaussian())));
    return p;
}

static void expect_parse_error(const uint8_t *b, size_t len, size_t max, const char *needle) {
    km_blob_info info;
    km_error err = {{0}};
    assert_int_equal(km_blob_parse(b, len, max, &info, &err), -1);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not mention '%s'", err.msg, needle);
}

static void expect_decode_error(const uint8_t *b, size_t len, size_t max_raw, const char *needle) {
    km_blob_info info;
    km_error err = {{0}};
    assert_int_equal(km_blob_parse(b, len, SIZE_MAX, &info, &err), 0);
    uint8_t *owned = (uint8_t *)"x";
    const uint8_t *raw = (const uint8_t *)"x";
    size_t raw_len = 7;
    assert_int_equal(km_blob_payload_decode(&info, max_raw, &owned, &raw, &raw_len, &err), -1);
    assert_null(owned);
    assert_null(raw);
    assert_int_equal(raw_len, 0);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not mention '%s'", err.msg, needle);
}

static void test_roundtrip(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(4, 1000, &len);
    assert_int_equal(len, 112 + 16 + 1000);
    assert_memory_equal(b, "KVMB\x03\x00\x70\x00", 8); /* version 3, 112-byte header */
    km_blob_info info;
    km_error err;
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0);
    assert_int_equal(info.version, 3);
    assert_false(info.has_mac);
    assert_int_equal(info.n_tokens, 4);
    assert_int_equal(info.payload_len, 1000);
    assert_int_equal(info.raw_len, 1000);
    assert_int_equal(info.flags, 0);
    assert_false(info.has_next);
    assert_int_equal(info.next_from, 0);
    assert_int_equal(info.next_token, 0);
    assert_int_equal(info.type_k, 1);
    assert_memory_equal(info.fingerprint, FP, KM_FINGERPRINT_LEN);
    for (uint32_t i = 0; i < 4; i++) assert_int_equal(km_blob_token(&info, i), TOKS[i]);
    assert_int_equal(info.payload[999], (uint8_t)(999 * 7 + 3));
    assert_ptr_equal(info.payload, b + 112 + 16);
    /* the request may be longer than the blob */
    assert_int_equal(km_blob_check_request(&info, FP, 1, 1, TOKS, 6, &err), 0);
    /* an uncompressed payload is used in place */
    uint8_t *owned = (uint8_t *)"x";
    const uint8_t *raw;
    size_t raw_len;
    assert_int_equal(km_blob_payload_decode(&info, 1 << 20, &owned, &raw, &raw_len, &err), 0);
    assert_null(owned);
    assert_ptr_equal(raw, b + 112 + 16);
    assert_int_equal(raw_len, 1000);
    /* ... still within the caller's limit */
    expect_decode_error(b, len, 999, "over the limit of 999");
    free(b);
}

static void test_truncated(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(4, 1000, &len);
    expect_parse_error(b, len - 1, 1 << 20, "truncated or padded");
    expect_parse_error(b, 10, 1 << 20, "truncated");
    expect_parse_error(b, 5, 1 << 20, "truncated");
    expect_parse_error(b, 0, 1 << 20, "truncated");
    expect_parse_error(b, 111, 1 << 20, "header needs 112");
    expect_parse_error(b, 112 + 16, 1 << 20, "truncated or padded");
    expect_parse_error(b, 112 + 8, 1 << 20, "truncated or padded"); /* not even the tokens */
    free(b);
}

/* Flip every bit of b in turn: parse must fail every time. */
static void check_every_bit_flip(uint8_t *b, size_t len) {
    km_blob_info info;
    size_t caught = 0, total = 0;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            b[i] ^= (uint8_t)(1 << bit);
            total++;
            if (km_blob_parse(b, len, 1 << 20, &info, NULL) != 0) caught++;
            b[i] ^= (uint8_t)(1 << bit);
        }
    }
    assert_int_equal(caught, total);
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, NULL), 0);
}

static void test_every_bit_flip_is_caught(void **state) {
    (void)state;
    size_t len, zlen;
    uint8_t *b = make_blob(3, 200, &len);
    check_every_bit_flip(b, len);
    free(b);
    /* the same for a compressed blob with a next-token hint (the pattern
     * repeats every 256 bytes: compressible) */
    b = make_blob(3, 2000, &len);
    km_blob_set_next(b, 7, 8);
    km_blob_seal(b, len);
    uint8_t *z;
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, NULL), 0);
    assert_true(zlen < len);
    check_every_bit_flip(z, zlen);
    free(z);
    free(b);
}

static void test_bad_header_fields(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(2, 50, &len);
    uint8_t *c = malloc(len);
    memcpy(c, b, len);
    c[0] = 'X';
    expect_parse_error(c, len, 1 << 20, "bad magic");
    memcpy(c, b, len);
    km_put_u16(c + 4, 4);
    expect_parse_error(c, len, 1 << 20, "version 4, this kvmesh reads version 3");
    memcpy(c, b, len);
    km_put_u16(c + 6, 64);
    expect_parse_error(c, len, 1 << 20, "header size 64, expected 112");
    memcpy(c, b, len);
    km_put_u32(c + 32, 0);
    expect_parse_error(c, len, 1 << 20, "claims 0 tokens");
    memcpy(c, b, len);
    km_put_u32(c + 32, 0xffffffffu);
    expect_parse_error(c, len, 1 << 20, "tokens");
    memcpy(c, b, len);
    km_put_u64(c + 40, (uint64_t)1 << 62); /* forged payload length: no overflow, clear error */
    expect_parse_error(c, len, 1 << 20, "payload");
    /* with no limit, a length for which header + tokens + payload wraps
     * around to the actual length must not match: here 120 + (2^64 - 4) = 116
     * bytes, which do not even hold the two tokens */
    km_put_u64(c + 40, (uint64_t)0 - 4);
    expect_parse_error(c, 116, SIZE_MAX, "truncated or padded");
    free(c);
    free(b);
}

/* Each header field combination blob.h forbids, with a valid checksum so that
 * only the rule itself can catch it. */
static void test_flag_rules(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(2, 50, &len);
    uint8_t *c = malloc(len);
    struct {
        uint32_t flags;
        uint64_t raw_len;
        uint32_t next_from, next_token;
        uint64_t reserved;
        const char *needle;
    } bad[] = {
        {1u << 4, 50, 0, 0, 0, "unknown flags set (0x10)"},
        {1u << 31 | KM_BLOB_F_ZSTD, 50, 0, 0, 0, "unknown flags set (0x80000000)"},
        {KM_BLOB_F_SHUFFLE2, 50, 0, 0, 0, "byte shuffle without compression"},
        {KM_BLOB_F_SHUFFLE2 | KM_BLOB_F_NEXT, 50, 1, 2, 0, "byte shuffle without compression"},
        {0, 51, 0, 0, 0, "raw length of 51 but a 50-byte payload"},
        {KM_BLOB_F_NEXT, 49, 1, 2, 0, "raw length of 49"},
        {KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2, 101, 0, 0, 0, "odd raw length (101)"},
        {0, 50, 0, 0, 1, "reserved"},
        {KM_BLOB_F_ZSTD, 50, 0, 0, (uint64_t)1 << 63, "reserved"},
        {0, 50, 5, 0, 0, "next-token fields but not their flag"},
        {KM_BLOB_F_ZSTD, 50, 0, 9, 0, "next-token fields but not their flag"},
        {KM_BLOB_F_ZSTD, (uint64_t)1 << 21, 0, 0, 0, "2097152 bytes once decoded (limit 1048576)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(c, b, len);
        km_put_u32(c + 36, bad[i].flags);
        km_put_u64(c + 48, bad[i].raw_len);
        km_put_u32(c + 64, bad[i].next_from);
        km_put_u32(c + 68, bad[i].next_token);
        km_put_u64(c + 72, bad[i].reserved);
        km_blob_seal(c, len);
        expect_parse_error(c, len, 1 << 20, bad[i].needle);
    }
    /* and the allowed ones parse (the frame is only looked at by decode) */
    uint32_t good[] = {KM_BLOB_F_ZSTD, KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2, KM_BLOB_F_NEXT,
                       KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2 | KM_BLOB_F_NEXT};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        memcpy(c, b, len);
        km_put_u32(c + 36, good[i]);
        km_put_u64(c + 48, 1000); /* a compressed raw length may differ */
        if (!(good[i] & KM_BLOB_F_ZSTD)) km_put_u64(c + 48, 50);
        km_blob_seal(c, len);
        km_blob_info info;
        assert_int_equal(km_blob_parse(c, len, 1 << 20, &info, NULL), 0);
        assert_int_equal(info.flags, good[i]);
        assert_int_equal(info.has_next, (good[i] & KM_BLOB_F_NEXT) != 0);
    }
    free(c);
    free(b);
}

/* Version 1 and 2 blobs, as earlier formats wrote them (64/80-byte headers). */
static void test_v1_rejected(void **state) {
    (void)state;
    size_t len = 64 + 4 * 2 + 20;
    uint8_t *b = calloc(1, len);
    memcpy(b, "KVMB", 4);
    km_put_u16(b + 4, 1);
    km_put_u16(b + 6, 64);
    memcpy(b + 8, FP, KM_FINGERPRINT_LEN);
    km_put_u32(b + 24, 1);
    km_put_u32(b + 28, 1);
    km_put_u32(b + 32, 2);
    km_put_u64(b + 40, 20);
    km_put_u32(b + 64, 2);
    km_put_u32(b + 68, 100);
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, b, 56);
    XXH3_64bits_update(st, b + 64, len - 64);
    km_put_u64(b + 56, XXH3_64bits_digest(st));
    XXH3_freeState(st);
    expect_parse_error(b, len, 1 << 20, "blob format version 1, this kvmesh reads version 3 (written by an older kvmesh");
    free(b);
    /* a version 2 blob (80-byte header, no MAC), as a store or Redis may
     * still hold: rejected the same way (and a cache entry is recomputed) */
    size_t len2;
    uint8_t *v3 = make_blob(2, 20, &len2);
    uint8_t *v2 = malloc(len2 - 32);
    memcpy(v2, v3, 80);
    memcpy(v2 + 80, v3 + 112, len2 - 112);
    km_put_u16(v2 + 4, 2);
    km_put_u16(v2 + 6, 80);
    expect_parse_error(v2, len2 - 32, 1 << 20, "blob format version 2, this kvmesh reads version 3 (written by an older kvmesh");
    free(v2);
    free(v3);
}

static void test_set_next(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(3, 40, &len);
    km_blob_set_next(b, 4242, 262143);
    expect_parse_error(b, len, 1 << 20, "checksum mismatch"); /* not sealed yet */
    km_blob_seal(b, len);
    km_blob_info info;
    km_error err;
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0);
    assert_true(info.has_next);
    assert_int_equal(info.flags, KM_BLOB_F_NEXT);
    assert_int_equal(info.next_from, 4242);
    assert_int_equal(info.next_token, 262143);
    assert_int_equal(km_get_u32(b + 64), 4242);
    assert_int_equal(km_get_u32(b + 68), 262143);
    /* nothing else moved */
    assert_int_equal(info.payload_len, 40);
    assert_int_equal(info.raw_len, 40);
    assert_int_equal(km_blob_token(&info, 2), 200);
    assert_int_equal(info.payload[39], (uint8_t)(39 * 7 + 3));
    free(b);
}

/* Compress b, check the result's header against the original, decode it and
 * compare the payload byte for byte. Returns the compressed blob's length. */
static size_t check_compress_roundtrip(const uint8_t *b, size_t len, uint32_t want_flags) {
    km_blob_info in, out;
    km_error err;
    assert_int_equal(km_blob_parse(b, len, SIZE_MAX, &in, &err), 0);
    uint8_t *z;
    size_t zlen;
    if (km_blob_compress(b, len, 1, &z, &zlen, &err) != 0) fail_msg("compress: %s", err.msg);
    assert_true(zlen < len);
    assert_int_equal(km_blob_parse(z, zlen, SIZE_MAX, &out, &err), 0);
    assert_int_equal(out.flags, want_flags);
    assert_int_equal(out.raw_len, in.payload_len);
    assert_int_equal(out.payload_len, zlen - (112 + 4 * (size_t)in.n_tokens));
    assert_memory_equal(z + 8, b + 8, 28);                           /* fingerprint, types, tokens count */
    assert_memory_equal(z + 64, b + 64, 48 + 4 * (size_t)in.n_tokens); /* hint, reserved, MAC (none), tokens */
    uint8_t *owned;
    const uint8_t *raw;
    size_t raw_len;
    if (km_blob_payload_decode(&out, in.payload_len, &owned, &raw, &raw_len, &err) != 0) fail_msg("decode: %s", err.msg);
    assert_non_null(owned);
    assert_ptr_equal(raw, owned);
    assert_int_equal(raw_len, in.payload_len);
    assert_memory_equal(raw, in.payload, raw_len);
    free(owned);
    /* compressing again: nothing to do, *out untouched */
    uint8_t *again = (uint8_t *)"untouched";
    size_t again_len = 99;
    assert_int_equal(km_blob_compress(z, zlen, 1, &again, &again_len, &err), 1);
    assert_string_equal((const char *)again, "untouched");
    assert_int_equal(again_len, 99);
    free(z);
    return zlen;
}

static void test_compress_roundtrip(void **state) {
    (void)state;
    size_t len;
    /* f16 KV, even length: byte planes, then zstd */
    uint8_t *p = f16_payload(20000, 42);
    uint8_t *b = make_blob_of(5, TYPE_F16, p, 40000, &len);
    check_compress_roundtrip(b, len, KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2);
    free(b);
    /* an odd length cannot be shuffled in pairs */
    b = make_blob_of(5, TYPE_F16, p, 39999, &len);
    check_compress_roundtrip(b, len, KM_BLOB_F_ZSTD);
    free(b);
    /* q8_0 KV: zstd alone */
    b = make_blob_of(5, TYPE_Q8_0, p, 40000, &len);
    check_compress_roundtrip(b, len, KM_BLOB_F_ZSTD);
    free(b);
    /* the next-token hint survives */
    b = make_blob_of(5, TYPE_F16, p, 40000, &len);
    km_blob_set_next(b, 500, 77);
    km_blob_seal(b, len);
    check_compress_roundtrip(b, len, KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2 | KM_BLOB_F_NEXT);
    uint8_t *z;
    size_t zlen;
    km_blob_info info;
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, NULL), 0);
    assert_int_equal(km_blob_parse(z, zlen, SIZE_MAX, &info, NULL), 0);
    assert_true(info.has_next);
    assert_int_equal(info.next_from, 500);
    assert_int_equal(info.next_token, 77);
    free(z);
    free(b);
    free(p);
}

/* The reason for the format: an f16 KV-like payload gets much smaller, and the
 * byte planes are what make most of the difference. */
static void test_compress_f16_smaller(void **state) {
    (void)state;
    /* zstd keeps one literal table per 128 KiB block: the planes only get
     * tables of their own over several blocks, as in a real state (MBs) */
    const size_t n_values = 512 * 1024, plen = 2 * n_values;
    uint8_t *p = f16_payload(n_values, 7);
    size_t len;
    uint8_t *f16 = make_blob_of(6, TYPE_F16, p, plen, &len);
    uint8_t *q8 = make_blob_of(6, TYPE_Q8_0, p, plen, &len); /* same bytes, typed q8_0: no shuffle */
    size_t shuffled = check_compress_roundtrip(f16, len, KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2);
    size_t plain = check_compress_roundtrip(q8, len, KM_BLOB_F_ZSTD);
    print_message("f16 gaussian payload: %zu bytes raw, %zu zstd, %zu shuffle+zstd\n", plen, plain - 136, shuffled - 136);
    /* N(0, 1.5^2) in f16: the low byte is 8 bits of noise, the high byte
     * (sign, exponent, 2 mantissa bits) about 5.5: at best 13.5/16 = 84 %
     * after shuffling (zstd 1.5.4 level 1: 84.5 %) */
    assert_true(shuffled - 136 < plen * 86 / 100);
    assert_true(shuffled - 136 > plen * 80 / 100);
    /* interleaved, zstd finds much less (1.5.4: 91.9 %) */
    assert_true(plain - 136 > plen * 90 / 100);
    assert_true(plain - shuffled > plen * 6 / 100);
    free(q8);
    free(f16);
    free(p);
}

static void test_compress_not_worth_it(void **state) {
    (void)state;
    size_t len;
    /* random bytes do not compress: 1, *out untouched */
    uint8_t *p = malloc(4096);
    rng = 99;
    for (size_t i = 0; i < 4096; i++) p[i] = (uint8_t)next_u64();
    uint8_t *b = make_blob_of(2, TYPE_F16, p, 4096, &len);
    uint8_t *z = (uint8_t *)"untouched";
    size_t zlen = 5;
    km_error err = {{0}};
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, &err), 1);
    assert_string_equal((const char *)z, "untouched");
    assert_int_equal(zlen, 5);
    free(b);
    /* a payload of 1 or 0 bytes cannot shrink */
    b = make_blob_of(2, TYPE_F16, p, 1, &len);
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, &err), 1);
    free(b);
    b = make_blob_of(2, TYPE_F16, p, 0, &len);
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, &err), 1);
    /* not a valid blob: -1 with the parser's reason */
    b[40] ^= 1; /* its payload length */
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, &err), -1);
    assert_non_null(strstr(err.msg, "truncated or padded"));
    assert_int_equal(km_blob_compress((const uint8_t *)"hello", 5, 1, &z, &zlen, &err), -1);
    assert_non_null(strstr(err.msg, "truncated"));
    assert_string_equal((const char *)z, "untouched");
    free(b);
    free(p);
}

/* A sealed blob with the ZSTD flag (plus extra_flags) around an arbitrary
 * payload, claiming raw_len decoded bytes. */
static uint8_t *make_zblob(const uint8_t *frame, size_t flen, uint64_t raw_len, uint32_t extra_flags, size_t *len) {
    *len = km_blob_size(2, flen);
    uint8_t *b = malloc(*len);
    uint8_t *p = km_blob_begin(b, FP, TYPE_F16, TYPE_F16, TOKS, 2, flen);
    memcpy(p, frame, flen);
    km_put_u32(b + 36, KM_BLOB_F_ZSTD | extra_flags);
    km_put_u64(b + 48, raw_len);
    km_blob_seal(b, *len);
    return b;
}

/* A zstd frame of src, with or without its content size in the header. */
static uint8_t *frame_of(const uint8_t *src, size_t n, int with_size, size_t *flen) {
    size_t cap = ZSTD_compressBound(n);
    uint8_t *f = malloc(cap);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, with_size);
    *flen = ZSTD_compress2(cc, f, cap, src, n);
    ZSTD_freeCCtx(cc);
    assert_false(ZSTD_isError(*flen));
    return f;
}

static void test_decode_rejects_bad_frames(void **state) {
    (void)state;
    const size_t N = 10000;
    uint8_t *raw = f16_payload(N / 2, 3);
    size_t flen, nflen, len;
    uint8_t *framed = frame_of(raw, N, 1, &flen);    /* declares N */
    uint8_t *unsized = frame_of(raw, N, 0, &nflen);  /* declares nothing */
    const size_t MAX = 1 << 20;

    /* the good cases first: both frames decode (no shuffle flag here) */
    uint8_t *b = make_zblob(framed, flen, N, 0, &len);
    km_blob_info info;
    uint8_t *owned;
    const uint8_t *out;
    size_t out_len;
    assert_int_equal(km_blob_parse(b, len, MAX, &info, NULL), 0);
    assert_int_equal(km_blob_payload_decode(&info, MAX, &owned, &out, &out_len, NULL), 0);
    assert_int_equal(out_len, N);
    assert_memory_equal(out, raw, N);
    free(owned);
    free(b);
    b = make_zblob(unsized, nflen, N, 0, &len);
    assert_int_equal(km_blob_parse(b, len, MAX, &info, NULL), 0);
    assert_int_equal(km_blob_payload_decode(&info, MAX, &owned, &out, &out_len, NULL), 0);
    assert_memory_equal(out, raw, N);
    free(owned);
    free(b);

    /* raw_len differs from the frame's declared size, either way */
    b = make_zblob(framed, flen, N + 1, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt: the frame declares 10000 bytes, the blob header 10001");
    free(b);
    b = make_zblob(framed, flen, N - 2, KM_BLOB_F_SHUFFLE2, &len);
    expect_decode_error(b, len, MAX, "the frame declares 10000 bytes, the blob header 9998");
    free(b);
    /* no declared size: decodes to fewer bytes than raw_len */
    b = make_zblob(unsized, nflen, N + 10, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt: decodes to 10000 bytes, the blob header says 10010");
    free(b);
    /* ... or to more: stopped at raw_len bytes */
    b = make_zblob(unsized, nflen, N - 10, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt: Destination buffer is too small");
    free(b);
    /* truncated frame */
    b = make_zblob(framed, flen - 5, N, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt");
    free(b);
    b = make_zblob(framed, 3, N, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt: not a zstd frame");
    free(b);
    /* not a frame at all, or a frame with bytes after it */
    b = make_zblob(raw, 500, N, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt: not a zstd frame");
    free(b);
    uint8_t *two = malloc(flen + 7);
    memcpy(two, framed, flen);
    memcpy(two + flen, "garbage", 7);
    b = make_zblob(two, flen + 7, N, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt: 7 bytes after the");
    free(b);
    /* a second, empty frame after the first: still one frame only */
    size_t elen;
    uint8_t *empty = frame_of(raw, 0, 1, &elen);
    two = realloc(two, flen + elen);
    memcpy(two + flen, empty, elen);
    b = make_zblob(two, flen + elen, N, 0, &len);
    expect_decode_error(b, len, MAX, "bytes after the");
    free(b);
    free(empty);
    free(two);
    /* a damaged block inside an intact frame header (sealed again, as a forger
     * would): zstd's own checks or the exact size catch it */
    uint8_t *dmg = malloc(flen);
    memcpy(dmg, framed, flen);
    km_put_u32(dmg + 6, 0xffffffffu); /* first block header: huge block size */
    b = make_zblob(dmg, flen, N, 0, &len);
    expect_decode_error(b, len, MAX, "compressed payload corrupt");
    free(b);
    free(dmg);
    /* an unsealed change to the frame: the checksum */
    b = make_zblob(framed, flen, N, 0, &len);
    b[len - 3] ^= 0x10;
    expect_parse_error(b, len, MAX, "checksum mismatch");
    free(b);
    free(unsized);
    free(framed);
    free(raw);
}

/* zstd bombs: tiny frames that would decode to a lot. The caller's max_raw
 * bounds what is ever allocated. */
static void test_decode_bombs(void **state) {
    (void)state;
    const size_t BIG = (size_t)16 << 20;
    uint8_t *zeros = calloc(1, BIG);
    size_t flen, nflen, len;
    uint8_t *framed = frame_of(zeros, BIG, 1, &flen);
    uint8_t *unsized = frame_of(zeros, BIG, 0, &nflen);
    free(zeros);
    assert_true(flen < 1024); /* 16 MiB in under 1 KiB */
    /* honest about its size, but over the caller's limit: refused before any allocation */
    uint8_t *b = make_zblob(framed, flen, BIG, 0, &len);
    expect_decode_error(b, len, 1 << 20, "payload is 16777216 bytes once decoded, over the limit of 1048576");
    free(b);
    /* a huge claim (1 TiB): the same */
    b = make_zblob(framed, flen, (uint64_t)1 << 40, 0, &len);
    expect_decode_error(b, len, 1 << 20, "over the limit of 1048576");
    free(b);
    /* lying low: the frame declares 16 MiB, the header 1 MiB */
    b = make_zblob(framed, flen, 1 << 20, 0, &len);
    expect_decode_error(b, len, 1 << 20, "the frame declares 16777216 bytes");
    free(b);
    /* lying low without a declared size: decoding stops at 1 MiB */
    b = make_zblob(unsized, nflen, 1 << 20, 0, &len);
    expect_decode_error(b, len, 1 << 20, "Destination buffer is too small");
    free(b);
    free(unsized);
    free(framed);
}

static void test_oversized(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(2, 5000, &len);
    expect_parse_error(b, len, 4096, "exceeds the limit");
    free(b);
}

static void test_wrong_model_kv_tokens(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(4, 100, &len);
    km_blob_info info;
    km_error err;
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0);
    uint8_t other[KM_FINGERPRINT_LEN];
    memcpy(other, FP, sizeof other);
    other[15] ^= 0x80;
    assert_int_equal(km_blob_check_request(&info, other, 1, 1, TOKS, 6, &err), -1);
    assert_non_null(strstr(err.msg, "another model"));
    assert_int_equal(km_blob_check_request(&info, FP, 8, 8, TOKS, 6, &err), -1);
    assert_non_null(strstr(err.msg, "KV types"));
    int32_t req[6];
    memcpy(req, TOKS, sizeof req);
    req[3] = 301;
    assert_int_equal(km_blob_check_request(&info, FP, 1, 1, req, 6, &err), -1);
    assert_non_null(strstr(err.msg, "position 3"));
    assert_int_equal(km_blob_check_request(&info, FP, 1, 1, TOKS, 3, &err), -1);
    assert_non_null(strstr(err.msg, "only 3"));
    free(b);
}

static void derive(km_blob_key *k, const char *secret, const char *purpose) {
    assert_int_equal(km_blob_key_derive(k, (const uint8_t *)secret, strlen(secret), purpose), 0);
}

/* Keys: one per secret and purpose, never the secret itself. */
static void test_key_derivation(void **state) {
    (void)state;
    km_blob_key a, b, c, d;
    derive(&a, SECRET, "store");
    derive(&b, SECRET, "store");
    derive(&c, SECRET, "mesh");
    derive(&d, "correct horse battery stapler", "store");
    assert_memory_equal(a.k, b.k, KM_BLOB_KEY_LEN);
    assert_memory_not_equal(a.k, c.k, KM_BLOB_KEY_LEN);
    assert_memory_not_equal(a.k, d.k, KM_BLOB_KEY_LEN);
    assert_memory_not_equal(a.k, SECRET, KM_BLOB_KEY_LEN - 4);
}

static void expect_unauthenticated(const uint8_t *b, size_t len, const km_blob_key *k, const char *needle) {
    km_error err = {{0}};
    assert_int_equal(km_blob_verify(b, len, k, &err), -1);
    if (!strstr(err.msg, "unauthenticated") || !strstr(err.msg, needle))
        fail_msg("error '%s' does not say unauthenticated: %s", err.msg, needle);
}

/* A MAC'd blob verifies with its key only; one flipped bit anywhere (header,
 * MAC, tokens, payload), a wrong key, a missing MAC or an old format version
 * make it "unauthenticated". */
static void test_mac(void **state) {
    (void)state;
    km_blob_key store, mesh, other;
    derive(&store, SECRET, "store");
    derive(&mesh, SECRET, "mesh");
    derive(&other, "another secret of enough length", "store");
    size_t len;
    uint8_t *b = make_blob(3, 300, &len);
    km_blob_set_next(b, 7, 8);
    km_blob_seal(b, len);
    km_error err;
    expect_unauthenticated(b, len, &store, "carries no MAC");
    assert_int_equal(km_blob_authenticate(b, len, &store, &err), 0);
    assert_int_equal(km_blob_verify(b, len, &store, &err), 0);
    km_blob_info info;
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0); /* the checksum was resealed */
    assert_true(info.has_mac);
    assert_int_equal(info.flags, KM_BLOB_F_NEXT | KM_BLOB_F_MAC);
    assert_int_equal(info.next_token, 8);
    for (size_t i = 0; i < len; i++) {
        b[i] ^= (uint8_t)(1 << (i % 8));
        km_error e = {{0}};
        if (km_blob_verify(b, len, &store, &e) == 0) fail_msg("a flipped bit at byte %zu verified", i);
        if (!strstr(e.msg, "unauthenticated")) fail_msg("byte %zu: '%s'", i, e.msg);
        b[i] ^= (uint8_t)(1 << (i % 8));
    }
    assert_int_equal(km_blob_verify(b, len, &store, &err), 0);
    expect_unauthenticated(b, len, &mesh, "bad MAC");  /* the same secret's other purpose */
    expect_unauthenticated(b, len, &other, "bad MAC"); /* another secret */
    expect_unauthenticated(b, len - 1, &store, "bad MAC");
    expect_unauthenticated(b, 100, &store, "not a kvmesh state blob");
    /* the attack of the issue: another hint, the checksum recomputed (any
     * writer can); the blob parses, but its MAC no longer matches */
    km_put_u32(b + 68, 9);
    km_blob_seal(b, len);
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0);
    assert_int_equal(info.next_token, 9);
    expect_unauthenticated(b, len, &store, "bad MAC");
    /* an older format has no MAC to check */
    assert_int_equal(km_blob_authenticate(b, len, &store, &err), 0);
    km_put_u16(b + 4, 2);
    expect_unauthenticated(b, len, &store, "format version 2 carries no MAC");
    free(b);
}

/* A MAC field without its flag is malformed; compression and dropping the
 * hint both remove the MAC (the bytes it covered changed). */
static void test_mac_removed_by_changes(void **state) {
    (void)state;
    km_blob_key k;
    derive(&k, SECRET, "mesh");
    size_t len, zlen;
    uint8_t *b = make_blob(3, 2000, &len);
    km_blob_set_next(b, 7, 8);
    km_blob_seal(b, len);
    km_error err;
    assert_int_equal(km_blob_authenticate(b, len, &k, &err), 0);
    uint8_t *c = malloc(len);
    memcpy(c, b, len);
    km_put_u32(c + 36, km_get_u32(c + 36) & ~KM_BLOB_F_MAC);
    km_blob_seal(c, len);
    expect_parse_error(c, len, 1 << 20, "MAC field but not its flag");
    free(c);
    uint8_t *z;
    assert_int_equal(km_blob_compress(b, len, 1, &z, &zlen, &err), 0);
    km_blob_info info;
    assert_int_equal(km_blob_parse(z, zlen, SIZE_MAX, &info, &err), 0);
    assert_false(info.has_mac);
    assert_true(info.has_next);
    expect_unauthenticated(z, zlen, &k, "carries no MAC");
    assert_int_equal(km_blob_authenticate(z, zlen, &k, &err), 0); /* sealed after compression: verifies */
    assert_int_equal(km_blob_verify(z, zlen, &k, &err), 0);
    free(z);
    km_blob_drop_hint(b, len);
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0);
    assert_false(info.has_next);
    assert_false(info.has_mac);
    assert_int_equal(info.flags, 0);
    /* authenticating needs a valid blob */
    b[len - 1] ^= 1;
    assert_int_equal(km_blob_authenticate(b, len, &k, &err), -1);
    assert_non_null(strstr(err.msg, "checksum mismatch"));
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_every_bit_flip_is_caught),
        cmocka_unit_test(test_bad_header_fields),
        cmocka_unit_test(test_flag_rules),
        cmocka_unit_test(test_v1_rejected),
        cmocka_unit_test(test_set_next),
        cmocka_unit_test(test_compress_roundtrip),
        cmocka_unit_test(test_compress_f16_smaller),
        cmocka_unit_test(test_compress_not_worth_it),
        cmocka_unit_test(test_decode_rejects_bad_frames),
        cmocka_unit_test(test_decode_bombs),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_wrong_model_kv_tokens),
        cmocka_unit_test(test_key_derivation),
        cmocka_unit_test(test_mac),
        cmocka_unit_test(test_mac_removed_by_changes),
    };
    return cmocka_run_group_tests_name("blob", tests, NULL, NULL);
}
