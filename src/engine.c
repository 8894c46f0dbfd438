/* engine.c -- see engine.h. */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "llama.h"

/* ------------------------------------------------------------------ init */

static void log_filter(enum ggml_log_level level, const char *text, void *ud) {
    (void)ud;
    /* llama.cpp logs hundreds of lines per context at info/debug level, and
     * warns about things users cannot act on (token types of the Gemma vocab).
     * Errors always show; warnings from -v; the rest from -vv. kvmesh reports
     * every failure itself, naming the file and the problem. */
    int want = level == GGML_LOG_LEVEL_ERROR ? 0 : level == GGML_LOG_LEVEL_WARN ? 2 : 3;
    if (level == GGML_LOG_LEVEL_CONT) want = 2;
    if (km_log_level >= want) fputs(text, stderr);
}

static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static void engine_init_once(void) {
    llama_log_set(log_filter, NULL);
    llama_backend_init();
}
void km_engine_init(void) { pthread_once(&engine_once, engine_init_once); }

/* ------------------------------------------------------------------ models */

struct km_model {
    struct llama_model *lm;
    const struct llama_vocab *vocab;
    int max_piece_len; /* km_model_max_piece_len */
    char *path;
    uint8_t fingerprint[KM_FINGERPRINT_LEN];
};

/* Intel AMX: on these VMs the AMX buffer type crashes on the first Q8_0 matmul
 * (LLAMACPP-NOTES.md). On x86 AMX is the only extra buffer type for Q8_0, but
 * others (CPU repacking for Q4_0) help, so extra buffer types are turned off
 * only on CPUs that advertise AMX. */
static bool cpu_has_amx(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return false;
    char line[8192];
    bool amx = false;
    while (!amx && fgets(line, sizeof line, f))
        if (!strncmp(line, "flags", 5) && strstr(line, " amx")) amx = true;
    fclose(f);
    return amx;
}

int km_file_fingerprint(const char *path, uint8_t out[KM_FINGERPRINT_LEN], km_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return km_error_set(err, "%s: %s", path, strerror(errno));
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    size_t cap = 1 << 20;
    uint8_t *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf, cap)) > 0) XXH3_128bits_update(st, buf, (size_t)r);
    int e = errno;
    close(fd);
    free(buf);
    XXH128_hash_t h = XXH3_128bits_digest(st);
    XXH3_freeState(st);
    if (r < 0) return km_error_set(err, "%s: read failed: %s", path, strerror(e));
    km_put_u64(out, h.low64);
    km_put_u64(out + 8, h.high64);
    return 0;
}

/* The longest text of a token, special tokens' text included. Only for the
 * tokenizers whose tokens are pieces of the text as given (SentencePiece
 * BPE, byte-level BPE, RWKV's greedy trie); 0 for the others. */
static int max_piece_len(const struct llama_vocab *vocab) {
    enum llama_vocab_type t = llama_vocab_type(vocab);
    if (t != LLAMA_VOCAB_TYPE_SPM && t != LLAMA_VOCAB_TYPE_BPE && t != LLAMA_VOCAB_TYPE_RWKV) return 0;
    int n_vocab = llama_vocab_n_tokens(vocab), longest = 0;
    char buf[256];
    for (int32_t tok = 0; tok < n_vocab; tok++) {
        int n = llama_token_to_piece(vocab, tok, buf, sizeof buf, 0, true);
        if (n < 0) n = -n; /* longer than buf: its length */
        if (n > longest) longest = n;
    }
    return longest;
}

