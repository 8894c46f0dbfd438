/* modelgen.c -- synthetic gemma3 GGUF files (see modelgen.h).
 *
 * The file has exactly the key/value pairs and tensors llama.cpp's gemma3
 * loader reads (src/models/gemma3.cpp and llama_model_base::load_hparams), so
 * llama.cpp builds the same compute graph and the same KV cache (including the
 * sliding-window layers) as for the real model. Only the weights are fake.
 *
 * How the file is written:
 *   1. Architecture keys are set, tokenizer keys copied from a vocab GGUF.
 *   2. Tensor infos are declared through a no_alloc ggml context, so gguf
 *      computes every tensor's offset without any tensor data in memory.
 *   3. The metadata block (already padded to the alignment) is written, then
 *      each tensor is generated a few rows at a time, converted to its type and
 *      written, followed by its alignment padding. Peak memory is the metadata
 *      (mostly the tokenizer, ~20 MB) plus one chunk, whatever the model size.
 *   4. All of this goes to "<out>.<pid>.tmp", which is fsync'ed and renamed
 *      over <out>: a crash never leaves a half-written model under its name.
 *
 * Determinism: every byte depends only on (preset, type, seed, vocab file).
 * Weights come from our own integer PRNG, and the float math is limited to
 * operations IEEE 754 rounds exactly the same everywhere (one rounding per
 * value; see gen_values()), so two devices
 * that generate the same model get the same file -- which matters here, since
 * prompt states are only interchangeable between identical weights. */
#include "modelgen.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ggml.h"
#include "gguf.h"

/* ------------------------------------------------------------------------- */
/* Presets                                                                    */
/* ------------------------------------------------------------------------- */

static const km_gemma3_shape presets[] = {
    /* google/gemma-3-270m: config.json of the released model. */
    {"gemma3-270m", 18, 640, 2048, 4, 1, 256, 512, 6, 1000000.0f, 10000.0f, 32768},
    /* google/gemma-3-1b-pt / -it. */
    {"gemma3-1b", 26, 1152, 6912, 4, 1, 256, 512, 6, 1000000.0f, 10000.0f, 32768},
    /* A miniature Gemma 3 for tests: the same 5-local-then-1-global layout, but
     * a 32-token window so tests cross it with short prompts. head_dim 32 keeps
     * a q8_0 KV cache possible (its block size is 32). */
    {"tiny", 6, 64, 128, 2, 1, 32, 32, 6, 1000000.0f, 10000.0f, 4096},
};
#define N_PRESETS (sizeof presets / sizeof *presets)

static const char *const preset_names[] = {"gemma3-270m", "gemma3-1b", "tiny", NULL};

const km_gemma3_shape *km_gemma3_preset(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < N_PRESETS; i++)
        if (!strcmp(presets[i].name, name)) return &presets[i];
    return NULL;
}

const char *const *km_gemma3_preset_names(void) { return preset_names; }

km_modelgen_params km_modelgen_default_params(void) {
    km_modelgen_params p = {0};
    p.weight_type = "f16";
    p.seed = 1;
    return p;
}

/* ------------------------------------------------------------------------- */
/* Deterministic weights                                                      */
/* ------------------------------------------------------------------------- */

/* splitmix64 (Steele, Lea, Flood 2014): tiny, fast and statistically fine for
 * fake weights. We only need the finaliser as a hash and the stream as PRNG. */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rng_next(uint64_t *s) {
    *s += 0x9E3779B97F4A7C15ULL;
    return mix64(*s);
}

/* Every tensor has its own stream, keyed by (seed, tensor index): a tensor's
 * values do not depend on how the writer chunks it, and tensors could be
 * generated in any order or in parallel. */
static uint64_t tensor_stream(uint64_t seed, int index) { return mix64(mix64(seed) + (uint64_t)index); }

/* Sum of the four 16-bit lanes of one 64-bit draw, centred: an Irwin-Hall(4)
 * variate, a bell curve bounded at +-3.46 sigma, with standard deviation
 * 65536/sqrt(3) = 37837.2 (to 0.001%). Exact integer math. */
