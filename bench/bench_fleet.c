/* bench_fleet.c -- `kvmesh bench fleet`: a fleet of weak devices sharing
 * prompt states, four ways, side by side (issue 4, section 6).
 *
 *   fleet      --nodes `kvmesh node` processes on loopback (tools/nodeproc.h),
 *              each an emulated slow device: a CPU quota (cgroup v1 cpu
 *              controller, as root) or time dilation (`--slowdown`), both
 *              calibrated to --device-rate prefill tokens/s from this
 *              machine's one-core rate; the rate each node then reaches is
 *              measured from its answers' timings and reported
 *   links      each node's `--link bw=..,rtt=..` at every --delays value:
 *              applied by the node to the calls it makes to its peers
 *   workload   MMLU streams (--mmlu): the standard 5-shot prompt of a subject
 *              as cache_segments (instruction | each example | question),
 *              greedy, max_tokens 1; a normal mix (subjects uniform) and a
 *              skewed one (80 % of the requests from 20 % of the subjects);
 *              each request goes to its user's own device (a random node;
 *              every node is the origin of the same number of requests);
 *              --clients closed-loop clients. The stream depends on --seed
 *              and the mix only: every mode and delay gets the same one
 *   modes      isolated (no sharing), fetch (always fetch a peer's longer
 *              prefix: the paper), forward (to the peer with the longest
 *              prefix: arXiv 2606.17059), planner (kvmesh); fresh nodes with
 *              empty caches for every (mix, delay, mode)
 *   measures   per request, by the client: TTFT (streamed: the first event
 *              carrying text) and TTLT; from the answer's timings: where the
 *              reused state came from, tokens reused, which node ran it
 *              (X-Kvmesh-Forwarded-To). Per node, /metrics before and after
 *              the stream: requests completed, bytes fetched from peers, the
 *              planner's estimate-ratio histogram
 *   report     a table per (mix, delay) with ratios vs isolated, the ratios
 *              side by side, PASS/FAIL targets; bench-fleet.json, .csv and
 *              .png (gnuplot) in --out, node logs in --out/fleet-logs;
 *              progress on stderr
 *
 * Sections: constants and options | workload | devices | one run |
 * summaries | reports | command. How to read it: docs/fleet.md. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "engine.h"
#include "link.h"
#include "mmlu.h"
#include "node.h"
#include "nodeproc.h"
#include "pcache.h"
#include "util.h"

/* ------------------------------------------------------------------ constants and options */

#define FLEET_K 5            /* few-shot examples per prompt (the k=5) */
#define HOT_SUBJECT_SHARE 0.2 /* skewed mix: this share of the subjects ... */
#define HOT_REQUEST_SHARE 0.8 /* ... is asked this share of the requests */
#define MAX_NODES 16
#define MAX_DELAYS 8
#define N_MIXES 2
#define N_MODES 4
#define REQUEST_TIMEOUT_MS (20 * 60 * 1000)
#define MESH_TIMEOUT_MS 90000
#define STOP_TIMEOUT_MS 30000
#define CG_CPU "/sys/fs/cgroup/cpu"
/* A short CFS period keeps a throttled device smooth (it runs a little every
 * 20 ms rather than in 100 ms bursts); the kernel's floor is a 1 ms quota. */
#define QUOTA_PERIOD_US 20000

/* The targets, and what arXiv 2606.17059 ("paper 2") measured. */
#define TARGET_SKEW_CUT 0.40  /* planner mean TTFT >= 40 % below isolated, skewed mix, 2 ms */
#define TARGET_SKEW_DELAY 2
#define TARGET_FAR_WORSE 0.05 /* at 200 ms never more than 5 % worse than isolated */
#define TARGET_FAR_DELAY 200
#define TARGET_BUSIEST 1.5    /* busiest node <= 1.5x its fair share */
#define PAPER2_SKEW_CUT 0.226
#define PAPER2_FAR_SLOWER 2.4
#define PAPER2_BUSIEST 0.88

static const char *mix_names[N_MIXES] = {"normal", "skewed"};

typedef enum device_kind { DEV_AUTO, DEV_QUOTA, DEV_DILATE } device_kind;
static const char *device_names[] = {"auto", "quota", "dilate"};

typedef struct fleet_opts {
    const char *model, *mmlu, *out, *bw;
    int nodes, requests, clients, gossip_ms, ram_mb;
    int delays[MAX_DELAYS], n_delays;
    bool mixes[N_MIXES];
    km_route_mode modes[N_MODES];
    int n_modes;
    uint64_t seed;
    double device_rate; /* emulated prefill tokens/s */
    double slowdown;    /* > 0: this factor instead of calibrating to device_rate */
    device_kind device;
    bool quick;
} fleet_opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh bench fleet [options]\n"
            "\n"
            "A fleet of emulated weak devices (kvmesh node processes) serving MMLU few-shot\n"
            "streams, side by side in four modes: isolated (no sharing), fetch (always fetch a\n"
            "peer's prefix: the paper), forward (to the peer with the longest prefix: route-only,\n"
            "arXiv 2606.17059) and planner (kvmesh) -- fresh nodes for every (mix, delay, mode).\n"
            "Client-measured TTFT/TTLT (mean, p50, p95), hit rates by tier, bytes moved, the busiest\n"
            "node's share, the planner's estimate error, ratios vs isolated and PASS/FAIL targets;\n"
            "table on stdout, progress on stderr, bench-fleet.json/.csv/.png in --out (see\n"
            "docs/fleet.md). The default run (24 runs of 64 requests) takes about 90 minutes on a\n"
            "2-core machine (3-4 min per run); --requests, --delays, --mixes and --modes cut it.\n"
            "Exits 0 with a SKIP message when the MMLU data is missing.\n"
            "\n"
            "  --model FILE       GGUF model (default models/gemma3-270m-q8_0.gguf)\n"
            "  --nodes N          devices (default 4)\n"
            "  --requests N       requests per run (default 64)\n"
            "  --clients N        concurrent closed-loop clients (default 4)\n"
            "  --delays LIST      link round trips in ms (default 2,50,200)\n"
            "  --bw RATE          link bandwidth per direction (default 20mbit)\n"
            "  --mixes LIST       normal,skewed (default both)\n"
            "  --modes LIST       isolated,fetch,forward,planner (default all)\n"
            "  --seed N           workload seed: the same stream for every mode (default 1)\n"
            "  --device KIND      quota (cgroup v1 CPU quota per node; root), dilate (time dilation,\n"
            "                     kvmesh node --slowdown) or auto (quota where possible; default)\n"
            "  --device-rate R    emulated prefill tokens/s per device (default 80)\n"
            "  --slowdown K       devices K times slower than one core instead of --device-rate\n"
            "  --gossip-ms MS     the nodes' gossip period (default 250)\n"
            "  --ram-budget MB    each node's RAM tier (default 1024)\n"
            "  --mmlu DIR         MMLU data (default ../shared/data/mmlu)\n"
            "  --out DIR          default bench-out\n"
            "  --quick            smoke test: 8 requests, 2 clients, delay 2 ms, devices 2x slower\n"
            "                     than one core (unless given)\n"
            "  -h, --help\n");
}

/* "2,50,200" (an optional "ms" after each) into out; count, or -1. */
static int parse_delays(const char *s, int *out, int max) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 60000 || n == max) return -1;
        if (!strncmp(end, "ms", 2)) end += 2;
        if (*end && *end != ',') return -1;
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n > 0 ? n : -1;
}

