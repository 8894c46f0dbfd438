/* cmd_run.c -- `kvmesh run`: one prompt through the local prompt cache. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "engine.h"
#include "pcache.h"
#include "peerauth.h"
#include "prefix.h"
#include "store.h"
#include "util.h"

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh run --model FILE (--prompt TEXT | --prompt-file FILE) [options]\n"
            "\n"
            "Runs a prompt, reusing the longest cached prefix state and caching the new ones.\n"
            "Prints the generated text on stdout and one timing line on stderr.\n"
            "\n"
            "  -m, --model FILE        GGUF model\n"
            "  -p, --prompt TEXT       prompt text\n"
            "  -f, --prompt-file FILE  read the prompt from FILE ('-' = stdin)\n"
            "      --segment-sep STR   cut the prompt into cache segments after each STR\n"
            "                          (escapes \\n \\t \\\\ understood; e.g. '\\n\\n')\n"
            "      --block N           without segments, cache every N tokens (default 256; 0 = off)\n"
            "      --cache-dir DIR     disk tier of the state cache\n"
            "                          (default $XDG_CACHE_HOME/kvmesh/states or ~/.cache/kvmesh/states)\n"
            "      --no-cache          neither read nor write cached states\n"
            "      --ram-budget MB     RAM tier size (default 256)\n"
            "      --disk-budget MB    disk tier size: least recently used states go first\n"
            "                          (default 4096; 0 = unlimited)\n"
            "      --salt STR          separate key space (default none)\n"
            "      --store URL         shared tier: redis://[user:password@]host:port[/db]\n"
            "      --store-secret-file F  secret of the shared tier (>= 16 bytes, mode 600): states\n"
            "                          uploaded are MAC'd with it, states fetched must be (without\n"
            "                          it the tier is trusted as is; see docs/security.md)\n"
            "      --store-ttl S       expiry of states uploaded to the shared tier (default none)\n"
            "      --store-timeout MS  I/O timeout of shared-tier calls (default 2000; connect: 500)\n"
            "      --catalog-capacity N, --catalog-error P\n"
            "                          local catalog copy sizing (default 100000 keys, 0.01); must\n"
            "                          match what `kvmesh catalog rebuild` used to load its master\n"
            "      --link SPEC         emulate the link to the shared tier, e.g. bw=20mbit,rtt=5ms\n"
            "      --slowdown K        emulate a K times slower device (time dilation of compute)\n"
            "  -n, --n-predict N       tokens to generate (default 32)\n"
            "      --temp T            temperature (default 0 = greedy)\n"
            "      --seed S            sampling seed (default 0)\n"
            "      --top-k K           (default 40)   --top-p P   (default 0.95)\n"
            "  -t, --threads N         compute threads (default 1)\n"
            "      --kv-type TYPE      f16 (default) or q8_0 (uses flash attention)\n"
            "      --flash-attn MODE   auto (default), on, off\n"
            "      --ctx N             context size in tokens (default 4096)\n"
            "      --batch N           max tokens per decode call (default 512)\n"
            "  -v, --verbose           more logs (-vv: llama.cpp's too)\n"
            "  -q, --quiet             no timing line\n"
            "  -h, --help              this help\n");
}

/* Interpret \n, \t, \\ in a separator given on the command line. */
static char *unescape(const char *s) {
    char *out = malloc(strlen(s) + 1), *o = out;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s == 'r' ? '\r' : *s;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return out;
}

/* Split text after each occurrence of sep (the separator stays with the segment
 * it ends). Returns the count; *out holds malloc'd strings. */
static int split_segments(const char *text, const char *sep, char ***out) {
    int cap = 8, n = 0;
    char **v = malloc((size_t)cap * sizeof *v);
    size_t sl = sep && *sep ? strlen(sep) : 0;
    const char *p = text;
    while (*p) {
        const char *q = sl ? strstr(p, sep) : NULL;
        size_t len = q ? (size_t)(q - p) + sl : strlen(p);
        if (n == cap) v = realloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[n++] = strndup(p, len);
        p += len;
    }
    *out = v;
    return n;
}

static int print_token(void *ud, int32_t tok) {
    char piece[256];
    int len = km_token_piece(ud, tok, piece, sizeof piece);
    fwrite(piece, 1, (size_t)len, stdout);
    fflush(stdout);
    return 0;
}

