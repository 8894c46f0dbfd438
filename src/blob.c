/* blob.c -- see blob.h. */
#include "blob.h"

#include <ggml.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#define OFF_VERSION 4
#define OFF_HSIZE 6
#define OFF_FP 8
#define OFF_TYPE_K 24
#define OFF_TYPE_V 28
#define OFF_NTOK 32
#define OFF_FLAGS 36
#define OFF_PLEN 40
#define OFF_RAWLEN 48
#define OFF_CHECKSUM 56
#define OFF_NEXT_FROM 64
#define OFF_NEXT_TOKEN 68
#define OFF_RESERVED 72
#define OFF_MAC 80
#define END_MAC (OFF_MAC + KM_BLOB_MAC_LEN)

#define KNOWN_FLAGS (KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2 | KM_BLOB_F_NEXT | KM_BLOB_F_MAC)

size_t km_blob_size(uint32_t n_tokens, uint64_t payload_len) {
    return KM_BLOB_HEADER_SIZE + (size_t)n_tokens * 4 + (size_t)payload_len;
}

uint8_t *km_blob_begin(uint8_t *blob, const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v,
                       const int32_t *tokens, uint32_t n_tokens, uint64_t payload_len) {
    memset(blob, 0, KM_BLOB_HEADER_SIZE);
    memcpy(blob, KM_BLOB_MAGIC, 4);
    km_put_u16(blob + OFF_VERSION, KM_BLOB_VERSION);
    km_put_u16(blob + OFF_HSIZE, KM_BLOB_HEADER_SIZE);
    memcpy(blob + OFF_FP, fingerprint, KM_FINGERPRINT_LEN);
    km_put_u32(blob + OFF_TYPE_K, (uint32_t)type_k);
    km_put_u32(blob + OFF_TYPE_V, (uint32_t)type_v);
    km_put_u32(blob + OFF_NTOK, n_tokens);
    km_put_u64(blob + OFF_PLEN, payload_len);
    km_put_u64(blob + OFF_RAWLEN, payload_len);
    uint8_t *t = blob + KM_BLOB_HEADER_SIZE;
    for (uint32_t i = 0; i < n_tokens; i++) km_put_u32(t + 4 * i, (uint32_t)tokens[i]);
    return t + 4 * (size_t)n_tokens;
}

void km_blob_set_next(uint8_t *blob, int32_t next_from, int32_t next_token) {
    km_put_u32(blob + OFF_FLAGS, km_get_u32(blob + OFF_FLAGS) | KM_BLOB_F_NEXT);
    km_put_u32(blob + OFF_NEXT_FROM, (uint32_t)next_from);
    km_put_u32(blob + OFF_NEXT_TOKEN, (uint32_t)next_token);
}

/* Everything but the checksum field itself and the MAC field. */
static uint64_t blob_checksum(const uint8_t *blob, size_t len) {
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, blob, OFF_CHECKSUM);
    XXH3_64bits_update(st, blob + OFF_CHECKSUM + 8, OFF_MAC - (OFF_CHECKSUM + 8));
    XXH3_64bits_update(st, blob + END_MAC, len - END_MAC);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

void km_blob_seal(uint8_t *blob, size_t len) { km_put_u64(blob + OFF_CHECKSUM, blob_checksum(blob, len)); }

int km_blob_key_derive(km_blob_key *out, const uint8_t *secret, size_t len, const char *purpose) {
    static const char label[] = "kvmesh-state-v1"; /* with its NUL: label and purpose never run together */
    uint8_t prk[crypto_generichash_BYTES];
    crypto_generichash_state st;
    if (sodium_init() < 0 || crypto_generichash(prk, sizeof prk, secret, len, NULL, 0) != 0) return -1;
    int rc = crypto_generichash_init(&st, prk, sizeof prk, KM_BLOB_KEY_LEN) != 0 ||
                     crypto_generichash_update(&st, (const uint8_t *)label, sizeof label) != 0 ||
                     crypto_generichash_update(&st, (const uint8_t *)purpose, strlen(purpose)) != 0 ||
                     crypto_generichash_final(&st, out->k, KM_BLOB_KEY_LEN) != 0
                 ? -1
                 : 0;
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(&st, sizeof st);
    return rc;
}

