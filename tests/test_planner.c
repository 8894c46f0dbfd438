/* test_planner.c -- the fetch-or-recompute estimate: exact fits on exact
 * observations, the fallbacks, and the decision. */
#include <math.h>
#include <stdio.h>

#include "planner.h"
#include "testutil.h"

static void test_unknown_rates_assume_fetch(void **state) {
    (void)state;
    km_planner p;
    km_planner_init(&p);
    km_plan_estimate e = km_planner_estimate(&p, 1000000, 100);
    assert_false(e.known);
    assert_true(km_planner_should_fetch(&e));
    /* prefill known, link not: still unknown */
    km_planner_observe_prefill(&p, 100, 1000);
    e = km_planner_estimate(&p, 1000000, 100);
    assert_false(e.known);
    assert_true(fabs(e.recompute_ms - 1000) < 1e-9);
}

static void test_link_fit_recovers_rtt_and_bandwidth(void **state) {
    (void)state;
    km_planner p;
    km_planner_init(&p);
    /* 20 Mbit/s = 2500 bytes/ms, 5 ms round trip, sizes 64 KB .. 4 MB */
    size_t sizes[] = {65536, 1 << 20, 300000, 4 << 20, 2000000, 131072};
    for (int r = 0; r < 3; r++)
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
            km_planner_observe_fetch(&p, sizes[i], 5.0 + (double)sizes[i] / 2500.0);
    double rtt, bpm;
    km_planner_link(&p, &rtt, &bpm);
    assert_true(fabs(rtt - 5.0) < 1e-6);
    assert_true(fabs(bpm - 2500.0) < 1e-6);
    /* prefill 45 tokens/s; state 20 KB/token: fetch 8.2 ms/token beats 22 ms/token */
    km_planner_observe_prefill(&p, 600, 600 / 0.045);
    km_plan_estimate e = km_planner_estimate(&p, 100 * 20000, 100);
    assert_true(e.known);
    assert_true(fabs(e.fetch_ms - (5.0 + 2000000 / 2500.0)) < 1e-6);
    assert_true(fabs(e.recompute_ms - 100 / 0.045) < 1e-6);
    assert_true(km_planner_should_fetch(&e));
    /* the same state on a 10x slower link: recomputing wins */
    km_planner q;
    km_planner_init(&q);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        km_planner_observe_fetch(&q, sizes[i], 5.0 + (double)sizes[i] / 250.0);
    km_planner_observe_prefill(&q, 600, 600 / 0.045);
    e = km_planner_estimate(&q, 100 * 20000, 100);
    assert_true(e.known);
    assert_false(km_planner_should_fetch(&e));
}

static void test_one_size_falls_back_to_per_byte(void **state) {
    (void)state;
    km_planner p;
    km_planner_init(&p);
    for (int i = 0; i < 5; i++) km_planner_observe_fetch(&p, 1000000, 405.0);
    double rtt, bpm;
    km_planner_link(&p, &rtt, &bpm);
    assert_true(rtt == 0);
    assert_true(fabs(bpm - 1000000 / 405.0) < 1e-6);
}

static void test_wire_ratio_and_restore_cost(void **state) {
    (void)state;
    km_planner p;
    km_planner_init(&p);
    for (int i = 0; i < 4; i++) km_planner_observe_fetch(&p, (size_t)(i + 1) * 1000000, (i + 1) * 400.0);
    km_planner_observe_wire(&p, 800000, 1000000); /* 80 % on the wire */
    km_planner_observe_restore(&p, 1000000, 2.0);  /* 2 ns/byte */
    km_planner_observe_prefill(&p, 100, 1000);
    km_plan_estimate e = km_planner_estimate(&p, 1000000, 50);
    /* 0.8 MB at 2500 bytes/ms = 320 ms, + 2 ms restore */
    assert_true(fabs(e.fetch_ms - 322.0) < 1e-6);
    assert_true(fabs(e.recompute_ms - 500.0) < 1e-9);
    /* EWMA: short prefills are ignored, others move the rate by 30 % */
    km_planner_observe_prefill(&p, 3, 1);
    assert_true(fabs(p.prefill_tok_per_ms - 0.1) < 1e-12);
    km_planner_observe_prefill(&p, 200, 1000);
    assert_true(fabs(p.prefill_tok_per_ms - (0.1 + 0.3 * (0.2 - 0.1))) < 1e-12);
}

/* Each remote holder has its own link: a peer's fit does not move the Redis
 * tier's, and the estimate uses the link it is asked about. */
static void test_estimate_via_another_link(void **state) {
    (void)state;
    km_planner p;
    km_planner_init(&p);
    km_planner_observe_prefill(&p, 100, 1000); /* 0.1 tokens/ms */
    km_planner_observe_restore(&p, 1000000, 1.0);
    km_linkfit peer;
    km_linkfit_init(&peer);
    assert_true(km_linkfit_fetch_ms(&peer, 1000) < 0); /* nothing measured */
    km_plan_estimate e = km_planner_estimate_via(&p, &peer, 1000000, 50);
    assert_false(e.known);
    assert_true(km_planner_should_fetch(&e));
    /* 2 ms round trip + 10 bytes/ms */
    km_linkfit_observe_fetch(&peer, 1000, 102.0);
    km_linkfit_observe_fetch(&peer, 5000, 502.0);
    double rtt, bpm;
    km_linkfit_params(&peer, &rtt, &bpm);
    assert_true(fabs(rtt - 2.0) < 1e-6 && fabs(bpm - 10.0) < 1e-9);
    assert_int_equal(p.link.n_obs, 0);
    e = km_planner_estimate_via(&p, &peer, 1000, 50);
    assert_true(e.known);
    assert_true(fabs(e.fetch_ms - (2.0 + 100.0 + 0.001)) < 1e-6);
    assert_true(fabs(km_planner_prefill_ms(&p, 50) - 500.0) < 1e-9);
    assert_false(km_planner_estimate(&p, 1000, 50).known); /* the Redis link is still unknown */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_rates_assume_fetch),
        cmocka_unit_test(test_link_fit_recovers_rtt_and_bandwidth),
        cmocka_unit_test(test_one_size_falls_back_to_per_byte),
        cmocka_unit_test(test_wire_ratio_and_restore_cost),
        cmocka_unit_test(test_estimate_via_another_link),
    };
    return cmocka_run_group_tests_name("planner", tests, NULL, NULL);
}
