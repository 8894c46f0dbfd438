/* test_store.c -- the RAM/disk state store: LRU, persistence, crash safety,
 * budgets, odd directory contents, concurrency.
 *
 * Blob contents are derived from the key (fill/blob_matches), so any blob the
 * store hands back can be checked byte for byte without remembering what was
 * put, even after a restart or a crash. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "store.h"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------- */

static km_key mkkey(uint32_t a, uint32_t b) {
    km_key k;
    memset(k.b, 0x5a, sizeof k.b);
    km_put_u32(k.b, a);
    km_put_u32(k.b + 4, b);
    return k;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t key_seed(km_key k) { return km_get_u64(k.b) * 31 + km_get_u64(k.b + 8); }

/* The byte at offset i of the blob for key k. */
static void fill(km_key k, uint8_t *buf, size_t len) {
    uint64_t seed = key_seed(k);
    for (size_t i = 0; i < len; i += 8) {
        uint8_t w[8];
        km_put_u64(w, mix64(seed + i));
        memcpy(buf + i, w, len - i < 8 ? len - i : 8);
    }
}

static bool blob_matches(km_key k, const uint8_t *buf, size_t len) {
    uint64_t seed = key_seed(k);
    for (size_t i = 0; i < len; i += 8) {
        uint8_t w[8];
        km_put_u64(w, mix64(seed + i));
        if (memcmp(buf + i, w, len - i < 8 ? len - i : 8) != 0) return false;
    }
    return true;
}

static uint8_t *make_blob(km_key k, size_t len) {
    uint8_t *b = malloc(len ? len : 1);
    assert_non_null(b);
    fill(k, b, len);
    return b;
}

static void put_blob(km_store *s, km_key k, size_t len) {
    uint8_t *b = make_blob(k, len);
    km_error err = {{0}};
    assert_int_equal(km_store_put(s, k, b, len, &err), 0);
    free(b);
}

/* get must hit and return exactly the blob of k with length len. */
static void expect_blob(km_store *s, km_key k, size_t len) {
    uint8_t *b = NULL;
    size_t n = 0;
    km_error err = {{0}};
    int rc = km_store_get(s, k, &b, &n, &err);
    if (rc != 0) fail_msg("get: rc=%d (%s)", rc, err.msg);
    assert_int_equal(n, len);
    assert_true(blob_matches(k, b, n));
    free(b);
}

static void expect_miss(km_store *s, km_key k) {
    uint8_t *b = (uint8_t *)"x";
    size_t n = 7;
    assert_int_equal(km_store_get(s, k, &b, &n, NULL), 1);
    assert_null(b);
    assert_int_equal(n, 0);
}

static km_store *open_store(size_t ram, const char *dir, uint64_t disk_budget) {
    km_store_params p = km_store_default_params();
    p.ram_budget = ram;
    p.disk_dir = dir;
    p.disk_budget = disk_budget;
    km_error err = {{0}};
    km_store *s = km_store_open(&p, &err);
    if (!s) fail_msg("open: %s", err.msg);
    return s;
}

static const char *key_file(const char *dir, km_key k) {
    static char path[4200];
    char hex[2 * KM_KEY_LEN + 1];
    km_key_hex(k, hex);
    snprintf(path, sizeof path, "%s/%s.kvb", dir, hex);
    return path;
}

static const char *dir_file(const char *dir, const char *name) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* Size of a file, or -1 if it does not exist. */
static long long file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return (long long)st.st_size;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static bool has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static int count_suffix(const char *dir, const char *suf) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += has_suffix(e->d_name, suf);
    closedir(d);
    return n;
}

/* Check every <hex>.kvb in dir: its blob, read through the store s, matches its
 * key and has length len (0: any length). Returns the count and the bytes. */
static int verify_dir(km_store *s, const char *dir, size_t len, uint64_t *bytes) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    uint64_t total = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strlen(e->d_name) != 36 || !has_suffix(e->d_name, ".kvb")) continue;
        char hex[33];
        memcpy(hex, e->d_name, 32);
        hex[32] = 0;
        km_key k;
        assert_int_equal(km_key_from_hex(hex, &k), 0);
        long long sz = file_size(dir_file(dir, e->d_name));
        assert_true(sz >= 0);
        if (len) assert_int_equal(sz, len);
        expect_blob(s, k, (size_t)sz);
        total += (uint64_t)sz;
        n++;
    }
    closedir(d);
    if (bytes) *bytes = total;
    return n;
}

static int setup_dir(void **state) {
    char *d = tu_tmpdir();
    if (!d) return -1;
    *state = d;
    return 0;
}