/* Keyed BLAKE2b-256 of everything but the MAC field (len >= header size). */
static void blob_mac(const uint8_t *blob, size_t len, const km_blob_key *key, uint8_t mac[KM_BLOB_MAC_LEN]) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, key->k, KM_BLOB_KEY_LEN, KM_BLOB_MAC_LEN);
    crypto_generichash_update(&st, blob, OFF_MAC);
    crypto_generichash_update(&st, blob + END_MAC, len - END_MAC);
    crypto_generichash_final(&st, mac, KM_BLOB_MAC_LEN);
}

int km_blob_verify(const uint8_t *blob, size_t len, const km_blob_key *key, km_error *err) {
    if (len < KM_BLOB_HEADER_SIZE || memcmp(blob, KM_BLOB_MAGIC, 4) != 0)
        return km_error_set(err, "unauthenticated: not a kvmesh state blob");
    if (km_get_u16(blob + OFF_VERSION) != KM_BLOB_VERSION)
        return km_error_set(err, "unauthenticated: format version %u carries no MAC", km_get_u16(blob + OFF_VERSION));
    if (!(km_get_u32(blob + OFF_FLAGS) & KM_BLOB_F_MAC)) return km_error_set(err, "unauthenticated: the state carries no MAC");
    uint8_t mac[KM_BLOB_MAC_LEN];
    blob_mac(blob, len, key, mac);
    if (crypto_verify_32(mac, blob + OFF_MAC) != 0)
        return km_error_set(err, "unauthenticated: bad MAC (altered, or made with another key)");
    return 0;
}

int km_blob_authenticate(uint8_t *blob, size_t len, const km_blob_key *key, km_error *err) {
    km_blob_info b;
    if (km_blob_parse(blob, len, SIZE_MAX, &b, err) != 0) return -1;
    km_put_u32(blob + OFF_FLAGS, b.flags | KM_BLOB_F_MAC);
    km_blob_seal(blob, len);
    blob_mac(blob, len, key, blob + OFF_MAC);
    return 0;
}

void km_blob_drop_hint(uint8_t *blob, size_t len) {
    km_put_u32(blob + OFF_FLAGS, km_get_u32(blob + OFF_FLAGS) & ~(KM_BLOB_F_NEXT | KM_BLOB_F_MAC));
    km_put_u32(blob + OFF_NEXT_FROM, 0);
    km_put_u32(blob + OFF_NEXT_TOKEN, 0);
    memset(blob + OFF_MAC, 0, KM_BLOB_MAC_LEN);
    km_blob_seal(blob, len);
}

/* The flag combinations blob.h allows, and the fields they govern. */
static int check_flags(const uint8_t *blob, uint32_t flags, uint64_t plen, uint64_t raw_len, km_error *err) {
    if (flags & ~KNOWN_FLAGS) return km_error_set(err, "blob has unknown flags set (0x%x)", flags & ~KNOWN_FLAGS);
    bool zstd = flags & KM_BLOB_F_ZSTD;
    if ((flags & KM_BLOB_F_SHUFFLE2) && !zstd) return km_error_set(err, "blob flags: byte shuffle without compression");
    if ((flags & KM_BLOB_F_SHUFFLE2) && raw_len % 2 != 0)
        return km_error_set(err, "blob flags: 2-byte shuffle of an odd raw length (%llu)", (unsigned long long)raw_len);
    if (!zstd && raw_len != plen)
        return km_error_set(err, "uncompressed blob with a raw length of %llu but a %llu-byte payload",
                            (unsigned long long)raw_len, (unsigned long long)plen);
    if (!(flags & KM_BLOB_F_NEXT) && (km_get_u32(blob + OFF_NEXT_FROM) != 0 || km_get_u32(blob + OFF_NEXT_TOKEN) != 0))
        return km_error_set(err, "blob has next-token fields but not their flag");
    if (km_get_u64(blob + OFF_RESERVED) != 0) return km_error_set(err, "blob has nonzero reserved header bytes");
    if (!(flags & KM_BLOB_F_MAC) && !sodium_is_zero(blob + OFF_MAC, KM_BLOB_MAC_LEN))
        return km_error_set(err, "blob has a MAC field but not its flag");
    return 0;
}

