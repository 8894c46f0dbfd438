/* test_cli.c -- the kvmesh command line as a user meets it. */
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "testutil.h"
#include "util.h"

static char out_buf[1 << 16];

/* Run `kvmesh <args>` with stdout and stderr captured; returns the exit code. */
static int kvmesh(const char *args) {
    char cmd[8192], tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/kvmesh-cli-XXXXXX", tu_tmp_base());
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    snprintf(cmd, sizeof cmd, "'%s' %s >%s 2>&1", tu_kvmesh_bin(), args, tmpl);
    int st = system(cmd);
    FILE *f = fdopen(fd, "r");
    size_t n = fread(out_buf, 1, sizeof out_buf - 1, f);
    out_buf[n] = 0;
    fclose(f);
    remove(tmpl);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void assert_out_has(const char *needle) {
    if (!strstr(out_buf, needle)) fail_msg("output lacks '%s':\n%s", needle, out_buf);
}

static void test_help_everywhere(void **state) {
    (void)state;
    assert_int_equal(kvmesh("--help"), 0);
    assert_out_has("gen-model");
    assert_int_equal(kvmesh("run --help"), 0);
    assert_out_has("--segment-sep");
    assert_int_equal(kvmesh("gen-model --help"), 0);
    assert_out_has("gemma3-270m");
    assert_int_equal(kvmesh("inspect --help"), 0);
    assert_int_equal(kvmesh("bench local --help"), 0);
    assert_out_has("--prompts");
    assert_int_equal(kvmesh("frobnicate"), 2);
    assert_out_has("unknown command");
    assert_int_equal(kvmesh("run --model"), 2);
    assert_int_equal(kvmesh("run --prompt hi"), 2);
    assert_int_equal(kvmesh("run --model x --kv-type f32 --prompt hi"), 2);
    assert_out_has("f16 or q8_0");
    /* numbers are numbers: "abc" is not 0 (for --max-wait: no limit) */
    assert_int_equal(kvmesh("node --model x --max-wait abc"), 2);
    assert_out_has("kvmesh node: 'abc' is not a number");
    assert_int_equal(kvmesh("node --model x --max-connections-per-ip 8x"), 2);
    assert_out_has("'8x' is not a number");
    assert_int_equal(kvmesh("run --model x --prompt hi --disk-budget ''"), 2);
    assert_out_has("kvmesh run: '' is not a number");
    assert_int_equal(kvmesh("run --model x --prompt hi -n 2.5"), 2);
    assert_out_has("'2.5' is not a number");
}

/* Every flag a command's --help lists is one its parser knows (a flag added
 * to the help but lost from the option table once went unnoticed). Each is
 * given an argument and followed by an unknown flag, so the command stops
 * there (or at the argument, if "1" is not a valid one) before doing anything. */
static void test_help_flags_are_accepted(void **state) {
    (void)state;
    static const char *const cmds[] = {"node", "run"};
    for (size_t c = 0; c < sizeof cmds / sizeof *cmds; c++) {
        char args[256];
        snprintf(args, sizeof args, "%s --help", cmds[c]);
        assert_int_equal(kvmesh(args), 0);
        static char help[sizeof out_buf];
        memcpy(help, out_buf, sizeof help);
        int checked = 0;
        for (char *p = strstr(help, "\n  "); p; p = strstr(p + 1, "\n  ")) {
            char *f = p + 1 + strspn(p + 1, " ");
            if (f[0] == '-' && f[1] != '-') f = strstr(f, ", --") ? strstr(f, ", --") + 2 : f; /* "-m, --model" */
            if (strncmp(f, "--", 2) != 0) continue;
            char flag[64];
            size_t n = strspn(f + 2, "abcdefghijklmnopqrstuvwxyz0123456789-");
            if (n == 0 || n >= sizeof flag - 2 || strncmp(f + 2, "help", n) == 0) continue;
            snprintf(flag, sizeof flag, "--%.*s", (int)n, f + 2);
            snprintf(args, sizeof args, "%s %s 1 --no-such-flag", cmds[c], flag);
            assert_int_equal(kvmesh(args), 2);
            char unknown[96];
            snprintf(unknown, sizeof unknown, "unrecognized option '%s'", flag);
            if (strstr(out_buf, unknown)) fail_msg("kvmesh %s --help lists %s, which it does not accept", cmds[c], flag);
            checked++;
        }
        assert_true(checked >= 10);
    }
}

static void test_errors_name_the_file(void **state) {
    (void)state;
    assert_int_equal(kvmesh("run --model /nonexistent/m.gguf --prompt hi --no-cache"), 1);
    assert_out_has("/nonexistent/m.gguf");
    assert_int_equal(kvmesh("run --model /etc/hostname --prompt hi --no-cache"), 1);
    assert_out_has("/etc/hostname");
    assert_int_equal(kvmesh("inspect /etc/hostname"), 1);
    assert_out_has("neither");
}

static void test_run_twice_reuses(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[9000];
    snprintf(args, sizeof args,
             "run --model '%s' --cache-dir %s -n 12 --segment-sep '\\n\\n' "
             "--prompt 'You are a helpful assistant.\n\nFirst example: the cat sat.\n\nNow: the dog'",
             tu_model("tiny-f16.gguf"), dir);
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("(miss)");
    assert_out_has("stored 3 states");
    static char first_text[sizeof out_buf];
    memcpy(first_text, out_buf, sizeof out_buf);
    *strstr(first_text, "kvmesh: ttft") = 0;
    assert_int_equal(kvmesh(args), 0);
    /* a full hit on a greedy request; the states are files of an earlier
     * process, so their first-token hint is checked (one decode), not used */
    assert_out_has("(boundary 3/3)");
    assert_out_has("prefilled 1 tok");
    assert_out_has("stored 0 states");
    /* same text: greedy output is identical */
    if (strncmp(out_buf, first_text, strlen(first_text)) != 0) fail_msg("text differs:\n%s\nvs\n%s", first_text, out_buf);
    /* inspect one of the stored blobs */
    DIR *d = opendir(dir);
    struct dirent *e;
    char blob[4200] = "";
    int n_files = 0;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".kvb")) {
            n_files++;
            snprintf(blob, sizeof blob, "%s/%s", dir, e->d_name);
        }
    closedir(d);
    assert_int_equal(n_files, 3);
    snprintf(args, sizeof args, "inspect %s", blob);
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("format version 3, checksum ok");
    assert_out_has("mac:         none (a local state)");
    assert_out_has("K f16, V f16");
    assert_out_has("payload:     zstd after a 2-byte shuffle"); /* the disk tier compresses f16 states */
    /* corrupt it: inspect says so */
    FILE *f = fopen(blob, "r+b");
    fseek(f, -5, SEEK_END);
    fputc(0x55, f);
    fclose(f);
    assert_int_equal(kvmesh(args), 1);
    assert_out_has("checksum mismatch");
    snprintf(args, sizeof args, "inspect '%s'", tu_model("tiny-f16.gguf"));
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("gemma3");
    assert_out_has("262144 tokens");
    tu_rmtree(dir);
    free(dir);
}

