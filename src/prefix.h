/* prefix.h -- segment boundaries and chained prefix keys.
 *
 * A prompt is a token sequence cut at boundaries b_1 < b_2 < ... < b_m. The key of
 * boundary i names "exactly tokens[0..b_i) on exactly this model configuration":
 *
 *     k_0 = H(model fingerprint, KV types, salt)
 *     k_i = H(k_{i-1}, tokens[b_{i-1} .. b_i))          (b_0 = 0)
 *
 * H is XXH3-128 over a fixed little-endian encoding, so keys are stable across
 * processes, machines and byte orders (tests/test_prefix.c holds test vectors).
 *
 * The last boundary is always n_tokens - 1: the final prompt token is decoded on
 * its own, because its logits are needed to sample and a stored state holds no
 * logits. A "full hit" therefore restores n_tokens - 1 tokens and decodes one. */
#ifndef KVMESH_PREFIX_H
#define KVMESH_PREFIX_H

#include <stdbool.h>
#include <stdint.h>

#define KM_KEY_LEN 16
#define KM_FINGERPRINT_LEN 16

typedef struct km_key {
    uint8_t b[KM_KEY_LEN];
} km_key;

/* k_0 from the model fingerprint, the K and V cache types (ggml type ids) and a
 * salt (NULL or "" for none; lets a deployment keep separate key spaces). */
km_key km_key_root(const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v, const char *salt);

/* k_i from k_{i-1} and the tokens of segment i. */
km_key km_key_next(km_key prev, const int32_t *tokens, int n_tokens);

/* Keys of every boundary: keys[i] names tokens[0..bounds[i]). */
void km_keys_for_boundaries(km_key root, const int32_t *tokens, const int *bounds, int n_bounds, km_key *keys);

bool km_key_equal(km_key a, km_key b);

/* 32 lowercase hex digits + NUL. */
void km_key_hex(km_key k, char out[2 * KM_KEY_LEN + 1]);
int km_key_from_hex(const char *hex, km_key *out);

/* At most this many boundaries per prompt: each one stores a whole state, so
 * a prompt of n tokens cut at every segment end would store O(n^2) bytes. */
#define KM_MAX_BOUNDS 64
/* The first candidates kept as given, however close together. */
#define KM_BOUNDS_DENSE 32

/* Boundaries of a prompt of n_tokens tokens (n_tokens >= 1).
 * seg_ends: token offsets where caller-marked segments end (any order, may hold
 * duplicates or values out of range, which are dropped); n_seg = 0 means no
 * explicit segments, and then fixed blocks of block_size tokens are used
 * (block_size <= 0: no blocks). n_tokens - 1 is always added as the last boundary;
 * 0 is never a boundary.
 *
 * Candidates are merged past the first KM_BOUNDS_DENSE: a later one is kept
 * only if it lies at least max(64, p / 8) tokens past the kept boundary p
 * before it, and none after the (KM_MAX_BOUNDS - 1)-th; *n_merged (may be
 * NULL) gets how many were dropped. Whether a candidate is kept depends only
 * on the candidates before it, never on what follows: two prompts sharing a
 * prefix get the same boundaries (and keys) in it, so merging never costs the
 * reuse of a prefix.
 *
 * Writes at most n_tokens values to out and returns how many (out must hold
 * n_tokens ints). */
int km_boundaries(const int *seg_ends, int n_seg, int n_tokens, int block_size, int *out, int *n_merged);

#endif
