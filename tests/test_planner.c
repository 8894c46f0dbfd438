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

/* Routing (km_planner_route): a device of 0.1 tokens/ms (100 tokens/s) and
 * a 600-token prompt; figures in ms. */
static km_route_local local_of(int reuse, double wait) {
    km_route_local l = {.n_tokens = 600, .reuse = reuse, .prefill_tok_ms = 0.1, .wait_ms = wait, .first_extra_ms = 20};
    return l;
}

static km_route_peer peer_of(int hold, double fetch_ms, double wait) {
    km_route_peer p = {.hold = hold, .fetch_ms = fetch_ms, .rtt_ms = 2, .prefill_tok_ms = 0.1, .wait_ms = wait};
    return p;
}

static void test_route_alone_runs_here(void **state) {
    (void)state;
    km_route_local l = local_of(100, 3000);
    km_route_choice c = km_planner_route(&l, NULL, 0);
    assert_int_equal(c.path, KM_PATH_LOCAL);
    assert_true(c.est_ms == 3000 + 5000 + 20); /* wait + 500 tokens + first token */
    assert_true(c.est_local_ms == c.est_ms);
}

static void test_route_fetch_a_longer_prefix_when_the_link_is_fast(void **state) {
    (void)state;
    km_route_local l = local_of(0, 0);
    km_route_peer p = peer_of(550, 400, 60000); /* a busy holder: fetch from it, don't queue there */
    km_route_choice c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_FETCH);
    assert_int_equal(c.peer, 0);
    assert_true(c.est_ms == 400 + 500 + 20);
    /* a slow link: recompute here rather than fetch */
    p.fetch_ms = 7000;
    c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_LOCAL);
    assert_true(c.est_ms == 6000 + 20);
    /* nothing longer than what is held here: nothing to fetch */
    l.reuse = 550;
    p.fetch_ms = 1;
    c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_LOCAL);
}

/* The bench's 200 ms skewed run lost to this: the holder of the prefix had
 * just started a 3,000-token prompt (one job, but 48 s of work) -- running
 * here (2.6 s) must win over queueing there. */
static void test_route_a_holder_with_a_long_backlog_loses(void **state) {
    (void)state;
    km_route_local l = local_of(0, 0);
    km_route_peer p = peer_of(590, -1, 48000);
    km_route_choice c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_LOCAL);
    assert_true(c.est_ms == 6000 + 20);
    /* the same holder idle: forward (2 delays + 10 tokens + first token) */
    p.wait_ms = 0;
    c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_FORWARD);
    assert_true(c.est_ms == 4 + 100 + 20);
    assert_true(c.peer_work_ms == 100 + 20);
    assert_true(c.est_local_ms == 6000 + 20);
}

/* A request queued behind a long job here moves to an idle peer even
 * though that peer holds nothing of it; a peer only a little faster does not
 * get it (the margin), and a full or unmeasured one never does. */
static void test_route_an_idle_peer_takes_work_from_a_busy_node(void **state) {
    (void)state;
    km_route_local l = local_of(100, 30000);
    km_route_peer p[3] = {peer_of(0, -1, 0), peer_of(0, -1, 0), peer_of(0, -1, 1000)};
    p[0].full = true;
    p[1].prefill_tok_ms = 0;
    km_route_choice c = km_planner_route(&l, p, 3);
    assert_int_equal(c.path, KM_PATH_FORWARD);
    assert_int_equal(c.peer, 2);
    assert_true(c.est_ms == 4 + 1000 + 6000 + 20);
    /* local: 30000 + 5000 + 20; a peer at 0.86x of that is not enough */
    p[2].wait_ms = 0.86 * (35020) - 4 - 6020;
    c = km_planner_route(&l, p, 3);
    assert_int_equal(c.path, KM_PATH_LOCAL);
    /* nor a gain under 5 ms, whatever the ratio */
    l = local_of(0, 0);
    l.n_tokens = 1;
    l.prefill_tok_ms = 0.25; /* 4 ms here, ~0 there */
    l.first_extra_ms = 0;
    p[2] = peer_of(0, -1, 0);
    p[2].rtt_ms = 0;
    p[2].prefill_tok_ms = 1000;
    c = km_planner_route(&l, &p[2], 1);
    assert_int_equal(c.path, KM_PATH_LOCAL);
}

/* A peer computing the prefix right now (announced as pending) is worth
 * waiting for when it finishes sooner than recomputing here; the same busy
 * peer without it is not. Nothing to fetch from it yet. */
static void test_route_forward_to_a_peer_computing_the_prefix(void **state) {
    (void)state;
    km_route_local l = local_of(0, 0);
    km_route_peer p = peer_of(0, -1, 2000); /* 2 s left of the job computing it */
    p.pending = 590;
    km_route_choice c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_FORWARD);
    assert_true(c.est_ms == 4 + 2000 + 100 + 20);
    p.pending = 0;
    c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_LOCAL);
    /* pending is no fetch: a fetchable hold is what the catalog says */
    p.pending = 590;
    p.fetch_ms = 1;
    c = km_planner_route(&l, &p, 1);
    assert_int_equal(c.path, KM_PATH_FORWARD);
}

static void test_peer_wait_from_gossiped_backlog(void **state) {
    (void)state;
    /* a free context: no wait, whatever the backlog of the other */
    assert_true(km_planner_peer_wait_ms(9000, 0, 1, 2, 0) == 0);
    /* one context, busy: its backlog less the gossip's age */
    assert_true(km_planner_peer_wait_ms(9000, 500, 1, 1, 0) == 8500);
    /* done since we heard (the age exceeds it): no wait left */
    assert_true(km_planner_peer_wait_ms(400, 500, 1, 1, 0) == 0);
    /* our forwards it has not gossiped yet count, and make it busy */
    assert_true(km_planner_peer_wait_ms(0, 0, 0, 1, 0) == 0);
    assert_true(km_planner_peer_wait_ms(0, 0, 1, 1, 1200) == 1200);
    /* spread over its contexts */
    assert_true(km_planner_peer_wait_ms(9000, 1000, 3, 2, 2000) == 5000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_rates_assume_fetch),
        cmocka_unit_test(test_link_fit_recovers_rtt_and_bandwidth),
        cmocka_unit_test(test_one_size_falls_back_to_per_byte),
        cmocka_unit_test(test_wire_ratio_and_restore_cost),
        cmocka_unit_test(test_estimate_via_another_link),
        cmocka_unit_test(test_route_alone_runs_here),
        cmocka_unit_test(test_route_fetch_a_longer_prefix_when_the_link_is_fast),
        cmocka_unit_test(test_route_a_holder_with_a_long_backlog_loses),
        cmocka_unit_test(test_route_an_idle_peer_takes_work_from_a_busy_node),
        cmocka_unit_test(test_route_forward_to_a_peer_computing_the_prefix),
        cmocka_unit_test(test_peer_wait_from_gossiped_backlog),
    };
    return cmocka_run_group_tests_name("planner", tests, NULL, NULL);
}
