/* test_catalog.c -- the Bloom-filter catalog: no false negatives, the
 * configured false-positive rate, exact round trips, the shipped size, and a
 * decoder that rejects every damaged or forged input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "catalog.h"
#include "testutil.h"

/* The wire format as catalog.c writes it (see the header comment there). */
#define HDR 44
#define O_FORMAT 4
#define O_HSIZE 6
#define O_CAPACITY 8
#define O_ERROR 12
#define O_HASHES 20
#define O_BITS 24
#define O_VERSION 28
#define O_COUNT 36
#define O_CHECKSUM 40

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Key number i of a key space: "present" keys use domain 1, keys that were
 * never added domain 2, so the two sets cannot overlap. */
static km_key key_of(uint64_t domain, uint64_t i) {
    uint64_t s = (domain << 40) ^ i;
    km_key k;
    uint64_t a = splitmix64(&s), b = splitmix64(&s);
    km_put_u64(k.b, a);
    km_put_u64(k.b + 8, b);
    return k;
}

static km_catalog *new_catalog(uint32_t capacity, double error) {
    km_catalog_params p = {.capacity = capacity, .error = error};
    km_error err = {{0}};
    km_catalog *c = km_catalog_new(&p, &err);
    if (!c) fail_msg("km_catalog_new(%u, %g): %s", capacity, error, err.msg);
    return c;
}

static uint8_t *encode(const km_catalog *c, size_t *len) {
    uint8_t *buf = NULL;
    km_error err = {{0}};
    if (km_catalog_encode(c, &buf, len, &err) != 0) fail_msg("encode: %s", err.msg);
    return buf;
}

/* Re-seal a hand-edited catalog so that only the field under test is wrong. */
static void reseal(uint8_t *buf, size_t len) {
    XXH32_state_t *st = XXH32_createState();
    XXH32_reset(st, 0);
    XXH32_update(st, buf, O_CHECKSUM);
    XXH32_update(st, buf + HDR, len - HDR);
    km_put_u32(buf + O_CHECKSUM, XXH32_digest(st));
    XXH32_freeState(st);
}

static void put_f64(uint8_t *p, double v) {
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    km_put_u64(p, u);
}

static void expect_reject(const uint8_t *buf, size_t len, size_t max, const char *needle) {
    km_error err = {{0}};
    km_catalog *c = km_catalog_decode(buf, len, max, &err);
    if (c) {
        km_catalog_free(c);
        fail_msg("decode accepted a bad catalog (expected an error mentioning '%s')", needle);
    }
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not mention '%s'", err.msg, needle);
}

/* A small catalog (1000 keys at 1 %: 1243 bytes encoded) holding 300 keys. */
static uint8_t *small_encoded(size_t *len) {
    km_catalog *c = new_catalog(1000, 0.01);
    for (uint64_t i = 0; i < 300; i++) km_catalog_add(c, key_of(1, i));
    uint8_t *buf = encode(c, len);
    km_catalog_free(c);
    assert_int_equal(*len, HDR + 1199);
    return buf;
}

/* ---------------------------------------------------------- creation */

static void test_defaults(void **state) {
    (void)state;
    km_catalog_params p = km_catalog_default_params();
    assert_int_equal(p.capacity, 100000);
    assert_true(p.error == 0.01);
    km_error err = {{0}};
    km_catalog *c = km_catalog_new(NULL, &err); /* NULL means the defaults */
    assert_non_null(c);
    assert_int_equal(km_catalog_version(c), 1);
    assert_int_equal(km_catalog_count(c), 0);
    assert_int_equal(km_catalog_bytes(c), 119814);
    km_catalog_free(c);
    km_catalog_free(NULL);
}

static void expect_new_fails(uint32_t capacity, double error, const char *needle) {
    km_catalog_params p = {.capacity = capacity, .error = error};
    km_error err = {{0}};
    km_catalog *c = km_catalog_new(&p, &err);
    if (c) {
        km_catalog_free(c);
        fail_msg("km_catalog_new(%u, %g) succeeded", capacity, error);
    }
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not mention '%s'", err.msg, needle);
}

