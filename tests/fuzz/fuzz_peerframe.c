/* fuzz_peerframe.c -- libFuzzer target for the framed answer stream
 * (peerframe.h): km_peerframe_read on untrusted bytes. Built and run by
 * tests/fuzz/run.sh.
 *
 * Properties checked on every input: no fault; a rejection says why, in the
 * module's voice ("peer frame: "); reading is the same whatever the split
 * (whole, byte by byte, in the input's own piece sizes); and what is
 * accepted is genuine: re-framing the payloads that came out, frame by
 * frame, under the key gives back exactly the bytes that went in (a forgery
 * or a second spelling would differ). The key is fixed, so accepted inputs
 * can only be the genuine streams; half the inputs are therefore edits of
 * a genuine stream (bytes overwritten, cut or appended), which reaches the
 * MAC checks, the chaining and the end-of-stream rules. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peerframe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t KEY[KM_PEERFRAME_KEY_LEN] = "0123456789abcdef0123456789abcde";

typedef struct result {
    int rc;          /* 0 accepted whole, -1 refused */
    uint8_t *out;    /* the payloads, re-framed as they came */
    size_t out_len;
    size_t payload;  /* payload bytes read */
} result;

/* Read in (len bytes) in pieces of step (0: whole) and finish. */
static result read_stream(const uint8_t *in, size_t len, size_t step) {
    result res = {0, malloc(len + KM_PEERFRAME_OVERHEAD), 0, 0};
    if (!res.out) abort();
    km_peerframe_reader *r = km_peerframe_reader_new(KEY);
    km_peerframe_writer *w = km_peerframe_writer_new(KEY);
    if (!r || !w) abort();
    km_error err;
    err.msg[0] = 0;
    int rc = 0;
    bool ended = false;
    for (size_t off = 0; off < len && rc >= 0;) {
        size_t n = step && len - off > step ? step : len - off, taken = 0;
        do {
            size_t used;
            const uint8_t *p;
            size_t pl;
            rc = km_peerframe_read(r, in + off + taken, n - taken, &used, &p, &pl, &err);
            if (used > n - taken) abort();
            taken += used;
            if (rc == KM_PEERFRAME_DATA) {
                if (pl == 0 || pl > KM_PEERFRAME_MAX || res.out_len + pl + KM_PEERFRAME_OVERHEAD > len) abort();
                res.out_len += km_peerframe_write(w, p, pl, res.out + res.out_len);
                res.payload += pl;
            }
            if (rc == KM_PEERFRAME_END) {
                if (ended) abort();
                ended = true;
                res.out_len += km_peerframe_write_end(w, res.out + res.out_len);
            }
        } while (rc == KM_PEERFRAME_DATA);
        if (rc >= 0 && taken != n) abort(); /* MORE and END take all they are given */
        off += n;
    }
    if (rc >= 0) rc = km_peerframe_reader_finish(r, &err);
    if (rc < 0) {
        if (strncmp(err.msg, "peer frame: ", 12) != 0) abort();
        if (km_peerframe_reader_finish(r, &err) == 0) abort(); /* refused stays refused */
    } else if (!ended) {
        abort();
    }
    km_peerframe_reader_free(r);
    km_peerframe_writer_free(w);
    res.rc = rc < 0 ? -1 : 0;
    return res;
}

static void check(const uint8_t *in, size_t len, size_t step) {
    result whole = read_stream(in, len, 0), bytes = read_stream(in, len, 1), pieces = read_stream(in, len, step);
    if (whole.rc != bytes.rc || whole.rc != pieces.rc) abort();
    if (whole.payload != bytes.payload || whole.payload != pieces.payload) abort();
    if (whole.rc == 0 && (whole.out_len != len || memcmp(whole.out, in, len) != 0)) abort();
    free(whole.out);
    free(bytes.out);
    free(pieces.out);
}

/* A genuine stream of three frames and the end (payloads from the input). */
static size_t genuine(uint8_t *buf, const uint8_t *seed, size_t n) {
    km_peerframe_writer *w = km_peerframe_writer_new(KEY);
    if (!w) abort();
    size_t o = 0;
    for (size_t i = 0; i < 3; i++) {
        uint8_t p[16];
        size_t pl = 1 + (n ? seed[i % n] % 16 : i);
        for (size_t k = 0; k < pl; k++) p[k] = (uint8_t)(n ? seed[(i + k) % n] : k);
        o += km_peerframe_write(w, p, pl < sizeof p ? pl : sizeof p, buf + o);
    }
    o += km_peerframe_write_end(w, buf + o);
    km_peerframe_writer_free(w);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t step = 1 + data[0] % 64;
    if (data[0] & 0x80) { /* edit a genuine stream: [mode][len change][(offset, byte) pairs] */
        uint8_t buf[4 * (16 + KM_PEERFRAME_OVERHEAD) + 8];
        size_t n = genuine(buf, data, size > 8 ? 8 : size);
        if (size >= 2) {
            int delta = (int)(data[1] % 17) - 8; /* cut or append up to 8 bytes */
            if (delta < 0 && (size_t)-delta <= n) n -= (size_t)-delta;
            for (int i = 0; i < delta; i++) buf[n++] = (uint8_t)i;
        }
        for (size_t i = 2; i + 2 <= size; i += 2)
            if (n) buf[data[i] % n] = data[i + 1];
        uint8_t *copy = malloc(n ? n : 1); /* exactly n bytes: ASan sees reads past them */
        if (!copy) abort();
        memcpy(copy, buf, n);
        check(copy, n, step);
        free(copy);
        return 0;
    }
    uint8_t *copy = malloc(size - 1 ? size - 1 : 1);
    if (!copy) abort();
    memcpy(copy, data + 1, size - 1);
    check(copy, size - 1, step);
    free(copy);
    return 0;
}
