/* bench_local.c -- `kvmesh bench local`: what the local prompt cache costs and saves.
 *
 * Workload: MMLU prompts (../shared/data/mmlu) in the standard few-shot format,
 * cut into the paper's logical parts: instruction | +first example | +all
 * examples | whole prompt. For every prompt, each case runs side by side in
 * the same process, so machine noise hits all of them alike:
 *
 *   cold      no cache at all (store off): the baseline
 *   miss      cache on, nothing stored yet: baseline + snapshot cost
 *   instr     state of the instruction restored, the rest prefilled
 *   first     state up to the first example restored
 *   all       state up to the last example restored (k > 1 only)
 *   full      state of the whole prompt but its last token restored
 *
 * Reports TTFT/TTLT (mean/p50/p95), tokens reused/prefilled, state bytes and
 * bytes per token, save and restore times, prefill tokens/s; for each KV type
 * and each k. Table on stdout; JSON and CSV in --out. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "engine.h"
#include "mmlu.h"
#include "pcache.h"
#include "store.h"
#include "util.h"

enum { C_COLD, C_MISS, C_INSTR, C_FIRST, C_ALL, C_FULL, N_CASES };
static const char *case_names[N_CASES] = {"cold", "miss", "instr", "first", "all", "full"};

typedef struct case_samples {
    double *ttft, *ttlt, *restore_ms, *save_ms, *prefill_tps;
    double reused, prefilled, bytes_loaded, bytes_saved, n_saved;
    int n;
} case_samples;

typedef struct bench_opts {
    const char *model, *mmlu, *out;
    int n_prompts, threads, n_predict, warmup;
    int ks[4], n_ks;
    km_kv_type kvs[2];
    int n_kvs;
} bench_opts;

static void local_usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh bench local [options]\n"
            "\n"
            "Measures the local prompt cache on MMLU few-shot prompts: TTFT/TTLT for a cold run,\n"
            "a miss, a hit at each part of the prompt and a full hit; state sizes, save/restore\n"
            "times, prefill rate. Prints a table; writes bench-local.json and bench-local.csv.\n"
            "\n"
            "  --model FILE     GGUF (default models/gemma3-270m-q8_0.gguf)\n"
            "  --mmlu DIR       MMLU data (default ../shared/data/mmlu)\n"
            "  --prompts N      prompts per (KV type, k) (default 20)\n"
            "  --k LIST         few-shot counts (default 1,5)\n"
            "  --kv LIST        KV types (default f16,q8_0)\n"
            "  --threads N      compute threads (default 1)\n"
            "  -n N             tokens generated per prompt (default 8; TTLT counts them)\n"
            "  --out DIR        where the JSON and CSV go (default bench-out)\n"
            "  -h, --help\n");
}

static int parse_list_ints(const char *s, int *out, int max) {
    int n = 0;
    char *dup = strdup(s), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t && n < max; t = strtok_r(NULL, ",", &save)) out[n++] = atoi(t);
    free(dup);
    return n;
}

/* One request through the cache (store NULL: no cache). keys_out, if given,
 * gets the prompt's boundary keys (computed outside the timed request). */
static int one_request(km_ctx *c, km_store *store, char **segs, int n_segs, int n_predict, km_prefill_report *rep,
                       double *ttft, double *ttlt, int *nb_out, km_key **keys_out) {
    km_request req = {.segs = (const char *const *)segs, .n_segs = n_segs, .segment_bounds = true,
                      .sampling = km_sampling_default(), .n_predict = n_predict};
    km_result res;
    km_error err;
    if (km_pcache_run(c, store, 0, &req, &res, &err) != 0) {
        km_warn("%s", err.msg);
        return -1;
    }
    *rep = res.prefill;
    *ttft = res.ttft_ms;
    *ttlt = res.ttlt_ms;
    if (keys_out) {
        int32_t *toks;
        int n, *ends;
        if (km_tokenize_segments(km_ctx_model(c), req.segs, n_segs, false, &toks, &n, &ends, &err) != 0) return -1;
        int *bounds = malloc((size_t)n * sizeof *bounds);
        *nb_out = km_boundaries(ends, n_segs, n, 0, bounds, NULL);
        *keys_out = malloc((size_t)*nb_out * sizeof **keys_out);
        km_keys_for_boundaries(km_ctx_root_key(c, NULL), toks, bounds, *nb_out, *keys_out);
        free(bounds);
        free(toks);
        free(ends);
    }
    return 0;
}

