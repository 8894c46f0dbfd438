/* test_pcache_redis.c -- the prompt cache over the shared Redis tier, with a
 * real redis-server on loopback: one device's states serve another, the
 * catalog gates every round trip, and bad blobs, evictions and a dead server
 * cost time but never a wrong answer. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "blob.h"
#include "engine.h"
#include "pcache.h"
#include "testutil.h"

static km_model *model;
static km_ctx *ctx;
static int32_t *toks;
static int n_toks, bounds[8], nb;
static float *cold;
static int nv, port, pid = -1;
static const char *segs[3] = {"You answer questions about trains.\n\n", "Q: How fast is a TGV?\nA: 320 km/h\n\n",
                              "Q: How long is the Channel Tunnel?\nA:"};
static const char SECRET[] = "a store secret of enough length";

static int group_setup(void **state) {
    (void)state;
    km_log_level = -1;
    km_engine_init();
    km_error err;
    model = km_model_load(tu_model("tiny-f16.gguf"), &err);
    if (!model) return -1;
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = 512;
    ctx = km_ctx_init(model, &cp, &err);
    int *ends;
    km_tokenize_segments(model, segs, 3, false, &toks, &n_toks, &ends, &err);
    nb = km_boundaries(ends, 3, n_toks, 0, bounds, NULL);
    free(ends);
    nv = km_model_n_vocab(model);
    km_prefill_report rep;
    if (km_pcache_prefill(ctx, NULL, 0, toks, n_toks, bounds, nb, NULL, &rep, &err) != 0) return -1;
    cold = malloc((size_t)nv * sizeof(float));
    memcpy(cold, km_logits(ctx), (size_t)nv * sizeof(float));
    port = tu_free_port();
    pid = tu_redis_start(port, NULL);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    tu_redis_stop(pid, 0);
    free(cold);
    free(toks);
    km_ctx_free(ctx);
    km_model_free(model);
    return 0;
}

static void need_redis(void) {
    if (pid < 0) {
        print_message("SKIP: redis-server not available (scripts/setup.sh installs it)\n");
        skip();
    }
}

/* A device: its own RAM store and a Redis client (no background sync). */
typedef struct device {
    km_store *local;
    km_redis *redis;
} device;

static device dev_open_with(const char *secret) {
    device d;
    km_error err;
    km_store_params sp = km_store_default_params();
    d.local = km_store_open(&sp, &err);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    km_redis_params rp = km_redis_default_params();
    rp.url = url;
    rp.sync_period_ms = 0;
    rp.io_timeout_ms = 500;
    rp.connect_timeout_ms = 200;
    rp.secret = (const uint8_t *)secret;
    rp.secret_len = secret ? strlen(secret) : 0;
    d.redis = km_redis_open(&rp, km_model_fingerprint(model), &err);
    assert_non_null(d.redis);
    return d;
}

static device dev_open(void) { return dev_open_with(NULL); }

static void dev_close(device *d) {
    km_redis_close(d->redis, 2000);
    km_store_close(d->local);
}

static void request(device *d, km_prefill_report *rep) {
    km_pcache_opts o = km_pcache_default_opts();
    o.redis = d->redis;
    km_error err;
    if (km_pcache_prefill(ctx, d->local, 0, toks, n_toks, bounds, nb, &o, rep, &err) != 0) fail_msg("%s", err.msg);
    assert_memory_equal(km_logits(ctx), cold, (size_t)nv * sizeof(float));
}

static redisReply *cmd(const char *fmt, ...) {
    static redisContext *c;
    if (!c) c = redisConnect("127.0.0.1", port);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return r;
}

static void state_key(device *d, int i, char *out) {
    km_key keys[8];
    km_keys_for_boundaries(km_ctx_root_key(ctx, NULL), toks, bounds, nb, keys);
    km_redis_state_key(d->redis, keys[i], out, 128);
}