int km_blob_parse(const uint8_t *blob, size_t len, size_t max_len, km_blob_info *out, km_error *err) {
    memset(out, 0, sizeof *out);
    /* magic and version first: an older format has a shorter header */
    if (len < OFF_HSIZE) return km_error_set(err, "blob truncated: %zu bytes, header needs %d", len, KM_BLOB_HEADER_SIZE);
    if (memcmp(blob, KM_BLOB_MAGIC, 4) != 0) return km_error_set(err, "not a kvmesh state blob (bad magic)");
    uint16_t version = km_get_u16(blob + OFF_VERSION);
    if (version != KM_BLOB_VERSION)
        return km_error_set(err, "blob format version %u, this kvmesh reads version %d%s", version, KM_BLOB_VERSION,
                            version < KM_BLOB_VERSION ? " (written by an older kvmesh; the state is recomputed)" : "");
    if (len < KM_BLOB_HEADER_SIZE) return km_error_set(err, "blob truncated: %zu bytes, header needs %d", len, KM_BLOB_HEADER_SIZE);
    if (km_get_u16(blob + OFF_HSIZE) != KM_BLOB_HEADER_SIZE) return km_error_set(err, "blob header size %u, expected %d", km_get_u16(blob + OFF_HSIZE), KM_BLOB_HEADER_SIZE);
    if (len > max_len) return km_error_set(err, "blob of %zu bytes exceeds the limit of %zu", len, max_len);
    uint32_t n_tokens = km_get_u32(blob + OFF_NTOK);
    uint32_t flags = km_get_u32(blob + OFF_FLAGS);
    uint64_t plen = km_get_u64(blob + OFF_PLEN);
    uint64_t raw_len = km_get_u64(blob + OFF_RAWLEN);
    if (n_tokens == 0 || n_tokens > KM_BLOB_MAX_TOKENS) return km_error_set(err, "blob claims %u tokens (limit %u)", n_tokens, KM_BLOB_MAX_TOKENS);
    if (plen > max_len) return km_error_set(err, "blob claims a %llu-byte payload (limit %zu)", (unsigned long long)plen, max_len);
    if (raw_len > max_len)
        return km_error_set(err, "blob claims a payload of %llu bytes once decoded (limit %zu)", (unsigned long long)raw_len, max_len);
    /* Compared by subtraction: with max_len near SIZE_MAX, header + tokens +
     * plen could wrap around and match a short len. */
    size_t head = KM_BLOB_HEADER_SIZE + 4 * (size_t)n_tokens;
    if (len < head || plen != len - head)
        return km_error_set(err, "blob is %zu bytes but its header describes %u tokens and a %llu-byte payload (truncated or padded)",
                            len, n_tokens, (unsigned long long)plen);
    if (check_flags(blob, flags, plen, raw_len, err) != 0) return -1;
    uint64_t sum = km_get_u64(blob + OFF_CHECKSUM);
    if (sum != blob_checksum(blob, len)) return km_error_set(err, "blob checksum mismatch (corrupted in storage or transit)");
    out->version = version;
    memcpy(out->fingerprint, blob + OFF_FP, KM_FINGERPRINT_LEN);
    out->type_k = (int32_t)km_get_u32(blob + OFF_TYPE_K);
    out->type_v = (int32_t)km_get_u32(blob + OFF_TYPE_V);
    out->n_tokens = n_tokens;
    out->flags = flags;
    out->tokens_le = blob + KM_BLOB_HEADER_SIZE;
    out->payload_len = plen;
    out->payload = blob + head;
    out->raw_len = raw_len;
    out->has_next = flags & KM_BLOB_F_NEXT;
    out->has_mac = flags & KM_BLOB_F_MAC;
    out->next_from = (int32_t)km_get_u32(blob + OFF_NEXT_FROM);
    out->next_token = (int32_t)km_get_u32(blob + OFF_NEXT_TOKEN);
    return 0;
}