static void test_new_rejects_bad_params(void **state) {
    (void)state;
    /* libbloom needs >= 1000 entries: rejected, not silently enlarged. */
    expect_new_fails(999, 0.01, "below libbloom's minimum of 1000");
    expect_new_fails(0, 0.01, "below libbloom's minimum");
    expect_new_fails((1u << 28) + 1, 0.01, "exceeds the limit");
    expect_new_fails(1000, 0.0, "error rate");
    expect_new_fails(1000, 1.0, "error rate");
    expect_new_fails(1000, 0.51, "error rate");
    expect_new_fails(1000, -0.01, "error rate");
    expect_new_fails(1000, NAN, "error rate");
    /* 2^28 keys at 1 % would need 2.6e9 bits: libbloom counts bits in an int. */
    expect_new_fails(1u << 28, 0.01, "more than libbloom supports");
    km_catalog_free(new_catalog(1000, 0.01));
    km_catalog_free(new_catalog(1000, 0.5));
}

/* ---------------------------------------------------------- filter behaviour */

static void test_no_false_negatives(void **state) {
    (void)state;
    km_catalog *c = km_catalog_new(NULL, NULL);
    assert_non_null(c);
    for (uint64_t i = 0; i < 50000; i++) km_catalog_add(c, key_of(1, i));
    int missing = 0;
    for (uint64_t i = 0; i < 50000; i++) missing += !km_catalog_check(c, key_of(1, i));
    assert_int_equal(missing, 0);
    /* Counted adds are those that changed the filter: all but a few of the
     * 50000 (a new key whose bits were all set is not counted). */
    assert_in_range(km_catalog_count(c), 49900, 50000);
    assert_int_equal(km_catalog_version(c), 1 + (uint64_t)km_catalog_count(c));
    km_catalog_free(c);
}

static void test_false_positive_rate(void **state) {
    (void)state;
    km_catalog *c = km_catalog_new(NULL, NULL);
    assert_non_null(c);
    for (uint64_t i = 0; i < 100000; i++) km_catalog_add(c, key_of(1, i)); /* at capacity */
    int fp = 0;
    for (uint64_t i = 0; i < 200000; i++) fp += km_catalog_check(c, key_of(2, i));
    double rate = fp / 200000.0;
    printf("false-positive rate at capacity (100000 keys, configured 0.01): %.5f (%d of 200000)\n", rate, fp);
    assert_true(rate >= 0.005 && rate <= 0.02);
    km_catalog_free(c);
}

static void test_version_and_count(void **state) {
    (void)state;
    km_catalog *c = new_catalog(1000, 0.01);
    assert_int_equal(km_catalog_version(c), 1);
    km_catalog_add(c, key_of(1, 1));
    assert_int_equal(km_catalog_version(c), 2);
    assert_int_equal(km_catalog_count(c), 1);
    /* Adding a present key changes nothing: no bump, not counted. */
    km_catalog_add(c, key_of(1, 1));
    assert_int_equal(km_catalog_version(c), 2);
    assert_int_equal(km_catalog_count(c), 1);
    km_catalog_add(c, key_of(1, 2));
    assert_int_equal(km_catalog_version(c), 3);
    assert_int_equal(km_catalog_count(c), 2);
    /* Checks never bump. */
    (void)km_catalog_check(c, key_of(2, 9));
    assert_int_equal(km_catalog_version(c), 3);
    km_catalog_set_version(c, 100);
    km_catalog_add(c, key_of(1, 3));
    assert_int_equal(km_catalog_version(c), 101);
    km_catalog_clear(c);
    assert_int_equal(km_catalog_version(c), 102);
    /* Versions saturate rather than wrap back to "old". */
    km_catalog_set_version(c, UINT64_MAX);
    km_catalog_add(c, key_of(1, 4));
    assert_true(km_catalog_version(c) == UINT64_MAX);
    km_catalog_free(c);
}

