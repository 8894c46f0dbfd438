/* test_metrics.c -- the Prometheus registry: the exact exposition text,
 * exact totals under concurrent updates, and refusal of bad names, labels,
 * bounds and type clashes. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "testutil.h"

static char *render(km_metrics *m) {
    char *text = NULL;
    size_t len = 0;
    km_error err = {{0}};
    if (km_metrics_render(m, &text, &len, &err) != 0) fail_msg("render: %s", err.msg);
    assert_int_equal(strlen(text), len);
    return text;
}

static void expect_render(km_metrics *m, const char *want) {
    char *got = render(m);
    if (strcmp(got, want) != 0) fail_msg("rendered:\n%s\nexpected:\n%s", got, want);
    free(got);
}

static void expect_line(km_metrics *m, const char *line) {
    char *got = render(m);
    char *want = malloc(strlen(line) + 3);
    sprintf(want, "\n%s\n", line);
    if (!strstr(got, want)) fail_msg("no line '%s' in:\n%s", line, got);
    free(want);
    free(got);
}

/* Refusals warn on stderr; the tests that provoke them keep it quiet. */
static void quiet(void) { km_log_level = -1; }
static void loud(void) { km_log_level = 1; }

static double read_int(void *ud) { return *(int *)ud; }

/* ---------------------------------------------------------- rendering */

static void test_render_exact(void **state) {
    (void)state;
    km_metrics *m = km_metrics_new();
    assert_non_null(m);
    expect_render(m, "");

    km_counter *req = km_metrics_counter(m, "kv_requests_total", "Requests served", NULL);
    km_counter *local = km_metrics_counter(m, "kv_hits_total", "Cache hits by tier", "tier=\"local\"");
    km_gauge *queue = km_metrics_gauge(m, "kv_queue_length", "Requests waiting", NULL);
    /* a later series of an earlier family renders with its family; its HELP is ignored */
    km_counter *peer = km_metrics_counter(m, "kv_hits_total", "ignored", "tier=\"peer\"");
    int peers = 4;
    km_gauge *alive = km_metrics_gauge_fn(m, "kv_peers_alive", "Peers answering\\ pings\nrecently", NULL, read_int,
                                          &peers);
    const double b1[] = {0.1, 0.5, 1};
    km_histogram *ttft = km_metrics_histogram(m, "kv_ttft_seconds", "Time to first token", NULL, b1, 3);
    const double b2[] = {0.5, 2};
    km_histogram *ratio = km_metrics_histogram(m, "kv_plan_error_ratio", NULL, "path=\"fetch\"", b2, 2);
    assert_true(req && local && queue && peer && alive && ttft && ratio);

    km_counter_inc(req);
    km_counter_inc(req);
    km_counter_inc(req);
    km_counter_add(req, 2);
    km_counter_add(local, 1e12);
    km_counter_add(peer, 0.5);
    km_counter_add(peer, 1);
    km_gauge_set(queue, 3);
    km_gauge_add(queue, -1.5);
    km_histogram_observe(ttft, 0.1); /* exactly on a bound: counted in it (le) */
    km_histogram_observe(ttft, 0.25);
    km_histogram_observe(ttft, 1);
    km_histogram_observe(ttft, 2); /* above the last bound: +Inf only */
    km_histogram_observe(ttft, 0.05);
    km_histogram_observe(ratio, 0.5);
    km_histogram_observe(ratio, 3);

    const char *want_head = "# HELP kv_requests_total Requests served\n"
                            "# TYPE kv_requests_total counter\n"
                            "kv_requests_total 5\n"
                            "# HELP kv_hits_total Cache hits by tier\n"
                            "# TYPE kv_hits_total counter\n"
                            "kv_hits_total{tier=\"local\"} 1000000000000\n"
                            "kv_hits_total{tier=\"peer\"} 1.5\n"
                            "# HELP kv_queue_length Requests waiting\n"
                            "# TYPE kv_queue_length gauge\n"
                            "kv_queue_length 1.5\n"
                            "# HELP kv_peers_alive Peers answering\\\\ pings\\nrecently\n"
                            "# TYPE kv_peers_alive gauge\n";
    const char *want_tail = "# HELP kv_ttft_seconds Time to first token\n"
                            "# TYPE kv_ttft_seconds histogram\n"
                            "kv_ttft_seconds_bucket{le=\"0.1\"} 2\n"
                            "kv_ttft_seconds_bucket{le=\"0.5\"} 3\n"
                            "kv_ttft_seconds_bucket{le=\"1\"} 4\n"
                            "kv_ttft_seconds_bucket{le=\"+Inf\"} 5\n"
                            "kv_ttft_seconds_sum 3.4\n"
                            "kv_ttft_seconds_count 5\n"
                            "# TYPE kv_plan_error_ratio histogram\n" /* no HELP text, no # HELP */
                            "kv_plan_error_ratio_bucket{path=\"fetch\",le=\"0.5\"} 1\n"
                            "kv_plan_error_ratio_bucket{path=\"fetch\",le=\"2\"} 1\n"
                            "kv_plan_error_ratio_bucket{path=\"fetch\",le=\"+Inf\"} 2\n"
                            "kv_plan_error_ratio_sum{path=\"fetch\"} 3.5\n"
                            "kv_plan_error_ratio_count{path=\"fetch\"} 2\n";
    char want[4096];
    snprintf(want, sizeof want, "%skv_peers_alive 4\n%s", want_head, want_tail);
    expect_render(m, want);

    /* the callback runs at render time */
    peers = 5;
    snprintf(want, sizeof want, "%skv_peers_alive 5\n%s", want_head, want_tail);
    expect_render(m, want);
    /* detached (fn NULL), the series reads its stored value */
    assert_ptr_equal(km_metrics_gauge_fn(m, "kv_peers_alive", NULL, NULL, NULL, NULL), alive);
    km_gauge_set(alive, 7);
    snprintf(want, sizeof want, "%skv_peers_alive 7\n%s", want_head, want_tail);
    expect_render(m, want);
    km_metrics_free(m);
}