/* Byte planes of 2-byte elements: all even bytes, then all odd ones (n even). */
static void shuffle2(uint8_t *dst, const uint8_t *src, size_t n) {
    size_t h = n / 2;
    for (size_t i = 0; i < h; i++) {
        dst[i] = src[2 * i];
        dst[h + i] = src[2 * i + 1];
    }
}

static void unshuffle2(uint8_t *dst, const uint8_t *src, size_t n) {
    size_t h = n / 2;
    for (size_t i = 0; i < h; i++) {
        dst[2 * i] = src[i];
        dst[2 * i + 1] = src[h + i];
    }
}

static bool is_16bit_type(int32_t t) { return t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

int km_blob_compress(const uint8_t *blob, size_t len, int level, uint8_t **out, size_t *out_len, km_error *err) {
    km_blob_info b;
    /* No size limit here: nothing is allocated from what the header claims. */
    if (km_blob_parse(blob, len, SIZE_MAX, &b, err) != 0) return -1;
    if (b.flags & KM_BLOB_F_ZSTD) return 1;
    size_t plen = (size_t)b.payload_len, head = len - plen;
    if (plen < 2) return 1; /* a zstd frame alone is bigger */
    /* Byte planes only pay off when the K and V values are 2-byte floats;
     * q8_0 blocks (an f16 scale + 32 int8) compress a bit worse shuffled
     * (figures in blob.h). */
    bool shuffle = plen % 2 == 0 && is_16bit_type(b.type_k) && is_16bit_type(b.type_v);
    const uint8_t *src = b.payload;
    uint8_t *tmp = NULL;
    if (shuffle) {
        tmp = malloc(plen);
        if (!tmp) return km_error_set(err, "out of memory compressing a %zu-byte payload", plen);
        shuffle2(tmp, b.payload, plen);
        src = tmp;
    }
    /* Room for a frame one byte shorter than the payload: a frame that does
     * not fit would not be worth storing, and zstd stops as soon as it knows. */
    uint8_t *o = malloc(head + plen - 1);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    int rc = -1;
    if (!o || !cc) {
        km_error_set(err, "out of memory compressing a %zu-byte payload", plen);
        goto done;
    }
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
    size_t n = ZSTD_compress2(cc, o + head, plen - 1, src, plen);
    if (ZSTD_isError(n)) {
        if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) rc = 1;
        else km_error_set(err, "zstd compression failed: %s", ZSTD_getErrorName(n));
        goto done;
    }
    memcpy(o, blob, head); /* header (incl. any next-token hint) and tokens */
    memset(o + OFF_MAC, 0, KM_BLOB_MAC_LEN); /* the MAC was for the old bytes */
    uint32_t flags = (b.flags & ~KM_BLOB_F_MAC) | KM_BLOB_F_ZSTD | (shuffle ? KM_BLOB_F_SHUFFLE2 : 0);
    km_put_u32(o + OFF_FLAGS, flags);
    km_put_u64(o + OFF_PLEN, n);
    km_put_u64(o + OFF_RAWLEN, plen);
    km_blob_seal(o, head + n);
    uint8_t *shrunk = realloc(o, head + n);
    *out = shrunk ? shrunk : o;
    *out_len = head + n;
    o = NULL;
    rc = 0;
done:
    ZSTD_freeCCtx(cc);
    free(o);
    free(tmp);
    return rc;
}

