/* blob.h -- the state blob: a versioned, checksummed container for one prompt state.
 *
 * Layout (all integers little-endian):
 *
 *   off  size  field
 *     0     4  magic "KVMB"
 *     4     2  format version (KM_BLOB_VERSION)
 *     6     2  header size (KM_BLOB_HEADER_SIZE)
 *     8    16  model fingerprint
 *    24     4  K cache type (ggml type id)
 *    28     4  V cache type (ggml type id)
 *    32     4  n_tokens: tokens held in the state
 *    36     4  flags (0; reserved)
 *    40     8  payload length in bytes
 *    48     8  reserved (0)
 *    56     8  checksum: XXH3-64 of bytes [0,56) and everything after the header
 *    64  4*n   the token ids
 *     ..   ..  payload: llama.cpp's per-sequence state (llama_state_seq_get_data)
 *
 * Nothing here trusts the bytes: km_blob_parse checks sizes before reading,
 * then the checksum; km_blob_check_request checks model, KV types and tokens. */
#ifndef KVMESH_BLOB_H
#define KVMESH_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefix.h"
#include "util.h"

#define KM_BLOB_MAGIC "KVMB"
#define KM_BLOB_VERSION 1
#define KM_BLOB_HEADER_SIZE 64
#define KM_BLOB_MAX_TOKENS (1u << 20)

typedef struct km_blob_info {
    uint16_t version;
    uint8_t fingerprint[KM_FINGERPRINT_LEN];
    int32_t type_k, type_v;
    uint32_t n_tokens;
    const uint8_t *tokens_le; /* n_tokens little-endian u32, inside the blob */
    uint64_t payload_len;
    const uint8_t *payload; /* inside the blob */
} km_blob_info;

/* Total size of a blob holding n_tokens tokens and payload_len payload bytes. */
size_t km_blob_size(uint32_t n_tokens, uint64_t payload_len);

/* Fill header and token ids of a blob buffer of km_blob_size(...) bytes and
 * return a pointer to its payload area (to be written by the caller, e.g. by
 * llama_state_seq_get_data directly, avoiding a copy). Call km_blob_seal after. */
uint8_t *km_blob_begin(uint8_t *blob, const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v,
                       const int32_t *tokens, uint32_t n_tokens, uint64_t payload_len);

/* Compute and store the checksum. */
void km_blob_seal(uint8_t *blob, size_t len);

/* Structural validation: magic, version, header size, token count and payload
 * length against max_len and the actual length, then the checksum. */
int km_blob_parse(const uint8_t *blob, size_t len, size_t max_len, km_blob_info *out, km_error *err);

/* Token i of a parsed blob. */
int32_t km_blob_token(const km_blob_info *b, uint32_t i);

/* Semantic validation for a request: same model fingerprint and KV types, and
 * the blob's tokens equal the first n_tokens tokens of the request (which must
 * have at least that many). */
int km_blob_check_request(const km_blob_info *b, const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v,
                          const int32_t *req_tokens, int n_req, km_error *err);

#endif
