/* cmd_demo.c -- `kvmesh demo`: a fleet of slow nodes sharing prompt states.
 *
 * N `kvmesh node` processes on loopback, each an emulated slow device (time
 * dilation), gossip their catalogs. A stream of few-shot prompts, as the
 * assistants of a robot fleet would send them, goes to random nodes one at a
 * time: three tasks made of two instructions and three example sets, so some
 * prompts share a long prefix (instruction + examples), some only the
 * instruction, some nothing. A node that misses locally fetches the prefix
 * from the peer holding it or forwards the request there (its planner
 * decides). The same stream then runs on fresh nodes that do not share
 * (`--route isolated`), and the demo compares TTFT and checks that every
 * greedy output is identical with and without sharing (exit 1 if not). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <libgen.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "modelgen.h"
#include "nodeproc.h"
#include "util.h"

#define DEMO_DEFAULT_MODEL "models/gemma3-270m-q8_0.gguf"
#define DEMO_VOCAB_FILE "ggml-vocab-gemma-4.gguf" /* as kvmesh gen-model's default */
#define DEMO_MAX_NODES 16
#define DEMO_GOSSIP_MS 100
/* Requests arrive this far apart: a fleet's assistants do not all ask in the
 * same instant, and a new state reaches the peers' catalogs within a few
 * gossip rounds. The pause is not part of any TTFT. */
#define DEMO_GAP_MS (3 * DEMO_GOSSIP_MS)

/* ------------------------------------------------------------ the prompts */

static const char instr_maint[] =
    "You are the maintenance assistant of a small fleet of delivery robots. Answer each question with "
    "one word, the letter of the correct choice.\n\n";
static const char instr_dispatch[] =
    "You are the dispatcher of a fleet of delivery robots in a busy city centre. For each situation pick "
    "the best action and answer with its letter only.\n\n";

