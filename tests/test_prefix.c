/* test_prefix.c -- boundaries and chained prefix keys.
 *
 * The key test vectors below pin the key function across processes, machines
 * and versions: if one changes, every cached state ever written becomes
 * unreachable, so a change must be deliberate (bump the tags in prefix.c).
 * They were cross-checked against the xxhash command line tool (xxh128sum) on
 * the byte strings the comments describe. */
#include <stdlib.h>
#include <string.h>

#include "prefix.h"
#include "testutil.h"

/* Key bytes are low64 then high64 of the XXH3-128 digest, each little-endian:
 * the reverse of the canonical form `xxhsum -H2` prints (1a85e5d0...9c for the
 * root below). */
#define ROOT_VECTOR "9c82e99b1fd492dbdf5b482bd0e5851a"
#define NEXT_VECTOR_1 "8eb1a1158ffae6f666c38f286a5d6752"
#define NEXT_VECTOR_2 "b53343fc80cefd12b40dae2c0817687e"

static km_key root_for_tests(void) {
    uint8_t fp[KM_FINGERPRINT_LEN];
    for (int i = 0; i < KM_FINGERPRINT_LEN; i++) fp[i] = (uint8_t)i;
    return km_key_root(fp, 1, 1, NULL); /* f16 / f16 */
}

static void assert_key_hex(km_key k, const char *want) {
    char hex[2 * KM_KEY_LEN + 1];
    km_key_hex(k, hex);
    assert_string_equal(hex, want);
}

static void test_key_vectors(void **state) {
    (void)state;
    km_key k0 = root_for_tests();
    /* "kvmesh-root-v1\0" || 00 01 .. 0f || 01 00 00 00 || 01 00 00 00 */
    assert_key_hex(k0, ROOT_VECTOR);
    int32_t toks[5] = {2, 651, 6974, 14, 262143};
    /* "kvmesh-next-v1\0" || k0 || tokens as u32 little-endian */
    km_key k1 = km_key_next(k0, toks, 3);
    assert_key_hex(k1, NEXT_VECTOR_1);
    km_key k2 = km_key_next(k1, toks + 3, 2);
    assert_key_hex(k2, NEXT_VECTOR_2);
    /* salt changes the root */
    uint8_t fp[KM_FINGERPRINT_LEN];
    for (int i = 0; i < KM_FINGERPRINT_LEN; i++) fp[i] = (uint8_t)i;
    assert_false(km_key_equal(k0, km_key_root(fp, 1, 1, "tenant-a")));
    assert_true(km_key_equal(k0, km_key_root(fp, 1, 1, "")));
    /* KV type and model are part of the key */
    assert_false(km_key_equal(k0, km_key_root(fp, 8, 8, NULL)));
    fp[0] ^= 1;
    assert_false(km_key_equal(k0, km_key_root(fp, 1, 1, NULL)));
}

static void test_chaining_is_prefix_exact(void **state) {
    (void)state;
    km_key r = root_for_tests();
    int32_t a[6] = {2, 10, 11, 12, 13, 14};
    int32_t b[6] = {2, 10, 11, 12, 13, 99};
    int bounds[3] = {2, 4, 5};
    km_key ka[3], kb[3];
    km_keys_for_boundaries(r, a, bounds, 3, ka);
    km_keys_for_boundaries(r, b, bounds, 3, kb);
    assert_true(km_key_equal(ka[0], kb[0]));
    assert_true(km_key_equal(ka[1], kb[1]));
    assert_true(km_key_equal(ka[2], kb[2])); /* bounds[2]=5 covers a[0..5) == b[0..5) */
    int bounds2[1] = {6};
    km_key x, y;
    km_keys_for_boundaries(r, a, bounds2, 1, &x);
    km_keys_for_boundaries(r, b, bounds2, 1, &y);
    assert_false(km_key_equal(x, y));
    /* Different cut points of the same tokens give different keys: a key names
     * the segmentation too, which is what makes a stored state's chunking match. */
    int c1[2] = {2, 4}, c2[2] = {3, 4};
    km_key p[2], q[2];
    km_keys_for_boundaries(r, a, c1, 2, p);
    km_keys_for_boundaries(r, a, c2, 2, q);
    assert_false(km_key_equal(p[1], q[1]));
}

static void test_hex_roundtrip(void **state) {
    (void)state;
    km_key k = root_for_tests(), back;
    char hex[33];
    km_key_hex(k, hex);
    assert_int_equal(km_key_from_hex(hex, &back), 0);
    assert_true(km_key_equal(k, back));
    assert_int_equal(km_key_from_hex("zz", &back), -1);
    hex[5] = 'g';
    assert_int_equal(km_key_from_hex(hex, &back), -1);
}

