/* test_members.c -- the membership table: merge rules, failure detection at
 * the exact thresholds on a fake clock, revival and restarts, our own record,
 * catalog change reports, the size bound, target choice, the message codec
 * (round trips and a strict parser that changes nothing on bad input), and a
 * three-node mesh gossiping in memory. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "members.h"
#include "netallow.h"
#include "testutil.h"

/* ---------------------------------------------------------- helpers */

static km_member rec(const char *id, const char *addr, uint64_t inc, uint64_t hb) {
    km_member r;
    memset(&r, 0, sizeof r);
    snprintf(r.id, sizeof r.id, "%s", id);
    snprintf(r.addr, sizeof r.addr, "%s", addr);
    r.incarnation = inc;
    r.heartbeat = hb;
    r.catalog_version = 1;
    r.load = (km_member_load){.queued = 0, .running = 0, .parallel = 1, .queue_max = 16, .backlog_ms = 0};
    r.prefill_tok_s = 5.25;
    r.link_rtt_ms = 4.5;
    r.link_mbit = 18.25;
    return r;
}

static km_members *table_p(const char *id, const char *addr, uint64_t inc, const km_members_params *p) {
    km_member self = rec(id, addr, inc, 0);
    km_error err = {{0}};
    km_members *m = km_members_new(&self, p, &err);
    if (!m) fail_msg("km_members_new: %s", err.msg);
    return m;
}

static km_members *table(const char *id, const char *addr, uint64_t inc) { return table_p(id, addr, inc, NULL); }

static char *encode_recs(const char *from, const km_member *r, int n, size_t *len) {
    char *json = NULL;
    km_error err = {{0}};
    if (km_gossip_encode(from, r, n, &json, len, &err) != 0) fail_msg("encode: %s", err.msg);
    return json;
}

/* Merge a message holding the given records, sent by the first one. Returns merge's result. */
static int merge_recs(km_members *m, const km_member *r, int n, double now, km_member_change *ch, int max_ch) {
    size_t len;
    char *json = encode_recs(r[0].id, r, n, &len);
    km_error err = {{0}};
    int rc = km_members_merge(m, json, len, now, ch, max_ch, &err);
    if (rc < 0) fail_msg("merge: %s", err.msg);
    free(json);
    return rc;
}

static int merge_one(km_members *m, km_member r, double now) { return merge_recs(m, &r, 1, now, NULL, 0); }

static km_member get(km_members *m, const char *id) {
    km_member r;
    if (!km_members_get(m, id, &r)) fail_msg("member %s unknown", id);
    return r;
}

static char *replace_once(const char *s, const char *from, const char *to) {
    const char *p = strstr(s, from);
    if (!p) fail_msg("'%s' not in '%s'", from, s);
    size_t a = (size_t)(p - s), fl = strlen(from), tl = strlen(to), sl = strlen(s);
    char *o = malloc(sl - fl + tl + 1);
    memcpy(o, s, a);
    memcpy(o + a, to, tl);
    memcpy(o + a + tl, p + fl, sl - a - fl + 1);
    return o;
}

/* ---------------------------------------------------------- validators, creation */

static void expect_addr_bad(const char *addr, const char *needle) {
    km_error err = {{0}};
    if (km_member_check_addr(addr, &err) == 0) fail_msg("address '%s' accepted", addr);
    if (!strstr(err.msg, needle)) fail_msg("address '%s': error '%s' does not mention '%s'", addr, err.msg, needle);
}

static void test_check_addr(void **state) {
    (void)state;
    const char *good[] = {"a:1", "10.0.0.5:8080", "0.0.0.0:65535", "255.255.255.255:1", "[::1]:80",
                          "[fe80::1%eth0]:8080", "[2001:db8::42]:443", "node-1.local:65535", "my_svc:80",
                          "Pi-Zero-2W.lan:8080", "x1:9"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        km_error err = {{0}};
        if (km_member_check_addr(good[i], &err) != 0) fail_msg("'%s' rejected: %s", good[i], err.msg);
    }
    expect_addr_bad("", "empty address");
    expect_addr_bad("host", "no ':port'");
    expect_addr_bad(":80", "empty host");
    expect_addr_bad("h:", "empty port");
    expect_addr_bad("h:0", "port 0 out of range 1-65535");
    expect_addr_bad("h:65536", "port 65536 out of range");
    expect_addr_bad("h:123456", "port out of range");
    expect_addr_bad("h:08", "leading zero");
    expect_addr_bad("h:8a", "port is not a number");
    expect_addr_bad("h:-1", "port is not a number");
    expect_addr_bad("1.2.3.256:80", "IPv4 part 256 out of range");
    expect_addr_bad("1.2.3:80", "3 parts");
    expect_addr_bad("1.2.3.4.5:80", "5 parts");
    expect_addr_bad("01.2.3.4:80", "leading zero");
    expect_addr_bad("1..2.3:80", "bad IPv4");
    expect_addr_bad("::1:80", "need brackets");
    expect_addr_bad("[::g]:80", "bad IPv6 address");
    expect_addr_bad("[::1]80", "no ':port' after ']'");
    expect_addr_bad("[::1:80", "without ']'");
    expect_addr_bad("[]:80", "bad IPv6 address");
    expect_addr_bad("[::1%]:80", "bad IPv6 zone");
    expect_addr_bad("-a:80", "starts or ends with '-'");
    expect_addr_bad("a-:80", "starts or ends with '-'");
    expect_addr_bad("a..b:80", "empty label");
    expect_addr_bad("a.:80", "empty label");
    expect_addr_bad("a b:80", "character outside");
    expect_addr_bad("a/b:80", "character outside");
    expect_addr_bad("h\xc3\xa9:80", "character outside");
    char lbl[80];
    memset(lbl, 'a', 64);
    strcpy(lbl + 64, ":80");
    expect_addr_bad(lbl, "label longer than 63");
    char big[300];
    memset(big, 'a', 256);
    big[256] = 0;
    expect_addr_bad(big, "longer than 255");
    /* 255 characters is fine: a.a.a...:80 */
    char ok[256];
    for (int i = 0; i < 249; i++) ok[i] = (i % 2) ? '.' : 'a';
    ok[248] = 'a';
    strcpy(ok + 249, ":65535");
    assert_int_equal(strlen(ok), 255);
    assert_int_equal(km_member_check_addr(ok, NULL), 0);
}

static void test_check_id(void **state) {
    (void)state;
    char id[70];
    memset(id, 'x', 64);
    id[64] = 0;
    assert_int_equal(km_member_check_id("a", NULL), 0);
    assert_int_equal(km_member_check_id("0123456789abcdef", NULL), 0);
    assert_int_equal(km_member_check_id("Node_1.b-2", NULL), 0);
    assert_int_equal(km_member_check_id(id, NULL), 0);
    km_error err = {{0}};
    id[64] = 'x';
    id[65] = 0;
    assert_int_equal(km_member_check_id(id, &err), -1);
    assert_non_null(strstr(err.msg, "longer than 64"));
    assert_int_equal(km_member_check_id("", &err), -1);
    assert_non_null(strstr(err.msg, "empty id"));
    assert_int_equal(km_member_check_id("a/b", &err), -1);
    assert_non_null(strstr(err.msg, "outside [A-Za-z0-9_.-] at offset 1"));
    assert_int_equal(km_member_check_id("a b", &err), -1);
}

static void test_new_and_params(void **state) {
    (void)state;
    km_members_params p = km_members_default_params();
    assert_true(p.suspect_ms == 3000 && p.dead_ms == 10000 && p.forget_ms == 60000);
    assert_int_equal(p.max_members, 256);
    assert_int_equal(p.max_message_bytes, 1 << 20);

    km_error err = {{0}};
    km_member s = rec("bad id", "a:1", 1, 0);
    assert_null(km_members_new(&s, NULL, &err));
    assert_non_null(strstr(err.msg, "our id"));
    s = rec("a", "a", 1, 0);
    assert_null(km_members_new(&s, NULL, &err));
    assert_non_null(strstr(err.msg, "our address 'a': no ':port'"));
    s = rec("a", "a:1", (uint64_t)INT64_MAX + 1, 0);
    assert_null(km_members_new(&s, NULL, &err));
    assert_non_null(strstr(err.msg, "2^63"));
    s = rec("a", "a:1", 1, 0);
    km_members_params q = p;
    q.dead_ms = q.suspect_ms;
    assert_null(km_members_new(&s, &q, &err));
    assert_non_null(strstr(err.msg, "dead_ms"));
    q = p;
    q.max_members = 1;
    assert_null(km_members_new(&s, &q, &err));
    assert_non_null(strstr(err.msg, "max_members 1"));
    q = p;
    q.max_message_bytes = 1000; /* cannot hold 256 records */
    assert_null(km_members_new(&s, &q, &err));
    assert_non_null(strstr(err.msg, "max_message_bytes"));

    /* Our record: first in the snapshot, ALIVE, flagged self; load clamped. */
    s.load.queued = -5;
    s.load.running = KM_MEMBER_LOAD_MAX + 1;
    s.prefill_tok_s = -1;
    km_members *m = km_members_new(&s, NULL, &err);
    assert_non_null(m);
    km_member out[4];
    assert_int_equal(km_members_snapshot(m, out, 4), 1);
    assert_string_equal(out[0].id, "a");
    assert_true(out[0].self);
    assert_int_equal(out[0].state, KM_MEMBER_ALIVE);
    assert_int_equal(out[0].load.queued, 0);
    assert_int_equal(out[0].load.running, KM_MEMBER_LOAD_MAX);
    assert_true(out[0].prefill_tok_s == 0);
    assert_int_equal(km_members_count(m, KM_MEMBER_ALIVE), 0); /* peers only */
    km_members_free(m);
    km_members_free(NULL);
}

