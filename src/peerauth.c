/* peerauth.c -- see peerauth.h.
 *
 * The replay cache is an open-addressing hash table (linear probing, keyed
 * SipHash of the nonce) of {nonce, expiry}. It starts small and doubles up to
 * twice the nonce limit, so it never runs more than half full and an idle node
 * holds a few KB. An expired slot stays in place (deleting from a linear-probing
 * table would break the probe chains behind it) and is reused by the next
 * insertion that passes it; a sweep rebuilds the table with only the live
 * nonces, every half window or when the limit is reached. A sweep costs one
 * pass over at most 2 x 65536 slots, and when the table is full of live
 * nonces it runs again only once the earliest of them has expired, so a
 * flood of requests cannot make every request pay for one. */
#include "peerauth.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NONCE_LEN 16
#define MAC_LEN crypto_auth_hmacsha256_BYTES
#define TS_MAX_DIGITS 15
#define TS_MAX 999999999999999LL /* 15 digits: the year 33658 */
#define VERSION "v2"
#define DOMAIN_REQUEST "kvmesh-peer-request-v2"
#define DOMAIN_RESPONSE "kvmesh-peer-response-v2"
#define DOMAIN_STREAM "kvmesh-peer-stream-v2"
#define DOMAIN_STREAM_KEY "kvmesh-peer-stream-key-v2"
#define MIN_SLOTS 64

typedef struct slot {
    uint8_t nonce[NONCE_LEN];
    int64_t expiry; /* unix ms after which the nonce's timestamp is refused; 0 = empty */
} slot;

struct km_peerauth {
    uint8_t *key;
    size_t key_len;
    int64_t window_ms;
    int64_t (*now_fn)(void *ud);
    void *now_ud;
    uint8_t hash_key[crypto_shorthash_KEYBYTES];

    pthread_mutex_t lock; /* guards everything below */
    slot *slots;
    size_t nslots;     /* power of two */
    size_t used;       /* occupied slots, expired ones not yet swept included */
    size_t limit;      /* most occupied slots */
    int64_t min_expiry; /* no occupied slot expires before this (INT64_MAX: none) */
    int64_t next_sweep;
};

/* A parsed request header. */
typedef struct req_hdr {
    int64_t ts;
    uint8_t nonce[NONCE_LEN];
    uint8_t mac[MAC_LEN];
} req_hdr;

/* ------------------------------------------------------------------ clock */

static int64_t realtime_ms(void *ud) {
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(const km_peerauth *a) { return a->now_fn(a->now_ud); }

/* "41", "41.5" or "30.001": seconds for messages, without noise digits. */
static const char *fmt_secs(int64_t ms, char *buf, size_t n) {
    if (ms % 1000 == 0) {
        snprintf(buf, n, "%" PRId64, ms / 1000);
    } else {
        snprintf(buf, n, "%.3f", (double)ms / 1000.0);
        char *e = buf + strlen(buf);
        while (e > buf && e[-1] == '0') *--e = 0;
    }
    return buf;
}

/* ------------------------------------------------------------------- hex */

static void to_hex(char *out, const uint8_t *b, size_t n) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; /* uppercase too: a header has one spelling */
}

