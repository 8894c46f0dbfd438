/* modelgen.h -- synthetic GGUF models with the exact shapes of real ones.
 *
 * Writes a `gemma3` GGUF with seeded random weights: compute cost and KV-state
 * size are those of the real model, so speed and size measurements transfer;
 * only the text it writes is meaningless. The tokenizer (every `tokenizer.*`
 * key) is copied from a vocab GGUF such as llama.cpp's models/ggml-vocab-gemma-4.gguf.
 * Output is deterministic: same preset, type, seed and vocab -> same bytes. */
#ifndef KVMESH_MODELGEN_H
#define KVMESH_MODELGEN_H

#include <stdint.h>

#include "util.h"

typedef struct km_gemma3_shape {
    const char *name;     /* preset name, e.g. "gemma3-270m" */
    int n_layer;          /* blocks */
    int n_embd;           /* embedding length */
    int n_ff;             /* feed-forward length */
    int n_head;           /* query heads */
    int n_head_kv;        /* key/value heads */
    int head_dim;         /* key and value length per head */
    int sliding_window;   /* SWA window in tokens */
    int swa_pattern;      /* every swa_pattern-th layer is global (Gemma 3: 6) */
    float rope_base;      /* global layers */
    float rope_base_swa;  /* local (sliding-window) layers */
    int n_ctx_train;      /* context_length key */
} km_gemma3_shape;

/* Presets: "gemma3-270m", "gemma3-1b", "tiny". NULL if unknown. */
const km_gemma3_shape *km_gemma3_preset(const char *name);
/* NULL-terminated list of preset names (for --help). */
const char *const *km_gemma3_preset_names(void);

typedef struct km_modelgen_params {
    const char *preset;      /* preset name */
    const char *weight_type; /* "f16" (default), "q8_0", "q4_0" */
    uint64_t seed;           /* weight seed (default 1) */
    const char *vocab_path;  /* GGUF to copy the tokenizer from */
    const char *out_path;    /* output file; written crash-safely (temp + rename) */
    int progress;            /* print progress to stderr */
} km_modelgen_params;

km_modelgen_params km_modelgen_default_params(void);

/* Generate the model. Returns 0, or -1 with err set (naming the file and problem). */
int km_modelgen_write(const km_modelgen_params *p, km_error *err);

#endif