/* ---------------------------------------------------------- merge */

static void test_merge_higher_version_wins(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    km_member b = rec("B", "b:1", 100, 5);
    b.catalog_version = 7;
    b.load = (km_member_load){.queued = 3, .running = 2, .parallel = 2, .queue_max = 8, .backlog_ms = 48000};
    b.prefill_tok_s = 12.5;
    km_member_change ch[4];
    assert_int_equal(merge_recs(m, &b, 1, 1000, ch, 4), 1);
    assert_int_equal(ch[0].what, KM_CHANGE_NEW | KM_CHANGE_CATALOG);
    assert_string_equal(ch[0].id, "B");
    assert_string_equal(ch[0].addr, "b:1");
    assert_int_equal(ch[0].catalog_version, 7);
    km_member g = get(m, "B");
    assert_int_equal(g.heartbeat, 5);
    assert_int_equal(g.catalog_version, 7);
    assert_int_equal(g.load.queued, 3);
    assert_int_equal(g.load.running, 2);
    assert_int_equal(g.load.parallel, 2);
    assert_int_equal(g.load.queue_max, 8);
    assert_int_equal(g.load.backlog_ms, 48000);
    assert_true(g.prefill_tok_s == 12.5);
    assert_int_equal(g.state, KM_MEMBER_ALIVE);
    assert_true(g.last_heard_ms == 1000);
    assert_false(g.self);

    /* A stale copy (lower heartbeat) with other values is ignored entirely. */
    km_member stale = rec("B", "b:1", 100, 4);
    stale.catalog_version = 99;
    stale.load.queued = 50;
    assert_int_equal(merge_recs(m, &stale, 1, 2000, ch, 4), 0);
    g = get(m, "B");
    assert_int_equal(g.heartbeat, 5);
    assert_int_equal(g.catalog_version, 7);
    assert_int_equal(g.load.queued, 3);
    assert_true(g.last_heard_ms == 1000);
    /* The same version again: ignored too (last_heard does not move). */
    assert_int_equal(merge_one(m, b, 2500), 0);
    assert_true(get(m, "B").last_heard_ms == 1000);

    /* A newer one: every field replaced, heard now; a heartbeat alone is no change to report. */
    km_member newer = b;
    newer.heartbeat = 6;
    newer.load.queued = 0;
    newer.prefill_tok_s = 13.0;
    assert_int_equal(merge_recs(m, &newer, 1, 3000, ch, 4), 0);
    g = get(m, "B");
    assert_int_equal(g.heartbeat, 6);
    assert_int_equal(g.load.queued, 0);
    assert_true(g.prefill_tok_s == 13.0);
    assert_true(g.last_heard_ms == 3000);

    km_members_stats st = km_members_get_stats(m);
    assert_int_equal(st.merged, 4);
    assert_int_equal(st.rejected, 0);
    assert_int_equal(st.alive, 1);
    km_members_free(m);
}

static void test_catalog_change_reported(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    km_member b = rec("B", "b:1", 100, 1), c = rec("C", "c:1", 100, 1), d = rec("D", "d:1", 100, 1);
    km_member three[3] = {b, c, d};
    km_member_change ch[8];
    assert_int_equal(merge_recs(m, three, 3, 0, ch, 8), 3);

    /* B: new catalog version; C: heartbeat only; D: moved to another address. */
    three[0].heartbeat = 2;
    three[0].catalog_version = 2;
    three[1].heartbeat = 2;
    three[2].heartbeat = 2;
    snprintf(three[2].addr, sizeof three[2].addr, "d2:1");
    memset(ch, 0, sizeof ch);
    assert_int_equal(merge_recs(m, three, 3, 100, ch, 8), 2);
    assert_string_equal(ch[0].id, "B");
    assert_int_equal(ch[0].what, KM_CHANGE_CATALOG);
    assert_int_equal(ch[0].catalog_version, 2);
    assert_string_equal(ch[1].id, "D");
    assert_int_equal(ch[1].what, KM_CHANGE_ADDR);
    assert_string_equal(ch[1].addr, "d2:1");

    /* The return value counts every change even when the list is shorter. */
    three[0].heartbeat = 3;
    three[0].catalog_version = 3;
    three[1].heartbeat = 3;
    three[1].catalog_version = 9;
    memset(ch, 0, sizeof ch);
    assert_int_equal(merge_recs(m, three, 3, 200, ch, 1), 2);
    assert_string_equal(ch[0].id, "B");
    assert_string_equal(ch[1].id, ""); /* not written */
    assert_int_equal(merge_recs(m, three, 3, 200, NULL, 0), 0);
    km_members_free(m);
}

static void test_restart_new_incarnation(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    km_member b = rec("B", "b:1", 1000, 50);
    b.catalog_version = 40;
    merge_one(m, b, 0);
    /* B restarts: a larger incarnation wins over a larger heartbeat. Its
     * catalog starts again at the same version number: still reported. */
    km_member b2 = rec("B", "b:1", 2000, 0);
    b2.catalog_version = 40;
    km_member_change ch[2];
    assert_int_equal(merge_recs(m, &b2, 1, 500, ch, 2), 1);
    assert_int_equal(ch[0].what, KM_CHANGE_RESTARTED | KM_CHANGE_CATALOG);
    assert_int_equal(ch[0].incarnation, 2000);
    km_member g = get(m, "B");
    assert_int_equal(g.incarnation, 2000);
    assert_int_equal(g.heartbeat, 0);
    /* The old incarnation's later heartbeats, still in flight, lose. */
    km_member old = rec("B", "b:1", 1000, 99);
    assert_int_equal(merge_one(m, old, 600), 0);
    g = get(m, "B");
    assert_int_equal(g.incarnation, 2000);
    assert_int_equal(g.heartbeat, 0);
    assert_true(g.last_heard_ms == 500);
    km_members_free(m);
}

static void test_own_id_not_overwritten(void **state) {
    (void)state;
    int saved = km_log_level;
    km_log_level = -1; /* the twin warning is expected */
    km_members *m = table("A", "a:1", 100);
    km_members_beat(m);
    km_members_beat(m);
    km_member before = get(m, "A");
    assert_int_equal(before.heartbeat, 2);

    /* An old copy of us: silently ignored. */
    km_member us_old = rec("A", "a:1", 100, 1);
    km_member msg1[2] = {rec("B", "b:1", 1, 1), us_old};
    merge_recs(m, msg1, 2, 0, NULL, 0);
    assert_int_equal(km_members_get_stats(m).twin_records, 0);
    /* A twin with a higher incarnation and another address: counted, not adopted. */
    km_member twin = rec("A", "elsewhere:9", 500, 0);
    twin.catalog_version = 77;
    km_member msg2[2] = {rec("B", "b:1", 1, 2), twin};
    merge_recs(m, msg2, 2, 0, NULL, 0);
    /* Same incarnation, higher heartbeat: also someone else. */
    km_member twin2 = rec("A", "a:1", 100, 50);
    merge_one(m, twin2, 0);
    km_member after = get(m, "A");
    assert_int_equal(after.incarnation, 100);
    assert_int_equal(after.heartbeat, 2);
    assert_int_equal(after.catalog_version, before.catalog_version);
    assert_string_equal(after.addr, "a:1");
    assert_true(after.self);
    assert_int_equal(km_members_get_stats(m).twin_records, 2);
    /* Our record is never aged either. */
    km_members_tick(m, 1e9);
    assert_int_equal(get(m, "A").state, KM_MEMBER_ALIVE);
    km_members_free(m);
    km_log_level = saved;
}

/* ---------------------------------------------------------- failure detection */