static void test_clear(void **state) {
    (void)state;
    km_catalog *c = new_catalog(1000, 0.01);
    for (uint64_t i = 0; i < 1000; i++) km_catalog_add(c, key_of(1, i));
    uint64_t v = km_catalog_version(c);
    km_catalog_clear(c);
    assert_int_equal(km_catalog_version(c), v + 1);
    assert_int_equal(km_catalog_count(c), 0);
    int present = 0;
    for (uint64_t i = 0; i < 1000; i++) present += km_catalog_check(c, key_of(1, i));
    assert_int_equal(present, 0); /* an empty filter has no false positives */
    size_t len;
    uint8_t *buf = encode(c, &len);
    for (size_t i = HDR; i < len; i++)
        if (buf[i] != 0) fail_msg("filter byte %zu is %u after clear", i - HDR, buf[i]);
    free(buf);
    /* Usable again after a clear (the rebuild case). */
    km_catalog_add(c, key_of(1, 5));
    assert_true(km_catalog_check(c, key_of(1, 5)));
    assert_int_equal(km_catalog_count(c), 1);
    km_catalog_free(c);
}

/* ---------------------------------------------------------- wire format */

static void test_encoded_size(void **state) {
    (void)state;
    km_catalog *c = km_catalog_new(NULL, NULL);
    assert_non_null(c);
    size_t len;
    uint8_t *buf = encode(c, &len);
    /* libbloom's sizing: bits = floor(n * -ln(p) / ln(2)^2), bytes = ceil(bits / 8). */
    double bpe = -log(0.01) / (log(2.0) * log(2.0));
    uint32_t bits = (uint32_t)(100000 * bpe);
    size_t bytes = (bits + 7) / 8;
    assert_int_equal(bits, 958505);
    assert_int_equal(bytes, 119814);
    assert_int_equal(km_catalog_bytes(c), bytes);
    assert_int_equal(len, HDR + bytes);
    assert_int_equal(km_get_u32(buf + O_BITS), bits);
    assert_int_equal(km_get_u32(buf + O_HASHES), (uint32_t)ceil(log(2.0) * bpe)); /* 7 */
    printf("default catalog (100000 keys, error 0.01): %zu bytes encoded = %d header + %zu filter "
           "(%u bits, %u hashes, %.2f bits/key)\n",
           len, HDR, bytes, bits, km_get_u32(buf + O_HASHES), bits / 100000.0);
    free(buf);
    km_catalog_free(c);
}

/* MurmurHash2 (32-bit), written from its published description; libbloom
 * 1.6 derives a key's bit positions from it (see test_bit_positions). */
