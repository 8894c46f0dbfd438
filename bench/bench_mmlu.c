/* bench_mmlu.c -- `kvmesh bench mmlu`: the paper's MMLU experiment, side by side.
 *
 * Devices share prompt states through one Redis server (started here, on a
 * free loopback port, no persistence, stopped at the end). Two profiles, as
 * in the paper:
 *
 *   low-end   gemma3-270m, k=1 few-shot example, on an emulated slow device
 *             (time dilation calibrated so that prefill runs at the Pi Zero
 *             2W's 5.2 tokens/s; the rate reached is measured and reported)
 *   high-end  gemma3-1b, k=5, full speed of one core
 *
 * Both talk to Redis through the same emulated link (default 20 Mbit/s,
 * 5 ms round trip: 2.4 GHz Wi-Fi 4). For every prompt, every case runs on
 * the same device, one after the other, so machine noise hits them alike:
 *
 *   nocache   no cache at all: the baseline
 *   miss      cache on, nothing stored for this prompt (fresh key salt): the
 *             lookup finds nothing (catalog negative, or a false positive);
 *             the prompt's states are snapshotted and uploaded write-behind
 *   instr     Redis holds the state of the instruction
 *   first     ... of instruction + first example
 *   all       ... of instruction + all examples (k > 1)
 *   full      ... of the whole prompt
 *
 * The hit cases get their states from the miss run: the bench copies them
 * to Redis under a per-case key salt through its own, unshaped connection
 * (setup, not measured), then the device syncs its catalog. Measured runs
 * are the device's: catalog check, GET through the link, validation,
 * restore, prefill of the rest, first token.
 *
 * Prompts run on several emulated devices in parallel (--workers): a
 * dilated device computes ~2 % of the time and its dilation counts its own
 * thread's CPU time, so devices sharing a core do not slow each other. The
 * high-end profile runs at full speed and defaults to one worker.
 *
 * Reports mean/p50/p95 TTFT and TTLT per case, bytes fetched, Redis and
 * restore time, catalog false positives, and the physical bound of each hit
 * (RTT + bytes/bandwidth + restore + prefill of the uncached tokens + one
 * decode step), with the paper's figures beside ours; then a catalog
 * experiment (a miss-only stream with and without the catalog) and the
 * state size per token for f16 and q8_0 KV. Table on stdout, progress on
 * stderr, bench-mmlu.json / .csv / .png in --out. */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"
#include "commands.h"
#include "engine.h"
#include "link.h"
#include "mmlu.h"
#include "pcache.h"
#include "planner.h"
#include "redis_tier.h"
#include "redisd.h"
#include "store.h"
#include "util.h"

/* The paper (Matsutani et al., arXiv 2602.22812): Pi Zero 2W read a 65.27-token
 * prompt in 12.58 s; full hit TTFT -93.12 %, TTLT -50.07 % (low-end); the
 * fast device was 7 % slower with the cache. */
#define PAPER_DEVICE_TPS (65.27 / 12.58)
#define PAPER_LOW_TTFT_PCT (-93.12)
#define PAPER_LOW_TTLT_PCT (-50.07)
#define PAPER_HIGH_PCT (7.0)
#define PAPER_BYTES_PER_TOKEN (2.25e6 / 65.0)

enum { C_NOCACHE, C_MISS, C_INSTR, C_FIRST, C_ALL, C_FULL, N_CASES };
static const char *case_names[N_CASES] = {"nocache", "miss", "instr", "first", "all", "full"};
static const char *case_titles[N_CASES] = {"no cache", "miss", "instruction hit", "+first example", "+all examples",
                                           "full hit"};

typedef struct sample {
    bool ok;
    double ttft, ttlt, lookup_ms, remote_ms, restore_ms, prefill_ms, bound_ms;
    double bytes_remote, state_bytes;
    int n_prompt, reused, prefilled, gets, false_pos, skips, hint, hit_index, want_index;
} sample;

typedef struct bench_cfg {
    const char *mmlu, *out, *redis_exe, *link_spec;
    km_link_params link;
    km_kv_type kv;
    int n_predict, catalog_prompts;
    bool skip_catalog_exp, skip_sizes;
} bench_cfg;

typedef struct profile {
    const char *name, *model_path;
    int k, n_prompts, workers;
    int n_ctx;         /* sized to the longest prompt */
    double slowdown;   /* 0: calibrate to target_tps */
    double target_tps; /* emulated device prefill rate (0: full speed) */
    bool enabled;
    /* results */
    sample *s[N_CASES];
    double full_speed_tps, device_tps, decode_step_ms;
    double elapsed_s;
    char model_desc[256];
} profile;

typedef struct worker {
    profile *pf;
    const bench_cfg *cfg;
    km_model *model;
    const km_mmlu *mm;
    const char *redis_url;
    int id;
    atomic_int *done;
    int failed;
    double tps_sum, tps_n, step_ms;
} worker;

static pthread_mutex_t progress_lock = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------ one prompt */

typedef struct prompt {
    char *segs[8];
    int n_segs;
    int32_t *tokens;
    int n_tokens, *ends, *bounds, n_bounds;
} prompt;

static void prompt_free(prompt *p) {
    for (int i = 0; i < p->n_segs; i++) free(p->segs[i]);
    free(p->tokens);
    free(p->ends);
    free(p->bounds);
    memset(p, 0, sizeof *p);
}

/* Prompt j: subjects in turn, then the next question of each. */
static int prompt_make(const km_mmlu *mm, const km_model *m, int k, int j, prompt *p, km_error *err) {
    memset(p, 0, sizeof *p);
    const km_mmlu_subject *s = &mm->subjects[j % mm->n_subjects];
    const km_mmlu_item *q = &s->test[(j / mm->n_subjects) % s->n_test];
    p->n_segs = km_mmlu_prompt_segments(s, k, q, p->segs);
    if (p->n_segs < 0) return km_error_set(err, "out of memory");
    if (km_tokenize_segments(m, (const char *const *)p->segs, p->n_segs, false, &p->tokens, &p->n_tokens, &p->ends, err) != 0)
        return -1;
    p->bounds = malloc((size_t)p->n_tokens * sizeof *p->bounds);
    p->n_bounds = km_boundaries(p->ends, p->n_segs, p->n_tokens, 0, p->bounds, NULL);
    return 0;
}

static int run_one(km_ctx *c, km_store *store, const prompt *p, const km_pcache_opts *o, int n_predict, km_result *res,
                   km_error *err) {
    km_request req = {.segs = (const char *const *)p->segs, .n_segs = p->n_segs, .segment_bounds = true,
                      .sampling = km_sampling_default(), .n_predict = n_predict, .opts = o};
    return km_pcache_run(c, store, 0, &req, res, err);
}

