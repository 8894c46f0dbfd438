/* test_peerauth.c -- peer authentication: the documented MAC encoding (checked
 * against values computed independently with Python's hmac), every field of a
 * request bound, strict header parsing, the time window, the replay cache
 * (replays, expiry, its bound, concurrent verifiers), answers bound to their
 * request, and the secret file checks. Time comes from a fake clock. */
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peerauth.h"
#include "testutil.h"

#define SECRET "0123456789abcdef0123456789abcdef" /* 32 bytes */
#define OTHER_SECRET "0123456789abcdef0123456789abcdeF"
#define T0 1718000000000LL
#define W 30000
#define NODE "a1b2c3d4e5f60718" /* the id of the node requests are for */
#define OTHER_NODE "a1b2c3d4e5f60719"

typedef struct fake_clock {
    int64_t now;
} fake_clock;

static int64_t fake_now(void *ud) { return ((fake_clock *)ud)->now; }

static km_peerauth *new_auth(const char *secret, fake_clock *clk, int window_ms) {
    km_error err = {{0}};
    km_peerauth *a = km_peerauth_new((const uint8_t *)secret, strlen(secret), window_ms, &err);
    if (!a) fail_msg("km_peerauth_new: %s", err.msg);
    if (clk) km_peerauth_set_clock(a, fake_now, clk);
    return a;
}

static void sign(km_peerauth *a, const char *method, const char *path, const char *body, char *out) {
    int rc = km_peerauth_sign_request(a, NODE, method, path, (const uint8_t *)body, body ? strlen(body) : 0, out,
                                      KM_PEERAUTH_HEADER_MAX);
    assert_int_equal(rc, 0);
}

static void expect_ok(km_peerauth *a, const char *method, const char *path, const char *body, const char *h) {
    km_error err = {{0}};
    if (km_peerauth_verify_request(a, NODE, false, method, path, (const uint8_t *)body, body ? strlen(body) : 0, h, &err) != 0)
        fail_msg("verify rejected a good request: %s", err.msg);
}

/* Rejected, and the message says exactly why (needle) in the module's voice. */
static void expect_reject(km_peerauth *a, const char *method, const char *path, const char *body, const char *h,
                          const char *needle) {
    km_error err = {{0}};
    int rc = km_peerauth_verify_request(a, NODE, false, method, path, (const uint8_t *)body, body ? strlen(body) : 0, h, &err);
    if (rc != -1) fail_msg("verify accepted a bad request (expected '%s') header=[%s]", needle, h ? h : "(null)");
    if (strncmp(err.msg, "peer auth: ", 11) != 0 || !strstr(err.msg, needle))
        fail_msg("expected an error with '%s', got '%s'", needle, err.msg);
}

/* The three variable fields of a request header. */
typedef struct parts {
    long long ts;
    char nonce[33];
    char mac[65];
} parts;

static parts split_hdr(const char *h) {
    parts p;
    memset(&p, 0, sizeof p);
    assert_int_equal(sscanf(h, "v2 %lld %32s %64s", &p.ts, p.nonce, p.mac), 3);
    assert_int_equal(strlen(p.nonce), 32);
    assert_int_equal(strlen(p.mac), 64);
    return p;
}

static void join_hdr(char *out, const parts *p) {
    snprintf(out, KM_PEERAUTH_HEADER_MAX, "v2 %lld %s %s", p->ts, p->nonce, p->mac);
}

static void flip_hex(char *c) { *c = *c == '0' ? '1' : '0'; }

static bool is_lower_hex(const char *s) {
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return false;
    return true;
}

/* ---------------------------------------------------------- the encoding */

static void test_sign_verify(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    sign(a, "POST", "/peer/state?key=00ff", "hello", h);
    /* "v2 <ms> <32 hex> <64 hex>": 3 + 13 + 1 + 32 + 1 + 64 characters. */
    assert_int_equal(strlen(h), 114);
    parts p = split_hdr(h);
    assert_int_equal(p.ts, T0);
    assert_true(is_lower_hex(p.nonce));
    assert_true(is_lower_hex(p.mac));
    expect_ok(a, "POST", "/peer/state?key=00ff", "hello", h);
    assert_int_equal(km_peerauth_cache_count(a), 1);

    /* The MAC is the documented one: recompute it from the header's fields
     * with one-shot HMAC over a hand-built message. */
    uint8_t nonce[16], mac[32], want[32], digest[32], msg[256];
    size_t n = 0;
    assert_int_equal(sodium_hex2bin(nonce, 16, p.nonce, 32, NULL, NULL, NULL), 0);
    assert_int_equal(sodium_hex2bin(mac, 32, p.mac, 64, NULL, NULL, NULL), 0);
    const char *strs[] = {"kvmesh-peer-request-v2", NODE, "POST", "/peer/state?key=00ff"};
    for (int i = 0; i < 4; i++) {
        km_put_u64(msg + n, strlen(strs[i]));
        memcpy(msg + n + 8, strs[i], strlen(strs[i]));
        n += 8 + strlen(strs[i]);
    }
    km_put_u64(msg + n, (uint64_t)T0);
    n += 8;
    memcpy(msg + n, nonce, 16);
    n += 16;
    crypto_hash_sha256(digest, (const uint8_t *)"hello", 5);
    memcpy(msg + n, digest, 32);
    n += 32;
    crypto_auth_hmacsha256(want, msg, n, (const uint8_t *)SECRET);
    assert_memory_equal(mac, want, 32);

    /* Two signatures of the same request differ (fresh nonce), both verify once. */
    char h2[KM_PEERAUTH_HEADER_MAX];
    sign(a, "POST", "/peer/state?key=00ff", "hello", h2);
    assert_string_not_equal(h, h2);
    expect_ok(a, "POST", "/peer/state?key=00ff", "hello", h2);
    /* No body: NULL and an empty body are the same request. */
    sign(a, "GET", "/peer/catalog", NULL, h);
    expect_ok(a, "GET", "/peer/catalog", "", h);
    assert_int_equal(km_peerauth_cache_count(a), 3);
    km_peerauth_free(a);
}

