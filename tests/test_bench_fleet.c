/* test_bench_fleet.c -- `kvmesh bench fleet` end to end, as a smoke test.
 *
 *   usage      --help and bad options (exit 2), no MMLU data (exit 0, SKIP)
 *   quick run  --quick on the tiny test model: exit 0, the JSON parses and
 *              holds a run of every mode for every mix, each request
 *              answered, and the CSV and targets are there
 *
 * Needs ../shared/data/mmlu (read in place): SKIP without it. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static char out[1 << 18];

/* `kvmesh args` with stdout+stderr in out; returns the exit status. */
static int run(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", tu_kvmesh_bin(), args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void assert_out_has(const char *needle) {
    if (!strstr(out, needle)) fail_msg("output lacks '%s':\n%s", needle, out);
}

static void test_usage(void **state) {
    (void)state;
    assert_int_equal(run("bench fleet --help"), 0);
    assert_out_has("--delays");
    assert_out_has("--quick");
    assert_int_equal(run("bench fleet --modes isolated,teleport"), 2);
    assert_int_equal(run("bench fleet --delays 2,fast"), 2);
    assert_int_equal(run("bench fleet --mixes uniform"), 2);
    assert_int_equal(run("bench fleet --nodes 1"), 2);
    assert_int_equal(run("bench fleet --device gpu"), 2);
    assert_int_equal(run("bench fleet --mmlu /nonexistent/mmlu"), 0);
    assert_out_has("SKIP");
}

static void test_quick_run(void **state) {
    (void)state;
    const char *mmlu = tu_shared("data/mmlu");
    if (!mmlu) {
        print_message("SKIP: ../shared/data/mmlu is missing\n");
        skip();
    }
    char mmlu_dir[4096];
    snprintf(mmlu_dir, sizeof mmlu_dir, "%s", mmlu);
    char *dir = tu_tmpdir();
    assert_non_null(dir);
    char args[9000];
    snprintf(args, sizeof args, "bench fleet --quick --model '%s' --mmlu '%s' --out '%s'", tu_model("tiny-f16.gguf"),
             mmlu_dir, dir);
    int rc = run(args);
    if (rc != 0) fail_msg("exit %d:\n%s", rc, out);
    assert_out_has("targets:");
    assert_out_has("isolated");

    char path[4200];
    snprintf(path, sizeof path, "%s/bench-fleet.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) fail_msg("%s: %s (line %d)", path, je.text, je.line);
    assert_string_equal(json_string_value(json_object_get(root, "bench")), "fleet");
    json_t *runs = json_object_get(root, "runs");
    assert_true(json_is_array(runs));
    const char *modes[] = {"isolated", "fetch", "forward", "planner"};
    const char *mixes[] = {"normal", "skewed"};
    for (int x = 0; x < 2; x++)
        for (int m = 0; m < 4; m++) {
            bool found = false;
            for (size_t i = 0; i < json_array_size(runs); i++) {
                json_t *r = json_array_get(runs, i);
                if (strcmp(json_string_value(json_object_get(r, "mode")), modes[m]) != 0 ||
                    strcmp(json_string_value(json_object_get(r, "mix")), mixes[x]) != 0)
                    continue;
                found = true;
                json_int_t n = json_integer_value(json_object_get(r, "requests"));
                assert_true(n > 0);
                assert_int_equal(json_integer_value(json_object_get(r, "ok")), n);
                double ttft = json_real_value(json_object_get(json_object_get(r, "ttft_ms"), "mean"));
                assert_true(ttft > 0);
                /* every completed request is counted on some node */
                json_t *per = json_object_get(r, "requests_per_node");
                double sum = 0;
                for (size_t k = 0; k < json_array_size(per); k++) sum += json_real_value(json_array_get(per, k));
                assert_true(sum >= (double)n);
            }
            if (!found) fail_msg("no %s run of the %s mix in %s", modes[m], mixes[x], path);
        }
    assert_true(json_is_array(json_object_get(root, "targets")));
    assert_true(json_integer_value(json_object_get(root, "targets_checked")) >= 1);
    json_decref(root);
    snprintf(path, sizeof path, "%s/bench-fleet.csv", dir);
    assert_int_equal(access(path, R_OK), 0);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    if (access(tu_model("tiny-f16.gguf"), R_OK) != 0) {
        printf("SKIP: test models missing\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_quick_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