/* The real-size presets load and run in llama.cpp with the real models' shapes. */
static void test_presets_load_and_run(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    static const struct {
        const char *preset, *type, *blocks, *embd;
    } presets[] = {{"gemma3-270m", "q8_0", "18", "640"}, {"gemma3-1b", "q4_0", "26", "1152"}};
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        char args[9000], model[4200];
        /* a directory that does not exist yet: gen-model creates it */
        snprintf(model, sizeof model, "%s/new/dir/%s.gguf", dir, presets[i].preset);
        snprintf(args, sizeof args, "gen-model --preset %s --type %s --out %s", presets[i].preset, presets[i].type, model);
        assert_int_equal(kvmesh(args), 0);
        snprintf(args, sizeof args, "inspect %s", model);
        assert_int_equal(kvmesh(args), 0);
        char want[128];
        snprintf(want, sizeof want, "gemma3.block_count                           %s", presets[i].blocks);
        assert_out_has(want);
        snprintf(want, sizeof want, "gemma3.embedding_length                      %s", presets[i].embd);
        assert_out_has(want);
        assert_out_has("gemma3.attention.sliding_window              512");
        snprintf(args, sizeof args, "run --model %s --no-cache -n 4 --prompt 'The quick brown fox'", model);
        assert_int_equal(kvmesh(args), 0);
        assert_out_has("generated 4 tok");
        /* through the cache, twice: the second run is a full hit with the same text */
        snprintf(args, sizeof args, "run --model %s --cache-dir %s/cache -n 8 --segment-sep '. ' --prompt "
                 "'Edge devices share prompt states. They save time. The quick brown fox'", model, dir);
        assert_int_equal(kvmesh(args), 0);
        assert_out_has("(miss)");
        static char cold_text[sizeof out_buf];
        memcpy(cold_text, out_buf, sizeof out_buf);
        *strstr(cold_text, "kvmesh: ttft") = 0;
        assert_int_equal(kvmesh(args), 0);
        assert_out_has("(boundary 3/3)");
        if (strncmp(out_buf, cold_text, strlen(cold_text)) != 0) fail_msg("text differs:\n%s\nvs\n%s", cold_text, out_buf);
        remove(model);
    }
    tu_rmtree(dir);
    free(dir);
}

