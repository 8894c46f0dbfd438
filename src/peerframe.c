/* peerframe.c -- see peerframe.h. */
#include "peerframe.h"

#include <sodium.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAC_LEN crypto_auth_hmacsha256_BYTES
#define LEN_BYTES 4

struct km_peerframe_writer {
    uint8_t key[KM_PEERFRAME_KEY_LEN];
    uint8_t chain[MAC_LEN];
    bool ended;
};

struct km_peerframe_reader {
    uint8_t key[KM_PEERFRAME_KEY_LEN];
    uint8_t chain[MAC_LEN];
    bool ended, failed;
    size_t fill;  /* bytes of the current frame in buf */
    size_t total; /* its whole size, once its length is known (0: not yet) */
    uint8_t buf[LEN_BYTES + KM_PEERFRAME_MAX + MAC_LEN];
};

/* mac = HMAC(key, chain u32(len) payload); the new chain value. */
static void frame_mac(const uint8_t key[KM_PEERFRAME_KEY_LEN], const uint8_t chain[MAC_LEN], const uint8_t len4[4],
                      const uint8_t *payload, size_t len, uint8_t mac[MAC_LEN]) {
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, KM_PEERFRAME_KEY_LEN);
    crypto_auth_hmacsha256_update(&st, chain, MAC_LEN);
    crypto_auth_hmacsha256_update(&st, len4, LEN_BYTES);
    if (len) crypto_auth_hmacsha256_update(&st, payload, len);
    crypto_auth_hmacsha256_final(&st, mac);
    sodium_memzero(&st, sizeof st);
}

/* ------------------------------------------------------------------ writer */

km_peerframe_writer *km_peerframe_writer_new(const uint8_t key[KM_PEERFRAME_KEY_LEN]) {
    if (sodium_init() < 0) return NULL;
    km_peerframe_writer *w = calloc(1, sizeof *w);
    if (w) memcpy(w->key, key, KM_PEERFRAME_KEY_LEN);
    return w;
}

void km_peerframe_writer_free(km_peerframe_writer *w) {
    if (!w) return;
    sodium_memzero(w, sizeof *w);
    free(w);
}

/* One frame of len bytes (0: the end) into out. */
static size_t put_frame(km_peerframe_writer *w, const uint8_t *data, size_t len, uint8_t *out) {
    km_put_u32(out, (uint32_t)len);
    if (len) memmove(out + LEN_BYTES, data, len);
    frame_mac(w->key, w->chain, out, out + LEN_BYTES, len, w->chain);
    memcpy(out + LEN_BYTES + len, w->chain, MAC_LEN);
    return LEN_BYTES + len + MAC_LEN;
}

size_t km_peerframe_write(km_peerframe_writer *w, const uint8_t *data, size_t len, uint8_t *out) {
    if (w->ended || len == 0 || len > KM_PEERFRAME_MAX) return 0;
    return put_frame(w, data, len, out);
}

size_t km_peerframe_write_end(km_peerframe_writer *w, uint8_t *out) {
    if (w->ended) return 0;
    w->ended = true;
    return put_frame(w, NULL, 0, out);
}

int km_peerframe_seal(const uint8_t key[KM_PEERFRAME_KEY_LEN], const uint8_t *data, size_t len, uint8_t **out,
                      size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    size_t frames = (len + KM_PEERFRAME_MAX - 1) / KM_PEERFRAME_MAX;
    km_peerframe_writer *w = km_peerframe_writer_new(key);
    uint8_t *buf = malloc(len + (frames + 1) * KM_PEERFRAME_OVERHEAD);
    if (!w || !buf) {
        km_peerframe_writer_free(w);
        free(buf);
        return -1;
    }
    size_t o = 0;
    for (size_t off = 0; off < len; off += KM_PEERFRAME_MAX) {
        size_t n = len - off < KM_PEERFRAME_MAX ? len - off : KM_PEERFRAME_MAX;
        o += km_peerframe_write(w, data + off, n, buf + o);
    }
    o += km_peerframe_write_end(w, buf + o);
    km_peerframe_writer_free(w);
    *out = buf;
    *out_len = o;
    return 0;
}

/* ------------------------------------------------------------------ reader */

km_peerframe_reader *km_peerframe_reader_new(const uint8_t key[KM_PEERFRAME_KEY_LEN]) {
    if (sodium_init() < 0) return NULL;
    km_peerframe_reader *r = calloc(1, sizeof *r);
    if (r) memcpy(r->key, key, KM_PEERFRAME_KEY_LEN);
    return r;
}

void km_peerframe_reader_free(km_peerframe_reader *r) {
    if (!r) return;
    sodium_memzero(r->key, sizeof r->key);
    free(r);
}

static int refuse(km_peerframe_reader *r, km_error *err, const char *why) {
    r->failed = true;
    return km_error_set(err, "peer frame: %s", why);
}

int km_peerframe_read(km_peerframe_reader *r, const uint8_t *in, size_t len, size_t *used, const uint8_t **payload,
                      size_t *payload_len, km_error *err) {
    *used = 0;
    *payload = NULL;
    *payload_len = 0;
    if (r->failed) return km_error_set(err, "peer frame: the stream was refused already");
    if (r->ended) return len ? refuse(r, err, "bytes after the end frame") : KM_PEERFRAME_END;
    size_t off = 0;
    for (;;) {
        size_t want = r->total ? r->total : LEN_BYTES;
        size_t take = want - r->fill < len - off ? want - r->fill : len - off;
        memcpy(r->buf + r->fill, in + off, take);
        r->fill += take;
        off += take;
        *used = off;
        if (r->fill < want) return KM_PEERFRAME_MORE;
        if (!r->total) { /* the length is in: the frame's size */
            uint32_t n = km_get_u32(r->buf);
            if (n > KM_PEERFRAME_MAX) return refuse(r, err, "frame longer than the limit");
            r->total = LEN_BYTES + n + MAC_LEN;
            continue;
        }
        size_t n = r->total - LEN_BYTES - MAC_LEN;
        uint8_t mac[MAC_LEN];
        frame_mac(r->key, r->chain, r->buf, r->buf + LEN_BYTES, n, mac);
        if (crypto_verify_32(mac, r->buf + LEN_BYTES + n) != 0)
            return refuse(r, err, "bad frame MAC (altered, dropped, repeated or reordered bytes)");
        memcpy(r->chain, mac, MAC_LEN);
        r->fill = 0;
        r->total = 0;
        if (n == 0) {
            r->ended = true;
            if (off < len) return refuse(r, err, "bytes after the end frame");
            return KM_PEERFRAME_END;
        }
        *payload = r->buf + LEN_BYTES;
        *payload_len = n;
        return KM_PEERFRAME_DATA;
    }
}

int km_peerframe_reader_finish(const km_peerframe_reader *r, km_error *err) {
    if (r->ended && !r->failed) return 0;
    return km_error_set(err, "peer frame: %s", r->failed ? "the stream was refused" : "truncated (no end frame)");
}
