/* test_redis_tier.c -- the Redis tier against a real redis-server on loopback:
 * round trips, namespace and TTL, AUTH, write-behind, Redis absent at start,
 * killed and restarted mid-run, a server that never answers (timeouts), the
 * upload queue's budget, and write-behind compression of state blobs. */
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "blob.h"
#include "redis_tier.h"
#include "testutil.h"

static const uint8_t FP[KM_FINGERPRINT_LEN] = {0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xbb};

static km_key key_n(int n) {
    km_key k;
    memset(k.b, 0, sizeof k.b);
    km_put_u32(k.b, (uint32_t)n);
    k.b[15] = 0x5a;
    return k;
}

static uint8_t *blob_n(int n, size_t len) {
    uint8_t *b = malloc(len);
    for (size_t i = 0; i < len; i++) b[i] = (uint8_t)(i * 31 + (size_t)n);
    return b;
}

static km_redis *open_tier_sync(int port, const char *auth, int ttl, size_t budget, int sync_ms) {
    char url[256];
    snprintf(url, sizeof url, "redis://%s127.0.0.1:%d/2", auth ? auth : "", port);
    km_redis_params p = km_redis_default_params();
    p.url = url;
    p.ttl_s = ttl;
    p.io_timeout_ms = 500;
    p.connect_timeout_ms = 200;
    if (budget) p.queue_budget = budget;
    p.sync_period_ms = sync_ms;
    km_error err;
    km_redis *r = km_redis_open(&p, FP, &err);
    if (!r) fail_msg("%s", err.msg);
    return r;
}

static km_redis *open_tier(int port, const char *auth, int ttl, size_t budget) {
    return open_tier_sync(port, auth, ttl, budget, 0);
}

static void skip_without_redis(int pid) {
    if (pid < 0) {
        print_message("SKIP: redis-server not available (scripts/setup.sh installs it)\n");
        skip();
    }
}

static void test_url_parsing(void **state) {
    (void)state;
    char host[256];
    int port, db;
    char *user, *pw;
    km_error err;
    assert_int_equal(km_redis_parse_url("redis://127.0.0.1:6380/3", host, sizeof host, &port, &db, &user, &pw, &err), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6380);
    assert_int_equal(db, 3);
    assert_null(user);
    assert_null(pw);
    assert_int_equal(km_redis_parse_url("redis://bob:s3cr:t@cache.local", host, sizeof host, &port, &db, &user, &pw, &err), 0);
    assert_string_equal(host, "cache.local");
    assert_int_equal(port, 6379);
    assert_int_equal(db, 0);
    assert_string_equal(user, "bob");
    assert_string_equal(pw, "s3cr:t");
    free(user);
    free(pw);
    assert_int_equal(km_redis_parse_url("redis://:pw@h:1/", host, sizeof host, &port, &db, &user, &pw, &err), 0);
    assert_null(user);
    assert_string_equal(pw, "pw");
    free(pw);
    const char *bad[] = {"http://h:1", "redis://", "redis://h:0", "redis://h:70000", "redis://h:12x", "redis://h/x",
                         "redis://h:1/2/3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (km_redis_parse_url(bad[i], host, sizeof host, &port, &db, &user, &pw, &err) == 0) fail_msg("accepted %s", bad[i]);
        assert_non_null(strstr(err.msg, bad[i]));
    }
}