static int teardown_dir(void **state) {
    tu_rmtree(*state);
    free(*state);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* RAM tier                                                                  */
/* ------------------------------------------------------------------------- */

static void test_roundtrip(void **state) {
    km_store *s = open_store(1 << 20, NULL, 0);
    km_key a = mkkey(1, 1), b = mkkey(1, 2), z = mkkey(1, 3);

    put_blob(s, a, 1000);
    put_blob(s, z, 0); /* empty blobs are blobs too */
    assert_true(km_store_contains(s, a));
    assert_true(km_store_contains(s, z));
    assert_false(km_store_contains(s, b));
    expect_blob(s, a, 1000);
    expect_blob(s, z, 0);
    expect_miss(s, b);

    /* The store keeps its own copy: scribbling on ours changes nothing. */
    uint8_t *mine = make_blob(b, 300);
    assert_int_equal(km_store_put(s, b, mine, 300, NULL), 0);
    memset(mine, 0, 300);
    free(mine);
    expect_blob(s, b, 300);

    /* Replacing an entry replaces its bytes and its size in the accounting. */
    uint8_t *other = make_blob(z, 700); /* b's slot, z's bytes */
    assert_int_equal(km_store_put(s, b, other, 700, NULL), 0);
    uint8_t *got = NULL;
    size_t n = 0;
    assert_int_equal(km_store_get(s, b, &got, &n, NULL), 0);
    assert_int_equal(n, 700);
    assert_memory_equal(got, other, 700);
    free(got);
    free(other);

    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 3);
    assert_int_equal(st.ram_bytes, 1000 + 0 + 700);
    assert_int_equal(st.ram_hits, 4);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.disk_hits, 0);
    assert_int_equal(st.disk_entries, 0);
    assert_int_equal(st.ram_evictions, 0);

    km_store_remove(s, a);
    assert_false(km_store_contains(s, a));
    expect_miss(s, a);
    st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 2);
    assert_int_equal(st.ram_bytes, 700);
    km_store_close(s);
}

static void test_lru(void **state) {
    km_store *s = open_store(3000, NULL, 0); /* three 1000-byte entries */
    km_key a = mkkey(2, 1), b = mkkey(2, 2), c = mkkey(2, 3), d = mkkey(2, 4), e = mkkey(2, 5), f = mkkey(2, 6);

    put_blob(s, a, 1000);
    put_blob(s, b, 1000);
    put_blob(s, c, 1000);
    expect_blob(s, a, 1000); /* recency now (new->old): a c b */
    put_blob(s, d, 1000);    /* evicts b */
    assert_true(km_store_contains(s, a));
    assert_false(km_store_contains(s, b));
    assert_true(km_store_contains(s, c));
    assert_true(km_store_contains(s, d));
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 3);
    assert_int_equal(st.ram_bytes, 3000);
    assert_int_equal(st.ram_evictions, 1);

    expect_miss(s, b); /* a miss does not change recency: d a c */
    put_blob(s, e, 1000); /* evicts c */
    assert_false(km_store_contains(s, c));
    assert_true(km_store_contains(s, a));
    assert_true(km_store_contains(s, d));
    assert_true(km_store_contains(s, e));

    /* A 2000-byte entry needs two victims: e d a -> a, then d go. */
    put_blob(s, f, 2000);
    assert_false(km_store_contains(s, a));
    assert_false(km_store_contains(s, d));
    assert_true(km_store_contains(s, e));
    assert_true(km_store_contains(s, f));
    st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 2);
    assert_int_equal(st.ram_bytes, 3000);
    assert_int_equal(st.ram_evictions, 4);

    /* Larger than the whole budget: not kept, and nothing else is evicted. */
    put_blob(s, a, 3001);
    assert_false(km_store_contains(s, a));
    st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 2);
    assert_int_equal(st.ram_evictions, 4);
    expect_blob(s, e, 1000);
    expect_blob(s, f, 2000);
    km_store_close(s);
}

static void test_max_blob_size(void **state) {
    const char *dir = *state;
    km_store_params p = km_store_default_params();
    p.disk_dir = dir;
    p.max_blob_size = 100;
    km_store *s = km_store_open(&p, NULL);
    assert_non_null(s);
    km_key k = mkkey(3, 1);
    uint8_t buf[101];
    fill(k, buf, sizeof buf);
    km_error err = {{0}};
    assert_int_equal(km_store_put(s, k, buf, 101, &err), -1);
    assert_non_null(strstr(err.msg, "limit"));
    assert_false(km_store_contains(s, k));
    assert_int_equal(km_store_put(s, k, buf, 100, &err), 0);
    km_store_flush(s);
    expect_blob(s, k, 100);
    assert_int_equal(file_size(key_file(dir, k)), 100);
    km_store_close(s);
}

/* ------------------------------------------------------------------------- */
/* Disk tier                                                                 */
/* ------------------------------------------------------------------------- */

static void test_oversized_skips_ram(void **state) {
    const char *dir = *state;
    km_store *s = open_store(1000, dir, 0);
    km_key k = mkkey(4, 1);
    put_blob(s, k, 5000);
    assert_true(km_store_contains(s, k));
    expect_blob(s, k, 5000); /* from the queue or from disk, whichever is first */
    km_store_flush(s);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 0);
    assert_int_equal(st.ram_bytes, 0);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 5000);
    assert_int_equal(file_size(key_file(dir, k)), 5000);

    uint64_t disk_hits = st.disk_hits;
    expect_blob(s, k, 5000);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_hits, disk_hits + 1);
    assert_int_equal(st.ram_entries, 0); /* still too big to promote */
    km_store_close(s);
}