#define IH4_STD 37837.2f
static int32_t ih4(uint64_t r) {
    int32_t sum = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) + (int32_t)((r >> 32) & 0xffff) +
                  (int32_t)(r >> 48);
    return sum - 2 * 65535;
}

/* n values of a tensor's stream: base + draw * scale. That is an exact int ->
 * float conversion (|draw| < 2^24), then one rounding: matrices have base 0,
 * and norm weights use a power-of-two scale, which makes the product exact. So
 * the result is the same with or without fused multiply-add, and no libm
 * function (whose last bit may differ between C libraries) is involved. */
static void gen_values(uint64_t *stream, float base, float scale, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = base + (float)ih4(rng_next(stream)) * scale;
}

/* ------------------------------------------------------------------------- */
/* Model layout                                                               */
/* ------------------------------------------------------------------------- */

typedef struct wtype {
    const char *name;
    enum ggml_type type;
    uint32_t file_type; /* llama_ftype: LLAMA_FTYPE_MOSTLY_* */
} wtype;

static const wtype wtypes[] = {
    {"f16", GGML_TYPE_F16, 1},
    {"q8_0", GGML_TYPE_Q8_0, 7},
    {"q4_0", GGML_TYPE_Q4_0, 2},
};

static const wtype *find_wtype(const char *name) {
    for (size_t i = 0; i < sizeof wtypes / sizeof *wtypes; i++)
        if (!strcmp(wtypes[i].name, name)) return &wtypes[i];
    return NULL;
}

/* One tensor of the output file, in file order. */
typedef struct tspec {
    char name[GGML_MAX_NAME];
    int64_t ne0, ne1; /* ne1 == 1 for 1-D tensors */
    enum ggml_type type;
    float base;  /* values are base + noise... */
    float scale; /* ...with noise = ih4() draw * scale */
} tspec;

/* Matrices: zero-mean noise with std 1/sqrt(fan_in), fan_in being the row
 * length ne0 that each dot product runs over. That keeps activations at unit
 * scale through every matmul, so attention is neither uniform nor one-hot and
 * the logits depend on the context. */
