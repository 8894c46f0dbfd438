/* blob.h -- the state blob: a versioned, checksummed and optionally
 * authenticated container for one prompt state.
 *
 * Layout, format version 3 (all integers little-endian):
 *
 *   off  size  field
 *     0     4  magic "KVMB"
 *     4     2  format version (KM_BLOB_VERSION)
 *     6     2  header size (KM_BLOB_HEADER_SIZE)
 *     8    16  model fingerprint
 *    24     4  K cache type (ggml type id)
 *    28     4  V cache type (ggml type id)
 *    32     4  n_tokens: tokens held in the state
 *    36     4  flags (KM_BLOB_F_*)
 *    40     8  payload_len: bytes stored after the tokens
 *    48     8  raw_len: payload bytes after decoding (== payload_len unless ZSTD)
 *    56     8  checksum: XXH3-64 of bytes [0,56), [64,80) and [112,end),
 *              i.e. everything but itself and the MAC
 *    64     4  next_from  } valid with KM_BLOB_F_NEXT, else both 0
 *    68     4  next_token }
 *    72     8  reserved (0)
 *    80    32  MAC: keyed BLAKE2b-256 of bytes [0,80) and [112,end), i.e.
 *              everything but itself (checksum included); with KM_BLOB_F_MAC,
 *              else 0
 *   112   4*n  the token ids
 *     ..   ..  payload: llama.cpp's per-sequence state (llama_state_seq_get_data),
 *              as is or as one zstd frame
 *
 * Flags:
 *   ZSTD      the payload is one zstd frame that decodes to exactly raw_len bytes.
 *   SHUFFLE2  (only with ZSTD; raw_len even) before compression the raw payload
 *             was split into byte planes of 2-byte elements: all even bytes,
 *             then all odd bytes. An f16 value keeps sign, exponent and top
 *             mantissa bits in its high byte, so the planes compress much
 *             better than the mix. km_blob_compress shuffles only when K and
 *             V are both f16 or bf16. Gemma 3 270M (synthetic weights), a
 *             176-token state, zstd level 1, bytes per token:
 *                      raw     zstd    shuffle+zstd
 *               f16   18,459  16,895  15,524
 *               q8_0   9,819   9,379   9,425  (shuffle 0.5 % worse)
 *   NEXT      after this state, if the prompt's next token (position n_tokens)
 *             is next_from, greedy decoding produces next_token first.
 *   MAC       the MAC field holds a MAC made with the key of a shared tier
 *             (km_blob_authenticate): the Redis tier's store key on uploads,
 *             the mesh's key on states served to peers.
 * Any other bit, or a combination not described above, is rejected.
 *
 * The checksum catches corruption; only the MAC says who made a blob: anyone
 * can recompute a checksum. A state from a shared tier that has a key is
 * verified (km_blob_verify) before anything else reads it. A blob held
 * locally carries no MAC (the local store tracks where its bytes came from);
 * a change to an authenticated blob (compression) drops its MAC.
 *
 * Version 1 and 2 blobs (64/80-byte headers, no MAC) are rejected like any
 * other version: a state is a cache entry, recomputing it is always correct.
 *
 * Nothing here trusts the bytes: km_blob_parse checks sizes before reading,
 * then the checksum; km_blob_payload_decode bounds the decoded size before
 * allocating and checks it exactly; km_blob_check_request checks model, KV
 * types and tokens. */
#ifndef KVMESH_BLOB_H
#define KVMESH_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefix.h"
#include "util.h"

#define KM_BLOB_MAGIC "KVMB"
#define KM_BLOB_VERSION 3
#define KM_BLOB_HEADER_SIZE 112
#define KM_BLOB_MAX_TOKENS (1u << 20)

#define KM_BLOB_F_ZSTD (1u << 0)
#define KM_BLOB_F_SHUFFLE2 (1u << 1)
#define KM_BLOB_F_NEXT (1u << 2)
#define KM_BLOB_F_MAC (1u << 3)

#define KM_BLOB_KEY_LEN 32
#define KM_BLOB_MAC_LEN 32

/* A key that authenticates states on one shared tier. */
typedef struct km_blob_key {
    uint8_t k[KM_BLOB_KEY_LEN];
} km_blob_key;

typedef struct km_blob_info {
    uint16_t version;
    uint8_t fingerprint[KM_FINGERPRINT_LEN];
    int32_t type_k, type_v;
    uint32_t n_tokens;
    uint32_t flags;           /* KM_BLOB_F_* */
    const uint8_t *tokens_le; /* n_tokens little-endian u32, inside the blob */
    uint64_t payload_len;     /* stored bytes */
    const uint8_t *payload;   /* inside the blob; see km_blob_payload_decode */
    uint64_t raw_len;         /* payload bytes once decoded */
    bool has_next;            /* next_from/next_token valid (KM_BLOB_F_NEXT) */
    bool has_mac;             /* KM_BLOB_F_MAC (not checked by km_blob_parse: km_blob_verify) */
    int32_t next_from, next_token;
} km_blob_info;