static void test_get_while_queued(void **state) {
    const char *dir = *state;
    km_store *s = open_store(0, dir, 0); /* no RAM tier: only pending writes or disk can serve */
    enum { N = 4, LEN = 4 << 20, M = 16, SMALL = 1 << 20 };
    /* Back-to-back puts, then gets: the later writes are still queued. */
    for (uint32_t i = 0; i < N; i++) put_blob(s, mkkey(5, i), LEN);
    for (uint32_t i = 0; i < N; i++) {
        assert_true(km_store_contains(s, mkkey(5, i)));
        expect_blob(s, mkkey(5, i), LEN);
    }
    /* A second put of a key whose write is still queued (behind a big one)
     * replaces the queued bytes: get and the file must show the newer blob. */
    km_key x = mkkey(5, 50), y = mkkey(5, 51);
    put_blob(s, x, LEN);
    put_blob(s, y, 1000);
    put_blob(s, y, 2000);
    expect_blob(s, y, 2000);
    expect_blob(s, x, LEN);
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, y)), 2000);
    expect_blob(s, y, 2000);
    km_store_remove(s, x);
    km_store_remove(s, y);
    km_store_stats st0 = km_store_get_stats(s);
    assert_int_equal(st0.ram_hits + st0.disk_hits, N + 3);
    assert_int_equal(st0.disk_entries, N);

    /* Put then get at once: the get mostly lands while the writer is on that
     * very key (out of the queue, not on disk yet). */
    for (uint32_t i = 0; i < M; i++) {
        put_blob(s, mkkey(5, 100 + i), SMALL);
        expect_blob(s, mkkey(5, 100 + i), SMALL);
    }
    /* Get over and over while one write runs: queued, being written, on disk,
     * every get along the way must hit. */
    int loops = 0;
    for (uint32_t i = 0; i < 3; i++) {
        km_key k = mkkey(5, 200 + i);
        put_blob(s, k, LEN);
        while (file_size(key_file(dir, k)) != LEN) {
            expect_blob(s, k, LEN);
            loops++;
        }
    }
    km_store_flush(s);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 0);
    assert_int_equal(st.disk_entries, N + M + 3);
    assert_int_equal(st.disk_bytes, (uint64_t)(N + 3) * LEN + (uint64_t)M * SMALL);
    assert_int_equal(st.ram_hits + st.disk_hits, st0.ram_hits + st0.disk_hits + M + loops);
    assert_int_equal(st.misses, 0);
    assert_int_equal(st.disk_write_errors, 0);
    for (uint32_t i = 0; i < N; i++) assert_int_equal(file_size(key_file(dir, mkkey(5, i))), LEN);
    for (uint32_t i = 0; i < M; i++) assert_int_equal(file_size(key_file(dir, mkkey(5, 100 + i))), SMALL);
    km_store_close(s);
}

static void test_persistence(void **state) {
    const char *dir = *state;
    km_key k[3] = {mkkey(6, 1), mkkey(6, 2), mkkey(6, 3)};
    size_t len[3] = {1234, 1, 65536 + 7};

    km_store *s = open_store(1 << 20, dir, 0);
    for (int i = 0; i < 3; i++) put_blob(s, k[i], len[i]);
    put_blob(s, k[1], 77); /* replaced before or after its first write: 77 wins */
    len[1] = 77;
    km_store_close(s); /* no explicit flush: close must do it */
    assert_int_equal(count_suffix(dir, ".tmp"), 0);

    s = open_store(1 << 20, dir, 0);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 3);
    assert_int_equal(st.disk_bytes, len[0] + len[1] + len[2]);
    assert_int_equal(st.ram_entries, 0);
    for (int i = 0; i < 3; i++) assert_true(km_store_contains(s, k[i]));
    for (int i = 0; i < 3; i++) expect_blob(s, k[i], len[i]);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_hits, 3);
    assert_int_equal(st.ram_hits, 0);
    assert_int_equal(st.ram_entries, 3); /* promoted */
    assert_int_equal(st.ram_bytes, len[0] + len[1] + len[2]);
    for (int i = 0; i < 3; i++) expect_blob(s, k[i], len[i]);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_hits, 3);
    assert_int_equal(st.ram_hits, 3);
    km_store_close(s);
}

static void test_remove(void **state) {
    const char *dir = *state;
    km_store *s = open_store(1 << 20, dir, 0);
    km_key a = mkkey(7, 1), b = mkkey(7, 2);
    put_blob(s, a, 100);
    put_blob(s, b, 200);
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, a)), 100);

    km_store_remove(s, a);
    assert_false(km_store_contains(s, a));
    assert_int_equal(file_size(key_file(dir, a)), -1);
    expect_miss(s, a);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.ram_entries, 1);
    assert_int_equal(st.ram_bytes, 200);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 200);
    km_store_remove(s, a); /* removing a missing key is harmless */

    /* Remove right after put: whether the write is queued, running or done,
     * no file may be left behind. */
    for (uint32_t i = 0; i < 6; i++) {
        km_key c = mkkey(7, 10 + i);
        put_blob(s, c, 2 << 20);
        if (i % 2) usleep(1000 * i);
        km_store_remove(s, c);
        assert_false(km_store_contains(s, c));
    }
    km_store_flush(s);
    for (uint32_t i = 0; i < 6; i++) assert_int_equal(file_size(key_file(dir, mkkey(7, 10 + i))), -1);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 200);
    km_store_close(s);

    s = open_store(1 << 20, dir, 0);
    assert_false(km_store_contains(s, a));
    expect_blob(s, b, 200);
    assert_int_equal(km_store_get_stats(s).disk_entries, 1);
    km_store_close(s);
}