static void record(sample *s, const km_result *r, int want_index) {
    const km_prefill_report *p = &r->prefill;
    s->ok = true;
    s->ttft = r->ttft_ms;
    s->ttlt = r->ttlt_ms;
    s->lookup_ms = p->t_lookup_ms;
    s->remote_ms = p->t_remote_ms;
    s->restore_ms = p->t_restore_ms;
    s->prefill_ms = p->t_prefill_ms;
    s->bytes_remote = (double)p->bytes_remote;
    s->n_prompt = p->n_prompt;
    s->reused = p->n_reused;
    s->prefilled = p->n_prefilled;
    s->gets = p->n_remote_gets;
    s->false_pos = p->n_false_positives;
    s->skips = p->n_planned_skips;
    s->hint = p->next_hint >= 0;
    s->hit_index = p->hit_index;
    s->want_index = want_index;
}

/* Keys of a prompt's boundaries under a salt. */
static void salted_keys(km_ctx *c, const prompt *p, const char *salt, km_key *keys) {
    km_keys_for_boundaries(km_ctx_root_key(c, salt), p->tokens, p->bounds, p->n_bounds, keys);
}

/* All cases of prompt j on one device. */
static int run_prompt(worker *w, km_ctx *c, km_redis *dev, km_redis *setup, km_planner *pl, int j, km_error *err) {
    profile *pf = w->pf;
    prompt p;
    if (prompt_make(w->mm, w->model, pf->k, j, &p, err) != 0) return -1;
    int nb = p.n_bounds;
    int want[N_CASES] = {-1, -1, 0, 1, pf->k, nb - 1};
    km_key *src = malloc((size_t)nb * sizeof *src), *dst = malloc((size_t)nb * sizeof *dst);
    km_store_params sp = km_store_default_params();
    sp.ram_budget = (size_t)4 << 30;
    km_store *capture = km_store_open(&sp, err);
    int rc = -1;
    km_result res;
    char salt[64];
    static atomic_int run_seq;
    int uniq = atomic_fetch_add(&run_seq, 1);
    if (!src || !dst || !capture) goto out;

    /* no cache */
    km_pcache_opts o = km_pcache_default_opts();
    o.planner = pl;
    if (run_one(c, NULL, &p, &o, w->cfg->n_predict, &res, err) != 0) goto out;
    if (res.prefill.t_prefill_ms > 0) {
        w->tps_sum += res.prefill.n_prefilled / (res.prefill.t_prefill_ms / 1e3);
        w->tps_n++;
    }
    record(&pf->s[C_NOCACHE][j], &res, -1);

    /* miss: a salt nobody used; snapshots are captured locally for the hit
     * cases and uploaded write-behind like any miss's */
    snprintf(salt, sizeof salt, "miss-%d-%d", j, uniq);
    o.salt = salt;
    o.redis = dev;
    if (run_one(c, capture, &p, &o, w->cfg->n_predict, &res, err) != 0) goto out;
    record(&pf->s[C_MISS][j], &res, -1);
    salted_keys(c, &p, salt, src);

    /* setup of the hit cases: copy the states each case may find */
    for (int cc = C_INSTR; cc < N_CASES; cc++) {
        if (cc == C_ALL && pf->k < 2) continue;
        char cs[64];
        snprintf(cs, sizeof cs, "%s-%d-%d", case_names[cc], j, uniq);
        salted_keys(c, &p, cs, dst);
        for (int b = 0; b <= want[cc]; b++) {
            uint8_t *blob;
            size_t len;
            if (km_store_get(capture, src[b], &blob, &len, err) != 0) goto out;
            int prc = km_redis_put_async(setup, dst[b], blob, len, err);
            free(blob);
            if (prc != 0) goto out;
        }
    }
    if (km_redis_flush(setup, 120000) != 0) {
        km_error_set(err, "could not copy the states to Redis (server down?)");
        goto out;
    }
    if (km_redis_catalog_sync(dev, false, err) != 0) goto out;

    for (int cc = C_INSTR; cc < N_CASES; cc++) {
        if (cc == C_ALL && pf->k < 2) continue;
        char cs[64];
        snprintf(cs, sizeof cs, "%s-%d-%d", case_names[cc], j, uniq);
        o.salt = cs;
        o.save = false; /* uploads are the miss case's; here only the fetch is measured */
        if (run_one(c, NULL, &p, &o, w->cfg->n_predict, &res, err) != 0) goto out;
        record(&pf->s[cc][j], &res, want[cc]);
        if (res.prefill.hit_index != want[cc] && km_log_level >= 1)
            km_warn("prompt %d, case %s: restored boundary %d, expected %d (%d planned skips, %d false positives)", j,
                    case_names[cc], res.prefill.hit_index, want[cc], res.prefill.n_planned_skips,
                    res.prefill.n_false_positives);
        /* the copies are no longer needed: keep the server's memory flat */
        salted_keys(c, &p, cs, dst);
        for (int b = 0; b <= want[cc]; b++) km_redis_del(setup, dst[b], NULL);
    }
    rc = 0;
out:
    if (capture) km_store_close(capture);
    free(src);
    free(dst);
    prompt_free(&p);
    return rc;
}

/* Decode-step time of this device: a few generated tokens after a prompt. */
static double measure_decode_step(worker *w, km_ctx *c, km_planner *pl, km_error *err) {
    prompt p;
    if (prompt_make(w->mm, w->model, w->pf->k, w->pf->n_prompts + w->id, &p, err) != 0) return -1;
    km_pcache_opts o = km_pcache_default_opts();
    o.planner = pl; /* teaches it this device's prefill rate */
    km_result r;
    double step = -1;
    if (run_one(c, NULL, &p, &o, 5, &r, err) == 0 && r.n_generated > 1) step = (r.ttlt_ms - r.ttft_ms) / (r.n_generated - 1);
    prompt_free(&p);
    return step;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    profile *pf = w->pf;
    const bench_cfg *cfg = w->cfg;
    km_error err;
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = pf->n_ctx;
    cp.kv_type = cfg->kv;
    cp.n_threads = 1;
    cp.slowdown = pf->slowdown;
    km_ctx *c = km_ctx_init(w->model, &cp, &err);
    km_link *link = km_link_new(&cfg->link);
    km_redis_params rp = km_redis_default_params();
    rp.url = w->redis_url;
    rp.link = link;
    rp.ttl_s = 300; /* the miss uploads are never looked up again */
    km_redis *dev = c ? km_redis_open(&rp, km_model_fingerprint(w->model), &err) : NULL;
    km_redis_params sp = km_redis_default_params();
    sp.url = w->redis_url;
    sp.sync_period_ms = 0;
    sp.ttl_s = 600;
    km_redis *setup = dev ? km_redis_open(&sp, km_model_fingerprint(w->model), &err) : NULL;
    km_planner pl;
    km_planner_init(&pl);
    if (!setup) goto fail;
    w->step_ms = measure_decode_step(w, c, &pl, &err);
    if (w->step_ms < 0) goto fail;
    for (int j = w->id; j < pf->n_prompts; j += pf->workers) {
        if (run_prompt(w, c, dev, setup, &pl, j, &err) != 0) goto fail;
        int d = atomic_fetch_add(w->done, 1) + 1;
        pthread_mutex_lock(&progress_lock);
        const sample *nc = &pf->s[C_NOCACHE][j], *fh = &pf->s[C_FULL][j];
        fprintf(stderr, "  %s: %d/%d prompts (device %d: %d tokens, no cache %.0f ms, full hit %.0f ms)\n", pf->name, d,
                pf->n_prompts, w->id, nc->n_prompt, nc->ttft, fh->ttft);
        pthread_mutex_unlock(&progress_lock);
    }
    km_redis_close(setup, 60000);
    km_redis_close(dev, 60000); /* the last miss uploads: sent or reported */
    km_link_free(link);
    km_ctx_free(c);
    return NULL;
fail:
    fprintf(stderr, "kvmesh bench mmlu: %s device %d: %s\n", pf->name, w->id, err.msg);
    w->failed = 1;
    if (setup) km_redis_close(setup, 0);
    if (dev) km_redis_close(dev, 0);
    km_link_free(link);
    if (c) km_ctx_free(c);
    return NULL;
}