/* Two devices (two cache dirs) sharing a Redis tier from the command line. */
static void test_run_with_shared_store(void **state) {
    (void)state;
    int port = tu_free_port();
    int pid = tu_redis_start(port, NULL);
    if (pid < 0) {
        print_message("SKIP: redis-server not available\n");
        skip();
    }
    char *dir = tu_tmpdir();
    char args[9000], secret[4200];
    snprintf(secret, sizeof secret, "%s/store.secret", dir);
    FILE *sf = fopen(secret, "w");
    fputs("a store secret of enough length\n", sf);
    fclose(sf);
    chmod(secret, 0600);
    const char *prompt = "--segment-sep '. ' --prompt 'Trains are fast. Planes are faster. Which is slower?'";
    snprintf(args, sizeof args, "run --model '%s' --cache-dir %s/a --store redis://127.0.0.1:%d --store-secret-file %s "
             "-n 6 %s", tu_model("tiny-f16.gguf"), dir, port, secret, prompt);
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("(miss)");
    assert_out_has("uploaded 3 state(s)");
    static char text_a[sizeof out_buf];
    memcpy(text_a, out_buf, sizeof out_buf);
    *strstr(text_a, "kvmesh: ttft") = 0;
    snprintf(args, sizeof args, "run --model '%s' --cache-dir %s/b --store redis://127.0.0.1:%d --store-secret-file %s "
             "-n 6 %s", tu_model("tiny-f16.gguf"), dir, port, secret, prompt);
    assert_int_equal(kvmesh(args), 0);
    /* authenticated with the store secret: the first token comes with the state */
    assert_out_has("(boundary 3/3, first token cached)");
    assert_out_has("from redis");
    assert_out_has("1 GET(s)");
    if (strncmp(out_buf, text_a, strlen(text_a)) != 0) fail_msg("text differs:\n%s\nvs\n%s", text_a, out_buf);
    /* without it the tier is trusted as is (said at start): the hint is checked */
    snprintf(args, sizeof args, "run --model '%s' --cache-dir %s/c --store redis://127.0.0.1:%d -n 6 %s",
             tu_model("tiny-f16.gguf"), dir, port, prompt);
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("is trusted as is: no --store-secret-file");
    assert_out_has("(boundary 3/3)");
    assert_out_has("prefilled 1 tok");
    assert_out_has("from redis");
    assert_out_has(text_a); /* after the warning */
    /* a secret file others may read is refused, and a secret needs a store */
    chmod(secret, 0644);
    snprintf(args, sizeof args, "run --model '%s' --cache-dir %s/d --store redis://127.0.0.1:%d --store-secret-file %s -n 1 %s",
             tu_model("tiny-f16.gguf"), dir, port, secret, prompt);
    assert_int_equal(kvmesh(args), 1);
    assert_out_has("--store-secret-file");
    snprintf(args, sizeof args, "run --model '%s' --no-cache --store-secret-file %s -n 1 %s", tu_model("tiny-f16.gguf"),
             secret, prompt);
    assert_int_equal(kvmesh(args), 2);
    assert_out_has("--store-secret-file needs --store");
    snprintf(args, sizeof args, "catalog rebuild --store redis://127.0.0.1:%d --model '%s'", port, tu_model("tiny-f16.gguf"));
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("from 3 state(s)");
    /* a hash where the upload list belongs: the rebuild repairs it (it failed with WRONGTYPE) */
    redisContext *c = redisConnect("127.0.0.1", port);
    redisReply *r = redisCommand(c, "KEYS kvmesh:v1:*:added");
    assert_int_equal(r->elements, 1);
    char list[128];
    snprintf(list, sizeof list, "%s", r->element[0]->str);
    freeReplyObject(r);
    freeReplyObject(redisCommand(c, "DEL %s", list));
    freeReplyObject(redisCommand(c, "HSET %s a b", list));
    assert_int_equal(kvmesh(args), 0);
    assert_out_has("is not a list: deleting it");
    assert_out_has("from 3 state(s)");
    r = redisCommand(c, "EXISTS %s", list);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    redisFree(c);
    assert_int_equal(kvmesh("catalog rebuild --store http://x --model /etc/hostname"), 1);
    assert_out_has("redis://");
    tu_redis_stop(pid, 0);
    tu_rmtree(dir);
    free(dir);
}