static int parse_mixes(const char *s, bool *mixes) {
    char *dup = strdup(s), *save = NULL;
    int n = 0, bad = !dup;
    for (int m = 0; m < N_MIXES; m++) mixes[m] = false;
    for (char *t = dup ? strtok_r(dup, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
        int m = !strcmp(t, "normal") ? 0 : !strcmp(t, "skewed") ? 1 : -1;
        if (m < 0) bad = 1;
        else if (!mixes[m]) mixes[m] = true, n++;
    }
    free(dup);
    return bad || n == 0 ? -1 : n;
}

static int parse_modes(const char *s, km_route_mode *modes) {
    char *dup = strdup(s), *save = NULL;
    int n = 0, bad = !dup;
    for (char *t = dup ? strtok_r(dup, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
        km_route_mode m;
        if (km_route_mode_parse(t, &m) != 0) {
            bad = 1;
            continue;
        }
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= modes[i] == m;
        if (!seen && n < N_MODES) modes[n++] = m;
    }
    free(dup);
    return bad || n == 0 ? -1 : n;
}

/* How the report names a mode (the words; JSON uses --route's). */
static const char *mode_label(km_route_mode m) {
    switch (m) {
    case KM_ROUTE_ISOLATED: return "isolated";
    case KM_ROUTE_FETCH: return "fetch-only";
    case KM_ROUTE_FORWARD: return "route-only";
    case KM_ROUTE_PLANNER: return "planner";
    }
    return "?";
}

/* ------------------------------------------------------------------ workload */

/* splitmix64: the stream must be the same on every machine and libc. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static int rng_below(uint64_t *s, int n) { return (int)(rng_next(s) % (uint64_t)n); }
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

static void shuffle(uint64_t *s, int *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = rng_below(s, i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

typedef struct fleet_req {
    int subject, question, origin;
    bool hot; /* from the skewed mix's hot subjects */
    int n_tokens;
    int n_shared; /* tokens of instruction + examples: what another question of the subject shares */
    char *body; /* the JSON of the request */
} fleet_req;

typedef struct stream {
    fleet_req *reqs;
    int n, n_hot; /* n_hot: subjects of the hot set (skewed), 0 for normal */
    double mean_tokens;
    int max_tokens;
    /* What the stream allows, in prompt tokens to prefill, if every repeat
     * of a subject reused its shared prefix: repeats on the same node only
     * (the best isolated devices can do), or anywhere in the fleet (the best
     * any sharing can do); all = no reuse at all. In-flight duplicates and
     * evictions make real runs worse. */
    double tokens_all, tokens_isolated_best, tokens_shared_best;
    int n_distinct;
    char hot[512]; /* names of the hot subjects, for the report */
} stream;

static void stream_free(stream *st) {
    for (int i = 0; st->reqs && i < st->n; i++) free(st->reqs[i].body);
    free(st->reqs);
    memset(st, 0, sizeof *st);
}

/* The stream of one mix: subjects (uniform, or 80 % from a seeded hot 20 %),
 * each subject's test questions in order from a seeded offset (no question
 * repeats before its subject's list wraps), origins balanced over the nodes
 * and shuffled. Tokenized with the model to size the nodes' contexts. */
static int stream_make(const km_mmlu *mm, const km_model *model, const fleet_opts *o, int mix, stream *st,
                       km_error *err) {
    memset(st, 0, sizeof *st);
    int S = mm->n_subjects;
    uint64_t rs = o->seed * 0x100000001b3ULL + (uint64_t)mix + 1;
    int *perm = malloc((size_t)S * sizeof *perm), *next_q = calloc((size_t)S, sizeof *next_q);
    int *origin = malloc((size_t)o->requests * sizeof *origin);
    st->reqs = calloc((size_t)o->requests, sizeof *st->reqs);
    if (!perm || !next_q || !origin || !st->reqs) {
        free(perm);
        free(next_q);
        free(origin);
        free(st->reqs);
        st->reqs = NULL;
        return km_error_set(err, "out of memory");
    }
    for (int s = 0; s < S; s++) {
        perm[s] = s;
        next_q[s] = rng_below(&rs, mm->subjects[s].n_test);
    }
    shuffle(&rs, perm, S);
    if (mix == 1) {
        st->n_hot = (int)lround(HOT_SUBJECT_SHARE * S);
        if (st->n_hot < 1) st->n_hot = 1;
        size_t used = 0;
        for (int h = 0; h < st->n_hot && used + 2 < sizeof st->hot; h++)
            used += (size_t)snprintf(st->hot + used, sizeof st->hot - used, "%s%s", h ? "," : "",
                                     mm->subjects[perm[h]].name);
        if (used >= sizeof st->hot) snprintf(st->hot + sizeof st->hot - 4, 4, "...");
    }
    for (int i = 0; i < o->requests; i++) origin[i] = i % o->nodes;
    shuffle(&rs, origin, o->requests);
    double tok_sum = 0;
    int rc = 0;
    for (int i = 0; i < o->requests && rc == 0; i++) {
        fleet_req *q = &st->reqs[i];
        int s;
        if (mix == 0) s = rng_below(&rs, S);
        else if (st->n_hot == S || rng_unit(&rs) < HOT_REQUEST_SHARE) s = perm[rng_below(&rs, st->n_hot)], q->hot = true;
        else s = perm[st->n_hot + rng_below(&rs, S - st->n_hot)];
        const km_mmlu_subject *sub = &mm->subjects[s];
        q->subject = s;
        q->question = next_q[s]++ % sub->n_test;
        q->origin = origin[i];
        char *segs[FLEET_K + 2];
        int n_segs = km_mmlu_prompt_segments(sub, FLEET_K, &sub->test[q->question], segs);
        if (n_segs < 0) {
            rc = km_error_set(err, "out of memory");
            break;
        }
        json_t *arr = json_array();
        for (int k = 0; k < n_segs; k++) json_array_append_new(arr, json_string(segs[k]));
        json_t *body = json_pack("{s:o,s:i,s:f,s:b}", "cache_segments", arr, "max_tokens", 1, "temperature", 0.0,
                                 "stream", 1);
        q->body = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        int32_t *toks = NULL;
        int *ends = NULL;
        if (!q->body) rc = km_error_set(err, "out of memory");
        else if (km_tokenize_segments(model, (const char *const *)segs, n_segs, false, &toks, &q->n_tokens, &ends,
                                      err) != 0)
            rc = -1;
        else
            q->n_shared = n_segs >= 2 ? ends[n_segs - 2] : 0;
        free(toks);
        free(ends);
        for (int k = 0; k < n_segs; k++) free(segs[k]);
        tok_sum += q->n_tokens;
        if (q->n_tokens > st->max_tokens) st->max_tokens = q->n_tokens;
        st->n = i + 1;
    }
    st->mean_tokens = st->n ? tok_sum / st->n : 0;
    /* the stream's ceiling: who could have reused what, in stream order */
    bool *seen_any = calloc((size_t)S, sizeof *seen_any), *seen_node = calloc((size_t)S * (size_t)o->nodes, sizeof *seen_node);
    for (int i = 0; rc == 0 && seen_any && seen_node && i < st->n; i++) {
        const fleet_req *q = &st->reqs[i];
        int rest = q->n_tokens - q->n_shared;
        st->tokens_all += q->n_tokens;
        st->tokens_shared_best += seen_any[q->subject] ? rest : q->n_tokens;
        st->tokens_isolated_best += seen_node[q->subject * o->nodes + q->origin] ? rest : q->n_tokens;
        st->n_distinct += !seen_any[q->subject];
        seen_any[q->subject] = seen_node[q->subject * o->nodes + q->origin] = true;
    }
    free(seen_any);
    free(seen_node);
    free(perm);
    free(next_q);
    free(origin);
    if (rc != 0) stream_free(st);
    return rc;
}

/* ------------------------------------------------------------------ devices */

/* How the devices are emulated. Global: the signal handler and the atexit
 * hook remove the cgroups (async-signal-safe: rmdir of fixed paths). */
typedef struct device {
    device_kind kind;          /* DEV_QUOTA or DEV_DILATE once set up */
    double one_core_tps;       /* this machine's core, in thread CPU time */
    double factor;             /* devices are this many times slower */
    double target_tps;         /* one_core_tps / factor */
    int period_us, quota_us;   /* the CPU quota */
    char cg[MAX_NODES][96];    /* one cgroup per node slot ("" = none) */
} device;

static device g_dev;

static void cg_remove_all(void) {
    for (int i = 0; i < MAX_NODES; i++)
        if (g_dev.cg[i][0]) {
            rmdir(g_dev.cg[i]);
            g_dev.cg[i][0] = '\0';
        }
}

static void on_signal(int sig) {
    int saved = errno;
    km_nodeproc_kill_all(); /* the nodes first: a cgroup with a task in it cannot be removed */
    cg_remove_all();
    errno = saved;
    raise(sig); /* SA_RESETHAND: die of it */
}

/* Prefill rate of one core on 5-shot MMLU prompts, in this thread's CPU
 * time like the engine's dilation: a busy machine changes neither. */
static double one_core_rate(km_model *m, const km_mmlu *mm, int n_ctx, km_error *err) {
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = 1;
    km_ctx *c = km_ctx_init(m, &cp, err);
    if (!c) return -1;
    double tok = 0, ms = 0;
    for (int j = 0; j < 3; j++) { /* the first warms up */
        const km_mmlu_subject *s = &mm->subjects[j % mm->n_subjects];
        char *segs[FLEET_K + 2];
        int n = km_mmlu_prompt_segments(s, FLEET_K, &s->test[0], segs);
        if (n < 0) break;
        km_request req = {.segs = (const char *const *)segs, .n_segs = n, .segment_bounds = true,
                          .sampling = km_sampling_default(), .n_predict = 1};
        km_result r;
        double cpu0 = km_thread_cpu_ms();
        int rc = km_pcache_run(c, NULL, 0, &req, &r, err);
        double used = km_thread_cpu_ms() - cpu0;
        for (int i = 0; i < n; i++) free(segs[i]);
        if (rc != 0) break;
        if (j > 0) {
            tok += r.prefill.n_prefilled;
            ms += used;
        }
    }
    km_ctx_free(c);
    return ms > 0 ? tok / (ms / 1e3) : -1;
}

static int cg_write(const char *dir, const char *file, const char *val, km_error *err) {
    char path[160];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return km_error_set(err, "%s: %s", path, strerror(errno));
    ssize_t w = write(fd, val, strlen(val));
    int e = errno;
    close(fd);
    if (w != (ssize_t)strlen(val)) return km_error_set(err, "%s: writing %s: %s", path, val, strerror(e));
    return 0;
}

/* One cgroup per node slot with quota/period = 1/factor of a core. A node
 * joins its slot's group once it listens (model loading runs unthrottled). */
static int quota_setup(device *d, int n_nodes, km_error *err) {
    if (geteuid() != 0) return km_error_set(err, "a CPU quota needs root");
    if (access(CG_CPU "/cpu.cfs_quota_us", W_OK) != 0)
        return km_error_set(err, "no writable cgroup v1 cpu controller at " CG_CPU);
    double cores = 1.0 / d->factor;
    d->period_us = QUOTA_PERIOD_US;
    if (cores * d->period_us < 1000) d->period_us = (int)ceil(1000 / cores);
    if (d->period_us > 1000000) return km_error_set(err, "a %.0fx slowdown needs a quota under the kernel's floor", d->factor);
    d->quota_us = (int)lround(cores * d->period_us);
    for (int i = 0; i < n_nodes; i++) {
        snprintf(d->cg[i], sizeof d->cg[i], CG_CPU "/kvmesh-fleet-%d-%d", (int)getpid(), i);
        char v[32];
        if (mkdir(d->cg[i], 0755) != 0 && errno != EEXIST) {
            km_error_set(err, "%s: %s", d->cg[i], strerror(errno));
            d->cg[i][0] = '\0';
            goto fail;
        }
        snprintf(v, sizeof v, "%d", d->period_us);
        if (cg_write(d->cg[i], "cpu.cfs_period_us", v, err) != 0) goto fail;
        snprintf(v, sizeof v, "%d", d->quota_us);
        if (cg_write(d->cg[i], "cpu.cfs_quota_us", v, err) != 0) goto fail;
    }
    return 0;
fail:
    cg_remove_all();
    return -1;
}

static int quota_attach(const device *d, int slot, int pid, km_error *err) {
    char v[32];
    snprintf(v, sizeof v, "%d", pid);
    return cg_write(d->cg[slot], "cgroup.procs", v, err);
}

static void quota_attach_root(int pid) {
    char v[32];
    snprintf(v, sizeof v, "%d", pid);
    cg_write(CG_CPU, "cgroup.procs", v, NULL);
}

/* ------------------------------------------------------------------ one run */

enum { T_LOCAL, T_PEER, T_REDIS, T_NONE, N_TIERS };
static const char *tier_names[N_TIERS] = {"local", "peer", "redis", "none"};
enum { P_REUSE, P_FETCH, P_RECOMPUTE, P_FORWARD, N_PATHS };
static const char *path_names[N_PATHS] = {"reuse", "fetch", "recompute", "forward"};

typedef struct req_result {
    bool ok;
    double ttft, ttlt;        /* client-measured, ms */
    int ran_on;               /* the node that computed it */
    bool forwarded;
    int tier;                 /* where its reused state came from */
    int prompt_n, cached_n, prefilled_n;
    double queue_ms, node_ttft_ms, prefill_ms, fetched_bytes;
} req_result;

/* The planner's estimate-ratio histogram (measured / estimated TTFT). */
#define MAX_BUCKETS 24
typedef struct est_hist {
    int n_b;
    double le[MAX_BUCKETS], cum[MAX_BUCKETS]; /* cumulative, as Prometheus has them */
    double sum, count;
} est_hist;

typedef struct node_metrics {
    double completed, failed, hits[N_TIERS], fetched_peer, served, fwd_ok, fwd_failed, paths[N_PATHS];
    est_hist est[2]; /* path="local", path="forward" */
} node_metrics;

typedef struct run_result {
    bool ran;
    int mix, delay_ms;
    km_route_mode mode;
    req_result *reqs;
    int n;
    node_metrics nm[MAX_NODES]; /* over the stream: after - before */
    double wall_s;
    char error[512];
} run_result;

static double scrape0(const char *text, const char *series) {
    double v = km_metrics_scrape(text, series);
    return isnan(v) ? 0 : v;
}

static void scrape_hist(const char *text, const char *path, est_hist *h) {
    char pre[128], s[128];
    int pl = snprintf(pre, sizeof pre, "kvmesh_planner_estimate_ratio_bucket{path=\"%s\",le=\"", path);
    memset(h, 0, sizeof *h);
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, pre, (size_t)pl) && h->n_b < MAX_BUCKETS) {
            const char *v = p + pl, *sp = strchr(v, ' ');
            const char *eol = strchr(v, '\n');
            if (sp && (!eol || sp < eol)) {
                h->le[h->n_b] = !strncmp(v, "+Inf", 4) ? INFINITY : strtod(v, NULL);
                h->cum[h->n_b] = strtod(sp + 1, NULL);
                h->n_b++;
            }
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    snprintf(s, sizeof s, "kvmesh_planner_estimate_ratio_sum{path=\"%s\"}", path);
    h->sum = scrape0(text, s);
    snprintf(s, sizeof s, "kvmesh_planner_estimate_ratio_count{path=\"%s\"}", path);
    h->count = scrape0(text, s);
}

