/* test_pcache.c -- the prompt cache over a real store: longest-prefix reuse,
 * bad blobs rejected and removed without changing the answer, persistence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blob.h"
#include "engine.h"
#include "pcache.h"
#include "testutil.h"

typedef struct fixture {
    km_model *m;
    km_ctx *c;
    int32_t *toks;
    int n;
    int bounds[8];
    int nb;
    float *cold_logits;
    int nv;
} fixture;

static void setup_fixture(fixture *f, const char *model) {
    km_error err;
    f->m = km_model_load(model, &err);
    if (!f->m) fail_msg("%s", err.msg);
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = 512;
    f->c = km_ctx_init(f->m, &cp, &err);
    assert_non_null(f->c);
    const char *segs[3] = {"The following are multiple choice questions (with answers) about cats.\n\n",
                           "Which animal says meow?\nA. dog\nB. cat\nC. cow\nD. fish\nAnswer: B\n\n",
                           "Which animal purrs?\nA. cat\nB. dog\nC. bird\nD. ant\nAnswer:"};
    int *ends;
    assert_int_equal(km_tokenize_segments(f->m, segs, 3, false, &f->toks, &f->n, &ends, &err), 0);
    f->nb = km_boundaries(ends, 2, f->n, 0, f->bounds, NULL);
    assert_int_equal(f->nb, 3);
    free(ends);
    f->nv = km_model_n_vocab(f->m);
    /* cold reference, no store */
    km_prefill_report rep;
    assert_int_equal(km_pcache_prefill(f->c, NULL, 0, f->toks, f->n, f->bounds, f->nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.hit_index, -1);
    f->cold_logits = malloc((size_t)f->nv * sizeof(float));
    memcpy(f->cold_logits, km_logits(f->c), (size_t)f->nv * sizeof(float));
}

static void teardown_fixture(fixture *f) {
    free(f->cold_logits);
    free(f->toks);
    km_ctx_free(f->c);
    km_model_free(f->m);
}

static void assert_logits_cold(fixture *f) {
    assert_memory_equal(km_logits(f->c), f->cold_logits, (size_t)f->nv * sizeof(float));
}

static void test_longest_prefix_and_partial(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, tu_model("tiny-f16.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    km_store *st = km_store_open(&sp, &err);
    km_prefill_report rep;
    assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.hit_index, -1);
    assert_int_equal(rep.n_saved, 3);
    assert_logits_cold(&f);
    /* same prompt: full hit */
    assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.hit_index, 2);
    assert_int_equal(rep.n_prefilled, 1);
    assert_int_equal(rep.n_saved, 0);
    assert_true(rep.bytes_loaded > 0);
    assert_logits_cold(&f);
    /* another question after the same example: hit at boundary 1 */
    const char *segs[3] = {"The following are multiple choice questions (with answers) about cats.\n\n",
                           "Which animal says meow?\nA. dog\nB. cat\nC. cow\nD. fish\nAnswer: B\n\n",
                           "What do cats chase?\nA. mice\nB. cars\nC. rain\nD. stars\nAnswer:"};
    int32_t *t2;
    int n2, *ends, b2[8];
    assert_int_equal(km_tokenize_segments(f.m, segs, 3, false, &t2, &n2, &ends, &err), 0);
    int nb2 = km_boundaries(ends, 2, n2, 0, b2, NULL);
    assert_int_equal(km_pcache_prefill(f.c, st, 0, t2, n2, b2, nb2, NULL, &rep, &err), 0);
    assert_int_equal(rep.hit_index, 1);
    assert_int_equal(rep.n_reused, f.bounds[1]);
    assert_int_equal(rep.n_prefilled, n2 - f.bounds[1]);
    assert_int_equal(rep.n_saved, 1); /* only its own end boundary is new */
    free(t2);
    free(ends);
    km_store_close(st);
    teardown_fixture(&f);
}

/* Put a tampered copy of the longest blob back under its key. */
static void tamper(km_store *st, km_key key, void (*fn)(uint8_t *, size_t, void *), void *ud) {
    uint8_t *blob;
    size_t len;
    km_error err;
    assert_int_equal(km_store_get(st, key, &blob, &len, &err), 0);
    fn(blob, len, ud);
    assert_int_equal(km_store_put(st, key, blob, len, &err), 0);
    free(blob);
}

