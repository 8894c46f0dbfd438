/* fuzz_state.c -- libFuzzer target for km_state_check, the guard in front of
 * llama_state_seq_set_data. Inputs start from a real state of the tiny test
 * model (the seed corpus run.sh writes), and whatever km_state_check accepts
 * is then given to llama.cpp: a crash there means the check let through bytes
 * that llama.cpp cannot take. Built and run by tests/fuzz/run.sh;
 * KVMESH_FUZZ_MODEL names the model. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static km_model *model;
static km_ctx *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    km_log_level = -1;
    const char *path = getenv("KVMESH_FUZZ_MODEL");
    km_error err;
    model = path ? km_model_load(path, &err) : NULL;
    if (!model) {
        fprintf(stderr, "fuzz_state: set KVMESH_FUZZ_MODEL to a model (%s)\n", path ? err.msg : "unset");
        exit(1);
    }
    km_ctx_params cp = km_ctx_default_params();
    cp.n_ctx = 256;
    ctx = km_ctx_init(model, &cp, &err);
    if (!ctx) exit(1);
    /* Write a seed: the state after 40 tokens, prefixed by its token count. */
    const char *seed = getenv("KVMESH_FUZZ_SEED_OUT");
    if (seed) {
        int32_t toks[40];
        for (int i = 0; i < 40; i++) toks[i] = 2 + i * 7;
        int b[1] = {39};
        if (km_prefill(ctx, 0, toks, 40, 0, b, 1, NULL, NULL, &err) != 0) exit(1);
        size_t n = km_state_size(ctx, 0), w;
        uint8_t *buf = malloc(n + 1);
        buf[0] = 40;
        km_state_save(ctx, 0, buf + 1, n, &w, &err);
        FILE *f = fopen(seed, "wb");
        fwrite(buf, 1, n + 1, f);
        fclose(f);
        free(buf);
        km_seq_clear(ctx, 0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int n_tokens = data[0] ? data[0] : 1; /* the first byte: claimed token count */
    km_error err;
    if (km_state_check(ctx, data + 1, size - 1, n_tokens, &err) == 0) {
        if (km_state_restore(ctx, 0, data + 1, size - 1, n_tokens, &err) == 0 && km_seq_n_past(ctx, 0) != n_tokens)
            abort();
        km_seq_clear(ctx, 0);
    }
    return 0;
}
