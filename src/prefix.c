/* prefix.c -- see prefix.h. */
#include "prefix.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "util.h"

/* Domain tags keep a root key from ever equalling a chained key. */
static const char ROOT_TAG[] = "kvmesh-root-v1";
static const char NEXT_TAG[] = "kvmesh-next-v1";

static km_key key_from_hash(XXH128_hash_t h) {
    km_key k;
    km_put_u64(k.b, h.low64);
    km_put_u64(k.b + 8, h.high64);
    return k;
}

km_key km_key_root(const uint8_t fingerprint[KM_FINGERPRINT_LEN], int type_k, int type_v, const char *salt) {
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, ROOT_TAG, sizeof ROOT_TAG);
    XXH3_128bits_update(st, fingerprint, KM_FINGERPRINT_LEN);
    uint8_t types[8];
    km_put_u32(types, (uint32_t)type_k);
    km_put_u32(types + 4, (uint32_t)type_v);
    XXH3_128bits_update(st, types, sizeof types);
    if (salt) XXH3_128bits_update(st, salt, strlen(salt));
    km_key k = key_from_hash(XXH3_128bits_digest(st));
    XXH3_freeState(st);
    return k;
}

km_key km_key_next(km_key prev, const int32_t *tokens, int n_tokens) {
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, NEXT_TAG, sizeof NEXT_TAG);
    XXH3_128bits_update(st, prev.b, KM_KEY_LEN);
    uint8_t buf[4 * 256];
    int i = 0;
    while (i < n_tokens) {
        int n = n_tokens - i < 256 ? n_tokens - i : 256;
        for (int j = 0; j < n; j++) km_put_u32(buf + 4 * j, (uint32_t)tokens[i + j]);
        XXH3_128bits_update(st, buf, (size_t)n * 4);
        i += n;
    }
    km_key k = key_from_hash(XXH3_128bits_digest(st));
    XXH3_freeState(st);
    return k;
}

void km_keys_for_boundaries(km_key root, const int32_t *tokens, const int *bounds, int n_bounds, km_key *keys) {
    km_key k = root;
    int prev = 0;
    for (int i = 0; i < n_bounds; i++) {
        k = km_key_next(k, tokens + prev, bounds[i] - prev);
        keys[i] = k;
        prev = bounds[i];
    }
}

bool km_key_equal(km_key a, km_key b) { return memcmp(a.b, b.b, KM_KEY_LEN) == 0; }

void km_key_hex(km_key k, char out[2 * KM_KEY_LEN + 1]) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < KM_KEY_LEN; i++) {
        out[2 * i] = hx[k.b[i] >> 4];
        out[2 * i + 1] = hx[k.b[i] & 15];
    }
    out[2 * KM_KEY_LEN] = 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int km_key_from_hex(const char *hex, km_key *out) {
    if (strlen(hex) != 2 * KM_KEY_LEN) return -1;
    for (int i = 0; i < KM_KEY_LEN; i++) {
        int h = hexval(hex[2 * i]), l = hexval(hex[2 * i + 1]);
        if (h < 0 || l < 0) return -1;
        out->b[i] = (uint8_t)(h << 4 | l);
    }
    return 0;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

#define BOUNDS_MIN_GAP 64 /* tokens between merged boundaries at least ... */
#define BOUNDS_SPREAD 8   /* ... and 1/8 of the position before: geometric spacing */

int km_boundaries(const int *seg_ends, int n_seg, int n_tokens, int block_size, int *out, int *n_merged) {
    int n = 0;
    int last = n_tokens - 1;
    if (n_seg > 0) {
        for (int i = 0; i < n_seg && n < n_tokens; i++)
            if (seg_ends[i] > 0 && seg_ends[i] < last) out[n++] = seg_ends[i];
    } else if (block_size > 0) {
        for (int b = block_size; b < last; b += block_size) out[n++] = b;
    }
    qsort(out, (size_t)n, sizeof *out, cmp_int);
    /* Dedup and merge in one pass, in order, so that keeping a candidate
     * depends on the ones before it only (see prefix.h). */
    int m = 0, merged = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0 && out[m - 1] == out[i]) continue;
        if (m >= KM_BOUNDS_DENSE) {
            int gap = out[m - 1] / BOUNDS_SPREAD > BOUNDS_MIN_GAP ? out[m - 1] / BOUNDS_SPREAD : BOUNDS_MIN_GAP;
            if (m >= KM_MAX_BOUNDS - 1 || out[i] - out[m - 1] < gap) {
                merged++;
                continue;
            }
        }
        out[m++] = out[i];
    }
    if (last > 0) out[m++] = last;
    if (n_merged) *n_merged = merged;
    return m;
}