static void test_states_flow_between_devices(void **state) {
    (void)state;
    need_redis();
    km_error err;
    device a = dev_open(), b = dev_open(), c = dev_open();
    km_prefill_report rep;
    request(&a, &rep); /* miss: computes, stores locally, uploads write-behind */
    assert_int_equal(rep.hit_index, -1);
    assert_int_equal(rep.n_uploaded, nb);
    assert_int_equal(km_redis_flush(a.redis, 5000), 0);
    /* c never synced its catalog: no round trip at all, plain miss */
    request(&c, &rep);
    assert_int_equal(rep.n_remote_gets, 0);
    /* b synced: one GET for the longest prefix, bit-identical result */
    assert_int_equal(km_redis_catalog_sync(b.redis, false, &err), 0);
    request(&b, &rep);
    assert_int_equal(rep.hit_index, nb - 1);
    assert_int_equal(rep.hit_tier, KM_TIER_REDIS);
    assert_int_equal(rep.n_remote_gets, 1);
    assert_true(rep.bytes_remote > 0);
    assert_int_equal(rep.n_uploaded, 0);
    /* ... and kept it locally: the next request needs no network */
    request(&b, &rep);
    assert_int_equal(rep.hit_tier, KM_TIER_LOCAL);
    assert_int_equal(rep.n_remote_gets, 0);
    dev_close(&a);
    dev_close(&b);
    dev_close(&c);
}

/* A request through a planner (salted: keys of its own). */
static void planned_request(device *d, km_planner *pl, km_prefill_report *rep) {
    km_pcache_opts o = km_pcache_default_opts();
    o.redis = d->redis;
    o.planner = pl;
    o.salt = "planner-test";
    km_error err;
    if (km_pcache_prefill(ctx, d->local, 0, toks, n_toks, bounds, nb, &o, rep, &err) != 0) fail_msg("%s", err.msg);
    assert_memory_equal(km_logits(ctx), cold, (size_t)nv * sizeof(float));
}

static void test_planner_fetches_only_when_faster(void **state) {
    (void)state;
    need_redis();
    km_error err;
    device a = dev_open(), b = dev_open();
    km_prefill_report rep;
    planned_request(&a, NULL, &rep);
    assert_int_equal(rep.n_uploaded, nb);
    assert_int_equal(km_redis_flush(a.redis, 5000), 0);
    assert_int_equal(km_redis_catalog_sync(b.redis, false, &err), 0);
    /* b's measured rates: prefill at 1000 tokens/ms, a link of 1 byte/ms:
     * fetching any state is slower than computing the whole prompt */
    km_planner slow_link;
    km_planner_init(&slow_link);
    km_planner_observe_prefill(&slow_link, 1000, 1.0);
    km_planner_observe_fetch(&slow_link, 1000, 1000.0);
    km_planner_observe_fetch(&slow_link, 5000, 5000.0);
    planned_request(&b, &slow_link, &rep);
    assert_int_equal(rep.hit_index, -1);
    assert_int_equal(rep.n_remote_gets, 0);     /* no round trip at all */
    assert_int_equal(rep.n_planned_skips, nb);   /* every catalog hit was weighed and skipped */
    assert_true(rep.est_fetch_ms > rep.est_recompute_ms);
    /* the reverse: a slow device on a fast link fetches the longest prefix */
    device c = dev_open();
    assert_int_equal(km_redis_catalog_sync(c.redis, false, &err), 0);
    km_planner slow_device;
    km_planner_init(&slow_device);
    km_planner_observe_prefill(&slow_device, 10, 1000.0);
    km_planner_observe_fetch(&slow_device, 1000, 1.0);
    km_planner_observe_fetch(&slow_device, 100000, 10.0);
    planned_request(&c, &slow_device, &rep);
    assert_int_equal(rep.hit_index, nb - 1);
    assert_int_equal(rep.hit_tier, KM_TIER_REDIS);
    assert_int_equal(rep.n_remote_gets, 1);
    assert_int_equal(rep.n_planned_skips, 0);
    assert_true(slow_device.link.n_obs == 3); /* the GET taught it */
    dev_close(&a);
    dev_close(&b);
    dev_close(&c);
}