/* Exactly 2n lowercase hex digits -> n bytes. */
static bool from_hex(uint8_t *out, const char *s, size_t slen, size_t n) {
    if (slen != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_val(s[2 * i]), lo = hex_val(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

/* ---------------------------------------------------------------- parsing */

typedef struct field {
    const char *p;
    size_t len;
} field;

/* Split s at single spaces into at most max fields (one more is reported as
 * max + 1 so the caller can say "too many"). Empty fields (leading, trailing
 * or double spaces) fail. */
static int split(const char *s, field *f, int max, const char *what, km_error *err) {
    int n = 0;
    const char *p = s;
    for (;;) {
        const char *sp = strchr(p, ' ');
        size_t len = sp ? (size_t)(sp - p) : strlen(p);
        if (len == 0)
            return km_error_set(err, "peer auth: malformed %s: empty field %d (fields are separated by one space)",
                                what, n + 1);
        if (n == max) return max + 1;
        f[n].p = p;
        f[n].len = len;
        n++;
        if (!sp) return n;
        p = sp + 1;
    }
}

/* Common checks of either header: present, bounded, right field count and
 * version. Returns 0 with the fields in f. */
static int split_header(const char *h, field *f, int nfields, const char *what, const char *name,
                        const char *layout, km_error *err) {
    if (!h || !*h) return km_error_set(err, "peer auth: missing %s header", name);
    size_t len = strnlen(h, KM_PEERAUTH_HEADER_MAX);
    if (len >= KM_PEERAUTH_HEADER_MAX)
        return km_error_set(err, "peer auth: malformed %s: longer than %d bytes", what, KM_PEERAUTH_HEADER_MAX - 1);
    int n = split(h, f, nfields, what, err);
    if (n < 0) return -1;
    if (n != nfields)
        return km_error_set(err, "peer auth: malformed %s: %s%d field%s, expected %d (%s)", what,
                            n > nfields ? "more than " : "", n > nfields ? nfields : n, n == 1 ? "" : "s", nfields,
                            layout);
    if (f[0].len != 2 || memcmp(f[0].p, VERSION, 2) != 0)
        return km_error_set(err, "peer auth: malformed %s: version is not " VERSION, what);
    return 0;
}

static int parse_request_header(const char *h, req_hdr *r, km_error *err) {
    const char *what = "request header";
    field f[4];
    if (split_header(h, f, 4, what, KM_PEERAUTH_HEADER, VERSION " <unix ms> <nonce> <mac>", err) != 0) return -1;
    if (f[1].len > TS_MAX_DIGITS)
        return km_error_set(err, "peer auth: malformed %s: timestamp has %zu digits, at most %d", what, f[1].len,
                            TS_MAX_DIGITS);
    int64_t ts = 0;
    for (size_t i = 0; i < f[1].len; i++) {
        char c = f[1].p[i];
        if (c < '0' || c > '9')
            return km_error_set(err, "peer auth: malformed %s: timestamp is not a decimal number", what);
        ts = ts * 10 + (c - '0'); /* <= 15 digits: no overflow */
    }
    if (f[1].len > 1 && f[1].p[0] == '0')
        return km_error_set(err, "peer auth: malformed %s: timestamp has a leading zero", what);
    r->ts = ts;
    if (!from_hex(r->nonce, f[2].p, f[2].len, NONCE_LEN))
        return km_error_set(err, "peer auth: malformed %s: nonce is not %d lowercase hex digits", what,
                            2 * NONCE_LEN);
    if (!from_hex(r->mac, f[3].p, f[3].len, MAC_LEN))
        return km_error_set(err, "peer auth: malformed %s: mac is not %d lowercase hex digits", what, 2 * MAC_LEN);
    return 0;
}

static int parse_response_header(const char *h, uint8_t mac[MAC_LEN], km_error *err) {
    const char *what = "response header";
    field f[2];
    if (split_header(h, f, 2, what, KM_PEERAUTH_RESPONSE_HEADER, VERSION " <mac>", err) != 0) return -1;
    if (!from_hex(mac, f[1].p, f[1].len, MAC_LEN))
        return km_error_set(err, "peer auth: malformed %s: mac is not %d lowercase hex digits", what, 2 * MAC_LEN);
    return 0;
}

/* ------------------------------------------------------------------- MACs */

static void mac_u64(crypto_auth_hmacsha256_state *st, uint64_t v) {
    uint8_t b[8];
    km_put_u64(b, v);
    crypto_auth_hmacsha256_update(st, b, sizeof b);
}

/* str(s): u64 length + bytes (see the header for why). */
static void mac_str(crypto_auth_hmacsha256_state *st, const char *s) {
    size_t n = strlen(s);
    mac_u64(st, n);
    crypto_auth_hmacsha256_update(st, (const uint8_t *)s, n);
}

static void body_digest(uint8_t out[crypto_hash_sha256_BYTES], const uint8_t *body, size_t len) {
    static const uint8_t empty = 0;
    crypto_hash_sha256(out, body ? body : &empty, body ? len : 0);
}

static void request_mac(const km_peerauth *a, const char *target, const char *method, const char *path,
                        const uint8_t *body, size_t body_len, const req_hdr *r, uint8_t mac[MAC_LEN]) {
    uint8_t digest[crypto_hash_sha256_BYTES];
    body_digest(digest, body, body_len);
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, a->key, a->key_len);
    mac_str(&st, DOMAIN_REQUEST);
    mac_str(&st, target);
    mac_str(&st, method);
    mac_str(&st, path);
    mac_u64(&st, (uint64_t)r->ts);
    crypto_auth_hmacsha256_update(&st, r->nonce, NONCE_LEN);
    crypto_auth_hmacsha256_update(&st, digest, sizeof digest);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof st);
}

/* Start the MAC of an answer: its domain, the request it answers (nonce and
 * MAC), its status. */
static void answer_mac_init(crypto_auth_hmacsha256_state *st, const km_peerauth *a, const char *domain,
                            const req_hdr *r, int status) {
    uint8_t st4[4];
    km_put_u32(st4, (uint32_t)status);
    crypto_auth_hmacsha256_init(st, a->key, a->key_len);
    mac_str(st, domain);
    crypto_auth_hmacsha256_update(st, r->nonce, NONCE_LEN);
    crypto_auth_hmacsha256_update(st, r->mac, MAC_LEN);
    crypto_auth_hmacsha256_update(st, st4, sizeof st4);
}

static void response_mac(const km_peerauth *a, const req_hdr *r, int status, const uint8_t *body, size_t body_len,
                         uint8_t mac[MAC_LEN]) {
    uint8_t digest[crypto_hash_sha256_BYTES];
    body_digest(digest, body, body_len);
    crypto_auth_hmacsha256_state st;
    answer_mac_init(&st, a, DOMAIN_RESPONSE, r, status);
    crypto_auth_hmacsha256_update(&st, digest, sizeof digest);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof st);
}

