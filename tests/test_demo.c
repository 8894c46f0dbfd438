/* test_demo.c -- `kvmesh demo` end to end: node processes started by the
 * kvmesh binary itself (tools/nodeproc.c), sharing states, the isolated
 * rerun, the summary, identical greedy outputs, nothing left behind. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "testutil.h"

static char out_buf[1 << 17];

/* Run `kvmesh <args>` with TMPDIR=tmp (where the nodes' files go), stdout
 * and stderr captured in out_buf; returns the exit code. */
static int kvmesh(const char *tmp, const char *args) {
    char cmd[8192], out[4200];
    snprintf(out, sizeof out, "%s/out.txt", tmp);
    snprintf(cmd, sizeof cmd, "TMPDIR='%s' '%s' %s >'%s' 2>&1", tmp, tu_kvmesh_bin(), args, out);
    int st = system(cmd);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    size_t n = fread(out_buf, 1, sizeof out_buf - 1, f);
    out_buf[n] = 0;
    fclose(f);
    remove(out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void assert_out_has(const char *needle) {
    if (!strstr(out_buf, needle)) fail_msg("output lacks '%s':\n%s", needle, out_buf);
}

/* Entries left in dir (the nodes' temp dirs are removed when they stop). */
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    return n;
}

static void test_usage(void **state) {
    char *tmp = tu_tmpdir();
    assert_int_equal(kvmesh(tmp, "demo --help"), 0);
    assert_out_has("--nodes");
    assert_out_has("--route isolated");
    assert_int_equal(kvmesh(tmp, "demo --nodes 0"), 2);
    assert_int_equal(kvmesh(tmp, "demo --frobnicate"), 2);
    /* a model that is not there is an error (only the default model is made) */
    assert_int_equal(kvmesh(tmp, "demo --model /nonexistent/m.gguf --quiet"), 1);
    assert_out_has("/nonexistent/m.gguf");
    tu_rmtree(tmp);
    free(tmp);
}

static void test_two_nodes_share(void **state) {
    char *tmp = tu_tmpdir();
    char args[4200];
    snprintf(args, sizeof args, "demo --model '%s' --nodes 2 --prompts 8 --slowdown 1 --quiet",
             tu_model("tiny-f16.gguf"));
    int rc = kvmesh(tmp, args);
    if (rc != 0) fail_msg("kvmesh demo exited %d:\n%s", rc, out_buf);
    assert_out_has("mean TTFT");
    assert_out_has("p50 TTFT");
    assert_out_has("speedup with sharing: ");
    assert_out_has("greedy outputs identical with and without sharing: yes (8/8)");

    int n, local, peer, fwd, none;
    const char *s = strstr(out_buf, "\nwith sharing: ");
    assert_non_null(s);
    assert_int_equal(sscanf(s, "\nwith sharing: %d requests, hits local %d, peer %d, forwarded %d, none %d", &n, &local,
                            &peer, &fwd, &none), 5);
    assert_int_equal(n, 8);
    assert_int_equal(local + peer + fwd + none, 8);
    if (peer + fwd <= 0) fail_msg("no request used a peer:\n%s", out_buf);
    s = strstr(out_buf, "\nisolated: ");
    assert_non_null(s);
    assert_int_equal(sscanf(s, "\nisolated: %d requests, hits local %d, peer %d, forwarded %d, none %d", &n, &local,
                            &peer, &fwd, &none), 5);
    assert_int_equal(peer + fwd, 0); /* no sharing means none */
    assert_true(none >= 1);          /* the first request, at least */
    assert_null(strstr(out_buf, "exited with status")); /* every node stopped cleanly (sanitizers: no leak) */
    /* --quiet: the summary only, no per-request lines */
    assert_null(strstr(out_buf, "request 1/8"));
    /* every node stopped and its port file and log removed */
    assert_int_equal(dir_entries(tmp), 0);
    tu_rmtree(tmp);
    free(tmp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_two_nodes_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
