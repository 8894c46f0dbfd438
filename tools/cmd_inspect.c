/* cmd_inspect.c -- `kvmesh inspect FILE`: describe a state blob or a GGUF model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"
#include "commands.h"
#include "gguf.h"
#include "util.h"

static void inspect_usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh inspect FILE\n"
            "\n"
            "Describes FILE: a kvmesh state blob (.kvb; header fields, tokens, checksum check,\n"
            "whether it carries a shared tier's MAC)\n"
            "or a GGUF model (architecture, shape keys, tensors). Exit 1 if FILE is invalid.\n");
}

static int inspect_blob(const char *path, const uint8_t *data, size_t len) {
    km_blob_info b;
    km_error err;
    if (km_blob_parse(data, len, (size_t)-1, &b, &err) != 0) {
        fprintf(stderr, "kvmesh inspect: %s: invalid state blob: %s\n", path, err.msg);
        return 1;
    }
    char fp[2 * KM_FINGERPRINT_LEN + 1];
    km_key k;
    memcpy(k.b, b.fingerprint, KM_FINGERPRINT_LEN);
    km_key_hex(k, fp);
    printf("file:        %s\n", path);
    printf("kind:        kvmesh state blob, format version %u, checksum ok\n", b.version);
    printf("size:        %zu bytes (header %d, tokens %u x 4, payload %llu)\n", len, KM_BLOB_HEADER_SIZE, b.n_tokens,
           (unsigned long long)b.payload_len);
    printf("model:       fingerprint %s\n", fp);
    printf("kv types:    K %s, V %s\n", ggml_type_name((enum ggml_type)b.type_k), ggml_type_name((enum ggml_type)b.type_v));
    printf("tokens:      %u (%.1f bytes of state per token as stored, %.1f decoded)\n", b.n_tokens,
           (double)b.payload_len / b.n_tokens, (double)b.raw_len / b.n_tokens);
    if (b.flags & KM_BLOB_F_ZSTD)
        printf("payload:     zstd%s, %llu -> %llu bytes (%.1f %%)\n", b.flags & KM_BLOB_F_SHUFFLE2 ? " after a 2-byte shuffle" : "",
               (unsigned long long)b.raw_len, (unsigned long long)b.payload_len, 100.0 * (double)b.payload_len / (double)b.raw_len);
    else
        printf("payload:     uncompressed\n");
    if (b.has_next) printf("next token:  greedy picks %d after token %d (first-token hint)\n", b.next_token, b.next_from);
    printf("mac:         %s\n", b.has_mac ? "present (a shared tier's; not checked here: needs its secret)"
                                          : "none (a local state)");
    printf("first ids:  ");
    for (uint32_t i = 0; i < b.n_tokens && i < 16; i++) printf(" %d", km_blob_token(&b, i));
    printf("%s\n", b.n_tokens > 16 ? " ..." : "");
    return 0;
}

static int inspect_gguf(const char *path) {
    struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, gp);
    if (!g) {
        fprintf(stderr, "kvmesh inspect: %s: not a valid GGUF file\n", path);
        return 1;
    }
    printf("file:        %s\n", path);
    printf("kind:        GGUF v%u, %lld metadata keys, %lld tensors\n", gguf_get_version(g), (long long)gguf_get_n_kv(g),
           (long long)gguf_get_n_tensors(g));
    int64_t ai = gguf_find_key(g, "general.architecture");
    const char *arch = ai >= 0 && gguf_get_kv_type(g, ai) == GGUF_TYPE_STRING ? gguf_get_val_str(g, ai) : "?";
    printf("arch:        %s\n", arch);
    int64_t n = gguf_get_n_kv(g);
    size_t alen = strlen(arch);
    for (int64_t i = 0; i < n; i++) {
        const char *key = gguf_get_key(g, i);
        bool shape = !strncmp(key, arch, alen) && key[alen] == '.';
        if (!shape && strcmp(key, "general.name") && strcmp(key, "general.file_type") && strcmp(key, "tokenizer.ggml.model"))
            continue;
        printf("  %-44s ", key);
        switch (gguf_get_kv_type(g, i)) {
        case GGUF_TYPE_STRING: printf("%s\n", gguf_get_val_str(g, i)); break;
        case GGUF_TYPE_UINT32: printf("%u\n", gguf_get_val_u32(g, i)); break;
        case GGUF_TYPE_INT32: printf("%d\n", gguf_get_val_i32(g, i)); break;
        case GGUF_TYPE_FLOAT32: printf("%g\n", gguf_get_val_f32(g, i)); break;
        case GGUF_TYPE_UINT64: printf("%llu\n", (unsigned long long)gguf_get_val_u64(g, i)); break;
        case GGUF_TYPE_BOOL: printf("%s\n", gguf_get_val_bool(g, i) ? "true" : "false"); break;
        case GGUF_TYPE_ARRAY: printf("[%zu values]\n", gguf_get_arr_n(g, i)); break;
        default: printf("(type %d)\n", (int)gguf_get_kv_type(g, i)); break;
        }
    }
    int64_t vi = gguf_find_key(g, "tokenizer.ggml.tokens");
    if (vi >= 0) printf("vocab:       %zu tokens\n", gguf_get_arr_n(g, vi));
    size_t total = 0;
    int64_t nt = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < nt; i++) total += gguf_get_tensor_size(g, i);
    printf("tensor data: %.1f MB\n", total / 1e6);
    for (int64_t i = 0; i < nt && i < 12; i++)
        printf("  %-32s %-6s %zu bytes\n", gguf_get_tensor_name(g, i), ggml_type_name(gguf_get_tensor_type(g, i)),
               gguf_get_tensor_size(g, i));
    if (nt > 12) printf("  ... %lld more\n", (long long)(nt - 12));
    gguf_free(g);
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        inspect_usage(argc == 2 ? stdout : stderr);
        return argc == 2 ? 0 : 2;
    }
    const char *path = argv[1];
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got == 4 && !memcmp(magic, KM_BLOB_MAGIC, 4)) {
        uint8_t *data;
        size_t len;
        km_error err;
        if (km_read_file(path, (size_t)4 << 30, &data, &len, &err) != 0) {
            fprintf(stderr, "kvmesh inspect: %s\n", err.msg);
            return 1;
        }
        int rc = inspect_blob(path, data, len);
        free(data);
        return rc;
    }
    if (got == 4 && !memcmp(magic, "GGUF", 4)) return inspect_gguf(path);
    fprintf(stderr, "kvmesh inspect: %s: neither a kvmesh state blob nor a GGUF file\n", path);
    return 1;
}