static void add_sample(case_samples *cs, const km_prefill_report *r, double ttft, double ttlt) {
    cs->ttft[cs->n] = ttft;
    cs->ttlt[cs->n] = ttlt;
    cs->restore_ms[cs->n] = r->t_restore_ms;
    cs->save_ms[cs->n] = r->n_saved ? r->t_save_ms / r->n_saved : 0;
    cs->prefill_tps[cs->n] = r->t_prefill_ms > 0 ? r->n_prefilled / (r->t_prefill_ms / 1e3) : 0;
    cs->reused += r->n_reused;
    cs->prefilled += r->n_prefilled;
    cs->bytes_loaded += (double)r->bytes_loaded;
    cs->bytes_saved += (double)r->bytes_saved;
    cs->n_saved += r->n_saved;
    cs->n++;
}

typedef struct result_row {
    const char *kv;
    int k, has;
    double prompt_tokens;
    case_samples cs[N_CASES];
} result_row;

static void free_row(result_row *r) {
    for (int c = 0; c < N_CASES; c++) {
        free(r->cs[c].ttft);
        free(r->cs[c].ttlt);
        free(r->cs[c].restore_ms);
        free(r->cs[c].save_ms);
        free(r->cs[c].prefill_tps);
    }
}

static int run_config(km_model *m, km_mmlu *mm, const bench_opts *o, km_kv_type kv, int k, result_row *row) {
    km_error err;
    km_ctx_params cp = km_ctx_default_params();
    cp.kv_type = kv;
    cp.n_threads = o->threads;
    cp.n_ctx = 4096;
    km_ctx *c = km_ctx_init(m, &cp, &err);
    if (!c) {
        fprintf(stderr, "kvmesh bench: %s\n", err.msg);
        return -1;
    }
    memset(row, 0, sizeof *row);
    row->kv = km_kv_type_name(kv);
    row->k = k;
    for (int i = 0; i < N_CASES; i++) {
        case_samples *cs = &row->cs[i];
        cs->ttft = calloc((size_t)o->n_prompts, sizeof(double));
        cs->ttlt = calloc((size_t)o->n_prompts, sizeof(double));
        cs->restore_ms = calloc((size_t)o->n_prompts, sizeof(double));
        cs->save_ms = calloc((size_t)o->n_prompts, sizeof(double));
        cs->prefill_tps = calloc((size_t)o->n_prompts, sizeof(double));
    }
    km_store_params sp = km_store_default_params();
    sp.ram_budget = (size_t)1 << 30;
    char **segs = calloc((size_t)k + 2, sizeof *segs);
    double prompt_tokens = 0;
    for (int j = -o->warmup; j < o->n_prompts; j++) {
        int jj = j < 0 ? 0 : j;
        km_mmlu_subject *s = &mm->subjects[jj % mm->n_subjects];
        km_mmlu_item *q = &s->test[(jj / mm->n_subjects) % s->n_test];
        int n_segs = km_mmlu_prompt_segments(s, k, q, segs);
        if (n_segs < 0) break;
        km_prefill_report rep;
        double ttft, ttlt;
        km_store *full = NULL;
        km_key *keys = NULL;
        /* cold: no store */
        if (one_request(c, NULL, segs, n_segs, o->n_predict, &rep, &ttft, &ttlt, NULL, NULL) != 0) goto fail;
        if (j >= 0) add_sample(&row->cs[C_COLD], &rep, ttft, ttlt);
        /* miss: empty store, snapshots saved */
        full = km_store_open(&sp, &err);
        int nb;
        if (one_request(c, full, segs, n_segs, o->n_predict, &rep, &ttft, &ttlt, &nb, &keys) != 0) goto fail;
        if (j >= 0) {
            add_sample(&row->cs[C_MISS], &rep, ttft, ttlt);
            prompt_tokens += rep.n_prompt;
        }
        /* hits: a store holding only the states up to the case's boundary */
        int idx[N_CASES] = {-1, -1, 0, 1, k, nb - 1};
        for (int cc = C_INSTR; cc < N_CASES; cc++) {
            if (cc == C_ALL && k < 2) continue;
            km_store *part = km_store_open(&sp, &err);
            for (int b = 0; b <= idx[cc] && b < nb; b++) {
                uint8_t *blob;
                size_t len;
                if (km_store_get(full, keys[b], &blob, &len, &err) == 0) {
                    km_store_put(part, keys[b], blob, len, &err);
                    free(blob);
                }
            }
            int rc = one_request(c, part, segs, n_segs, o->n_predict, &rep, &ttft, &ttlt, NULL, NULL);
            km_store_close(part);
            if (rc != 0) goto fail;
            if (rep.hit_index != idx[cc]) km_warn("case %s: expected a hit at boundary %d, got %d", case_names[cc], idx[cc], rep.hit_index);
            if (j >= 0) add_sample(&row->cs[cc], &rep, ttft, ttlt);
        }
        free(keys);
        km_store_close(full);
        for (int i = 0; i < n_segs; i++) free(segs[i]);
        if (j >= 0 && ((j + 1) % 5 == 0 || j + 1 == o->n_prompts))
            fprintf(stderr, "  kv %s, k=%d: %d/%d prompts\n", row->kv, k, j + 1, o->n_prompts);
        continue;
    fail:
        free(keys);
        if (full) km_store_close(full);
        for (int i = 0; i < n_segs; i++) free(segs[i]);
        free(segs);
        km_ctx_free(c);
        return -1;
    }
    row->prompt_tokens = prompt_tokens / o->n_prompts;
    row->has = 1;
    free(segs);
    km_ctx_free(c);
    return 0;
}