static void flip_payload_bit(uint8_t *b, size_t len, void *ud) {
    (void)ud;
    b[len - 10] ^= 4; /* checksum catches it */
}

static void forge_payload(uint8_t *b, size_t len, void *ud) {
    (void)ud;
    /* change the payload's first K type, then fix the checksum as an attacker
     * would: only the state layout check can catch this */
    km_blob_info info;
    assert_int_equal(km_blob_parse(b, len, len, &info, NULL), 0);
    uint8_t *p = b + (info.payload - b);
    uint32_t cells = km_get_u32(p + 12);
    size_t off = 16 + (size_t)cells * 12 + 8;
    km_put_u32(p + off, 8);
    km_blob_seal(b, len);
}

static void swap_token(uint8_t *b, size_t len, void *ud) {
    (void)ud;
    km_put_u32(b + KM_BLOB_HEADER_SIZE + 4 * 3, 12345); /* a "collision": other tokens */
    km_blob_seal(b, len);
}

static void truncate_blob(uint8_t *b, size_t len, void *ud) {
    (void)b;
    (void)len;
    (void)ud;
}

static void check_rejection(void (*fn)(uint8_t *, size_t, void *), bool truncate) {
    fixture f;
    setup_fixture(&f, tu_model("tiny-f16.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    km_store *st = km_store_open(&sp, &err);
    km_prefill_report rep;
    assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
    km_key keys[8];
    km_keys_for_boundaries(km_ctx_root_key(f.c, NULL), f.toks, f.bounds, f.nb, keys);
    if (truncate) {
        uint8_t *blob;
        size_t len;
        assert_int_equal(km_store_get(st, keys[2], &blob, &len, &err), 0);
        assert_int_equal(km_store_put(st, keys[2], blob, len / 2, &err), 0);
        free(blob);
    } else {
        tamper(st, keys[2], fn, NULL);
    }
    assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.n_rejected, 1);
    assert_int_equal(rep.hit_index, 1); /* fell back to the next shorter prefix */
    assert_logits_cold(&f);             /* and the answer is unchanged */
    /* the bad blob was removed and replaced by a fresh snapshot */
    assert_int_equal(rep.n_saved, 1);
    assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.n_rejected, 0);
    assert_int_equal(rep.hit_index, 2);
    assert_logits_cold(&f);
    km_store_close(st);
    teardown_fixture(&f);
}

static void test_bit_flip_rejected(void **s) { (void)s; check_rejection(flip_payload_bit, false); }
static void test_forged_payload_rejected(void **s) { (void)s; check_rejection(forge_payload, false); }
static void test_wrong_tokens_rejected(void **s) { (void)s; check_rejection(swap_token, false); }
static void test_truncated_rejected(void **s) { (void)s; check_rejection(truncate_blob, true); }