static void test_failure_thresholds(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    merge_one(m, rec("B", "b:1", 1, 1), 1000);
    /* suspect at exactly 1000 + 3000, dead at exactly 1000 + 10000, gone at 1000 + 70000. */
    assert_int_equal(km_members_tick(m, 3999.999), 0);
    assert_int_equal(get(m, "B").state, KM_MEMBER_ALIVE);
    assert_int_equal(km_members_tick(m, 4000), 1);
    assert_int_equal(get(m, "B").state, KM_MEMBER_SUSPECT);
    assert_int_equal(km_members_count(m, KM_MEMBER_SUSPECT), 1);
    assert_int_equal(km_members_tick(m, 4500), 0);
    assert_int_equal(km_members_tick(m, 10999.999), 0);
    assert_int_equal(get(m, "B").state, KM_MEMBER_SUSPECT);
    assert_int_equal(km_members_tick(m, 11000), 1);
    assert_int_equal(get(m, "B").state, KM_MEMBER_DEAD);
    assert_int_equal(km_members_count(m, KM_MEMBER_DEAD), 1);
    assert_int_equal(km_members_tick(m, 70999.999), 0);
    assert_int_equal(get(m, "B").state, KM_MEMBER_DEAD);
    assert_int_equal(km_members_tick(m, 71000), 1);
    assert_int_equal(km_members_get(m, "B", NULL), 0);
    assert_int_equal(km_members_snapshot(m, NULL, 0), 1);

    /* Ticks need not land on the thresholds: one late tick goes straight to DEAD. */
    merge_one(m, rec("C", "c:1", 1, 1), 100000);
    assert_int_equal(km_members_tick(m, 150000), 1);
    assert_int_equal(get(m, "C").state, KM_MEMBER_DEAD);
    /* A heartbeat resets the clock. */
    merge_one(m, rec("D", "d:1", 1, 1), 200000);
    km_members_tick(m, 203000);
    assert_int_equal(get(m, "D").state, KM_MEMBER_SUSPECT);
    merge_one(m, rec("D", "d:1", 1, 2), 203500);
    assert_int_equal(get(m, "D").state, KM_MEMBER_ALIVE);
    km_members_tick(m, 206499);
    assert_int_equal(get(m, "D").state, KM_MEMBER_ALIVE);
    km_members_tick(m, 206500);
    assert_int_equal(get(m, "D").state, KM_MEMBER_SUSPECT);
    km_members_free(m);
}

static void test_revival(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    merge_one(m, rec("B", "b:1", 1000, 10), 0);
    km_members_tick(m, 10000);
    assert_int_equal(get(m, "B").state, KM_MEMBER_DEAD);
    /* The old version still circulating is no sign of life (the tombstone). */
    assert_int_equal(merge_one(m, rec("B", "b:1", 1000, 10), 12000), 0);
    assert_int_equal(get(m, "B").state, KM_MEMBER_DEAD);
    assert_true(get(m, "B").last_heard_ms == 0);
    /* A higher heartbeat is. */
    km_member_change ch[1];
    km_member b = rec("B", "b:1", 1000, 11);
    assert_int_equal(merge_recs(m, &b, 1, 13000, ch, 1), 1);
    assert_int_equal(ch[0].what, KM_CHANGE_REVIVED);
    assert_int_equal(get(m, "B").state, KM_MEMBER_ALIVE);
    assert_true(get(m, "B").last_heard_ms == 13000);
    /* DEAD again, then back after a restart: lower heartbeat, higher incarnation. */
    km_members_tick(m, 23000);
    assert_int_equal(get(m, "B").state, KM_MEMBER_DEAD);
    b = rec("B", "b:1", 5000, 0);
    assert_int_equal(merge_recs(m, &b, 1, 24000, ch, 1), 1);
    assert_int_equal(ch[0].what, KM_CHANGE_REVIVED | KM_CHANGE_RESTARTED | KM_CHANGE_CATALOG);
    assert_int_equal(get(m, "B").state, KM_MEMBER_ALIVE);
    /* After forgetting, an old record makes a brand new (ALIVE) member: the
     * reason DEAD members are not gossiped (test_dead_not_gossiped). */
    km_members_tick(m, 24000 + 70000);
    assert_int_equal(km_members_get(m, "B", NULL), 0);
    km_members_free(m);
}

static void test_dead_not_gossiped(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    merge_one(m, rec("B", "b:1", 1, 1), 0);
    merge_one(m, rec("C", "c:1", 1, 1), 5000);
    merge_one(m, rec("D", "d:1", 1, 1), 9000);
    km_members_tick(m, 12000); /* B dead, C suspect, D alive */
    assert_int_equal(get(m, "B").state, KM_MEMBER_DEAD);
    assert_int_equal(get(m, "C").state, KM_MEMBER_SUSPECT);
    char *json;
    size_t len;
    km_error err = {{0}};
    assert_int_equal(km_members_encode(m, &json, &len, &err), 0);
    assert_int_equal(strlen(json), len);
    km_gossip_msg msg;
    assert_int_equal(km_gossip_decode(json, len, NULL, &msg, &err), 0);
    assert_string_equal(msg.from, "A");
    assert_int_equal(msg.n, 3);
    assert_string_equal(msg.members[0].id, "A"); /* the sender first */
    assert_string_equal(msg.members[1].id, "C");
    assert_string_equal(msg.members[2].id, "D");
    assert_false(msg.members[1].self); /* local fields are not on the wire */
    assert_true(msg.members[1].last_heard_ms == 0);
    km_gossip_msg_free(&msg);
    free(json);
    km_members_free(m);
}

static void test_max_members(void **state) {
    (void)state;
    km_members_params p = km_members_default_params();
    p.max_members = 4; /* us + 3 */
    km_members *m = table_p("A", "a:1", 100, &p);
    km_member three[3] = {rec("B", "b:1", 1, 1), rec("C", "c:1", 1, 1), rec("D", "d:1", 1, 1)};
    assert_int_equal(merge_recs(m, three, 3, 0, NULL, 0), 3);
    merge_one(m, rec("E", "e:1", 1, 1), 1000);
    assert_int_equal(km_members_get(m, "E", NULL), 0);
    assert_int_equal(km_members_get_stats(m).ignored_full, 1);
    assert_int_equal(km_members_snapshot(m, NULL, 0), 4);
    /* A message larger than max_members is rejected as a whole. */
    km_member five[5] = {rec("E", "e:1", 1, 1), three[0], three[1], three[2], rec("F", "f:1", 1, 1)};
    size_t len;
    char *json = encode_recs("E", five, 5, &len);
    km_error err = {{0}};
    assert_int_equal(km_members_merge(m, json, len, 0, NULL, 0, &err), -1);
    assert_string_equal(err.msg, "gossip: members: 5 records exceed the limit of 4");
    free(json);
    /* B and C go quiet and die; D keeps beating. A newcomer takes the slot of
     * the dead member heard of least recently (B). */
    merge_one(m, rec("C", "c:1", 1, 2), 500);
    merge_one(m, rec("D", "d:1", 1, 2), 9000);
    km_members_tick(m, 10600);
    assert_int_equal(km_members_count(m, KM_MEMBER_DEAD), 2);
    km_member_change ch[1];
    km_member e = rec("E", "e:1", 1, 2);
    assert_int_equal(merge_recs(m, &e, 1, 11000, ch, 1), 1);
    assert_int_equal(ch[0].what, KM_CHANGE_NEW | KM_CHANGE_CATALOG);
    assert_int_equal(km_members_get(m, "B", NULL), 0);
    assert_int_equal(km_members_get(m, "C", NULL), 1);
    assert_int_equal(get(m, "E").state, KM_MEMBER_ALIVE);
    assert_int_equal(km_members_snapshot(m, NULL, 0), 4);
    km_members_free(m);
}

/* With an allow-list, a record whose address is outside it is never merged
 * (so never contacted) and is counted; a known member cannot be moved out of
 * it either. Before, any gossiped address was taken (an injected 10.0.0.1:80
 * was contacted). */
static void test_allow_list(void **state) {
    (void)state;
    km_netallow *allow = km_netallow_new();
    km_error err = {{0}};
    assert_int_equal(km_netallow_add_list(allow, "127.0.0.1/32", &err), 0);
    km_members_params p = km_members_default_params();
    p.allow = allow;
    km_members *m = table_p("self", "127.0.0.1:9000", 1, &p);
    km_member rs[3] = {rec("good", "127.0.0.1:9001", 1, 1), rec("evil", "127.0.0.77:9", 1, 1),
                       rec("named", "localhost:9002", 1, 1)};
    km_member_change ch[4];
    assert_int_equal(merge_recs(m, rs, 3, 100, ch, 4), 1);
    assert_string_equal(ch[0].id, "good");
    assert_int_equal(km_members_get(m, "evil", NULL), 0);
    assert_int_equal(km_members_get(m, "named", NULL), 0); /* names are never allowed */
    assert_int_equal(km_members_get_stats(m).ignored_addr, 2);
    /* a newer record moving a member out of the list: ignored, the old address stays */
    km_member moved = rec("good", "127.0.0.2:9001", 1, 2);
    assert_int_equal(merge_one(m, moved, 200), 0);
    assert_string_equal(get(m, "good").addr, "127.0.0.1:9001");
    assert_int_equal(get(m, "good").heartbeat, 1);
    assert_int_equal(km_members_get_stats(m).ignored_addr, 3);
    /* nobody outside the list is ever a gossip target */
    uint64_t rng = 7;
    for (int i = 0; i < 50; i++) {
        km_gossip_target t;
        assert_int_equal(km_members_pick_target(m, &rng, &t), 1);
        assert_string_equal(t.addr, "127.0.0.1:9001");
    }
    km_members_free(m);
    km_netallow_free(allow);
}

