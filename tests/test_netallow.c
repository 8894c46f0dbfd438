/* test_netallow.c -- the peer allow-list: CIDR parsing (IPv4, IPv6, strict),
 * membership of gossiped addresses (numeric only, host names never), and
 * the defaults (loopback node: loopback only; other nodes: never loopback). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "netallow.h"
#include "testutil.h"

static km_netallow *list(const char *s) {
    km_netallow *a = km_netallow_new();
    km_error err = {{0}};
    if (km_netallow_add_list(a, s, &err) != 0) fail_msg("'%s': %s", s, err.msg);
    return a;
}

static void expect_bad(const char *s, const char *needle) {
    km_netallow *a = km_netallow_new();
    km_error err = {{0}};
    assert_int_equal(km_netallow_add_list(a, s, &err), -1);
    if (!strstr(err.msg, needle)) fail_msg("'%s': expected '%s', got '%s'", s, needle, err.msg);
    km_netallow_free(a);
}

static void test_check(void **state) {
    (void)state;
    km_netallow *a = list("10.1.2.0/24, 192.168.7.7,fd00:1::/32,127.0.0.1/32");
    char d[256];
    km_netallow_describe(a, d, sizeof d);
    assert_string_equal(d, "10.1.2.0/24,192.168.7.7/32,fd00:1::/32,127.0.0.1/32");
    assert_true(km_netallow_check(a, "10.1.2.0:1"));
    assert_true(km_netallow_check(a, "10.1.2.255:8080"));
    assert_false(km_netallow_check(a, "10.1.3.1:8080"));
    assert_true(km_netallow_check(a, "192.168.7.7:80"));
    assert_false(km_netallow_check(a, "192.168.7.8:80"));
    assert_true(km_netallow_check(a, "[fd00:1:ffff::1]:80"));
    assert_false(km_netallow_check(a, "[fd00:2::1]:80"));
    assert_true(km_netallow_check(a, "127.0.0.1:9"));
    assert_false(km_netallow_check(a, "127.0.0.77:9")); /* the mesh test's injected member */
    /* the IPv4-mapped spelling of an allowed address is that address */
    assert_true(km_netallow_check(a, "[::ffff:127.0.0.1]:9"));
    assert_false(km_netallow_check(a, "[::ffff:127.0.0.77]:9"));
    /* names would be resolved later, to anything: never allowed */
    assert_false(km_netallow_check(a, "localhost:9"));
    assert_false(km_netallow_check(a, "example.invalid:80"));
    /* malformed */
    assert_false(km_netallow_check(a, "10.1.2.3"));
    assert_false(km_netallow_check(a, "fd00:1::1:80"));
    assert_false(km_netallow_check(a, "[10.1.2.3]:80"));
    assert_false(km_netallow_check(a, ""));
    assert_false(km_netallow_check(a, NULL));
    km_netallow_free(a);
    assert_true(km_netallow_is_numeric("10.1.2.3:80"));
    assert_true(km_netallow_is_numeric("[fd00::1]:80"));
    assert_false(km_netallow_is_numeric("node1.lan:80"));
    assert_false(km_netallow_is_numeric("fd00::1:80"));

    /* an empty list allows nothing; /0 everything numeric of its family */
    a = km_netallow_new();
    assert_false(km_netallow_check(a, "10.1.2.3:80"));
    km_netallow_free(a);
    a = list("0.0.0.0/0");
    assert_true(km_netallow_check(a, "203.0.113.9:80"));
    assert_false(km_netallow_check(a, "[2001:db8::1]:80"));
    assert_false(km_netallow_check(a, "host.example:80"));
    km_netallow_free(a);
}

static void test_parse_errors(void **state) {
    (void)state;
    expect_bad("10.0.0.1/24", "host bits set");
    expect_bad("fd00::1/64", "host bits set");
    expect_bad("10.0.0.0/33", "prefix length must be 0-32");
    expect_bad("fd00::/129", "prefix length must be 0-128");
    expect_bad("10.0.0.0/", "prefix length");
    expect_bad("10.0.0.0/-1", "prefix length");
    expect_bad("10.0.0.0/8x", "prefix length");
    expect_bad("example.com/32", "not a numeric IPv4 or IPv6 address");
    expect_bad("10.0.0.0/8,,127.0.0.1", "empty");
    expect_bad("", "empty");
    char many[2048] = "";
    for (int i = 0; i <= KM_NETALLOW_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s10.0.%d.0/24", i ? "," : "", i);
    expect_bad(many, "more than 64 networks");
    /* duplicates are one entry */
    km_netallow *a = list("10.0.0.0/8,10.0.0.0/8");
    char d[64];
    km_netallow_describe(a, d, sizeof d);
    assert_string_equal(d, "10.0.0.0/8");
    km_netallow_free(a);
}

static void test_defaults(void **state) {
    (void)state;
    km_error err = {{0}};
    /* a loopback node: loopback, and the seeds' networks */
    km_netallow *a = km_netallow_new();
    assert_int_equal(km_netallow_add_defaults(a, "127.0.0.1", "127.0.0.1:9001, 127.0.0.1:9002", &err), 0);
    char d[256];
    km_netallow_describe(a, d, sizeof d);
    assert_string_equal(d, "127.0.0.0/8,::1/128,127.0.0.0/24");
    assert_true(km_netallow_check(a, "127.0.0.77:9"));
    assert_true(km_netallow_check(a, "[::1]:9"));
    assert_false(km_netallow_check(a, "10.0.0.1:80"));
    km_netallow_free(a);
    a = km_netallow_new();
    assert_int_equal(km_netallow_add_defaults(a, "localhost", NULL, &err), 0);
    km_netallow_describe(a, d, sizeof d);
    assert_string_equal(d, "127.0.0.0/8,::1/128");
    km_netallow_free(a);
    /* a node on every interface: their networks, never loopback (a gossiped
     * 127.0.0.1:6379 would reach this machine's own services) */
    a = km_netallow_new();
    assert_int_equal(km_netallow_add_defaults(a, "0.0.0.0", "192.0.2.10:8080,[2001:db8::5]:8080", &err), 0);
    assert_false(km_netallow_check(a, "127.0.0.1:6379"));
    assert_true(km_netallow_check(a, "192.0.2.200:8080")); /* the seed's /24 */
    assert_false(km_netallow_check(a, "192.0.3.1:8080"));
    assert_true(km_netallow_check(a, "[2001:db8::ffff]:8080")); /* the seed's /64 */
    km_netallow_free(a);
    /* an address no interface holds: its /24 */
    a = km_netallow_new();
    assert_int_equal(km_netallow_add_defaults(a, "198.51.100.7", NULL, &err), 0);
    km_netallow_describe(a, d, sizeof d);
    assert_string_equal(d, "198.51.100.0/24");
    km_netallow_free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