km_model *km_model_load(const char *path, km_error *err) {
    km_engine_init();
    if (access(path, R_OK) != 0) {
        km_error_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    km_model *m = calloc(1, sizeof *m);
    m->path = strdup(path);
    if (km_file_fingerprint(path, m->fingerprint, err) != 0) goto fail;
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = !cpu_has_amx();
    m->lm = llama_model_load_from_file(path, mp);
    if (!m->lm) {
        km_error_set(err, "%s: llama.cpp could not load this model (not a GGUF, truncated, or an unsupported architecture; run with -v for details)", path);
        goto fail;
    }
    m->vocab = llama_model_get_vocab(m->lm);
    m->max_piece_len = max_piece_len(m->vocab);
    return m;
fail:
    km_model_free(m);
    return NULL;
}

void km_model_free(km_model *m) {
    if (!m) return;
    if (m->lm) llama_model_free(m->lm);
    free(m->path);
    free(m);
}

const uint8_t *km_model_fingerprint(const km_model *m) { return m->fingerprint; }
const char *km_model_path(const km_model *m) { return m->path; }
struct llama_model *km_model_llama(km_model *m) { return m->lm; }
int km_model_n_vocab(const km_model *m) { return llama_vocab_n_tokens(m->vocab); }
int km_model_max_piece_len(const km_model *m) { return m->max_piece_len; }
int km_model_n_swa(const km_model *m) { return llama_model_n_swa(m->lm); }

void km_model_describe(const km_model *m, char *buf, size_t len) {
    char desc[256];
    llama_model_desc(m->lm, desc, sizeof desc);
    snprintf(buf, len, "%s, %.1f MB, %d layers, embd %d, vocab %d, swa %d", desc, llama_model_size(m->lm) / 1e6,
             llama_model_n_layer(m->lm), llama_model_n_embd(m->lm), km_model_n_vocab(m), km_model_n_swa(m));
}

int km_tokenize(const km_model *m, const char *text, size_t len, unsigned flags, int32_t **out, int *n_out,
                km_error *err) {
    bool add_bos = flags & KM_TOKENIZE_BOS, special = flags & KM_TOKENIZE_SPECIAL;
    *out = NULL;
    *n_out = 0;
    if (len > (size_t)INT32_MAX / 2) return km_error_set(err, "text too long to tokenize (%zu bytes)", len);
    int cap = (int)len + 8;
    int32_t *toks = malloc((size_t)cap * sizeof *toks);
    if (!toks) return km_error_set(err, "out of memory tokenizing %zu bytes", len);
    int n = llama_tokenize(m->vocab, text, (int32_t)len, toks, cap, add_bos, special);
    if (n < 0) { /* cannot happen with cap > len + BOS, but be safe */
        cap = -n;
        int32_t *t2 = realloc(toks, (size_t)cap * sizeof *toks);
        if (!t2) {
            free(toks);
            return km_error_set(err, "out of memory tokenizing");
        }
        toks = t2;
        n = llama_tokenize(m->vocab, text, (int32_t)len, toks, cap, add_bos, special);
    }
    if (n < 0) {
        free(toks);
        return km_error_set(err, "tokenization failed");
    }
    *out = toks;
    *n_out = n;
    return 0;
}

int km_token_piece(const km_model *m, int32_t token, char *buf, int len) {
    int n = llama_token_to_piece(m->vocab, token, buf, len - 1, 0, false);
    if (n < 0) n = 0;
    if (n > len - 1) n = len - 1;
    buf[n] = 0;
    return n;
}

bool km_token_is_eog(const km_model *m, int32_t token) { return llama_vocab_is_eog(m->vocab, token); }

/* ------------------------------------------------------------------ state layout */

/* The per-sequence state written by llama_state_seq_get_data is:
 *   u32 magic, i32 seq_id, then for each KV cache of the memory (one, or two
 *   for sliding-window models: the full-attention cache then the SWA cache):
 *     u32 n_stream; per stream: u32 cell_count, and if > 0:
 *       per cell: i32 pos, u32 n_seq_id, [cell ext], i32 seq_id x n_seq_id
 *       u32 v_trans, u32 n_layer,
 *       per layer: i32 k_type, u64 k_row_size, cell_count rows
 *       per layer, v_trans == 0: i32 v_type, u64 v_row_size, cell_count rows
 *       per layer, v_trans == 1: i32 v_type, u32 el_size, u32 n_embd_v, n_embd_v*cell_count elements
 * The context learns the fixed parts (cache count, types, row sizes) from a
 * state it produced itself at init, and km_state_check holds untrusted
 * payloads to them. */

#define STATE_MAGIC 0xaf143cd8u
#define MAX_CACHES 4
#define MAX_LAYERS 512

typedef struct cache_layout {
    uint32_t n_stream, v_trans, n_layer;
    int32_t k_type[MAX_LAYERS], v_type[MAX_LAYERS];
    uint64_t k_row[MAX_LAYERS], v_row[MAX_LAYERS]; /* v_row = el_size | n_embd_v << 32 when v_trans */
} cache_layout;

typedef struct state_layout {
    int n_caches;
    uint32_t cell_ext; /* bytes of per-cell extension data */
    cache_layout cache[MAX_CACHES];
} state_layout;

typedef struct reader {
    const uint8_t *p;
    size_t len, off;
} reader;

static int rd_u32(reader *r, uint32_t *v) {
    if (r->len - r->off < 4) return -1;
    *v = km_get_u32(r->p + r->off);
    r->off += 4;
    return 0;
}
static int rd_u64(reader *r, uint64_t *v) {
    if (r->len - r->off < 8) return -1;
    *v = km_get_u64(r->p + r->off);
    r->off += 8;
    return 0;
}
static int rd_skip(reader *r, uint64_t a, uint64_t b) { /* skip a*b bytes, overflow-safe */
    if (a != 0 && b > (r->len - r->off) / a) return -1;
    r->off += (size_t)(a * b);
    return 0;
}

/* Walk a payload. learn != NULL: fill it from the payload (our own); else check
 * against ref. Returns 0 or -1 with err naming the first bad field. */
static int state_walk(const uint8_t *buf, size_t len, int n_tokens, uint32_t cell_ext, state_layout *learn,
                      const state_layout *ref, km_error *err) {
    reader r = {buf, len, 0};
    uint32_t v;
    if (rd_u32(&r, &v) || v != STATE_MAGIC) return km_error_set(err, "state payload: bad magic");
    if (rd_u32(&r, &v)) return km_error_set(err, "state payload: truncated header");
    int nc = 0;
    while (r.off < r.len || (ref && nc < ref->n_caches)) {
        if (nc >= MAX_CACHES || (ref && nc >= ref->n_caches)) return km_error_set(err, "state payload: trailing bytes after %d caches", nc);
        cache_layout *L = learn ? &learn->cache[nc] : NULL;
        const cache_layout *R = ref ? &ref->cache[nc] : NULL;
        uint32_t n_stream;
        if (rd_u32(&r, &n_stream)) return km_error_set(err, "state payload: truncated (cache %d)", nc);
        if (L) {
            if (n_stream == 0 || n_stream > 64) return km_error_set(err, "state payload: bad stream count");
            memset(L, 0, sizeof *L);
            L->n_stream = n_stream;
            L->n_layer = UINT32_MAX; /* unknown until a stream holds cells */
        } else if (n_stream != R->n_stream) {
            return km_error_set(err, "state payload: cache %d has %u streams, expected %u", nc, n_stream, R->n_stream);
        }
        for (uint32_t s = 0; s < n_stream; s++) {
            uint32_t cells;
            if (rd_u32(&r, &cells)) return km_error_set(err, "state payload: truncated cell count");
            if (cells == 0) continue;
            if (cells > (uint32_t)n_tokens)
                return km_error_set(err, "state payload: %u cells for %d tokens", cells, n_tokens);
            for (uint32_t i = 0; i < cells; i++) {
                uint32_t pos, nsid, sid;
                if (rd_u32(&r, &pos) || rd_u32(&r, &nsid)) return km_error_set(err, "state payload: truncated cell list");
                if ((int32_t)pos < 0 || (int32_t)pos >= n_tokens)
                    return km_error_set(err, "state payload: cell position %d outside 0..%d", (int32_t)pos, n_tokens - 1);
                if (nsid != 1) return km_error_set(err, "state payload: cell with %u sequence ids", nsid);
                if (rd_skip(&r, 1, cell_ext) || rd_u32(&r, &sid)) return km_error_set(err, "state payload: truncated cell");
                if ((int32_t)sid < 0 || (int32_t)sid >= 4096) return km_error_set(err, "state payload: bad sequence id");
            }
            uint32_t v_trans, n_layer;
            if (rd_u32(&r, &v_trans) || rd_u32(&r, &n_layer)) return km_error_set(err, "state payload: truncated layer header");
            const cache_layout *C = R;
            if (L) {
                if (v_trans > 1 || n_layer == 0 || n_layer > MAX_LAYERS) return km_error_set(err, "state payload: bad layer header");
                L->v_trans = v_trans;
                L->n_layer = n_layer;
            } else if (v_trans != R->v_trans || n_layer != R->n_layer) {
                return km_error_set(err, "state payload: cache %d layout (v_trans %u, %u layers) differs from this model's (%u, %u)",
                                    nc, v_trans, n_layer, R->v_trans, R->n_layer);
            }
            for (uint32_t l = 0; l < n_layer; l++) {
                uint32_t t;
                uint64_t row;
                if (rd_u32(&r, &t) || rd_u64(&r, &row)) return km_error_set(err, "state payload: truncated K layer %u", l);
                if (L) {
                    if (row == 0 || row > (1u << 24)) return km_error_set(err, "state payload: bad K row size");
                    L->k_type[l] = (int32_t)t;
                    L->k_row[l] = row;
                } else if ((int32_t)t != C->k_type[l] || row != C->k_row[l]) {
                    return km_error_set(err, "state payload: K layer %u has type %d row %llu, expected type %d row %llu (other KV type or model)",
                                        l, (int32_t)t, (unsigned long long)row, C->k_type[l], (unsigned long long)C->k_row[l]);
                }
                if (rd_skip(&r, cells, row)) return km_error_set(err, "state payload: truncated K data (layer %u)", l);
            }
            for (uint32_t l = 0; l < n_layer; l++) {
                uint32_t t;
                uint64_t row, n_el;
                if (!v_trans) {
                    if (rd_u32(&r, &t) || rd_u64(&r, &row)) return km_error_set(err, "state payload: truncated V layer %u", l);
                    n_el = cells;
                } else {
                    uint32_t el, ne;
                    if (rd_u32(&r, &t) || rd_u32(&r, &el) || rd_u32(&r, &ne)) return km_error_set(err, "state payload: truncated V layer %u", l);
                    row = (uint64_t)el | (uint64_t)ne << 32;
                    n_el = (uint64_t)ne * cells;
                }
                if (L) {
                    L->v_type[l] = (int32_t)t;
                    L->v_row[l] = row;
                } else if ((int32_t)t != C->v_type[l] || row != C->v_row[l]) {
                    return km_error_set(err, "state payload: V layer %u differs from this model's layout (other KV type or model)", l);
                }
                uint64_t unit = v_trans ? (row & 0xffffffffu) : row;
                if (unit == 0 || unit > (1u << 24)) return km_error_set(err, "state payload: bad V row size");
                if (rd_skip(&r, n_el, unit)) return km_error_set(err, "state payload: truncated V data (layer %u)", l);
            }
        }
        nc++;
    }
    if (r.off != r.len) return km_error_set(err, "state payload: %zu trailing bytes", r.len - r.off);
    if (learn) {
        learn->n_caches = nc;
        learn->cell_ext = cell_ext;
    } else if (nc != ref->n_caches) {
        return km_error_set(err, "state payload: %d caches, expected %d", nc, ref->n_caches);
    }
    return 0;
}

/* ------------------------------------------------------------------ contexts */

struct km_ctx {
    km_model *model;
    struct llama_context *lc;
    km_ctx_params p;
    int type_k, type_v;
    struct llama_batch batch;
    uint8_t *state_buf; /* boundary exports, reused across calls */
    size_t state_cap;
    state_layout *layout; /* NULL if the layout could not be learnt: restores are refused */
};

km_ctx_params km_ctx_default_params(void) {
    km_ctx_params p = {.n_ctx = 4096, .n_batch = 512, .n_threads = 1, .kv_type = KM_KV_F16, .flash_attn = -1,
                       .n_seq = 1, .n_outputs_max = 8, .slowdown = 1.0};
    return p;
}

const char *km_kv_type_name(km_kv_type t) { return t == KM_KV_Q8_0 ? "q8_0" : "f16"; }

int km_kv_type_parse(const char *s, km_kv_type *out) {
    if (!strcmp(s, "f16")) *out = KM_KV_F16;
    else if (!strcmp(s, "q8_0")) *out = KM_KV_Q8_0;
    else return -1;
    return 0;
}

static int decode_range(km_ctx *c, int seq, const int32_t *tokens, int from, int to, bool logits_last, km_error *err);

/* Learn the state layout from a one-token state of our own, then forget it. */
static void learn_layout(km_ctx *c) {
    int32_t tok = llama_vocab_bos(c->model->vocab);
    if (tok < 0) tok = 0;
    km_error e;
    if (decode_range(c, 0, &tok, 0, 1, false, &e) != 0) {
        km_warn("cannot probe the KV state layout (%s); cached states will not be restored", e.msg);
        return;
    }
    size_t n = llama_state_seq_get_size(c->lc, 0);
    uint8_t *buf = malloc(n);
    size_t got = buf ? llama_state_seq_get_data(c->lc, buf, n, 0) : 0;
    state_layout *L = calloc(1, sizeof *L);
    static const uint32_t exts[] = {0, 8, 12, 16};
    bool ok = false;
    for (size_t i = 0; got && !ok && i < sizeof exts / sizeof *exts; i++)
        ok = state_walk(buf, got, 1, exts[i], L, NULL, &e) == 0;
    free(buf);
    km_seq_clear(c, 0);
    if (!ok) {
        km_warn("unknown KV state layout for this model; cached states will not be restored");
        free(L);
        return;
    }
    c->layout = L;
}

km_ctx *km_ctx_init(km_model *m, const km_ctx_params *p, km_error *err) {
    km_ctx *c = calloc(1, sizeof *c);
    c->model = m;
    c->p = *p;
    if (c->p.n_seq < 1) c->p.n_seq = 1;
    if (c->p.n_batch < 1) c->p.n_batch = 512;
    if (c->p.n_ctx < 8) c->p.n_ctx = 8;
    if (c->p.n_outputs_max < 1) c->p.n_outputs_max = 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(c->p.n_ctx * c->p.n_seq);
    cp.n_batch = (uint32_t)c->p.n_batch;
    cp.n_ubatch = (uint32_t)c->p.n_batch; /* one decode call = one ubatch: we choose the split points */
    cp.n_seq_max = (uint32_t)c->p.n_seq;
    cp.n_outputs_max = (uint32_t)c->p.n_outputs_max;
    cp.n_threads = c->p.n_threads;
    cp.n_threads_batch = c->p.n_threads;
    cp.no_perf = true;
    cp.kv_unified = false; /* a stream per sequence: one sequence's layout never depends on another's */
    /* Sliding-window layers keep only the window (+ a batch), not n_ctx
     * positions: for Gemma 3 270M at 4096 tokens 9 MB instead of 63 MB. Cells
     * wrap around in that smaller cache, which the layout step at every
     * boundary makes harmless for exactness (see engine.h). */
    cp.swa_full = false;
    c->type_k = c->type_v = p->kv_type == KM_KV_Q8_0 ? GGML_TYPE_Q8_0 : GGML_TYPE_F16;
    cp.type_k = (enum ggml_type)c->type_k;
    cp.type_v = (enum ggml_type)c->type_v;
    if (p->kv_type == KM_KV_Q8_0) {
        if (p->flash_attn == 0) {
            km_error_set(err, "q8_0 KV cache needs flash attention (--flash-attn off given)");
            free(c);
            return NULL;
        }
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    } else {
        cp.flash_attn_type = p->flash_attn < 0 ? LLAMA_FLASH_ATTN_TYPE_AUTO
                             : p->flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    c->lc = llama_init_from_model(m->lm, cp);
    if (!c->lc) {
        km_error_set(err, "%s: llama.cpp could not create a context (n_ctx %d, kv %s; run with -v for details)", m->path,
                     c->p.n_ctx, km_kv_type_name(p->kv_type));
        free(c);
        return NULL;
    }
    c->batch = llama_batch_init(c->p.n_batch, 0, 1);
    learn_layout(c);
    return c;
}

void km_ctx_free(km_ctx *c) {
    if (!c) return;
    llama_batch_free(c->batch);
    free(c->state_buf);
    llama_free(c->lc);
    free(c->layout);
    free(c);
}

km_model *km_ctx_model(km_ctx *c) { return c->model; }
struct llama_context *km_ctx_llama(km_ctx *c) { return c->lc; }
const km_ctx_params *km_ctx_params_of(const km_ctx *c) { return &c->p; }
int km_ctx_type_k(const km_ctx *c) { return c->type_k; }
int km_ctx_type_v(const km_ctx *c) { return c->type_v; }
km_key km_ctx_root_key(const km_ctx *c, const char *salt) {
    return km_key_root(c->model->fingerprint, c->type_k, c->type_v, salt);
}

void km_seq_clear(km_ctx *c, int seq) { llama_memory_seq_rm(llama_get_memory(c->lc), seq, -1, -1); }

int km_seq_n_past(km_ctx *c, int seq) { return llama_memory_seq_pos_max(llama_get_memory(c->lc), seq) + 1; }

/* ------------------------------------------------------------------ prefill */

/* Time dilation: make this compute call last `slowdown` x its compute time,
 * emulating a slower device (the bench measures the resulting prefill rate).
 * With one thread, ggml computes on the calling thread, so its CPU time is
 * the compute time even when other processes share the core -- emulated
 * devices running side by side do not slow each other down. With more
 * threads, wall time is used. */
static void dilate(const km_ctx *c, double wall0, double cpu0) {
    double now = km_now_ms();
    double busy = c->p.n_threads == 1 ? km_thread_cpu_ms() - cpu0 : now - wall0;
    double extra = wall0 + busy * c->p.slowdown - now;
    if (extra <= 0) return;
    struct timespec ts = {(time_t)(extra / 1e3), (long)((extra - (double)(time_t)(extra / 1e3) * 1e3) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Decode toks[0..n) at positions pos0.., in pieces of n_batch counted from
 * pos0. logits_last: request the logits of the final token. */
static int decode_span(km_ctx *c, int seq, const int32_t *toks, int n, int pos0, bool logits_last, km_error *err) {
    for (int off = 0; off < n; off += c->p.n_batch) {
        int m = n - off < c->p.n_batch ? n - off : c->p.n_batch;
        struct llama_batch *b = &c->batch;
        b->n_tokens = m;
        for (int i = 0; i < m; i++) {
            b->token[i] = toks[off + i];
            b->pos[i] = pos0 + off + i;
            b->n_seq_id[i] = 1;
            b->seq_id[i][0] = seq;
            b->logits[i] = logits_last && off + i == n - 1;
        }
        double t0 = km_now_ms(), cpu0 = c->p.slowdown > 1.0 ? km_thread_cpu_ms() : 0;
        int rc = llama_decode(c->lc, *b);
        if (rc != 0)
            return km_error_set(err, "llama_decode failed (code %d) at positions %d..%d%s", rc, pos0 + off,
                                pos0 + off + m - 1, rc == 1 ? ": context full (raise --ctx)" : "");
        if (c->p.slowdown > 1.0) dilate(c, t0, cpu0);
    }
    return 0;
}

/* Decode tokens[from..to) at positions from..to-1. */
static int decode_range(km_ctx *c, int seq, const int32_t *tokens, int from, int to, bool logits_last, km_error *err) {
    return decode_span(c, seq, tokens + from, to - from, from, logits_last, err);
}

/* Export seq's state into c->state_buf and import it again, so the cache
 * layout is the one a restore of this state produces (see engine.h). */
static int normalize_layout(km_ctx *c, int seq, int n_past, size_t *len, km_error *err) {
    size_t n = llama_state_seq_get_size(c->lc, seq);
    if (n == 0) return km_error_set(err, "cannot size the state at %d tokens", n_past);
    if (n > c->state_cap) {
        uint8_t *nb = realloc(c->state_buf, n);
        if (!nb) return km_error_set(err, "out of memory for a %zu-byte state", n);
        c->state_buf = nb;
        c->state_cap = n;
    }
    if (llama_state_seq_get_data(c->lc, c->state_buf, n, seq) != n) return km_error_set(err, "state export failed at %d tokens", n_past);
    km_seq_clear(c, seq);
    if (llama_state_seq_set_data(c->lc, c->state_buf, n, seq) != n || km_seq_n_past(c, seq) != n_past) {
        km_seq_clear(c, seq);
        return km_error_set(err, "state re-import failed at %d tokens", n_past);
    }
    *len = n;
    return 0;
}

int km_prefill(km_ctx *c, int seq, const int32_t *tokens, int n_tokens, int n_past, const int *bounds, int n_bounds,
               km_boundary_fn fn, void *ud, km_error *err) {
    if (n_tokens < 1) return km_error_set(err, "empty prompt");
    if (n_tokens > c->p.n_ctx) return km_error_set(err, "prompt of %d tokens exceeds the context size %d", n_tokens, c->p.n_ctx);
    if (n_past < 0 || n_past > n_tokens - 1) return km_error_set(err, "bad prefill start %d for %d tokens", n_past, n_tokens);
    if (n_tokens > 1 && (n_bounds < 1 || bounds[n_bounds - 1] != n_tokens - 1))
        return km_error_set(err, "internal: boundaries must end at n_tokens - 1");
    int pos = n_past;
    for (int i = 0; i < n_bounds; i++) {
        if (i > 0 && bounds[i] <= bounds[i - 1]) return km_error_set(err, "internal: boundaries not increasing");
        if (bounds[i] <= pos) continue;
        if (decode_range(c, seq, tokens, pos, bounds[i], false, err) != 0) return -1;
        pos = bounds[i];
        size_t len = 0;
        if (normalize_layout(c, seq, pos, &len, err) != 0) return -1;
        if (fn && fn(ud, i, pos, c->state_buf, len) != 0) return km_error_set(err, "prefill aborted at boundary %d", i);
    }
    /* The last prompt token alone, with logits. */
    return decode_range(c, seq, tokens, n_tokens - 1, n_tokens, true, err);
}

const float *km_logits(km_ctx *c) { return llama_get_logits_ith(c->lc, -1); }

int32_t km_logits_argmax(km_ctx *c) {
    const float *l = km_logits(c);
    if (!l) return -1;
    int n = km_model_n_vocab(c->model), best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

/* ------------------------------------------------------------------ sampling */

struct km_sampler {
    struct llama_sampler *chain;
};

km_sampling km_sampling_default(void) {
    km_sampling s = {.temp = 0.0f, .top_k = 40, .top_p = 0.95f, .seed = 0};
    return s;
}

km_sampler *km_sampler_init(const km_sampling *s) {
    km_sampler *sm = calloc(1, sizeof *sm);
    struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    sm->chain = llama_sampler_chain_init(cp);
    if (s->temp <= 0) {
        llama_sampler_chain_add(sm->chain, llama_sampler_init_greedy());
    } else {
        if (s->top_k > 0) llama_sampler_chain_add(sm->chain, llama_sampler_init_top_k(s->top_k));
        if (s->top_p < 1.0f) llama_sampler_chain_add(sm->chain, llama_sampler_init_top_p(s->top_p, 1));
        llama_sampler_chain_add(sm->chain, llama_sampler_init_temp(s->temp));
        llama_sampler_chain_add(sm->chain, llama_sampler_init_dist(s->seed));
    }
    return sm;
}

void km_sampler_free(km_sampler *s) {
    if (!s) return;
    llama_sampler_free(s->chain);
    free(s);
}

int km_generate(km_ctx *c, int seq, int n_past, km_sampler *s, int n_predict, km_token_fn fn, void *ud, km_error *err) {
    int n = 0;
    while (n < n_predict) {
        int32_t tok = llama_sampler_sample(s->chain, c->lc, -1);
        if (km_token_is_eog(c->model, tok)) break;
        n++;
        if (fn && fn(ud, tok) != 0) break;
        if (n == n_predict) break;
        if (n_past + n > c->p.n_ctx) return km_error_set(err, "context full after %d generated tokens", n);
        if (decode_span(c, seq, &tok, 1, n_past + n - 1, true, err) != 0) return -1;
    }
    return n;
}

/* ------------------------------------------------------------------ state */

size_t km_state_size(km_ctx *c, int seq) { return llama_state_seq_get_size(c->lc, seq); }

size_t km_state_size_estimate(const km_ctx *c, int n_tokens) {
    const state_layout *L = c->layout;
    if (!L || n_tokens < 1) return 0;
    int n_swa = km_model_n_swa(c->model);
    size_t total = 8; /* magic, seq id */
    for (int i = 0; i < L->n_caches; i++) {
        const cache_layout *C = &L->cache[i];
        /* with two caches the second is the sliding-window one (see above) */
        uint64_t cells = (uint64_t)n_tokens;
        if (i == 1 && n_swa > 0 && cells > (uint64_t)n_swa) cells = (uint64_t)n_swa;
        total += 4 + 4 * (size_t)C->n_stream + cells * (12 + L->cell_ext) + 8;
        for (uint32_t l = 0; l < C->n_layer; l++) {
            total += 12 + cells * C->k_row[l];
            if (C->v_trans)
                total += 12 + (C->v_row[l] >> 32) * cells * (C->v_row[l] & 0xffffffffu);
            else
                total += 12 + cells * C->v_row[l];
        }
    }
    return total;
}

int km_state_save(km_ctx *c, int seq, uint8_t *dst, size_t cap, size_t *written, km_error *err) {
    size_t n = llama_state_seq_get_data(c->lc, dst, cap, seq);
    if (n == 0) return km_error_set(err, "llama_state_seq_get_data failed (buffer %zu bytes)", cap);
    *written = n;
    return 0;
}

int km_state_check(const km_ctx *c, const uint8_t *payload, size_t len, int n_tokens, km_error *err) {
    if (!c->layout) return km_error_set(err, "state layout of this model is unknown; refusing to restore");
    if (n_tokens < 1 || n_tokens > c->p.n_ctx) return km_error_set(err, "state of %d tokens does not fit the context (%d)", n_tokens, c->p.n_ctx);
    return state_walk(payload, len, n_tokens, c->layout->cell_ext, NULL, c->layout, err);
}

int km_state_restore(km_ctx *c, int seq, const uint8_t *payload, size_t len, int n_tokens, km_error *err) {
    if (km_state_check(c, payload, len, n_tokens, err) != 0) return -1;
    km_seq_clear(c, seq);
    size_t n = llama_state_seq_set_data(c->lc, payload, len, seq);
    if (n != len) {
        km_seq_clear(c, seq);
        return km_error_set(err, "llama.cpp rejected the state (%zu of %zu bytes read)", n, len);
    }
    int have = km_seq_n_past(c, seq);
    if (have != n_tokens) {
        km_seq_clear(c, seq);
        return km_error_set(err, "restored state holds %d positions, expected %d", have, n_tokens);
    }
    return 0;
}