static const char *const ex_hardware[] = {
    "Question: A robot's battery reads 8 percent at the depot. What should it do first?\n"
    "A. Start a delivery\nB. Dock and charge\nC. Update its maps\nD. Call the owner\nAnswer: B\n\n",
    "Question: A wheel motor reports a stall twice in one minute on flat ground. What is the likely cause?\n"
    "A. Low tyre pressure\nB. A blocked wheel\nC. A full cargo bay\nD. Cold weather\nAnswer: B\n\n",
    "Question: The lidar returns no points at all while the cameras work. What should be checked first?\n"
    "A. The lidar cable and power\nB. The route planner\nC. The wifi password\nD. The cargo lock\nAnswer: A\n\n",
};
static const char *const ex_software[] = {
    "Question: After a map update, robots stop at a crossing they used to pass. What should be checked first?\n"
    "A. The new map tiles of that crossing\nB. The tyres\nC. The battery\nD. The horn\nAnswer: A\n\n",
    "Question: The position of a robot jumps by fifty metres near tall buildings. What is the likely cause?\n"
    "A. GPS reflections\nB. A flat tyre\nC. A full cargo bay\nD. A low battery\nAnswer: A\n\n",
    "Question: The robot app crashes whenever a customer opens the cargo photo. What should be collected?\n"
    "A. The app's crash log\nB. The tyre pressure\nC. The depot's address\nD. The weather report\nAnswer: A\n\n",
};
static const char *const ex_dispatch[] = {
    "Situation: A street on the planned route is closed for a market until noon.\n"
    "A. Wait at the closed street\nB. Reroute around the market\nC. Cancel the order\nD. Return to the depot\n"
    "Answer: B\n\n",
    "Situation: The customer is not home and does not answer the door bell.\n"
    "A. Leave the parcel on the street\nB. Notify the customer and hold the parcel\nC. Open the door\n"
    "D. Throw the parcel away\nAnswer: B\n\n",
    "Situation: Heavy snow is forecast for the whole afternoon.\n"
    "A. Send every robot out at once\nB. Move deliveries to the morning and keep robots docked\n"
    "C. Turn off the dashboard\nD. Ignore the forecast\nAnswer: B\n\n",
};
static const char *const q_hardware[] = {
    "Question: A robot keeps turning left on a straight corridor. Which part is most likely misaligned?\n"
    "A. The horn\nB. The wheel encoders\nC. The cargo lid\nD. The status light\nAnswer:",
    "Question: A robot's camera images are blurry every morning but fine by noon. What is the likely cause?\n"
    "A. Condensation on the lens\nB. A bad map\nC. Low battery\nD. Network delay\nAnswer:",
    "Question: A robot beeps and will not leave the dock although it is fully charged. What first?\n"
    "A. Check the dock's release latch\nB. Repaint the robot\nC. Change the route\nD. Call the customer\nAnswer:",
    "Question: One robot's range dropped by half within a week. Which part should be tested?\n"
    "A. The battery pack\nB. The speaker\nC. The cargo lock\nD. The map tiles\nAnswer:",
};
static const char *const q_software[] = {
    "Question: A robot cannot open its cargo bay after an update. What should be rolled back?\n"
    "A. The cargo lock firmware\nB. The map tiles\nC. The paint\nD. The charging schedule\nAnswer:",
    "Question: The fleet dashboard shows one robot offline for an hour at the same spot. What first?\n"
    "A. Send a technician to that spot\nB. Reboot the server\nC. Reset all robots\nD. Ignore it\nAnswer:",
    "Question: Robots report the wrong time after a software update. What is the likely cause?\n"
    "A. A time zone setting\nB. Worn tyres\nC. A loose bumper\nD. Heavy cargo\nAnswer:",
    "Question: Routes are planned through a park that robots may not enter. What should be fixed?\n"
    "A. The no-go zones of the map\nB. The wheels\nC. The battery\nD. The cargo bay\nAnswer:",
};
static const char *const q_dispatch[] = {
    "Situation: Deliveries take twice as long on rainy days.\n"
    "A. Plan with a slower safe speed on wet ground\nB. Delete the maps\nC. Drain the batteries\n"
    "D. Change the addresses\nAnswer:",
    "Situation: Three orders arrive at once for the same building.\n"
    "A. Send three robots one after another\nB. Group the orders on one robot\nC. Refuse two orders\n"
    "D. Wait until tomorrow\nAnswer:",
    "Situation: A robot is stuck behind a parked van on a narrow street.\n"
    "A. Let it wait forever\nB. Plan a new route back and around\nC. Push the van\nD. Power it off\nAnswer:",
    "Situation: A customer asks for a delivery at a time when all robots are charging.\n"
    "A. Offer the next free slot\nB. Unplug a robot at 5 percent\nC. Ignore the customer\n"
    "D. Cancel every order\nAnswer:",
};

typedef struct demo_task {
    const char *name;
    const char *instruction;
    const char *const *examples; /* 3 */
    const char *const *questions; /* 4 */
} demo_task;

/* Two tasks share the maintenance instruction (and nothing after it); the
 * dispatch task shares nothing with them. */
static const demo_task demo_tasks[] = {
    {"hardware", instr_maint, ex_hardware, q_hardware},
    {"software", instr_maint, ex_software, q_software},
    {"dispatch", instr_dispatch, ex_dispatch, q_dispatch},
};
#define N_TASKS 3
#define N_EXAMPLES 3
#define N_QUESTIONS 4

typedef struct demo_prompt {
    int task, question, node, max_tokens;
} demo_prompt;

/* splitmix64: the stream is the same for a given --seed on every machine. */
static uint64_t demo_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void make_stream(demo_prompt *s, int n, int n_nodes, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        s[i].task = (int)(demo_rand(&seed) % N_TASKS);
        s[i].question = (int)(demo_rand(&seed) % N_QUESTIONS);
        s[i].node = (int)(demo_rand(&seed) % (uint64_t)n_nodes);
        s[i].max_tokens = 1 + (int)(demo_rand(&seed) % 4);
    }
}

