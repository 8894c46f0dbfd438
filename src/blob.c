/* blob.c -- see blob.h. */
#include "blob.h"

#include <string.h>
#include <xxhash.h>

#define OFF_VERSION 4
#define OFF_HSIZE 6
#define OFF_FP 8
#define OFF_TYPE_K 24
#define OFF_TYPE_V 28
#define OFF_NTOK 32
#define OFF_FLAGS 36
#define OFF_PLEN 40
#define OFF_RESERVED 48
#define OFF_CHECKSUM 56

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
    uint8_t *t = blob + KM_BLOB_HEADER_SIZE;
    for (uint32_t i = 0; i < n_tokens; i++) km_put_u32(t + 4 * i, (uint32_t)tokens[i]);
    return t + 4 * (size_t)n_tokens;
}

static uint64_t blob_checksum(const uint8_t *blob, size_t len) {
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, blob, OFF_CHECKSUM);
    XXH3_64bits_update(st, blob + KM_BLOB_HEADER_SIZE, len - KM_BLOB_HEADER_SIZE);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

void km_blob_seal(uint8_t *blob, size_t len) { km_put_u64(blob + OFF_CHECKSUM, blob_checksum(blob, len)); }

int km_blob_parse(const uint8_t *blob, size_t len, size_t max_len, km_blob_info *out, km_error *err) {
    memset(out, 0, sizeof *out);
    if (len < KM_BLOB_HEADER_SIZE) return km_error_set(err, "blob truncated: %zu bytes, header needs %d", len, KM_BLOB_HEADER_SIZE);
    if (memcmp(blob, KM_BLOB_MAGIC, 4) != 0) return km_error_set(err, "not a kvmesh state blob (bad magic)");
    uint16_t version = km_get_u16(blob + OFF_VERSION);
    if (version != KM_BLOB_VERSION) return km_error_set(err, "blob format version %u, this kvmesh reads version %d", version, KM_BLOB_VERSION);
    if (km_get_u16(blob + OFF_HSIZE) != KM_BLOB_HEADER_SIZE) return km_error_set(err, "blob header size %u, expected %d", km_get_u16(blob + OFF_HSIZE), KM_BLOB_HEADER_SIZE);
    if (len > max_len) return km_error_set(err, "blob of %zu bytes exceeds the limit of %zu", len, max_len);
    uint32_t n_tokens = km_get_u32(blob + OFF_NTOK);
    uint64_t plen = km_get_u64(blob + OFF_PLEN);
    if (n_tokens == 0 || n_tokens > KM_BLOB_MAX_TOKENS) return km_error_set(err, "blob claims %u tokens (limit %u)", n_tokens, KM_BLOB_MAX_TOKENS);
    if (plen > max_len) return km_error_set(err, "blob claims a %llu-byte payload (limit %zu)", (unsigned long long)plen, max_len);
    size_t want = km_blob_size(n_tokens, plen);
    if (len != want) return km_error_set(err, "blob is %zu bytes but its header describes %zu (truncated or padded)", len, want);
    if (km_get_u32(blob + OFF_FLAGS) != 0 || km_get_u64(blob + OFF_RESERVED) != 0) return km_error_set(err, "blob has unknown flags set");
    uint64_t sum = km_get_u64(blob + OFF_CHECKSUM);
    if (sum != blob_checksum(blob, len)) return km_error_set(err, "blob checksum mismatch (corrupted in storage or transit)");
    out->version = version;
    memcpy(out->fingerprint, blob + OFF_FP, KM_FINGERPRINT_LEN);
    out->type_k = (int32_t)km_get_u32(blob + OFF_TYPE_K);
    out->type_v = (int32_t)km_get_u32(blob + OFF_TYPE_V);
    out->n_tokens = n_tokens;
    out->tokens_le = blob + KM_BLOB_HEADER_SIZE;
    out->payload_len = plen;
    out->payload = blob + KM_BLOB_HEADER_SIZE + 4 * (size_t)n_tokens;
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