static void scrape_node(const char *text, node_metrics *m) {
    char s[128];
    memset(m, 0, sizeof *m);
    m->completed = scrape0(text, "kvmesh_requests_total{result=\"completed\"}");
    m->failed = scrape0(text, "kvmesh_requests_total{result=\"failed\"}");
    for (int t = 0; t < N_TIERS; t++) {
        snprintf(s, sizeof s, "kvmesh_cache_hits_total{tier=\"%s\"}", tier_names[t]);
        m->hits[t] = scrape0(text, s);
    }
    m->fetched_peer = scrape0(text, "kvmesh_fetched_bytes_total{source=\"peer\"}");
    m->served = scrape0(text, "kvmesh_peer_states_served_total");
    m->fwd_ok = scrape0(text, "kvmesh_forwards_total{result=\"ok\"}");
    m->fwd_failed = scrape0(text, "kvmesh_forwards_total{result=\"failed\"}");
    for (int p = 0; p < N_PATHS; p++) {
        snprintf(s, sizeof s, "kvmesh_planner_decisions_total{path=\"%s\"}", path_names[p]);
        m->paths[p] = scrape0(text, s);
    }
    scrape_hist(text, "local", &m->est[0]);
    scrape_hist(text, "forward", &m->est[1]);
}

/* a -= b, field by field (the stream's share of the counters). */
static void metrics_sub(node_metrics *a, const node_metrics *b) {
    a->completed -= b->completed;
    a->failed -= b->failed;
    for (int t = 0; t < N_TIERS; t++) a->hits[t] -= b->hits[t];
    a->fetched_peer -= b->fetched_peer;
    a->served -= b->served;
    a->fwd_ok -= b->fwd_ok;
    a->fwd_failed -= b->fwd_failed;
    for (int p = 0; p < N_PATHS; p++) a->paths[p] -= b->paths[p];
    for (int e = 0; e < 2; e++) {
        for (int i = 0; i < a->est[e].n_b && i < b->est[e].n_b; i++) a->est[e].cum[i] -= b->est[e].cum[i];
        a->est[e].sum -= b->est[e].sum;
        a->est[e].count -= b->est[e].count;
    }
}

static int scrape_all(km_nodeproc **np, int n, node_metrics *out, km_error *err) {
    for (int i = 0; i < n; i++) {
        long status;
        char *body = NULL;
        if (km_http_get(km_nodeproc_url(np[i]), "/metrics", 10000, &status, &body, NULL, err) != 0) return -1;
        if (status != 200) {
            free(body);
            return km_error_set(err, "node %d: /metrics answered %ld", i, status);
        }
        scrape_node(body, &out[i]);
        free(body);
    }
    return 0;
}

typedef struct run_ctx {
    const stream *st;
    km_nodeproc **np;
    int n_nodes;
    run_result *rr;
    atomic_int next, done, failures;
    const char *label;
    double t0;
} run_ctx;

static pthread_mutex_t progress_lock = PTHREAD_MUTEX_INITIALIZER;

static int node_by_addr(const run_ctx *x, const char *addr) {
    for (int i = 0; i < x->n_nodes; i++)
        if (!strcmp(km_nodeproc_addr(x->np[i]), addr)) return i;
    return -1;
}

static void request_failed(run_ctx *x, int i, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void request_failed(run_ctx *x, int i, const char *fmt, ...) {
    if (atomic_fetch_add(&x->failures, 1) >= 5) return; /* the first few say enough */
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&progress_lock);
    fprintf(stderr, "kvmesh bench fleet: %s: request %d failed: %s\n", x->label, i, msg);
    pthread_mutex_unlock(&progress_lock);
}

/* One streamed request to its origin; what the client saw and the timings
 * the node that ran it reported (forwarded answers carry the peer's). */
static void one_request(run_ctx *x, int i) {
    const fleet_req *q = &x->st->reqs[i];
    req_result *r = &x->rr->reqs[i];
    memset(r, 0, sizeof *r);
    r->ran_on = q->origin;
    r->tier = T_NONE;
    long status = 0;
    char *resp = NULL, *text = NULL, *last = NULL;
    km_http_info info;
    km_error err;
    if (km_http_post_json(km_nodeproc_url(x->np[q->origin]), "/v1/completions", q->body, REQUEST_TIMEOUT_MS, &status,
                          &resp, NULL, &info, &err) != 0) {
        request_failed(x, i, "%s", err.msg);
        return;
    }
    if (status != 200) {
        request_failed(x, i, "HTTP %ld: %.200s", status, resp);
        free(resp);
        return;
    }
    if (km_sse_collect(resp, &text, &last, &err) != 0 || !last) {
        request_failed(x, i, "%s", last ? err.msg : "no events in the answer");
        free(resp);
        free(text);
        free(last);
        return;
    }
    json_t *ev = json_loads(last, 0, NULL);
    json_t *t = json_object_get(ev, "timings");
    if (!json_is_object(t)) {
        request_failed(x, i, "the last event has no timings");
    } else {
        r->ok = true;
        r->ttft = info.ttft_ms;
        r->ttlt = info.total_ms;
        if (info.forwarded_to[0]) {
            r->forwarded = true;
            int k = node_by_addr(x, info.forwarded_to);
            if (k >= 0) r->ran_on = k;
        }
        const char *src = json_string_value(json_object_get(t, "cache_source"));
        for (int k = 0; src && k < N_TIERS; k++)
            if (!strcmp(src, tier_names[k])) r->tier = k;
        r->prompt_n = (int)json_integer_value(json_object_get(t, "prompt_n"));
        r->cached_n = (int)json_integer_value(json_object_get(t, "cached_n"));
        r->prefilled_n = (int)json_integer_value(json_object_get(t, "prefilled_n"));
        r->queue_ms = json_number_value(json_object_get(t, "queue_ms"));
        r->node_ttft_ms = json_number_value(json_object_get(t, "ttft_ms"));
        r->prefill_ms = json_number_value(json_object_get(t, "prefill_ms"));
        r->fetched_bytes = json_number_value(json_object_get(t, "fetched_bytes"));
    }
    json_decref(ev);
    free(resp);
    free(text);
    free(last);
}

static void *client_main(void *arg) {
    run_ctx *x = arg;
    int n = x->st->n, step = n >= 32 ? n / 8 : n >= 4 ? n / 4 : 1;
    for (int i; (i = atomic_fetch_add(&x->next, 1)) < n;) {
        one_request(x, i);
        int d = atomic_fetch_add(&x->done, 1) + 1;
        if (d % step == 0 || d == n) {
            pthread_mutex_lock(&progress_lock);
            fprintf(stderr, "    %s: %d/%d requests, %.0f s\n", x->label, d, n, (km_now_ms() - x->t0) / 1e3);
            pthread_mutex_unlock(&progress_lock);
        }
    }
    return NULL;
}

typedef struct warm_arg {
    km_nodeproc *np;
    int slot, rc;
    char msg[512];
} warm_arg;

/* A short prompt that shares nothing with MMLU: the node measures its
 * prefill rate (the planner runs requests itself until it knows it), its
 * peers learn it by gossip, and its catalog is no longer empty. */