/* The request body: cache_segments [instruction, examples..., question]. */
static char *prompt_body(const demo_prompt *p) {
    const demo_task *t = &demo_tasks[p->task];
    json_t *segs = json_array();
    json_array_append_new(segs, json_string(t->instruction));
    for (int i = 0; i < N_EXAMPLES; i++) json_array_append_new(segs, json_string(t->examples[i]));
    json_array_append_new(segs, json_string(t->questions[p->question]));
    json_t *j = json_pack("{s:o,s:i,s:i,s:b}", "cache_segments", segs, "max_tokens", p->max_tokens, "temperature", 0,
                          "stream", 1);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

/* ------------------------------------------------------------ one run */

typedef enum { SRC_NONE, SRC_LOCAL, SRC_PEER, SRC_FORWARDED } demo_source;
static const char *const source_label[] = {"miss", "local hit", "peer hit", "forwarded"};

typedef struct demo_result {
    double ttft_ms;
    demo_source source;
    int ran_on;               /* node that computed it (-1: unknown) */
    int prompt_n, cached_n, prefilled_n;
    double prefill_ms;
    char *text;
} demo_result;

typedef struct demo_row {
    int requests, hits[4];
    double ttft_sum;
} demo_row;

typedef struct demo_opts {
    const char *model;
    int n_nodes, n_prompts;
    double slowdown;
    bool quiet, tty;
    int cols;                /* terminal width (tty) */
} demo_opts;

typedef struct demo_run {
    const char *name;        /* "with sharing", "isolated" */
    bool sharing;
    km_nodeproc *nodes[DEMO_MAX_NODES];
    demo_row rows[DEMO_MAX_NODES];
    demo_result *res;
    double wall_ms;
    double peer_bytes;       /* fetched from peers, all nodes (/metrics) */
    int drawn_lines;         /* lines of the live table on screen */
} demo_run;

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void fmt_ms(char *out, size_t cap, double ms) {
    if (ms < 10000) snprintf(out, cap, "%.0f ms", ms);
    else snprintf(out, cap, "%.1f s", ms / 1000);
}

/* The per-node table; on a terminal it is redrawn in place. */
static void table_draw(const demo_opts *o, demo_run *r, const char *status) {
    if (o->quiet) return;
    if (o->tty && r->drawn_lines > 0) printf("\033[%dA", r->drawn_lines);
    const char *el = o->tty ? "\033[K" : "";
    printf("%s  %-4s %-16s %8s %6s %6s %9s %6s %10s\n", el, "node", "address", "requests", "local", "peer",
           "forwarded", "miss", "mean TTFT");
    for (int i = 0; i < o->n_nodes; i++) {
        const demo_row *w = &r->rows[i];
        char t[32] = "-";
        if (w->requests) fmt_ms(t, sizeof t, w->ttft_sum / w->requests);
        printf("%s  %-4d %-16s %8d %6d %6d %9d %6d %10s\n", el, i + 1, r->nodes[i] ? km_nodeproc_addr(r->nodes[i]) : "-",
               w->requests, w->hits[SRC_LOCAL], w->hits[SRC_PEER], w->hits[SRC_FORWARDED], w->hits[SRC_NONE], t);
    }
    if (status) printf("%s  %.*s\n", el, o->cols > 3 ? o->cols - 3 : 200, status); /* one line: redraw counts lines */
    r->drawn_lines = o->n_nodes + 1 + (status != NULL);
    fflush(stdout);
}

static int find_node(demo_run *r, int n, const char *addr) {
    for (int i = 0; i < n; i++)
        if (r->nodes[i] && strcmp(km_nodeproc_addr(r->nodes[i]), addr) == 0) return i;
    return -1;
}

/* Send one prompt to its node and read the streamed answer. */
static int run_one(demo_run *r, int n_nodes, const demo_prompt *p, demo_result *out, km_error *err) {
    char *body = prompt_body(p);
    if (!body) return km_error_set(err, "out of memory");
    long status;
    char *resp;
    km_http_info info;
    int rc = km_http_post_json(km_nodeproc_url(r->nodes[p->node]), "/v1/completions", body, 600000, &status, &resp,
                               NULL, &info, err);
    free(body);
    if (rc != 0) return -1;
    if (status != 200) {
        km_error_set(err, "node %d answered %ld: %.300s", p->node + 1, status, resp);
        free(resp);
        return -1;
    }
    char *last = NULL;
    rc = km_sse_collect(resp, &out->text, &last, err);
    free(resp);
    if (rc != 0) return -1;
    json_t *j = last ? json_loads(last, 0, NULL) : NULL;
    free(last);
    json_t *tm = json_object_get(j, "timings");
    if (!tm) {
        json_decref(j);
        return km_error_set(err, "node %d: the stream carried no timings", p->node + 1);
    }
    const char *src = json_string_value(json_object_get(tm, "cache_source"));
    out->ttft_ms = info.ttft_ms;
    out->prompt_n = (int)json_integer_value(json_object_get(tm, "prompt_n"));
    out->cached_n = (int)json_integer_value(json_object_get(tm, "cached_n"));
    out->prefilled_n = (int)json_integer_value(json_object_get(tm, "prefilled_n"));
    out->prefill_ms = json_number_value(json_object_get(tm, "prefill_ms"));
    if (info.forwarded_to[0]) {
        out->source = SRC_FORWARDED;
        out->ran_on = find_node(r, n_nodes, info.forwarded_to);
    } else {
        out->source = src && !strcmp(src, "local") ? SRC_LOCAL : src && !strcmp(src, "peer") ? SRC_PEER : SRC_NONE;
        out->ran_on = p->node;
    }
    json_decref(j);
    return 0;
}

/* Until every node sees all the others alive (gossip converged), at most 30 s. */
static int wait_mesh(demo_run *r, int n, km_error *err) {
    for (double t0 = km_now_ms(); km_now_ms() - t0 < 30000; sleep_ms(50)) {
        int ready = 0;
        for (int i = 0; i < n; i++) {
            long st;
            char *body;
            if (km_http_get(km_nodeproc_url(r->nodes[i]), "/health", 5000, &st, &body, NULL, err) != 0) return -1;
            json_t *j = json_loads(body, 0, NULL);
            free(body);
            size_t k;
            json_t *peer;
            int alive = 0;
            json_array_foreach(json_object_get(j, "peers"), k, peer) {
                const char *s = json_string_value(json_object_get(peer, "state"));
                alive += s && !strcmp(s, "alive");
            }
            json_decref(j);
            ready += alive >= n - 1;
        }
        if (ready == n) return 0;
    }
    return km_error_set(err, "the nodes did not see each other within 30 s");
}

static void stop_nodes(demo_run *r, int n) {
    for (int i = 0; i < n; i++) km_nodeproc_terminate(r->nodes[i]); /* all at once: a node takes ~2 s to exit */
    for (int i = 0; i < n; i++) {
        if (!r->nodes[i]) continue;
        int code = km_nodeproc_stop(r->nodes[i], 10000);
        if (code != 0) fprintf(stderr, "kvmesh demo: node %d exited with status %d\n", i + 1, code);
        r->nodes[i] = NULL;
    }
}

/* Start the nodes, send the stream, scrape the metrics, stop the nodes. */
static int run_stream(const demo_opts *o, const demo_prompt *stream, demo_run *r, km_error *err) {
    char slow[32];
    snprintf(slow, sizeof slow, "%g", o->slowdown);
    char gossip[16];
    snprintf(gossip, sizeof gossip, "%d", DEMO_GOSSIP_MS);
    if (!o->quiet)
        printf("%s: starting %d node%s%s\n", r->name, o->n_nodes, o->n_nodes == 1 ? "" : "s",
               r->sharing ? "" : " (--route isolated)");
    fflush(stdout);
    for (int i = 0; i < o->n_nodes; i++) {
        const char *args[20] = {"--model", o->model, "--slowdown", slow, "--ctx", "1024", "--gossip-ms", gossip,
                                "--route", r->sharing ? "planner" : "isolated"};
        int k = 10;
        if (i > 0) { /* everyone joins through the first node */
            args[k++] = "--peers";
            args[k++] = km_nodeproc_addr(r->nodes[0]);
        }
        args[k] = NULL;
        if (!(r->nodes[i] = km_nodeproc_start(args, NULL, err))) {
            stop_nodes(r, o->n_nodes);
            return -1;
        }
    }
    if (r->sharing && wait_mesh(r, o->n_nodes, err) != 0) {
        stop_nodes(r, o->n_nodes);
        return -1;
    }
    if (o->tty) table_draw(o, r, "waiting for the first request");
    double t0 = km_now_ms();
    for (int i = 0; i < o->n_prompts; i++) {
        const demo_prompt *p = &stream[i];
        demo_result *res = &r->res[i];
        if (i > 0) sleep_ms(DEMO_GAP_MS);
        char status[256], t[32], ran[32] = "";
        if (o->tty) {
            snprintf(status, sizeof status, "request %d/%d: %s question %d -> node %d ...", i + 1, o->n_prompts,
                     demo_tasks[p->task].name, p->question + 1, p->node + 1);
            table_draw(o, r, status);
        }
        if (run_one(r, o->n_nodes, p, res, err) != 0) {
            stop_nodes(r, o->n_nodes);
            return -1;
        }
        demo_row *w = &r->rows[p->node];
        w->requests++;
        w->hits[res->source]++;
        w->ttft_sum += res->ttft_ms;
        fmt_ms(t, sizeof t, res->ttft_ms);
        if (res->source == SRC_FORWARDED && res->ran_on >= 0) snprintf(ran, sizeof ran, " to node %d", res->ran_on + 1);
        snprintf(status, sizeof status, "request %d/%d: %s question %d -> node %d: %s%s, %d/%d tokens cached, TTFT %s",
                 i + 1, o->n_prompts, demo_tasks[p->task].name, p->question + 1, p->node + 1,
                 source_label[res->source], ran, res->cached_n, res->prompt_n, t);
        if (o->tty) table_draw(o, r, status);
        else if (!o->quiet) printf("  %s\n", status), fflush(stdout);
    }
    r->wall_ms = km_now_ms() - t0 - (double)(o->n_prompts - 1) * DEMO_GAP_MS;
    if (!o->tty) table_draw(o, r, NULL);
    for (int i = 0; i < o->n_nodes; i++) {
        long st;
        char *m;
        if (km_http_get(km_nodeproc_url(r->nodes[i]), "/metrics", 5000, &st, &m, NULL, err) != 0) continue;
        double b = km_metrics_scrape(m, "kvmesh_fetched_bytes_total{source=\"peer\"}");
        if (!isnan(b)) r->peer_bytes += b;
        free(m);
    }
    stop_nodes(r, o->n_nodes);
    if (!o->quiet) printf("\n");
    return 0;
}

/* ------------------------------------------------------------ summary */

typedef struct run_sum {
    km_stats ttft;
    double ttft_total;
    int hits[4], prefilled;
    double prefill_ms;
} run_sum;

static run_sum summarize(const demo_run *r, int n) {
    run_sum s;
    memset(&s, 0, sizeof s);
    double *t = malloc(sizeof *t * (size_t)n);
    for (int i = 0; i < n; i++) {
        t[i] = r->res[i].ttft_ms;
        s.ttft_total += t[i];
        s.hits[r->res[i].source]++;
        s.prefilled += r->res[i].prefilled_n;
        s.prefill_ms += r->res[i].prefill_ms;
    }
    s.ttft = km_stats_compute(t, n);
    free(t);
    return s;
}

static void print_summary(const demo_opts *o, const demo_run *sh, const demo_run *iso, int *same) {
    run_sum a = summarize(sh, o->n_prompts), b = summarize(iso, o->n_prompts);
    *same = 0;
    for (int i = 0; i < o->n_prompts; i++) *same += strcmp(sh->res[i].text, iso->res[i].text) == 0;
    printf("%-22s %14s %14s %9s\n", "", "with sharing", "isolated", "speedup");
    printf("%-22s %11.0f ms %11.0f ms %8.1fx\n", "mean TTFT", a.ttft.mean, b.ttft.mean, b.ttft.mean / a.ttft.mean);
    printf("%-22s %11.0f ms %11.0f ms %8.1fx\n", "p50 TTFT", a.ttft.p50, b.ttft.p50, b.ttft.p50 / a.ttft.p50);
    printf("%-22s %12.1f s %12.1f s %8.1fx\n", "stream time", sh->wall_ms / 1000, iso->wall_ms / 1000,
           iso->wall_ms / sh->wall_ms);
    printf("%-22s %14d %14d\n", "tokens prefilled", a.prefilled, b.prefilled);
    printf("%-22s %11.1f MB %11.1f MB\n", "fetched from peers", sh->peer_bytes / 1e6, iso->peer_bytes / 1e6);
    printf("\n");
    printf("with sharing: %d requests, hits local %d, peer %d, forwarded %d, none %d\n", o->n_prompts,
           a.hits[SRC_LOCAL], a.hits[SRC_PEER], a.hits[SRC_FORWARDED], a.hits[SRC_NONE]);
    printf("isolated: %d requests, hits local %d, peer %d, forwarded %d, none %d\n", o->n_prompts, b.hits[SRC_LOCAL],
           b.hits[SRC_PEER], b.hits[SRC_FORWARDED], b.hits[SRC_NONE]);
    if (b.prefill_ms > 0)
        printf("emulated device: prefills %.0f tokens/s (--slowdown %g)\n", b.prefilled / (b.prefill_ms / 1000),
               o->slowdown);
    printf("speedup with sharing: %.2fx mean TTFT\n", b.ttft.mean / a.ttft.mean);
    printf("greedy outputs identical with and without sharing: %s (%d/%d)\n", *same == o->n_prompts ? "yes" : "NO", *same,
           o->n_prompts);
    fflush(stdout);
}

/* ------------------------------------------------------------ the model */

/* The default model is made on first use (a synthetic Gemma 3 270M). */
static int ensure_model(const char *path, bool is_default, km_error *err) {
    struct stat st;
    if (stat(path, &st) == 0) return 0;
    if (!is_default) return km_error_set(err, "%s: %s", path, strerror(errno));
    char vocab[4096];
    const char *dir = kvmesh_vocab_dir();
    if (!*dir) return km_error_set(err, "no vocab directory configured to make %s: set KVMESH_VOCAB_DIR", path);
    snprintf(vocab, sizeof vocab, "%s/%s", dir, DEMO_VOCAB_FILE);
    fprintf(stderr, "kvmesh demo: making the default model %s once (synthetic Gemma 3 270M, q8_0, ~300 MB)\n", path);
    char *d = strdup(path);
    int rc = d ? km_mkdir_p(dirname(d), err) : km_error_set(err, "out of memory");
    free(d);
    if (rc != 0) return -1;
    km_modelgen_params p = km_modelgen_default_params();
    p.preset = "gemma3-270m";
    p.weight_type = "q8_0";
    p.vocab_path = vocab;
    p.out_path = path;
    p.progress = 1;
    return km_modelgen_write(&p, err);
}

/* ------------------------------------------------------------ the command */

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh demo [--nodes N] [--prompts N] [--model FILE] [--slowdown K] [--seed N] [--quiet]\n"
            "\n"
            "Starts N kvmesh nodes on loopback (each an emulated slow device) that share prompt\n"
            "states, sends them a stream of few-shot prompts (3 tasks: 2 instructions, 3 example\n"
            "sets; greedy, 1-4 tokens each) one at a time to random nodes, and shows per node how\n"
            "each request was served: from its own cache, with a prefix fetched from a peer,\n"
            "forwarded to the peer holding it, or computed. Then runs the same stream on fresh\n"
            "nodes that do not share (--route isolated) and compares TTFT. Exits 1 if any greedy\n"
            "output differs between the two runs.\n"
            "\n"
            "  -n, --nodes N      nodes (default 3, at most %d)\n"
            "  -p, --prompts N    prompts in the stream (default 20)\n"
            "  -m, --model FILE   GGUF model (default %s, made on first use)\n"
            "  -s, --slowdown K   emulate devices K times slower than this machine (time dilation;\n"
            "                     default 4: 40-50 tokens/s of prefill for the default model here)\n"
            "      --seed N       the stream's random choices (default 1)\n"
            "  -q, --quiet        only the summary\n"
            "  -h, --help         this help\n",
            DEMO_MAX_NODES, DEMO_DEFAULT_MODEL);
}