static void set_mtime(const char *path, time_t sec) {
    struct timespec ts[2] = {{sec, 0}, {sec, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void test_disk_budget(void **state) {
    const char *dir = *state;
    km_store *s = open_store(0, dir, 3000);
    km_key a = mkkey(8, 1), b = mkkey(8, 2), c = mkkey(8, 3), d = mkkey(8, 4), e = mkkey(8, 5), big = mkkey(8, 6);
    put_blob(s, a, 1000);
    put_blob(s, b, 1000);
    put_blob(s, c, 1000);
    km_store_flush(s);
    expect_blob(s, a, 1000); /* recency (new->old): a c b */
    put_blob(s, d, 1000);    /* evicts b */
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, b)), -1);
    assert_false(km_store_contains(s, b));
    for (int i = 0; i < 3; i++) {
        km_key k = i == 0 ? a : i == 1 ? c : d;
        assert_int_equal(file_size(key_file(dir, k)), 1000);
    }
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 3);
    assert_int_equal(st.disk_bytes, 3000);
    assert_int_equal(st.disk_evictions, 1);

    put_blob(s, e, 2000); /* d a c: c and a go */
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, c)), -1);
    assert_int_equal(file_size(key_file(dir, a)), -1);
    assert_int_equal(file_size(key_file(dir, d)), 1000);
    assert_int_equal(file_size(key_file(dir, e)), 2000);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 2);
    assert_int_equal(st.disk_bytes, 3000);
    assert_int_equal(st.disk_evictions, 3);

    /* Replacing e with a same-size blob must not evict d. */
    put_blob(s, e, 2000);
    km_store_flush(s);
    assert_int_equal(km_store_get_stats(s).disk_evictions, 3);
    assert_int_equal(file_size(key_file(dir, d)), 1000);

    /* Growing e while it is the least recently used: d must go, not e (whose
     * old file the new one replaces anyway). */
    expect_blob(s, d, 1000); /* d e */
    put_blob(s, e, 2500);
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, d)), -1);
    assert_int_equal(file_size(key_file(dir, e)), 2500);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 2500);
    assert_int_equal(st.disk_evictions, 4);
    put_blob(s, e, 2000);
    put_blob(s, d, 1000);
    km_store_flush(s);
    assert_int_equal(km_store_get_stats(s).disk_evictions, 4);

    /* Larger than the disk budget: not written, nothing evicted (and there is
     * no RAM tier, so it is simply not stored). */
    put_blob(s, big, 3001);
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, big)), -1);
    assert_false(km_store_contains(s, big));
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 2);
    assert_int_equal(st.disk_evictions, 4);
    km_store_close(s);

    /* Reopen with a smaller budget: the least recently modified file goes. */
    set_mtime(key_file(dir, e), 1000000);
    set_mtime(key_file(dir, d), 2000000);
    s = open_store(0, dir, 2000);
    st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 1000);
    assert_int_equal(file_size(key_file(dir, e)), -1);
    expect_blob(s, d, 1000);

    /* A put too big for the disk replaces d: the old file must not survive. */
    put_blob(s, d, 2001);
    km_store_flush(s);
    assert_false(km_store_contains(s, d));
    assert_int_equal(file_size(key_file(dir, d)), -1);
    assert_int_equal(km_store_get_stats(s).disk_entries, 0);
    km_store_close(s);
}

/* The disk tier's recency holds across processes: a get marks the file (from
 * disk or from RAM), so the next process -- each `kvmesh run` is one --
 * evicts what was used least recently, not what was written first. */
static void test_disk_recency_across_reopen(void **state) {
    const char *dir = *state;
    km_key a = mkkey(12, 1), b = mkkey(12, 2), c = mkkey(12, 3), d = mkkey(12, 4);
    km_store *s = open_store(0, dir, 3000);
    put_blob(s, a, 1000);
    put_blob(s, b, 1000);
    put_blob(s, c, 1000);
    km_store_close(s);
    time_t now = time(NULL);
    set_mtime(key_file(dir, a), now - 300); /* written in this order, a while ago */
    set_mtime(key_file(dir, b), now - 200);
    set_mtime(key_file(dir, c), now - 100);

    s = open_store(1 << 20, dir, 3000);
    expect_blob(s, a, 1000); /* from disk, promoted to RAM */
    set_mtime(key_file(dir, a), now - 300);
    expect_blob(s, a, 1000); /* from RAM: a use all the same */
    km_store_close(s);
    struct stat st;
    assert_int_equal(stat(key_file(dir, a), &st), 0);
    assert_true(st.st_mtime >= now - 5);

    s = open_store(0, dir, 3000); /* the next process: recency from the files */
    put_blob(s, d, 1000);
    km_store_flush(s);
    assert_int_equal(file_size(key_file(dir, b)), -1); /* least recently used */
    assert_int_equal(file_size(key_file(dir, a)), 1000);
    assert_int_equal(file_size(key_file(dir, c)), 1000);
    assert_int_equal(file_size(key_file(dir, d)), 1000);
    km_store_close(s);
}

static void test_vanished_file(void **state) {
    const char *dir = *state;
    km_store *s = open_store(0, dir, 0);
    km_key k = mkkey(9, 1), j = mkkey(9, 2);
    put_blob(s, k, 500);
    put_blob(s, j, 600);
    km_store_flush(s);
    assert_int_equal(unlink(key_file(dir, k)), 0);
    assert_true(km_store_contains(s, k)); /* the index does not know yet */
    expect_miss(s, k);
    assert_false(km_store_contains(s, k));
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.disk_hits, 0);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 600);
    expect_blob(s, j, 600);
    km_store_close(s);
}

/* The pid of a process that has exited (and been reaped). */
static long dead_pid(void) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    return (long)pid;
}

/* The temp file of key k as a writer of process pid names it. */
static const char *temp_file(const char *dir, km_key k, long pid) {
    char hex[33], name[128];
    km_key_hex(k, hex);
    snprintf(name, sizeof name, "%s.kvb.%ld.tmp", hex, pid);
    return dir_file(dir, name);
}