static void test_boundaries(void **state) {
    (void)state;
    int out[64];
    /* explicit segments: unsorted, duplicated, out of range -> cleaned; last = n-1 */
    int seg[6] = {40, 10, 10, 0, 99, 49};
    int n = km_boundaries(seg, 6, 50, 16, out, NULL);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[1], 40);
    assert_int_equal(out[2], 49);
    /* no segments: fixed blocks */
    n = km_boundaries(NULL, 0, 50, 16, out, NULL);
    assert_int_equal(n, 4);
    assert_int_equal(out[0], 16);
    assert_int_equal(out[1], 32);
    assert_int_equal(out[2], 48);
    assert_int_equal(out[3], 49);
    /* a block ending exactly at n-1 is not duplicated */
    n = km_boundaries(NULL, 0, 33, 16, out, NULL);
    assert_int_equal(n, 2);
    assert_int_equal(out[1], 32);
    /* blocks off, no segments: only the end */
    n = km_boundaries(NULL, 0, 7, 0, out, NULL);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 6);
    /* a one-token prompt has nothing to cache */
    assert_int_equal(km_boundaries(NULL, 0, 1, 16, out, NULL), 0);
    /* segments given: blocks are not added */
    int s2[1] = {5};
    n = km_boundaries(s2, 1, 100, 16, out, NULL);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 5);
    assert_int_equal(out[1], 99);
}

/* 1024 segment ends two tokens apart: the first KM_BOUNDS_DENSE are kept,
 * later ones only when far enough past the previous (max(64, p/8) tokens),
 * KM_MAX_BOUNDS in all; the choice in a shared prefix does not depend on what
 * follows it (so keys, and reuse, survive the merging). */
static void test_boundaries_merged(void **state) {
    (void)state;
    enum { N = 4096, NSEG = 1024 };
    int seg[NSEG], out[N], merged = -1;
    for (int i = 0; i < NSEG; i++) seg[i] = 2 * (i + 1);
    int n = km_boundaries(seg, NSEG, N, 0, out, &merged);
    assert_int_equal(n, 51);
    for (int i = 0; i < KM_BOUNDS_DENSE; i++) assert_int_equal(out[i], 2 * (i + 1));
    /* 64 past 64, then 64 (128/8 < 64), ...: each gap is max(64, p/8), rounded up to the next end */
    assert_int_equal(out[KM_BOUNDS_DENSE], 128);
    assert_int_equal(out[KM_BOUNDS_DENSE + 1], 192);
    assert_int_equal(out[KM_BOUNDS_DENSE + 8], 648); /* past 512: p/8 (576 + 72) */
    assert_int_equal(out[n - 2], 1874);             /* the next would be >= 2108, past the last end (2048) */
    assert_int_equal(out[n - 1], N - 1);
    assert_int_equal(merged, NSEG - (n - 1));
    for (int i = 1; i < n; i++) {
        int gap = out[i - 1] / 8 > 64 ? out[i - 1] / 8 : 64;
        assert_true(out[i] > out[i - 1]);
        if (i >= KM_BOUNDS_DENSE && i < n - 1) assert_true(out[i] - out[i - 1] >= gap);
    }
    /* the same prompt cut shorter (first 700 segments): the same boundaries up to there */
    int out2[N];
    int n2 = km_boundaries(seg, 700, 1500, 0, out2, &merged);
    for (int i = 0; i < n2 - 1; i++) assert_int_equal(out2[i], out[i]);
    assert_true(out2[n2 - 2] <= 1400);
    /* at most KM_MAX_BOUNDS however long the prompt: segment ends every 64 tokens of 1M */
    static int big_seg[16384], big_out[1 << 20];
    for (int i = 0; i < 16384; i++) big_seg[i] = 64 * (i + 1);
    n = km_boundaries(big_seg, 16384, 1 << 20, 0, big_out, &merged);
    assert_int_equal(n, KM_MAX_BOUNDS);
    assert_int_equal(merged, 16383 - (KM_MAX_BOUNDS - 1)); /* 64 x 16384 is past the end */
    assert_int_equal(big_out[KM_MAX_BOUNDS - 2], 86592); /* beyond: only the end (1/12 of this prompt) */
    /* a prompt with few segments is untouched */
    n = km_boundaries(seg, KM_BOUNDS_DENSE, N, 0, out, &merged);
    assert_int_equal(n, KM_BOUNDS_DENSE + 1);
    assert_int_equal(merged, 0);
    /* blocks are merged the same way: 256-token blocks of a 64k-token prompt */
    n = km_boundaries(NULL, 0, 65536, 256, big_out, &merged);
    assert_int_equal(n, 49);
    assert_int_equal(big_out[KM_BOUNDS_DENSE - 1], 8192);
    assert_int_equal(big_out[KM_BOUNDS_DENSE], 9216); /* 8192/8 = 1024 past */
    assert_int_equal(merged, 255 - (n - 1));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_vectors),
        cmocka_unit_test(test_chaining_is_prefix_exact),
        cmocka_unit_test(test_hex_roundtrip),
        cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_boundaries_merged),
    };
    return cmocka_run_group_tests_name("prefix", tests, NULL, NULL);
}
