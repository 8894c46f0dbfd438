/* engine.h -- the llama.cpp wrapper: models, contexts, prefill, sampling, state.
 *
 * Ownership: km_model_load/km_model_free, km_ctx_init/km_ctx_free,
 * km_sampler_init/km_sampler_free. One model can back several contexts; a
 * context has one or more sequences (seq ids 0..n_seq-1), each its own prompt.
 *
 * Prefill has exactly one shape, cached or not (exactness depends on it):
 * tokens are decoded in chunks that end at the prompt's boundaries, and the
 * final prompt token is always decoded alone, giving the logits to sample
 * from. Batching changes floating-point results (350 tokens in one batch vs
 * 300 + 50 differ by up to 0.06 in the logits), so a state restored at a
 * boundary and prefilled from there is bit-identical to a cold run only if the
 * cold run cut its batches at the same places -- and it does, because this is
 * the only way to prefill.
 *
 * The cache layout matters as much: a restored state puts its cells at the
 * start of the KV cache, while a cold run leaves them where they were
 * computed (the sliding-window cache keeps evicted cells until reused), and
 * attention sums over cells in cache order. So at every boundary the engine
 * exports the state and re-imports it: cold and cached runs then continue
 * from the same layout. The exported bytes are handed to the caller, which
 * is where cache snapshots come from, so this costs one import per boundary
 * (about 1-2 ms for Gemma 3 270M). */
#ifndef KVMESH_ENGINE_H
#define KVMESH_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefix.h"
#include "util.h"

struct llama_model;
struct llama_context;

typedef struct km_model km_model;
typedef struct km_ctx km_ctx;
typedef struct km_sampler km_sampler;

/* Once per process: llama.cpp backends and a log filter (level as km_log_level). */
void km_engine_init(void);

/* ---- models ---- */

/* Load a GGUF. Also computes the model fingerprint (XXH3-128 of the whole file),
 * which names the exact weights: any other file, even of the same shape, differs. */
km_model *km_model_load(const char *path, km_error *err);
/* The fingerprint of a model file without loading it. */
int km_file_fingerprint(const char *path, uint8_t out[KM_FINGERPRINT_LEN], km_error *err);
void km_model_free(km_model *m);
const uint8_t *km_model_fingerprint(const km_model *m);
const char *km_model_path(const km_model *m);
struct llama_model *km_model_llama(km_model *m);
int km_model_n_vocab(const km_model *m);
/* Sliding window in tokens (0 if the model has none). */
int km_model_n_swa(const km_model *m);
/* One-line description (architecture, size, params) for logs. */
void km_model_describe(const km_model *m, char *buf, size_t len);

/* Tokenize text; *out is malloc'd. flags: KM_TOKENIZE_BOS prepends BOS if the
 * model wants one; KM_TOKENIZE_SPECIAL turns special-token text (e.g.
 * "<start_of_turn>") into those tokens -- for text made by a chat template,
 * never for raw user text. Returns 0 or -1. */
enum { KM_TOKENIZE_BOS = 1u, KM_TOKENIZE_SPECIAL = 2u };
int km_tokenize(const km_model *m, const char *text, size_t len, unsigned flags, int32_t **out, int *n_out,
                km_error *err);
/* The most text bytes one token stands for (the longest piece, special
 * tokens' text included), so a text of n bytes is at least n / this many
 * tokens; 0 when no such bound holds (WordPiece and Unigram tokenizers
 * normalize text, e.g. collapse whitespace). Computed once at load. */
int km_model_max_piece_len(const km_model *m);
/* Text of one token into buf (NUL-terminated, truncated to len); returns its length. */
int km_token_piece(const km_model *m, int32_t token, char *buf, int len);
bool km_token_is_eog(const km_model *m, int32_t token);

/* ---- contexts ---- */

typedef enum km_kv_type { KM_KV_F16 = 0, KM_KV_Q8_0 = 1 } km_kv_type;

typedef struct km_ctx_params {
    int n_ctx;          /* tokens per sequence (default 4096) */
    int n_batch;        /* max tokens per llama_decode call (default 512) */
    int n_threads;      /* compute threads (default 1) */
    km_kv_type kv_type; /* f16 (default) or q8_0 (forces flash attention on) */
    int flash_attn;     /* -1 auto (default), 0 off, 1 on */
    int n_seq;          /* sequences (default 1) */
    int n_outputs_max;  /* logits rows per batch (default 8): with a 262k vocab each row costs 1 MiB of buffer */
    double slowdown;    /* device emulation by time dilation: each decode call lasts slowdown x
                           its compute time (thread CPU time with 1 thread, else wall time);
                           1 = off (default) */
} km_ctx_params;