static void test_model_flag(void **state) {
    (void)state;
    km_member self = rec("A", "a:1", 1, 0);
    self.has_model = true;
    memset(self.model, 0xab, sizeof self.model);
    km_members *m = km_members_new(&self, NULL, NULL);
    assert_non_null(m);
    km_member same = rec("B", "b:1", 1, 1), other = rec("C", "c:1", 1, 1), none = rec("D", "d:1", 1, 1);
    same.has_model = other.has_model = true;
    memset(same.model, 0xab, sizeof same.model);
    memset(other.model, 0xab, sizeof other.model);
    other.model[15] = 0xac;
    km_member three[3] = {same, other, none};
    merge_recs(m, three, 3, 0, NULL, 0);
    /* Members with another model (or none announced) are kept, flagged. */
    assert_true(get(m, "B").same_model);
    assert_false(get(m, "C").same_model);
    assert_true(get(m, "C").has_model);
    assert_false(get(m, "D").same_model);
    assert_false(get(m, "D").has_model);
    assert_int_equal(km_members_count(m, KM_MEMBER_ALIVE), 3);
    assert_true(get(m, "A").same_model);
    km_members_free(m);
}

/* ---------------------------------------------------------- self, seeds, targets */

static void test_update_self_and_beat(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    km_member_load l = {.queued = 2, .running = 1, .parallel = 2, .queue_max = 16, .backlog_ms = 7300};
    km_members_update_self(m, 42, &l, 31.5);
    km_members_beat(m);
    km_member s = get(m, "A");
    assert_int_equal(s.heartbeat, 1);
    assert_int_equal(s.catalog_version, 42);
    assert_int_equal(s.load.queued, 2);
    assert_int_equal(s.load.queue_max, 16);
    assert_int_equal(s.load.backlog_ms, 7300);
    assert_true(s.prefill_tok_s == 31.5);
    km_members_update_link(m, 6.5, 19.5);
    s = get(m, "A");
    assert_true(s.link_rtt_ms == 6.5 && s.link_mbit == 19.5);
    km_members_update_link(m, -1, 1.0 / 0.0); /* nonsense reads as unknown */
    s = get(m, "A");
    assert_true(s.link_rtt_ms == 0 && s.link_mbit == 0);
    km_members_update_link(m, 3, 5e9);
    s = get(m, "A");
    assert_true(s.link_rtt_ms == 3 && s.link_mbit == KM_MEMBER_LINK_MAX);
    km_key keys[KM_MEMBER_PENDING_MAX + 2];
    for (int k = 0; k < KM_MEMBER_PENDING_MAX + 2; k++) memset(keys[k].b, k + 1, KM_KEY_LEN);
    km_members_update_pending(m, keys, KM_MEMBER_PENDING_MAX + 2); /* at most 8 kept */
    s = get(m, "A");
    assert_int_equal(s.n_pending, KM_MEMBER_PENDING_MAX);
    assert_memory_equal(s.pending, keys, sizeof s.pending);
    km_members_update_pending(m, keys, 0);
    assert_int_equal(get(m, "A").n_pending, 0);
    /* km_catalog's saturated UINT64_MAX and absurd inputs are clamped to what the wire holds. */
    l.running = -3;
    km_members_update_self(m, UINT64_MAX, &l, 1.0 / 0.0);
    s = get(m, "A");
    assert_true(s.catalog_version == (uint64_t)INT64_MAX);
    assert_int_equal(s.load.running, 0);
    assert_true(s.prefill_tok_s == 0);
    km_members_update_self(m, 5, NULL, 2e12);
    s = get(m, "A");
    assert_int_equal(s.load.queued, 2); /* NULL load: unchanged */
    assert_true(s.prefill_tok_s == KM_MEMBER_RATE_MAX);
    /* What others see. */
    km_members *b = table("B", "b:1", 1);
    char *json;
    size_t len;
    assert_int_equal(km_members_encode(m, &json, &len, NULL), 0);
    assert_int_equal(km_members_merge(b, json, len, 0, NULL, 0, NULL), 1);
    free(json);
    km_member seen = get(b, "A");
    assert_int_equal(seen.catalog_version, 5);
    assert_int_equal(seen.heartbeat, 1);
    /* Without a beat, an update is not adopted by others (same version). */
    km_members_update_self(m, 6, NULL, 1);
    assert_int_equal(km_members_encode(m, &json, &len, NULL), 0);
    assert_int_equal(km_members_merge(b, json, len, 0, NULL, 0, NULL), 0);
    free(json);
    assert_int_equal(get(b, "A").catalog_version, 5);
    km_members_beat(m);
    assert_int_equal(km_members_encode(m, &json, &len, NULL), 0);
    assert_int_equal(km_members_merge(b, json, len, 0, NULL, 0, NULL), 1);
    free(json);
    assert_int_equal(get(b, "A").catalog_version, 6);
    km_members_free(b);
    km_members_free(m);
}

static void test_seeds(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    km_error err = {{0}};
    /* The same --peers list everywhere: our own address is skipped, duplicates too. */
    assert_int_equal(km_members_add_seed_list(m, " b:1, a:1,,c:1 ,b:1", &err), 0);
    km_members_stats st = km_members_get_stats(m);
    assert_int_equal(st.seeds, 2);
    assert_int_equal(st.seeds_pending, 2);
    assert_int_equal(km_members_add_seed_list(m, "d:1,e:0", &err), -1);
    assert_string_equal(err.msg, "peer list entry 2: seed 'e:0': port 0 out of range 1-65535");
    assert_int_equal(km_members_add_seed(m, "nope", &err), -1);
    assert_string_equal(err.msg, "seed 'nope': no ':port' (host:port expected)");
    assert_int_equal(km_members_get_stats(m).seeds, 3); /* d:1 went in before e:0 failed */
    for (int i = 0; i < KM_MEMBERS_MAX_SEEDS - 3; i++) {
        char a[32];
        snprintf(a, sizeof a, "s%d:1", i);
        assert_int_equal(km_members_add_seed(m, a, &err), 0);
    }
    assert_int_equal(km_members_add_seed(m, "one-too-many:1", &err), -1);
    assert_non_null(strstr(err.msg, "more than 64 seeds"));
    km_members_free(m);
}

static void test_pick_target(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    uint64_t rng = 1;
    km_gossip_target t;
    assert_int_equal(km_members_pick_target(m, &rng, &t), 0); /* nobody at all */
    km_members_add_seed_list(m, "a:1,b:1,c:1", NULL);
    /* Only seeds known: both are tried, never our own address. */
    int hits_b = 0, hits_c = 0;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(km_members_pick_target(m, &rng, &t), 1);
        assert_string_equal(t.id, "");
        hits_b += strcmp(t.addr, "b:1") == 0;
        hits_c += strcmp(t.addr, "c:1") == 0;
    }
    assert_int_equal(hits_b + hits_c, 200);
    assert_true(hits_b > 50 && hits_c > 50);

    /* B answers (under the seed's address): seed b:1 is no longer a candidate on its own. */
    merge_one(m, rec("B", "b:1", 1, 1), 0);
    merge_one(m, rec("D", "d:1", 1, 1), 0);
    merge_one(m, rec("E", "e:1", 1, 1), 9000);
    assert_int_equal(km_members_get_stats(m).seeds_pending, 1);
    int by_member = 0, seed_c = 0;
    for (int i = 0; i < 400; i++) {
        assert_int_equal(km_members_pick_target(m, &rng, &t), 1);
        assert_true(strcmp(t.addr, "a:1") != 0);
        if (t.id[0]) {
            by_member++;
            km_member g = get(m, t.id);
            assert_string_equal(g.addr, t.addr);
        } else {
            assert_string_equal(t.addr, "c:1");
            seed_c++;
        }
    }
    assert_true(by_member > 250 && seed_c > 50); /* 4 candidates: B, D, E, seed c */

    /* B and D die: never picked; E (alive) and seed c:1 remain. */
    km_members_tick(m, 10000);
    assert_int_equal(km_members_count(m, KM_MEMBER_DEAD), 2);
    for (int i = 0; i < 200; i++) {
        assert_int_equal(km_members_pick_target(m, &rng, &t), 1);
        assert_true(strcmp(t.addr, "e:1") == 0 || strcmp(t.addr, "c:1") == 0);
    }
    /* Everybody dead: every seed is a candidate again (b:1 too, though B is known), still no dead member. */
    km_members_tick(m, 19000);
    assert_int_equal(km_members_count(m, KM_MEMBER_DEAD), 3);
    hits_b = hits_c = 0;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(km_members_pick_target(m, &rng, &t), 1);
        assert_string_equal(t.id, "");
        hits_b += strcmp(t.addr, "b:1") == 0;
        hits_c += strcmp(t.addr, "c:1") == 0;
    }
    assert_int_equal(hits_b + hits_c, 200);
    assert_true(hits_b > 50 && hits_c > 50);

    /* Deterministic for a given random state. */
    uint64_t r1 = 42, r2 = 42;
    km_gossip_target t1, t2;
    for (int i = 0; i < 20; i++) {
        km_members_pick_target(m, &r1, &t1);
        km_members_pick_target(m, &r2, &t2);
        assert_string_equal(t1.addr, t2.addr);
    }
    km_members_free(m);

    /* No seeds and nobody alive: nothing to do. */
    m = table("A", "a:1", 100);
    merge_one(m, rec("B", "b:1", 1, 1), 0);
    km_members_tick(m, 10000);
    assert_int_equal(km_members_pick_target(m, &rng, &t), 0);
    /* A member at our own address (we, before a restart under a new id) is no target either. */
    merge_one(m, rec("A-before-restart", "a:1", 1, 1), 10000);
    assert_int_equal(get(m, "A-before-restart").state, KM_MEMBER_ALIVE);
    assert_int_equal(km_members_pick_target(m, &rng, &t), 0);
    merge_one(m, rec("C", "c:1", 1, 1), 10000);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(km_members_pick_target(m, &rng, &t), 1);
        assert_string_equal(t.id, "C");
    }
    km_members_free(m);
}