static void print_table(const result_row *rows, int n_rows, FILE *csv, FILE *json) {
    printf("\n%-5s %2s %-5s %7s %7s | %8s %8s %8s | %8s %8s %8s | %9s %8s %8s %8s %9s\n", "kv", "k", "case", "reused",
           "prefill", "TTFT avg", "p50", "p95", "TTLT avg", "p50", "p95", "state MB", "B/token", "restore", "save",
           "prefill/s");
    fprintf(csv, "kv,k,case,prompt_tokens,reused,prefilled,ttft_mean_ms,ttft_p50_ms,ttft_p95_ms,ttlt_mean_ms,ttlt_p50_ms,"
                 "ttlt_p95_ms,state_bytes_loaded,bytes_per_token,restore_ms,state_bytes_stored,states_stored,save_ms_per_state,"
                 "prefill_tok_per_s,n\n");
    fprintf(json, "{\n  \"bench\": \"local\",\n  \"rows\": [\n");
    int first = 1;
    for (int r = 0; r < n_rows; r++) {
        const result_row *row = &rows[r];
        if (!row->has) continue;
        for (int c = 0; c < N_CASES; c++) {
            case_samples cs = row->cs[c];
            if (cs.n == 0) continue;
            int n = cs.n;
            km_stats ttft = km_stats_compute(cs.ttft, n), ttlt = km_stats_compute(cs.ttlt, n);
            km_stats rest = km_stats_compute(cs.restore_ms, n), save = km_stats_compute(cs.save_ms, n);
            km_stats tps = km_stats_compute(cs.prefill_tps, n);
            double reused = cs.reused / n, prefilled = cs.prefilled / n;
            /* state size: the restored blob for hits, the largest saved one for the miss */
            double loaded = cs.bytes_loaded / n, stored = cs.bytes_saved / n, n_stored = cs.n_saved / n;
            double bpt = reused > 0 ? loaded / reused : 0;
            printf("%-5s %2d %-5s %7.1f %7.1f | %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f | %8.3f %8.0f %8.2f %8.3f %8.2f %9.1f\n",
                   row->kv, row->k, case_names[c], reused, prefilled, ttft.mean, ttft.p50, ttft.p95, ttlt.mean, ttlt.p50,
                   ttlt.p95, loaded / 1e6, bpt, rest.mean, stored / 1e6, save.mean, tps.mean);
            fprintf(csv, "%s,%d,%s,%.1f,%.1f,%.1f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.0f,%.1f,%.3f,%.0f,%.2f,%.3f,%.1f,%d\n",
                    row->kv, row->k, case_names[c], row->prompt_tokens, reused, prefilled, ttft.mean, ttft.p50, ttft.p95,
                    ttlt.mean, ttlt.p50, ttlt.p95, loaded, bpt, rest.mean, stored, n_stored, save.mean, tps.mean, n);
            fprintf(json,
                    "%s    {\"kv\": \"%s\", \"k\": %d, \"case\": \"%s\", \"prompt_tokens\": %.1f, \"reused\": %.1f, "
                    "\"prefilled\": %.1f, \"ttft_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p95\": %.3f}, "
                    "\"ttlt_ms\": {\"mean\": %.3f, \"p50\": %.3f, \"p95\": %.3f}, \"state_bytes_loaded\": %.0f, "
                    "\"bytes_per_token\": %.1f, \"restore_ms\": %.3f, \"state_bytes_stored\": %.0f, "
                    "\"states_stored\": %.2f, \"save_ms_per_state\": %.3f, "
                    "\"prefill_tok_per_s\": %.1f, \"n\": %d}",
                    first ? "" : ",\n", row->kv, row->k, case_names[c], row->prompt_tokens, reused, prefilled, ttft.mean,
                    ttft.p50, ttft.p95, ttlt.mean, ttlt.p50, ttlt.p95, loaded, bpt, rest.mean, stored, n_stored, save.mean,
                    tps.mean, n);
            first = 0;
        }
        double cold = km_stats_compute(row->cs[C_COLD].ttft, row->cs[C_COLD].n).mean;
        double full = km_stats_compute(row->cs[C_FULL].ttft, row->cs[C_FULL].n).mean;
        printf("%-5s %2d  prompt %.1f tokens; full-hit TTFT = %.1f%% of cold (%.1fx faster)\n", row->kv, row->k,
               row->prompt_tokens, 100 * full / cold, cold / full);
    }
    fprintf(json, "\n  ]\n}\n");
}