static void test_bad_blobs_in_redis(void **state) {
    (void)state;
    need_redis();
    km_error err;
    device a = dev_open();
    km_prefill_report rep;
    request(&a, &rep);
    km_redis_flush(a.redis, 5000);
    char k_last[128], k_mid[128];
    state_key(&a, nb - 1, k_last);
    state_key(&a, nb - 2, k_mid);
    /* corrupt the longest, truncate nothing else: rejected, deleted, fallback */
    freeReplyObject(cmd("SET %s %s", k_last, "not a blob at all"));
    device b = dev_open();
    km_redis_catalog_sync(b.redis, false, &err);
    request(&b, &rep);
    assert_int_equal(rep.n_rejected, 1);
    assert_int_equal(rep.hit_index, nb - 2);
    assert_int_equal(rep.hit_tier, KM_TIER_REDIS);
    assert_int_equal(km_redis_get_stats(b.redis).deletes, 1); /* the bad blob was deleted */
    assert_int_equal(km_redis_flush(b.redis, 5000), 0);
    redisReply *r = cmd("STRLEN %s", k_last); /* and b's own snapshot uploaded in its place */
    assert_true(r->integer > 1000);
    freeReplyObject(r);
    /* a blob of another model under this key: rejected too */
    uint8_t fp[KM_FINGERPRINT_LEN] = {9};
    size_t len = km_blob_size(3, 16);
    uint8_t *blob = calloc(1, len);
    km_blob_begin(blob, fp, km_ctx_type_k(ctx), km_ctx_type_v(ctx), toks, 3, 16);
    km_blob_seal(blob, len);
    freeReplyObject(cmd("SET %s %b", k_last, blob, len));
    free(blob);
    /* and the middle one evicted between catalog check and GET: a miss */
    freeReplyObject(cmd("DEL %s", k_mid));
    device c = dev_open();
    km_redis_catalog_sync(c.redis, false, &err);
    request(&c, &rep);
    assert_int_equal(rep.n_rejected, 1);
    assert_int_equal(rep.n_false_positives, 1);
    assert_int_equal(rep.hit_index, nb - 3);
    /* oversized (over the tier's max_blob) and non-string values: rejected, deleted */
    km_redis_flush(c.redis, 5000);
    freeReplyObject(cmd("DEL %s", k_last));
    freeReplyObject(cmd("RPUSH %s %s", k_last, "a list, not a string"));
    device d = dev_open();
    km_redis_catalog_sync(d.redis, false, &err);
    request(&d, &rep);
    assert_int_equal(rep.n_rejected, 1);
    assert_int_equal(km_redis_get_stats(d.redis).deletes, 1);
    assert_int_equal(km_redis_flush(d.redis, 5000), 0);
    redisReply *t = cmd("STRLEN %s", k_last); /* replaced by d's own snapshot */
    assert_true(t->type == REDIS_REPLY_INTEGER && t->integer > 1000);
    freeReplyObject(t);
    dev_close(&d);
    dev_close(&a);
    dev_close(&b);
    dev_close(&c);
}

/* A value far larger than any state of its key (64 MB, made by the server)
 * costs a bounded read: rejected without this process ever holding it,
 * deleted, and the request falls back to the next prefix with the same answer. */
static void test_oversized_value_in_redis(void **state) {
    (void)state;
    need_redis();
    km_error err;
    device a = dev_open();
    km_prefill_report rep;
    request(&a, &rep);
    assert_int_equal(km_redis_flush(a.redis, 5000), 0);
    char k_last[128];
    state_key(&a, nb - 1, k_last);
    freeReplyObject(cmd("DEL %s", k_last));
    redisReply *r = cmd("SETRANGE %s %d x", k_last, (64 << 20) - 1);
    assert_int_equal(r->integer, 64 << 20);
    freeReplyObject(r);
    device b = dev_open();
    km_redis_catalog_sync(b.redis, false, &err);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long rss0 = ru.ru_maxrss;
    request(&b, &rep);
    getrusage(RUSAGE_SELF, &ru);
    assert_true(ru.ru_maxrss - rss0 < 16 * 1024); /* kB: the value is never read whole */
    assert_int_equal(rep.n_rejected, 1);
    assert_int_equal(rep.hit_index, nb - 2);
    assert_int_equal(rep.hit_tier, KM_TIER_REDIS);
    km_redis_stats st = km_redis_get_stats(b.redis);
    assert_int_equal(st.bad_values, 1);
    assert_int_equal(st.deletes, 1);
    assert_int_equal(km_redis_flush(b.redis, 5000), 0);
    r = cmd("STRLEN %s", k_last); /* deleted, and b's own snapshot uploaded in its place */
    assert_true(r->integer > 1000 && r->integer < (1 << 20));
    freeReplyObject(r);
    dev_close(&a);
    dev_close(&b);
}

