/* kvmesh.c -- the command-line entry point: dispatches to one subcommand. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"

#ifndef KVMESH_DEFAULT_VOCAB_DIR
#define KVMESH_DEFAULT_VOCAB_DIR ""
#endif

const char *kvmesh_vocab_dir(void) {
    const char *e = getenv("KVMESH_VOCAB_DIR");
    return e && *e ? e : KVMESH_DEFAULT_VOCAB_DIR;
}

static const char *bad_number; /* the first flag argument that was not one */

static double parse_number(const char *s, int whole) {
    char *end;
    errno = 0;
    double v = s && *s ? strtod(s, &end) : NAN;
    if (!s || !*s || *end || errno == ERANGE || !isfinite(v) || (whole && v != floor(v))) {
        if (!bad_number) bad_number = s ? s : "";
        return 0;
    }
    return v;
}

int cli_int(const char *s) {
    double v = parse_number(s, 1);
    if (v < INT_MIN || v > INT_MAX) {
        if (!bad_number) bad_number = s;
        return 0;
    }
    return (int)v;
}

double cli_num(const char *s) { return parse_number(s, 0); }

unsigned long long cli_uint(const char *s) {
    double v = parse_number(s, 1);
    if (v < 0 || v > 9007199254740992.0) { /* 2^53: exact in a double */
        if (!bad_number) bad_number = s;
        return 0;
    }
    return (unsigned long long)v;
}

int cli_bad_number(const char *cmd) {
    if (!bad_number) return 0;
    fprintf(stderr, "%s: '%s' is not a number (see --help)\n", cmd, bad_number);
    return 1;
}

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *what;
} commands[] = {
    {"demo", cmd_demo, "nodes on loopback sharing prompt states vs isolated ones, on a built-in few-shot stream"},
    {"node", cmd_node, "serve a model over an OpenAI-compatible HTTP API with the prompt cache"},
    {"run", cmd_run, "run a prompt through the local prompt cache and print the text and timings"},
    {"gen-model", cmd_gen_model, "write a synthetic GGUF with the exact shape of a real model"},
    {"inspect", cmd_inspect, "describe a state blob or a GGUF model file"},
    {"catalog", cmd_catalog, "rebuild or show the shared tier's catalog (kvmesh catalog rebuild --store URL --model M)"},
    {"bench", cmd_bench, "benchmarks: local (prompt-cache costs), mmlu (the paper's Redis experiment), link (emulation check)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: kvmesh <command> [options]   (kvmesh <command> --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].what);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "kvmesh: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