/* Values computed independently (Python hmac/hashlib, the header's encoding):
 * secret SECRET, target NODE, POST /peer/state?key=00ff, body "hello", ts
 * 1718000000000, nonce 00 01 .. 0f; the answer: status 200, body "blob";
 * the same request for target "" (KAT_REQ_UNTARGETED); its answer as a
 * framed stream: status 200, type text/event-stream (KAT_STREAM, and the
 * frames' key KAT_STREAM_KEY). */
#define KAT_REQ "v2 1718000000000 000102030405060708090a0b0c0d0e0f " \
                "5d4607c7504068b03d841cb149026222e79829f12f4524eb0aee7854f0dfd94f"
#define KAT_RESP "v2 7a321dd427f8da394c63f84c9b1dd32baf9bf905b27d3d3a9595a079e126228f"
#define KAT_REQ_UNTARGETED "v2 1718000000000 000102030405060708090a0b0c0d0e0f " \
                           "6c42d07d5a021f76c7add041dc18554259a692e8cf8d088e9f0b02851534da62"
#define KAT_STREAM "v2 cc6938faddef3d4418bb30750038161698e7d12c2e03ee2ad5c32024b84a3d84"
#define KAT_STREAM_KEY "b7619ad5b1cba8a379e2ee4c1ad0ea3d1612b001d62d386ea29f65121d97357e"

static void test_known_answer(void **state) {
    (void)state;
    fake_clock clk = {T0 + 1234};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    expect_ok(a, "POST", "/peer/state?key=00ff", "hello", KAT_REQ);
    char r[KM_PEERAUTH_HEADER_MAX];
    assert_int_equal(km_peerauth_sign_response(a, KAT_REQ, 200, (const uint8_t *)"blob", 4, r, sizeof r), 0);
    assert_string_equal(r, KAT_RESP);
    km_error err = {{0}};
    assert_int_equal(km_peerauth_verify_response(a, KAT_REQ, 200, (const uint8_t *)"blob", 4, KAT_RESP, &err), 0);

    uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN], key2[KM_PEERAUTH_STREAM_KEY_LEN];
    char key_hex[2 * KM_PEERAUTH_STREAM_KEY_LEN + 1];
    assert_int_equal(km_peerauth_sign_stream(a, KAT_REQ, 200, "text/event-stream", r, sizeof r, key), 0);
    assert_string_equal(r, KAT_STREAM);
    sodium_bin2hex(key_hex, sizeof key_hex, key, sizeof key);
    assert_string_equal(key_hex, KAT_STREAM_KEY);
    assert_int_equal(km_peerauth_verify_stream(a, KAT_REQ, 200, "text/event-stream", KAT_STREAM, key2, &err), 0);
    assert_memory_equal(key, key2, sizeof key);
    km_peerauth_free(a);

    /* The untargeted spelling: only where the receiver allows it. */
    a = new_auth(SECRET, &clk, W);
    expect_reject(a, "POST", "/peer/state?key=00ff", "hello", KAT_REQ_UNTARGETED, "another node");
    assert_int_equal(km_peerauth_verify_request(a, NODE, true, "POST", "/peer/state?key=00ff", (const uint8_t *)"hello",
                                                5, KAT_REQ_UNTARGETED, &err),
                     0);
    km_peerauth_free(a);
}

/* A request is for one node: signed for NODE, it is refused by any other
 * node within the window (before, a captured request was accepted once by
 * every node of the mesh), and untargeted_ok does not widen that. */
static void test_target_bound(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W), *b = new_auth(SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    sign(a, "GET", "/peer/v1/catalog", NULL, h); /* for NODE */
    km_error err = {{0}};
    assert_int_equal(km_peerauth_verify_request(b, OTHER_NODE, false, "GET", "/peer/v1/catalog", NULL, 0, h, &err), -1);
    assert_non_null(strstr(err.msg, "bad MAC (wrong mesh secret, a request meant for another node"));
    assert_int_equal(km_peerauth_verify_request(b, OTHER_NODE, true, "GET", "/peer/v1/catalog", NULL, 0, h, &err), -1);
    assert_int_equal(km_peerauth_verify_request(b, "", false, "GET", "/peer/v1/catalog", NULL, 0, h, &err), -1);
    assert_int_equal(km_peerauth_cache_count(b), 0); /* refused before the replay cache */
    assert_int_equal(km_peerauth_verify_request(b, NODE, false, "GET", "/peer/v1/catalog", NULL, 0, h, &err), 0);

    /* Untargeted: refused unless allowed, accepted once when allowed. */
    assert_int_equal(km_peerauth_sign_request(a, "", "POST", "/peer/v1/gossip", (const uint8_t *)"{}", 2, h, sizeof h),
                     0);
    assert_int_equal(km_peerauth_verify_request(b, NODE, false, "POST", "/peer/v1/gossip", (const uint8_t *)"{}", 2, h,
                                                &err),
                     -1);
    assert_non_null(strstr(err.msg, "another node"));
    assert_int_equal(km_peerauth_verify_request(b, NODE, true, "POST", "/peer/v1/gossip", (const uint8_t *)"{}", 2, h,
                                                &err),
                     0);
    assert_int_equal(km_peerauth_verify_request(b, OTHER_NODE, true, "POST", "/peer/v1/gossip", (const uint8_t *)"{}", 2,
                                                h, &err),
                     -1);
    assert_non_null(strstr(err.msg, "replayed nonce"));
    /* No target at all is a caller's error. */
    assert_int_equal(km_peerauth_sign_request(a, NULL, "GET", "/p", NULL, 0, h, sizeof h), -1);
    assert_int_equal(km_peerauth_verify_request(b, NULL, false, "GET", "/p", NULL, 0, h, &err), -1);
    km_peerauth_free(a);
    km_peerauth_free(b);
}