static void test_redis_dies_and_returns(void **state) {
    (void)state;
    need_redis();
    km_error err;
    device a = dev_open();
    km_redis_catalog_sync(a.redis, false, &err);
    tu_redis_stop(pid, 1);
    pid = -1;
    /* fresh local store: everything would come from Redis, which is gone */
    device b = dev_open();
    km_prefill_report rep;
    double t0 = km_now_ms();
    request(&b, &rep); /* recomputes, same answer */
    assert_true(rep.hit_index == -1);
    assert_true(km_now_ms() - t0 < 3000);
    pid = tu_redis_start(port, NULL); /* empty again: no persistence */
    assert_true(pid > 0);
    request(&b, &rep); /* local hit now */
    assert_int_equal(rep.hit_tier, KM_TIER_LOCAL);
    dev_close(&b);
    /* caching resumes: a new device uploads and another one finds it */
    device c = dev_open(), d = dev_open();
    request(&c, &rep);
    assert_int_equal(km_redis_flush(c.redis, 5000), 0);
    km_redis_catalog_sync(d.redis, false, &err);
    request(&d, &rep);
    assert_int_equal(rep.hit_tier, KM_TIER_REDIS);
    dev_close(&a);
    dev_close(&c);
    dev_close(&d);
}

static int collect_first(void *ud, int32_t tok) {
    *(int32_t *)ud = tok;
    return 0;
}