int km_blob_payload_decode(const km_blob_info *b, size_t max_raw, uint8_t **owned, const uint8_t **raw, size_t *raw_len,
                           km_error *err) {
    *owned = NULL;
    *raw = NULL;
    *raw_len = 0;
    if (b->raw_len > max_raw)
        return km_error_set(err, "blob payload is %llu bytes once decoded, over the limit of %zu", (unsigned long long)b->raw_len, max_raw);
    if (!(b->flags & KM_BLOB_F_ZSTD)) {
        *raw = b->payload;
        *raw_len = (size_t)b->payload_len;
        return 0;
    }
    const uint8_t *src = b->payload;
    size_t plen = (size_t)b->payload_len, n = (size_t)b->raw_len;
    /* Everything about the frame is checked before the output is allocated. */
    if (plen < 4 || km_get_u32(src) != ZSTD_MAGICNUMBER) return km_error_set(err, "compressed payload corrupt: not a zstd frame");
    unsigned long long declared = ZSTD_getFrameContentSize(src, plen);
    if (declared == ZSTD_CONTENTSIZE_ERROR) return km_error_set(err, "compressed payload corrupt: bad zstd frame header");
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != n)
        return km_error_set(err, "compressed payload corrupt: the frame declares %llu bytes, the blob header %zu", declared, n);
    size_t fsize = ZSTD_findFrameCompressedSize(src, plen);
    if (ZSTD_isError(fsize)) return km_error_set(err, "compressed payload corrupt: %s", ZSTD_getErrorName(fsize));
    if (fsize != plen)
        return km_error_set(err, "compressed payload corrupt: %zu bytes after the %zu-byte frame", plen - fsize, fsize);
    uint8_t *dst = malloc(n ? n : 1);
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    if (!dst || !dc) {
        free(dst);
        ZSTD_freeDCtx(dc);
        return km_error_set(err, "out of memory decoding a %zu-byte payload", n);
    }
    /* Exactly n bytes of room: a frame that would produce more fails here. */
    size_t got = ZSTD_decompressDCtx(dc, dst, n, src, plen);
    ZSTD_freeDCtx(dc);
    if (ZSTD_isError(got) || got != n) {
        free(dst);
        if (ZSTD_isError(got)) return km_error_set(err, "compressed payload corrupt: %s", ZSTD_getErrorName(got));
        return km_error_set(err, "compressed payload corrupt: decodes to %zu bytes, the blob header says %zu", got, n);
    }
    if (b->flags & KM_BLOB_F_SHUFFLE2) {
        uint8_t *plain = malloc(n ? n : 1);
        if (!plain) {
            free(dst);
            return km_error_set(err, "out of memory decoding a %zu-byte payload", n);
        }
        unshuffle2(plain, dst, n);
        free(dst);
        dst = plain;
    }
    *owned = dst;
    *raw = dst;
    *raw_len = n;
    return 0;
}

int32_t km_blob_token(const km_blob_info *b, uint32_t i) { return (int32_t)km_get_u32(b->tokens_le + 4 * (size_t)i); }

int km_blob_check_request(const km_blob_info *b, const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v,
                          const int32_t *req_tokens, int n_req, km_error *err) {
    if (memcmp(b->fingerprint, fingerprint, KM_FINGERPRINT_LEN) != 0) return km_error_set(err, "blob was made by another model (fingerprint differs)");
    if (b->type_k != type_k || b->type_v != type_v)
        return km_error_set(err, "blob has KV types %d/%d, this context uses %d/%d", b->type_k, b->type_v, type_k, type_v);
    if ((int64_t)b->n_tokens > (int64_t)n_req) return km_error_set(err, "blob holds %u tokens, the request only %d", b->n_tokens, n_req);
    for (uint32_t i = 0; i < b->n_tokens; i++)
        if (km_blob_token(b, i) != req_tokens[i])
            return km_error_set(err, "blob tokens differ from the request at position %u (hash collision or false positive)", i);
    return 0;
}