static void *warm_main(void *arg) {
    warm_arg *w = arg;
    char body[700];
    snprintf(body, sizeof body,
             "{\"prompt\": \"Device %d of the fleet starts up: it loads its model, joins its peers and measures how "
             "fast it reads a prompt, so that its planner can estimate every path of the requests that follow. "
             "Nothing here is shared with them.\", \"max_tokens\": 1, \"temperature\": 0}",
             w->slot);
    long status = 0;
    char *resp = NULL;
    km_error err;
    w->rc = km_http_post_json(km_nodeproc_url(w->np), "/v1/completions", body, 600000, &status, &resp, NULL, NULL, &err);
    if (w->rc != 0) snprintf(w->msg, sizeof w->msg, "%s", err.msg);
    else if (status != 200) w->rc = -1, snprintf(w->msg, sizeof w->msg, "HTTP %ld: %.200s", status, resp);
    free(resp);
    return NULL;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Until every node lists every other as alive with a catalog in hand. */
static int wait_mesh(km_nodeproc **np, int n, km_error *err) {
    double t0 = km_now_ms();
    for (;;) {
        int ready = 0;
        for (int i = 0; i < n; i++) {
            long status;
            char *body = NULL;
            if (km_http_get(km_nodeproc_url(np[i]), "/health", 5000, &status, &body, NULL, err) != 0) return -1;
            json_t *h = json_loads(body, 0, NULL);
            json_t *peers = json_object_get(h, "peers");
            int seen = 0;
            for (size_t k = 0; k < json_array_size(peers); k++) {
                json_t *p = json_array_get(peers, k);
                const char *state = json_string_value(json_object_get(p, "state"));
                json_t *keys = json_object_get(p, "catalog_keys");
                if (state && !strcmp(state, "alive") && json_is_integer(keys) && json_integer_value(keys) > 0) seen++;
            }
            json_decref(h);
            free(body);
            ready += seen >= n - 1;
        }
        if (ready == n) return 0;
        if (km_now_ms() - t0 > MESH_TIMEOUT_MS)
            return km_error_set(err, "the nodes did not learn each other's catalogs within %d s", MESH_TIMEOUT_MS / 1000);
        sleep_ms(50);
    }
}

/* Start the fleet of one run: node 0, then the others with node 0 as seed. */
static int start_nodes(const fleet_opts *o, const device *d, int n_ctx, const run_result *rr, km_nodeproc **np,
                       km_error *err) {
    char link[96], gossip[16], ctx[16], ram[16], slow[32], logdir[4096], log[4200];
    snprintf(link, sizeof link, "bw=%s,rtt=%dms", o->bw, rr->delay_ms);
    snprintf(gossip, sizeof gossip, "%d", o->gossip_ms);
    snprintf(ctx, sizeof ctx, "%d", n_ctx);
    snprintf(ram, sizeof ram, "%d", o->ram_mb);
    snprintf(slow, sizeof slow, "%.4f", d->factor);
    snprintf(logdir, sizeof logdir, "%s/fleet-logs", o->out);
    if (km_mkdir_p(logdir, err) != 0) return -1;
    for (int i = 0; i < o->nodes; i++) {
        const char *args[32];
        int k = 0;
        args[k++] = "--model", args[k++] = o->model;
        args[k++] = "--route", args[k++] = km_route_mode_name(rr->mode);
        args[k++] = "--gossip-ms", args[k++] = gossip;
        args[k++] = "--link", args[k++] = link;
        args[k++] = "--parallel", args[k++] = "1";
        args[k++] = "--max-wait", args[k++] = "0"; /* the fleet measures waits (a long prompt holds a device 40-55 s) */
        args[k++] = "--threads", args[k++] = "1";
        args[k++] = "--ctx", args[k++] = ctx;
        args[k++] = "--ram-budget", args[k++] = ram;
        if (d->kind == DEV_DILATE) args[k++] = "--slowdown", args[k++] = slow;
        if (i > 0) args[k++] = "--peers", args[k++] = km_nodeproc_addr(np[0]);
        args[k] = NULL;
        snprintf(log, sizeof log, "%s/%s-%dms-%s-node%d.log", logdir, mix_names[rr->mix], rr->delay_ms,
                 km_route_mode_name(rr->mode), i);
        if (!(np[i] = km_nodeproc_start(args, log, err))) return -1;
        if (d->kind == DEV_QUOTA && quota_attach(d, i, km_nodeproc_pid(np[i]), err) != 0) return -1;
    }
    return 0;
}

/* Stop a run's nodes, all at once. A throttled node would take its quota's
 * time to shut down (free its caches, flush): it leaves its group first. */
static void stop_nodes(const device *d, km_nodeproc **np, int n) {
    for (int i = 0; i < n; i++) {
        if (!np[i] || km_nodeproc_pid(np[i]) <= 0) continue;
        if (d->kind == DEV_QUOTA) quota_attach_root(km_nodeproc_pid(np[i]));
        kill(km_nodeproc_pid(np[i]), SIGTERM);
    }
    for (int i = 0; i < n; i++) {
        if (!np[i]) continue;
        char log[4200];
        snprintf(log, sizeof log, "%s", km_nodeproc_log(np[i]));
        int rc = km_nodeproc_stop(np[i], STOP_TIMEOUT_MS);
        if (rc != 0) fprintf(stderr, "kvmesh bench fleet: node %d exited with %d (log %s)\n", i, rc, log);
        np[i] = NULL;
    }
}

/* One (mix, delay, mode): fresh nodes, warm-up, mesh formed, the stream,
 * metrics, nodes stopped. */
static int run_one(const fleet_opts *o, const device *d, const stream *st, int n_ctx, run_result *rr) {
    km_error err = {{0}};
    km_nodeproc *np[MAX_NODES] = {0};
    node_metrics before[MAX_NODES], after[MAX_NODES];
    char label[96];
    snprintf(label, sizeof label, "%s, %d ms, %s", mix_names[rr->mix], rr->delay_ms, mode_label(rr->mode));
    rr->reqs = calloc((size_t)st->n, sizeof *rr->reqs);
    rr->n = st->n;
    int rc = -1;
    double t_start = km_now_ms(), t_phase[4] = {0}; /* nodes started, warmed up, mesh formed, stream done */
    if (!rr->reqs) {
        km_error_set(&err, "out of memory");
        goto out;
    }
    if (start_nodes(o, d, n_ctx, rr, np, &err) != 0) goto out;
    t_phase[0] = km_now_ms();
    warm_arg wa[MAX_NODES];
    pthread_t wt[MAX_NODES];
    for (int i = 0; i < o->nodes; i++) {
        wa[i] = (warm_arg){.np = np[i], .slot = i};
        pthread_create(&wt[i], NULL, warm_main, &wa[i]);
    }
    bool warm_ok = true;
    for (int i = 0; i < o->nodes; i++) {
        pthread_join(wt[i], NULL);
        if (wa[i].rc != 0 && warm_ok) {
            km_error_set(&err, "warm-up of node %d: %s", i, wa[i].msg);
            warm_ok = false;
        }
    }
    t_phase[1] = km_now_ms();
    if (!warm_ok || wait_mesh(np, o->nodes, &err) != 0) goto out;
    sleep_ms(2 * o->gossip_ms); /* everyone's load and rate are fresh */
    t_phase[2] = km_now_ms();
    if (scrape_all(np, o->nodes, before, &err) != 0) goto out;

    run_ctx x = {.st = st, .np = np, .n_nodes = o->nodes, .rr = rr, .label = label, .t0 = km_now_ms()};
    pthread_t ct[64];
    int nc = o->clients < 64 ? o->clients : 64;
    for (int c = 0; c < nc; c++) pthread_create(&ct[c], NULL, client_main, &x);
    for (int c = 0; c < nc; c++) pthread_join(ct[c], NULL);
    rr->wall_s = (km_now_ms() - x.t0) / 1e3;
    t_phase[3] = km_now_ms();
    if (scrape_all(np, o->nodes, after, &err) != 0) goto out;
    for (int i = 0; i < o->nodes; i++) {
        metrics_sub(&after[i], &before[i]);
        rr->nm[i] = after[i];
    }
    rr->ran = true;
    rc = 0;
out:
    stop_nodes(d, np, o->nodes);
    if (rc != 0) {
        snprintf(rr->error, sizeof rr->error, "%s", err.msg);
        fprintf(stderr, "kvmesh bench fleet: %s: %s\n", label, err.msg);
    } else {
        fprintf(stderr, "    %s: done in %.1f s (nodes started %.1f s, warm-up %.1f s, mesh %.1f s, stream %.1f s, stop %.1f s)\n",
                label, (km_now_ms() - t_start) / 1e3, (t_phase[0] - t_start) / 1e3, (t_phase[1] - t_phase[0]) / 1e3,
                (t_phase[2] - t_phase[1]) / 1e3, (t_phase[3] - t_phase[2]) / 1e3, (km_now_ms() - t_phase[3]) / 1e3);
    }
    return rc;
}

/* ------------------------------------------------------------------ summaries */

typedef struct summary {
    int n, ok;
    km_stats ttft, ttlt;
    double tier_share[N_TIERS]; /* of ok requests, by where the reused state came from */
    double forwarded, reused_share;
    double bytes_moved, states_served;
    double per_node[MAX_NODES]; /* requests completed */
    double busiest_share, busiest_vs_fair;
    double node_tps[MAX_NODES]; /* prefill tokens/s measured on each node (0: nothing prefilled there) */
    double paths[N_PATHS];
    double metric_hits[N_TIERS]; /* kvmesh_cache_hits_total{tier}, all nodes */
    est_hist est;
    double est_median, est_within, est_mean;
    double fwd_overhead_ms; /* forwarded: client TTFT - the peer's queue + TTFT (network, relay, HTTP) */
    double wall_s;
} summary;

/* Median of a cumulative histogram (linear within its bucket). */
static double hist_quantile(const est_hist *h, double q) {
    double total = h->n_b ? h->cum[h->n_b - 1] : 0;
    if (total <= 0) return NAN;
    double want = q * total, lo = 0, prev = 0;
    for (int i = 0; i < h->n_b; i++) {
        if (h->cum[i] >= want) {
            if (isinf(h->le[i])) return lo; /* beyond the last bound: report the bound */
            double in = h->cum[i] - prev;
            return in > 0 ? lo + (h->le[i] - lo) * (want - prev) / in : h->le[i];
        }
        prev = h->cum[i];
        lo = h->le[i];
    }
    return NAN;
}

static double hist_cum_at(const est_hist *h, double le) {
    for (int i = 0; i < h->n_b; i++)
        if (fabs(h->le[i] - le) < 1e-9) return h->cum[i];
    return NAN;
}

static summary summarize(const run_result *rr, int n_nodes) {
    summary s;
    memset(&s, 0, sizeof s);
    s.n = rr->n;
    s.wall_s = rr->wall_s;
    double *ttft = calloc((size_t)rr->n + 1, sizeof(double)), *ttlt = calloc((size_t)rr->n + 1, sizeof(double));
    double tok_prompt = 0, tok_reused = 0, fwd_over = 0;
    double pre_tok[MAX_NODES] = {0}, pre_ms[MAX_NODES] = {0};
    int n_fwd = 0;
    for (int i = 0; i < rr->n && ttft && ttlt; i++) {
        const req_result *r = &rr->reqs[i];
        if (!r->ok) continue;
        ttft[s.ok] = r->ttft;
        ttlt[s.ok] = r->ttlt;
        s.ok++;
        s.tier_share[r->tier]++;
        tok_prompt += r->prompt_n;
        tok_reused += r->cached_n;
        if (r->forwarded) {
            s.forwarded++;
            fwd_over += r->ttft - (r->queue_ms + r->node_ttft_ms);
            n_fwd++;
        }
        /* the rate of real prefills (a few tokens are mostly per-call overhead) */
        if (r->prefilled_n >= 32 && r->prefill_ms > 0 && r->ran_on >= 0 && r->ran_on < MAX_NODES) {
            pre_tok[r->ran_on] += r->prefilled_n;
            pre_ms[r->ran_on] += r->prefill_ms;
        }
    }
    if (s.ok) {
        s.ttft = km_stats_compute(ttft, s.ok);
        s.ttlt = km_stats_compute(ttlt, s.ok);
        for (int t = 0; t < N_TIERS; t++) s.tier_share[t] /= s.ok;
        s.forwarded /= s.ok;
    } else {
        s.ttft.mean = s.ttft.p50 = s.ttft.p95 = s.ttlt.mean = s.ttlt.p50 = s.ttlt.p95 = NAN;
    }
    s.reused_share = tok_prompt > 0 ? tok_reused / tok_prompt : 0;
    s.fwd_overhead_ms = n_fwd ? fwd_over / n_fwd : NAN;
    double total = 0, most = -1;
    for (int i = 0; i < n_nodes; i++) {
        const node_metrics *m = &rr->nm[i];
        s.per_node[i] = m->completed;
        total += m->completed;
        if (m->completed > most) most = m->completed;
        s.bytes_moved += m->fetched_peer;
        s.states_served += m->served;
        for (int p = 0; p < N_PATHS; p++) s.paths[p] += m->paths[p];
        for (int t = 0; t < N_TIERS; t++) s.metric_hits[t] += m->hits[t];
        s.node_tps[i] = pre_ms[i] > 0 ? pre_tok[i] / (pre_ms[i] / 1e3) : 0;
        for (int e = 0; e < 2; e++) { /* both paths into one histogram (same bounds) */
            const est_hist *h = &m->est[e];
            if (s.est.n_b == 0) { /* the first histogram gives the bounds */
                s.est.n_b = h->n_b;
                memcpy(s.est.le, h->le, sizeof s.est.le);
            }
            for (int b = 0; b < h->n_b && b < s.est.n_b; b++) s.est.cum[b] += h->cum[b];
            s.est.sum += h->sum;
            s.est.count += h->count;
        }
    }
    s.busiest_share = total > 0 ? most / total : NAN;
    s.busiest_vs_fair = total > 0 ? s.busiest_share * n_nodes : NAN;
    s.est_median = hist_quantile(&s.est, 0.5);
    double c08 = hist_cum_at(&s.est, 0.8), c125 = hist_cum_at(&s.est, 1.25);
    s.est_within = s.est.count > 0 ? (c125 - c08) / s.est.count : NAN;
    s.est_mean = s.est.count > 0 ? s.est.sum / s.est.count : NAN;
    free(ttft);
    free(ttlt);
    return s;
}

/* ------------------------------------------------------------------ reports */

static json_t *jreal(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static double ratio_pct(double x, double base) { return base > 0 && isfinite(x) ? 100.0 * (x - base) / base : NAN; }

static const char *fmt_pct(char *buf, size_t cap, double pct) {
    if (isfinite(pct)) snprintf(buf, cap, "%+.1f%%", pct);
    else snprintf(buf, cap, "-");
    return buf;
}

static const char *fmt_num(char *buf, size_t cap, const char *fmt, double x) __attribute__((format(printf, 3, 0)));
static const char *fmt_num(char *buf, size_t cap, const char *fmt, double x) {
    if (isfinite(x)) snprintf(buf, cap, fmt, x);
    else snprintf(buf, cap, "-");
    return buf;
}

typedef struct verdicts {
    int checked, failed;
    json_t *list;
} verdicts;

static void verdict(verdicts *v, const char *name, bool ok, double value, double limit, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void verdict(verdicts *v, const char *name, bool ok, double value, double limit, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("  [%s] %s\n", ok ? "PASS" : "FAIL", msg);
    v->checked++;
    v->failed += !ok;
    json_array_append_new(v->list, json_pack("{s:s,s:b,s:o,s:o,s:s}", "name", name, "pass", ok, "value", jreal(value),
                                             "limit", jreal(limit), "text", msg));
}

static void not_checked(verdicts *v, const char *name, const char *why) {
    printf("  [----] %s: not checked (%s)\n", name, why);
    json_array_append_new(v->list, json_pack("{s:s,s:n,s:s}", "name", name, "pass", "text", why));
}

typedef struct results {
    run_result *runs; /* [mix][delay][mode] */
    summary *sums;
    const fleet_opts *o;
} results;

static int run_index(const fleet_opts *o, int mix, int d, int m) { return (mix * o->n_delays + d) * o->n_modes + m; }

static const summary *find_sum(const results *R, int mix, int d, km_route_mode mode) {
    const fleet_opts *o = R->o;
    if (!o->mixes[mix]) return NULL;
    for (int m = 0; m < o->n_modes; m++)
        if (o->modes[m] == mode && R->runs[run_index(o, mix, d, m)].ran) return &R->sums[run_index(o, mix, d, m)];
    return NULL;
}

static void print_block(const results *R, int mix, int d, const stream *st, FILE *csv, json_t *jruns) {
    const fleet_opts *o = R->o;
    printf("\n== %s mix, link rtt %d ms, bw %s: %d requests (%.0f prompt tokens on average), %d clients ==\n",
           mix_names[mix], o->delays[d], o->bw, st->n, st->mean_tokens, o->clients);
    if (st->tokens_isolated_best > 0)
        printf("stream: %d distinct subjects; prompt tokens to prefill at best: %.0f isolated, %.0f with sharing (%.1f %% "
               "less; %.0f without any reuse)\n",
               st->n_distinct, st->tokens_isolated_best, st->tokens_shared_best,
               100 * (1 - st->tokens_shared_best / st->tokens_isolated_best), st->tokens_all);
    printf("%-10s %5s | %8s %8s %8s %7s | %8s %8s %8s %7s | %5s %5s %5s %5s %6s | %8s | %7s %5s | %6s %5s\n", "mode",
           "ok", "TTFT avg", "p50", "p95", "vs iso", "TTLT avg", "p50", "p95", "vs iso", "local", "peer", "miss", "fwd",
           "reused", "MB moved", "busiest", "xfair", "est x", "+-25%");
    const summary *iso = find_sum(R, mix, d, KM_ROUTE_ISOLATED);
    for (int m = 0; m < o->n_modes; m++) {
        const run_result *rr = &R->runs[run_index(o, mix, d, m)];
        const summary *s = &R->sums[run_index(o, mix, d, m)];
        if (!rr->ran) {
            printf("%-10s failed: %s\n", mode_label(o->modes[m]), rr->error);
            continue;
        }
        char a[16], b[16], c[16], w[16];
        double vt = iso ? ratio_pct(s->ttft.mean, iso->ttft.mean) : NAN;
        double vl = iso ? ratio_pct(s->ttlt.mean, iso->ttlt.mean) : NAN;
        printf("%-10s %2d/%-2d | %8.0f %8.0f %8.0f %7s | %8.0f %8.0f %8.0f %7s | %4.0f%% %4.0f%% %4.0f%% %4.0f%% %5.0f%% |"
               " %8.1f | %6.0f%% %5.2f | %6s %5s\n",
               mode_label(o->modes[m]), s->ok, s->n, s->ttft.mean, s->ttft.p50, s->ttft.p95, fmt_pct(a, sizeof a, vt),
               s->ttlt.mean, s->ttlt.p50, s->ttlt.p95, fmt_pct(b, sizeof b, vl), 100 * s->tier_share[T_LOCAL],
               100 * s->tier_share[T_PEER], 100 * s->tier_share[T_NONE], 100 * s->forwarded, 100 * s->reused_share,
               s->bytes_moved / 1e6, 100 * s->busiest_share, s->busiest_vs_fair, fmt_num(c, sizeof c, "%6.2f", s->est_median),
               fmt_num(w, sizeof w, "%4.0f%%", 100 * s->est_within));
        fprintf(csv, "%s,%d,%s,%d,%d,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.2f,%.2f,%.4f,%.4f,%.4f,%.4f,%.4f,%.0f,%.0f,%.4f,"
                     "%.3f,%.0f,%.4f,%.4f,%.4f,%.3f,%.2f,",
                mix_names[mix], o->delays[d], km_route_mode_name(o->modes[m]), s->n, s->ok, s->ttft.mean, s->ttft.p50,
                s->ttft.p95, s->ttlt.mean, s->ttlt.p50, s->ttlt.p95, vt, vl, s->tier_share[T_REDIS], s->tier_share[T_LOCAL],
                s->tier_share[T_PEER], s->tier_share[T_NONE], s->forwarded, s->reused_share, s->bytes_moved,
                s->states_served, s->busiest_share, s->busiest_vs_fair, s->est.count, s->est_median, s->est_within,
                s->est_mean, s->fwd_overhead_ms, s->wall_s);
        for (int i = 0; i < o->nodes; i++) fprintf(csv, "%s%.0f", i ? ";" : "", s->per_node[i]);
        fprintf(csv, ",");
        for (int i = 0; i < o->nodes; i++) fprintf(csv, "%s%.1f", i ? ";" : "", s->node_tps[i]);
        fprintf(csv, "\n");

        json_t *per_node = json_array(), *tps = json_array(), *buckets = json_array();
        for (int i = 0; i < o->nodes; i++) {
            json_array_append_new(per_node, json_real(s->per_node[i]));
            json_array_append_new(tps, s->node_tps[i] > 0 ? json_real(s->node_tps[i]) : json_null());
        }
        for (int e = 0; e < s->est.n_b; e++)
            json_array_append_new(buckets, json_pack("{s:o,s:f}", "le", isinf(s->est.le[e]) ? json_string("+Inf")
                                                                                        : json_real(s->est.le[e]),
                                                     "cumulative", s->est.cum[e]));
        json_t *hits = json_object(), *paths = json_object(), *ttft = json_object(), *ttlt = json_object();
        json_t *mhits = json_object();
        for (int t = 0; t < N_TIERS; t++) {
            json_object_set_new(hits, tier_names[t], json_real(s->tier_share[t]));
            json_object_set_new(mhits, tier_names[t], json_real(s->metric_hits[t]));
        }
        for (int p = 0; p < N_PATHS; p++) json_object_set_new(paths, path_names[p], json_real(s->paths[p]));
        const km_stats *ks[2] = {&s->ttft, &s->ttlt};
        json_t *js[2] = {ttft, ttlt};
        for (int k = 0; k < 2; k++) {
            json_object_set_new(js[k], "mean", jreal(ks[k]->mean));
            json_object_set_new(js[k], "p50", jreal(ks[k]->p50));
            json_object_set_new(js[k], "p95", jreal(ks[k]->p95));
        }
        json_t *est = json_object();
        json_object_set_new(est, "count", json_real(s->est.count));
        json_object_set_new(est, "median", jreal(s->est_median));
        json_object_set_new(est, "within_0_8_to_1_25", jreal(s->est_within));
        json_object_set_new(est, "mean", jreal(s->est_mean));
        json_object_set_new(est, "buckets", buckets);
        json_t *j = json_object();
        json_object_set_new(j, "mix", json_string(mix_names[mix]));
        json_object_set_new(j, "rtt_ms", json_integer(o->delays[d]));
        json_object_set_new(j, "mode", json_string(km_route_mode_name(o->modes[m])));
        json_object_set_new(j, "label", json_string(mode_label(o->modes[m])));
        json_object_set_new(j, "requests", json_integer(s->n));
        json_object_set_new(j, "ok", json_integer(s->ok));
        json_object_set_new(j, "ttft_ms", ttft);
        json_object_set_new(j, "ttlt_ms", ttlt);
        json_object_set_new(j, "ttft_vs_isolated_pct", jreal(vt));
        json_object_set_new(j, "ttlt_vs_isolated_pct", jreal(vl));
        json_object_set_new(j, "hits", hits);
        json_object_set_new(j, "cache_hits_total", mhits);
        json_object_set_new(j, "forwarded", jreal(s->forwarded));
        json_object_set_new(j, "reused_token_share", jreal(s->reused_share));
        json_object_set_new(j, "bytes_moved", json_real(s->bytes_moved));
        json_object_set_new(j, "states_served", json_real(s->states_served));
        json_object_set_new(j, "busiest_share", jreal(s->busiest_share));
        json_object_set_new(j, "busiest_vs_fair", jreal(s->busiest_vs_fair));
        json_object_set_new(j, "requests_per_node", per_node);
        json_object_set_new(j, "node_prefill_tokens_per_s", tps);
        json_object_set_new(j, "planner_decisions", paths);
        json_object_set_new(j, "estimate_ratio", est);
        json_object_set_new(j, "forward_overhead_ms", jreal(s->fwd_overhead_ms));
        json_object_set_new(j, "stream_seconds", json_real(s->wall_s));
        json_array_append_new(jruns, j);
    }
    /* devices and forwards, per mode */
    for (int m = 0; m < o->n_modes; m++) {
        const run_result *rr = &R->runs[run_index(o, mix, d, m)];
        const summary *s = &R->sums[run_index(o, mix, d, m)];
        if (!rr->ran) continue;
        printf("  %-10s requests per node", mode_label(o->modes[m]));
        for (int i = 0; i < o->nodes; i++) printf(" %3.0f", s->per_node[i]);
        printf("; prefill tokens/s per node");
        for (int i = 0; i < o->nodes; i++) printf(" %5.1f", s->node_tps[i]);
        if (isfinite(s->fwd_overhead_ms)) printf("; forward overhead %.0f ms", s->fwd_overhead_ms);
        printf("; %.0f s\n", s->wall_s);
    }
}

/* The ratios of every run side by side: mean TTFT vs isolated, and the
 * busiest node's share, per mix and mode, one column per delay. */
static void print_side_by_side(const results *R) {
    const fleet_opts *o = R->o;
    for (int what = 0; what < 2; what++) {
        printf("\n== %s ==\n", what == 0 ? "mean TTFT vs isolated (negative: faster)"
                                         : "busiest node's share of the requests (fair share = 1/nodes)");
        printf("%-7s %-10s", "mix", "mode");
        for (int d = 0; d < o->n_delays; d++) printf(" %8d ms", o->delays[d]);
        printf("\n");
        for (int mix = 0; mix < N_MIXES; mix++) {
            if (!o->mixes[mix]) continue;
            for (int m = 0; m < o->n_modes; m++) {
                if (what == 0 && o->modes[m] == KM_ROUTE_ISOLATED) continue;
                printf("%-7s %-10s", mix_names[mix], mode_label(o->modes[m]));
                for (int d = 0; d < o->n_delays; d++) {
                    const summary *s = find_sum(R, mix, d, o->modes[m]), *iso = find_sum(R, mix, d, KM_ROUTE_ISOLATED);
                    char b[16];
                    if (what == 0) printf(" %11s", fmt_pct(b, sizeof b, s && iso ? ratio_pct(s->ttft.mean, iso->ttft.mean) : NAN));
                    else if (s) printf(" %10.0f%%", 100 * s->busiest_share);
                    else printf(" %11s", "-");
                }
                printf("\n");
            }
        }
    }
}

static void check_targets(const results *R, verdicts *v) {
    const fleet_opts *o = R->o;
    printf("\n== targets (paper 2, arXiv 2606.17059: %.1f %% faster on a skewed mix, %.1fx slower at high delay, "
           "%.0f %% of the requests on one of 4 nodes) ==\n",
           100 * PAPER2_SKEW_CUT, PAPER2_FAR_SLOWER, 100 * PAPER2_BUSIEST);
    int dn = -1, df = -1;
    for (int d = 0; d < o->n_delays; d++) {
        if (o->delays[d] == TARGET_SKEW_DELAY) dn = d;
        if (o->delays[d] == TARGET_FAR_DELAY) df = d;
    }
    const summary *p = dn >= 0 ? find_sum(R, 1, dn, KM_ROUTE_PLANNER) : NULL;
    const summary *i = dn >= 0 ? find_sum(R, 1, dn, KM_ROUTE_ISOLATED) : NULL;
    if (p && i) {
        double cut = 1 - p->ttft.mean / i->ttft.mean;
        verdict(v, "skewed_2ms_ttft_cut", cut >= TARGET_SKEW_CUT, 100 * cut, 100 * TARGET_SKEW_CUT,
                "skewed mix, %d ms: planner mean TTFT %.0f ms vs isolated %.0f ms: %.1f %% lower (>= %.0f %% lower; "
                "paper 2: %.1f %%)",
                TARGET_SKEW_DELAY, p->ttft.mean, i->ttft.mean, 100 * cut, 100 * TARGET_SKEW_CUT, 100 * PAPER2_SKEW_CUT);
    } else {
        not_checked(v, "skewed_2ms_ttft_cut", "needs the skewed mix at 2 ms with planner and isolated");
    }
    bool far_checked = false;
    for (int mix = 0; mix < N_MIXES && df >= 0; mix++) {
        p = find_sum(R, mix, df, KM_ROUTE_PLANNER);
        i = find_sum(R, mix, df, KM_ROUTE_ISOLATED);
        if (!p || !i) continue;
        far_checked = true;
        char name[64];
        double wt = p->ttft.mean / i->ttft.mean - 1, wl = p->ttlt.mean / i->ttlt.mean - 1;
        snprintf(name, sizeof name, "%s_200ms_ttft", mix_names[mix]);
        verdict(v, name, wt <= TARGET_FAR_WORSE, 100 * wt, 100 * TARGET_FAR_WORSE,
                "%s mix, %d ms: planner mean TTFT %.0f ms vs isolated %.0f ms: %+.1f %% (<= +%.0f %%; paper 2: %.1fx)",
                mix_names[mix], TARGET_FAR_DELAY, p->ttft.mean, i->ttft.mean, 100 * wt, 100 * TARGET_FAR_WORSE,
                PAPER2_FAR_SLOWER);
        snprintf(name, sizeof name, "%s_200ms_ttlt", mix_names[mix]);
        verdict(v, name, wl <= TARGET_FAR_WORSE, 100 * wl, 100 * TARGET_FAR_WORSE,
                "%s mix, %d ms: planner mean TTLT %.0f ms vs isolated %.0f ms: %+.1f %% (<= +%.0f %%)", mix_names[mix],
                TARGET_FAR_DELAY, p->ttlt.mean, i->ttlt.mean, 100 * wl, 100 * TARGET_FAR_WORSE);
    }
    if (!far_checked) not_checked(v, "200ms_not_worse", "needs a 200 ms delay with planner and isolated");
    bool busy_checked = false;
    for (int mix = 0; mix < N_MIXES; mix++)
        for (int d = 0; d < o->n_delays; d++) {
            p = find_sum(R, mix, d, KM_ROUTE_PLANNER);
            if (!p || !isfinite(p->busiest_vs_fair)) continue;
            busy_checked = true;
            char name[64];
            snprintf(name, sizeof name, "%s_%dms_busiest", mix_names[mix], o->delays[d]);
            verdict(v, name, p->busiest_vs_fair <= TARGET_BUSIEST, p->busiest_vs_fair, TARGET_BUSIEST,
                    "%s mix, %d ms: the planner's busiest node ran %.0f %% of the requests = %.2fx its fair share "
                    "(<= %.1fx; paper 2: %.0f %% of 4 = %.1fx)",
                    mix_names[mix], o->delays[d], 100 * p->busiest_share, p->busiest_vs_fair, TARGET_BUSIEST,
                    100 * PAPER2_BUSIEST, PAPER2_BUSIEST * 4);
        }
    if (!busy_checked) not_checked(v, "busiest_node", "needs a planner run");
}

static void write_chart(const results *R, const char *dat) {
    const fleet_opts *o = R->o;
    char gp[4096], png[4096], cmd[8400];
    snprintf(gp, sizeof gp, "%s/bench-fleet.gp", o->out);
    snprintf(png, sizeof png, "%s/bench-fleet.png", o->out);
    FILE *f = fopen(gp, "w");
    if (!f) return;
    int n_mix = o->mixes[0] + o->mixes[1];
    fprintf(f,
            "set terminal pngcairo size %d,520 font ',10' noenhanced\n"
            "set output '%s'\n"
            "set multiplot layout 1,%d title \"kvmesh bench fleet: mean TTFT by link delay\\n%d nodes at %.0f prefill "
            "tokens/s, %d requests per run, link bw %s\"\n"
            "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
            "set ylabel 'mean TTFT, s'\nset yrange [0:*]\nset grid ytics\nset key top left\nset xlabel 'link rtt'\n",
            n_mix > 1 ? 560 * n_mix : 700, png, n_mix, o->nodes, g_dev.target_tps, o->requests, o->bw);
    int block = 0;
    for (int mix = 0; mix < N_MIXES; mix++) {
        if (!o->mixes[mix]) continue;
        fprintf(f, "set title '%s mix'\nplot ", mix_names[mix]);
        for (int m = 0; m < o->n_modes; m++)
            fprintf(f, "%s'%s' index %d using %d%s title '%s'", m ? ", " : "", dat, block, m + 2,
                    m ? "" : ":xtic(1)", mode_label(o->modes[m]));
        fprintf(f, "\n");
        block++;
    }
    fprintf(f, "unset multiplot\n");
    fclose(f);
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", gp);
    FILE *p = popen(cmd, "r");
    char line[512];
    int said = 0;
    while (p && fgets(line, sizeof line, p)) {
        if (!said++) fprintf(stderr, "kvmesh bench fleet: gnuplot:\n");
        fputs(line, stderr);
    }
    int st = p ? pclose(p) : -1;
    if (st == 0) printf("wrote %s\n", png);
    else fprintf(stderr, "kvmesh bench fleet: no chart (gnuplot missing or failed; scripts/setup.sh installs gnuplot-nox)\n");
}

/* Every request of every run, for a closer look (docs/fleet.md). */
static void write_requests_csv(const results *R, const stream *streams) {
    const fleet_opts *o = R->o;
    char path[4096];
    snprintf(path, sizeof path, "%s/bench-fleet-requests.csv", o->out);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "kvmesh bench fleet: cannot write %s\n", path);
        return;
    }
    fprintf(f, "mix,rtt_ms,mode,request,subject,hot,question,origin,ran_on,forwarded,ok,cache_source,prompt_n,cached_n,"
               "prefilled_n,queue_ms,node_ttft_ms,prefill_ms,fetched_bytes,ttft_ms,ttlt_ms\n");
    for (int mix = 0; mix < N_MIXES; mix++)
        for (int d = 0; o->mixes[mix] && d < o->n_delays; d++)
            for (int m = 0; m < o->n_modes; m++) {
                const run_result *rr = &R->runs[run_index(o, mix, d, m)];
                for (int i = 0; rr->reqs && i < rr->n; i++) {
                    const req_result *r = &rr->reqs[i];
                    const fleet_req *q = &streams[mix].reqs[i];
                    fprintf(f, "%s,%d,%s,%d,%d,%d,%d,%d,%d,%d,%d,%s,%d,%d,%d,%.1f,%.1f,%.1f,%.0f,%.1f,%.1f\n",
                            mix_names[mix], o->delays[d], km_route_mode_name(o->modes[m]), i, q->subject, q->hot,
                            q->question, q->origin, r->ran_on, r->forwarded, r->ok, tier_names[r->tier], r->prompt_n,
                            r->cached_n, r->prefilled_n, r->queue_ms, r->node_ttft_ms, r->prefill_ms, r->fetched_bytes,
                            r->ttft, r->ttlt);
                }
            }
    fclose(f);
}

static int write_reports(const results *R, const stream *streams, verdicts *v) {
    const fleet_opts *o = R->o;
    char pj[4096], pc[4096], pd[4096];
    snprintf(pj, sizeof pj, "%s/bench-fleet.json", o->out);
    snprintf(pc, sizeof pc, "%s/bench-fleet.csv", o->out);
    snprintf(pd, sizeof pd, "%s/bench-fleet.dat", o->out);
    FILE *csv = fopen(pc, "w"), *dat = fopen(pd, "w");
    if (!csv || !dat) {
        fprintf(stderr, "kvmesh bench fleet: cannot write into %s\n", o->out);
        if (csv) fclose(csv);
        if (dat) fclose(dat);
        return -1;
    }
    fprintf(csv, "mix,rtt_ms,mode,requests,ok,ttft_mean_ms,ttft_p50_ms,ttft_p95_ms,ttlt_mean_ms,ttlt_p50_ms,ttlt_p95_ms,"
                 "ttft_vs_isolated_pct,ttlt_vs_isolated_pct,hit_redis,hit_local,hit_peer,miss,forwarded,reused_token_share,"
                 "bytes_moved,states_served,busiest_share,busiest_vs_fair,estimates,estimate_ratio_median,"
                 "estimate_within_0_8_1_25,estimate_ratio_mean,forward_overhead_ms,stream_s,requests_per_node,"
                 "prefill_tokens_per_s_per_node\n");
    char bw_spec[96];
    km_link_params lp = {0, 0};
    snprintf(bw_spec, sizeof bw_spec, "bw=%s", o->bw);
    km_link_parse(bw_spec, &lp, NULL); /* checked at the start */
    printf("kvmesh bench fleet -- %d nodes, %s devices at %.1f prefill tokens/s (one core: %.1f; %s), links bw %s, "
           "%d requests per run, %d clients, seed %llu\n",
           o->nodes, g_dev.kind == DEV_QUOTA ? "CPU-quota" : "time-dilated", g_dev.target_tps, g_dev.one_core_tps,
           g_dev.kind == DEV_QUOTA ? "quota" : "slowdown", o->bw, o->requests, o->clients, (unsigned long long)o->seed);
    if (g_dev.kind == DEV_QUOTA)
        printf("device: %d us of CPU per %d us period (%.1f %% of a core) per node\n", g_dev.quota_us, g_dev.period_us,
               100.0 * g_dev.quota_us / g_dev.period_us);
    else
        printf("device: kvmesh node --slowdown %.2f (compute dilated in thread CPU time)\n", g_dev.factor);
    if (o->mixes[1] && streams[1].n_hot) printf("skewed mix: %d hot subjects: %s\n", streams[1].n_hot, streams[1].hot);

    json_t *root = json_object(), *jruns = json_array();
    for (int mix = 0; mix < N_MIXES; mix++) {
        if (!o->mixes[mix]) continue;
        fprintf(dat, "# %s mix: mean TTFT (s) per mode\n", mix_names[mix]);
        for (int d = 0; d < o->n_delays; d++) {
            print_block(R, mix, d, &streams[mix], csv, jruns);
            fprintf(dat, "\"%d ms\"", o->delays[d]);
            for (int m = 0; m < o->n_modes; m++) {
                const summary *s = find_sum(R, mix, d, o->modes[m]);
                fprintf(dat, " %.4f", s && isfinite(s->ttft.mean) ? s->ttft.mean / 1e3 : NAN);
            }
            fprintf(dat, "\n");
        }
        fprintf(dat, "\n\n");
    }
    fclose(dat);
    fclose(csv);
    write_requests_csv(R, streams);
    print_side_by_side(R);
    v->list = json_array();
    check_targets(R, v);
    printf("\ntargets: %d checked, %d failed\n", v->checked, v->failed);

    json_t *delays = json_array(), *mixes = json_array(), *modes = json_array(), *jstreams = json_array();
    for (int d = 0; d < o->n_delays; d++) json_array_append_new(delays, json_integer(o->delays[d]));
    for (int mix = 0; mix < N_MIXES; mix++) {
        if (!o->mixes[mix]) continue;
        json_array_append_new(mixes, json_string(mix_names[mix]));
        const stream *st = &streams[mix];
        json_array_append_new(jstreams, json_pack("{s:s,s:i,s:f,s:i,s:i,s:s,s:i,s:f,s:f,s:f}", "mix", mix_names[mix],
                                                  "requests", st->n, "mean_prompt_tokens", st->mean_tokens,
                                                  "max_prompt_tokens", st->max_tokens, "hot_subjects", st->n_hot, "hot",
                                                  st->hot, "distinct_subjects", st->n_distinct, "prefill_tokens_no_reuse",
                                                  st->tokens_all, "prefill_tokens_isolated_best",
                                                  st->tokens_isolated_best, "prefill_tokens_shared_best",
                                                  st->tokens_shared_best));
    }
    for (int m = 0; m < o->n_modes; m++) json_array_append_new(modes, json_string(km_route_mode_name(o->modes[m])));
    json_object_set_new(root, "bench", json_string("fleet"));
    json_object_set_new(root, "model", json_string(o->model));
    json_object_set_new(root, "nodes", json_integer(o->nodes));
    json_object_set_new(root, "requests_per_run", json_integer(o->requests));
    json_object_set_new(root, "clients", json_integer(o->clients));
    json_object_set_new(root, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(root, "few_shot_k", json_integer(FLEET_K));
    json_object_set_new(root, "link_bw", json_string(o->bw));
    json_object_set_new(root, "link_bw_bits_per_s", jreal(lp.bw_bps));
    json_object_set_new(root, "delays_ms", delays);
    json_object_set_new(root, "mixes", mixes);
    json_object_set_new(root, "modes", modes);
    json_object_set_new(root, "streams", jstreams);
    json_object_set_new(root, "device",
                        json_pack("{s:s,s:f,s:f,s:f,s:i,s:i}", "emulation", g_dev.kind == DEV_QUOTA ? "quota" : "dilation",
                                  "one_core_tokens_per_s", g_dev.one_core_tps, "slowdown", g_dev.factor,
                                  "target_tokens_per_s", g_dev.target_tps, "quota_us",
                                  g_dev.kind == DEV_QUOTA ? g_dev.quota_us : 0, "period_us",
                                  g_dev.kind == DEV_QUOTA ? g_dev.period_us : 0));
    json_object_set_new(root, "gossip_ms", json_integer(o->gossip_ms));
    json_object_set_new(root, "runs", jruns);
    json_object_set_new(root, "targets", v->list);
    json_object_set_new(root, "targets_checked", json_integer(v->checked));
    json_object_set_new(root, "targets_failed", json_integer(v->failed));
    int rc = json_dump_file(root, pj, JSON_INDENT(1) | JSON_REAL_PRECISION(6));
    json_decref(root);
    if (rc != 0) {
        fprintf(stderr, "kvmesh bench fleet: cannot write %s\n", pj);
        return -1;
    }
    write_chart(R, pd);
    printf("wrote %s and %s\n", pj, pc);
    return 0;
}

/* ------------------------------------------------------------------ command */

int cmd_bench_fleet(int argc, char **argv) {
    fleet_opts o = {.model = "models/gemma3-270m-q8_0.gguf", .mmlu = "../shared/data/mmlu", .out = "bench-out",
                    .bw = "20mbit", .nodes = 4, .requests = 64, .clients = 4, .gossip_ms = 250, .ram_mb = 1024,
                    .delays = {2, 50, 200}, .n_delays = 3, .mixes = {true, true},
                    .modes = {KM_ROUTE_ISOLATED, KM_ROUTE_FETCH, KM_ROUTE_FORWARD, KM_ROUTE_PLANNER}, .n_modes = 4,
                    .seed = 1, .device_rate = 80, .device = DEV_AUTO};
    bool set_requests = false, set_delays = false, set_clients = false, set_device = false;
    enum { O_MODEL = 1000, O_NODES, O_REQ, O_CLIENTS, O_DELAYS, O_BW, O_MIXES, O_MODES, O_SEED, O_DEVICE, O_RATE,
           O_SLOW, O_GOSSIP, O_RAM, O_MMLU, O_OUT, O_QUICK };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},   {"nodes", required_argument, 0, O_NODES},
        {"requests", required_argument, 0, O_REQ},  {"clients", required_argument, 0, O_CLIENTS},
        {"delays", required_argument, 0, O_DELAYS}, {"bw", required_argument, 0, O_BW},
        {"mixes", required_argument, 0, O_MIXES},   {"modes", required_argument, 0, O_MODES},
        {"seed", required_argument, 0, O_SEED},     {"device", required_argument, 0, O_DEVICE},
        {"device-rate", required_argument, 0, O_RATE}, {"slowdown", required_argument, 0, O_SLOW},
        {"gossip-ms", required_argument, 0, O_GOSSIP}, {"ram-budget", required_argument, 0, O_RAM},
        {"mmlu", required_argument, 0, O_MMLU},     {"out", required_argument, 0, O_OUT},
        {"quick", no_argument, 0, O_QUICK},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_MODEL: o.model = optarg; break;
        case O_NODES: o.nodes = atoi(optarg); break;
        case O_REQ: o.requests = atoi(optarg), set_requests = true; break;
        case O_CLIENTS: o.clients = atoi(optarg), set_clients = true; break;
        case O_DELAYS:
            if ((o.n_delays = parse_delays(optarg, o.delays, MAX_DELAYS)) < 0) {
                fprintf(stderr, "kvmesh bench fleet: --delays takes up to %d round trips in ms, e.g. 2,50,200\n", MAX_DELAYS);
                return 2;
            }
            set_delays = true;
            break;
        case O_BW: o.bw = optarg; break;
        case O_MIXES:
            if (parse_mixes(optarg, o.mixes) < 0) {
                fprintf(stderr, "kvmesh bench fleet: --mixes takes normal and/or skewed, not '%s'\n", optarg);
                return 2;
            }
            break;
        case O_MODES:
            if ((o.n_modes = parse_modes(optarg, o.modes)) < 0) {
                fprintf(stderr, "kvmesh bench fleet: --modes takes isolated, fetch, forward, planner, not '%s'\n", optarg);
                return 2;
            }
            break;
        case O_SEED: o.seed = strtoull(optarg, NULL, 10); break;
        case O_DEVICE: {
            int k = -1;
            for (int i = 0; i < 3; i++)
                if (!strcmp(optarg, device_names[i])) k = i;
            if (k < 0) {
                fprintf(stderr, "kvmesh bench fleet: --device must be quota, dilate or auto, not '%s'\n", optarg);
                return 2;
            }
            o.device = (device_kind)k;
            break;
        }
        case O_RATE: o.device_rate = atof(optarg), set_device = true; break;
        case O_SLOW: o.slowdown = atof(optarg), set_device = true; break;
        case O_GOSSIP: o.gossip_ms = atoi(optarg); break;
        case O_RAM: o.ram_mb = atoi(optarg); break;
        case O_MMLU: o.mmlu = optarg; break;
        case O_OUT: o.out = optarg; break;
        case O_QUICK: o.quick = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvmesh bench fleet: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (o.quick) { /* a smoke test: every mode and mix, little of each */
        if (!set_requests) o.requests = 8;
        if (!set_clients) o.clients = 2;
        if (!set_delays) o.n_delays = 1, o.delays[0] = 2;
        if (!set_device) o.slowdown = 2;
    }
    km_error err = {{0}};
    km_link_params lp;
    char bw_spec[96];
    snprintf(bw_spec, sizeof bw_spec, "bw=%s", o.bw);
    if (o.nodes < 2 || o.nodes > MAX_NODES || o.requests < 1 || o.clients < 1 || o.clients > 64 || o.gossip_ms < 10 ||
        o.ram_mb < 16 || !(o.device_rate > 0) || o.slowdown < 0 || (o.slowdown > 0 && o.slowdown < 1)) {
        fprintf(stderr, "kvmesh bench fleet: an option is out of range (see --help)\n");
        return 2;
    }
    if (km_link_parse(bw_spec, &lp, &err) != 0 || strchr(o.bw, ',')) {
        fprintf(stderr, "kvmesh bench fleet: --bw: %s\n", err.msg[0] ? err.msg : "one rate, e.g. 20mbit");
        return 2;
    }
    struct stat sb;
    if (stat(o.mmlu, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        printf("kvmesh bench fleet: SKIP: no MMLU data at %s (the bench reads MMLU's dev/ and test/ CSV files in place; "
               "give --mmlu DIR)\n", o.mmlu);
        return 0;
    }
    km_log_level = 0;
    km_mmlu *mm = km_mmlu_load(o.mmlu, &err);
    if (!mm) {
        fprintf(stderr, "kvmesh bench fleet: MMLU data: %s\n", err.msg);
        return 1;
    }
    km_engine_init();
    km_model *model = km_model_load(o.model, &err);
    if (!model) {
        fprintf(stderr, "kvmesh bench fleet: %s\n(make it once with: kvmesh gen-model --preset gemma3-270m --type q8_0 --out %s)\n",
                err.msg, o.model);
        km_mmlu_free(mm);
        return 1;
    }
    if (km_mkdir_p(o.out, &err) != 0) {
        fprintf(stderr, "kvmesh bench fleet: %s\n", err.msg);
        km_model_free(model);
        km_mmlu_free(mm);
        return 1;
    }

    /* Ctrl-C: kill the nodes and remove the cgroups (nodeproc's own handler
     * would only do the first) */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    atexit(cg_remove_all);

    /* the workload: one stream per mix, the same for every mode and delay */
    stream streams[N_MIXES];
    memset(streams, 0, sizeof streams);
    int longest = 0, rc = 0;
    for (int mix = 0; mix < N_MIXES && rc == 0; mix++) {
        if (!o.mixes[mix]) continue;
        if (stream_make(mm, model, &o, mix, &streams[mix], &err) != 0) {
            fprintf(stderr, "kvmesh bench fleet: %s stream: %s\n", mix_names[mix], err.msg);
            rc = 1;
        } else if (streams[mix].max_tokens > longest) {
            longest = streams[mix].max_tokens;
        }
    }
    int n_ctx = (longest + 64 + 255) / 256 * 256;
    if (n_ctx < 1024) n_ctx = 1024;

    /* the devices: calibrate, then quota or dilation */
    memset(&g_dev, 0, sizeof g_dev);
    if (rc == 0) {
        fprintf(stderr, "kvmesh bench fleet: measuring one core's prefill rate ...\n");
        g_dev.one_core_tps = one_core_rate(model, mm, n_ctx, &err);
        if (g_dev.one_core_tps <= 0) {
            fprintf(stderr, "kvmesh bench fleet: calibration failed: %s\n", err.msg);
            rc = 1;
        }
    }
    km_model_free(model);
    km_mmlu_free(mm);
    if (rc == 0) {
        g_dev.factor = o.slowdown > 0 ? o.slowdown : g_dev.one_core_tps / o.device_rate;
        if (g_dev.factor < 1) {
            fprintf(stderr, "kvmesh bench fleet: one core prefills %.1f tokens/s, less than --device-rate %.1f: "
                            "devices run at full speed\n", g_dev.one_core_tps, o.device_rate);
            g_dev.factor = 1;
        }
        g_dev.target_tps = g_dev.one_core_tps / g_dev.factor;
        g_dev.kind = o.device == DEV_DILATE ? DEV_DILATE : DEV_QUOTA;
        if (g_dev.kind == DEV_QUOTA && quota_setup(&g_dev, o.nodes, &err) != 0) {
            if (o.device == DEV_QUOTA) {
                fprintf(stderr, "kvmesh bench fleet: --device quota: %s\n", err.msg);
                rc = 1;
            } else {
                fprintf(stderr, "kvmesh bench fleet: no CPU quota (%s): devices are time-dilated instead\n", err.msg);
                g_dev.kind = DEV_DILATE;
            }
        }
    }
    int n_runs = (o.mixes[0] + o.mixes[1]) * o.n_delays * o.n_modes;
    results R = {.o = &o};
    R.runs = calloc((size_t)N_MIXES * o.n_delays * o.n_modes, sizeof *R.runs);
    R.sums = calloc((size_t)N_MIXES * o.n_delays * o.n_modes, sizeof *R.sums);
    if (rc == 0 && (!R.runs || !R.sums)) {
        fprintf(stderr, "kvmesh bench fleet: out of memory\n");
        rc = 1;
    }
    if (rc == 0) {
        fprintf(stderr,
                "kvmesh bench fleet: one core %.1f tokens/s; devices %.2fx slower = %.1f tokens/s (%s); %d runs of %d "
                "requests (%d nodes, %d clients), contexts of %d tokens\n",
                g_dev.one_core_tps, g_dev.factor, g_dev.target_tps,
                g_dev.kind == DEV_QUOTA ? "CPU quota" : "time dilation", n_runs, o.requests, o.nodes, o.clients, n_ctx);
        int k = 0, failed = 0;
        double t0 = km_now_ms();
        for (int mix = 0; mix < N_MIXES; mix++) {
            if (!o.mixes[mix]) continue;
            for (int d = 0; d < o.n_delays; d++)
                for (int m = 0; m < o.n_modes; m++) {
                    run_result *rr = &R.runs[run_index(&o, mix, d, m)];
                    rr->mix = mix;
                    rr->delay_ms = o.delays[d];
                    rr->mode = o.modes[m];
                    fprintf(stderr, "  [%d/%d] %s mix, rtt %d ms, %s (%.0f s so far)\n", ++k, n_runs, mix_names[mix],
                            o.delays[d], mode_label(o.modes[m]), (km_now_ms() - t0) / 1e3);
                    if (run_one(&o, &g_dev, &streams[mix], n_ctx, rr) != 0) failed++;
                    R.sums[run_index(&o, mix, d, m)] = summarize(rr, o.nodes);
                }
        }
        fprintf(stderr, "kvmesh bench fleet: %d runs in %.1f min%s\n", n_runs, (km_now_ms() - t0) / 60e3,
                failed ? " (some failed: see above)" : "");
        verdicts v = {0, 0, NULL};
        if (write_reports(&R, streams, &v) != 0 || failed) rc = 1;
    }
    for (int i = 0; R.runs && i < N_MIXES * o.n_delays * o.n_modes; i++) free(R.runs[i].reqs);
    free(R.runs);
    free(R.sums);
    for (int mix = 0; mix < N_MIXES; mix++) stream_free(&streams[mix]);
    for (int tries = 0; tries < 50; tries++) { /* a node just reaped may take a moment to leave its group */
        bool busy = false;
        for (int i = 0; i < MAX_NODES; i++)
            if (g_dev.cg[i][0] && rmdir(g_dev.cg[i]) != 0 && errno == EBUSY) busy = true;
            else g_dev.cg[i][0] = '\0';
        if (!busy) break;
        sleep_ms(20);
    }
    return rc;
}
