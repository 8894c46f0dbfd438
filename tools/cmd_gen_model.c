/* cmd_gen_model.c -- `kvmesh gen-model`: write a synthetic gemma3 GGUF.
 *
 * A thin front end over km_modelgen_write(): parses options, picks the default
 * vocab file, refuses to clobber an existing model unless told to. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "modelgen.h"

#define DEFAULT_VOCAB_FILE "ggml-vocab-gemma-4.gguf"

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh gen-model --preset NAME --out FILE [--type f16|q8_0|q4_0] [--seed N]\n"
            "                        [--vocab FILE] [--force] [--quiet]\n"
            "\n"
            "Writes a GGUF with the exact architecture of a real model (llama.cpp arch\n"
            "`gemma3`) and seeded random weights: compute cost and prompt-state size are\n"
            "those of the real model, the text it writes is meaningless. Same preset, type,\n"
            "seed and vocab give the same bytes on every machine. The file is written to a\n"
            "temp file next to FILE and renamed into place when complete.\n"
            "\n"
            "options:\n"
            "  -p, --preset NAME  model shape (required), one of:\n");
    for (const char *const *n = km_gemma3_preset_names(); *n; n++) {
        const km_gemma3_shape *s = km_gemma3_preset(*n);
        fprintf(f, "      %-12s %d blocks, embd %d, ffn %d, %d heads (%d kv) of %d, window %d,\n"
                   "      %-12s %d sliding-window blocks then 1 global, repeated; context %d\n",
                s->name, s->n_layer, s->n_embd, s->n_ff, s->n_head, s->n_head_kv, s->head_dim, s->sliding_window,
                "", s->swa_pattern - 1, s->n_ctx_train);
    }
    fprintf(f,
            "  -t, --type TYPE    weight matrices: f16 (default), q8_0 or q4_0; norms stay f32\n"
            "  -s, --seed N       weight seed, unsigned 64-bit, decimal or 0x hex (default 1)\n"
            "  -v, --vocab FILE   GGUF to copy the tokenizer.* keys from; default DIR/%s\n"
            "                     where DIR is $KVMESH_VOCAB_DIR or the build-time directory\n"
            "                     (now: %s)\n"
            "  -o, --out FILE     output GGUF (required)\n"
            "  -f, --force        overwrite FILE if it exists\n"
            "  -q, --quiet        no progress on stderr\n"
            "  -h, --help         this text\n"
            "\n"
            "exit status: 0 written, 1 runtime error (file exists, bad vocab, I/O), 2 usage error\n",
            DEFAULT_VOCAB_FILE, *kvmesh_vocab_dir() ? kvmesh_vocab_dir() : "none configured");
}

/* Strict unsigned 64-bit parse: decimal, or hex with 0x; no sign, no spaces,
 * nothing trailing. (strtoull's base 0 would read "010" as octal 8.) */
static int parse_u64(const char *s, uint64_t *out) {
    int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = hex ? s + 2 : s;
    if (!(hex ? isxdigit((unsigned char)*digits) : isdigit((unsigned char)*digits))) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(digits, &end, hex ? 16 : 10);
    if (errno || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

int cmd_gen_model(int argc, char **argv) {
    static const struct option opts[] = {
        {"preset", required_argument, NULL, 'p'}, {"type", required_argument, NULL, 't'},
        {"seed", required_argument, NULL, 's'},   {"vocab", required_argument, NULL, 'v'},
        {"out", required_argument, NULL, 'o'},    {"force", no_argument, NULL, 'f'},
        {"quiet", no_argument, NULL, 'q'},        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    km_modelgen_params p = km_modelgen_default_params();
    p.progress = 1;
    int force = 0;

    /* optind = 0 makes glibc's getopt start over: another subcommand (or a test
     * calling us twice) may have run getopt in this process before. */
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, "p:t:s:v:o:fqh", opts, NULL)) != -1) {
        switch (c) {
        case 'p': p.preset = optarg; break;
        case 't': p.weight_type = optarg; break;
        case 's':
            if (parse_u64(optarg, &p.seed) != 0) {
                fprintf(stderr, "kvmesh gen-model: bad --seed '%s' (want an unsigned 64-bit integer)\n", optarg);
                return 2;
            }
            break;
        case 'v': p.vocab_path = optarg; break;
        case 'o': p.out_path = optarg; break;
        case 'f': force = 1; break;
        case 'q': p.progress = 0; break;
        case 'h': usage(stdout); return 0;
        default: /* getopt already printed what was wrong */
            fprintf(stderr, "kvmesh gen-model: see kvmesh gen-model --help\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvmesh gen-model: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (!p.preset) {
        fprintf(stderr, "kvmesh gen-model: --preset is required (see --help)\n");
        return 2;
    }
    if (!km_gemma3_preset(p.preset)) {
        fprintf(stderr, "kvmesh gen-model: unknown preset '%s' (presets:", p.preset);
        for (const char *const *n = km_gemma3_preset_names(); *n; n++) fprintf(stderr, " %s", *n);
        fprintf(stderr, ")\n");
        return 2;
    }
    if (strcmp(p.weight_type, "f16") && strcmp(p.weight_type, "q8_0") && strcmp(p.weight_type, "q4_0")) {
        fprintf(stderr, "kvmesh gen-model: bad --type '%s' (want f16, q8_0 or q4_0)\n", p.weight_type);
        return 2;
    }
    if (!p.out_path || !*p.out_path) {
        fprintf(stderr, "kvmesh gen-model: --out is required (see --help)\n");
        return 2;
    }

    char vocab[4096];
    if (!p.vocab_path) {
        const char *dir = kvmesh_vocab_dir();
        if (!*dir) {
            fprintf(stderr, "kvmesh gen-model: no vocab directory configured: set KVMESH_VOCAB_DIR or use --vocab\n");
            return 1;
        }
        if ((size_t)snprintf(vocab, sizeof vocab, "%s/%s", dir, DEFAULT_VOCAB_FILE) >= sizeof vocab) {
            fprintf(stderr, "kvmesh gen-model: vocab directory path too long: %s\n", dir);
            return 1;
        }
        p.vocab_path = vocab;
    }

    /* Checked here, not in the library: km_modelgen_write replaces the file
     * atomically, which is what --force asks for. */
    struct stat st;
    if (!force && lstat(p.out_path, &st) == 0) {
        fprintf(stderr, "kvmesh gen-model: %s exists (use --force to overwrite)\n", p.out_path);
        return 1;
    }

    km_error err = {{0}};
    /* Like any tool writing an output file: create its directory if missing. */
    char *dir = strdup(p.out_path);
    int dir_rc = km_mkdir_p(dirname(dir), &err);
    free(dir);
    if (dir_rc != 0) {
        fprintf(stderr, "kvmesh gen-model: %s\n", err.msg);
        return 1;
    }
    if (km_modelgen_write(&p, &err) != 0) {
        fprintf(stderr, "kvmesh gen-model: %s\n", err.msg);
        return 1;
    }
    return 0;
}