static void test_wrong_model_blob_rejected(void **state) {
    (void)state;
    /* A blob of another model stored under this model's key (as a buggy or
     * malicious peer might): the fingerprint check rejects it. */
    fixture a, b;
    setup_fixture(&a, tu_model("tiny-f16.gguf"));
    setup_fixture(&b, tu_model("tiny-f16-seed8.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    km_store *st = km_store_open(&sp, &err);
    km_prefill_report rep;
    assert_int_equal(km_pcache_prefill(b.c, st, 0, b.toks, b.n, b.bounds, b.nb, NULL, &rep, &err), 0);
    km_key kb[8], ka[8];
    km_keys_for_boundaries(km_ctx_root_key(b.c, NULL), b.toks, b.bounds, b.nb, kb);
    km_keys_for_boundaries(km_ctx_root_key(a.c, NULL), a.toks, a.bounds, a.nb, ka);
    assert_false(km_key_equal(ka[2], kb[2])); /* keys differ by model */
    uint8_t *blob;
    size_t len;
    assert_int_equal(km_store_get(st, kb[2], &blob, &len, &err), 0);
    assert_int_equal(km_store_put(st, ka[2], blob, len, &err), 0);
    free(blob);
    assert_int_equal(km_pcache_prefill(a.c, st, 0, a.toks, a.n, a.bounds, a.nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.n_rejected, 1);
    assert_int_equal(rep.hit_index, -1);
    assert_logits_cold(&a);
    km_store_close(st);
    teardown_fixture(&a);
    teardown_fixture(&b);
}

static void test_disk_persistence_across_restart(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    km_error err;
    km_store_params sp = km_store_default_params();
    sp.disk_dir = dir;
    km_prefill_report rep;
    {
        fixture f;
        setup_fixture(&f, tu_model("tiny-f16.gguf"));
        km_store *st = km_store_open(&sp, &err);
        assert_non_null(st);
        assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
        assert_int_equal(rep.n_saved, 3);
        km_store_close(st);
        teardown_fixture(&f);
    }
    {
        /* a new model load, context and store: as after a process restart */
        fixture f;
        setup_fixture(&f, tu_model("tiny-f16.gguf"));
        km_store *st = km_store_open(&sp, &err);
        km_store_stats ss = km_store_get_stats(st);
        assert_int_equal(ss.disk_entries, 3);
        assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
        assert_int_equal(rep.hit_index, 2);
        assert_logits_cold(&f);
        km_store_close(st);
        teardown_fixture(&f);
    }
    tu_rmtree(dir);
    free(dir);
}

typedef struct collected {
    int32_t *toks;
    int n;
} collected;

static int collect_token(void *ud, int32_t tok) {
    collected *c = ud;
    c->toks[c->n++] = tok;
    return 0;
}

/* Generate n tokens greedily for segs through the cache; out gets them. */
static int run_greedy(fixture *f, km_store *st, const char *const *segs, int n_segs, int n, int32_t *out,
                      km_result *res) {
    collected c = {out, 0};
    km_request req = {.segs = segs, .n_segs = n_segs, .segment_bounds = true, .sampling = km_sampling_default(),
                      .n_predict = n, .on_token = collect_token, .ud = &c};
    km_error err;
    if (km_pcache_run(f->c, st, 0, &req, res, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(c.n, res->n_generated);
    return c.n;
}

static const char *hint_segs[3] = {"The following are multiple choice questions (with answers) about cats.\n\n",
                                   "Which animal says meow?\nA. dog\nB. cat\nC. cow\nD. fish\nAnswer: B\n\n",
                                   "Which animal purrs?\nA. cat\nB. dog\nC. bird\nD. ant\nAnswer:"};

static void test_full_hit_first_token_from_cache(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, tu_model("tiny-f16.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    km_store *st = km_store_open(&sp, &err);
    int32_t cold[12], hit[12];
    km_result res;
    /* cold, no cache: the reference sequence */
    int n_cold = run_greedy(&f, NULL, hint_segs, 3, 12, cold, &res);
    assert_int_equal(n_cold, 12);
    assert_int_equal(res.prefill.next_hint, -1);
    /* miss: stores the end state with the greedy next token */
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 12, hit, &res), 12);
    assert_int_equal(res.prefill.hit_index, -1);
    assert_memory_equal(hit, cold, sizeof cold);
    /* full hit, one token: answered from the cache, nothing computed */
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 1, hit, &res), 1);
    assert_int_equal(res.prefill.hit_index, 2);
    assert_int_equal(res.prefill.next_hint, cold[0]);
    assert_int_equal(res.prefill.n_prefilled, 0);
    assert_int_equal(hit[0], cold[0]);
    /* full hit, twelve tokens: the continuation is the cold one, token for token */
    memset(hit, 0, sizeof hit);
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 12, hit, &res), 12);
    assert_int_equal(res.prefill.next_hint, cold[0]);
    assert_memory_equal(hit, cold, sizeof cold);
    /* and the logits after the last prompt token are still the cold ones */
    km_prefill_report rep;
    assert_int_equal(km_pcache_prefill(f.c, st, 0, f.toks, f.n, f.bounds, f.nb, NULL, &rep, &err), 0);
    assert_int_equal(rep.next_hint, -1); /* prefill callers without next_hint get logits */
    assert_int_equal(rep.n_prefilled, 1);
    assert_logits_cold(&f);
    km_store_close(st);
    teardown_fixture(&f);
}

