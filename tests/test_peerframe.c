/* test_peerframe.c -- the framed, chained-MAC byte stream of forwarded
 * answers: the documented encoding (bytes computed independently with
 * Python's hmac), reading in any split, and refusal of every change: a
 * flipped byte anywhere, a dropped, repeated or reordered frame, a truncated
 * stream, bytes after the end, an oversized length, another answer's key. */
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peerframe.h"
#include "testutil.h"

/* The key of tests/test_peerauth.c's KAT_STREAM_KEY. */
#define KEY_HEX "b7619ad5b1cba8a379e2ee4c1ad0ea3d1612b001d62d386ea29f65121d97357e"
/* Frames "data: hi\n\n", "data: [DONE]\n\n", end, under that key (Python). */
#define KAT_HEX                                                                                                        \
    "0a000000646174613a2068690a0a162470abfe3e3af506ebf442501126d412c790639d1c73c9742039206e1532560e000000646174613a20" \
    "5b444f4e455d0a0afcd410549877ad9735be25e6c8d124333f6eb6bd16c045f8684c96447cfe20b30000000051678c560774ed9cf5633269" \
    "5bbebfe92da45b5b81a13191fed228ef27033c33"

static uint8_t KEY[KM_PEERFRAME_KEY_LEN];

static int setup(void **state) {
    (void)state;
    return sodium_hex2bin(KEY, sizeof KEY, KEY_HEX, strlen(KEY_HEX), NULL, NULL, NULL);
}

typedef struct out {
    uint8_t *data;
    size_t len;
    int frames;   /* data frames read */
    bool ended;   /* the end frame read */
    char error[512];
} out;

/* Read `in` fed in pieces of `step` bytes (0: all at once) and finish. 0 if
 * the stream was accepted whole. */
static int read_all(const uint8_t key[32], const uint8_t *in, size_t len, size_t step, out *o) {
    memset(o, 0, sizeof *o);
    o->data = malloc(len + 1);
    km_peerframe_reader *r = km_peerframe_reader_new(key);
    assert_non_null(r);
    km_error err = {{0}};
    int rc = 0;
    for (size_t off = 0; off < len && rc >= 0;) {
        size_t n = step && len - off > step ? step : len - off;
        size_t in_off = 0;
        while (rc >= 0) {
            size_t used;
            const uint8_t *p;
            size_t pl;
            rc = km_peerframe_read(r, in + off + in_off, n - in_off, &used, &p, &pl, &err);
            in_off += used;
            if (rc == KM_PEERFRAME_DATA) {
                memcpy(o->data + o->len, p, pl);
                o->len += pl;
                o->frames++;
            }
            if (rc == KM_PEERFRAME_END) o->ended = true;
            if (rc != KM_PEERFRAME_DATA) break;
        }
        if (rc >= 0) assert_int_equal(in_off, n); /* MORE and END take all they are given */
        off += n;
    }
    if (rc >= 0) rc = km_peerframe_reader_finish(r, &err);
    if (rc < 0) {
        snprintf(o->error, sizeof o->error, "%s", err.msg);
        assert_memory_equal(err.msg, "peer frame: ", 12);
    }
    km_peerframe_reader_free(r);
    return rc < 0 ? -1 : 0;
}

static void expect_refused(const uint8_t *in, size_t len, const char *needle) {
    out o;
    assert_int_equal(read_all(KEY, in, len, 0, &o), -1);
    if (!strstr(o.error, needle)) fail_msg("expected '%s', got '%s'", needle, o.error);
    free(o.data);
}

/* The three KAT frames, written by the writer. */
static size_t write_kat(uint8_t *buf) {
    km_peerframe_writer *w = km_peerframe_writer_new(KEY);
    size_t n = km_peerframe_write(w, (const uint8_t *)"data: hi\n\n", 10, buf);
    n += km_peerframe_write(w, (const uint8_t *)"data: [DONE]\n\n", 14, buf + n);
    n += km_peerframe_write_end(w, buf + n);
    km_peerframe_writer_free(w);
    return n;
}