/* Bytes and count of the state files (*.kvb) in dir. */
static long long dir_states(const char *dir, int *n_files) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    long long bytes = 0;
    *n_files = 0;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 4 || strcmp(e->d_name + l - 4, ".kvb") != 0) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        bytes += st.st_size;
        (*n_files)++;
    }
    closedir(d);
    return bytes;
}

#define SMALL_BUDGET "0.02" /* MB: 20971 bytes, three of these prompts' states (about 6 kB each) */
static const char *budget_prompts[] = {"Alpha beta gamma delta epsilon zeta eta theta",
                                       "One two three four five six seven eight",
                                       "Red orange yellow green blue indigo violet",
                                       "North south east west up down left right",
                                       "Spring summer autumn winter rain snow sun wind"};

/* `kvmesh run --disk-budget`: the cache directory stays within the budget;
 * what goes is the state used least recently, across runs (each run is a
 * process of its own). */
static void test_run_disk_budget(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[9000];
#define RUN_PROMPT(i)                                                                                                 \
    (snprintf(args, sizeof args, "run --model '%s' --cache-dir %s --disk-budget " SMALL_BUDGET " -n 2 --prompt '%s'", \
              tu_model("tiny-f16.gguf"), dir, budget_prompts[i]),                                                     \
     kvmesh(args))
    int n;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(RUN_PROMPT(i), 0);
        assert_out_has("(miss)");
    }
    long long bytes = dir_states(dir, &n);
    assert_int_equal(n, 3);
    assert_true(bytes <= 20971);
    assert_int_equal(RUN_PROMPT(0), 0); /* a use of the oldest */
    assert_out_has("(boundary 1/1)"); /* a hit (the hint of an earlier run is checked, not used) */
    assert_int_equal(RUN_PROMPT(3), 0); /* no room: the least recently used (prompt 1) goes */
    assert_out_has("(miss)");
    bytes = dir_states(dir, &n);
    assert_int_equal(n, 3);
    assert_true(bytes <= 20971);
    assert_int_equal(RUN_PROMPT(0), 0);
    assert_out_has("(boundary 1/1)"); /* a hit (the hint of an earlier run is checked, not used) */
    assert_int_equal(RUN_PROMPT(2), 0);
    assert_out_has("(boundary 1/1)"); /* a hit (the hint of an earlier run is checked, not used) */
    assert_int_equal(RUN_PROMPT(1), 0);
    assert_out_has("(miss)");
    assert_int_equal(kvmesh("run --model x --prompt hi --disk-budget -1"), 2);