static void test_hint_not_used_for_other_last_token_or_sampling(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, tu_model("tiny-f16.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    km_store *st = km_store_open(&sp, &err);
    int32_t a[6], b[6], b_cold[6];
    km_result res;
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 6, a, &res), 6);
    /* same prompt but another last token: the end state (all tokens but the
     * last) is shared, its hint is not (it names the token it follows) */
    const char *other[3] = {hint_segs[0], hint_segs[1], "Which animal purrs?\nA. cat\nB. dog\nC. bird\nD. ant\nAnswer?"};
    int32_t *ta, *tb;
    int na, nb2, *ea, *eb;
    assert_int_equal(km_tokenize_segments(f.m, hint_segs, 3, false, &ta, &na, &ea, &err), 0);
    assert_int_equal(km_tokenize_segments(f.m, other, 3, false, &tb, &nb2, &eb, &err), 0);
    assert_int_equal(na, nb2);
    assert_memory_equal(ta, tb, (size_t)(na - 1) * sizeof *ta);
    assert_int_not_equal(ta[na - 1], tb[na - 1]);
    free(ta), free(tb), free(ea), free(eb);
    assert_int_equal(run_greedy(&f, NULL, other, 3, 6, b_cold, &res), 6);
    assert_int_equal(run_greedy(&f, st, other, 3, 6, b, &res), 6);
    assert_int_equal(res.prefill.hit_index, 2); /* the shared state is reused */
    assert_int_equal(res.prefill.next_hint, -1); /* but not the hint */
    assert_int_equal(res.prefill.n_prefilled, 1);
    assert_memory_equal(b, b_cold, sizeof b);
    /* a sampled (temperature) request never takes the greedy hint */
    km_request req = {.segs = hint_segs, .n_segs = 3, .segment_bounds = true, .sampling = km_sampling_default(),
                      .n_predict = 1};
    req.sampling.temp = 0.8f;
    req.sampling.seed = 3;
    assert_int_equal(km_pcache_run(f.c, st, 0, &req, &res, &err), 0);
    assert_int_equal(res.prefill.hit_index, 2);
    assert_int_equal(res.prefill.next_hint, -1);
    assert_int_equal(res.prefill.n_prefilled, 1);
    km_store_close(st);
    teardown_fixture(&f);
}

/* A token other than t that is not end-of-generation. */
static int32_t other_token(fixture *f, int32_t t) {
    int32_t w = t == 100 ? 101 : 100;
    while (km_token_is_eog(f->m, w)) w++;
    return w;
}

/* Rewrite the next-token hint of a sealed blob and recompute its checksum, as
 * anyone with write access can (no MAC involved). */
static void patch_hint(uint8_t *b, size_t len, void *ud) {
    km_blob_info info;
    assert_int_equal(km_blob_parse(b, len, SIZE_MAX, &info, NULL), 0);
    assert_true(info.has_next);
    km_put_u32(b + 68, (uint32_t)*(int32_t *)ud);
    km_blob_seal(b, len);
}

static void patch_file_hint(const char *dir, km_key key, int32_t hint) {
    char hex[2 * KM_KEY_LEN + 1], path[4200];
    km_key_hex(key, hex);
    snprintf(path, sizeof path, "%s/%s.kvb", dir, hex);
    uint8_t *b;
    size_t len;
    km_error err;
    assert_int_equal(km_read_file(path, (size_t)1 << 30, &b, &len, &err), 0);
    patch_hint(b, len, &hint);
    assert_int_equal(km_write_file_atomic(path, b, len, &err), 0);
    free(b);
}

/* The local case: a state with a rewritten hint, resealed, left in
 * the cache dir (by "an earlier process"). The new process does not answer
 * with it: it decodes the last token, emits the computed one, and the
 * disagreement removes the blob (disk file included) and is counted. A
 * correct hint from disk is not used either (one decode), and stays. */