/* ---------------------------------------------------------- codec */

static void assert_same_gossiped(const km_member *a, const km_member *b) {
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->addr, b->addr);
    assert_true(a->incarnation == b->incarnation);
    assert_true(a->heartbeat == b->heartbeat);
    assert_true(a->catalog_version == b->catalog_version);
    assert_memory_equal(&a->load, &b->load, sizeof a->load);
    assert_memory_equal(&a->prefill_tok_s, &b->prefill_tok_s, sizeof(double)); /* bit for bit */
    assert_memory_equal(&a->link_rtt_ms, &b->link_rtt_ms, sizeof(double));
    assert_memory_equal(&a->link_mbit, &b->link_mbit, sizeof(double));
    assert_int_equal(a->n_pending, b->n_pending);
    assert_memory_equal(a->pending, b->pending, (size_t)a->n_pending * sizeof a->pending[0]);
    assert_int_equal(a->has_model, b->has_model);
    if (a->has_model) assert_memory_equal(a->model, b->model, KM_FINGERPRINT_LEN);
}

static void test_roundtrip(void **state) {
    (void)state;
    km_member r[6];
    r[0] = rec("self-0123456789abcdef", "[fe80::1%eth0]:8080", 1718000000123ull, 42);
    r[0].has_model = true;
    for (int k = 0; k < KM_FINGERPRINT_LEN; k++) r[0].model[k] = (uint8_t)(k * 17 + 3);
    r[1] = rec("max", "255.255.255.255:65535", (uint64_t)INT64_MAX, (uint64_t)INT64_MAX);
    r[1].catalog_version = (uint64_t)INT64_MAX;
    r[1].load = (km_member_load){KM_MEMBER_LOAD_MAX, KM_MEMBER_LOAD_MAX, KM_MEMBER_LOAD_MAX, KM_MEMBER_LOAD_MAX,
                                 KM_MEMBER_BACKLOG_MAX};
    r[1].prefill_tok_s = KM_MEMBER_RATE_MAX;
    r[1].link_rtt_ms = KM_MEMBER_LINK_MAX;
    r[1].link_mbit = KM_MEMBER_LINK_MAX;
    r[2] = rec("zero", "h:1", 0, 0);
    r[2].catalog_version = 0;
    r[2].load = (km_member_load){0, 0, 0, 0, 0};
    r[2].prefill_tok_s = 0;
    r[2].link_rtt_ms = 0;
    r[2].link_mbit = 0;
    r[3] = rec("thirds", "x.example.org:443", 3, 3);
    r[3].prefill_tok_s = 1.0 / 3.0;
    r[3].link_mbit = 2.0 / 3.0;
    r[3].n_pending = KM_MEMBER_PENDING_MAX;
    for (int k = 0; k < KM_MEMBER_PENDING_MAX; k++)
        for (int b = 0; b < KM_KEY_LEN; b++) r[3].pending[k].b[b] = (uint8_t)(k * 31 + b * 7);
    r[4].n_pending = 1;
    memset(r[4].pending[0].b, 0xff, KM_KEY_LEN);
    r[4] = rec("tiny", "10.1.2.3:80", 4, 4);
    r[4].prefill_tok_s = 4.9e-324; /* the smallest subnormal */
    r[5] = rec("pi", "[::1]:1", 5, 5);
    r[5].prefill_tok_s = 3.141592653589793;
    size_t len;
    char *json = encode_recs(r[0].id, r, 6, &len);
    assert_non_null(strstr(json, "{\"v\":1,\"from\":\"self-0123456789abcdef\",\"members\":[{\"id\":"));
    assert_non_null(strstr(json, "\"model\":\"03142536"));
    km_gossip_msg msg;
    km_error err = {{0}};
    if (km_gossip_decode(json, len, NULL, &msg, &err) != 0) fail_msg("decode: %s", err.msg);
    assert_string_equal(msg.from, r[0].id);
    assert_int_equal(msg.n, 6);
    for (int i = 0; i < 6; i++) assert_same_gossiped(&r[i], &msg.members[i]);
    /* ... and encoding what was decoded gives the same bytes. */
    size_t len2;
    char *json2 = encode_recs(msg.from, msg.members, msg.n, &len2);
    assert_int_equal(len, len2);
    assert_string_equal(json, json2);
    km_gossip_msg_free(&msg);
    free(json2);
    free(json);

    /* Integers accepted for the rate, reals written back; unknown fields ignored. */
    const char *fwd = "{\"v\":1,\"future\":{\"x\":[1,2,{}]},\"from\":\"B\",\"members\":[{\"id\":\"B\",\"addr\":\"b:1\","
                      "\"incarnation\":1,\"heartbeat\":2,\"catalog_version\":3,\"queued\":4,\"running\":5,"
                      "\"parallel\":6,\"queue_max\":7,\"backlog_ms\":9,\"prefill_tok_s\":8,\"link_rtt_ms\":3,\"link_mbit\":20,\"pending\":[],\"zone\":\"eu\","
                      "\"gpu\":null}]}";
    if (km_gossip_decode(fwd, strlen(fwd), NULL, &msg, &err) != 0) fail_msg("decode: %s", err.msg);
    assert_int_equal(msg.n, 1);
    assert_true(msg.members[0].prefill_tok_s == 8.0);
    assert_int_equal(msg.members[0].load.queue_max, 7);
    assert_int_equal(msg.members[0].load.backlog_ms, 9);
    assert_true(msg.members[0].link_rtt_ms == 3.0 && msg.members[0].link_mbit == 20.0);
    assert_false(msg.members[0].has_model);
    km_gossip_msg_free(&msg);

    /* The encoder refuses what the decoder would refuse. */
    km_member bad = rec("B", "b:0", 1, 1);
    char *out;
    assert_int_equal(km_gossip_encode("B", &bad, 1, &out, &len, &err), -1);
    assert_string_equal(err.msg, "gossip encode: members[0].addr: port 0 out of range 1-65535");
    bad = rec("B", "b:1", 1, 1);
    assert_int_equal(km_gossip_encode("C", &bad, 1, &out, &len, &err), -1);
    assert_non_null(strstr(err.msg, "no record for the sender"));
}

/* A valid message with two records to mutate: B (the sender) and C. */
static char *base_message(size_t *len) {
    km_member r[2] = {rec("B", "b:1", 7, 9), rec("C", "c:1", 7, 9)};
    r[1].has_model = true;
    memset(r[1].model, 0xcd, sizeof r[1].model);
    return encode_recs("B", r, 2, len);
}

/* Merge must fail with an error containing needle and leave the table as it was. */
static void expect_rejected(km_members *m, const char *json, size_t len, const char *needle) {
    km_member before[8], after[8];
    int nb = km_members_snapshot(m, before, 8);
    uint64_t rejected = km_members_get_stats(m).rejected;
    km_error err = {{0}};
    km_member_change ch[8];
    if (km_members_merge(m, json, len, 123456, ch, 8, &err) != -1)
        fail_msg("accepted (expected an error mentioning '%s'): %.300s", needle, json);
    if (!strstr(err.msg, needle)) fail_msg("error '%s' does not mention '%s'", err.msg, needle);
    int na = km_members_snapshot(m, after, 8);
    assert_int_equal(na, nb);
    assert_memory_equal(before, after, (size_t)na * sizeof *before);
    assert_int_equal(km_members_get_stats(m).rejected, rejected + 1);
}