#undef RUN_PROMPT
    tu_rmtree(dir);
    free(dir);
}

/* `kvmesh node --disk-budget`: the cache directory stays within the budget,
 * and the node's catalog of local states (what peers are told it holds) is
 * rebuilt after evictions: it holds exactly the states on disk. */
static void test_node_disk_budget(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *args[] = {"--cache-dir", dir, "--ram-budget", "0", "--disk-budget", SMALL_BUDGET, "--ctx", "512", NULL};
    tu_node node = tu_node_start(tu_model("tiny-f16.gguf"), args);
    char first[64] = "";
    for (int i = 0; i < 5; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":2,\"temperature\":0}", budget_prompts[i]);
        tu_resp r = tu_http(node.url, "POST", "/v1/completions", body, NULL);
        assert_int_equal(r.status, 200);
        free(r.body);
        for (int t = 0; i == 0 && !first[0] && t < 200; t++) { /* the first state's file, once written */
            DIR *d = opendir(dir);
            struct dirent *e;
            while ((e = readdir(d)))
                if (strlen(e->d_name) == 36 && strstr(e->d_name, ".kvb")) snprintf(first, 33, "%.32s", e->d_name);
            closedir(d);
            if (!first[0]) usleep(20000);
        }
    }
    assert_true(first[0]);
    km_key first_key;
    assert_int_equal(km_key_from_hex(first, &first_key), 0);
    /* disk writes are behind the answers: wait until the catalog matches the directory */
    bool match = false;
    int n = 0;
    long long bytes = 0;
    for (int t = 0; t < 100 && !match; t++) {
        bytes = dir_states(dir, &n);
        tu_resp r = tu_http(node.url, "GET", "/peer/v1/catalog", NULL, NULL);
        assert_int_equal(r.status, 200);
        km_error err;
        km_catalog *cat = km_catalog_decode((const uint8_t *)r.body, r.len, (size_t)64 << 20, &err);
        free(r.body);
        if (!cat) fail_msg("catalog: %s", err.msg);
        match = n == 3 && (int)km_catalog_count(cat) == n && !km_catalog_check(cat, first_key);
        DIR *d = opendir(dir);
        struct dirent *e;
        while (match && (e = readdir(d))) {
            km_key k;
            char hex[33];
            if (strlen(e->d_name) != 36 || !strstr(e->d_name, ".kvb")) continue;
            snprintf(hex, sizeof hex, "%.32s", e->d_name);
            match = km_key_from_hex(hex, &k) == 0 && km_catalog_check(cat, k);
        }
        closedir(d);
        km_catalog_free(cat);
        if (!match) usleep(100000);
    }
    assert_true(match);
    assert_true(bytes <= 20971);
    assert_int_equal(tu_node_stop(&node), 0);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_everywhere),
        cmocka_unit_test(test_help_flags_are_accepted),
        cmocka_unit_test(test_errors_name_the_file),
        cmocka_unit_test(test_run_twice_reuses),
        cmocka_unit_test(test_presets_load_and_run),
        cmocka_unit_test(test_run_with_shared_store),
        cmocka_unit_test(test_run_disk_budget),
        cmocka_unit_test(test_node_disk_budget),
    };
    return cmocka_run_group_tests_name("cli", tests, NULL, NULL);
}
