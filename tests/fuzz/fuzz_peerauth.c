/* fuzz_peerauth.c -- libFuzzer target for the peer-auth header parsers
 * (km_peerauth_verify_request, km_peerauth_verify_response and the request
 * parse inside km_peerauth_sign_response). Built and run by tests/fuzz/run.sh.
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
#define REQ "v1 1718000000000 000102030405060708090a0b0c0d0e0f " \
            "69bf417f5b11d43b21f80adaea700c8193d266a8a6cde356fff2fa693c14b552"
#define RESP "v1 65ca1a8ddc1a3226e2f9a7942ab7ef6f6ef49b597328075d31aa6e3798d552bd"
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
    int rc = km_peerauth_verify_request(a, METHOD, PATH, (const uint8_t *)BODY, strlen(BODY), h, &err);
    if (rc == 0) {
        if (strcmp(h, REQ) != 0) abort(); /* accepted something not genuine */
        /* ... and at once a replay. */
        rc = km_peerauth_verify_request(a, METHOD, PATH, (const uint8_t *)BODY, strlen(BODY), h, &err);
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

    /* As the request header an answer is signed for: when that parses, the
     * answer must verify against it. */
    char out[KM_PEERAUTH_HEADER_MAX];
    if (km_peerauth_sign_response(a, h, STATUS, (const uint8_t *)RESP_BODY, strlen(RESP_BODY), out, sizeof out) == 0) {
        if (km_peerauth_verify_response(a, h, STATUS, (const uint8_t *)RESP_BODY, strlen(RESP_BODY), out, &err) != 0)
            abort();
        if (strlen(out) != 67) abort();
    }
    km_peerauth_free(a);
}

/* Input: [mode][length change][(offset, byte) pairs ...] applied to REQ or
 * RESP (mode bit 1). */
static void edited(const uint8_t *data, size_t size) {
    const char *base = (data[0] & 2) ? RESP : REQ;
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