static void test_roundtrip_namespace_ttl(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_redis *r = open_tier(port, NULL, 120, 0);
    km_error err;
    uint8_t *b = blob_n(1, 100000), *got;
    size_t len;
    assert_int_equal(km_redis_get(r, key_n(1), 0, &got, &len, &err), 1); /* miss */
    assert_int_equal(km_redis_put_async(r, key_n(1), b, 100000, &err), 0);
    assert_int_equal(km_redis_flush(r, 5000), 0);
    assert_int_equal(km_redis_get(r, key_n(1), 0, &got, &len, &err), 0);
    assert_int_equal(len, 100000);
    assert_memory_equal(got, b, len);
    free(got);
    /* the key is where the header says, in db 2, with the TTL */
    char k[128];
    km_redis_state_key(r, key_n(1), k, sizeof k);
    assert_int_equal(strncmp(k, "kvmesh:v1:aa0102030405060708090a0b0c0d0ebb:s:", 45), 0);
    redisContext *c = redisConnect("127.0.0.1", port);
    redisReply *rep = redisCommand(c, "SELECT 2");
    freeReplyObject(rep);
    rep = redisCommand(c, "TTL %s", k);
    assert_true(rep->integer > 100 && rep->integer <= 120);
    freeReplyObject(rep);
    rep = redisCommand(c, "STRLEN %s", k);
    assert_int_equal(rep->integer, 100000);
    freeReplyObject(rep);
    /* a value over max_blob is refused by the client (code 2: delete it) */
    {
        km_redis_params small = km_redis_default_params();
        char url[64];
        snprintf(url, sizeof url, "redis://127.0.0.1:%d/2", port);
        small.url = url;
        small.max_blob = 1000;
        small.sync_period_ms = 0;
        km_redis *s = km_redis_open(&small, FP, &err);
        assert_int_equal(km_redis_get(s, key_n(1), 0, &got, &len, &err), 2);
        assert_non_null(strstr(err.msg, "is over 1000 bytes"));
        assert_int_equal(km_redis_get_stats(s).bad_values, 1);
        assert_int_equal(km_redis_put_async(s, key_n(9), b, 100000, &err), -1);
        km_redis_close(s, 100);
    }
    /* delete */
    assert_int_equal(km_redis_del(r, key_n(1), &err), 0);
    assert_int_equal(km_redis_get(r, key_n(1), 0, &got, &len, &err), 1);
    km_redis_stats st = km_redis_get_stats(r);
    assert_int_equal(st.gets, 3);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.uploads_done, 1);
    assert_int_equal(st.bytes_up, 100000);
    assert_int_equal(st.bytes_down, 100000);
    assert_true(st.up);
    redisFree(c);
    free(b);
    km_redis_close(r, 1000);
    tu_redis_stop(pid, 0);
}

static void test_auth(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, "--requirepass s3cret");
    skip_without_redis(pid);
    km_error err;
    uint8_t *got;
    size_t len;
    km_redis *good = open_tier(port, ":s3cret@", 0, 0);
    assert_int_equal(km_redis_get(good, key_n(2), 0, &got, &len, &err), 1);
    km_redis_close(good, 100);
    km_redis *bad = open_tier(port, ":wrong@", 0, 0);
    assert_int_equal(km_redis_get(bad, key_n(2), 0, &got, &len, &err), -1);
    assert_false(km_redis_get_stats(bad).up);
    km_redis_close(bad, 100);
    km_redis *none = open_tier(port, NULL, 0, 0);
    assert_int_equal(km_redis_get(none, key_n(2), 0, &got, &len, &err), -1);
    km_redis_close(none, 100);
    tu_redis_stop(pid, 0);
}

/* Redis absent at start; uploads wait; the server appears; caching resumes. */
static void test_absent_then_back(void **state) {
    (void)state;
    int port = tu_free_port();
    km_redis *r = open_tier(port, NULL, 0, 0);
    km_error err;
    uint8_t *got;
    size_t len;
    double t0 = km_now_ms();
    assert_int_equal(km_redis_get(r, key_n(3), 0, &got, &len, &err), -1);
    assert_true(km_now_ms() - t0 < 200); /* down: fails fast (refused, then no attempt before the backoff ends) */
    uint8_t *b = blob_n(3, 5000);
    assert_int_equal(km_redis_put_async(r, key_n(3), b, 5000, &err), 0);
    assert_int_equal(km_redis_flush(r, 150), 1); /* still pending */
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    assert_int_equal(km_redis_flush(r, 8000), 0); /* the writer retried and sent it */
    /* the read path reconnects after its backoff too */
    int rc = -1;
    for (int i = 0; i < 100 && rc != 0; i++) {
        rc = km_redis_get(r, key_n(3), 0, &got, &len, &err);
        if (rc != 0) usleep(100 * 1000);
    }
    assert_int_equal(rc, 0);
    assert_memory_equal(got, b, 5000);
    free(got);
    free(b);
    km_redis_close(r, 1000);
    tu_redis_stop(pid, 0);
}