/* The head MAC (domain DOMAIN_STREAM) or the frame key (DOMAIN_STREAM_KEY)
 * of a framed answer: both bind the request, the status and the type. */
static void stream_mac(const km_peerauth *a, const char *domain, const req_hdr *r, int status, const char *type,
                       uint8_t mac[MAC_LEN]) {
    crypto_auth_hmacsha256_state st;
    answer_mac_init(&st, a, domain, r, status);
    mac_str(&st, type);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof st);
}

/* ----------------------------------------------------------- replay cache */

typedef enum { CACHE_OK, CACHE_REPLAY, CACHE_FULL, CACHE_NOMEM } cache_result;

static size_t slot_of(const km_peerauth *a, const uint8_t nonce[NONCE_LEN], size_t nslots) {
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, nonce, NONCE_LEN, a->hash_key);
    return (size_t)km_get_u64(h) & (nslots - 1);
}

/* Rebuild the table with nslots slots and the nonces still live at now.
 * Caller holds the lock. -1 when out of memory (the table is unchanged). */
static int rebuild(km_peerauth *a, size_t nslots, int64_t now) {
    slot *t = calloc(nslots, sizeof *t);
    if (!t) return -1;
    size_t used = 0;
    int64_t min_expiry = INT64_MAX;
    for (size_t i = 0; i < a->nslots; i++) {
        const slot *s = &a->slots[i];
        if (s->expiry == 0 || s->expiry < now) continue;
        size_t j = slot_of(a, s->nonce, nslots);
        while (t[j].expiry != 0) j = (j + 1) & (nslots - 1);
        t[j] = *s;
        used++;
        if (s->expiry < min_expiry) min_expiry = s->expiry;
    }
    free(a->slots);
    a->slots = t;
    a->nslots = nslots;
    a->used = used;
    a->min_expiry = min_expiry;
    a->next_sweep = now + (a->window_ms / 2 > 0 ? a->window_ms / 2 : 1);
    return 0;
}