static const char *default_cache_dir(char *buf, size_t len) {
    const char *x = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (x && *x) snprintf(buf, len, "%s/kvmesh/states", x);
    else if (home && *home) snprintf(buf, len, "%s/.cache/kvmesh/states", home);
    else return NULL;
    return buf;
}

int cmd_run(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *prompt_file = NULL, *sep = NULL, *cache_dir = NULL, *salt = NULL;
    int n_predict = 32, block = 256, quiet = 0, no_cache = 0, store_ttl = 0;
    const char *store_url = NULL, *store_secret_file = NULL;
    km_link_params link_p = {0, 0};
    km_redis_params rp = km_redis_default_params();
    int has_link = 0;
    double ram_mb = 256, disk_mb = (double)(km_store_default_params().disk_budget >> 20);
    km_ctx_params cp = km_ctx_default_params();
    km_sampling sp = km_sampling_default();
    enum { O_SEP = 1000, O_BLOCK, O_CACHE, O_NOCACHE, O_RAM, O_SALT, O_TEMP, O_SEED, O_TOPK, O_TOPP, O_KV, O_FA, O_CTX, O_BATCH, O_STORE, O_STORE_TTL, O_LINK, O_SLOW, O_STORE_TIMEOUT, O_CAT_CAP, O_CAT_ERR, O_STORE_SECRET, O_DISK };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},        {"prompt", required_argument, 0, 'p'},
        {"prompt-file", required_argument, 0, 'f'},  {"segment-sep", required_argument, 0, O_SEP},
        {"block", required_argument, 0, O_BLOCK},    {"cache-dir", required_argument, 0, O_CACHE},
        {"no-cache", no_argument, 0, O_NOCACHE},     {"ram-budget", required_argument, 0, O_RAM},
        {"disk-budget", required_argument, 0, O_DISK},
        {"salt", required_argument, 0, O_SALT},      {"n-predict", required_argument, 0, 'n'},
        {"store", required_argument, 0, O_STORE},    {"store-ttl", required_argument, 0, O_STORE_TTL},
        {"link", required_argument, 0, O_LINK},      {"slowdown", required_argument, 0, O_SLOW},
        {"store-timeout", required_argument, 0, O_STORE_TIMEOUT},
        {"store-secret-file", required_argument, 0, O_STORE_SECRET},
        {"catalog-capacity", required_argument, 0, O_CAT_CAP}, {"catalog-error", required_argument, 0, O_CAT_ERR},
        {"temp", required_argument, 0, O_TEMP},      {"seed", required_argument, 0, O_SEED},
        {"top-k", required_argument, 0, O_TOPK},     {"top-p", required_argument, 0, O_TOPP},
        {"threads", required_argument, 0, 't'},      {"kv-type", required_argument, 0, O_KV},
        {"flash-attn", required_argument, 0, O_FA},  {"ctx", required_argument, 0, O_CTX},
        {"batch", required_argument, 0, O_BATCH},    {"verbose", no_argument, 0, 'v'},
        {"quiet", no_argument, 0, 'q'},              {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "m:p:f:n:t:vqh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': prompt_file = optarg; break;
        case O_SEP: sep = optarg; break;
        case O_BLOCK: block = cli_int(optarg); break;
        case O_CACHE: cache_dir = optarg; break;
        case O_NOCACHE: no_cache = 1; break;
        case O_RAM: ram_mb = cli_num(optarg); break;
        case O_DISK: disk_mb = cli_num(optarg); break;
        case O_SALT: salt = optarg; break;
        case O_STORE: store_url = optarg; break;
        case O_STORE_TTL: store_ttl = cli_int(optarg); break;
        case O_STORE_SECRET: store_secret_file = optarg; break;
        case O_LINK: {
            km_error e;
            if (km_link_parse(optarg, &link_p, &e) != 0) {
                fprintf(stderr, "kvmesh run: --link: %s\n", e.msg);
                return 2;
            }
            has_link = 1;
            break;
        }
        case O_SLOW: cp.slowdown = cli_num(optarg); break;
        case O_STORE_TIMEOUT: rp.io_timeout_ms = cli_int(optarg); break;
        case O_CAT_CAP: rp.catalog.capacity = (uint32_t)cli_uint(optarg); break;
        case O_CAT_ERR: rp.catalog.error = cli_num(optarg); break;
        case 'n': n_predict = cli_int(optarg); break;
        case O_TEMP: sp.temp = (float)cli_num(optarg); break;
        case O_SEED: sp.seed = (uint32_t)cli_uint(optarg); break;
        case O_TOPK: sp.top_k = cli_int(optarg); break;
        case O_TOPP: sp.top_p = (float)cli_num(optarg); break;
        case 't': cp.n_threads = cli_int(optarg); break;
        case O_KV:
            if (km_kv_type_parse(optarg, &cp.kv_type) != 0) {
                fprintf(stderr, "kvmesh run: --kv-type must be f16 or q8_0, not '%s'\n", optarg);
                return 2;
            }
            break;
        case O_FA:
            if (!strcmp(optarg, "auto")) cp.flash_attn = -1;
            else if (!strcmp(optarg, "on")) cp.flash_attn = 1;
            else if (!strcmp(optarg, "off")) cp.flash_attn = 0;
            else {
                fprintf(stderr, "kvmesh run: --flash-attn must be auto, on or off\n");
                return 2;
            }
            break;
        case O_CTX: cp.n_ctx = cli_int(optarg); break;
        case O_BATCH: cp.n_batch = cli_int(optarg); break;
        case 'v': km_log_level++; break;
        case 'q': quiet = 1; break;
        case 'h': run_usage(stdout); return 0;
        default: run_usage(stderr); return 2;
        }
    }
    if (cli_bad_number("kvmesh run")) return 2;
    if (optind < argc) {
        fprintf(stderr, "kvmesh run: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!model_path || (!prompt == !prompt_file)) {
        fprintf(stderr, "kvmesh run: need --model and exactly one of --prompt / --prompt-file (see --help)\n");
        return 2;
    }
    if (store_secret_file && !store_url) {
        fprintf(stderr, "kvmesh run: --store-secret-file needs --store\n");
        return 2;
    }
    if (!(cp.slowdown >= 1.0)) {
        fprintf(stderr, "kvmesh run: --slowdown must be >= 1\n");
        return 2;
    }
    if (n_predict < 0 || cp.n_threads < 1 || cp.n_ctx < 8 || cp.n_batch < 1 || block < 0 || !(ram_mb >= 0) || !(disk_mb >= 0)) {
        fprintf(stderr, "kvmesh run: bad numeric option (see --help)\n");
        return 2;
    }

    km_error err;
    uint8_t *file_text = NULL;
    if (prompt_file) {
        size_t len;
        const char *path = strcmp(prompt_file, "-") ? prompt_file : "/dev/stdin";
        if (km_read_file(path, 64u << 20, &file_text, &len, &err) != 0) {
            /* /dev/stdin may be a pipe: not a regular file; read it by hand */
            if (!strcmp(prompt_file, "-")) {
                size_t cap = 1 << 16;
                len = 0;
                file_text = malloc(cap + 1);
                size_t r;
                while ((r = fread(file_text + len, 1, cap - len, stdin)) > 0) {
                    len += r;
                    if (len == cap) file_text = realloc(file_text, (cap *= 2) + 1);
                }
                file_text[len] = 0;
            } else {
                fprintf(stderr, "kvmesh run: %s\n", err.msg);
                return 1;
            }
        }
        prompt = (const char *)file_text;
    }
    if (!*prompt) {
        fprintf(stderr, "kvmesh run: the prompt is empty\n");
        free(file_text);
        return 2;
    }

    int rc = 1;
    km_model *model = NULL;
    km_ctx *ctx = NULL;
    km_store *store = NULL;
    km_redis *redis = NULL;
    km_link *link = NULL;
    char **segs = NULL;
    int n_segs = 0;
    char *sep_text = sep ? unescape(sep) : NULL;

    model = km_model_load(model_path, &err);
    if (!model) {
        fprintf(stderr, "kvmesh run: %s\n", err.msg);
        goto out;
    }
    ctx = km_ctx_init(model, &cp, &err);
    if (!ctx) {
        fprintf(stderr, "kvmesh run: %s\n", err.msg);
        goto out;
    }
    if (!no_cache) {
        char dbuf[4096];
        km_store_params stp = km_store_default_params();
        stp.ram_budget = (size_t)(ram_mb * 1024 * 1024);
        stp.disk_budget = (uint64_t)(disk_mb * 1024 * 1024);
        stp.disk_dir = cache_dir ? cache_dir : default_cache_dir(dbuf, sizeof dbuf);
        store = km_store_open(&stp, &err);
        if (!store) {
            fprintf(stderr, "kvmesh run: cache: %s\n", err.msg);
            goto out;
        }
    }

    if (store_url && !no_cache) {
        rp.url = store_url;
        rp.ttl_s = store_ttl;
        rp.sync_period_ms = 0; /* one request: one catalog sync, just below */
        if (has_link) rp.link = link = km_link_new(&link_p);
        uint8_t *secret = NULL;
        size_t secret_len = 0;
        if (store_secret_file && km_peerauth_load_secret(store_secret_file, &secret, &secret_len, &err) != 0) {
            fprintf(stderr, "kvmesh run: --store-secret-file: %s\n", err.msg);
            goto out;
        }
        rp.secret = secret;
        rp.secret_len = secret_len;
        redis = km_redis_open(&rp, km_model_fingerprint(model), &err);
        km_peerauth_secret_free(secret, secret_len); /* the tier keeps its derived key */
        if (!redis) {
            fprintf(stderr, "kvmesh run: --store: %s\n", err.msg);
            goto out;
        }
        km_redis_log_trust(redis);
        if (km_redis_catalog_sync(redis, true, &err) != 0) km_debug("shared tier catalog not loaded: %s", err.msg);
    }

    n_segs = split_segments(prompt, sep_text, &segs);
    km_pcache_opts po = km_pcache_default_opts();
    po.salt = salt;
    po.redis = redis;
    km_request req = {.segs = (const char *const *)segs, .n_segs = n_segs, .segment_bounds = sep_text != NULL,
                      .block_size = block, .sampling = sp, .n_predict = n_predict, .on_token = print_token,
                      .ud = model, .opts = &po};
    km_result res;
    if (km_pcache_run(ctx, store, 0, &req, &res, &err) != 0) {
        fprintf(stderr, "\nkvmesh run: %s\n", err.msg);
        goto out;
    }
    printf("\n");
    fflush(stdout);
    if (store) km_store_flush(store); /* snapshots are on disk before we report */
    double t_up = km_now_ms();
    int unsent = redis ? km_redis_flush(redis, 30000) : 0; /* write-behind: after the answer, before exit */
    t_up = km_now_ms() - t_up;
    if (!quiet) {
        const km_prefill_report *rep = &res.prefill;
        char hit[64];
        if (rep->hit_index >= 0)
            snprintf(hit, sizeof hit, "boundary %d/%d%s", rep->hit_index + 1, rep->n_bounds,
                     rep->next_hint >= 0 ? ", first token cached" : "");
        else snprintf(hit, sizeof hit, "miss");
        fprintf(stderr,
                "kvmesh: ttft %.1f ms | ttlt %.1f ms | prompt %d tok | reused %d tok (%s) | prefilled %d tok | "
                "generated %d tok | stored %d states %.2f MB | loaded %.2f MB%s%s%s\n",
                res.ttft_ms, res.ttlt_ms, rep->n_prompt, rep->n_reused, hit, rep->n_prefilled, res.n_generated,
                rep->n_saved, rep->bytes_saved / 1e6, rep->bytes_loaded / 1e6,
                rep->hit_tier == KM_TIER_REDIS ? " from redis" : "",
                rep->n_rejected + rep->n_unauthenticated ? " | rejected bad cached states" : "",
                rep->n_hint_mismatches ? " | removed a state with a wrong first-token hint" : "");
        if (redis)
            fprintf(stderr,
                    "kvmesh: shared tier: %d GET(s) %.1f ms, %.2f MB fetched, %d catalog false positive(s) | "
                    "uploaded %d state(s) %.2f MB in %.1f ms after the answer%s\n",
                    rep->n_remote_gets, rep->t_remote_ms, rep->bytes_remote / 1e6, rep->n_false_positives,
                    rep->n_uploaded - unsent, rep->bytes_uploaded / 1e6, t_up, unsent ? " (some NOT sent: server unavailable)" : "");
    }
    rc = 0;
out:
    if (redis) km_redis_close(redis, 0);
    km_link_free(link);
    if (store) km_store_close(store);
    km_ctx_free(ctx);
    km_model_free(model);
    for (int i = 0; i < n_segs; i++) free(segs[i]);
    free(segs);
    free(sep_text);
    free(file_text);
    return rc;
}
