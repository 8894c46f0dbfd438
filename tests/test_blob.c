/* test_blob.c -- state blob encoding and validation: every corruption is caught. */
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "testutil.h"

static const uint8_t FP[KM_FINGERPRINT_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const int32_t TOKS[6] = {2, 100, 200, 300, 400, 500};

/* A sealed blob of the first n tokens of TOKS with a recognisable payload. */
static uint8_t *make_blob(int n, size_t plen, size_t *len) {
    *len = km_blob_size((uint32_t)n, plen);
    uint8_t *b = malloc(*len);
    uint8_t *p = km_blob_begin(b, FP, 1, 1, TOKS, (uint32_t)n, plen);
    for (size_t i = 0; i < plen; i++) p[i] = (uint8_t)(i * 7 + 3);
    km_blob_seal(b, *len);
    return b;
}

static void test_roundtrip(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(4, 1000, &len);
    assert_int_equal(len, 64 + 16 + 1000);
    km_blob_info info;
    km_error err;
    assert_int_equal(km_blob_parse(b, len, 1 << 20, &info, &err), 0);
    assert_int_equal(info.n_tokens, 4);
    assert_int_equal(info.payload_len, 1000);
    assert_int_equal(info.type_k, 1);
    assert_memory_equal(info.fingerprint, FP, KM_FINGERPRINT_LEN);
    for (uint32_t i = 0; i < 4; i++) assert_int_equal(km_blob_token(&info, i), TOKS[i]);
    assert_int_equal(info.payload[999], (uint8_t)(999 * 7 + 3));
    assert_ptr_equal(info.payload, b + 64 + 16);
    /* the request may be longer than the blob */
    assert_int_equal(km_blob_check_request(&info, FP, 1, 1, TOKS, 6, &err), 0);
    free(b);
}

static void expect_parse_error(const uint8_t *b, size_t len, size_t max, const char *needle) {
    km_blob_info info;
    km_error err = {{0}};
    assert_int_equal(km_blob_parse(b, len, max, &info, &err), -1);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not mention '%s'", err.msg, needle);
}

static void test_truncated(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(4, 1000, &len);
    expect_parse_error(b, len - 1, 1 << 20, "truncated or padded");
    expect_parse_error(b, 10, 1 << 20, "truncated");
    expect_parse_error(b, 0, 1 << 20, "truncated");
    expect_parse_error(b, 64 + 16, 1 << 20, "truncated or padded");
    free(b);
}

static void test_every_bit_flip_is_caught(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = make_blob(3, 200, &len);
    km_blob_info info;
    int caught = 0, total = 0;
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
    km_put_u16(c + 4, 2);
    expect_parse_error(c, len, 1 << 20, "version 2");
    memcpy(c, b, len);
    km_put_u32(c + 32, 0);
    expect_parse_error(c, len, 1 << 20, "claims 0 tokens");
    memcpy(c, b, len);
    km_put_u32(c + 32, 0xffffffffu);
    expect_parse_error(c, len, 1 << 20, "tokens");
    memcpy(c, b, len);
    km_put_u64(c + 40, (uint64_t)1 << 62); /* forged payload length: no overflow, clear error */
    expect_parse_error(c, len, 1 << 20, "payload");
    memcpy(c, b, len);
    km_put_u32(c + 36, 1);
    km_blob_seal(c, len); /* even with a valid checksum */
    expect_parse_error(c, len, 1 << 20, "flags");
    free(c);
    free(b);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_every_bit_flip_is_caught),
        cmocka_unit_test(test_bad_header_fields),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_wrong_model_kv_tokens),
    };
    return cmocka_run_group_tests_name("blob", tests, NULL, NULL);
}
