/* cmd_demo.c -- `kvmesh demo`: the local prompt cache at work, cold vs cached.
 *
 * A stream of few-shot prompts that share an instruction and three worked
 * examples, as an assistant on a fleet would see them. Each prompt runs twice
 * side by side: once with no cache (the baseline), once through the prompt
 * cache. The first cached request misses and stores the shared parts; the
 * following ones reuse them; the last repeats the first prompt (a full hit).
 * Greedy outputs must be identical either way; the demo checks it. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "engine.h"
#include "pcache.h"
#include "store.h"
#include "util.h"

static const char *demo_instruction =
    "You are the maintenance assistant of a small fleet of delivery robots. Answer each question with "
    "one word, the letter of the correct choice.\n\n";
static const char *demo_examples[3] = {
    "Question: A robot's battery reads 8 percent at the depot. What should it do first?\n"
    "A. Start a delivery\nB. Dock and charge\nC. Update its maps\nD. Call the owner\nAnswer: B\n\n",
    "Question: A wheel motor reports a stall twice in one minute on flat ground. What is the likely cause?\n"
    "A. Low tyre pressure\nB. A blocked wheel\nC. A full cargo bay\nD. Cold weather\nAnswer: B\n\n",
    "Question: The lidar returns no points at all while the cameras work. What should be checked first?\n"
    "A. The lidar cable and power\nB. The route planner\nC. The wifi password\nD. The cargo lock\nAnswer: A\n\n",
};
static const char *demo_questions[] = {
    "Question: A robot keeps turning left on a straight corridor. Which part is most likely misaligned?\n"
    "A. The horn\nB. The wheel encoders\nC. The cargo lid\nD. The status light\nAnswer:",
    "Question: Deliveries take twice as long on rainy days. What is the most likely reason?\n"
    "A. Slower safe speed on wet ground\nB. Broken maps\nC. Empty batteries\nD. Wrong addresses\nAnswer:",
    "Question: A robot cannot open its cargo bay after an update. What should be rolled back?\n"
    "A. The cargo lock firmware\nB. The map tiles\nC. The paint\nD. The charging schedule\nAnswer:",
    "Question: The fleet dashboard shows one robot offline for an hour at the same spot. What first?\n"
    "A. Send a technician to that spot\nB. Reboot the server\nC. Reset all robots\nD. Ignore it\nAnswer:",
    "Question: A robot's camera images are blurry every morning but fine by noon. What is the likely cause?\n"
    "A. Condensation on the lens\nB. A bad map\nC. Low battery\nD. Network delay\nAnswer:",
};

typedef struct demo_text {
    km_model *m;
    char text[512];
    size_t len;
} demo_text;

static int demo_on_token(void *ud, int32_t tok) {
    demo_text *d = ud;
    char piece[128];
    int n = km_token_piece(d->m, tok, piece, sizeof piece);
    if (d->len + (size_t)n < sizeof d->text) {
        memcpy(d->text + d->len, piece, (size_t)n);
        d->len += (size_t)n;
        d->text[d->len] = 0;
    }
    return 0;
}

/* One request; returns TTFT in ms (or -1) and fills text. */
static double demo_request(km_ctx *c, km_store *store, const char **segs, int n_segs, int n_predict, km_prefill_report *rep,
                           char *text, size_t text_len) {
    demo_text d = {km_ctx_model(c), "", 0};
    km_request req = {.segs = segs, .n_segs = n_segs, .segment_bounds = true, .sampling = km_sampling_default(),
                      .n_predict = n_predict, .on_token = demo_on_token, .ud = &d};
    km_result res;
    km_error err;
    if (km_pcache_run(c, store, 0, &req, &res, &err) != 0) {
        fprintf(stderr, "kvmesh demo: %s\n", err.msg);
        return -1;
    }
    *rep = res.prefill;
    snprintf(text, text_len, "%s", d.text);
    return res.ttft_ms;
}