static void test_hint_from_earlier_process_is_checked(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    fixture f;
    setup_fixture(&f, tu_model("tiny-f16.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    sp.disk_dir = dir;
    km_key keys[8];
    km_keys_for_boundaries(km_ctx_root_key(f.c, NULL), f.toks, f.bounds, f.nb, keys);
    int32_t cold[4], out[4];
    km_result res;
    assert_int_equal(run_greedy(&f, NULL, hint_segs, 3, 4, cold, &res), 4);
    km_store *st = km_store_open(&sp, &err);
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 1, out, &res), 1); /* miss: stores 3 states */
    km_store_close(st);
    int32_t wrong = other_token(&f, cold[0]);
    patch_file_hint(dir, keys[2], wrong);

    st = km_store_open(&sp, &err); /* a new process */
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 1, out, &res), 1);
    assert_int_equal(out[0], cold[0]);
    assert_int_equal(res.prefill.hit_index, 2);
    assert_int_equal(res.prefill.hit_tier, KM_TIER_LOCAL);
    assert_false(res.prefill.hit_trusted);
    assert_int_equal(res.prefill.next_hint, -1);
    assert_int_equal(res.prefill.n_prefilled, 1);
    assert_int_equal(res.prefill.n_hint_mismatches, 1);
    assert_false(km_store_contains(st, keys[2]));
    char hex[2 * KM_KEY_LEN + 1], path[4200];
    km_key_hex(keys[2], hex);
    snprintf(path, sizeof path, "%s/%s.kvb", dir, hex);
    assert_int_not_equal(access(path, F_OK), 0);
    /* every later request: right too (recomputed from boundary 1 and stored
     * afresh, this process's own: its hint answers at once) */
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 1, out, &res), 1);
    assert_int_equal(out[0], cold[0]);
    assert_int_equal(res.prefill.hit_index, 1);
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 4, out, &res), 4);
    assert_memory_equal(out, cold, sizeof cold);
    assert_int_equal(res.prefill.next_hint, cold[0]);
    assert_true(res.prefill.hit_trusted);
    km_store_close(st);

    /* restarted again: the (correct) hint on disk is checked, not used */
    st = km_store_open(&sp, &err);
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 4, out, &res), 4);
    assert_memory_equal(out, cold, sizeof cold);
    assert_int_equal(res.prefill.hit_index, 2);
    assert_int_equal(res.prefill.next_hint, -1);
    assert_int_equal(res.prefill.n_hint_mismatches, 0);
    assert_true(km_store_contains(st, keys[2]));
    km_store_close(st);
    teardown_fixture(&f);
    tu_rmtree(dir);
    free(dir);
}

/* Hints within one process: bytes put as untrusted (a state fetched from a
 * tier trusted as is) are checked like those on disk; a wrong hint in bytes
 * the process put as its own is believed for the first token -- the limit of
 * "trusted" -- but the computation after it catches it and removes the
 * state. max_tokens 0 never emits the hint. */
static void test_hint_trust_in_process(void **state) {
    (void)state;
    fixture f;
    setup_fixture(&f, tu_model("tiny-f16.gguf"));
    km_error err;
    km_store_params sp = km_store_default_params();
    km_store *st = km_store_open(&sp, &err);
    km_key keys[8];
    km_keys_for_boundaries(km_ctx_root_key(f.c, NULL), f.toks, f.bounds, f.nb, keys);
    int32_t cold[6], out[6];
    km_result res;
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 6, cold, &res), 6);
    int32_t wrong = other_token(&f, cold[0]);
    uint8_t *blob;
    size_t len;
    assert_int_equal(km_store_get(st, keys[2], &blob, &len, &err), 0);
    patch_hint(blob, len, &wrong);
    assert_int_equal(km_store_put_untrusted(st, keys[2], blob, len, &err), 0);
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 1, out, &res), 1);
    assert_int_equal(out[0], cold[0]);
    assert_int_equal(res.prefill.n_hint_mismatches, 1);
    assert_false(km_store_contains(st, keys[2]));
    /* the same bytes as the process's own: the hint is the first token... */
    assert_int_equal(km_store_put(st, keys[2], blob, len, &err), 0);
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 6, out, &res), 6);
    assert_int_equal(out[0], wrong);
    assert_int_equal(res.prefill.next_hint, wrong);
    /* ... until the next step computes another one: an error, state removed */
    assert_int_equal(res.prefill.n_hint_mismatches, 1);
    assert_false(km_store_contains(st, keys[2]));
    free(blob);
    /* max_tokens 0: nothing generated, hit or miss, and no hint */
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 1, out, &res), 1); /* stores the end again */
    assert_int_equal(run_greedy(&f, st, hint_segs, 3, 0, out, &res), 0);
    assert_int_equal(res.prefill.hit_index, 2);
    assert_int_equal(res.prefill.next_hint, -1);
    assert_int_equal(res.prefill.n_prefilled, 1);
    km_store_close(st);
    teardown_fixture(&f);
}