/* Record a nonce valid until expiry, unless it is live in the table already. */
static cache_result cache_add(km_peerauth *a, const uint8_t nonce[NONCE_LEN], int64_t expiry, int64_t now) {
    if (now >= a->next_sweep && rebuild(a, a->nslots, now) != 0) return CACHE_NOMEM;
    for (int attempt = 0;; attempt++) {
        size_t mask = a->nslots - 1, i = slot_of(a, nonce, a->nslots);
        slot *reuse = NULL;
        for (; a->slots[i].expiry != 0; i = (i + 1) & mask) {
            slot *s = &a->slots[i];
            bool expired = s->expiry < now;
            if (memcmp(s->nonce, nonce, NONCE_LEN) == 0) {
                if (!expired) return CACHE_REPLAY;
                reuse = s; /* the same nonce, long out of the window: not a replay */
                break;
            }
            if (expired && !reuse) reuse = s;
        }
        slot *dst = reuse;
        if (!dst && a->used < a->limit && (a->used + 1) * 2 <= a->nslots) {
            dst = &a->slots[i];
            a->used++;
        }
        if (dst) {
            memcpy(dst->nonce, nonce, NONCE_LEN);
            dst->expiry = expiry;
            if (expiry < a->min_expiry) a->min_expiry = expiry;
            return CACHE_OK;
        }
        /* Make room, once: grow while under the limit, else drop the expired
         * (only when some nonce has expired since the last sweep). */
        if (attempt > 0) return CACHE_FULL;
        if (a->used < a->limit) {
            if (rebuild(a, a->nslots * 2, now) != 0) return CACHE_NOMEM;
        } else if (now > a->min_expiry) {
            if (rebuild(a, a->nslots, now) != 0) return CACHE_NOMEM;
        } else {
            return CACHE_FULL;
        }
    }
}

/* ------------------------------------------------------------------ public */

int km_peerauth_load_secret(const char *path, uint8_t **secret, size_t *len, km_error *err) {
    *secret = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return km_error_set(err, "peer auth: secret file %s: %s", path, strerror(errno));
    /* Checks on the open file, not the name: it cannot be swapped in between. */
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return km_error_set(err, "peer auth: secret file %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return km_error_set(err, "peer auth: secret file %s: not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return km_error_set(err,
                            "peer auth: secret file %s has mode %04o: group/others may access the mesh secret; "
                            "run chmod 600 %s",
                            path, (unsigned)(st.st_mode & 07777), path);
    }
    /* Room for the longest secret, its CRLF, and one byte to see a longer file. */
    size_t cap = KM_PEERAUTH_SECRET_MAX + 3, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return km_error_set(err, "peer auth: out of memory");
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            km_peerauth_secret_free(buf, cap);
            close(fd);
            return km_error_set(err, "peer auth: secret file %s: %s", path, strerror(e));
        }
        if (r == 0 || (n += (size_t)r) == cap) break;
    }
    close(fd);
    size_t got = n;
    if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n') n -= 2;
    else if (n >= 1 && buf[n - 1] == '\n') n -= 1;
    if (n < KM_PEERAUTH_SECRET_MIN || n > KM_PEERAUTH_SECRET_MAX) {
        km_peerauth_secret_free(buf, cap);
        if (got == cap)
            return km_error_set(err, "peer auth: secret file %s: longer than %d bytes", path, KM_PEERAUTH_SECRET_MAX);
        return km_error_set(err, "peer auth: secret file %s: the secret is %zu bytes, need %d to %d", path, n,
                            KM_PEERAUTH_SECRET_MIN, KM_PEERAUTH_SECRET_MAX);
    }
    sodium_memzero(buf + n, cap - n); /* the stripped newline, and nothing else lingers */
    *secret = buf;
    *len = n;
    return 0;
}

void km_peerauth_secret_free(uint8_t *secret, size_t len) {
    if (!secret) return;
    sodium_memzero(secret, len);
    free(secret);
}

km_peerauth *km_peerauth_new(const uint8_t *secret, size_t len, int window_ms, km_error *err) {
    if (sodium_init() < 0) {
        km_error_set(err, "peer auth: libsodium failed to initialise");
        return NULL;
    }
    if (!secret || len < KM_PEERAUTH_SECRET_MIN || len > KM_PEERAUTH_SECRET_MAX) {
        km_error_set(err, "peer auth: the mesh secret is %zu bytes, need %d to %d", secret ? len : 0,
                     KM_PEERAUTH_SECRET_MIN, KM_PEERAUTH_SECRET_MAX);
        return NULL;
    }
    km_peerauth *a = calloc(1, sizeof *a);
    if (a) a->key = malloc(len);
    if (a) a->slots = calloc(MIN_SLOTS, sizeof *a->slots);
    if (!a || !a->key || !a->slots || pthread_mutex_init(&a->lock, NULL) != 0) {
        if (a) {
            free(a->key);
            free(a->slots);
            free(a);
        }
        km_error_set(err, "peer auth: out of memory");
        return NULL;
    }
    memcpy(a->key, secret, len);
    a->key_len = len;
    a->window_ms = window_ms > 0 ? window_ms : KM_PEERAUTH_DEFAULT_WINDOW_MS;
    a->now_fn = realtime_ms;
    /* Keyed: nonce collisions in the table cannot be arranged from outside. */
    crypto_shorthash_keygen(a->hash_key);
    a->nslots = MIN_SLOTS;
    a->limit = KM_PEERAUTH_DEFAULT_CACHE_LIMIT;
    a->min_expiry = INT64_MAX;
    a->next_sweep = INT64_MIN;
    return a;
}