/* A framed answer's head binds status and type to the request; the frames'
 * key is the answer's own; the head is no buffered-answer header. */
static void test_stream_head(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *server = new_auth(SECRET, &clk, W), *client = new_auth(SECRET, &clk, W);
    km_peerauth *stranger = new_auth(OTHER_SECRET, &clk, W);
    char req[KM_PEERAUTH_HEADER_MAX], req2[KM_PEERAUTH_HEADER_MAX], head[KM_PEERAUTH_HEADER_MAX];
    sign(client, "POST", "/v1/completions", "{}", req);
    sign(client, "POST", "/v1/completions", "{}", req2);
    uint8_t key[32], got[32], other[32];
    assert_int_equal(km_peerauth_sign_stream(server, req, 200, "application/json", head, sizeof head, key), 0);
    km_error err = {{0}};
    assert_int_equal(km_peerauth_verify_stream(client, req, 200, "application/json", head, got, &err), 0);
    assert_memory_equal(key, got, 32);
    assert_int_equal(km_peerauth_verify_stream(client, req, 400, "application/json", head, got, &err), -1);
    assert_non_null(strstr(err.msg, "bad response MAC"));
    assert_int_equal(km_peerauth_verify_stream(client, req, 200, "text/event-stream", head, got, &err), -1);
    assert_int_equal(km_peerauth_verify_stream(client, req2, 200, "application/json", head, got, &err), -1);
    assert_int_equal(km_peerauth_verify_stream(stranger, req, 200, "application/json", head, got, &err), -1);
    assert_int_equal(km_peerauth_verify_stream(client, req, 200, "application/json", NULL, got, &err), -1);
    assert_non_null(strstr(err.msg, "missing"));
    /* a buffered answer's header for the same request is not a stream head, nor the reverse */
    char resp[KM_PEERAUTH_HEADER_MAX];
    assert_int_equal(km_peerauth_sign_response(server, req, 200, NULL, 0, resp, sizeof resp), 0);
    assert_int_equal(km_peerauth_verify_stream(client, req, 200, "", resp, got, &err), -1);
    assert_int_equal(km_peerauth_verify_response(client, req, 200, NULL, 0, head, &err), -1);
    /* another request, another key */
    assert_int_equal(km_peerauth_sign_stream(server, req2, 200, "application/json", head, sizeof head, other), 0);
    assert_memory_not_equal(key, other, 32);
    assert_int_equal(km_peerauth_sign_stream(server, "v2 x", 200, "application/json", head, sizeof head, other), -1);
    assert_int_equal(km_peerauth_sign_stream(server, req, 200, NULL, head, sizeof head, other), -1);
    km_peerauth_free(server);
    km_peerauth_free(client);
    km_peerauth_free(stranger);
}

/* ---------------------------------------------------- what a MAC binds */

static void test_tampered_fields(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    const char *body = "{\"key\":\"0a1b\",\"want\":\"state\"}";
    char h[KM_PEERAUTH_HEADER_MAX], t[KM_PEERAUTH_HEADER_MAX];
    sign(a, "POST", "/peer/state?key=0a1b", body, h);

    expect_reject(a, "PUT", "/peer/state?key=0a1b", body, h, "bad MAC");
    expect_reject(a, "POST", "/peer/state?key=0a1c", body, h, "bad MAC");  /* query */
    expect_reject(a, "POST", "/peer/states?key=0a1b", body, h, "bad MAC"); /* path */
    char b2[64];
    snprintf(b2, sizeof b2, "%s", body);
    b2[9] ^= 1; /* one bit of one byte */
    expect_reject(a, "POST", "/peer/state?key=0a1b", b2, h, "bad MAC");
    expect_reject(a, "POST", "/peer/state?key=0a1b", "", h, "bad MAC");
    /* Length-prefixed fields: moving a byte between method and path is not the
     * same message (plain concatenation would give "POST/peer..." both times). */
    expect_reject(a, "POS", "T/peer/state?key=0a1b", body, h, "bad MAC");

    parts p = split_hdr(h);
    parts q = p;
    q.ts += 1; /* still inside the window */
    join_hdr(t, &q);
    expect_reject(a, "POST", "/peer/state?key=0a1b", body, t, "bad MAC");
    q = p;
    flip_hex(&q.nonce[31]);
    join_hdr(t, &q);
    expect_reject(a, "POST", "/peer/state?key=0a1b", body, t, "bad MAC");
    q = p;
    flip_hex(&q.mac[0]);
    join_hdr(t, &q);
    expect_reject(a, "POST", "/peer/state?key=0a1b", body, t, "bad MAC");
    q = p;
    flip_hex(&q.mac[63]);
    join_hdr(t, &q);
    expect_reject(a, "POST", "/peer/state?key=0a1b", body, t, "bad MAC");

    /* None of the forgeries burnt the nonce: the genuine request still passes. */
    assert_int_equal(km_peerauth_cache_count(a), 0);
    expect_ok(a, "POST", "/peer/state?key=0a1b", body, h);
    km_peerauth_free(a);
}

static void test_wrong_secret(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W), *b = new_auth(OTHER_SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    sign(b, "GET", "/peer/catalog", NULL, h);
    expect_reject(a, "GET", "/peer/catalog", NULL, h, "bad MAC (wrong mesh secret, a request meant for another node, or the request was altered)");
    /* A longer secret with the same prefix is a different key too. */
    km_peerauth *c = new_auth(SECRET "x", &clk, W);
    expect_reject(c, "GET", "/peer/catalog", NULL, h, "bad MAC");
    expect_ok(b, "GET", "/peer/catalog", NULL, h);
    km_peerauth_free(c);
    km_peerauth_free(b);
    km_peerauth_free(a);
}

/* ------------------------------------------------------------ the window */