/* Killed mid-run: requests fail fast (fallback), then recover after a restart. */
static void test_killed_and_restarted(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_redis *r = open_tier(port, NULL, 0, 0);
    km_error err;
    uint8_t *got;
    size_t len;
    assert_int_equal(km_redis_get(r, key_n(4), 0, &got, &len, &err), 1);
    tu_redis_stop(pid, 1);
    double t0 = km_now_ms();
    assert_int_equal(km_redis_get(r, key_n(4), 0, &got, &len, &err), -1);
    assert_int_equal(km_redis_get(r, key_n(4), 0, &got, &len, &err), -1);
    assert_true(km_now_ms() - t0 < 1200); /* bounded by the timeouts, then backoff */
    pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    int rc = -1;
    for (int i = 0; i < 100 && rc < 0; i++) {
        rc = km_redis_get(r, key_n(4), 0, &got, &len, &err);
        if (rc < 0) usleep(100 * 1000);
    }
    assert_int_equal(rc, 1);
    assert_true(km_redis_get_stats(r).up);
    km_redis_close(r, 1000);
    tu_redis_stop(pid, 0);
}

/* The down warning names the cause: a connection that breaks mid-command
 * reports hiredis's reason (it used to read it from the freed context and
 * print "unavailable (cache reads: )" or garbage). */
static void test_down_warning_has_reason(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_redis *r = open_tier(port, NULL, 0, 0);
    km_error err;
    uint8_t *got;
    size_t len;
    assert_int_equal(km_redis_get(r, key_n(4), 0, &got, &len, &err), 1); /* connected */
    tu_redis_stop(pid, 1);
    int level = km_log_level;
    km_log_level = 0;
    tu_stderr_begin();
    assert_int_equal(km_redis_get(r, key_n(4), 0, &got, &len, &err), -1);
    char *log = tu_stderr_end();
    km_log_level = level;
    const char *why = strstr(err.msg, "failed: "); /* "Redis GET failed: <hiredis's reason>" */
    assert_non_null(why);
    why += strlen("failed: ");
    assert_true(strlen(why) > 3);
    char expect[600];
    snprintf(expect, sizeof expect, "unavailable (cache reads: %s);", why);
    if (!strstr(log, expect)) fail_msg("warning without its reason: '%s' (expected '%s')", log, expect);
    free(log);
    km_redis_close(r, 100);
}

static long max_rss_kb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* A value far larger than any state of its key (64 MB, made by the server:
 * SETRANGE) is refused after reading at most the bound plus one byte: fast,
 * and this process never holds it (a GET read it whole first). */
static void test_oversized_value_not_read(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_redis *r = open_tier(port, NULL, 0, 0);
    char k[128];
    km_redis_state_key(r, key_n(40), k, sizeof k);
    redisContext *c = redisConnect("127.0.0.1", port);
    redisReply *rep = redisCommand(c, "SELECT 2");
    freeReplyObject(rep);
    rep = redisCommand(c, "SETRANGE %s %d x", k, (64 << 20) - 1);
    assert_int_equal(rep->integer, 64 << 20);
    freeReplyObject(rep);
    km_error err;
    uint8_t *got;
    size_t len;
    long rss0 = max_rss_kb();
    double t0 = km_now_ms();
    assert_int_equal(km_redis_get(r, key_n(40), 100000, &got, &len, &err), 2);
    double dt = km_now_ms() - t0;
    assert_null(got);
    assert_non_null(strstr(err.msg, "is over 100000 bytes"));
    long grown_kb = max_rss_kb() - rss0;
    print_message("    64 MB value refused in %.1f ms, peak RSS +%ld kB\n", dt, grown_kb);
    assert_true(grown_kb < 16 * 1024); /* a whole read costs >= 64 MB */
    assert_true(dt < 500);
    km_redis_stats st = km_redis_get_stats(r);
    assert_int_equal(st.bad_values, 1);
    assert_int_equal(st.bytes_down, 0);
    /* a value within the bound is read; a missing key is a miss, not a bad value */
    uint8_t *b = blob_n(41, 5000);
    assert_int_equal(km_redis_put_async(r, key_n(41), b, 5000, &err), 0);
    assert_int_equal(km_redis_flush(r, 5000), 0);
    assert_int_equal(km_redis_get(r, key_n(41), 5000, &got, &len, &err), 0);
    assert_int_equal(len, 5000);
    assert_memory_equal(got, b, 5000);
    free(got);
    assert_int_equal(km_redis_get(r, key_n(41), 4999, &got, &len, &err), 2);
    assert_int_equal(km_redis_get(r, key_n(42), 5000, &got, &len, &err), 1);
    free(b);
    redisFree(c);
    km_redis_close(r, 100);
    tu_redis_stop(pid, 0);
}