void km_peerauth_free(km_peerauth *a) {
    if (!a) return;
    sodium_memzero(a->key, a->key_len);
    free(a->key);
    free(a->slots);
    pthread_mutex_destroy(&a->lock);
    sodium_memzero(a, sizeof *a);
    free(a);
}

int km_peerauth_sign_request(km_peerauth *a, const char *target, const char *method, const char *path,
                             const uint8_t *body, size_t body_len, char *out, size_t out_len) {
    if (!target || !method || !path || !out) return -1;
    req_hdr r;
    r.ts = now_ms(a);
    if (r.ts < 0 || r.ts > TS_MAX) return -1;
    randombytes_buf(r.nonce, NONCE_LEN);
    request_mac(a, target, method, path, body, body_len, &r, r.mac);
    char nonce_hex[2 * NONCE_LEN + 1], mac_hex[2 * MAC_LEN + 1];
    to_hex(nonce_hex, r.nonce, NONCE_LEN);
    to_hex(mac_hex, r.mac, MAC_LEN);
    int n = snprintf(out, out_len, VERSION " %" PRId64 " %s %s", r.ts, nonce_hex, mac_hex);
    if (n < 0 || (size_t)n >= out_len) {
        if (out_len) out[0] = 0;
        return -1;
    }
    return 0;
}

int km_peerauth_verify_request(km_peerauth *a, const char *self_id, bool untargeted_ok, const char *method,
                               const char *path, const uint8_t *body, size_t body_len, const char *header,
                               km_error *err) {
    if (!self_id || !method || !path)
        return km_error_set(err, "peer auth: no node id, method or path to check the request against");
    req_hdr r;
    if (parse_request_header(header, &r, err) != 0) return -1;
    int64_t now = now_ms(a);
    int64_t skew = now - r.ts; /* both within +-10^15: no overflow */
    if (skew > a->window_ms || -skew > a->window_ms) {
        char s1[32], s2[32];
        return km_error_set(err,
                            "peer auth: timestamp %s s %s, outside the %s s window (are the peers' clocks in sync?)",
                            fmt_secs(skew > 0 ? skew : -skew, s1, sizeof s1),
                            skew > 0 ? "in the past" : "in the future", fmt_secs(a->window_ms, s2, sizeof s2));
    }
    uint8_t mac[MAC_LEN];
    request_mac(a, self_id, method, path, body, body_len, &r, mac);
    bool ok = crypto_verify_32(mac, r.mac) == 0;
    if (!ok && untargeted_ok) { /* a first contact that did not know our id */
        request_mac(a, "", method, path, body, body_len, &r, mac);
        ok = crypto_verify_32(mac, r.mac) == 0;
    }
    if (!ok)
        return km_error_set(err, "peer auth: bad MAC (wrong mesh secret, a request meant for another node, or the "
                                 "request was altered)");

    pthread_mutex_lock(&a->lock);
    cache_result cr = cache_add(a, r.nonce, r.ts + a->window_ms, now);
    size_t limit = a->limit;
    pthread_mutex_unlock(&a->lock);
    char s[32];
    switch (cr) {
    case CACHE_OK:
        return 0;
    case CACHE_REPLAY:
        return km_error_set(err, "peer auth: replayed nonce (this request was already accepted within the %s s window)",
                            fmt_secs(a->window_ms, s, sizeof s));
    case CACHE_FULL:
        return km_error_set(err,
                            "peer auth: replay cache full (%zu nonces within the %s s window); refusing the request "
                            "rather than forgetting a nonce",
                            limit, fmt_secs(a->window_ms, s, sizeof s));
    case CACHE_NOMEM:
        break;
    }
    return km_error_set(err, "peer auth: out of memory for the replay cache");
}