static void test_odd_files_ignored(void **state) {
    const char *dir = *state;
    km_key good = mkkey(10, 1), huge = mkkey(10, 2), isdir = mkkey(10, 3), stale = mkkey(10, 4);

    uint8_t *blob = make_blob(good, 500);
    write_file(key_file(dir, good), blob, 500);
    free(blob);
    uint8_t junk[2000];
    memset(junk, 0xee, sizeof junk);
    write_file(key_file(dir, huge), junk, sizeof junk); /* over max_blob_size below */
    assert_int_equal(mkdir(key_file(dir, isdir), 0755), 0);
    write_file(dir_file(dir, "README.txt"), "hello", 5);
    write_file(dir_file(dir, "zz.kvb"), junk, 10);
    write_file(dir_file(dir, "0123456789abcdef0123456789abcde.kvb"), junk, 10);  /* 31 digits */
    write_file(dir_file(dir, "0123456789ABCDEF0123456789ABCDEF.kvb"), junk, 10); /* not our spelling */
    write_file(dir_file(dir, "other.tmp"), junk, 10);                            /* not ours */
    char stale_tmp[4200];
    snprintf(stale_tmp, sizeof stale_tmp, "%s", temp_file(dir, stale, dead_pid())); /* a crashed writer's leftover */
    write_file(stale_tmp, junk, 100);

    km_store_params p = km_store_default_params();
    p.disk_dir = dir;
    p.max_blob_size = 1000;
    km_store *s = km_store_open(&p, NULL);
    assert_non_null(s);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 500);
    expect_blob(s, good, 500);
    expect_miss(s, huge);
    expect_miss(s, isdir);
    expect_miss(s, stale);

    assert_int_equal(file_size(stale_tmp), -1);
    assert_int_equal(file_size(dir_file(dir, "other.tmp")), 10);
    assert_int_equal(file_size(dir_file(dir, "README.txt")), 5);
    assert_int_equal(file_size(dir_file(dir, "zz.kvb")), 10);
    assert_int_equal(file_size(dir_file(dir, "0123456789ABCDEF0123456789ABCDEF.kvb")), 10);
    assert_int_equal(file_size(key_file(dir, huge)), 2000); /* ignored, not deleted */
    km_store_close(s);
    assert_int_equal(file_size(dir_file(dir, "README.txt")), 5);
}

/* Opening a directory leaves the temp files of live writers alone (another
 * process is writing them right now); those of dead writers, and those no one
 * touched for over an hour (a pid reused since), are removed. */
static void test_live_writers_temp_kept(void **state) {
    const char *dir = *state;
    uint8_t junk[100];
    memset(junk, 0xee, sizeof junk);
    char live[4200], dead[4200], old[4200];
    snprintf(live, sizeof live, "%s", temp_file(dir, mkkey(11, 1), (long)getpid()));
    snprintf(dead, sizeof dead, "%s", temp_file(dir, mkkey(11, 2), dead_pid()));
    snprintf(old, sizeof old, "%s", temp_file(dir, mkkey(11, 3), (long)getppid()));
    write_file(live, junk, sizeof junk);
    write_file(dead, junk, sizeof junk);
    write_file(old, junk, sizeof junk);
    set_mtime(old, time(NULL) - 7200);
    km_store *s = open_store(0, dir, 0);
    assert_int_equal(file_size(live), (long)sizeof junk);
    assert_int_equal(file_size(dead), -1);
    assert_int_equal(file_size(old), -1);
    assert_int_equal(km_store_get_stats(s).disk_entries, 0); /* temp files are never entries */
    km_store_close(s);
    assert_int_equal(file_size(live), (long)sizeof junk);
}

static void test_write_error(void **state) {
    const char *dir = *state;
    km_key bad = mkkey(11, 1), ok = mkkey(11, 2);
    /* A directory where the file should go makes the rename fail (even as root). */
    char sub[4300];
    snprintf(sub, sizeof sub, "%s/keep", key_file(dir, bad));
    assert_int_equal(mkdir(key_file(dir, bad), 0755), 0);
    write_file(sub, "x", 1);

    int saved = km_log_level;
    km_log_level = -1; /* the expected warning is noise here */
    km_store *s = open_store(1 << 20, dir, 0);
    put_blob(s, bad, 300);
    put_blob(s, ok, 400);
    km_store_flush(s);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.disk_write_errors, 1);
    assert_int_equal(st.disk_entries, 1);
    assert_int_equal(st.disk_bytes, 400);
    assert_true(km_store_contains(s, bad)); /* still in RAM */
    expect_blob(s, bad, 300);
    put_blob(s, bad, 300); /* a second failure is counted too */
    km_store_flush(s);
    assert_int_equal(km_store_get_stats(s).disk_write_errors, 2);
    assert_int_equal(count_suffix(dir, ".tmp"), 0);
    km_store_close(s);

    s = open_store(0, dir, 0);
    expect_miss(s, bad);
    expect_blob(s, ok, 400);
    /* A failed rewrite of a key that is on disk drops it from the index (the
     * file there holds an older blob). */
    char okfile[4200];
    snprintf(okfile, sizeof okfile, "%s", key_file(dir, ok));
    assert_int_equal(unlink(okfile), 0);
    assert_int_equal(mkdir(okfile, 0755), 0);
    put_blob(s, ok, 500);
    km_store_flush(s);
    km_store_stats st2 = km_store_get_stats(s);
    assert_int_equal(st2.disk_write_errors, 1);
    assert_int_equal(st2.disk_entries, 0);
    assert_int_equal(st2.disk_bytes, 0);
    assert_false(km_store_contains(s, ok));
    km_store_close(s);
    km_log_level = saved;
}

/* ------------------------------------------------------------------------- */
/* Crash during writes                                                       */
/* ------------------------------------------------------------------------- */