/* A server that accepts and never answers: every call is bounded by io_timeout. */
static void test_silent_server_times_out(void **state) {
    (void)state;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    listen(s, 8);
    km_redis *r = open_tier(ntohs(a.sin_port), NULL, 0, 0);
    km_error err;
    uint8_t *got;
    size_t len;
    double t0 = km_now_ms();
    assert_int_equal(km_redis_get(r, key_n(5), 0, &got, &len, &err), -1);
    double dt = km_now_ms() - t0;
    assert_true(dt < 1500); /* io timeout 500 ms */
    uint8_t b[10] = {0};
    assert_int_equal(km_redis_put_async(r, key_n(5), b, 10, &err), 0);
    t0 = km_now_ms();
    km_redis_close(r, 300); /* flush deadline, then the writer's own I/O timeout */
    assert_true(km_now_ms() - t0 < 2000);
    close(s);
}

/* Uploads over the queue budget drop the oldest, counted; nothing blocks. */
static void test_queue_budget(void **state) {
    (void)state;
    int port = tu_free_port(); /* no server */
    km_redis *r = open_tier(port, NULL, 0, 30000);
    km_error err;
    uint8_t *b = blob_n(6, 10000);
    for (int i = 0; i < 10; i++) assert_int_equal(km_redis_put_async(r, key_n(100 + i), b, 10000, &err), 0);
    km_redis_stats st = km_redis_get_stats(r);
    /* at most 3 fit the budget, plus the one the writer may hold in flight */
    assert_true(st.uploads_dropped >= 6);
    assert_true(st.uploads_pending <= 4 && st.uploads_pending >= 2);
    assert_int_equal(st.uploads_dropped + st.uploads_pending + st.uploads_failed, 10);
    free(b);
    km_redis_close(r, 100);
}

/* Catalogs: a client learns what others uploaded (delta), a rebuilt master
 * reflects evictions, and the background thread keeps copies fresh. */