static uint32_t murmur2(const uint8_t *d, int len, uint32_t seed) {
    const uint32_t m = 0x5bd1e995u;
    uint32_t h = seed ^ (uint32_t)len;
    for (; len >= 4; d += 4, len -= 4) {
        uint32_t k = km_get_u32(d);
        k *= m;
        k ^= k >> 24;
        k *= m;
        h = h * m ^ k;
    }
    switch (len) {
    case 3: h ^= (uint32_t)d[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)d[1] << 8;  /* fall through */
    case 1: h ^= d[0]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    return h ^ (h >> 15);
}

/* The filter bytes on the wire, rebuilt without libbloom: key k sets bits
 * x_i = (a + i*b) mod bits for i < hashes, a = murmur2(k, 0x9747b28c),
 * b = murmur2(k, a), and bit x is bit (x & 7) of byte x >> 3. This is what a
 * peer must compute to read a catalog, so it is pinned here. */
static void test_bit_positions(void **state) {
    (void)state;
    km_catalog *c = new_catalog(1000, 0.01);
    for (uint64_t i = 0; i < 200; i++) km_catalog_add(c, key_of(1, i));
    size_t len;
    uint8_t *buf = encode(c, &len);
    const uint32_t bits = 9585, hashes = 7;
    uint8_t *want = calloc(1, (bits + 7) / 8);
    for (uint64_t i = 0; i < 200; i++) {
        km_key k = key_of(1, i);
        uint32_t a = murmur2(k.b, KM_KEY_LEN, 0x9747b28cu), b = murmur2(k.b, KM_KEY_LEN, a);
        for (uint32_t j = 0; j < hashes; j++) {
            uint32_t x = (a + j * b) % bits;
            want[x >> 3] |= (uint8_t)(1u << (x & 7));
        }
    }
    assert_int_equal(len, HDR + (bits + 7) / 8);
    assert_memory_equal(buf + HDR, want, (bits + 7) / 8);
    free(want);
    free(buf);
    km_catalog_free(c);
}

/* The layout, field by field, and a digest of a fixed catalog: if either
 * changes, catalogs no longer interoperate with older nodes. */
static void test_wire_layout(void **state) {
    (void)state;
    km_catalog *c = new_catalog(1000, 0.01);
    for (uint64_t i = 0; i < 10; i++) km_catalog_add(c, key_of(1, i));
    km_catalog_set_version(c, 0x0102030405060708ull);
    size_t len;
    uint8_t *buf = encode(c, &len);
    assert_int_equal(len, 1243);
    assert_memory_equal(buf, "KVMC", 4);
    assert_int_equal(km_get_u16(buf + O_FORMAT), 1);
    assert_int_equal(km_get_u16(buf + O_HSIZE), HDR);
    assert_int_equal(km_get_u32(buf + O_CAPACITY), 1000);
    double e;
    uint64_t eb = km_get_u64(buf + O_ERROR);
    memcpy(&e, &eb, sizeof e);
    assert_true(e == 0.01);
    assert_int_equal(km_get_u32(buf + O_HASHES), 7);
    assert_int_equal(km_get_u32(buf + O_BITS), 9585);
    assert_true(km_get_u64(buf + O_VERSION) == 0x0102030405060708ull);
    assert_int_equal(km_get_u32(buf + O_COUNT), 10);
    uint8_t copy[HDR];
    memcpy(copy, buf, HDR);
    reseal(buf, len);
    assert_memory_equal(copy, buf, HDR); /* the checksum covers what catalog.h says */
    assert_int_equal(XXH32(buf, len, 0), 0xb1ac8c0eu);
    free(buf);
    km_catalog_free(c);
}

static void test_roundtrip(void **state) {
    (void)state;
    km_catalog *c = km_catalog_new(NULL, NULL);
    assert_non_null(c);
    for (uint64_t i = 0; i < 30000; i++) km_catalog_add(c, key_of(1, i));
    km_catalog_set_version(c, 777);
    km_catalog_add(c, key_of(1, 30000));
    size_t len;
    uint8_t *buf = encode(c, &len);
    km_error err = {{0}};
    km_catalog *d = km_catalog_decode(buf, len, 1 << 20, &err);
    if (!d) fail_msg("decode: %s", err.msg);
    assert_int_equal(km_catalog_version(d), 778);
    assert_int_equal(km_catalog_version(d), km_catalog_version(c));
    assert_int_equal(km_catalog_count(d), km_catalog_count(c));
    assert_int_equal(km_catalog_bytes(d), km_catalog_bytes(c));
    /* Identical answers on 100k keys: 30001 present, 69999 absent. */
    int differ = 0, yes = 0;
    for (uint64_t i = 0; i < 100000; i++) {
        km_key k = i <= 30000 ? key_of(1, i) : key_of(2, i);
        bool a = km_catalog_check(c, k), b = km_catalog_check(d, k);
        differ += a != b;
        yes += b;
    }
    assert_int_equal(differ, 0);
    assert_in_range(yes, 30001, 30001 + 2000); /* present + a few false positives */
    /* Same capacity, error rate, bits, hashes and filter: byte-identical. */
    size_t len2;
    uint8_t *buf2 = encode(d, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(buf2, buf, len);
    /* The decoded catalog keeps working, and versions continue from there. */
    km_catalog_add(d, key_of(3, 1));
    assert_true(km_catalog_check(d, key_of(3, 1)));
    assert_int_equal(km_catalog_version(d), 779);
    free(buf2);
    free(buf);
    km_catalog_free(d);
    km_catalog_free(c);
}

static void test_roundtrip_other_params(void **state) {
    (void)state;
    const uint32_t caps[] = {1000, 1001, 4096, 250000};
    const double errs[] = {0.5, 0.1, 0.001, 1e-6};
    for (int i = 0; i < 4; i++) {
        km_catalog *c = new_catalog(caps[i], errs[i]);
        for (uint64_t j = 0; j < 500; j++) km_catalog_add(c, key_of(1, j));
        size_t len;
        uint8_t *buf = encode(c, &len);
        km_error err = {{0}};
        km_catalog *d = km_catalog_decode(buf, len, 8 << 20, &err);
        if (!d) fail_msg("decode (%u, %g): %s", caps[i], errs[i], err.msg);
        size_t len2;
        uint8_t *buf2 = encode(d, &len2);
        assert_int_equal(len2, len);
        assert_memory_equal(buf2, buf, len);
        for (uint64_t j = 0; j < 500; j++) assert_true(km_catalog_check(d, key_of(1, j)));
        free(buf2);
        free(buf);
        km_catalog_free(d);
        km_catalog_free(c);
    }
}

/* ---------------------------------------------------------- decoder rejects */

static void test_reject_truncated(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = small_encoded(&len);
    /* Every shorter length, each in a buffer of exactly that size (ASan sees
     * any read past it). */
    for (size_t n = 0; n < len; n++) {
        uint8_t *t = malloc(n ? n : 1);
        memcpy(t, buf, n);
        expect_reject(t, n, 1 << 20, n < HDR ? "truncated" : "truncated or padded");
        free(t);
    }
    free(buf);

    /* And the default catalog cut at a few places. */
    km_catalog *c = km_catalog_new(NULL, NULL);
    assert_non_null(c);
    buf = encode(c, &len);
    km_catalog_free(c);
    expect_reject(buf, len - 1, 1 << 20, "truncated or padded");
    expect_reject(buf, len / 2, 1 << 20, "truncated or padded");
    expect_reject(buf, HDR, 1 << 20, "truncated or padded");
    free(buf);
}

static void test_reject_trailing_bytes(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = small_encoded(&len);
    uint8_t *t = calloc(1, len + 8);
    memcpy(t, buf, len);
    expect_reject(t, len + 1, 1 << 20, "truncated or padded");
    expect_reject(t, len + 8, 1 << 20, "truncated or padded");
    reseal(t, len + 1); /* a matching checksum does not help */
    expect_reject(t, len + 1, 1 << 20, "truncated or padded");
    free(t);
    free(buf);
}

static void test_reject_every_bit_flip(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = small_encoded(&len);
    km_error err;
    int caught = 0, total = 0;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[i] ^= (uint8_t)(1 << bit);
            total++;
            err.msg[0] = 0;
            km_catalog *c = km_catalog_decode(buf, len, 1 << 20, &err);
            if (!c && err.msg[0]) caught++;
            km_catalog_free(c);
            buf[i] ^= (uint8_t)(1 << bit);
        }
    }
    assert_int_equal(total, 1243 * 8);
    assert_int_equal(caught, total);
    km_catalog *c = km_catalog_decode(buf, len, 1 << 20, &err); /* the original still decodes */
    assert_non_null(c);
    km_catalog_free(c);
    free(buf);
}