int cmd_demo(int argc, char **argv) {
    demo_opts o = {.model = DEMO_DEFAULT_MODEL, .n_nodes = 3, .n_prompts = 20, .slowdown = 4};
    unsigned long long seed = 1;
    enum { O_SEED = 1000 };
    static const struct option opts[] = {
        {"nodes", required_argument, 0, 'n'},    {"prompts", required_argument, 0, 'p'},
        {"model", required_argument, 0, 'm'},    {"slowdown", required_argument, 0, 's'},
        {"seed", required_argument, 0, O_SEED},  {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    bool model_given = false;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "n:p:m:s:qh", opts, NULL)) != -1) {
        switch (ch) {
        case 'n': o.n_nodes = atoi(optarg); break;
        case 'p': o.n_prompts = atoi(optarg); break;
        case 'm': o.model = optarg, model_given = true; break;
        case 's': o.slowdown = atof(optarg); break;
        case O_SEED: seed = strtoull(optarg, NULL, 10); break;
        case 'q': o.quiet = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvmesh demo: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (o.n_nodes < 1 || o.n_nodes > DEMO_MAX_NODES || o.n_prompts < 1 || o.n_prompts > 10000 || !(o.slowdown >= 1)) {
        fprintf(stderr, "kvmesh demo: a numeric option is out of range (see --help)\n");
        return 2;
    }
    o.tty = !o.quiet && isatty(STDOUT_FILENO);
    struct winsize ws;
    o.cols = o.tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 200;
    km_error err = {{0}};
    if (ensure_model(o.model, !model_given || !strcmp(o.model, DEMO_DEFAULT_MODEL), &err) != 0) {
        fprintf(stderr, "kvmesh demo: %s\n", err.msg);
        return 1;
    }

    demo_prompt *stream = calloc((size_t)o.n_prompts, sizeof *stream);
    demo_run sh = {.name = "with sharing", .sharing = true}, iso = {.name = "isolated", .sharing = false};
    sh.res = calloc((size_t)o.n_prompts, sizeof *sh.res);
    iso.res = calloc((size_t)o.n_prompts, sizeof *iso.res);
    if (!stream || !sh.res || !iso.res) {
        fprintf(stderr, "kvmesh demo: out of memory\n");
        free(stream), free(sh.res), free(iso.res);
        return 1;
    }
    make_stream(stream, o.n_prompts, o.n_nodes, seed);
    if (!o.quiet)
        printf("kvmesh demo: %d nodes on loopback share prompt states\n"
               "model: %s, every node an emulated device %gx slower than this machine (1 thread)\n"
               "stream: %d few-shot prompts of 3 tasks (2 instructions, 3 example sets), greedy, 1-4 tokens,\n"
               "        to random nodes, one at a time, %d ms apart\n\n",
               o.n_nodes, o.model, o.slowdown, o.n_prompts, DEMO_GAP_MS);
    int rc = 0, same = 0;
    if (run_stream(&o, stream, &sh, &err) != 0 || run_stream(&o, stream, &iso, &err) != 0) {
        fprintf(stderr, "kvmesh demo: %s\n", err.msg);
        rc = 1;
    } else {
        print_summary(&o, &sh, &iso, &same);
        if (same != o.n_prompts) rc = 1;
    }
    for (int i = 0; i < o.n_prompts; i++) {
        free(sh.res[i].text);
        free(iso.res[i].text);
    }
    free(sh.res);
    free(iso.res);
    free(stream);
    return rc;
}