static void test_known_answer(void **state) {
    (void)state;
    uint8_t buf[256], want[256];
    size_t n = write_kat(buf), wl;
    assert_int_equal(sodium_hex2bin(want, sizeof want, KAT_HEX, strlen(KAT_HEX), NULL, &wl, NULL), 0);
    assert_int_equal(n, wl);
    assert_int_equal(n, 10 + 14 + 3 * KM_PEERFRAME_OVERHEAD);
    assert_memory_equal(buf, want, n);
    out o;
    assert_int_equal(read_all(KEY, buf, n, 0, &o), 0);
    assert_int_equal(o.frames, 2);
    assert_true(o.ended);
    assert_int_equal(o.len, 24);
    assert_memory_equal(o.data, "data: hi\n\ndata: [DONE]\n\n", 24);
    free(o.data);
}

/* Every split of the stream reads the same: byte by byte, and odd sizes. */
static void test_any_split(void **state) {
    (void)state;
    uint8_t buf[256];
    size_t n = write_kat(buf);
    size_t steps[] = {1, 2, 3, 4, 5, 7, 36, 37, 46, 47, 100};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        out o;
        assert_int_equal(read_all(KEY, buf, n, steps[i], &o), 0);
        assert_int_equal(o.frames, 2);
        assert_int_equal(o.len, 24);
        assert_memory_equal(o.data, "data: hi\n\ndata: [DONE]\n\n", 24);
        free(o.data);
    }
}

/* Any single flipped bit, anywhere (length, payload, MAC, end frame): refused. */
static void test_tamper_every_byte(void **state) {
    (void)state;
    uint8_t buf[256];
    size_t n = write_kat(buf);
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 7) {
            buf[i] ^= (uint8_t)(1 << bit);
            out o;
            if (read_all(KEY, buf, n, 0, &o) == 0) fail_msg("accepted a stream with byte %zu changed", i);
            free(o.data);
            buf[i] ^= (uint8_t)(1 << bit);
        }
    }
    /* Another answer's key: the first frame fails. */
    uint8_t other[32];
    memcpy(other, KEY, 32);
    other[0] ^= 1;
    out o;
    assert_int_equal(read_all(other, buf, n, 0, &o), -1);
    assert_int_equal(o.frames, 0);
    assert_non_null(strstr(o.error, "bad frame MAC"));
    free(o.data);
}

static void test_drop_repeat_reorder_truncate(void **state) {
    (void)state;
    uint8_t f[3][64];
    size_t fl[3];
    km_peerframe_writer *w = km_peerframe_writer_new(KEY);
    fl[0] = km_peerframe_write(w, (const uint8_t *)"first", 5, f[0]);
    fl[1] = km_peerframe_write(w, (const uint8_t *)"second", 6, f[1]);
    fl[2] = km_peerframe_write_end(w, f[2]);
    /* the writer refuses after the end, and empty or oversized frames */
    uint8_t scratch[64];
    assert_int_equal(km_peerframe_write(w, (const uint8_t *)"x", 1, scratch), 0);
    assert_int_equal(km_peerframe_write_end(w, scratch), 0);
    km_peerframe_writer_free(w);
    w = km_peerframe_writer_new(KEY);
    assert_int_equal(km_peerframe_write(w, (const uint8_t *)"x", 0, scratch), 0);
    assert_int_equal(km_peerframe_write(w, scratch, KM_PEERFRAME_MAX + 1, scratch), 0);
    km_peerframe_writer_free(w);

    uint8_t s[256];
    size_t n;
#define CAT(...)                                                                                                       \
    do {                                                                                                               \
        int order[] = {__VA_ARGS__};                                                                                   \
        n = 0;                                                                                                         \
        for (size_t k = 0; k < sizeof order / sizeof *order; k++) {                                                    \
            memcpy(s + n, f[order[k]], fl[order[k]]);                                                                  \
            n += fl[order[k]];                                                                                         \
        }                                                                                                              \
    } while (0)
    CAT(0, 1, 2);
    out o;
    assert_int_equal(read_all(KEY, s, n, 0, &o), 0);
    assert_int_equal(o.len, 11);
    assert_memory_equal(o.data, "firstsecond", 11);
    free(o.data);
    CAT(1, 2); /* first dropped */
    expect_refused(s, n, "bad frame MAC");
    CAT(0, 2); /* second dropped: the end no longer chains */
    expect_refused(s, n, "bad frame MAC");
    CAT(1, 0, 2); /* reordered */
    expect_refused(s, n, "bad frame MAC");
    CAT(0, 0, 1, 2); /* repeated */
    expect_refused(s, n, "bad frame MAC");
    CAT(0, 1); /* truncated: no end frame */
    expect_refused(s, n, "truncated");
    /* ... the bytes read so far were the genuine ones */
    assert_int_equal(read_all(KEY, s, n, 0, &o), -1);
    assert_int_equal(o.frames, 2);
    free(o.data);
    CAT(0, 1, 2, 2); /* bytes after the end */
    expect_refused(s, n, "bytes after the end frame");
    expect_refused(s, n - 1, "bytes after the end frame");
    CAT(0, 1, 2);
    expect_refused(s, n - 1, "truncated"); /* cut inside the end frame */
    expect_refused(s, 0, "truncated");     /* nothing at all */
#undef CAT
}