/* Total size of a blob holding n_tokens tokens and payload_len payload bytes. */
size_t km_blob_size(uint32_t n_tokens, uint64_t payload_len);

/* Fill header and token ids of a blob buffer of km_blob_size(...) bytes and
 * return a pointer to its payload area (to be written by the caller, e.g. by
 * llama_state_seq_get_data directly, avoiding a copy). The payload is stored
 * as is (no flags). Call km_blob_seal after. */
uint8_t *km_blob_begin(uint8_t *blob, const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v,
                       const int32_t *tokens, uint32_t n_tokens, uint64_t payload_len);

/* Record the next-token hint (KM_BLOB_F_NEXT) in an unsealed blob: after this
 * state, prompt token next_from makes greedy decoding emit next_token. Seal after. */
void km_blob_set_next(uint8_t *blob, int32_t next_from, int32_t next_token);

/* Compute and store the checksum. */
void km_blob_seal(uint8_t *blob, size_t len);

/* Derive the key of one shared tier from a secret (km_peerauth_load_secret's
 * bytes): purpose "store" (the Redis tier) or "mesh" (states served to
 * peers). BLAKE2b-256 of the secret, then keyed BLAKE2b-256 of
 * "kvmesh-state-v1\0" || purpose: a key per purpose, never the secret itself
 * (which peerauth uses for request MACs). Returns -1 if libsodium fails. */
int km_blob_key_derive(km_blob_key *out, const uint8_t *secret, size_t len, const char *purpose);

/* Authenticate a blob for a shared tier: parse it (structure and checksum:
 * -1 with err set if it is not a valid blob), set KM_BLOB_F_MAC, reseal the
 * checksum and write the MAC made with key. */
int km_blob_authenticate(uint8_t *blob, size_t len, const km_blob_key *key, km_error *err);

/* 0 when blob is a version 3 blob carrying a MAC made with key over exactly
 * these len bytes; else -1 with err "unauthenticated: ...". Reads nothing but
 * the bytes the MAC covers (constant-time compare): call it on bytes from a
 * shared tier before km_blob_parse or anything else looks at them. */
int km_blob_verify(const uint8_t *blob, size_t len, const km_blob_key *key, km_error *err);

/* Remove the next-token hint and any MAC from a valid blob and reseal the
 * checksum (what a node does before vouching for a state whose hint it does
 * not trust). */
void km_blob_drop_hint(uint8_t *blob, size_t len);

/* Structural validation: magic, version, header size, token count and payload
 * length against max_len and the actual length, flags and the fields they
 * govern (raw_len also at most max_len), then the checksum. The payload of a
 * compressed blob is not looked at: see km_blob_payload_decode. */
int km_blob_parse(const uint8_t *blob, size_t len, size_t max_len, km_blob_info *out, km_error *err);

/* A new sealed blob with the payload as one zstd frame at `level` (1 = fastest
 * regular level; 0 = zstd's default), byte-plane shuffled first when the KV
 * types are 16-bit and the length is even. The input is parsed (nothing
 * trusted); the next-token hint is kept, a MAC is not (the bytes changed). Returns 0 with *out malloc'd,
 * 1 when it is compressed already or compression would not make it smaller
 * (*out untouched), -1 on error (not a valid blob, out of memory). */
int km_blob_compress(const uint8_t *blob, size_t len, int level, uint8_t **out, size_t *out_len, km_error *err);

/* The raw payload of a parsed blob. Uncompressed: *raw points into the blob,
 * *owned = NULL. Compressed: decoded into a malloc'd buffer of exactly raw_len
 * bytes (*owned = *raw; the caller frees *owned), after checking raw_len <=
 * max_raw (the allocation bound) and the frame's declared size; the frame must
 * decode to exactly raw_len bytes. Returns 0, or -1 with err set. */
int km_blob_payload_decode(const km_blob_info *b, size_t max_raw, uint8_t **owned, const uint8_t **raw, size_t *raw_len,
                           km_error *err);

/* Token i of a parsed blob. */
int32_t km_blob_token(const km_blob_info *b, uint32_t i);

/* Semantic validation for a request: same model fingerprint and KV types, and
 * the blob's tokens equal the first n_tokens tokens of the request (which must
 * have at least that many). */
int km_blob_check_request(const km_blob_info *b, const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v,
                          const int32_t *req_tokens, int n_req, km_error *err);

#endif