#define CRASH_BLOB ((size_t)8 << 20)
#define CRASH_BUDGET (6 * (uint64_t)CRASH_BLOB)
#define CRASH_ROUNDS 6

/* Child: put 8 MB blobs forever, one byte on fd after each is flushed. */
static void crash_child(const char *dir, uint32_t round, int fd) {
    km_log_level = -1;
    km_store *s = NULL;
    km_store_params p = km_store_default_params();
    p.ram_budget = 0;
    p.disk_dir = dir;
    p.disk_budget = CRASH_BUDGET;
    s = km_store_open(&p, NULL);
    uint8_t *buf = malloc(CRASH_BLOB);
    if (!s || !buf) _exit(2);
    for (uint32_t i = 0; i < 10000; i++) {
        km_key k = mkkey(100 + round, i);
        fill(k, buf, CRASH_BLOB);
        if (km_store_put(s, k, buf, CRASH_BLOB, NULL) != 0) _exit(3);
        km_store_flush(s);
        char c = 1;
        if (write(fd, &c, 1) != 1) _exit(4);
    }
    _exit(0);
}

/* Parent side: wait until a write is visibly under way in dir (a temp file, or
 * a blob file that is not full size yet), at most max_ms. This lands kills in
 * the middle of writes far more often than a blind delay would. */
static void wait_for_write(const char *dir, int max_ms) {
    double end = km_now_ms() + max_ms;
    while (km_now_ms() < end) {
        DIR *d = opendir(dir);
        assert_non_null(d);
        bool busy = false;
        struct dirent *e;
        while (!busy && (e = readdir(d)) != NULL) {
            if (has_suffix(e->d_name, ".tmp")) busy = true;
            else if (has_suffix(e->d_name, ".kvb") && file_size(dir_file(dir, e->d_name)) != (long long)CRASH_BLOB)
                busy = true;
        }
        closedir(d);
        if (busy) return;
        usleep(200);
    }
}

static void test_crash_during_write(void **state) {
    const char *dir = *state;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    print_message("crash test seed %u\n", seed);
    srand(seed);
    int torn = 0;
    for (uint32_t round = 0; round < CRASH_ROUNDS; round++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(dir, round, fds[1]);
        }
        close(fds[1]);
        /* Wait until one blob is durable, then kill: in odd rounds after a
         * random delay, in even rounds as soon as a write is seen under way. */
        char c;
        assert_int_equal(read(fds[0], &c, 1), 1);
        usleep((useconds_t)(rand() % (round % 2 ? 150000 : 20000)));
        if (round % 2 == 0) wait_for_write(dir, 300);
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);
        uint32_t acked = 1;
        while (read(fds[0], &c, 1) == 1) acked++;
        close(fds[0]);
        torn += count_suffix(dir, ".tmp");

        km_store *s = open_store(0, dir, CRASH_BUDGET);
        assert_int_equal(count_suffix(dir, ".tmp"), 0);
        uint64_t bytes;
        int n = verify_dir(s, dir, CRASH_BLOB, &bytes);
        km_store_stats st = km_store_get_stats(s);
        assert_int_equal(st.disk_entries, n);
        assert_int_equal(st.disk_bytes, bytes);
        assert_true(bytes <= CRASH_BUDGET);
        /* The last blob the child saw flushed must be there, whole. */
        km_key last = mkkey(100 + round, acked - 1);
        assert_true(km_store_contains(s, last));
        expect_blob(s, last, CRASH_BLOB);
        assert_int_equal(st.disk_write_errors, 0);
        km_store_close(s);
    }
    print_message("crash test: %d of %d kills left a temp file behind\n", torn, CRASH_ROUNDS);
}

/* ------------------------------------------------------------------------- */
/* Concurrency                                                               */
/* ------------------------------------------------------------------------- */

#define CONC_THREADS 4
#define CONC_OPS 300
#define CONC_KEYS 24
#define CONC_RAM 16000
#define CONC_DISK 40000

static size_t conc_len(uint32_t i) { return 200 + (i % 5) * 1500; }

typedef struct worker {
    km_store *s;
    unsigned seed;
    int gets, bad;
} worker;

static void *worker_main(void *arg) {
    worker *w = arg;
    for (int i = 0; i < CONC_OPS; i++) {
        unsigned r = (unsigned)rand_r(&w->seed);
        uint32_t ki = r % CONC_KEYS;
        km_key k = mkkey(12, ki);
        int op = (int)((r >> 8) % 10);
        if (op < 4) {
            uint8_t *b = make_blob(k, conc_len(ki));
            if (km_store_put(w->s, k, b, conc_len(ki), NULL) != 0) w->bad++;
            free(b);
        } else if (op < 9) {
            uint8_t *b = NULL;
            size_t n = 0;
            int rc = km_store_get(w->s, k, &b, &n, NULL);
            w->gets++;
            if (rc < 0 || (rc == 0 && (n != conc_len(ki) || !blob_matches(k, b, n)))) w->bad++;
            free(b);
        } else {
            km_store_remove(w->s, k);
        }
        if (op == 0) (void)km_store_contains(w->s, k);
        if (i % 100 == 99) km_store_flush(w->s);
    }
    return NULL;
}