/* A length over the limit is refused from its 4 bytes, before any payload
 * is awaited; a refused reader refuses everything after. */
static void test_oversized_and_sticky(void **state) {
    (void)state;
    uint8_t hdr[4];
    km_put_u32(hdr, KM_PEERFRAME_MAX + 1);
    km_peerframe_reader *r = km_peerframe_reader_new(KEY);
    size_t used;
    const uint8_t *p;
    size_t pl;
    km_error err = {{0}};
    assert_int_equal(km_peerframe_read(r, hdr, 4, &used, &p, &pl, &err), -1);
    assert_string_equal(err.msg, "peer frame: frame longer than the limit");
    uint8_t good[256];
    size_t n = write_kat(good);
    assert_int_equal(km_peerframe_read(r, good, n, &used, &p, &pl, &err), -1);
    assert_string_equal(err.msg, "peer frame: the stream was refused already");
    assert_int_equal(km_peerframe_reader_finish(r, &err), -1);
    assert_string_equal(err.msg, "peer frame: the stream was refused");
    km_peerframe_reader_free(r);
    km_put_u32(hdr, 0xffffffffu);
    expect_refused(hdr, 4, "longer than the limit");
}

/* seal: a whole body in frames of at most KM_PEERFRAME_MAX; empty -> the end alone. */
static void test_seal(void **state) {
    (void)state;
    uint8_t *framed;
    size_t fl;
    assert_int_equal(km_peerframe_seal(KEY, NULL, 0, &framed, &fl), 0);
    assert_int_equal(fl, KM_PEERFRAME_OVERHEAD);
    out o;
    assert_int_equal(read_all(KEY, framed, fl, 0, &o), 0);
    assert_int_equal(o.frames, 0);
    assert_true(o.ended);
    free(o.data);
    free(framed);
    size_t big = 2 * KM_PEERFRAME_MAX + 5;
    uint8_t *body = malloc(big);
    for (size_t i = 0; i < big; i++) body[i] = (uint8_t)(i * 7);
    assert_int_equal(km_peerframe_seal(KEY, body, big, &framed, &fl), 0);
    assert_int_equal(fl, big + 4 * KM_PEERFRAME_OVERHEAD); /* 3 data frames + the end */
    assert_int_equal(read_all(KEY, framed, fl, 1000, &o), 0);
    assert_int_equal(o.frames, 3);
    assert_int_equal(o.len, big);
    assert_memory_equal(o.data, body, big);
    free(o.data);
    free(framed);
    free(body);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_any_split),
        cmocka_unit_test(test_tamper_every_byte),
        cmocka_unit_test(test_drop_repeat_reorder_truncate),
        cmocka_unit_test(test_oversized_and_sticky),
        cmocka_unit_test(test_seal),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