static void test_reject_header_fields(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = small_encoded(&len);
    uint8_t *t = malloc(len);
#define FRESH() memcpy(t, buf, len)

    FRESH();
    t[0] = 'X';
    expect_reject(t, len, 1 << 20, "bad magic");
    FRESH();
    km_put_u16(t + O_FORMAT, 2);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "format version 2");
    FRESH();
    km_put_u16(t + O_FORMAT, 0);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "format version 0");
    FRESH();
    km_put_u16(t + O_HSIZE, 40);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "header size 40");

    /* Capacity: 0, below libbloom's minimum, huge. */
    const uint32_t bad_caps[] = {0, 999, (1u << 28) + 1, 0xffffffffu};
    for (int i = 0; i < 4; i++) {
        FRESH();
        km_put_u32(t + O_CAPACITY, bad_caps[i]);
        reseal(t, len);
        expect_reject(t, len, 1 << 20, "capacity");
    }
    /* Error rate: 0, 1, above 0.5, negative, NaN, infinity. */
    const double bad_errs[] = {0.0, 1.0, 0.5000001, -0.01, NAN, INFINITY};
    for (int i = 0; i < 6; i++) {
        FRESH();
        put_f64(t + O_ERROR, bad_errs[i]);
        reseal(t, len);
        expect_reject(t, len, 1 << 20, "error rate");
    }
    /* A valid capacity that needs more bits than libbloom can count. */
    FRESH();
    km_put_u32(t + O_CAPACITY, 1u << 28);
    put_f64(t + O_ERROR, 1e-9);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "more than libbloom supports");

    /* More keys counted than the filter has bits. */
    FRESH();
    km_put_u32(t + O_COUNT, 9586);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "9586 keys");
    /* A bit set in the padding past the last filter bit (9585 = 8 * 1198 + 1). */
    FRESH();
    t[len - 1] |= 0x80;
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "past the end");

    /* Over the caller's limit. */
    expect_reject(buf, len, len - 1, "exceeds the limit");
    km_catalog *c = km_catalog_decode(buf, len, len, NULL); /* exactly at the limit is fine */
    assert_non_null(c);
    km_catalog_free(c);