static void test_number_format(void **state) {
    (void)state;
    km_metrics *m = km_metrics_new();
    const struct {
        double v;
        const char *text;
    } cases[] = {
        {0, "0"},
        {-0.0, "0"},
        {-2, "-2"},
        {0.1, "0.1"},
        {1.0 / 3, "0.3333333333333333"},
        {0.1 + 0.2, "0.30000000000000004"},
        {123456789012345, "123456789012345"},
        {9007199254740992.0, "9007199254740992"}, /* %g picks fixed notation here */
        {1e20, "1e+20"},
        {1.5e-7, "1.5e-07"},
        {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"},
        {NAN, "NaN"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char labels[32], line[96];
        snprintf(labels, sizeof labels, "i=\"%zu\"", i);
        km_gauge_set(km_metrics_gauge(m, "g", "values", labels), cases[i].v);
        snprintf(line, sizeof line, "g{%s} %s", labels, cases[i].text);
        expect_line(m, line);
    }
    km_metrics_free(m);
}

/* ---------------------------------------------------------- series identity */

static void test_same_series(void **state) {
    (void)state;
    km_metrics *m = km_metrics_new();
    km_counter *a = km_metrics_counter(m, "c_total", "c", NULL);
    assert_non_null(a);
    assert_ptr_equal(km_metrics_counter(m, "c_total", "other help", ""), a); /* NULL and "" are the same */
    km_counter *b = km_metrics_counter(m, "c_total", "c", "x=\"1\"");
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(km_metrics_counter(m, "c_total", "c", "x=\"1\""), b);
    const double bounds[] = {1, 2};
    km_histogram *h = km_metrics_histogram(m, "h", "h", NULL, bounds, 2);
    const double same[] = {1, 2};
    assert_ptr_equal(km_metrics_histogram(m, "h", "h", NULL, same, 2), h);
    assert_non_null(km_metrics_histogram(m, "h", "h", "x=\"1\"", same, 2));
    km_metrics_free(m);
}

/* NULL series (a refused registration) and bad values are no-ops. */
static void test_ignored_updates(void **state) {
    (void)state;
    km_counter_inc(NULL);
    km_counter_add(NULL, 1);
    km_gauge_set(NULL, 1);
    km_gauge_add(NULL, 1);
    km_histogram_observe(NULL, 1);
    km_metrics_free(NULL);
    assert_null(km_metrics_counter(NULL, "c", "c", NULL));

    km_metrics *m = km_metrics_new();
    km_counter *c = km_metrics_counter(m, "c", "c", NULL);
    km_counter_add(c, 2);
    km_counter_add(c, -1); /* counters only go up */
    km_counter_add(c, NAN);
    expect_line(m, "c 2");
    km_histogram *h = km_metrics_histogram(m, "h", "h", NULL, NULL, 0);
    km_histogram_observe(h, NAN);
    km_histogram_observe(h, 1);
    expect_line(m, "h_bucket{le=\"+Inf\"} 1");
    expect_line(m, "h_sum 1");
    expect_line(m, "h_count 1");
    km_metrics_free(m);
}

static void test_latency_buckets(void **state) {
    (void)state;
    assert_int_equal(km_metrics_n_latency_buckets, 14);
    assert_true(km_metrics_latency_buckets[0] == 0.005);
    assert_true(km_metrics_latency_buckets[13] == 120);
    km_metrics *m = km_metrics_new();
    assert_non_null(km_metrics_histogram(m, "kv_ttlt_seconds", "TTLT", NULL, km_metrics_latency_buckets,
                                         km_metrics_n_latency_buckets));
    expect_line(m, "kv_ttlt_seconds_bucket{le=\"0.005\"} 0");
    expect_line(m, "kv_ttlt_seconds_bucket{le=\"2.5\"} 0");
    expect_line(m, "kv_ttlt_seconds_bucket{le=\"120\"} 0");
    km_metrics_free(m);
}

/* ---------------------------------------------------------- concurrency */

typedef struct {
    km_metrics *m;
    km_counter *c, *half;
    km_gauge *g;
    km_histogram *h;
} shared;

#define N_THREADS 4
#define N_ITER 100000

static void *hammer(void *arg) {
    shared *s = arg;
    for (int i = 0; i < N_ITER; i++) {
        km_counter_inc(s->c);
        km_counter_add(s->half, 0.5); /* the CAS path */
        km_gauge_add(s->g, 1);
        km_histogram_observe(s->h, i % 2 ? 0.75 : 0.25);
        if (i % 10000 == 0) { /* look-ups and renders meanwhile, as the HTTP threads do */
            if (km_metrics_counter(s->m, "hammer_total", "h", NULL) != s->c) return "lookup returned another series";
            char *text;
            size_t len;
            if (km_metrics_render(s->m, &text, &len, NULL) != 0) return "render failed";
            free(text);
        }
    }
    return NULL;
}

static void test_concurrent(void **state) {
    (void)state;
    km_metrics *m = km_metrics_new();
    const double bounds[] = {0.5};
    shared s = {m, km_metrics_counter(m, "hammer_total", "h", NULL), km_metrics_counter(m, "half_total", "h", NULL),
                km_metrics_gauge(m, "g", "g", NULL), km_metrics_histogram(m, "obs", "o", NULL, bounds, 1)};
    pthread_t t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) assert_int_equal(pthread_create(&t[i], NULL, hammer, &s), 0);
    for (int i = 0; i < N_THREADS; i++) {
        void *msg;
        pthread_join(t[i], &msg);
        if (msg) fail_msg("thread %d: %s", i, (const char *)msg);
    }
    expect_line(m, "hammer_total 400000");
    expect_line(m, "half_total 200000");
    expect_line(m, "g 400000");
    expect_line(m, "obs_bucket{le=\"0.5\"} 200000");
    expect_line(m, "obs_bucket{le=\"+Inf\"} 400000");
    expect_line(m, "obs_sum 200000");
    expect_line(m, "obs_count 400000");
    km_metrics_free(m);
}

/* ---------------------------------------------------------- refusals */

static void test_names(void **state) {
    (void)state;
    km_metrics *m = km_metrics_new();
    const char *good[] = {"a", "_x", ":x", "kvmesh:cache_hits_total", "A9_:"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (!km_metrics_counter(m, good[i], "ok", NULL)) fail_msg("refused '%s'", good[i]);
    quiet();
    const char *bad[] = {NULL, "", "9a", "a-b", "a b", "a.b", "caf\xc3\xa9", "a{x}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (km_metrics_counter(m, bad[i], "bad", NULL)) fail_msg("accepted counter '%s'", bad[i]);
        if (km_metrics_gauge(m, bad[i], "bad", NULL)) fail_msg("accepted gauge '%s'", bad[i]);
        if (km_metrics_histogram(m, bad[i], "bad", NULL, NULL, 0)) fail_msg("accepted histogram '%s'", bad[i]);
    }
    loud();
    char *text = render(m);
    assert_null(strstr(text, "bad"));
    free(text);
    km_metrics_free(m);
}

static void test_type_clash(void **state) {
    (void)state;
    km_metrics *m = km_metrics_new();
    const double b[] = {1, 2}, other[] = {1, 3};
    km_counter *c = km_metrics_counter(m, "x", "a counter", NULL);
    assert_non_null(km_metrics_histogram(m, "h", "h", NULL, b, 2));
    quiet();
    assert_null(km_metrics_gauge(m, "x", "a gauge", NULL));
    assert_null(km_metrics_gauge(m, "x", "a gauge", "l=\"1\""));
    assert_null(km_metrics_gauge_fn(m, "x", "a gauge", NULL, read_int, NULL));
    assert_null(km_metrics_histogram(m, "x", "a histogram", NULL, b, 2));
    assert_null(km_metrics_counter(m, "h", "h", NULL));
    /* one set of bounds per histogram family */
    assert_null(km_metrics_histogram(m, "h", "h", "l=\"1\"", other, 2));
    assert_null(km_metrics_histogram(m, "h", "h", "l=\"1\"", b, 1));
    /* bounds: finite, strictly increasing */
    const double dup[] = {1, 1}, down[] = {2, 1}, inf[] = {1, INFINITY}, nan[] = {NAN};
    assert_null(km_metrics_histogram(m, "h2", "h", NULL, dup, 2));
    assert_null(km_metrics_histogram(m, "h2", "h", NULL, down, 2));
    assert_null(km_metrics_histogram(m, "h2", "h", NULL, inf, 2));
    assert_null(km_metrics_histogram(m, "h2", "h", NULL, nan, 1));
    assert_null(km_metrics_histogram(m, "h2", "h", NULL, b, -1));
    assert_null(km_metrics_histogram(m, "h2", "h", NULL, NULL, 2));
    loud();
    km_counter_inc(c);
    expect_render(m, "# HELP x a counter\n# TYPE x counter\nx 1\n"
                     "# HELP h h\n# TYPE h histogram\n"
                     "h_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
    km_metrics_free(m);
}

static void test_labels(void **state) {
    (void)state;
    const char *valid[] = {NULL, "", "a=\"\"", "tier=\"local\",dir=\"down\"", "_x=\"q\\\"uote\"",
                           "p=\"back\\\\slash\\nnewline\"", "A9=\"{}=,\""};
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        if (!km_metrics_labels_valid(valid[i])) fail_msg("rejected labels '%s'", valid[i]);
    const char *invalid[] = {"a",       "a=",       "a=\"x",      "a=x",         "=\"x\"",     "9a=\"x\"",
                             "a=\"x\",", "a=\"x\" ", " a=\"x\"",  "a=\"x\"b=\"y\"", "a=\"\\t\"",  "a=\"x\ny\"",
                             "a=\"\\\"", "__a=\"x\"", "a-b=\"x\"", "a=\"x\",,b=\"y\""};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        if (km_metrics_labels_valid(invalid[i])) fail_msg("accepted labels '%s'", invalid[i]);

    char buf[64];
    assert_int_equal(km_metrics_label_escape(buf, sizeof buf, "plain"), 5);
    assert_string_equal(buf, "plain");
    assert_int_equal(km_metrics_label_escape(buf, sizeof buf, "a\\b\"c\nd"), 10);
    assert_string_equal(buf, "a\\\\b\\\"c\\nd");
    assert_int_equal(km_metrics_label_escape(buf, sizeof buf, ""), 0);
    assert_string_equal(buf, "");
    assert_int_equal(km_metrics_label_escape(buf, 6, "abcde"), 5); /* exactly fits */
    assert_int_equal(km_metrics_label_escape(buf, 5, "abcde"), -1);
    assert_string_equal(buf, "");
    assert_int_equal(km_metrics_label_escape(buf, 3, "a\""), -1); /* never half an escape */
    assert_string_equal(buf, "");
    assert_int_equal(km_metrics_label_escape(buf, 0, ""), -1);

    /* an escaped value registers and renders as is */
    km_metrics *m = km_metrics_new();
    char esc[64], labels[96];
    assert_true(km_metrics_label_escape(esc, sizeof esc, "pi \"zero\"\n2") > 0);
    snprintf(labels, sizeof labels, "peer=\"%s\"", esc);
    km_counter_inc(km_metrics_counter(m, "fwd_total", "Forwards", labels));
    expect_line(m, "fwd_total{peer=\"pi \\\"zero\\\"\\n2\"} 1");
    quiet();
    assert_null(km_metrics_counter(m, "fwd_total", "Forwards", "peer=\"raw \" quote\""));
    assert_null(km_metrics_counter(m, "fwd_total", "Forwards", "peer=\"raw\nnewline\""));
    /* histograms add le themselves */
    const double b[] = {1};
    assert_null(km_metrics_histogram(m, "h", "h", "le=\"1\"", b, 1));
    assert_null(km_metrics_histogram(m, "h", "h", "x=\"1\",le=\"1\"", b, 1));
    loud();
    assert_non_null(km_metrics_histogram(m, "h", "h", "lex=\"1\",x=\",le=\"", b, 1));
    assert_non_null(km_metrics_counter(m, "c", "c", "le=\"1\"")); /* only histograms reserve it */
    km_metrics_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_number_format),
        cmocka_unit_test(test_same_series),
        cmocka_unit_test(test_ignored_updates),
        cmocka_unit_test(test_latency_buckets),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_type_clash),
        cmocka_unit_test(test_labels),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