static void add_matrix(tspec *t, int *n, const char *name, int64_t ne0, int64_t ne1, enum ggml_type type) {
    tspec *s = &t[(*n)++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ne0 = ne0;
    s->ne1 = ne1;
    s->type = type;
    s->base = 0.0f;
    s->scale = (float)(1.0 / sqrt((double)ne0) / (double)IH4_STD);
}

/* Norm weights: F32 (llama.cpp never quantizes 1-D tensors), 1 + noise of std
 * 2^-19 * 37837 = 0.072. llama.cpp's Gemma GGUFs store the multiplier itself
 * (the converter adds Gemma's +1), so around 1.0 is the neutral value. */
static void add_norm(tspec *t, int *n, const char *name, int64_t ne0) {
    tspec *s = &t[(*n)++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ne0 = ne0;
    s->ne1 = 1;
    s->type = GGML_TYPE_F32;
    s->base = 1.0f;
    s->scale = 1.0f / 524288.0f;
}

/* The tensors gemma3's load_arch_tensors() creates, with ggml shapes {ne0, ne1}.
 * No output.weight: Gemma 3 ties the output to token_embd (the loader then uses
 * token_embd for both). Returns the tensor count; t must hold 2 + 13*n_layer. */
static int layout(const km_gemma3_shape *s, int64_t n_vocab, enum ggml_type type, tspec *t) {
    const int64_t q = (int64_t)s->head_dim * s->n_head, kv = (int64_t)s->head_dim * s->n_head_kv;
    int n = 0;
    char name[GGML_MAX_NAME];

    /* The embedding is looked up rather than multiplied, but 1/sqrt(ne0) =
     * 1/sqrt(n_embd) is also the right std for it: Gemma scales it by
     * sqrt(n_embd) on input (unit-scale inputs), and as the tied output it is
     * dotted with a unit-RMS hidden state (unit-scale logits). For the real
     * presets that is 0.03-0.04, about what trained Gemma embeddings have. */
    add_matrix(t, &n, "token_embd.weight", s->n_embd, n_vocab, type);
    for (int il = 0; il < s->n_layer; il++) {
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d." suffix ".weight", il), name)
        add_norm(t, &n, NAME("attn_norm"), s->n_embd);
        add_matrix(t, &n, NAME("attn_q"), s->n_embd, q, type);
        add_matrix(t, &n, NAME("attn_k"), s->n_embd, kv, type);
        add_matrix(t, &n, NAME("attn_v"), s->n_embd, kv, type);
        add_norm(t, &n, NAME("attn_q_norm"), s->head_dim);
        add_norm(t, &n, NAME("attn_k_norm"), s->head_dim);
        add_matrix(t, &n, NAME("attn_output"), q, s->n_embd, type);
        add_norm(t, &n, NAME("post_attention_norm"), s->n_embd);
        add_norm(t, &n, NAME("ffn_norm"), s->n_embd);
        add_matrix(t, &n, NAME("ffn_gate"), s->n_embd, s->n_ff, type);
        add_matrix(t, &n, NAME("ffn_up"), s->n_embd, s->n_ff, type);
        add_matrix(t, &n, NAME("ffn_down"), s->n_ff, s->n_embd, type);
        add_norm(t, &n, NAME("post_ffw_norm"), s->n_embd);
#undef NAME
    }
    /* The final norm is the exception: zero mean, std 2^-15 * 37837 = 1.15.
     * With tied embeddings the residual stream carries sqrt(n_embd) * e_t of
     * the current token t, which after a positive final norm gives t's own
     * logit a head start of ~2 standard deviations: a random model then
     * repeats its last token forever, and tests comparing generated text learn
     * nothing. Random signs make the head start zero on average, and greedy
     * output wanders through the vocabulary instead (measured: 40+ distinct
     * tokens in 48 greedy steps, versus 2-5 with a norm around 1). */
    add_norm(t, &n, "output_norm.weight", s->n_embd);
    t[n - 1].base = 0.0f;
    t[n - 1].scale = 1.0f / 32768.0f;
    return n;
}

/* ------------------------------------------------------------------------- */
/* Metadata                                                                   */
/* ------------------------------------------------------------------------- */

/* Copy one key/value pair of any type from src to dst. */
static int copy_kv(struct gguf_context *dst, const struct gguf_context *src, int64_t i, const char *vocab_path,
                   km_error *err) {
    const char *key = gguf_get_key(src, i);
    enum gguf_type t = gguf_get_kv_type(src, i);
    switch (t) {
    case GGUF_TYPE_UINT8: gguf_set_val_u8(dst, key, gguf_get_val_u8(src, i)); break;
    case GGUF_TYPE_INT8: gguf_set_val_i8(dst, key, gguf_get_val_i8(src, i)); break;
    case GGUF_TYPE_UINT16: gguf_set_val_u16(dst, key, gguf_get_val_u16(src, i)); break;
    case GGUF_TYPE_INT16: gguf_set_val_i16(dst, key, gguf_get_val_i16(src, i)); break;
    case GGUF_TYPE_UINT32: gguf_set_val_u32(dst, key, gguf_get_val_u32(src, i)); break;
    case GGUF_TYPE_INT32: gguf_set_val_i32(dst, key, gguf_get_val_i32(src, i)); break;
    case GGUF_TYPE_FLOAT32: gguf_set_val_f32(dst, key, gguf_get_val_f32(src, i)); break;
    case GGUF_TYPE_UINT64: gguf_set_val_u64(dst, key, gguf_get_val_u64(src, i)); break;
    case GGUF_TYPE_INT64: gguf_set_val_i64(dst, key, gguf_get_val_i64(src, i)); break;
    case GGUF_TYPE_FLOAT64: gguf_set_val_f64(dst, key, gguf_get_val_f64(src, i)); break;
    case GGUF_TYPE_BOOL: gguf_set_val_bool(dst, key, gguf_get_val_bool(src, i)); break;
    case GGUF_TYPE_STRING: gguf_set_val_str(dst, key, gguf_get_val_str(src, i)); break;
    case GGUF_TYPE_ARRAY: {
        enum gguf_type at = gguf_get_arr_type(src, i);
        size_t n = gguf_get_arr_n(src, i);
        if (at == GGUF_TYPE_STRING) {
            const char **strs = malloc((n ? n : 1) * sizeof *strs);
            if (!strs) return km_error_set(err, "%s: out of memory copying %s", vocab_path, key);
            for (size_t j = 0; j < n; j++) strs[j] = gguf_get_arr_str(src, i, j);
            gguf_set_arr_str(dst, key, strs, n);
            free(strs);
        } else if (at == GGUF_TYPE_ARRAY) {
            /* gguf's API cannot read nested arrays back; no tokenizer uses them. */
            return km_error_set(err, "%s: key %s is an array of arrays, which cannot be copied", vocab_path, key);
        } else {
            gguf_set_arr_data(dst, key, at, gguf_get_arr_data(src, i), n);
        }
        break;
    }
    default:
        return km_error_set(err, "%s: key %s has unknown type %d", vocab_path, key, (int)t);
    }
    return 0;
}

/* Opens the vocab GGUF and copies its tokenizer.* keys into dst. */
static int copy_tokenizer(struct gguf_context *dst, const char *vocab_path, int64_t *n_vocab, km_error *err) {
    /* gguf_init_from_file reports problems only through ggml's log; check the
     * file ourselves first so the error says what is wrong. */
    struct stat st;
    if (stat(vocab_path, &st) != 0) return km_error_set(err, "vocab file %s: %s", vocab_path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return km_error_set(err, "vocab file %s: not a regular file", vocab_path);

    struct gguf_init_params ip = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *src = gguf_init_from_file(vocab_path, ip);
    if (!src) return km_error_set(err, "vocab file %s: not a valid GGUF file", vocab_path);

    int64_t tok = gguf_find_key(src, "tokenizer.ggml.tokens");
    if (tok < 0 || gguf_get_kv_type(src, tok) != GGUF_TYPE_ARRAY || gguf_get_arr_type(src, tok) != GGUF_TYPE_STRING ||
        gguf_get_arr_n(src, tok) == 0) {
        gguf_free(src);
        return km_error_set(err, "vocab file %s: no tokenizer.ggml.tokens string array (not a vocab GGUF?)",
                            vocab_path);
    }
    *n_vocab = (int64_t)gguf_get_arr_n(src, tok);

    static const char prefix[] = "tokenizer.";
    int rc = 0;
    for (int64_t i = 0; i < gguf_get_n_kv(src) && rc == 0; i++)
        if (!strncmp(gguf_get_key(src, i), prefix, sizeof prefix - 1)) rc = copy_kv(dst, src, i, vocab_path, err);
    gguf_free(src);
    return rc;
}

/* The architecture keys llama.cpp reads for gemma3. The generic ones are read by
 * load_hparams(); sliding_window, sliding_window_pattern, freq_base_swa and the
 * rms epsilon by gemma3's load_arch_hparams(). The pattern and the local rope
 * base equal llama.cpp's defaults for the real presets but are written anyway:
 * the file then says what it is without relying on loader defaults. */
static void set_arch_kv(struct gguf_context *g, const km_gemma3_shape *s, const wtype *wt, uint64_t seed) {
    char name[128];
    snprintf(name, sizeof name, "kvmesh synthetic %s %s seed %llu", s->name, wt->name, (unsigned long long)seed);
    gguf_set_val_str(g, "general.architecture", "gemma3");
    gguf_set_val_str(g, "general.type", "model");
    gguf_set_val_str(g, "general.name", name);
    gguf_set_val_u32(g, "general.file_type", wt->file_type);
    gguf_set_val_u32(g, "general.quantization_version", GGML_QNT_VERSION);
    gguf_set_val_u32(g, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    gguf_set_val_u32(g, "gemma3.context_length", (uint32_t)s->n_ctx_train);
    gguf_set_val_u32(g, "gemma3.embedding_length", (uint32_t)s->n_embd);
    gguf_set_val_u32(g, "gemma3.block_count", (uint32_t)s->n_layer);
    gguf_set_val_u32(g, "gemma3.feed_forward_length", (uint32_t)s->n_ff);
    gguf_set_val_u32(g, "gemma3.attention.head_count", (uint32_t)s->n_head);
    gguf_set_val_u32(g, "gemma3.attention.head_count_kv", (uint32_t)s->n_head_kv);
    gguf_set_val_u32(g, "gemma3.attention.key_length", (uint32_t)s->head_dim);
    gguf_set_val_u32(g, "gemma3.attention.value_length", (uint32_t)s->head_dim);
    gguf_set_val_f32(g, "gemma3.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_set_val_u32(g, "gemma3.attention.sliding_window", (uint32_t)s->sliding_window);
    gguf_set_val_u32(g, "gemma3.attention.sliding_window_pattern", (uint32_t)s->swa_pattern);
    gguf_set_val_f32(g, "gemma3.rope.freq_base", s->rope_base);
    gguf_set_val_f32(g, "gemma3.rope.freq_base_swa", s->rope_base_swa);
    /* Provenance, for `kvmesh inspect` and humans; llama.cpp ignores these. */
    gguf_set_val_str(g, "kvmesh.synthetic.preset", s->name);
    gguf_set_val_u64(g, "kvmesh.synthetic.seed", seed);
}

/* ------------------------------------------------------------------------- */
/* Writing                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct writer {
    int fd;
    const char *out;     /* final path, for messages */
    const char *tmp;     /* temp path being written */
    uint64_t written;    /* bytes so far */
    uint64_t total;      /* expected file size */
    int progress;        /* print progress to stderr */
    int last_decile;     /* last 10% step reported */
    double t0;           /* km_now_ms() at start */
} writer;

static int w_write(writer *w, const void *data, size_t len, km_error *err) {
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = write(w->fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return km_error_set(err, "%s: write failed (temp file %s): %s", w->out, w->tmp, strerror(errno));
        p += n;
        len -= (size_t)n;
        w->written += (uint64_t)n;
    }
    if (w->progress && w->total > 0) {
        int decile = (int)(w->written * 10 / w->total);
        if (decile > w->last_decile && decile < 10) {
            w->last_decile = decile;
            fprintf(stderr, "modelgen: %3d%%  %8.1f MB  %6.1f s\n", decile * 10, (double)w->written / 1e6,
                    (km_now_ms() - w->t0) / 1e3);
        }
    }
    return 0;
}

static int w_zeros(writer *w, size_t len, km_error *err) {
    static const uint8_t zeros[256];
    while (len > 0) {
        size_t n = len < sizeof zeros ? len : sizeof zeros;
        if (w_write(w, zeros, n, err) != 0) return -1;
        len -= n;
    }
    return 0;
}

/* Tensors are generated CHUNK_VALUES values (4 MB of floats) at a time, in
 * whole rows, so memory stays bounded for any tensor (token_embd of gemma3-1b
 * alone is 302M values). A row longer than that is one chunk by itself. */
#define CHUNK_VALUES (1u << 20)

static int64_t rows_per_chunk(const tspec *t) {
    int64_t rows = (int64_t)CHUNK_VALUES / t->ne0;
    if (rows < 1) rows = 1;
    return rows < t->ne1 ? rows : t->ne1;
}

/* Generates, converts and writes one tensor, chunk by chunk. */
static int write_tensor(writer *w, const tspec *t, uint64_t stream, float *f32, uint8_t *conv, km_error *err) {
    const int64_t chunk = rows_per_chunk(t);
    for (int64_t r = 0; r < t->ne1; r += chunk) {
        int64_t nrows = t->ne1 - r < chunk ? t->ne1 - r : chunk;
        gen_values(&stream, t->base, t->scale, f32, (size_t)(nrows * t->ne0));
        /* ggml_quantize_chunk also does F16 and F32 (a copy); start 0 because
         * the buffers hold just this chunk. No importance matrix: none of our
         * types needs one. */
        size_t n = ggml_quantize_chunk(t->type, f32, conv, 0, nrows, t->ne0, NULL);
        if (n != ggml_row_size(t->type, t->ne0) * (size_t)nrows)
            return km_error_set(err, "%s: conversion of %s to %s produced %zu bytes", w->out, t->name,
                                ggml_type_name(t->type), n);
        if (w_write(w, conv, n, err) != 0) return -1;
    }
    return 0;
}

static void fsync_dir_of(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(copy);
}

int km_modelgen_write(const km_modelgen_params *p, km_error *err) {
    if (!p || !p->out_path || !*p->out_path) return km_error_set(err, "gen-model: no output file given");
    const km_gemma3_shape *s = km_gemma3_preset(p->preset);
    if (!s) return km_error_set(err, "%s: unknown preset '%s'", p->out_path, p->preset ? p->preset : "(none)");
    const wtype *wt = find_wtype(p->weight_type ? p->weight_type : "f16");
    if (!wt) return km_error_set(err, "%s: unknown weight type '%s' (f16, q8_0, q4_0)", p->out_path, p->weight_type);
    if (!p->vocab_path || !*p->vocab_path) return km_error_set(err, "%s: no vocab file given", p->out_path);

    /* Quantized rows are whole blocks: every matrix row length must be a
     * multiple of the block size (32 for q8_0/q4_0). */
    const int64_t blck = ggml_blck_size(wt->type);
    const int64_t q_dim = (int64_t)s->head_dim * s->n_head;
    if (s->n_embd % blck || s->n_ff % blck || q_dim % blck)
        return km_error_set(err, "%s: preset %s has row lengths that are not multiples of %s's block size %lld",
                            p->out_path, s->name, wt->name, (long long)blck);

    int rc = -1;
    int n_tensors = 2 + 13 * s->n_layer;
    tspec *specs = calloc((size_t)n_tensors, sizeof *specs);
    struct gguf_context *g = gguf_init_empty();
    struct ggml_context *tctx = NULL;
    uint8_t *meta = NULL, *conv = NULL;
    float *f32 = NULL;
    char *tmp = NULL;
    int created = 0; /* the temp file exists and is ours to remove on failure */
    writer w = {.fd = -1, .out = p->out_path, .progress = p->progress, .last_decile = 0, .t0 = km_now_ms()};
    if (!specs || !g) {
        km_error_set(err, "%s: out of memory", p->out_path);
        goto out;
    }

    /* Architecture keys first, tokenizer after: the order readers list them in. */
    set_arch_kv(g, s, wt, p->seed);
    int64_t n_vocab = 0;
    if (copy_tokenizer(g, p->vocab_path, &n_vocab, err) != 0) goto out;
    if (gguf_get_alignment(g) != GGUF_DEFAULT_ALIGNMENT) {
        km_error_set(err, "%s: unexpected gguf alignment %zu", p->out_path, gguf_get_alignment(g));
        goto out;
    }

    /* Tensor infos only: no_alloc, so the context holds headers, not data. */
    int n = layout(s, n_vocab, wt->type, specs);
    struct ggml_init_params cp = {.mem_size = (size_t)n * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    tctx = ggml_init(cp);
    if (!tctx) {
        km_error_set(err, "%s: out of memory", p->out_path);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct ggml_tensor *t = specs[i].ne1 == 1 ? ggml_new_tensor_1d(tctx, specs[i].type, specs[i].ne0)
                                                  : ggml_new_tensor_2d(tctx, specs[i].type, specs[i].ne0, specs[i].ne1);
        ggml_set_name(t, specs[i].name);
        gguf_add_tensor(g, t);
    }

    size_t meta_size = gguf_get_meta_size(g);
    meta = malloc(meta_size);
    if (!meta) {
        km_error_set(err, "%s: out of memory (%zu bytes of metadata)", p->out_path, meta_size);
        goto out;
    }
    gguf_get_meta_data(g, meta);

    /* The file is the metadata (already padded to the alignment) followed by
     * each tensor at its offset, each padded to the alignment like gguf's own
     * writer does, so the bytes equal what gguf_write_to_file would write. */
    const size_t align = gguf_get_alignment(g);
    uint64_t data_size = 0;
    for (int i = 0; i < n; i++) {
        if (gguf_get_tensor_offset(g, i) != data_size) {
            km_error_set(err, "%s: tensor %s offset mismatch", p->out_path, specs[i].name);
            goto out;
        }
        data_size += GGML_PAD(gguf_get_tensor_size(g, i), align);
    }
    w.total = meta_size + data_size;

    /* Buffers for one chunk of the largest tensor: rows_per_chunk() rows of
     * floats, and the same rows converted. */
    size_t conv_size = 0, f32_len = 0;
    for (int i = 0; i < n; i++) {
        int64_t rows = rows_per_chunk(&specs[i]);
        size_t sz = ggml_row_size(specs[i].type, specs[i].ne0) * (size_t)rows;
        if (sz > conv_size) conv_size = sz;
        if ((size_t)(rows * specs[i].ne0) > f32_len) f32_len = (size_t)(rows * specs[i].ne0);
    }
    f32 = malloc(f32_len * sizeof *f32);
    conv = malloc(conv_size);
    size_t tlen = strlen(p->out_path) + 32;
    tmp = malloc(tlen);
    if (!f32 || !conv || !tmp) {
        km_error_set(err, "%s: out of memory", p->out_path);
        goto out;
    }
    /* Same naming as km_write_file_atomic: the target's name, pid, ".tmp". */
    snprintf(tmp, tlen, "%s.%ld.tmp", p->out_path, (long)getpid());
    w.tmp = tmp;
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        km_error_set(err, "%s: cannot create temp file %s: %s", p->out_path, tmp, strerror(errno));
        goto out;
    }
    created = 1;

    if (p->progress)
        fprintf(stderr, "modelgen: %s %s seed %llu, %lld-token vocab, %d tensors, %.1f MB -> %s\n", s->name, wt->name,
                (unsigned long long)p->seed, (long long)n_vocab, n, (double)w.total / 1e6, p->out_path);

    if (w_write(&w, meta, meta_size, err) != 0) goto out;
    free(meta);
    meta = NULL;
    for (int i = 0; i < n; i++) {
        size_t sz = gguf_get_tensor_size(g, i);
        if (write_tensor(&w, &specs[i], tensor_stream(p->seed, i), f32, conv, err) != 0) goto out;
        if (w_zeros(&w, GGML_PAD(sz, align) - sz, err) != 0) goto out;
    }
    if (w.written != w.total) {
        km_error_set(err, "%s: wrote %llu bytes, expected %llu", p->out_path, (unsigned long long)w.written,
                     (unsigned long long)w.total);
        goto out;
    }
    if (fsync(w.fd) != 0) {
        km_error_set(err, "%s: fsync of temp file %s failed: %s", p->out_path, tmp, strerror(errno));
        goto out;
    }
    int fd = w.fd;
    w.fd = -1;
    if (close(fd) != 0) {
        km_error_set(err, "%s: close of temp file %s failed: %s", p->out_path, tmp, strerror(errno));
        goto out;
    }
    if (rename(tmp, p->out_path) != 0) {
        km_error_set(err, "%s: cannot rename %s over it: %s", p->out_path, tmp, strerror(errno));
        goto out;
    }
    created = 0;
    /* The rename is durable only once the directory entry is on disk. */
    fsync_dir_of(p->out_path);
    if (p->progress)
        fprintf(stderr, "modelgen: wrote %s: %llu bytes (%.1f MB) in %.1f s\n", p->out_path,
                (unsigned long long)w.total, (double)w.total / 1e6, (km_now_ms() - w.t0) / 1e3);
    rc = 0;

out:
    if (w.fd >= 0) close(w.fd);
    if (created) unlink(tmp); /* never leave a partial file behind */
    free(tmp);
    free(f32);
    free(conv);
    free(meta);
    if (tctx) ggml_free(tctx);
    if (g) gguf_free(g);
    free(specs);
    return rc;
}