/* Prefill rate of one core on this profile's prompts, for the dilation
 * factor. Measured in this thread's CPU time, as the dilation itself is
 * (engine.c): a busy machine (another bench, a build) changes neither, so
 * the emulated device runs at its target rate regardless. */
static double full_speed_tps(km_model *m, const km_mmlu *mm, const profile *pf, km_kv_type kv, km_error *err) {
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = pf->n_ctx;
    cp.kv_type = kv;
    km_ctx *c = km_ctx_init(m, &cp, err);
    if (!c) return -1;
    double tok = 0, ms = 0;
    for (int j = 0; j < 4; j++) {
        prompt p;
        if (prompt_make(mm, m, pf->k, j, &p, err) != 0) break;
        km_pcache_opts o = km_pcache_default_opts();
        km_result r;
        double cpu0 = km_thread_cpu_ms();
        if (run_one(c, NULL, &p, &o, 1, &r, err) == 0 && j > 0) { /* the first warms up */
            tok += r.prefill.n_prefilled;
            ms += km_thread_cpu_ms() - cpu0;
        }
        prompt_free(&p);
    }
    km_ctx_free(c);
    return ms > 0 ? tok / (ms / 1e3) : -1;
}

static int run_profile(profile *pf, const bench_cfg *cfg, const km_mmlu *mm, const char *redis_url) {
    km_error err;
    km_model *m = km_model_load(pf->model_path, &err);
    if (!m) {
        fprintf(stderr, "kvmesh bench mmlu: %s: %s\n(generate it with: kvmesh gen-model --preset %s --type q8_0 --out %s)\n",
                pf->name, err.msg, strstr(pf->model_path, "1b") ? "gemma3-1b" : "gemma3-270m", pf->model_path);
        return -1;
    }
    km_model_describe(m, pf->model_desc, sizeof pf->model_desc);
    for (int c = 0; c < N_CASES; c++) pf->s[c] = calloc((size_t)pf->n_prompts, sizeof(sample));
    /* the context must hold the longest prompt (some MMLU subjects have
     * long examples: k=5 prompts reach ~2,700 tokens) */
    int longest = 0, n_check = pf->n_prompts + pf->workers;
    if (n_check < cfg->catalog_prompts) n_check = cfg->catalog_prompts;
    if (n_check < 8) n_check = 8; /* state sizes */
    for (int j = 0; j < n_check; j++) {
        prompt p;
        if (prompt_make(mm, m, pf->k, j, &p, &err) != 0) {
            fprintf(stderr, "kvmesh bench mmlu: %s: prompt %d: %s\n", pf->name, j, err.msg);
            km_model_free(m);
            return -1;
        }
        if (p.n_tokens > longest) longest = p.n_tokens;
        prompt_free(&p);
    }
    pf->n_ctx = (longest + cfg->n_predict + 255) / 256 * 256;
    pf->full_speed_tps = full_speed_tps(m, mm, pf, cfg->kv, &err);
    if (pf->full_speed_tps <= 0) {
        fprintf(stderr, "kvmesh bench mmlu: %s: calibration failed: %s\n", pf->name, err.msg);
        km_model_free(m);
        return -1;
    }
    if (pf->slowdown <= 0) pf->slowdown = pf->target_tps > 0 ? pf->full_speed_tps / pf->target_tps : 1.0;
    if (pf->slowdown < 1) pf->slowdown = 1;
    fprintf(stderr, "kvmesh bench mmlu: %s: %s, k=%d, %d prompts on %d device(s); one core prefills %.1f tokens/s, "
                    "dilation x%.2f -> %.2f tokens/s\n",
            pf->name, pf->model_desc, pf->k, pf->n_prompts, pf->workers, pf->full_speed_tps, pf->slowdown,
            pf->full_speed_tps / pf->slowdown);
    double t0 = km_now_ms();
    worker *ws = calloc((size_t)pf->workers, sizeof *ws);
    pthread_t *th = calloc((size_t)pf->workers, sizeof *th);
    atomic_int done = 0;
    for (int i = 0; i < pf->workers; i++) {
        ws[i] = (worker){.pf = pf, .cfg = cfg, .model = m, .mm = mm, .redis_url = redis_url, .id = i, .done = &done};
        pthread_create(&th[i], NULL, worker_main, &ws[i]);
    }
    int failed = 0;
    double tps = 0, tps_n = 0, step = 0;
    for (int i = 0; i < pf->workers; i++) {
        pthread_join(th[i], NULL);
        failed |= ws[i].failed;
        tps += ws[i].tps_sum;
        tps_n += ws[i].tps_n;
        step += ws[i].step_ms;
    }
    pf->device_tps = tps_n > 0 ? tps / tps_n : 0;
    pf->decode_step_ms = step / pf->workers;
    pf->elapsed_s = (km_now_ms() - t0) / 1e3;
    free(ws);
    free(th);
    km_model_free(m);
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ reports */

typedef struct case_summary {
    int n;
    km_stats ttft, ttlt;
    double reused, prefilled, bytes, remote_ms, restore_ms, lookup_ms, bound_ms, false_pos, gets, skips, hints, wrong_hits;
    double bytes_per_token; /* bytes fetched per reused token */
} case_summary;

static case_summary summarize(const profile *pf, int cc, const bench_cfg *cfg) {
    case_summary cs;
    memset(&cs, 0, sizeof cs);
    double *ttft = calloc((size_t)pf->n_prompts, sizeof(double)), *ttlt = calloc((size_t)pf->n_prompts, sizeof(double));
    double reused_with_bytes = 0;
    for (int j = 0; j < pf->n_prompts; j++) {
        const sample *s = &pf->s[cc][j];
        if (!s->ok) continue;
        ttft[cs.n] = s->ttft;
        ttlt[cs.n] = s->ttlt;
        cs.n++;
        cs.reused += s->reused;
        cs.prefilled += s->prefilled;
        cs.bytes += s->bytes_remote;
        if (s->bytes_remote > 0) reused_with_bytes += s->reused;
        cs.remote_ms += s->remote_ms;
        cs.restore_ms += s->restore_ms;
        cs.lookup_ms += s->lookup_ms;
        cs.false_pos += s->false_pos;
        cs.gets += s->gets;
        cs.skips += s->skips;
        cs.hints += s->hint;
        cs.wrong_hits += s->want_index >= 0 && s->hit_index != s->want_index;
        /* the physical bound: one round trip, the bytes at link speed, the
         * restore, the uncached tokens at this device's prefill rate, and
         * the last prompt token's decode step. The rate is this prompt's own
         * in the no-cache run, its last token's decode step taken out. */
        const sample *nc = &pf->s[C_NOCACHE][j];
        double rate = nc->ok && nc->prefill_ms > pf->decode_step_ms && nc->prefilled > 1
                          ? (nc->prefilled - 1) / (nc->prefill_ms - pf->decode_step_ms)
                          : pf->device_tps / 1e3; /* tokens per ms */
        int uncached = s->prefilled > 0 ? s->prefilled - 1 : 0;
        double bw = cfg->link.bw_bps > 0 ? cfg->link.bw_bps / 8e3 : 0; /* bytes per ms */
        cs.bound_ms += cfg->link.rtt_ms + (bw > 0 ? s->bytes_remote / bw : 0) + s->restore_ms +
                       (rate > 0 ? uncached / rate : 0) + pf->decode_step_ms;
    }
    if (cs.n) {
        cs.ttft = km_stats_compute(ttft, cs.n);
        cs.ttlt = km_stats_compute(ttlt, cs.n);
        cs.bytes_per_token = reused_with_bytes > 0 ? cs.bytes / reused_with_bytes : 0;
        double *sums[] = {&cs.reused, &cs.prefilled, &cs.bytes, &cs.remote_ms, &cs.restore_ms, &cs.lookup_ms,
                          &cs.bound_ms, &cs.false_pos, &cs.gets, &cs.skips, &cs.hints};
        for (size_t i = 0; i < sizeof sums / sizeof *sums; i++) *sums[i] /= cs.n;
    }
    free(ttft);
    free(ttlt);
    return cs;
}

static double pct(double x, double base) { return base > 0 ? 100.0 * (x - base) / base : 0; }

typedef struct verdicts {
    int checked, failed;
} verdicts;

static void verdict(verdicts *v, bool ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void verdict(verdicts *v, bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  [%s] ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    v->checked++;
    v->failed += !ok;
}

static void report_profile(const profile *pf, const bench_cfg *cfg, FILE *csv, FILE *json, bool *first_json,
                           verdicts *v, FILE *dat) {
    printf("\n== %s: %s, k=%d, %d prompts, KV %s, link %s ==\n", pf->name, pf->model_desc, pf->k, pf->n_prompts,
           km_kv_type_name(cfg->kv), cfg->link_spec);
    bool within = pf->target_tps <= 0 || fabs(pf->device_tps - pf->target_tps) <= 0.2 * pf->target_tps;
    printf("device: one core %.1f tokens/s, dilation x%.2f, measured prefill %.2f tokens/s", pf->full_speed_tps,
           pf->slowdown, pf->device_tps);
    if (pf->target_tps > 0) printf(" (target %.2f +-20 %%: %s)", pf->target_tps, within ? "yes" : "NO");
    printf("; decode step %.1f ms; %.0f s\n", pf->decode_step_ms, pf->elapsed_s);
    printf("%-16s %6s %6s | %8s %8s %8s %7s | %8s %8s %7s | %8s %6s %7s %7s %5s %5s | %8s %6s\n", "case", "reused",
           "prefil", "TTFT avg", "p50", "p95", "vs none", "TTLT avg", "p95", "vs none", "MB fetch", "B/tok", "redis",
           "restore", "FP", "skip", "bound", "x bnd");
    case_summary cs[N_CASES];
    for (int c = 0; c < N_CASES; c++) cs[c] = summarize(pf, c, cfg);
    double base_ttft = cs[C_NOCACHE].ttft.mean, base_ttlt = cs[C_NOCACHE].ttlt.mean;
    for (int c = 0; c < N_CASES; c++) {
        const case_summary *s = &cs[c];
        if (s->n == 0) {
            fprintf(dat, "\"%s\" %s NaN NaN\n", case_titles[c], pf->name);
            continue;
        }
        bool hit = c >= C_INSTR;
        printf("%-16s %6.1f %6.1f | %8.1f %8.1f %8.1f %+6.1f%% | %8.1f %8.1f %+6.1f%% | %8.3f %6.0f %7.1f %7.2f %5.2f %5.2f |",
               case_titles[c], s->reused, s->prefilled, s->ttft.mean, s->ttft.p50, s->ttft.p95, pct(s->ttft.mean, base_ttft),
               s->ttlt.mean, s->ttlt.p95, pct(s->ttlt.mean, base_ttlt), s->bytes / 1e6, s->bytes_per_token,
               s->remote_ms, s->restore_ms, s->false_pos, s->skips);
        if (hit) printf(" %8.1f %6.2f\n", s->bound_ms, s->ttft.mean / s->bound_ms);
        else printf(" %8s %6s\n", "-", "-");
        fprintf(csv, "%s,%s,%d,%s,%d,%.1f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.2f,%.2f,%.0f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f\n",
                pf->name, km_kv_type_name(cfg->kv), pf->k, case_names[c], s->n, s->reused, s->prefilled, s->ttft.mean,
                s->ttft.p50, s->ttft.p95, s->ttlt.mean, s->ttlt.p50, s->ttlt.p95, pct(s->ttft.mean, base_ttft),
                pct(s->ttlt.mean, base_ttlt), s->bytes, s->bytes_per_token, s->remote_ms, s->restore_ms, s->lookup_ms,
                s->false_pos, s->gets, hit ? s->bound_ms : 0, s->skips);
        fprintf(json,
                "%s    {\"profile\": \"%s\", \"case\": \"%s\", \"n\": %d, \"reused\": %.1f, \"prefilled\": %.1f, "
                "\"ttft_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p95\": %.3f}, \"ttlt_ms\": {\"mean\": %.3f, \"p50\": %.3f, "
                "\"p95\": %.3f}, \"ttft_vs_nocache_pct\": %.2f, \"ttlt_vs_nocache_pct\": %.2f, \"bytes_fetched\": %.0f, "
                "\"bytes_per_reused_token\": %.1f, \"redis_ms\": %.3f, \"restore_ms\": %.3f, \"lookup_ms\": %.3f, "
                "\"gets\": %.3f, \"false_positive_fetches\": %.3f, \"planned_skips\": %.3f, \"first_token_from_cache\": %.3f, "
                "\"bound_ms\": %.3f, \"ttft_over_bound\": %.3f, \"unexpected_hit_boundary\": %.0f}",
                *first_json ? "" : ",\n", pf->name, case_names[c], s->n, s->reused, s->prefilled, s->ttft.mean,
                s->ttft.p50, s->ttft.p95, s->ttlt.mean, s->ttlt.p50, s->ttlt.p95, pct(s->ttft.mean, base_ttft),
                pct(s->ttlt.mean, base_ttlt), s->bytes, s->bytes_per_token, s->remote_ms, s->restore_ms, s->lookup_ms,
                s->gets, s->false_pos, s->skips, s->hints, hit ? s->bound_ms : 0,
                hit ? s->ttft.mean / s->bound_ms : 0, s->wrong_hits * s->n);
        *first_json = false;
        fprintf(dat, "\"%s\" %s %.2f %.2f\n", case_titles[c], pf->name, 100 + pct(s->ttft.mean, base_ttft),
                100 + pct(s->ttlt.mean, base_ttlt));
    }
    /* paper beside ours, and the targets */
    const case_summary *full = &cs[C_FULL];
    if (pf->target_tps > 0) {
        printf("paper (low-end full hit): TTFT %+.2f %%, TTLT %+.2f %%   ours: TTFT %+.2f %%, TTLT %+.2f %% (%d generated token%s)\n",
               PAPER_LOW_TTFT_PCT, PAPER_LOW_TTLT_PCT, pct(full->ttft.mean, base_ttft), pct(full->ttlt.mean, base_ttlt),
               cfg->n_predict, cfg->n_predict == 1 ? ": TTLT = TTFT" : "s");
        verdict(v, within, "%s device prefill %.2f tokens/s within 20 %% of the Pi Zero 2W's %.2f", pf->name,
                pf->device_tps, pf->target_tps);
        verdict(v, pct(full->ttft.mean, base_ttft) <= -95.0, "%s full-hit TTFT reduction %.2f %% >= 95 %% (paper 93.12 %%)",
                pf->name, -pct(full->ttft.mean, base_ttft));
    } else {
        printf("paper (high-end): the cache made TTFT %+.1f %% slower   ours:", PAPER_HIGH_PCT);
        for (int c = C_MISS; c < N_CASES; c++)
            if (cs[c].n) printf(" %s %+.1f %%", case_names[c], pct(cs[c].ttft.mean, base_ttft));
        printf("\n");
        for (int c = C_MISS; c < N_CASES; c++)
            if (cs[c].n)
                verdict(v, pct(cs[c].ttft.mean, base_ttft) <= 2.0, "%s %s: TTFT %+.2f %% vs no cache (<= +2 %%)", pf->name,
                        case_names[c], pct(cs[c].ttft.mean, base_ttft));
    }
    for (int c = C_INSTR; c < N_CASES; c++)
        if (cs[c].n)
            verdict(v, cs[c].ttft.mean <= 1.25 * cs[c].bound_ms, "%s %s: TTFT %.1f ms = %.2fx its physical bound %.1f ms (<= 1.25x)",
                    pf->name, case_names[c], cs[c].ttft.mean, cs[c].ttft.mean / cs[c].bound_ms, cs[c].bound_ms);
    /* the paper's 34.6 KB/token is Gemma 3 270M's (its low-end device); the
     * 1B model has 26 layers instead of 18, so only the low-end is held to it */
    if (cfg->kv == KM_KV_F16 && full->bytes_per_token > 0 && pf->target_tps > 0)
        verdict(v, full->bytes_per_token <= 0.5 * PAPER_BYTES_PER_TOKEN,
                "%s full-hit state %.0f bytes per token on the wire <= 50 %% of the paper's %.0f (f16 KV)", pf->name,
                full->bytes_per_token, PAPER_BYTES_PER_TOKEN);
}

/* ------------------------------------------------------------------ catalog experiment */

typedef struct catalog_result {
    double gets, false_pos, lookup_ms, remote_ms, ttft;
    int n;
} catalog_result;

/* A miss-only stream (fresh salts): what asking Redis costs with and without
 * the catalog. Full speed, one device, the same link. */
static int catalog_experiment(const profile *pf, const bench_cfg *cfg, const km_mmlu *mm, const char *url,
                              catalog_result out[2]) {
    km_error err;
    km_model *m = km_model_load(pf->model_path, &err);
    if (!m) return -1;
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = pf->n_ctx;
    cp.kv_type = cfg->kv;
    km_ctx *c = km_ctx_init(m, &cp, &err);
    km_link *link = km_link_new(&cfg->link);
    km_redis_params rp = km_redis_default_params();
    rp.url = url;
    rp.link = link;
    km_redis *dev = c ? km_redis_open(&rp, km_model_fingerprint(m), &err) : NULL;
    int rc = dev ? 0 : -1;
    memset(out, 0, 2 * sizeof *out);
    for (int mode = 0; mode < 2 && rc == 0; mode++) {
        for (int j = 0; j < cfg->catalog_prompts; j++) {
            prompt p;
            if (prompt_make(mm, m, pf->k, j, &p, &err) != 0) {
                rc = -1;
                break;
            }
            char salt[64];
            snprintf(salt, sizeof salt, "catalog-exp-%d-%d", mode, j);
            km_pcache_opts o = km_pcache_default_opts();
            o.redis = dev;
            o.salt = salt;
            o.save = false;
            o.skip_catalog = mode == 1;
            km_result r;
            if (run_one(c, NULL, &p, &o, 1, &r, &err) != 0) rc = -1;
            prompt_free(&p);
            if (rc) break;
            catalog_result *cr = &out[mode];
            cr->gets += r.prefill.n_remote_gets;
            cr->false_pos += r.prefill.n_false_positives;
            cr->lookup_ms += r.prefill.t_lookup_ms;
            cr->remote_ms += r.prefill.t_remote_ms;
            cr->ttft += r.ttft_ms;
            cr->n++;
        }
        fprintf(stderr, "  catalog experiment: %s catalog done\n", mode ? "without" : "with");
    }
    if (rc) fprintf(stderr, "kvmesh bench mmlu: catalog experiment: %s\n", err.msg);
    if (dev) km_redis_close(dev, 0);
    km_link_free(link);
    if (c) km_ctx_free(c);
    km_model_free(m);
    return rc;
}

/* ------------------------------------------------------------------ state sizes */

typedef struct size_result {
    double tokens, raw, wire; /* per end-of-prompt state, averaged */
    int n;
} size_result;

/* End-of-prompt state per token for f16 and q8_0 KV: as llama.cpp exports it
 * (raw blob) and as the tiers send and store it (compressed). */
static int state_sizes(const profile *pf, const km_mmlu *mm, size_result out[2]) {
    km_error err;
    km_model *m = km_model_load(pf->model_path, &err);
    if (!m) return -1;
    memset(out, 0, 2 * sizeof *out);
    for (int t = 0; t < 2; t++) {
        km_ctx_params cp = km_ctx_default_params();
        cp.n_ctx = pf->n_ctx;
        cp.kv_type = t == 0 ? KM_KV_F16 : KM_KV_Q8_0;
        km_ctx *c = km_ctx_init(m, &cp, &err);
        if (!c) break;
        for (int j = 0; j < 8; j++) {
            prompt p;
            if (prompt_make(mm, m, pf->k, j, &p, &err) != 0) break;
            km_store_params sp = km_store_default_params();
            km_store *st = km_store_open(&sp, &err);
            km_pcache_opts o = km_pcache_default_opts();
            km_result r;
            km_key *keys = malloc((size_t)p.n_bounds * sizeof *keys);
            salted_keys(c, &p, NULL, keys);
            uint8_t *blob = NULL, *z = NULL;
            size_t len = 0, zlen = 0;
            if (st && run_one(c, st, &p, &o, 1, &r, &err) == 0 &&
                km_store_get(st, keys[p.n_bounds - 1], &blob, &len, &err) == 0) {
                int zr = km_blob_compress(blob, len, 1, &z, &zlen, &err);
                out[t].tokens += p.bounds[p.n_bounds - 1];
                out[t].raw += (double)len;
                out[t].wire += (double)(zr == 0 ? zlen : len);
                out[t].n++;
            }
            free(blob);
            free(z);
            free(keys);
            if (st) km_store_close(st);
            prompt_free(&p);
        }
        km_ctx_free(c);
    }
    km_model_free(m);
    return 0;
}

/* ------------------------------------------------------------------ chart */

static void write_chart(const char *out_dir, const char *dat_path, const profile *const *pfs, int n_pfs) {
    char gp[4096], png[4096], cmd[8400];
    snprintf(gp, sizeof gp, "%s/bench-mmlu.gp", out_dir);
    snprintf(png, sizeof png, "%s/bench-mmlu.png", out_dir);
    FILE *f = fopen(gp, "w");
    if (!f) return;
    fprintf(f,
            "set terminal pngcairo size 1100,520 font ',10' noenhanced\n"
            "set output '%s'\n"
            "set title 'kvmesh bench mmlu: TTFT per case, %% of no cache (paper: low-end full hit 6.88 %%, high-end 107 %%)'\n"
            "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
            "set ylabel 'TTFT, %% of no cache'\nset yrange [0:*]\nset grid ytics\nset key top right\n"
            "set xtics rotate by -20\nplot ",
            png);
    for (int i = 0; i < n_pfs; i++)
        fprintf(f, "%s'%s' index %d using 3%s title '%s (k=%d, %.1f tokens/s device)'", i ? ", " : "", dat_path, i,
                i ? "" : ":xtic(1)", pfs[i]->name, pfs[i]->k, pfs[i]->device_tps);
    fprintf(f, "\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", gp);
    FILE *p = popen(cmd, "r");
    char line[512];
    int said = 0;
    while (p && fgets(line, sizeof line, p)) {
        if (!said++) fprintf(stderr, "kvmesh bench mmlu: gnuplot:\n");
        fputs(line, stderr);
    }
    int st = p ? pclose(p) : -1;
    if (st == 0) printf("wrote %s\n", png);
    else fprintf(stderr, "kvmesh bench mmlu: no chart (gnuplot missing or failed; scripts/setup.sh installs gnuplot-nox)\n");
}

/* ------------------------------------------------------------------ command */

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh bench mmlu [options]\n"
            "\n"
            "The paper's experiment (distributed prompt caching over Redis, MMLU few-shot prompts),\n"
            "side by side with no cache: TTFT/TTLT per case (no cache, miss, instruction hit,\n"
            "+first example, +all examples, full hit) on a low-end emulated device and a high-end\n"
            "one, physical bounds, the paper's figures, a catalog experiment and state sizes.\n"
            "Starts its own redis-server on a free loopback port. Table on stdout, progress on\n"
            "stderr; writes bench-mmlu.json, bench-mmlu.csv and bench-mmlu.png.\n"
            "\n"
            "  --profile P        low, high or both (default both)\n"
            "  --low-model FILE   default models/gemma3-270m-q8_0.gguf (k=1)\n"
            "  --high-model FILE  default models/gemma3-1b-q8_0.gguf (k=5)\n"
            "  --low-prompts N    default 50\n"
            "  --high-prompts N   default 200\n"
            "  --low-workers N    emulated low-end devices run side by side (default 8)\n"
            "  --high-workers N   default 1 (full speed of one core)\n"
            "  --device-rate R    low-end prefill tokens/s to emulate (default %.2f, the paper's Pi Zero 2W)\n"
            "  --slowdown K       low-end dilation factor instead of calibrating to --device-rate\n"
            "  --link SPEC        emulated link (default bw=20mbit,rtt=5ms)\n"
            "  --kv TYPE          KV cache type f16 (default) or q8_0\n"
            "  -n N               tokens generated per prompt (default 1: MMLU answers are one token)\n"
            "  --catalog-prompts N  miss-only requests per mode in the catalog experiment (default 50; 0 = skip)\n"
            "  --no-sizes         skip the state-size measurement\n"
            "  --mmlu DIR         MMLU data (default ../shared/data/mmlu)\n"
            "  --redis-server EXE default redis-server from PATH\n"
            "  --out DIR          default bench-out\n"
            "  -h, --help\n",
            PAPER_DEVICE_TPS);
}