#undef FRESH
    free(t);
    free(buf);
}

/* The header's sizes must be the ones libbloom computes from capacity and
 * error rate, even when the length and checksum agree with the header. */
static void test_reject_size_mismatch(void **state) {
    (void)state;
    size_t len;
    uint8_t *buf = small_encoded(&len);
    uint8_t *t = calloc(1, len + 64);

    /* Bit count claims a byte more, and the input really has it. */
    memcpy(t, buf, len);
    km_put_u32(t + O_BITS, 9585 + 8);
    reseal(t, len + 1);
    expect_reject(t, len + 1, 1 << 20, "makes 9585 / 1199 / 7");
    /* Bit count off by one within the same byte count (1199 bytes hold up
     * to 9592 bits), so only libbloom's own sizing can tell. */
    memcpy(t, buf, len);
    km_put_u32(t + O_BITS, 9586);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "9586 bits / 1199 bytes / 7 hashes");
    /* Bit count says fewer bytes than are there. */
    memcpy(t, buf, len);
    km_put_u32(t + O_BITS, 9585 - 8);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "truncated or padded");
    /* Far off: a forged header cannot make us allocate what it likes. */
    memcpy(t, buf, len);
    km_put_u32(t + O_BITS, 9585 + 8 * 64);
    reseal(t, len + 64);
    expect_reject(t, len + 64, 1 << 20, "libbloom would use about 9585");
    /* Hash count. */
    memcpy(t, buf, len);
    km_put_u32(t + O_HASHES, 8);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "9585 bits / 1199 bytes / 8 hashes");
    /* Capacity changed so that libbloom sizes it differently. */
    memcpy(t, buf, len);
    km_put_u32(t + O_CAPACITY, 2000);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "for 2000 keys");
    /* Error rate changed likewise. */
    memcpy(t, buf, len);
    put_f64(t + O_ERROR, 0.02);
    reseal(t, len);
    expect_reject(t, len, 1 << 20, "error rate 0.02");
    free(t);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_new_rejects_bad_params),
        cmocka_unit_test(test_no_false_negatives),
        cmocka_unit_test(test_false_positive_rate),
        cmocka_unit_test(test_version_and_count),
        cmocka_unit_test(test_clear),
        cmocka_unit_test(test_encoded_size),
        cmocka_unit_test(test_wire_layout),
        cmocka_unit_test(test_bit_positions),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_roundtrip_other_params),
        cmocka_unit_test(test_reject_truncated),
        cmocka_unit_test(test_reject_trailing_bytes),
        cmocka_unit_test(test_reject_every_bit_flip),
        cmocka_unit_test(test_reject_header_fields),
        cmocka_unit_test(test_reject_size_mismatch),
    };
    return cmocka_run_group_tests_name("catalog", tests, NULL, NULL);
}