/* A greedy one-token request through the cache (the hint may answer it). */
static int32_t first_token(device *d, km_result *res) {
    int32_t tok = -1;
    km_pcache_opts o = km_pcache_default_opts();
    o.redis = d ? d->redis : NULL;
    km_request req = {.segs = segs, .n_segs = 3, .segment_bounds = true, .sampling = km_sampling_default(),
                      .n_predict = 1, .on_token = collect_first, .ud = &tok, .opts = &o};
    km_error err;
    if (km_pcache_run(ctx, d ? d->local : NULL, 0, &req, res, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(res->n_generated, 1);
    return tok;
}

/* The value of a state key in Redis (malloc'd). */
static uint8_t *redis_value(const char *key, size_t *len) {
    redisReply *r = cmd("GET %s", key);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    uint8_t *v = malloc((size_t)r->len);
    memcpy(v, r->str, (size_t)r->len);
    *len = (size_t)r->len;
    freeReplyObject(r);
    return v;
}

static long long redis_exists(const char *key) {
    redisReply *r = cmd("EXISTS %s", key);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

/* The shared-tier case. With a store secret, what the devices upload
 * is MAC'd: an authenticated state answers the first token from its hint;
 * one whose hint was rewritten and checksum recomputed is "unauthenticated":
 * deleted, counted, the next shorter prefix used, the right token computed. A
 * payload of random bytes MAC'd with the right key (an authenticated writer)
 * is refused by the state layout check. Without a secret the tier is trusted
 * as is: its hint is checked, and the wrong one deleted from Redis. */
static void test_forged_states_in_redis(void **state) {
    (void)state;
    need_redis();
    km_error err;
    km_result res;
    int32_t cold_tok = first_token(NULL, &res);
    device a = dev_open_with(SECRET);
    first_token(&a, &res); /* miss: uploads its 3 states, MAC'd */
    assert_int_equal(km_redis_flush(a.redis, 5000), 0);
    char k_last[128];
    state_key(&a, nb - 1, k_last);
    size_t len;
    uint8_t *good = redis_value(k_last, &len);
    km_blob_info info;
    assert_int_equal(km_blob_parse(good, len, SIZE_MAX, &info, &err), 0);
    assert_true(info.has_mac);
    assert_int_equal(km_blob_verify(good, len, km_redis_key(a.redis), &err), 0);

    /* authenticated: the hint is trusted */
    device b = dev_open_with(SECRET);
    km_redis_catalog_sync(b.redis, false, &err);
    assert_int_equal(first_token(&b, &res), cold_tok);
    assert_int_equal(res.prefill.hit_tier, KM_TIER_REDIS);
    assert_int_equal(res.prefill.hit_index, nb - 1);
    assert_true(res.prefill.hit_trusted);
    assert_int_equal(res.prefill.next_hint, cold_tok);
    assert_int_equal(res.prefill.n_prefilled, 0);

    /* rewritten hint, checksum recomputed: unauthenticated */
    int32_t wrong = cold_tok == 100 ? 101 : 100;
    uint8_t *forged = malloc(len);
    memcpy(forged, good, len);
    km_put_u32(forged + 68, (uint32_t)wrong);
    km_blob_seal(forged, len);
    freeReplyObject(cmd("SET %s %b", k_last, forged, len));
    device c = dev_open_with(SECRET);
    km_redis_catalog_sync(c.redis, false, &err);
    assert_int_equal(first_token(&c, &res), cold_tok);
    assert_int_equal(res.prefill.n_unauthenticated, 1);
    assert_int_equal(res.prefill.n_rejected, 0);
    assert_int_equal(res.prefill.hit_index, nb - 2); /* the next shorter prefix */
    assert_int_equal(km_redis_get_stats(c.redis).deletes, 1);
    /* replaced by c's own recomputed state (write-behind), authenticated */
    assert_int_equal(km_redis_flush(c.redis, 5000), 0);
    size_t clen;
    uint8_t *cval = redis_value(k_last, &clen);
    assert_int_equal(km_blob_verify(cval, clen, km_redis_key(a.redis), &err), 0);
    free(cval);

    /* random payload bytes of the right length, MAC'd with the right key */
    uint8_t *owned;
    const uint8_t *raw;
    size_t raw_len;
    assert_int_equal(km_blob_payload_decode(&info, SIZE_MAX, &owned, &raw, &raw_len, &err), 0);
    int32_t *btoks = malloc(info.n_tokens * sizeof *btoks);
    for (uint32_t i = 0; i < info.n_tokens; i++) btoks[i] = km_blob_token(&info, i);
    size_t flen = km_blob_size(info.n_tokens, raw_len);
    uint8_t *rnd = malloc(flen);
    uint8_t *p = km_blob_begin(rnd, info.fingerprint, info.type_k, info.type_v, btoks, info.n_tokens, raw_len);
    uint32_t x = 7;
    for (size_t i = 0; i < raw_len; i++) p[i] = (uint8_t)((x = x * 1103515245u + 12345u) >> 24);
    km_blob_set_next(rnd, info.next_from, info.next_token);
    km_blob_seal(rnd, flen);
    assert_int_equal(km_blob_authenticate(rnd, flen, km_redis_key(a.redis), &err), 0);
    freeReplyObject(cmd("SET %s %b", k_last, rnd, flen));
    device d = dev_open_with(SECRET);
    km_redis_catalog_sync(d.redis, false, &err);
    assert_int_equal(first_token(&d, &res), cold_tok);
    assert_int_equal(res.prefill.n_unauthenticated, 0);
    assert_int_equal(res.prefill.n_rejected, 1); /* "state payload: bad magic" */
    assert_int_equal(res.prefill.hit_index, nb - 2);
    assert_int_equal(km_redis_get_stats(d.redis).deletes, 1);

    /* no secret: trusted as is, the rewritten hint is checked, not emitted */
    assert_int_equal(km_redis_flush(d.redis, 5000), 0); /* d's own upload lands first */
    freeReplyObject(cmd("SET %s %b", k_last, forged, len));
    device e = dev_open();
    km_redis_catalog_sync(e.redis, false, &err);
    assert_int_equal(first_token(&e, &res), cold_tok);
    assert_int_equal(res.prefill.hit_tier, KM_TIER_REDIS);
    assert_int_equal(res.prefill.hit_index, nb - 1);
    assert_false(res.prefill.hit_trusted);
    assert_int_equal(res.prefill.next_hint, -1);
    assert_int_equal(res.prefill.n_hint_mismatches, 1);
    assert_int_equal(km_redis_get_stats(e.redis).deletes, 1);
    assert_int_equal(redis_exists(k_last), 0);
    /* ... and from every tier it came from: not kept locally either */
    km_key keys[8];
    km_keys_for_boundaries(km_ctx_root_key(ctx, NULL), toks, bounds, nb, keys);
    assert_false(km_store_contains(e.local, keys[nb - 1]));

    free(owned);
    free(btoks);
    free(rnd);
    free(forged);
    free(good);
    dev_close(&a);
    dev_close(&b);
    dev_close(&c);
    dev_close(&d);
    dev_close(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_states_flow_between_devices),
        cmocka_unit_test(test_planner_fetches_only_when_faster),
        cmocka_unit_test(test_bad_blobs_in_redis),
        cmocka_unit_test(test_forged_states_in_redis),
        cmocka_unit_test(test_oversized_value_in_redis),
        cmocka_unit_test(test_redis_dies_and_returns),
    };
    return cmocka_run_group_tests_name("pcache_redis", tests, group_setup, group_teardown);
}