int cmd_bench_mmlu(int argc, char **argv) {
    profile low = {.name = "low-end", .model_path = "models/gemma3-270m-q8_0.gguf", .k = 1, .n_prompts = 50,
                   .workers = 8, .target_tps = PAPER_DEVICE_TPS, .enabled = true};
    profile high = {.name = "high-end", .model_path = "models/gemma3-1b-q8_0.gguf", .k = 5, .n_prompts = 200,
                    .workers = 1, .slowdown = 1, .enabled = true};
    bench_cfg cfg = {.mmlu = "../shared/data/mmlu", .out = "bench-out", .link_spec = "bw=20mbit,rtt=5ms",
                     .kv = KM_KV_F16, .n_predict = 1, .catalog_prompts = 50};
    enum { O_PROFILE = 1000, O_LM, O_HM, O_LP, O_HP, O_LW, O_HW, O_RATE, O_SLOW, O_LINK, O_KV, O_CATP, O_NOSIZES, O_MMLU,
           O_REDIS, O_OUT };
    static const struct option opts[] = {
        {"profile", required_argument, 0, O_PROFILE}, {"low-model", required_argument, 0, O_LM},
        {"high-model", required_argument, 0, O_HM},   {"low-prompts", required_argument, 0, O_LP},
        {"high-prompts", required_argument, 0, O_HP}, {"low-workers", required_argument, 0, O_LW},
        {"high-workers", required_argument, 0, O_HW}, {"device-rate", required_argument, 0, O_RATE},
        {"slowdown", required_argument, 0, O_SLOW},   {"link", required_argument, 0, O_LINK},
        {"kv", required_argument, 0, O_KV},           {"catalog-prompts", required_argument, 0, O_CATP},
        {"no-sizes", no_argument, 0, O_NOSIZES},      {"mmlu", required_argument, 0, O_MMLU},
        {"redis-server", required_argument, 0, O_REDIS}, {"out", required_argument, 0, O_OUT},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        switch (ch) {
        case O_PROFILE:
            low.enabled = !strcmp(optarg, "low") || !strcmp(optarg, "both");
            high.enabled = !strcmp(optarg, "high") || !strcmp(optarg, "both");
            if (!low.enabled && !high.enabled) {
                fprintf(stderr, "kvmesh bench mmlu: --profile must be low, high or both\n");
                return 2;
            }
            break;
        case O_LM: low.model_path = optarg; break;
        case O_HM: high.model_path = optarg; break;
        case O_LP: low.n_prompts = atoi(optarg); break;
        case O_HP: high.n_prompts = atoi(optarg); break;
        case O_LW: low.workers = atoi(optarg); break;
        case O_HW: high.workers = atoi(optarg); break;
        case O_RATE: low.target_tps = atof(optarg); break;
        case O_SLOW: low.slowdown = atof(optarg); break;
        case O_LINK: cfg.link_spec = optarg; break;
        case O_KV:
            if (km_kv_type_parse(optarg, &cfg.kv) != 0) {
                fprintf(stderr, "kvmesh bench mmlu: unknown KV type '%s' (f16, q8_0)\n", optarg);
                return 2;
            }
            break;
        case O_CATP: cfg.catalog_prompts = atoi(optarg); break;
        case O_NOSIZES: cfg.skip_sizes = true; break;
        case O_MMLU: cfg.mmlu = optarg; break;
        case O_REDIS: cfg.redis_exe = optarg; break;
        case O_OUT: cfg.out = optarg; break;
        case 'n': cfg.n_predict = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvmesh bench mmlu: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    km_error err;
    if (low.n_prompts < 1 || high.n_prompts < 1 || low.workers < 1 || high.workers < 1 || cfg.n_predict < 1 ||
        low.target_tps <= 0 || cfg.catalog_prompts < 0) {
        fprintf(stderr, "kvmesh bench mmlu: bad option value (see --help)\n");
        return 2;
    }
    if (km_link_parse(cfg.link_spec, &cfg.link, &err) != 0) {
        fprintf(stderr, "kvmesh bench mmlu: --link: %s\n", err.msg);
        return 2;
    }
    if (low.workers > low.n_prompts) low.workers = low.n_prompts;
    if (high.workers > high.n_prompts) high.workers = high.n_prompts;
    km_log_level = 0;
    km_mmlu *mm = km_mmlu_load(cfg.mmlu, &err);
    if (!mm) {
        fprintf(stderr, "kvmesh bench mmlu: MMLU data: %s\n", err.msg);
        return 1;
    }
    if (km_mkdir_p(cfg.out, &err) != 0) {
        fprintf(stderr, "kvmesh bench mmlu: %s\n", err.msg);
        km_mmlu_free(mm);
        return 1;
    }
    bench_redisd rd;
    /* a hard memory cap: states are copied and deleted per prompt, uploads expire */
    if (bench_redisd_start(&rd, cfg.redis_exe, "--maxmemory 6gb --maxmemory-policy allkeys-lru", &err) != 0) {
        fprintf(stderr, "kvmesh bench mmlu: cannot start redis-server: %s\n", err.msg);
        km_mmlu_free(mm);
        return 1;
    }
    fprintf(stderr, "kvmesh bench mmlu: redis-server on %s (private, no persistence); %d subjects\n", rd.url,
            mm->n_subjects);
    int rc = 0;
    profile *profiles[2] = {&low, &high};
    for (int i = 0; i < 2; i++)
        if (profiles[i]->enabled && run_profile(profiles[i], &cfg, mm, rd.url) != 0) rc = 1;
    catalog_result cat[2];
    const profile *cat_pf = low.enabled ? &low : &high;
    bool have_cat = cfg.catalog_prompts > 0 && rc == 0 && catalog_experiment(cat_pf, &cfg, mm, rd.url, cat) == 0;
    size_result sizes[2];
    bool have_sizes = !cfg.skip_sizes && rc == 0 && state_sizes(cat_pf, mm, sizes) == 0;
    bench_redisd_stop(&rd);

    char pj[4096], pc[4096], pd[4096];
    snprintf(pj, sizeof pj, "%s/bench-mmlu.json", cfg.out);
    snprintf(pc, sizeof pc, "%s/bench-mmlu.csv", cfg.out);
    snprintf(pd, sizeof pd, "%s/bench-mmlu.dat", cfg.out);
    FILE *json = fopen(pj, "w"), *csv = fopen(pc, "w"), *dat = fopen(pd, "w");
    if (!json || !csv || !dat) {
        fprintf(stderr, "kvmesh bench mmlu: cannot write into %s\n", cfg.out);
        rc = 1;
        goto done;
    }
    printf("kvmesh bench mmlu -- link %s (emulated), KV %s, %d generated token(s) per prompt\n", cfg.link_spec,
           km_kv_type_name(cfg.kv), cfg.n_predict);
    fprintf(csv, "profile,kv,k,case,n,reused,prefilled,ttft_mean_ms,ttft_p50_ms,ttft_p95_ms,ttlt_mean_ms,ttlt_p50_ms,"
                 "ttlt_p95_ms,ttft_vs_nocache_pct,ttlt_vs_nocache_pct,bytes_fetched,bytes_per_reused_token,redis_ms,"
                 "restore_ms,lookup_ms,false_positive_fetches,gets,bound_ms,planned_skips\n");
    fprintf(json, "{\n  \"bench\": \"mmlu\",\n  \"link\": \"%s\",\n  \"kv\": \"%s\",\n  \"generated_tokens\": %d,\n",
            cfg.link_spec, km_kv_type_name(cfg.kv), cfg.n_predict);
    fprintf(json, "  \"paper\": {\"device_tokens_per_s\": %.3f, \"low_full_hit_ttft_pct\": %.2f, \"low_full_hit_ttlt_pct\": %.2f, "
                  "\"high_pct\": %.1f, \"bytes_per_token\": %.0f},\n  \"profiles\": [\n",
            PAPER_DEVICE_TPS, PAPER_LOW_TTFT_PCT, PAPER_LOW_TTLT_PCT, PAPER_HIGH_PCT, PAPER_BYTES_PER_TOKEN);
    bool first_p = true;
    for (int i = 0; i < 2; i++) {
        const profile *pf = profiles[i];
        if (!pf->enabled || !pf->s[0]) continue;
        fprintf(json, "%s    {\"name\": \"%s\", \"model\": \"%s\", \"k\": %d, \"prompts\": %d, \"devices\": %d, "
                      "\"one_core_tokens_per_s\": %.2f, \"slowdown\": %.3f, \"device_prefill_tokens_per_s\": %.3f, "
                      "\"decode_step_ms\": %.2f, \"seconds\": %.1f}",
                first_p ? "" : ",\n", pf->name, pf->model_desc, pf->k, pf->n_prompts, pf->workers, pf->full_speed_tps,
                pf->slowdown, pf->device_tps, pf->decode_step_ms, pf->elapsed_s);
        first_p = false;
    }
    fprintf(json, "\n  ],\n  \"rows\": [\n");
    verdicts v = {0, 0};
    bool first_row = true;
    const profile *charted[2];
    int n_charted = 0;
    for (int i = 0; i < 2; i++) {
        if (!profiles[i]->enabled || !profiles[i]->s[0]) continue;
        report_profile(profiles[i], &cfg, csv, json, &first_row, &v, dat);
        fprintf(dat, "\n\n");
        charted[n_charted++] = profiles[i];
    }
    fprintf(json, "\n  ]");
    if (have_cat) {
        printf("\n== catalog experiment: %d miss-only requests per mode (%s, k=%d, full speed, link %s) ==\n",
               cfg.catalog_prompts, cat_pf->name, cat_pf->k, cfg.link_spec);
        printf("%-16s %12s %14s %14s %12s %10s\n", "mode", "GETs/req", "empty GETs/req", "lookup ms/req", "redis ms", "TTFT ms");
        const char *names[2] = {"with catalog", "without"};
        fprintf(json, ",\n  \"catalog_experiment\": [\n");
        for (int m = 0; m < 2; m++) {
            catalog_result *c = &cat[m];
            int n = c->n > 0 ? c->n : 1;
            printf("%-16s %12.2f %14.3f %14.2f %12.2f %10.1f\n", names[m], c->gets / n, c->false_pos / n, c->lookup_ms / n,
                   c->remote_ms / n, c->ttft / n);
            fprintf(json, "%s    {\"mode\": \"%s\", \"requests\": %d, \"gets_per_request\": %.3f, \"false_positives_per_request\": %.3f, "
                          "\"lookup_ms\": %.3f, \"redis_ms\": %.3f, \"ttft_ms\": %.3f}",
                    m ? ",\n" : "", names[m], c->n, c->gets / n, c->false_pos / n, c->lookup_ms / n, c->remote_ms / n, c->ttft / n);
        }
        fprintf(json, "\n  ]");
        int n = cat[0].n > 0 ? cat[0].n : 1;
        printf("the catalog saves %.2f round trips and %.1f ms of lookup per miss\n", (cat[1].gets - cat[0].gets) / n,
               (cat[1].lookup_ms - cat[0].lookup_ms) / n);
    }
    if (have_sizes && sizes[0].n && sizes[1].n) {
        printf("\n== state size per token (%s, k=%d, end-of-prompt states, %d prompts) ==\n", cat_pf->name, cat_pf->k,
               sizes[0].n);
        printf("%-6s %10s %14s %14s %12s\n", "KV", "tokens", "raw B/token", "wire B/token", "vs paper");
        fprintf(json, ",\n  \"state_sizes\": [\n");
        for (int t = 0; t < 2; t++) {
            size_result *s = &sizes[t];
            double raw = s->raw / s->tokens, wire = s->wire / s->tokens;
            printf("%-6s %10.1f %14.0f %14.0f %11.1f%%\n", t ? "q8_0" : "f16", s->tokens / s->n, raw, wire,
                   100 * wire / PAPER_BYTES_PER_TOKEN);
            fprintf(json, "%s    {\"kv\": \"%s\", \"tokens\": %.1f, \"raw_bytes_per_token\": %.1f, \"wire_bytes_per_token\": %.1f}",
                    t ? ",\n" : "", t ? "q8_0" : "f16", s->tokens / s->n, raw, wire);
        }
        fprintf(json, "\n  ]");
        double f16 = sizes[0].wire / sizes[0].tokens, q8 = sizes[1].wire / sizes[1].tokens;
        /* The paper's 34.6 KB per token is its 270M's (2.25 MB / 65 tokens):
         * a 1B state (26 layers, not 18) is not held to it. */
        if (cat_pf == &low)
            verdict(&v, f16 <= 0.5 * PAPER_BYTES_PER_TOKEN,
                    "f16 KV: %.0f bytes per cached token <= %.0f (50 %% of the paper's)", f16, 0.5 * PAPER_BYTES_PER_TOKEN);
        else
            printf("  [----] f16 KV: %.0f bytes per cached token; the paper's 34.6 KB is its 270M's, checked on the "
                   "low-end profile only\n", f16);
        verdict(&v, q8 < f16, "q8_0 KV: %.0f bytes per cached token, lower than f16's %.0f", q8, f16);
    }
    fprintf(json, ",\n  \"targets\": {\"checked\": %d, \"failed\": %d}\n}\n", v.checked, v.failed);
    printf("\ntargets: %d checked, %d failed\n", v.checked, v.failed);
    fclose(dat);
    dat = NULL;
    if (n_charted) write_chart(cfg.out, pd, charted, n_charted);
    printf("wrote %s and %s\n", pj, pc);
done:
    if (json) fclose(json);
    if (csv) fclose(csv);
    if (dat) fclose(dat);
    for (int i = 0; i < 2; i++)
        for (int c = 0; c < N_CASES; c++) free(profiles[i]->s[c]);
    km_mmlu_free(mm);
    return rc;
}