static void test_concurrency(void **state) {
    const char *dir = *state;
    km_store *s = open_store(CONC_RAM, dir, CONC_DISK);
    pthread_t th[CONC_THREADS];
    worker w[CONC_THREADS];
    for (int i = 0; i < CONC_THREADS; i++) {
        w[i] = (worker){.s = s, .seed = 1234u + (unsigned)i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    int gets = 0;
    for (int i = 0; i < CONC_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].bad, 0);
        gets += w[i].gets;
    }
    km_store_flush(s);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.ram_hits + st.disk_hits + st.misses, gets);
    assert_true(st.ram_hits > 0);
    assert_true(st.ram_bytes <= CONC_RAM);
    assert_true(st.disk_bytes <= CONC_DISK);
    assert_int_equal(st.disk_write_errors, 0);
    /* The index and the directory agree, and every file is whole. */
    uint64_t bytes;
    int n = verify_dir(s, dir, 0, &bytes);
    assert_int_equal(n, st.disk_entries);
    assert_int_equal(bytes, st.disk_bytes);
    assert_int_equal(count_suffix(dir, ".tmp"), 0);
    km_store_close(s);
}

/* ------------------------------------------------------------------------- */
/* Write-behind compression of state blobs                                   */
/* ------------------------------------------------------------------------- */

/* An uncompressed state blob (f16 KV) with a compressible payload of plen bytes. */
static uint8_t *make_state_blob(size_t plen, size_t *len) {
    static const uint8_t fp[KM_FINGERPRINT_LEN] = {7};
    static const int32_t toks[3] = {2, 3, 4};
    *len = km_blob_size(3, plen);
    uint8_t *b = malloc(*len);
    uint8_t *p = km_blob_begin(b, fp, 1, 1, toks, 3, plen);
    for (size_t i = 0; i < plen; i++) p[i] = (uint8_t)((i / 64) ^ (i % 3));
    km_blob_seal(b, *len);
    return b;
}

/* Bytes of a file. */
static uint8_t *read_all(const char *path, size_t *len) {
    uint8_t *d;
    km_error err;
    if (km_read_file(path, (size_t)1 << 30, &d, len, &err) != 0) fail_msg("%s", err.msg);
    return d;
}

static void test_disk_compression(void **state) {
    const char *dir = *state;
    size_t len;
    uint8_t *blob = make_state_blob(20000, &len);
    km_key k = mkkey(20, 1), opaque = mkkey(20, 2);
    km_error err = {{0}};
    /* disk only (no RAM tier), so that gets come from the files */
    km_store *s = open_store(0, dir, 0);
    assert_int_equal(km_store_put(s, k, blob, len, &err), 0);
    put_blob(s, opaque, 5000); /* not a blob: written as given */
    km_store_flush(s);
    size_t flen;
    uint8_t *file = read_all(key_file(dir, k), &flen);
    assert_true(flen < len / 4);
    km_blob_info info;
    assert_int_equal(km_blob_parse(file, flen, (size_t)1 << 30, &info, &err), 0);
    assert_int_equal(info.flags, KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2);
    assert_int_equal(info.raw_len, 20000);
    assert_int_equal(file_size(key_file(dir, opaque)), 5000);
    /* the budget counts what is on disk */
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.disk_bytes, flen + 5000);
    /* a get returns the file as stored, and it decodes to the payload put */
    uint8_t *got;
    size_t glen;
    assert_int_equal(km_store_get(s, k, &got, &glen, &err), 0);
    assert_int_equal(glen, flen);
    assert_memory_equal(got, file, flen);
    assert_int_equal(km_blob_parse(got, glen, (size_t)1 << 30, &info, &err), 0);
    uint8_t *owned;
    const uint8_t *raw;
    size_t raw_len;
    assert_int_equal(km_blob_payload_decode(&info, (size_t)1 << 30, &owned, &raw, &raw_len, &err), 0);
    assert_int_equal(raw_len, 20000);
    assert_memory_equal(raw, blob + len - 20000, 20000);
    free(owned);
    free(got);
    expect_blob(s, opaque, 5000);
    km_store_close(s);
    free(file);

    /* the RAM tier keeps the blob as it was put */
    s = open_store(1 << 20, dir, 0);
    assert_int_equal(km_store_put(s, k, blob, len, &err), 0);
    km_store_flush(s);
    assert_int_equal(km_store_get(s, k, &got, &glen, &err), 0);
    assert_int_equal(glen, len);
    assert_memory_equal(got, blob, len);
    free(got);
    assert_int_equal(file_size(key_file(dir, k)), (long long)flen);
    km_store_close(s);

    /* compress_level 0: files are the blobs as put */
    km_store_params p = km_store_default_params();
    p.ram_budget = 0;
    p.disk_dir = dir;
    p.compress_level = 0;
    s = km_store_open(&p, &err);
    assert_non_null(s);
    assert_int_equal(km_store_put(s, k, blob, len, &err), 0);
    km_store_flush(s);
    file = read_all(key_file(dir, k), &flen);
    assert_int_equal(flen, len);
    assert_memory_equal(file, blob, len);
    free(file);
    km_store_close(s);
    free(blob);
}

/* Three 20 KB states in a 30 KB disk budget: compressed, they all fit. */
static void test_disk_budget_compressed(void **state) {
    const char *dir = *state;
    size_t len;
    uint8_t *blob = make_state_blob(20000, &len);
    km_store *s = open_store(0, dir, 30000);
    km_error err = {{0}};
    for (uint32_t i = 0; i < 3; i++) assert_int_equal(km_store_put(s, mkkey(21, i), blob, len, &err), 0);
    km_store_flush(s);
    km_store_stats st = km_store_get_stats(s);
    assert_int_equal(st.disk_entries, 3);
    assert_int_equal(st.disk_evictions, 0);
    assert_true(st.disk_bytes < 30000);
    assert_int_equal(st.disk_bytes, 3 * (uint64_t)file_size(key_file(dir, mkkey(21, 0))));
    km_store_close(s);
    free(blob);
}