/* Greedy tokens of a request on context c (segments as boundaries or not). */
static km_result run_on(km_ctx *c, km_store *st, const char *const *segs, int n_segs, bool bounds, int32_t *out, int n) {
    collected col = {out, 0};
    km_request req = {.segs = segs, .n_segs = n_segs, .segment_bounds = bounds, .sampling = km_sampling_default(),
                      .n_predict = n, .on_token = collect_token, .ud = &col};
    km_result res;
    km_error err;
    if (km_pcache_run(c, st, 0, &req, &res, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(col.n, n);
    return res;
}

/* A request cut into 1024 segments used to store 1024 states (111 MB on this
 * model, growing with the square of the prompt length); now at most
 * KM_MAX_BOUNDS, with the same answer as the plain prompt. A longer prompt
 * with the same first segments still reuses them: the merging is prefix-stable. */
static void test_many_segments_capped(void **state) {
    (void)state;
    km_error err;
    km_model *m = km_model_load(tu_model("tiny-f16.gguf"), &err);
    assert_non_null(m);
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = 2048;
    km_ctx *c = km_ctx_init(m, &cp, &err);
    assert_non_null(c);
    enum { NSEG = 1100 };
    static char text[NSEG][16];
    const char *segs[NSEG];
    for (int i = 0; i < NSEG; i++) {
        snprintf(text[i], sizeof text[i], "%c", "abcdefghijklmnopqrstuvwxyz"[i % 26]);
        segs[i] = text[i];
    }
    char *dir = tu_tmpdir();
    km_store_params sp = km_store_default_params();
    sp.disk_dir = dir;
    sp.ram_budget = 0; /* every state is a file: what is stored is what is on disk */
    km_store *st = km_store_open(&sp, &err);
    assert_non_null(st);

    int32_t plain[8], cut[8], again[8];
    run_on(c, NULL, segs, 1024, false, plain, 8); /* no cache, no segments */
    km_result r = run_on(c, st, segs, 1024, true, cut, 8);
    km_store_flush(st);
    km_store_stats ss = km_store_get_stats(st);
    print_message("    1024 segments, %d tokens: %d states stored, %.1f MB on disk, %d segment ends merged\n",
                  r.prefill.n_prompt, r.prefill.n_saved, ss.disk_bytes / 1e6, r.prefill.n_bounds_merged);
    assert_memory_equal(cut, plain, sizeof plain);
    assert_true(r.prefill.n_prompt > 2048 / 2);
    assert_true(r.prefill.n_bounds <= KM_MAX_BOUNDS);
    assert_int_equal(r.prefill.n_saved, r.prefill.n_bounds);
    /* segment ends at 2..n (BOS, then one token each); those before the last token are candidates */
    assert_int_equal(r.prefill.n_prompt, 1025);
    assert_int_equal(r.prefill.n_bounds_merged, 1022 - (r.prefill.n_bounds - 1));
    assert_int_equal(ss.disk_entries, r.prefill.n_bounds);

    /* the same request: a full hit on the same keys */
    r = run_on(c, st, segs, 1024, true, again, 8);
    assert_int_equal(r.prefill.hit_index, r.prefill.n_bounds - 1);
    assert_memory_equal(again, plain, sizeof plain);
    /* longer, same first 1024 segments: reuses the last kept boundary of those */
    int32_t longer[8], longer_plain[8];
    run_on(c, NULL, segs, NSEG, false, longer_plain, 8);
    r = run_on(c, st, segs, NSEG, true, longer, 8);
    assert_memory_equal(longer, longer_plain, sizeof longer);
    assert_true(r.prefill.hit_index >= 0);
    assert_true(r.prefill.n_reused > r.prefill.n_prompt * 3 / 4);
    km_store_close(st);
    tu_rmtree(dir);
    free(dir);
    km_ctx_free(c);
    km_model_free(m);
}

int main(void) {
    km_log_level = -1; /* the rejections warn by design */
    km_engine_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_longest_prefix_and_partial),
        cmocka_unit_test(test_bit_flip_rejected),
        cmocka_unit_test(test_forged_payload_rejected),
        cmocka_unit_test(test_wrong_tokens_rejected),
        cmocka_unit_test(test_truncated_rejected),
        cmocka_unit_test(test_wrong_model_blob_rejected),
        cmocka_unit_test(test_disk_persistence_across_restart),
        cmocka_unit_test(test_full_hit_first_token_from_cache),
        cmocka_unit_test(test_hint_not_used_for_other_last_token_or_sampling),
        cmocka_unit_test(test_hint_from_earlier_process_is_checked),
        cmocka_unit_test(test_hint_trust_in_process),
        cmocka_unit_test(test_many_segments_capped),
    };
    return cmocka_run_group_tests_name("pcache", tests, NULL, NULL);
}