static void expect_rejected_s(km_members *m, const char *json, const char *needle) {
    expect_rejected(m, json, strlen(json), needle);
}

/* Replace `from` by `to` in the base message and expect a rejection. */
static void expect_edit_rejected(km_members *m, const char *from, const char *to, const char *needle) {
    size_t len;
    char *base = base_message(&len);
    char *t = replace_once(base, from, to);
    expect_rejected(m, t, strlen(t), needle);
    free(t);
    free(base);
}

static void test_malformed(void **state) {
    (void)state;
    km_members *m = table("A", "a:1", 100);
    merge_one(m, rec("C", "c:1", 1, 1), 0); /* something in the table to keep intact */
    size_t len;
    char *base = base_message(&len);
    /* The base is fine (checked on a copy of the table's owner). */
    {
        km_members *x = table("X", "x:1", 1);
        assert_int_equal(km_members_merge(x, base, len, 0, NULL, 0, NULL), 2);
        km_members_free(x);
    }
    /* C's record in the base is newer than the table's: every rejection below
     * would otherwise have changed it. */

    /* Envelope. */
    expect_rejected(m, "", 0, "gossip: empty message");
    expect_rejected_s(m, "[1,2]", "gossip: expected an object, got an array");
    expect_rejected_s(m, "\"hi\"", "gossip: expected an object, got a string");
    expect_rejected_s(m, "42", "expected an object, got an integer");
    expect_rejected_s(m, "{\"v\":1,", "gossip: invalid JSON");
    expect_rejected(m, base, len - 1, "gossip: invalid JSON"); /* truncated */
    expect_rejected(m, base, len / 2, "gossip: invalid JSON");
    {
        char *t = malloc(len + 3);
        memcpy(t, base, len);
        memcpy(t + len, " {}", 3);
        expect_rejected(m, t, len + 3, "gossip: invalid JSON"); /* trailing garbage */
        free(t);
    }
    expect_edit_rejected(m, "\"v\":1", "\"v\":2", "gossip: v: unsupported version 2 (this node speaks 1)");
    expect_edit_rejected(m, "\"v\":1", "\"v\":0", "unsupported version 0");
    expect_edit_rejected(m, "\"v\":1", "\"v\":\"1\"", "gossip: v: expected an integer, got a string");
    expect_edit_rejected(m, "\"v\":1", "\"w\":1", "gossip: missing \"v\"");
    expect_edit_rejected(m, "\"from\":\"B\"", "\"from\":\"Z\"", "gossip: from: no record for \"Z\" in members");
    expect_edit_rejected(m, "\"from\":\"B\"", "\"from\":\"\"", "gossip: from: empty id");
    expect_edit_rejected(m, "\"from\":\"B\"", "\"from\":7", "gossip: from: expected a string, got an integer");
    expect_edit_rejected(m, "\"from\":\"B\"", "\"frm\":\"B\"", "gossip: missing \"from\"");
    expect_edit_rejected(m, "\"members\":[", "\"members\":{\"x\":[", "gossip: invalid JSON"); /* unbalanced */
    expect_rejected_s(m, "{\"v\":1,\"from\":\"B\",\"members\":{}}", "gossip: members: expected an array, got an object");
    expect_rejected_s(m, "{\"v\":1,\"from\":\"B\"}", "gossip: missing \"members\"");
    expect_rejected_s(m, "{\"v\":1,\"from\":\"B\",\"members\":[]}", "no record for \"B\"");
    expect_edit_rejected(m, "\"v\":1", "\"v\":1,\"v\":1", "duplicate object key");

    /* Records: types, ranges, lengths. */
    expect_edit_rejected(m, "\"members\":[{", "\"members\":[7,{", "gossip: members[0]: expected an object, got an integer");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"heartbeat\":\"9\"", "gossip: members[0].heartbeat: expected an integer, got a string");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"heartbeat\":9.5", "gossip: members[0].heartbeat: expected an integer, got a real number");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"heartbeat\":-1", "gossip: members[0].heartbeat: -1 out of range 0..9223372036854775807");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"heartbeat\":18446744073709551615", "gossip: invalid JSON: too big integer");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"heartbeat\":null", "expected an integer, got null");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"heartbeat\":true", "expected an integer, got a boolean");
    expect_edit_rejected(m, "\"heartbeat\":9", "\"hb\":9", "gossip: members[0]: missing \"heartbeat\"");
    expect_edit_rejected(m, "\"incarnation\":7", "\"incarnation\":[7]", "gossip: members[0].incarnation: expected an integer, got an array");
    expect_edit_rejected(m, "\"catalog_version\":1", "\"catalog_version\":-5", "members[0].catalog_version: -5 out of range");
    expect_edit_rejected(m, "\"queued\":0", "\"queued\":1048577", "gossip: members[0].queued: 1048577 out of range 0..1048576");
    expect_edit_rejected(m, "\"running\":0", "\"running\":-1", "members[0].running: -1 out of range");
    expect_edit_rejected(m, "\"parallel\":1", "\"parallel\":99999999999", "members[0].parallel: 99999999999 out of range");
    expect_edit_rejected(m, "\"queue_max\":16", "\"queue_max\":{}", "members[0].queue_max: expected an integer, got an object");
    expect_edit_rejected(m, "\"backlog_ms\":0", "\"backlog_ms\":86400001", "gossip: members[0].backlog_ms: 86400001 out of range 0..86400000");
    expect_edit_rejected(m, "\"backlog_ms\":0", "\"backlog_ms\":2.5", "members[0].backlog_ms: expected an integer, got a real number");
    expect_edit_rejected(m, "\"backlog_ms\":0,", "", "gossip: members[0]: missing \"backlog_ms\"");
    expect_edit_rejected(m, "\"link_rtt_ms\":4.5", "\"link_rtt_ms\":-1", "gossip: members[0].link_rtt_ms: -1 out of range 0..1e+06");
    expect_edit_rejected(m, "\"link_mbit\":18.25", "\"link_mbit\":2e6", "members[0].link_mbit: 2e+06 out of range 0..1e+06");
    expect_edit_rejected(m, "\"link_mbit\":18.25", "\"link_mbit\":\"fast\"", "members[0].link_mbit: expected a number, got a string");
    expect_edit_rejected(m, ",\"link_mbit\":18.25", "", "gossip: members[0]: missing \"link_mbit\"");
    expect_edit_rejected(m, ",\"pending\":[]", "", "gossip: members[0]: missing \"pending\"");
    expect_edit_rejected(m, "\"pending\":[]", "\"pending\":{}", "members[0].pending: expected an array, got an object");
    expect_edit_rejected(m, "\"pending\":[]", "\"pending\":[\"00112233445566778899aabbccddeeff\",7]",
                         "members[0].pending: [1]: expected 32 lowercase hex digits");
    expect_edit_rejected(m, "\"pending\":[]", "\"pending\":[\"00112233445566778899AABBCCDDEEFF\"]",
                         "members[0].pending: [0]: expected 32 lowercase hex digits");
    expect_edit_rejected(m, "\"pending\":[]", "\"pending\":[\"00112233445566778899aabbccddee\"]",
                         "members[0].pending: [0]: expected 32 lowercase hex digits");
    {
        char t[600] = "\"pending\":[";
        for (int k = 0; k < KM_MEMBER_PENDING_MAX + 1; k++)
            strcat(t, k ? ",\"00112233445566778899aabbccddeeff\"" : "\"00112233445566778899aabbccddeeff\"");
        strcat(t, "]");
        expect_edit_rejected(m, "\"pending\":[]", t, "members[0].pending: 9 keys, at most 8");
    }
    expect_edit_rejected(m, "\"prefill_tok_s\":5.25", "\"prefill_tok_s\":-0.5", "gossip: members[0].prefill_tok_s: -0.5 out of range 0..1e+09");
    expect_edit_rejected(m, "\"prefill_tok_s\":5.25", "\"prefill_tok_s\":1e10", "prefill_tok_s: 1e+10 out of range");
    expect_edit_rejected(m, "\"prefill_tok_s\":5.25", "\"prefill_tok_s\":1e999", "gossip: invalid JSON: real number overflow");
    expect_edit_rejected(m, "\"prefill_tok_s\":5.25", "\"prefill_tok_s\":\"fast\"", "prefill_tok_s: expected a number, got a string");
    expect_edit_rejected(m, "\"prefill_tok_s\":5.25", "\"prefill_tok_s\":NaN", "gossip: invalid JSON");
    expect_edit_rejected(m, "\"id\":\"B\"", "\"id\":\"B/1\"", "gossip: members[0].id: id has a character outside [A-Za-z0-9_.-] at offset 1");
    expect_edit_rejected(m, "\"id\":\"B\"", "\"id\":\"\"", "gossip: members[0].id: empty id");
    expect_edit_rejected(m, "\"id\":\"B\"", "\"id\":\"B\\u0000x\"", "gossip: invalid JSON"); /* NUL inside a string */
    expect_edit_rejected(m, "\"id\":\"B\"", "\"id\":7", "gossip: members[0].id: expected a string, got an integer");
    expect_edit_rejected(m, "\"id\":\"C\"", "\"id\":\"B\"", "gossip: members[1].id: \"B\" is also members[0]");
    char longid[100] = "\"id\":\"";
    memset(longid + 6, 'q', 65);
    strcpy(longid + 71, "\"");
    expect_edit_rejected(m, "\"id\":\"C\"", longid, "gossip: members[1].id: id longer than 64 characters");
    expect_edit_rejected(m, "\"addr\":\"c:1\"", "\"addr\":\"c:0\"", "gossip: members[1].addr: port 0 out of range 1-65535");
    expect_edit_rejected(m, "\"addr\":\"c:1\"", "\"addr\":\"c\"", "gossip: members[1].addr: no ':port'");
    expect_edit_rejected(m, "\"addr\":\"c:1\"", "\"addr\":\"[::zz]:1\"", "gossip: members[1].addr: bad IPv6 address");
    expect_edit_rejected(m, "\"addr\":\"c:1\"", "\"addr\":\"c d:1\"", "members[1].addr: host has a character outside");
    expect_edit_rejected(m, "\"addr\":\"c:1\"", "\"addr\":1", "members[1].addr: expected a string, got an integer");
    {
        char t[400] = "\"addr\":\"";
        memset(t + 8, 'a', 254);
        strcpy(t + 262, ":1\"");
        expect_edit_rejected(m, "\"addr\":\"c:1\"", t, "members[1].addr: address longer than 255 characters");
    }
    expect_edit_rejected(m, "\"model\":\"cdcd", "\"model\":\"CDcd", "gossip: members[1].model: expected 32 lowercase hex digits");
    expect_edit_rejected(m, "\"model\":\"cdcd", "\"model\":\"cd", "members[1].model: expected 32 lowercase hex digits"); /* 30 */
    expect_edit_rejected(m, "\"model\":\"cdcd", "\"model\":\"cdcdcd", "members[1].model: expected 32 lowercase hex digits"); /* 34 */
    expect_edit_rejected(m, "\"model\":\"cdcd", "\"model\":\"zzcd", "members[1].model: expected 32 lowercase hex");
    expect_edit_rejected(m, "\"model\":\"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\"", "\"model\":null", "members[1].model: expected a string, got null");
    /* One bad record anywhere spoils the whole message: B (first, valid) is not applied either. */
    expect_edit_rejected(m, "\"queue_max\":16,\"backlog_ms\":0,\"prefill_tok_s\":5.25,\"link_rtt_ms\":4.5,\"link_mbit\":18.25,\"pending\":[],\"model\"",
                         "\"queue_max\":-16,\"backlog_ms\":0,\"prefill_tok_s\":5.25,\"link_rtt_ms\":4.5,\"link_mbit\":18.25,\"pending\":[],\"model\"",
                         "gossip: members[1].queue_max: -16 out of range");
    assert_int_equal(km_members_get(m, "B", NULL), 0);

    /* Deep nesting, even in a field that would be ignored. */
    {
        char t[300];
        int n = snprintf(t, sizeof t, "{\"v\":1,\"x\":");
        for (int i = 0; i < 20; i++) t[n++] = '[';
        for (int i = 0; i < 20; i++) t[n++] = ']';
        n += snprintf(t + n, sizeof t - (size_t)n, ",\"from\":\"B\",\"members\":[]}");
        expect_rejected(m, t, (size_t)n, "gossip: nested deeper than 16 levels");
        /* Brackets inside strings do not count. */
        char *s = replace_once(base, "\"v\":1", "\"v\":1,\"note\":\"[[[[[[[[[[[[[[[[[[[[[[[[[\\\"[[[[[\"");
        km_members *x = table("X", "x:1", 1);
        km_error err = {{0}};
        if (km_members_merge(x, s, strlen(s), 0, NULL, 0, &err) != 2) fail_msg("brackets in strings: %s", err.msg);
        km_members_free(x);
        free(s);
    }
    /* 300 members against the limit of 256, and a message over the byte limit. */
    {
        km_member *r = calloc(300, sizeof *r);
        for (int i = 0; i < 300; i++) {
            char id[16];
            snprintf(id, sizeof id, "n%d", i);
            r[i] = rec(id, "h:1", 1, 1);
        }
        size_t l;
        char *j = encode_recs("n0", r, 300, &l);
        expect_rejected(m, j, l, "gossip: members: 300 records exceed the limit of 256");
        free(j);
        free(r);
        char *big = malloc((1 << 20) + 2);
        memset(big, ' ', (1 << 20) + 1);
        memcpy(big, base, len);
        expect_rejected(m, big, (1 << 20) + 1, "gossip: message of 1048577 bytes exceeds the limit of 1048576");
        /* Whitespace padding up to the limit is still fine. */
        km_members *x = table("X", "x:1", 1);
        assert_int_equal(km_members_merge(x, big, 1 << 20, 0, NULL, 0, NULL), 2);
        km_members_free(x);
        free(big);
    }
    /* Invalid UTF-8 in a string. */
    expect_edit_rejected(m, "\"id\":\"C\"", "\"id\":\"\xff\"", "gossip: invalid JSON");

    /* The table is as it was before all of this, and still works. */
    assert_int_equal(km_members_snapshot(m, NULL, 0), 2);
    assert_int_equal(get(m, "C").heartbeat, 1);
    assert_int_equal(km_members_merge(m, base, len, 0, NULL, 0, NULL), 2); /* B new, C restarted */
    assert_int_equal(get(m, "C").heartbeat, 9);
    free(base);
    km_members_free(m);
}

