/* test_link.c -- the emulated link: spec parsing, and that requests take at
 * least the time the link dictates (round trip + bytes / bandwidth, queued per
 * direction). Upper bounds are loose: the machine may be busy. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "link.h"
#include "testutil.h"

static void test_parse(void **state) {
    (void)state;
    km_link_params p;
    km_error err;
    assert_int_equal(km_link_parse("bw=20mbit,rtt=5ms", &p, &err), 0);
    assert_true(p.bw_bps == 20e6);
    assert_true(p.rtt_ms == 5);
    assert_int_equal(km_link_parse("rtt=200us", &p, &err), 0);
    assert_true(p.bw_bps == 0);
    assert_true(p.rtt_ms == 0.2);
    assert_int_equal(km_link_parse("bw=1.5gbit", &p, &err), 0);
    assert_true(p.bw_bps == 1.5e9);
    const char *bad[] = {"bw=20", "bw=20mb", "rtt=5", "speed=1mbit", "bw", "bw=-1mbit", "rtt=nanms", "bw=x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (km_link_parse(bad[i], &p, &err) == 0) fail_msg("accepted '%s'", bad[i]);
        assert_non_null(strstr(err.msg, bad[i]));
    }
    char d[64];
    km_link_parse("bw=20mbit,rtt=5ms", &p, &err);
    km_link_describe(&p, d, sizeof d);
    assert_string_equal(d, "20.0 Mbit/s, rtt 5.0 ms");
    /* 1 MB down at 8 Mbit/s = 1 s, plus 10 ms */
    km_link_params q = {8e6, 10};
    assert_true(km_link_cost_ms(&q, 0, 1000000) == 1010.0);
}

static void test_request_takes_link_time(void **state) {
    (void)state;
    km_link_params p = {8e6, 10}; /* 1 MB/s */
    km_link *l = km_link_new(&p);
    double t0 = km_now_ms();
    km_link_request(l, t0, 100, 100000); /* 10 ms + ~100 ms */
    double dt = km_now_ms() - t0;
    assert_true(dt >= 110.0);
    assert_true(dt < 400.0);
    km_link_free(l);
}

typedef struct par {
    km_link *l;
    double t0;
    double done;
} par;

static void *one(void *arg) {
    par *p = arg;
    km_link_request(p->l, p->t0, 0, 100000);
    p->done = km_now_ms();
    return NULL;
}

/* Two transfers in the same direction at once share the bandwidth. */
static void test_same_direction_queues(void **state) {
    (void)state;
    km_link_params p = {8e6, 0};
    km_link *l = km_link_new(&p);
    double t0 = km_now_ms();
    par a = {l, t0, 0}, b = {l, t0, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, one, &a);
    pthread_create(&tb, NULL, one, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    double last = (a.done > b.done ? a.done : b.done) - t0;
    double first = (a.done < b.done ? a.done : b.done) - t0;
    assert_true(first >= 100.0);
    assert_true(last >= 200.0);
    assert_true(last < 600.0);
    km_link_free(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_request_takes_link_time),
        cmocka_unit_test(test_same_direction_queues),
    };
    return cmocka_run_group_tests_name("link", tests, NULL, NULL);
}