static void test_timestamp_window(void **state) {
    (void)state;
    fake_clock sclk = {T0}, vclk = {T0};
    km_peerauth *s = new_auth(SECRET, &sclk, W), *v = new_auth(SECRET, &vclk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    const struct {
        int64_t skew; /* signer clock - verifier clock */
        const char *needle;
    } cases[] = {
        {-41000, "peer auth: timestamp 41 s in the past, outside the 30 s window"},
        {41000, "peer auth: timestamp 41 s in the future, outside the 30 s window"},
        {-30001, "timestamp 30.001 s in the past"},
        {30001, "timestamp 30.001 s in the future"},
        {-3600000, "timestamp 3600 s in the past"},
        {-30000, NULL}, /* the edges are inside */
        {30000, NULL},
        {-29999, NULL},
        {0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sclk.now = T0 + cases[i].skew;
        sign(s, "GET", "/peer/catalog", NULL, h);
        if (cases[i].needle) expect_reject(v, "GET", "/peer/catalog", NULL, h, cases[i].needle);
        else expect_ok(v, "GET", "/peer/catalog", NULL, h);
    }
    /* A timestamp of 15 nines parses, and is merely far in the future. */
    char t[KM_PEERAUTH_HEADER_MAX];
    parts p = split_hdr(h);
    p.ts = 999999999999999LL;
    join_hdr(t, &p);
    expect_reject(v, "GET", "/peer/catalog", NULL, t, "in the future, outside the 30 s window");
    km_peerauth_free(v);
    km_peerauth_free(s);
}

static void test_default_window(void **state) {
    (void)state;
    const int windows[] = {0, -5};
    for (int i = 0; i < 2; i++) {
        fake_clock sclk = {T0 - 29500}, vclk = {T0};
        km_peerauth *s = new_auth(SECRET, &sclk, windows[i]), *v = new_auth(SECRET, &vclk, windows[i]);
        char h[KM_PEERAUTH_HEADER_MAX];
        sign(s, "GET", "/x", NULL, h);
        expect_ok(v, "GET", "/x", NULL, h);
        sclk.now = T0 - 30500;
        sign(s, "GET", "/x", NULL, h);
        expect_reject(v, "GET", "/x", NULL, h, "timestamp 30.5 s in the past, outside the 30 s window");
        km_peerauth_free(v);
        km_peerauth_free(s);
    }
    /* A short window prints as such. */
    fake_clock sclk = {T0 - 2000}, vclk = {T0};
    km_peerauth *s = new_auth(SECRET, &sclk, 1500), *v = new_auth(SECRET, &vclk, 1500);
    char h[KM_PEERAUTH_HEADER_MAX];
    sign(s, "GET", "/x", NULL, h);
    expect_reject(v, "GET", "/x", NULL, h, "timestamp 2 s in the past, outside the 1.5 s window");
    km_peerauth_free(v);
    km_peerauth_free(s);
}

/* ---------------------------------------------------------- replay cache */

static void test_replay(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    sign(a, "POST", "/peer/gossip", "{}", h);
    expect_ok(a, "POST", "/peer/gossip", "{}", h);
    expect_reject(a, "POST", "/peer/gossip", "{}", h, "replayed nonce");
    /* Still a replay at the last instant its timestamp is accepted ... */
    clk.now = T0 + W;
    expect_reject(a, "POST", "/peer/gossip", "{}", h, "replayed nonce");
    /* ... and refused by the window one ms later. */
    clk.now = T0 + W + 1;
    expect_reject(a, "POST", "/peer/gossip", "{}", h, "timestamp 30.001 s in the past");
    assert_int_equal(km_peerauth_cache_count(a), 1);
    km_peerauth_free(a);
}

/* Expired nonces are dropped: the cache holds about one window of requests. */
static void test_expiry(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    for (int i = 0; i < 10; i++) {
        sign(a, "GET", "/peer/catalog", NULL, h);
        expect_ok(a, "GET", "/peer/catalog", NULL, h);
    }
    assert_int_equal(km_peerauth_cache_count(a), 10);
    clk.now = T0 + W + 1; /* all ten are out of the window */
    sign(a, "GET", "/peer/catalog", NULL, h);
    expect_ok(a, "GET", "/peer/catalog", NULL, h);
    assert_int_equal(km_peerauth_cache_count(a), 1);

    /* A steady stream: 3000 requests, 100 ms apart, 1 s window. Each nonce is
     * held for 1 s plus at most half a window before a sweep drops it. */
    km_peerauth *b = new_auth(SECRET, &clk, 1000);
    size_t most = 0;
    for (int i = 0; i < 3000; i++) {
        clk.now += 100;
        sign(b, "GET", "/peer/catalog", NULL, h);
        expect_ok(b, "GET", "/peer/catalog", NULL, h);
        size_t n = km_peerauth_cache_count(b);
        if (n > most) most = n;
    }
    assert_in_range(most, 11, 16);
    km_peerauth_free(b);
    km_peerauth_free(a);
}

static void test_cache_full(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    km_peerauth_set_cache_limit(a, 4);
    char h[5][KM_PEERAUTH_HEADER_MAX];
    for (int i = 0; i < 5; i++) sign(a, "GET", "/peer/catalog", NULL, h[i]);
    for (int i = 0; i < 4; i++) expect_ok(a, "GET", "/peer/catalog", NULL, h[i]);
    expect_reject(a, "GET", "/peer/catalog", NULL, h[4],
                  "peer auth: replay cache full (4 nonces within the 30 s window); refusing the request rather "
                  "than forgetting a nonce");
    /* A replay is still called a replay when the cache is full. */
    expect_reject(a, "GET", "/peer/catalog", NULL, h[0], "replayed nonce");
    assert_int_equal(km_peerauth_cache_count(a), 4);
    /* Once the first four have left the window there is room again. */
    clk.now = T0 + W + 1;
    char f[KM_PEERAUTH_HEADER_MAX];
    sign(a, "GET", "/peer/catalog", NULL, f);
    expect_ok(a, "GET", "/peer/catalog", NULL, f);
    assert_int_equal(km_peerauth_cache_count(a), 1);
    /* Full again with fresh nonces, then one expires: exactly one more fits. */
    for (int i = 0; i < 3; i++) {
        clk.now += 1000;
        sign(a, "GET", "/peer/catalog", NULL, h[i]);
        expect_ok(a, "GET", "/peer/catalog", NULL, h[i]);
    }
    sign(a, "GET", "/peer/catalog", NULL, h[3]);
    expect_reject(a, "GET", "/peer/catalog", NULL, h[3], "replay cache full");
    clk.now = T0 + W + 1 + W + 1; /* f expired, h[0..2] did not */
    sign(a, "GET", "/peer/catalog", NULL, h[3]);
    expect_ok(a, "GET", "/peer/catalog", NULL, h[3]);
    sign(a, "GET", "/peer/catalog", NULL, h[4]);
    expect_reject(a, "GET", "/peer/catalog", NULL, h[4], "replay cache full");
    km_peerauth_free(a);
}

/* Several threads verify the same 500 requests: each is accepted once. */
#define N_REQ 500
#define N_THREADS 4
typedef struct thread_arg {
    km_peerauth *a;
    char (*h)[KM_PEERAUTH_HEADER_MAX];
    atomic_int *accepted;
    atomic_int *replays;
    int start;
} thread_arg;

static void *verifier(void *p) {
    thread_arg *t = p;
    for (int k = 0; k < N_REQ; k++) {
        int i = (t->start + k) % N_REQ;
        char path[32];
        snprintf(path, sizeof path, "/peer/state?key=%d", i);
        km_error err = {{0}};
        if (km_peerauth_verify_request(t->a, NODE, false, "GET", path, NULL, 0, t->h[i], &err) == 0)
            atomic_fetch_add(&t->accepted[i], 1);
        else if (strstr(err.msg, "replayed nonce")) atomic_fetch_add(t->replays, 1);
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    char(*h)[KM_PEERAUTH_HEADER_MAX] = calloc(N_REQ, sizeof *h);
    atomic_int *accepted = calloc(N_REQ, sizeof *accepted);
    atomic_int replays = 0;
    assert_non_null(h);
    assert_non_null(accepted);
    for (int i = 0; i < N_REQ; i++) {
        char path[32];
        snprintf(path, sizeof path, "/peer/state?key=%d", i);
        sign(a, "GET", path, NULL, h[i]);
    }
    pthread_t th[N_THREADS];
    thread_arg args[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        args[t] = (thread_arg){a, h, accepted, &replays, t * N_REQ / N_THREADS};
        assert_int_equal(pthread_create(&th[t], NULL, verifier, &args[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++) pthread_join(th[t], NULL);
    for (int i = 0; i < N_REQ; i++) assert_int_equal(atomic_load(&accepted[i]), 1);
    assert_int_equal(atomic_load(&replays), N_REQ * (N_THREADS - 1));
    assert_int_equal(km_peerauth_cache_count(a), N_REQ);
    free(accepted);
    free(h);
    km_peerauth_free(a);
}

/* ------------------------------------------------------------- parsing */

static void test_malformed(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX], t[512];
    sign(a, "GET", "/p", NULL, h);
    size_t len = strlen(h);
    parts p = split_hdr(h);

    expect_reject(a, "GET", "/p", NULL, NULL, "peer auth: missing X-Kvmesh-Auth header");
    expect_reject(a, "GET", "/p", NULL, "", "peer auth: missing X-Kvmesh-Auth header");

    /* Every truncation, each in a buffer of exactly its size (ASan sees any
     * read past the end). */
    for (size_t n = 1; n < len; n++) {
        char *c = malloc(n + 1);
        memcpy(c, h, n);
        c[n] = 0;
        expect_reject(a, "GET", "/p", NULL, c, "peer auth: malformed request header: ");
        free(c);
    }
    memcpy(t, h, len - 1);
    t[len - 1] = 0;
    expect_reject(a, "GET", "/p", NULL, t, "mac is not 64 lowercase hex digits");
    snprintf(t, sizeof t, "v2 %lld %s", p.ts, p.nonce);
    expect_reject(a, "GET", "/p", NULL, t,
                  "malformed request header: 3 fields, expected 4 (v2 <unix ms> <nonce> <mac>)");
    expect_reject(a, "GET", "/p", NULL, "v2", "1 field, expected 4");

    /* Extra field, stray spaces. */
    snprintf(t, sizeof t, "%s x", h);
    expect_reject(a, "GET", "/p", NULL, t, "more than 4 fields, expected 4");
    snprintf(t, sizeof t, "%s ", h);
    expect_reject(a, "GET", "/p", NULL, t, "empty field 5");
    snprintf(t, sizeof t, " %s", h);
    expect_reject(a, "GET", "/p", NULL, t, "empty field 1");
    snprintf(t, sizeof t, "v2  %lld %s %s", p.ts, p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "empty field 2");
    snprintf(t, sizeof t, "v2\t%lld %s %s", p.ts, p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "3 fields, expected 4");

    /* Version. */
    snprintf(t, sizeof t, "v1 %lld %s %s", p.ts, p.nonce, p.mac); /* the format before targets */
    expect_reject(a, "GET", "/p", NULL, t, "version is not v2");
    snprintf(t, sizeof t, "V2 %lld %s %s", p.ts, p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "version is not v2");
    snprintf(t, sizeof t, "v20 %lld %s %s", p.ts, p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "version is not v2");

    /* Uppercase hex (the same bytes, another spelling). */
    parts q = p;
    for (char *c = q.nonce; *c; c++)
        if (*c >= 'a') *c = (char)(*c - 32);
    if (strcmp(q.nonce, p.nonce) == 0) q.nonce[0] = 'A'; /* an all-digit nonce: 1 in 2^32 */
    join_hdr(t, &q);
    expect_reject(a, "GET", "/p", NULL, t, "nonce is not 32 lowercase hex digits");
    q = p;
    q.mac[10] = 'F';
    join_hdr(t, &q);
    expect_reject(a, "GET", "/p", NULL, t, "mac is not 64 lowercase hex digits");
    q = p;
    q.nonce[5] = 'g';
    join_hdr(t, &q);
    expect_reject(a, "GET", "/p", NULL, t, "nonce is not 32 lowercase hex digits");
    snprintf(t, sizeof t, "v2 %lld %s0 %s", p.ts, p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "nonce is not 32 lowercase hex digits");
    snprintf(t, sizeof t, "v2 %lld %s %s00", p.ts, p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "mac is not 64 lowercase hex digits");
    q = p;
    q.nonce[0] = (char)0xc3; /* a non-ASCII byte */
    join_hdr(t, &q);
    expect_reject(a, "GET", "/p", NULL, t, "nonce is not 32 lowercase hex digits");

    /* Timestamps: overflowing, signed, non-digits, another spelling of the
     * same value (the MAC would match it: the parser must refuse it). */
    const struct {
        const char *ts, *needle;
    } bad_ts[] = {
        {"99999999999999999999", "timestamp has 20 digits, at most 15"},
        {"18446744073709551617", "timestamp has 20 digits, at most 15"},
        {"1000000000000000", "timestamp has 16 digits, at most 15"},
        {"+1718000000000", "timestamp is not a decimal number"},
        {"-1718000000000", "timestamp is not a decimal number"},
        {"1718000000000.5", "timestamp is not a decimal number"},
        {"0x1900", "timestamp is not a decimal number"},
        {"01718000000000", "timestamp has a leading zero"},
        {"00", "timestamp has a leading zero"},
    };
    for (size_t i = 0; i < sizeof bad_ts / sizeof bad_ts[0]; i++) {
        snprintf(t, sizeof t, "v2 %s %s %s", bad_ts[i].ts, p.nonce, p.mac);
        expect_reject(a, "GET", "/p", NULL, t, bad_ts[i].needle);
    }
    snprintf(t, sizeof t, "v2 0 %s %s", p.nonce, p.mac);
    expect_reject(a, "GET", "/p", NULL, t, "in the past"); /* "0" itself is well-formed */

    /* An embedded NUL ends the C string early: what is left is malformed. */
    char nul[KM_PEERAUTH_HEADER_MAX];
    memcpy(nul, h, len + 1);
    nul[3 + 13 + 1 + 10] = 0; /* inside the nonce */
    expect_reject(a, "GET", "/p", NULL, nul, "3 fields, expected 4");
    memcpy(nul, h, len + 1);
    nul[len - 20] = 0; /* inside the mac */
    expect_reject(a, "GET", "/p", NULL, nul, "mac is not 64 lowercase hex digits");
    memcpy(nul, h, len + 1);
    nul[8] = 0; /* inside the timestamp */
    expect_reject(a, "GET", "/p", NULL, nul, "2 fields, expected 4");

    /* Longer than any header: refused before it is scanned. */
    memset(t, 'a', sizeof t - 1);
    t[sizeof t - 1] = 0;
    expect_reject(a, "GET", "/p", NULL, t, "longer than 127 bytes");

    /* None of this touched the cache; the genuine header still passes. */
    assert_int_equal(km_peerauth_cache_count(a), 0);
    expect_ok(a, "GET", "/p", NULL, h);

    km_error err = {{0}};
    assert_int_equal(km_peerauth_verify_request(a, NODE, false, NULL, "/p", NULL, 0, h, &err), -1);
    assert_non_null(strstr(err.msg, "no node id, method or path"));
    km_peerauth_free(a);
}

static void test_sign_errors(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *a = new_auth(SECRET, &clk, W);
    char h[KM_PEERAUTH_HEADER_MAX];
    /* 114 characters + NUL fit 115 bytes, not 114. */
    assert_int_equal(km_peerauth_sign_request(a, NODE, "GET", "/p", NULL, 0, h, 115), 0);
    assert_int_equal(strlen(h), 114);
    assert_int_equal(km_peerauth_sign_request(a, NODE, "GET", "/p", NULL, 0, h, 114), -1);
    assert_string_equal(h, "");
    assert_int_equal(km_peerauth_sign_request(a, NODE, NULL, "/p", NULL, 0, h, sizeof h), -1);
    assert_int_equal(km_peerauth_sign_request(a, NODE, "GET", NULL, NULL, 0, h, sizeof h), -1);
    clk.now = -1;
    assert_int_equal(km_peerauth_sign_request(a, NODE, "GET", "/p", NULL, 0, h, sizeof h), -1);
    clk.now = 1000000000000000LL; /* 16 digits */
    assert_int_equal(km_peerauth_sign_request(a, NODE, "GET", "/p", NULL, 0, h, sizeof h), -1);
    /* The realtime clock again: a header from now verifies now. */
    km_peerauth_set_clock(a, NULL, NULL);
    assert_int_equal(km_peerauth_sign_request(a, NODE, "GET", "/p", NULL, 0, h, sizeof h), 0);
    parts p = split_hdr(h);
    assert_true(p.ts > T0); /* after June 2024 */
    expect_ok(a, "GET", "/p", NULL, h);

    km_error err = {{0}};
    assert_null(km_peerauth_new((const uint8_t *)"0123456789abcde", 15, 0, &err));
    assert_non_null(strstr(err.msg, "the mesh secret is 15 bytes, need 16 to 4096"));
    assert_null(km_peerauth_new(NULL, 0, 0, &err));
    uint8_t *big = calloc(1, 4097);
    assert_null(km_peerauth_new(big, 4097, 0, &err));
    km_peerauth *ok = km_peerauth_new(big, 4096, 0, &err);
    assert_non_null(ok);
    km_peerauth_free(ok);
    free(big);
    km_peerauth_free(NULL);
    km_peerauth_free(a);
}

/* ------------------------------------------------------------ responses */

static void expect_resp_reject(km_peerauth *a, const char *req, int status, const uint8_t *body, size_t len,
                               const char *resp, const char *needle) {
    km_error err = {{0}};
    assert_int_equal(km_peerauth_verify_response(a, req, status, body, len, resp, &err), -1);
    if (!strstr(err.msg, needle)) fail_msg("expected '%s', got '%s'", needle, err.msg);
}

static void test_response(void **state) {
    (void)state;
    fake_clock clk = {T0};
    km_peerauth *client = new_auth(SECRET, &clk, W), *server = new_auth(SECRET, &clk, W);
    char ha[KM_PEERAUTH_HEADER_MAX], hb[KM_PEERAUTH_HEADER_MAX], r[KM_PEERAUTH_HEADER_MAX];
    sign(client, "GET", "/peer/state?key=aa", NULL, ha);
    sign(client, "GET", "/peer/state?key=aa", NULL, hb); /* the same request again */
    expect_ok(server, "GET", "/peer/state?key=aa", NULL, ha);
    const uint8_t blob[] = "KVB2 state bytes";
    size_t blen = sizeof blob - 1;
    assert_int_equal(km_peerauth_sign_response(server, ha, 200, blob, blen, r, sizeof r), 0);
    assert_int_equal(strlen(r), 67);
    assert_memory_equal(r, "v2 ", 3);
    assert_true(is_lower_hex(r + 3));

    km_error err = {{0}};
    if (km_peerauth_verify_response(client, ha, 200, blob, blen, r, &err) != 0) fail_msg("%s", err.msg);
    /* Bound to its request: the answer to A is no answer to B. */
    expect_resp_reject(client, hb, 200, blob, blen, r,
                       "peer auth: bad response MAC (wrong mesh secret, an altered answer, or the answer to "
                       "another request)");
    /* Status and body bound. */
    expect_resp_reject(client, ha, 404, blob, blen, r, "bad response MAC");
    uint8_t b2[sizeof blob];
    memcpy(b2, blob, sizeof blob);
    b2[blen - 1] ^= 0x80;
    expect_resp_reject(client, ha, 200, b2, blen, r, "bad response MAC");
    expect_resp_reject(client, ha, 200, blob, blen - 1, r, "bad response MAC");
    /* A request whose MAC differs (same nonce) is another request. */
    char hm[KM_PEERAUTH_HEADER_MAX];
    parts p = split_hdr(ha);
    flip_hex(&p.mac[5]);
    join_hdr(hm, &p);
    expect_resp_reject(client, hm, 200, blob, blen, r, "bad response MAC");
    /* The request's own MAC is no response MAC (domain separation). */
    p = split_hdr(ha);
    char fake[KM_PEERAUTH_HEADER_MAX];
    snprintf(fake, sizeof fake, "v2 %s", p.mac);
    expect_resp_reject(client, ha, 200, blob, blen, fake, "bad response MAC");
    /* Wrong secret. */
    km_peerauth *other = new_auth(OTHER_SECRET, &clk, W);
    char ro[KM_PEERAUTH_HEADER_MAX];
    assert_int_equal(km_peerauth_sign_response(other, ha, 200, blob, blen, ro, sizeof ro), 0);
    expect_resp_reject(client, ha, 200, blob, blen, ro, "bad response MAC");
    km_peerauth_free(other);
    /* Missing and malformed response headers. */
    expect_resp_reject(client, ha, 200, blob, blen, NULL, "peer auth: missing X-Kvmesh-Auth-Response header");
    expect_resp_reject(client, ha, 200, blob, blen, "", "missing X-Kvmesh-Auth-Response header");
    char t[KM_PEERAUTH_HEADER_MAX];
    snprintf(t, sizeof t, "%s", r);
    t[20] = (char)(t[20] >= 'a' ? t[20] - 32 : 'A');
    expect_resp_reject(client, ha, 200, blob, blen, t, "malformed response header: mac is not 64 lowercase hex digits");
    snprintf(t, sizeof t, "%s x", r);
    expect_resp_reject(client, ha, 200, blob, blen, t,
                       "malformed response header: more than 2 fields, expected 2 (v2 <mac>)");
    snprintf(t, sizeof t, "v1%s", r + 2);
    expect_resp_reject(client, ha, 200, blob, blen, t, "malformed response header: version is not v2");
    snprintf(t, sizeof t, "%s", r);
    t[66] = 0;
    expect_resp_reject(client, ha, 200, blob, blen, t, "mac is not 64 lowercase hex digits");
    /* Our own request header must be well-formed. */
    expect_resp_reject(client, "v2 x", 200, blob, blen, r, "cannot check the response: our malformed request header");
    assert_int_equal(km_peerauth_sign_response(server, "v2 1 2 3", 200, blob, blen, t, sizeof t), -1);
    assert_string_equal(t, "");
    assert_int_equal(km_peerauth_sign_response(server, ha, 200, blob, blen, t, 67), -1); /* needs 68 */
    assert_int_equal(km_peerauth_sign_response(server, ha, 200, blob, blen, t, 68), 0);
    assert_string_equal(t, r);
    /* Error answers are authenticated the same way; the empty body too. */
    assert_int_equal(km_peerauth_sign_response(server, hb, 503, NULL, 0, r, sizeof r), 0);
    if (km_peerauth_verify_response(client, hb, 503, (const uint8_t *)"", 0, r, &err) != 0) fail_msg("%s", err.msg);
    expect_resp_reject(client, hb, 200, NULL, 0, r, "bad response MAC");
    km_peerauth_free(server);
    km_peerauth_free(client);
}

/* ---------------------------------------------------------- secret files */

static char *write_secret(const char *dir, const char *name, const void *data, size_t len, mode_t mode) {
    char *path = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0); /* exactly this mode, whatever the umask */
    close(fd);
    return path;
}

static void expect_secret_reject(const char *path, const char *needle) {
    km_error err = {{0}};
    uint8_t *s = (uint8_t *)"x";
    size_t len = 99;
    assert_int_equal(km_peerauth_load_secret(path, &s, &len, &err), -1);
    assert_null(s);
    assert_int_equal(len, 0);
    if (!strstr(err.msg, needle)) fail_msg("expected '%s', got '%s'", needle, err.msg);
}

static size_t load_len(const char *path, uint8_t **s) {
    km_error err = {{0}};
    size_t len = 0;
    if (km_peerauth_load_secret(path, s, &len, &err) != 0) fail_msg("load_secret: %s", err.msg);
    return len;
}

static void test_secret_file(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    assert_non_null(dir);
    uint8_t *s;
    char *p;

    /* Newline handling: one "\n" or "\r\n" goes, nothing else. */
    p = write_secret(dir, "nl", SECRET "\n", 33, 0600);
    assert_int_equal(load_len(p, &s), 32);
    assert_memory_equal(s, SECRET, 32);
    /* ... and it is the same key as the secret given directly. */
    fake_clock clk = {T0};
    km_peerauth *from_file = km_peerauth_new(s, 32, W, NULL);
    km_peerauth *direct = new_auth(SECRET, &clk, W);
    assert_non_null(from_file);
    km_peerauth_set_clock(from_file, fake_now, &clk);
    char h[KM_PEERAUTH_HEADER_MAX];
    sign(from_file, "GET", "/peer/catalog", NULL, h);
    expect_ok(direct, "GET", "/peer/catalog", NULL, h);
    km_peerauth_free(direct);
    km_peerauth_free(from_file);
    km_peerauth_secret_free(s, 32);
    free(p);

    p = write_secret(dir, "crlf", SECRET "\r\n", 34, 0600);
    assert_int_equal(load_len(p, &s), 32);
    assert_memory_equal(s, SECRET, 32);
    km_peerauth_secret_free(s, 32);
    free(p);
    p = write_secret(dir, "bare", SECRET, 32, 0400);
    assert_int_equal(load_len(p, &s), 32);
    assert_memory_equal(s, SECRET, 32);
    km_peerauth_secret_free(s, 32);
    free(p);
    p = write_secret(dir, "two", SECRET "\n\n", 34, 0600);
    assert_int_equal(load_len(p, &s), 33);
    assert_memory_equal(s, SECRET "\n", 33);
    km_peerauth_secret_free(s, 33);
    free(p);
    p = write_secret(dir, "cr", SECRET "\r", 33, 0600); /* a lone CR is part of the secret */
    assert_int_equal(load_len(p, &s), 33);
    km_peerauth_secret_free(s, 33);
    free(p);

    /* Sizes: 16..4096 after stripping. */
    p = write_secret(dir, "short", "0123456789abcde", 15, 0600);
    expect_secret_reject(p, "the secret is 15 bytes, need 16 to 4096");
    free(p);
    p = write_secret(dir, "short_nl", "0123456789abcde\n", 16, 0600);
    expect_secret_reject(p, "the secret is 15 bytes, need 16 to 4096");
    free(p);
    p = write_secret(dir, "empty", "", 0, 0600);
    expect_secret_reject(p, "the secret is 0 bytes");
    free(p);
    p = write_secret(dir, "sixteen", "0123456789abcdef", 16, 0600);
    assert_int_equal(load_len(p, &s), 16);
    km_peerauth_secret_free(s, 16);
    free(p);
    char *big = malloc(6000);
    memset(big, 'k', 6000);
    p = write_secret(dir, "max", big, 4096, 0600);
    assert_int_equal(load_len(p, &s), 4096);
    km_peerauth_secret_free(s, 4096);
    free(p);
    big[4096] = '\r';
    big[4097] = '\n';
    p = write_secret(dir, "max_crlf", big, 4098, 0600);
    assert_int_equal(load_len(p, &s), 4096);
    km_peerauth_secret_free(s, 4096);
    free(p);
    big[4096] = 'k';
    p = write_secret(dir, "over", big, 4097, 0600);
    expect_secret_reject(p, "the secret is 4097 bytes, need 16 to 4096");
    free(p);
    p = write_secret(dir, "huge", big, 6000, 0600);
    expect_secret_reject(p, "longer than 4096 bytes");
    free(p);
    free(big);

    /* Permissions: any group/other bit is refused, with the fix in the message. */
    const mode_t bad[] = {0644, 0640, 0604, 0660, 0602, 0610, 0601};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = write_secret(dir, "perm", SECRET, 32, bad[i]);
        char needle[64];
        snprintf(needle, sizeof needle, "has mode %04o: group/others may access", (unsigned)bad[i]);
        expect_secret_reject(p, needle);
        km_error err = {{0}};
        size_t len;
        km_peerauth_load_secret(p, &s, &len, &err);
        char fix[4200];
        snprintf(fix, sizeof fix, "run chmod 600 %s", p);
        assert_non_null(strstr(err.msg, fix));
        free(p);
    }

    /* Not there, not a file. */
    char path[4200];
    snprintf(path, sizeof path, "%s/absent", dir);
    expect_secret_reject(path, "No such file or directory");
    snprintf(path, sizeof path, "%s/sub", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    expect_secret_reject(path, "not a regular file");
    km_peerauth_secret_free(NULL, 0);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_verify),
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_target_bound),
        cmocka_unit_test(test_stream_head),
        cmocka_unit_test(test_tampered_fields),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_timestamp_window),
        cmocka_unit_test(test_default_window),
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_cache_full),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_sign_errors),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_secret_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