/* ---------------------------------------------------------- a mesh in memory */

#define N_NODES 3

typedef struct sim_node {
    km_members *m;
    char addr[32];
    bool up;
    uint64_t rng;
} sim_node;

static sim_node *sim_find(sim_node *nodes, const char *addr) {
    for (int i = 0; i < N_NODES; i++)
        if (nodes[i].up && strcmp(nodes[i].addr, addr) == 0) return &nodes[i];
    return NULL;
}

/* One gossip round at now: every node that is up beats, picks a target and
 * swaps messages with it (POST ours, merge the response); then everybody ticks. */
static void sim_round(sim_node *nodes, double now) {
    for (int i = 0; i < N_NODES; i++) {
        sim_node *a = &nodes[i];
        if (!a->up) continue;
        km_members_beat(a->m);
        km_gossip_target t;
        if (!km_members_pick_target(a->m, &a->rng, &t)) continue;
        sim_node *b = sim_find(nodes, t.addr);
        if (!b) continue; /* connection refused */
        char *req, *resp;
        size_t req_len, resp_len;
        km_error err = {{0}};
        if (km_members_encode(a->m, &req, &req_len, &err) != 0) fail_msg("encode: %s", err.msg);
        if (km_members_merge(b->m, req, req_len, now, NULL, 0, &err) < 0) fail_msg("merge at b: %s", err.msg);
        if (km_members_encode(b->m, &resp, &resp_len, &err) != 0) fail_msg("encode: %s", err.msg);
        if (km_members_merge(a->m, resp, resp_len, now, NULL, 0, &err) < 0) fail_msg("merge at a: %s", err.msg);
        free(req);
        free(resp);
    }
    for (int i = 0; i < N_NODES; i++)
        if (nodes[i].up) km_members_tick(nodes[i].m, now);
}

/* Does every node that is up see every other one in the given state? */
static bool sim_all_see(sim_node *nodes, int who, km_member_state st) {
    char id[16];
    snprintf(id, sizeof id, "n%d", who);
    for (int i = 0; i < N_NODES; i++) {
        if (!nodes[i].up || i == who) continue;
        km_member r;
        if (!km_members_get(nodes[i].m, id, &r) || r.state != st) return false;
    }
    return true;
}