km_ctx_params km_ctx_default_params(void);
const char *km_kv_type_name(km_kv_type t);
int km_kv_type_parse(const char *s, km_kv_type *out);

km_ctx *km_ctx_init(km_model *m, const km_ctx_params *p, km_error *err);
void km_ctx_free(km_ctx *c);
km_model *km_ctx_model(km_ctx *c);
struct llama_context *km_ctx_llama(km_ctx *c);
const km_ctx_params *km_ctx_params_of(const km_ctx *c);
/* ggml type ids of the K and V caches (part of every prefix key and blob). */
int km_ctx_type_k(const km_ctx *c);
int km_ctx_type_v(const km_ctx *c);
/* Key k_0 for this model + KV configuration. */
km_key km_ctx_root_key(const km_ctx *c, const char *salt);

/* Forget a sequence's tokens. */
void km_seq_clear(km_ctx *c, int seq);
/* Number of positions held for seq (max pos + 1; 0 if empty). */
int km_seq_n_past(km_ctx *c, int seq);

/* ---- prefill ---- */

/* Called after the chunk ending at bounds[i] (= n_past tokens held) was decoded,
 * with the sequence's state at that point (valid during the call only): the
 * place to store a snapshot. Nonzero return aborts the prefill. */
typedef int (*km_boundary_fn)(void *ud, int i, int n_past, const uint8_t *state, size_t state_len);

/* The sequence holds exactly tokens[0..n_past). Decode tokens[n_past..n_tokens)
 * chunked at bounds (sorted, strictly increasing, last == n_tokens - 1, as
 * km_boundaries makes them); each chunk longer than n_batch is split at
 * multiples of n_batch from its start. At each boundary > n_past the state is
 * exported, re-imported (see above) and passed to fn (may be NULL).
 * Afterwards the logits of the last token are ready. */
int km_prefill(km_ctx *c, int seq, const int32_t *tokens, int n_tokens, int n_past, const int *bounds, int n_bounds,
               km_boundary_fn fn, void *ud, km_error *err);

/* Logits of the last decoded token (n_vocab floats), or NULL. */
const float *km_logits(km_ctx *c);
/* The token greedy sampling picks from those logits (the first maximum, as
 * llama.cpp's greedy sampler), or -1 if there are none. */
int32_t km_logits_argmax(km_ctx *c);

/* ---- sampling and decoding ---- */

typedef struct km_sampling {
    float temp;   /* <= 0: greedy (default 0) */
    int top_k;    /* 0 = off (default 40) */
    float top_p;  /* 1 = off (default 0.95) */
    uint32_t seed;
} km_sampling;

km_sampling km_sampling_default(void);
km_sampler *km_sampler_init(const km_sampling *s);
void km_sampler_free(km_sampler *s);

/* Called for every generated token; nonzero return stops generation. */
typedef int (*km_token_fn)(void *ud, int32_t token);

/* Sample from the current logits, report, decode, repeat: at most n_predict
 * tokens, stopping early at end-of-generation. The sequence holds n_past
 * tokens before the call. Returns the number of tokens generated, or -1. */
int km_generate(km_ctx *c, int seq, int n_past, km_sampler *s, int n_predict, km_token_fn fn, void *ud, km_error *err);

/* ---- per-sequence state (llama_state_seq_*) ---- */

/* Exact byte size of seq's state now. */
size_t km_state_size(km_ctx *c, int seq);
/* Estimated state size of a sequence holding n_tokens tokens, from the layout
 * learnt at init (sliding-window caches hold at most the window); for cost
 * estimates before a fetch. 0 if the layout is unknown. */
size_t km_state_size_estimate(const km_ctx *c, int n_tokens);
/* Copy seq's state into dst (cap bytes); *written gets the size. */
int km_state_save(km_ctx *c, int seq, uint8_t *dst, size_t cap, size_t *written, km_error *err);
/* Structural check of a state payload against this context's KV layout (learnt
 * at km_ctx_init): every length, type and row size, positions < n_tokens, and
 * the exact total size. Untrusted bytes pass this before reaching llama.cpp. */
int km_state_check(const km_ctx *c, const uint8_t *payload, size_t len, int n_tokens, km_error *err);
/* Replace seq's contents with a state of n_tokens tokens (checked first). */
int km_state_restore(km_ctx *c, int seq, const uint8_t *payload, size_t len, int n_tokens, km_error *err);

#endif