int cmd_demo(int argc, char **argv) {
    const char *model_path = "models/gemma3-270m-q8_0.gguf";
    int threads = 1, n_predict = 4;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"threads", required_argument, 0, 't'},
                                         {"n-predict", required_argument, 0, 'n'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "m:t:n:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model_path = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'n': n_predict = atoi(optarg); break;
        case 'h':
            printf("usage: kvmesh demo [--model FILE] [--threads N] [-n N]\n\n"
                   "Runs a stream of few-shot prompts sharing an instruction and examples, each once\n"
                   "without cache and once through the prompt cache (RAM tier), and compares TTFT.\n"
                   "Default model: %s (make it with: kvmesh gen-model --preset gemma3-270m --type q8_0\n"
                   "--out %s).\n",
                   model_path, model_path);
            return 0;
        default: return 2;
        }
    }
    if (threads < 1 || n_predict < 1) {
        fprintf(stderr, "kvmesh demo: bad option value\n");
        return 2;
    }
    km_log_level = 0;
    km_error err;
    km_model *m = km_model_load(model_path, &err);
    if (!m) {
        fprintf(stderr, "kvmesh demo: %s\n", err.msg);
        return 1;
    }
    km_ctx_params cp = km_ctx_default_params();
    cp.n_threads = threads;
    km_ctx *c = km_ctx_init(m, &cp, &err);
    km_store_params sp = km_store_default_params();
    km_store *store = c ? km_store_open(&sp, &err) : NULL;
    if (!c || !store) {
        fprintf(stderr, "kvmesh demo: %s\n", err.msg);
        km_ctx_free(c);
        km_model_free(m);
        return 1;
    }
    char desc[512];
    km_model_describe(m, desc, sizeof desc);
    printf("kvmesh demo: local prompt cache\nmodel: %s\nthreads: %d\n\n", desc, threads);
    printf("%-4s %-28s %6s %7s %8s | %10s %10s %8s  %s\n", "req", "prompt", "tokens", "reused", "prefill",
           "TTFT cold", "TTFT cache", "speedup", "same output");
    int n_q = (int)(sizeof demo_questions / sizeof *demo_questions);
    double sum_cold = 0, sum_cache = 0;
    int all_same = 1, rc = 0;
    for (int r = 0; r <= n_q; r++) {
        int qi = r < n_q ? r : 0; /* the last request repeats the first: a full hit */
        const char *segs[5] = {demo_instruction, demo_examples[0], demo_examples[1], demo_examples[2], demo_questions[qi]};
        km_prefill_report rc_cold, rc_cache;
        char t_cold[512], t_cache[512];
        double cold = demo_request(c, NULL, segs, 5, n_predict, &rc_cold, t_cold, sizeof t_cold);
        double cached = demo_request(c, store, segs, 5, n_predict, &rc_cache, t_cache, sizeof t_cache);
        if (cold < 0 || cached < 0) {
            rc = 1;
            break;
        }
        int same = strcmp(t_cold, t_cache) == 0;
        all_same &= same;
        sum_cold += cold;
        sum_cache += cached;
        char label[64];
        snprintf(label, sizeof label, "question %d%s", qi + 1,
                 rc_cache.hit_index < 0 ? " (miss)" : rc_cache.n_reused == rc_cache.n_prompt - 1 ? " (full hit)" : " (examples hit)");
        printf("%-4d %-28s %6d %7d %8d | %8.1f ms %7.1f ms %7.1fx  %s\n", r + 1, label, rc_cache.n_prompt,
               rc_cache.n_reused, rc_cache.n_prefilled, cold, cached, cold / cached, same ? "yes" : "NO");
        fflush(stdout);
    }
    if (rc == 0) {
        km_store_stats st = km_store_get_stats(store);
        printf("\nmean TTFT: %.1f ms without cache, %.1f ms with cache (%.1fx faster); %llu states cached, %.1f MB in RAM\n",
               sum_cold / (n_q + 1), sum_cache / (n_q + 1), sum_cold / sum_cache, (unsigned long long)st.ram_entries,
               st.ram_bytes / 1e6);
        printf("greedy outputs identical with and without cache: %s\n", all_same ? "yes" : "NO");
        if (!all_same) rc = 1;
    }
    km_store_close(store);
    km_ctx_free(c);
    km_model_free(m);
    return rc;
}