static void test_three_nodes(void **state) {
    (void)state;
    int saved = km_log_level;
    km_log_level = 0;
    sim_node nodes[N_NODES];
    for (int i = 0; i < N_NODES; i++) {
        char id[16];
        snprintf(id, sizeof id, "n%d", i);
        snprintf(nodes[i].addr, sizeof nodes[i].addr, "10.0.0.%d:7000", i + 1);
        nodes[i].m = table(id, nodes[i].addr, 1000 + (uint64_t)i);
        nodes[i].up = true;
        nodes[i].rng = 0x1234 + (uint64_t)i;
        /* The same --peers list everywhere: n0's address (n0 skips itself). */
        assert_int_equal(km_members_add_seed_list(nodes[i].m, "10.0.0.1:7000", NULL), 0);
    }
    /* Convergence: everybody knows everybody, ALIVE. n1 and n2 only know the
     * seed n0, so they learn of each other through it. */
    double now = 0;
    int rounds = 0;
    bool converged = false;
    while (!converged && rounds < 10) {
        now += 1000;
        rounds++;
        sim_round(nodes, now);
        converged = true;
        for (int i = 0; i < N_NODES; i++) converged &= sim_all_see(nodes, i, KM_MEMBER_ALIVE);
    }
    printf("3 nodes converged in %d rounds\n", rounds);
    assert_true(converged);
    assert_true(rounds <= 3);
    for (int i = 0; i < N_NODES; i++) assert_int_equal(km_members_get_stats(nodes[i].m).seeds_pending, 0);

    /* Gossip on for a while: everybody stays ALIVE (each hears of the others
     * at least every few rounds, directly or through the third). */
    int all_alive = 0;
    for (int k = 0; k < 30; k++) {
        now += 1000;
        sim_round(nodes, now);
        bool alive = true;
        for (int i = 0; i < N_NODES; i++) {
            alive &= sim_all_see(nodes, i, KM_MEMBER_ALIVE);
            assert_false(sim_all_see(nodes, i, KM_MEMBER_DEAD));
        }
        all_alive += alive;
    }
    printf("30 more rounds: everybody ALIVE everywhere after %d of them\n", all_alive);
    assert_true(all_alive >= 25);

    /* n2 stops (no more beats, no answers). Its last heartbeat reached the
     * others by now; they see it DEAD exactly dead_ms after they last heard
     * of an increase, whichever rounds the rest gossips in between. */
    nodes[2].up = false;
    double stopped = now;
    double last_heard[N_NODES];
    for (int i = 0; i < 2; i++) last_heard[i] = get(nodes[i].m, "n2").last_heard_ms;
    int dead_round = 0;
    for (int k = 1; k <= 20; k++) {
        now += 1000;
        sim_round(nodes, now);
        for (int i = 0; i < 2; i++) {
            km_member r = get(nodes[i].m, "n2");
            if (now - r.last_heard_ms >= 10000) assert_int_equal(r.state, KM_MEMBER_DEAD);
            else if (now - r.last_heard_ms >= 3000) assert_int_equal(r.state, KM_MEMBER_SUSPECT);
            else assert_int_equal(r.state, KM_MEMBER_ALIVE);
        }
        if (!dead_round && sim_all_see(nodes, 2, KM_MEMBER_DEAD)) dead_round = k;
        /* n0 and n1 keep each other alive meanwhile (SUSPECT at worst). */
        assert_true(get(nodes[0].m, "n1").state != KM_MEMBER_DEAD);
        assert_true(get(nodes[1].m, "n0").state != KM_MEMBER_DEAD);
    }
    printf("n2 stopped at %.0f ms (last heard %.0f / %.0f), DEAD everywhere after %d rounds\n", stopped,
           last_heard[0], last_heard[1], dead_round);
    assert_true(dead_round >= 8 && dead_round <= 14);
    /* Nobody picks it any more, and it is not in their messages. */
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 50; k++) {
            km_gossip_target t;
            assert_int_equal(km_members_pick_target(nodes[i].m, &nodes[i].rng, &t), 1);
            assert_string_not_equal(t.addr, nodes[2].addr);
        }
        char *json;
        size_t len;
        assert_int_equal(km_members_encode(nodes[i].m, &json, &len, NULL), 0);
        assert_null(strstr(json, "\"n2\""));
        free(json);
    }

    /* n2 restarts: new incarnation, heartbeat from 0, seeds n0 again. */
    km_members_free(nodes[2].m);
    nodes[2].m = table("n2", nodes[2].addr, 5000);
    km_members_add_seed_list(nodes[2].m, "10.0.0.1:7000", NULL);
    nodes[2].up = true;
    rounds = 0;
    converged = false;
    while (!converged && rounds < 10) {
        now += 1000;
        rounds++;
        sim_round(nodes, now);
        converged = true;
        for (int i = 0; i < N_NODES; i++) converged &= sim_all_see(nodes, i, KM_MEMBER_ALIVE);
    }
    printf("n2 rejoined after a restart in %d rounds\n", rounds);
    assert_true(converged);
    assert_int_equal(get(nodes[0].m, "n2").incarnation, 5000);
    assert_int_equal(get(nodes[1].m, "n2").incarnation, 5000);

    for (int i = 0; i < N_NODES; i++) km_members_free(nodes[i].m);
    km_log_level = saved;
}

/* A node cut off from everybody keeps trying its seeds and rejoins. */
static void test_partition_rejoin(void **state) {
    (void)state;
    int saved = km_log_level;
    km_log_level = 0;
    km_members *a = table("a", "a:1", 1), *b = table("b", "b:1", 1);
    km_members_add_seed(b, "a:1", NULL);
    uint64_t rng = 7;
    km_gossip_target t;
    char *j;
    size_t l;
    /* b joins through its seed. */
    km_members_beat(b);
    assert_int_equal(km_members_pick_target(b, &rng, &t), 1);
    assert_string_equal(t.addr, "a:1");
    km_members_encode(b, &j, &l, NULL);
    km_members_merge(a, j, l, 0, NULL, 0, NULL);
    free(j);
    km_members_encode(a, &j, &l, NULL);
    km_members_merge(b, j, l, 0, NULL, 0, NULL);
    free(j);
    assert_int_equal(km_members_get_stats(b).seeds_pending, 0);
    /* Partition: b hears nothing for a while; a is DEAD to b, but b still tries the seed. */
    km_members_tick(b, 20000);
    assert_int_equal(get(b, "a").state, KM_MEMBER_DEAD);
    assert_int_equal(km_members_pick_target(b, &rng, &t), 1);
    assert_string_equal(t.addr, "a:1");
    assert_string_equal(t.id, "");
    /* The partition heals: a's newer record revives it at b. */
    km_members_beat(a);
    km_members_encode(a, &j, &l, NULL);
    km_member_change ch[2];
    assert_int_equal(km_members_merge(b, j, l, 21000, ch, 2, NULL), 1);
    assert_int_equal(ch[0].what, KM_CHANGE_REVIVED);
    free(j);
    assert_int_equal(get(b, "a").state, KM_MEMBER_ALIVE);
    km_members_free(a);
    km_members_free(b);
    km_log_level = saved;
}

/* ---------------------------------------------------------- threads */

typedef struct reader_arg {
    km_members *m;
    atomic_int stop;
    int snapshots;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    km_member out[64];
    while (!atomic_load(&a->stop)) {
        int n = km_members_snapshot(a->m, out, 64);
        if (n < 1 || n > 64 || !out[0].self) abort();
        for (int i = 1; i < n && i < 64; i++)
            if (out[i].id[0] == 0 || out[i].self) abort(); /* never a torn record */
        a->snapshots++;
    }
    return NULL;
}

static void test_concurrent_readers(void **state) {
    (void)state;
    km_members_params p = km_members_default_params();
    p.max_members = 64;
    km_members *m = table_p("A", "a:1", 1, &p);
    reader_arg arg = {.m = m};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, reader, &arg), 0);
    km_member r[40];
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < 40; i++) {
            char id[16];
            snprintf(id, sizeof id, "p%d", (i + round) % 60);
            r[i] = rec(id, "h:1", 1, (uint64_t)round + 1);
        }
        merge_recs(m, r, 40, round * 1000.0, NULL, 0);
        km_members_tick(m, round * 1000.0);
        km_members_update_self(m, (uint64_t)round, NULL, round);
        km_members_beat(m);
    }
    atomic_store(&arg.stop, 1);
    pthread_join(th, NULL);
    assert_true(arg.snapshots > 0);
    km_members_free(m);
}

int main(void) {
    km_log_level = 0; /* joins and deaths are logged at info level */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_addr),
        cmocka_unit_test(test_check_id),
        cmocka_unit_test(test_new_and_params),
        cmocka_unit_test(test_merge_higher_version_wins),
        cmocka_unit_test(test_catalog_change_reported),
        cmocka_unit_test(test_restart_new_incarnation),
        cmocka_unit_test(test_own_id_not_overwritten),
        cmocka_unit_test(test_failure_thresholds),
        cmocka_unit_test(test_revival),
        cmocka_unit_test(test_dead_not_gossiped),
        cmocka_unit_test(test_max_members),
        cmocka_unit_test(test_allow_list),
        cmocka_unit_test(test_model_flag),
        cmocka_unit_test(test_update_self_and_beat),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_pick_target),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_three_nodes),
        cmocka_unit_test(test_partition_rejoin),
        cmocka_unit_test(test_concurrent_readers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