/* The response header value for mac into out; -1 if out is too small. */
static int format_response_header(const uint8_t mac[MAC_LEN], char *out, size_t out_len) {
    char mac_hex[2 * MAC_LEN + 1];
    to_hex(mac_hex, mac, MAC_LEN);
    int n = snprintf(out, out_len, VERSION " %s", mac_hex);
    if (n < 0 || (size_t)n >= out_len) {
        if (out_len) out[0] = 0;
        return -1;
    }
    return 0;
}

/* Parse the header of a request we sent, to check its answer. */
static int parse_our_request(const char *request_header, req_hdr *r, km_error *err) {
    km_error e;
    if (parse_request_header(request_header, r, &e) == 0) return 0;
    return km_error_set(err, "peer auth: cannot check the response: our %s",
                        strncmp(e.msg, "peer auth: ", 11) == 0 ? e.msg + 11 : e.msg);
}

int km_peerauth_sign_response(km_peerauth *a, const char *request_header, int status, const uint8_t *body,
                              size_t body_len, char *out, size_t out_len) {
    if (!out) return -1;
    if (out_len) out[0] = 0;
    req_hdr r;
    if (parse_request_header(request_header, &r, NULL) != 0) return -1;
    uint8_t mac[MAC_LEN];
    response_mac(a, &r, status, body, body_len, mac);
    return format_response_header(mac, out, out_len);
}

int km_peerauth_verify_response(km_peerauth *a, const char *request_header, int status, const uint8_t *body,
                                size_t body_len, const char *response_header, km_error *err) {
    req_hdr r;
    if (parse_our_request(request_header, &r, err) != 0) return -1;
    uint8_t got[MAC_LEN], want[MAC_LEN];
    if (parse_response_header(response_header, got, err) != 0) return -1;
    response_mac(a, &r, status, body, body_len, want);
    if (crypto_verify_32(want, got) != 0)
        return km_error_set(err,
                            "peer auth: bad response MAC (wrong mesh secret, an altered answer, or the answer to "
                            "another request)");
    return 0;
}

int km_peerauth_sign_stream(km_peerauth *a, const char *request_header, int status, const char *type, char *out,
                            size_t out_len, uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN]) {
    if (!out || !type) return -1;
    if (out_len) out[0] = 0;
    req_hdr r;
    if (parse_request_header(request_header, &r, NULL) != 0) return -1;
    uint8_t mac[MAC_LEN];
    stream_mac(a, DOMAIN_STREAM, &r, status, type, mac);
    if (format_response_header(mac, out, out_len) != 0) return -1;
    stream_mac(a, DOMAIN_STREAM_KEY, &r, status, type, key);
    return 0;
}

int km_peerauth_verify_stream(km_peerauth *a, const char *request_header, int status, const char *type,
                              const char *response_header, uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN], km_error *err) {
    req_hdr r;
    if (parse_our_request(request_header, &r, err) != 0) return -1;
    uint8_t got[MAC_LEN], want[MAC_LEN];
    if (parse_response_header(response_header, got, err) != 0) return -1;
    stream_mac(a, DOMAIN_STREAM, &r, status, type ? type : "", want);
    if (crypto_verify_32(want, got) != 0)
        return km_error_set(err,
                            "peer auth: bad response MAC (wrong mesh secret, an altered status or type, or the answer "
                            "to another request)");
    stream_mac(a, DOMAIN_STREAM_KEY, &r, status, type ? type : "", key);
    return 0;
}

void km_peerauth_set_clock(km_peerauth *a, int64_t (*now)(void *ud), void *ud) {
    a->now_fn = now ? now : realtime_ms;
    a->now_ud = now ? ud : NULL;
}

void km_peerauth_set_cache_limit(km_peerauth *a, size_t limit) {
    pthread_mutex_lock(&a->lock);
    a->limit = limit ? limit : 1;
    pthread_mutex_unlock(&a->lock);
}

size_t km_peerauth_cache_count(km_peerauth *a) {
    pthread_mutex_lock(&a->lock);
    size_t n = a->used;
    pthread_mutex_unlock(&a->lock);
    return n;
}