/* km_store_keys lists every key held (RAM, queued, disk; after a restart the
 * disk ones), and the change counter moves with puts, removes and evictions:
 * what the node rebuilds its gossiped catalog from. */
static bool keys_hold(const km_key *keys, size_t n, km_key k) {
    for (size_t i = 0; i < n; i++)
        if (km_key_equal(keys[i], k)) return true;
    return false;
}

static void test_keys_and_changes(void **state) {
    const char *dir = *state;
    km_key k[3] = {mkkey(9, 1), mkkey(9, 2), mkkey(9, 3)};
    km_store *s = open_store(1 << 20, dir, 0);
    uint64_t c0 = km_store_changes(s);
    for (int i = 0; i < 3; i++) put_blob(s, k[i], 1000);
    assert_true(km_store_changes(s) >= c0 + 3);
    km_key *keys;
    size_t n;
    uint64_t c1;
    assert_int_equal(km_store_keys(s, &keys, &n, &c1), 0);
    for (int i = 0; i < 3; i++) assert_true(keys_hold(keys, n, k[i]));
    free(keys);
    km_store_remove(s, k[1]);
    assert_true(km_store_changes(s) > c1);
    km_store_flush(s);
    assert_int_equal(km_store_keys(s, &keys, &n, NULL), 0);
    assert_true(keys_hold(keys, n, k[0]) && !keys_hold(keys, n, k[1]) && keys_hold(keys, n, k[2]));
    free(keys);
    km_store_close(s);

    s = open_store(0, dir, 0); /* no RAM tier: the disk index alone */
    assert_int_equal(km_store_keys(s, &keys, &n, NULL), 0);
    assert_int_equal(n, 2);
    assert_true(keys_hold(keys, n, k[0]) && keys_hold(keys, n, k[2]));
    free(keys);
    km_store_close(s);

    s = open_store(1500, NULL, 0); /* RAM only, room for one: the older is evicted */
    put_blob(s, k[0], 1000);
    uint64_t c2 = km_store_changes(s);
    put_blob(s, k[1], 1000);
    assert_true(km_store_changes(s) >= c2 + 2); /* the put and the eviction */
    assert_int_equal(km_store_keys(s, &keys, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_true(km_key_equal(keys[0], k[1]));
    free(keys);
    km_store_close(s);
}

/* Whether a get reports the bytes of k as this process's own (see Origin). */
static bool get_trusted(km_store *s, km_key k) {
    uint8_t *b;
    size_t n;
    bool trusted = true;
    km_error err = {{0}};
    if (km_store_get_origin(s, k, &b, &n, &trusted, &err) != 0) fail_msg("get: %s", err.msg);
    free(b);
    return trusted;
}

/* Origin: put vs put_untrusted, in RAM and on disk; a file this process
 * wrote stops being its own once replaced or changed; a new process trusts
 * none of the files it finds. */
static void test_origin(void **state) {
    const char *dir = *state;
    km_key own = mkkey(1, 1), foreign = mkkey(2, 2), replaced = mkkey(3, 3), changed = mkkey(4, 4);
    uint8_t *f = make_blob(foreign, 300);
    km_store *s = open_store(1 << 20, NULL, 0);
    put_blob(s, own, 300);
    assert_int_equal(km_store_put_untrusted(s, foreign, f, 300, NULL), 0);
    assert_true(get_trusted(s, own));
    assert_false(get_trusted(s, foreign));
    km_store_close(s);

    s = open_store(0, dir, 0); /* disk only: every get reads the file */
    put_blob(s, own, 300);
    assert_int_equal(km_store_put_untrusted(s, foreign, f, 300, NULL), 0);
    put_blob(s, replaced, 300);
    put_blob(s, changed, 300);
    km_store_flush(s);
    assert_true(get_trusted(s, own));
    assert_false(get_trusted(s, foreign));
    assert_true(get_trusted(s, replaced));
    /* another file under its name (same size): not ours any more */
    uint8_t *r = make_blob(replaced, 300);
    r[10] ^= 1;
    write_file(dir_file(dir, "x.tmp"), r, 300);
    assert_int_equal(rename(dir_file(dir, "x.tmp"), key_file(dir, replaced)), 0);
    assert_false(get_trusted(s, replaced));
    /* changed in place, later (a new ctime) */
    usleep(20000);
    FILE *fp = fopen(key_file(dir, changed), "r+b");
    assert_non_null(fp);
    fputc(0x55, fp);
    fclose(fp);
    assert_false(get_trusted(s, changed));
    assert_true(get_trusted(s, own));
    km_store_close(s);

    s = open_store(1 << 20, dir, 0); /* a new process: files of an earlier one */
    assert_false(get_trusted(s, own));
    assert_false(get_trusted(s, own)); /* also once promoted to RAM */
    put_blob(s, own, 300);             /* put again: its own */
    assert_true(get_trusted(s, own));
    km_store_close(s);
    free(r);
    free(f);
}

int main(void) {
    km_log_level = 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_lru),
        cmocka_unit_test_setup_teardown(test_max_blob_size, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_oversized_skips_ram, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_get_while_queued, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_persistence, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_remove, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_disk_budget, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_disk_recency_across_reopen, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_vanished_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_odd_files_ignored, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_live_writers_temp_kept, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_write_error, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_crash_during_write, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_concurrency, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_disk_compression, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_disk_budget_compressed, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_keys_and_changes, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_origin, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