static int bench_local(int argc, char **argv) {
    bench_opts o = {.model = "models/gemma3-270m-q8_0.gguf", .mmlu = "../shared/data/mmlu", .out = "bench-out",
                    .n_prompts = 20, .threads = 1, .n_predict = 8, .warmup = 1, .ks = {1, 5}, .n_ks = 2,
                    .kvs = {KM_KV_F16, KM_KV_Q8_0}, .n_kvs = 2};
    enum { O_MODEL = 1000, O_MMLU, O_PROMPTS, O_K, O_KV, O_THREADS, O_OUT };
    static const struct option opts[] = {{"model", required_argument, 0, O_MODEL}, {"mmlu", required_argument, 0, O_MMLU},
                                         {"prompts", required_argument, 0, O_PROMPTS}, {"k", required_argument, 0, O_K},
                                         {"kv", required_argument, 0, O_KV}, {"threads", required_argument, 0, O_THREADS},
                                         {"out", required_argument, 0, O_OUT}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        switch (ch) {
        case O_MODEL: o.model = optarg; break;
        case O_MMLU: o.mmlu = optarg; break;
        case O_PROMPTS: o.n_prompts = atoi(optarg); break;
        case O_K: o.n_ks = parse_list_ints(optarg, o.ks, 4); break;
        case O_KV: {
            o.n_kvs = 0;
            char *dup = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(dup, ",", &save); t && o.n_kvs < 2; t = strtok_r(NULL, ",", &save)) {
                if (km_kv_type_parse(t, &o.kvs[o.n_kvs]) != 0) {
                    fprintf(stderr, "kvmesh bench local: unknown KV type '%s' (f16, q8_0)\n", t);
                    free(dup);
                    return 2;
                }
                o.n_kvs++;
            }
            free(dup);
            break;
        }
        case O_THREADS: o.threads = atoi(optarg); break;
        case 'n': o.n_predict = atoi(optarg); break;
        case O_OUT: o.out = optarg; break;
        case 'h': local_usage(stdout); return 0;
        default: local_usage(stderr); return 2;
        }
    }
    if (o.n_prompts < 1 || o.threads < 1 || o.n_predict < 1 || o.n_ks < 1 || o.n_kvs < 1) {
        fprintf(stderr, "kvmesh bench local: bad option value (see --help)\n");
        return 2;
    }
    for (int i = 0; i < o.n_ks; i++)
        if (o.ks[i] < 1 || o.ks[i] > 5) {
            fprintf(stderr, "kvmesh bench local: k must be 1..5 (MMLU has 5 dev examples per subject)\n");
            return 2;
        }
    km_error err;
    km_log_level = 0;
    km_mmlu *mm = km_mmlu_load(o.mmlu, &err);
    if (!mm) {
        fprintf(stderr, "kvmesh bench local: MMLU data: %s\n", err.msg);
        return 1;
    }
    km_model *m = km_model_load(o.model, &err);
    if (!m) {
        fprintf(stderr, "kvmesh bench local: %s\n(generate it with: kvmesh gen-model --preset gemma3-270m --type q8_0 --out %s)\n",
                err.msg, o.model);
        km_mmlu_free(mm);
        return 1;
    }
    char desc[512];
    km_model_describe(m, desc, sizeof desc);
    fprintf(stderr, "kvmesh bench local: %s; %d subjects; %d prompts per config; %d thread(s)\n", desc, mm->n_subjects,
            o.n_prompts, o.threads);
    result_row rows[8];
    int n_rows = 0, rc = 0;
    for (int a = 0; a < o.n_kvs; a++)
        for (int b = 0; b < o.n_ks; b++) {
            if (run_config(m, mm, &o, o.kvs[a], o.ks[b], &rows[n_rows]) != 0) rc = 1;
            n_rows++;
        }
    if (km_mkdir_p(o.out, &err) != 0) {
        fprintf(stderr, "kvmesh bench local: %s\n", err.msg);
        rc = 1;
    } else {
        char pj[4096], pc[4096];
        snprintf(pj, sizeof pj, "%s/bench-local.json", o.out);
        snprintf(pc, sizeof pc, "%s/bench-local.csv", o.out);
        FILE *json = fopen(pj, "w"), *csv = fopen(pc, "w");
        if (!json || !csv) {
            fprintf(stderr, "kvmesh bench local: cannot write %s / %s\n", pj, pc);
            rc = 1;
        } else {
            printf("kvmesh bench local -- %s, %d thread(s), %d prompts per row, %d generated tokens\n", desc, o.threads,
                   o.n_prompts, o.n_predict);
            print_table(rows, n_rows, csv, json);
            printf("\nwrote %s and %s\n", pj, pc);
        }
        if (json) fclose(json);
        if (csv) fclose(csv);
    }
    for (int i = 0; i < n_rows; i++) free_row(&rows[i]);
    km_model_free(m);
    km_mmlu_free(mm);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fprintf(argc < 2 ? stderr : stdout, "usage: kvmesh bench local|mmlu|link|fleet [options]   (kvmesh bench <name> --help)\n"
                "  local  what the local prompt cache costs and saves\n"
                "  mmlu   the paper's experiment: shared Redis tier, low-end and high-end device\n"
                "  link   the link emulation checked against kernel shaping (root)\n"
                "  fleet  a fleet of emulated devices: isolated, fetch, forward, planner side by side\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "local")) return bench_local(argc - 1, argv + 1);
    if (!strcmp(argv[1], "link")) return cmd_bench_link(argc - 1, argv + 1);
    if (!strcmp(argv[1], "mmlu")) return cmd_bench_mmlu(argc - 1, argv + 1);
    if (!strcmp(argv[1], "fleet")) return cmd_bench_fleet(argc - 1, argv + 1);
    fprintf(stderr, "kvmesh bench: unknown benchmark '%s' (available: local, mmlu, link, fleet)\n", argv[1]);
    return 2;
}
