/* fuzz_peerauth.c -- libFuzzer target for the peer-auth header parsers
 * (km_peerauth_verify_request, km_peerauth_verify_response,
 * km_peerauth_verify_stream -- the head of a forwarded answer -- and the
 * request parse inside km_peerauth_sign_response and km_peerauth_sign_stream).
 * Built and run by tests/fuzz/run.sh.
 *
 * Properties checked on every input: no fault; a rejection always says why,
 * in the module's voice ("peer auth: ..."); and nothing is accepted but the
 * one genuine header. The clock is fixed and the genuine request and answer
 * are the known-answer pair of tests/test_peerauth.c, so a header has exactly
 * one accepted spelling (strict, canonical parsing) and any other accepted
 * string would be a forgery or a second spelling.
 *
 * Random bytes rarely get a timestamp inside the window, so half the inputs
 * edit the genuine header instead (overwrite bytes, shorten or lengthen it):
 * that reaches the MAC and replay checks behind the parser. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peerauth.h"

#define SECRET "0123456789abcdef0123456789abcdef"
#define NOW 1718000001234LL
#define METHOD "POST"
#define PATH "/peer/state?key=00ff"
#define BODY "hello"
#define TARGET "a1b2c3d4e5f60718"
#define REQ "v2 1718000000000 000102030405060708090a0b0c0d0e0f " \
            "5d4607c7504068b03d841cb149026222e79829f12f4524eb0aee7854f0dfd94f"
#define RESP "v2 7a321dd427f8da394c63f84c9b1dd32baf9bf905b27d3d3a9595a079e126228f"
#define STREAM "v2 cc6938faddef3d4418bb30750038161698e7d12c2e03ee2ad5c32024b84a3d84"
#define STREAM_TYPE "text/event-stream"
#define STATUS 200
#define RESP_BODY "blob"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int64_t fixed_now(void *ud) {
    (void)ud;
    return NOW;
}

static void check_rejection(int rc, const km_error *err) {
    if (rc != -1) abort();
    if (strncmp(err->msg, "peer auth: ", 11) != 0) abort(); /* every rejection says why */
}

/* h: a NUL-terminated candidate for either header. */
static void check(const char *h) {
    km_error err;
    km_peerauth *a = km_peerauth_new((const uint8_t *)SECRET, strlen(SECRET), 30000, &err);
    if (!a) abort();
    km_peerauth_set_clock(a, fixed_now, NULL);

    /* As a request header. A fresh verifier per input, so the genuine one is
     * not a replay. */
    err.msg[0] = 0;
    int rc = km_peerauth_verify_request(a, TARGET, true, METHOD, PATH, (const uint8_t *)BODY, strlen(BODY), h, &err);
    if (rc == 0) {
        if (strcmp(h, REQ) != 0) abort(); /* accepted something not genuine */
        /* ... and at once a replay. */
        rc = km_peerauth_verify_request(a, TARGET, true, METHOD, PATH, (const uint8_t *)BODY, strlen(BODY), h, &err);
        if (rc != -1 || !strstr(err.msg, "replayed nonce")) abort();
    } else {
        check_rejection(rc, &err);
        if (strcmp(h, REQ) == 0) abort(); /* rejected the genuine one */
    }

    /* As a response header to the genuine request. */
    err.msg[0] = 0;
    rc = km_peerauth_verify_response(a, REQ, STATUS, (const uint8_t *)RESP_BODY, strlen(RESP_BODY), h, &err);
    if (rc == 0) {
        if (strcmp(h, RESP) != 0) abort();
    } else {
        check_rejection(rc, &err);
        if (strcmp(h, RESP) == 0) abort();
    }

    /* As the head of a framed answer to the genuine request. */
    uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN], key2[KM_PEERAUTH_STREAM_KEY_LEN];
    err.msg[0] = 0;
    rc = km_peerauth_verify_stream(a, REQ, STATUS, STREAM_TYPE, h, key, &err);
    if (rc == 0) {
        if (strcmp(h, STREAM) != 0) abort();
    } else {
        check_rejection(rc, &err);
        if (strcmp(h, STREAM) == 0) abort();
    }

    /* As the request header an answer is signed for: when that parses, the
     * answer must verify against it (whole, or as a framed stream's head). */
    char out[KM_PEERAUTH_HEADER_MAX];
    if (km_peerauth_sign_response(a, h, STATUS, (const uint8_t *)RESP_BODY, strlen(RESP_BODY), out, sizeof out) == 0) {
        if (km_peerauth_verify_response(a, h, STATUS, (const uint8_t *)RESP_BODY, strlen(RESP_BODY), out, &err) != 0)
            abort();
        if (strlen(out) != 67) abort();
        if (km_peerauth_sign_stream(a, h, STATUS, STREAM_TYPE, out, sizeof out, key) != 0) abort();
        if (km_peerauth_verify_stream(a, h, STATUS, STREAM_TYPE, out, key2, &err) != 0) abort();
        if (memcmp(key, key2, sizeof key) != 0) abort();
    } else if (km_peerauth_sign_stream(a, h, STATUS, STREAM_TYPE, out, sizeof out, key) == 0) {
        abort(); /* the two signers parse alike */
    }
    km_peerauth_free(a);
}

/* Input: [mode][length change][(offset, byte) pairs ...] applied to REQ,
 * RESP or STREAM (mode bits 1-2). */
static void edited(const uint8_t *data, size_t size) {
    const char *bases[] = {REQ, RESP, STREAM, REQ};
    const char *base = bases[(data[0] >> 1) & 3];
    size_t blen = strlen(base);
    size_t len = blen;
    if (size >= 2) {
        int delta = (int)(data[1] % 9) - 4; /* -4 .. +4 */
        len = (size_t)((int)blen + delta);
    }
    char *h = malloc(len + 1);
    if (!h) abort();
    memset(h, '0', len);
    memcpy(h, base, len < blen ? len : blen);
    h[len] = 0;
    for (size_t i = 2; i + 2 <= size; i += 2)
        if (len) h[data[i] % len] = (char)data[i + 1];
    check(h);
    free(h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 0 && (data[0] & 1)) {
        edited(data, size);
        return 0;
    }
    /* Raw bytes (after the mode byte), NUL-terminated in a buffer of exactly
     * that size, so ASan sees any read past the end. */
    size_t n = size ? size - 1 : 0;
    char *h = malloc(n + 1);
    if (!h) abort();
    if (n) memcpy(h, data + 1, n);
    h[n] = 0;
    check(h);
    free(h);
    return 0;
}