static void test_catalog_sync_and_rebuild(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_error err;
    km_redis *a = open_tier(port, NULL, 0, 0), *b = open_tier(port, NULL, 0, 0);
    uint8_t data[64] = {1};
    for (int i = 0; i < 50; i++) assert_int_equal(km_redis_put_async(a, key_n(1000 + i), data, sizeof data, &err), 0);
    assert_true(km_redis_maybe_has(a, key_n(1000))); /* own uploads: at once */
    assert_int_equal(km_redis_flush(a, 5000), 0);
    assert_false(km_redis_maybe_has(b, key_n(1000)));
    assert_int_equal(km_redis_catalog_sync(b, false, &err), 0);
    for (int i = 0; i < 50; i++) assert_true(km_redis_maybe_has(b, key_n(1000 + i)));
    int fp = 0;
    for (int i = 0; i < 200; i++) fp += km_redis_maybe_has(b, key_n(900000 + i));
    assert_true(fp <= 10); /* 1 % expected */
    km_redis_stats sb = km_redis_get_stats(b);
    assert_int_equal(sb.catalog_version, 50);
    assert_int_equal(sb.catalog_delta_keys, 50);
    assert_int_equal(sb.catalog_full_loads, 0); /* no master yet */
    assert_int_equal(km_redis_catalog_sync(b, false, &err), 0); /* nothing new: no keys fetched */
    assert_int_equal(km_redis_get_stats(b).catalog_delta_keys, 50);

    /* evict 10 states behind the catalogs' back, rebuild from what is there */
    redisContext *c = redisConnect("127.0.0.1", port);
    redisReply *rep = redisCommand(c, "SELECT 2");
    freeReplyObject(rep);
    for (int i = 0; i < 10; i++) {
        char k[128];
        km_redis_state_key(a, key_n(1000 + i), k, sizeof k);
        rep = redisCommand(c, "DEL %s", k);
        assert_int_equal(rep->integer, 1);
        freeReplyObject(rep);
    }
    uint32_t n = 0;
    assert_int_equal(km_redis_catalog_rebuild(a, &n, &err), 0);
    assert_int_equal(n, 40);
    /* a new client loads the master (version 50) and no delta */
    km_redis *d = open_tier(port, NULL, 0, 0);
    assert_int_equal(km_redis_catalog_sync(d, false, &err), 0);
    km_redis_stats sd = km_redis_get_stats(d);
    assert_int_equal(sd.catalog_full_loads, 1);
    assert_int_equal(sd.catalog_version, 50);
    assert_int_equal(sd.catalog_delta_keys, 0);
    int still = 0;
    for (int i = 0; i < 10; i++) still += km_redis_maybe_has(d, key_n(1000 + i));
    assert_true(still <= 2);
    for (int i = 10; i < 50; i++) assert_true(km_redis_maybe_has(d, key_n(1000 + i)));
    print_message("    catalog: %zu bytes of filter, master transfer %llu bytes\n", sd.catalog_bytes,
                  (unsigned long long)sd.catalog_bytes_down);
    /* a forged master is rejected; the copy stays usable */
    char mk[128];
    snprintf(mk, sizeof mk, "kvmesh:v1:aa0102030405060708090a0b0c0d0ebb:catalog");
    rep = redisCommand(c, "SET %s %s", mk, "garbage");
    freeReplyObject(rep);
    assert_int_equal(km_redis_catalog_sync(d, true, &err), 0);
    assert_true(km_redis_maybe_has(d, key_n(1020)));

    /* background sync: a client with a 50 ms period sees a new upload quickly */
    km_redis *e = open_tier_sync(port, NULL, 0, 0, 50);
    assert_int_equal(km_redis_put_async(a, key_n(4242), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);
    int seen = 0;
    for (int i = 0; i < 100 && !seen; i++) {
        seen = km_redis_maybe_has(e, key_n(4242));
        if (!seen) usleep(20 * 1000);
    }
    assert_true(seen);
    redisFree(c);
    km_redis_close(e, 100);
    km_redis_close(d, 100);
    km_redis_close(b, 100);
    km_redis_close(a, 1000);
    tu_redis_stop(pid, 0);
}

/* Wait (at most 10 s) until r's catalog copy may hold key. */
static bool wait_maybe_has(km_redis *r, km_key key) {
    for (int i = 0; i < 500; i++) {
        if (km_redis_maybe_has(r, key)) return true;
        usleep(20 * 1000);
    }
    return false;
}

/* Redis restarts empty under running clients: the upload list starts again
 * at 0, far behind a client's position in the old one. The client notices
 * (the epoch is gone, the list is shorter) and reloads, so the first uploads
 * after the restart are found; they used to be skipped for good. */
static void test_catalog_resync_after_empty_restart(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_error err;
    km_redis *a = open_tier(port, NULL, 0, 0), *e = open_tier_sync(port, NULL, 0, 0, 50);
    uint8_t data[64] = {1};
    for (int i = 0; i < 10; i++) assert_int_equal(km_redis_put_async(a, key_n(2000 + i), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);
    assert_true(wait_maybe_has(e, key_n(2009)));
    assert_int_equal(km_redis_get_stats(e).catalog_version, 10);

    tu_redis_stop(pid, 1);
    pid = tu_redis_start(port, NULL); /* no persistence: empty */
    skip_without_redis(pid);
    for (int i = 0; i < 3; i++) assert_int_equal(km_redis_put_async(a, key_n(3000 + i), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 8000), 0);
    /* the first one met the connection the restart broke: sent again, not lost */
    assert_int_equal(km_redis_get_stats(a).uploads_failed, 0);
    assert_int_equal(km_redis_get_stats(a).uploads_done, 13);
    for (int i = 0; i < 3; i++) assert_true(wait_maybe_has(e, key_n(3000 + i)));
    km_redis_stats st = km_redis_get_stats(e);
    assert_int_equal(st.catalog_resets, 1);
    assert_int_equal(st.catalog_version, 3);
    int stale = 0; /* the states lost with the restart are out of the copy */
    for (int i = 0; i < 10; i++) stale += km_redis_maybe_has(e, key_n(2000 + i));
    assert_true(stale <= 1);

    /* a later sync in the same epoch does not reset again */
    assert_int_equal(km_redis_catalog_sync(e, true, &err), 0);
    assert_int_equal(km_redis_get_stats(e).catalog_resets, 1);
    km_redis_close(e, 100);
    km_redis_close(a, 1000);
    tu_redis_stop(pid, 0);
}

/* Another type of value where the upload list belongs (here a string): every
 * RPUSH fails, and `kvmesh catalog rebuild` used to fail too ("unexpected
 * LLEN reply: WRONGTYPE"). The rebuild now deletes it, builds the master from
 * the states present and starts a new epoch: other clients reload, and new
 * uploads are listed again. */
static void test_rebuild_repairs_wrong_typed_list(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_error err;
    km_redis *a = open_tier(port, NULL, 0, 0), *b = open_tier(port, NULL, 0, 0);
    uint8_t data[64] = {1};
    for (int i = 0; i < 5; i++) assert_int_equal(km_redis_put_async(a, key_n(5000 + i), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);
    assert_int_equal(km_redis_catalog_sync(b, false, &err), 0);
    assert_int_equal(km_redis_get_stats(b).catalog_version, 5);

    redisContext *c = redisConnect("127.0.0.1", port);
    redisReply *rep = redisCommand(c, "SELECT 2");
    freeReplyObject(rep);
    const char *list = "kvmesh:v1:aa0102030405060708090a0b0c0d0ebb:added";
    freeReplyObject(redisCommand(c, "DEL %s", list));
    freeReplyObject(redisCommand(c, "SET %s %s", list, "not a list"));
    assert_int_equal(km_redis_put_async(a, key_n(5005), data, sizeof data, &err), 0); /* SET ok, RPUSH refused */
    assert_int_equal(km_redis_flush(a, 5000), 0);
    assert_int_equal(km_redis_catalog_sync(b, false, &err), -1);
    assert_non_null(strstr(err.msg, "is not a list"));
    /* a background syncer says so, once (it used to be silent) */
    int level = km_log_level;
    km_log_level = 0;
    tu_stderr_begin();
    km_redis *bg = open_tier_sync(port, NULL, 0, 0, 20);
    usleep(300 * 1000);
    km_redis_close(bg, 100);
    char *log = tu_stderr_end();
    km_log_level = level;
    const char *w = strstr(log, "catalog not synced: catalog list kvmesh:v1:aa0102030405060708090a0b0c0d0ebb:added is not a list");
    if (!w) fail_msg("no warning: '%s'", log);
    assert_null(strstr(w + 1, "catalog not synced"));
    free(log);

    uint32_t n = 0;
    if (km_redis_catalog_rebuild(a, &n, &err) != 0) fail_msg("rebuild: %s", err.msg);
    assert_int_equal(n, 6);
    rep = redisCommand(c, "EXISTS %s", list);
    assert_int_equal(rep->integer, 0); /* gone; the next upload starts a new list */
    freeReplyObject(rep);
    assert_int_equal(km_redis_put_async(a, key_n(5006), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);
    rep = redisCommand(c, "LLEN %s", list);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);

    assert_int_equal(km_redis_catalog_sync(b, false, &err), 0);
    km_redis_stats st = km_redis_get_stats(b);
    assert_int_equal(st.catalog_resets, 1);
    assert_int_equal(st.catalog_full_loads, 1); /* the rebuilt master */
    assert_int_equal(st.catalog_version, 1);
    for (int i = 0; i < 7; i++) assert_true(km_redis_maybe_has(b, key_n(5000 + i)));
    redisFree(c);
    km_redis_close(b, 100);
    km_redis_close(a, 1000);
    tu_redis_stop(pid, 0);
}

/* A 64 MB entry pushed into the upload list (LRANGE would read it whole, and
 * 4096 entries at a time): a sync checks the list's memory first and refuses
 * to read it, and `kvmesh catalog rebuild` replaces the list. */
static void test_list_with_oversized_entry(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_error err;
    km_redis *a = open_tier(port, NULL, 0, 0), *e = open_tier(port, NULL, 0, 0);
    uint8_t data[64] = {1};
    for (int i = 0; i < 3; i++) assert_int_equal(km_redis_put_async(a, key_n(6000 + i), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);
    assert_int_equal(km_redis_catalog_sync(e, false, &err), 0);
    assert_int_equal(km_redis_get_stats(e).catalog_version, 3);

    redisContext *c = redisConnect("127.0.0.1", port);
    freeReplyObject(redisCommand(c, "SELECT 2"));
    const char *list = "kvmesh:v1:aa0102030405060708090a0b0c0d0ebb:added";
    freeReplyObject(redisCommand(c, "SETRANGE big %d x", (64 << 20) - 1)); /* made by the server: never in this process */
    redisReply *rep = redisCommand(c, "EVAL %s 2 %s big", "return redis.call('RPUSH', KEYS[1], redis.call('GET', KEYS[2]))", list);
    assert_int_equal(rep->integer, 4);
    freeReplyObject(rep);
    freeReplyObject(redisCommand(c, "DEL big"));
    assert_int_equal(km_redis_put_async(a, key_n(6003), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);

    long rss0 = max_rss_kb();
    assert_int_equal(km_redis_catalog_sync(e, false, &err), -1);
    assert_non_null(strstr(err.msg, "more than keys"));
    assert_true(max_rss_kb() - rss0 < 16 * 1024);
    assert_int_equal(km_redis_get_stats(e).catalog_version, 3);

    uint32_t n = 0;
    if (km_redis_catalog_rebuild(a, &n, &err) != 0) fail_msg("rebuild: %s", err.msg);
    assert_int_equal(n, 4);
    assert_true(max_rss_kb() - rss0 < 16 * 1024);
    rep = redisCommand(c, "EXISTS %s", list);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    assert_int_equal(km_redis_put_async(a, key_n(6004), data, sizeof data, &err), 0);
    assert_int_equal(km_redis_flush(a, 5000), 0);
    assert_int_equal(km_redis_catalog_sync(e, false, &err), 0);
    km_redis_stats st = km_redis_get_stats(e);
    assert_int_equal(st.catalog_resets, 1);
    assert_int_equal(st.catalog_version, 1);
    for (int i = 0; i < 5; i++) assert_true(km_redis_maybe_has(e, key_n(6000 + i)));
    redisFree(c);
    km_redis_close(e, 100);
    km_redis_close(a, 1000);
    tu_redis_stop(pid, 0);
}

/* Through an emulated link, a GET pays the round trip and the bytes; the
 * write-behind upload pays too, but off the caller's path. */
static void test_link_shapes_transfers(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_link_params lp = {8e6, 20}; /* 1 MB/s, 20 ms */
    km_link *link = km_link_new(&lp);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    km_redis_params p = km_redis_default_params();
    p.url = url;
    p.sync_period_ms = 0;
    p.link = link;
    km_error err;
    km_redis *r = km_redis_open(&p, FP, &err);
    uint8_t *b = blob_n(7, 100000), *got;
    size_t len;
    double t0 = km_now_ms();
    assert_int_equal(km_redis_put_async(r, key_n(7), b, 100000, &err), 0);
    assert_true(km_now_ms() - t0 < 20); /* queued, not sent on the caller's time */
    assert_int_equal(km_redis_flush(r, 5000), 0);
    assert_true(km_now_ms() - t0 >= 120); /* the writer paid 20 ms + 100 ms */
    t0 = km_now_ms();
    assert_int_equal(km_redis_get(r, key_n(7), 0, &got, &len, &err), 0);
    double dt = km_now_ms() - t0;
    assert_true(dt >= 120 && dt < 600);
    assert_memory_equal(got, b, 100000);
    free(got);
    t0 = km_now_ms();
    assert_int_equal(km_redis_get(r, key_n(8), 0, &got, &len, &err), 1); /* a miss still pays the round trip */
    assert_true(km_now_ms() - t0 >= 20);
    km_redis_stats st = km_redis_get_stats(r);
    assert_true(st.get_ms >= 140);
    free(b);
    km_redis_close(r, 1000);
    km_link_free(link);
    tu_redis_stop(pid, 0);
}

/* An uncompressed state blob (f16 KV) with a compressible payload of plen bytes. */
static uint8_t *state_blob(size_t plen, size_t *len) {
    static const int32_t toks[2] = {2, 9};
    *len = km_blob_size(2, plen);
    uint8_t *b = malloc(*len);
    uint8_t *p = km_blob_begin(b, FP, 1, 1, toks, 2, plen);
    for (size_t i = 0; i < plen; i++) p[i] = (uint8_t)((i / 64) ^ (i % 3));
    km_blob_seal(b, *len);
    return b;
}

/* The writer compresses a state blob before its SET: what arrives is smaller,
 * decodes to the payload put, and the statistics count both sizes. */
static void test_upload_compressed(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    skip_without_redis(pid);
    km_redis *r = open_tier(port, NULL, 0, 0);
    km_error err;
    size_t len, glen;
    uint8_t *b = state_blob(50000, &len), *got;
    assert_int_equal(km_redis_put_async(r, key_n(30), b, len, &err), 0);
    uint8_t *opaque = blob_n(3, 1000);
    assert_int_equal(km_redis_put_async(r, key_n(31), opaque, 1000, &err), 0); /* not a blob: as given */
    assert_int_equal(km_redis_flush(r, 5000), 0);
    assert_int_equal(km_redis_get(r, key_n(30), 0, &got, &glen, &err), 0);
    assert_true(glen < len / 4);
    km_blob_info info;
    assert_int_equal(km_blob_parse(got, glen, (size_t)1 << 30, &info, &err), 0);
    assert_int_equal(info.flags, KM_BLOB_F_ZSTD | KM_BLOB_F_SHUFFLE2);
    assert_int_equal(info.raw_len, 50000);
    uint8_t *owned;
    const uint8_t *raw;
    size_t raw_len;
    assert_int_equal(km_blob_payload_decode(&info, (size_t)1 << 30, &owned, &raw, &raw_len, &err), 0);
    assert_int_equal(raw_len, 50000);
    assert_memory_equal(raw, b + len - 50000, 50000);
    free(owned);
    km_redis_stats st = km_redis_get_stats(r);
    assert_int_equal(st.uploads_done, 2);
    assert_int_equal(st.bytes_up, glen + 1000);
    assert_int_equal(st.bytes_up_raw, len + 1000);
    assert_true(st.compress_ms > 0);
    free(got);
    assert_int_equal(km_redis_get(r, key_n(31), 0, &got, &glen, &err), 0);
    assert_int_equal(glen, 1000);
    assert_memory_equal(got, opaque, 1000);
    free(got);
    km_redis_close(r, 1000);

    /* compress_level 0: sent as queued */
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/2", port);
    km_redis_params p = km_redis_default_params();
    p.url = url;
    p.sync_period_ms = 0;
    p.compress_level = 0;
    r = km_redis_open(&p, FP, &err);
    assert_non_null(r);
    assert_int_equal(km_redis_put_async(r, key_n(32), b, len, &err), 0);
    assert_int_equal(km_redis_flush(r, 5000), 0);
    assert_int_equal(km_redis_get(r, key_n(32), 0, &got, &glen, &err), 0);
    assert_int_equal(glen, len);
    assert_memory_equal(got, b, len);
    st = km_redis_get_stats(r);
    assert_int_equal(st.bytes_up, len);
    assert_int_equal(st.bytes_up_raw, len);
    assert_true(st.compress_ms == 0);
    free(got);
    km_redis_close(r, 1000);
    free(opaque);
    free(b);
    tu_redis_stop(pid, 0);
}

int main(void) {
    km_log_level = -1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parsing),
        cmocka_unit_test(test_roundtrip_namespace_ttl),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_absent_then_back),
        cmocka_unit_test(test_killed_and_restarted),
        cmocka_unit_test(test_down_warning_has_reason),
        cmocka_unit_test(test_oversized_value_not_read),
        cmocka_unit_test(test_silent_server_times_out),
        cmocka_unit_test(test_queue_budget),
        cmocka_unit_test(test_catalog_sync_and_rebuild),
        cmocka_unit_test(test_catalog_resync_after_empty_restart),
        cmocka_unit_test(test_rebuild_repairs_wrong_typed_list),
        cmocka_unit_test(test_list_with_oversized_entry),
        cmocka_unit_test(test_link_shapes_transfers),
        cmocka_unit_test(test_upload_compressed),
    };
    return cmocka_run_group_tests_name("redis_tier", tests, NULL, NULL);
}
