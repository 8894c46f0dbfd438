/* test_mesh.c -- kvmesh nodes sharing states as peers: real node processes
 * on loopback ports. A prompt computed on node A is answered by node B from
 * A's state (fetched over the peer protocol) with the very same text; the
 * mesh secret keeps strangers out; forged, replayed and oversized peer
 * messages are refused; a peer that dies costs a recompute, not an answer;
 * a restarted peer (disk cache kept) is used again. */
#include "testutil.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "peerauth.h"

static const char *Q = "{\"cache_segments\":[\"Mesh instruction: answer briefly. \",\"Example: one. \",\"Question: two?\"],"
                       "\"max_tokens\":6,\"temperature\":0}";

static tu_node start(const char *const *args) { return tu_node_start(tu_model("tiny-f16.gguf"), args); }

static json_t *parse(const tu_resp *r) {
    json_error_t e;
    json_t *j = json_loads(r->body, 0, &e);
    if (!j) fail_msg("not JSON (%s): %.200s", e.text, r->body);
    return j;
}

/* POST Q to n; returns the text (malloc'd) and the cache source. */
static char *ask(const tu_node *n, char *source, size_t cap) {
    tu_resp r = tu_http(n->url, "POST", "/v1/completions", Q, NULL);
    if (r.status != 200) fail_msg("status %ld: %s", r.status, r.body);
    json_t *j = parse(&r);
    char *text = strdup(json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    snprintf(source, cap, "%s", json_string_value(json_object_get(json_object_get(j, "timings"), "cache_source")));
    json_decref(j);
    free(r.body);
    return text;
}

/* Wait until `of` knows a peer with at least min_keys keys in its catalog
 * copy (gossip + catalog fetch), at most 30 s. Returns the keys seen. */
static int wait_peer_catalog(const tu_node *of, int min_keys) {
    int best = -1;
    for (int i = 0; i < 300; i++) {
        tu_resp r = tu_http(of->url, "GET", "/health", NULL, NULL);
        json_t *j = parse(&r);
        size_t k;
        json_t *p;
        json_array_foreach(json_object_get(j, "peers"), k, p) {
            json_t *keys = json_object_get(p, "catalog_keys");
            if (json_is_integer(keys) && (int)json_integer_value(keys) > best) best = (int)json_integer_value(keys);
        }
        json_decref(j);
        free(r.body);
        if (best >= min_keys) return best;
        usleep(100000);
    }
    return best;
}

static double metric(const tu_node *n, const char *line_prefix) {
    tu_resp r = tu_http(n->url, "GET", "/metrics", NULL, NULL);
    char want[256]; /* at the start of a line: not the # HELP line */
    snprintf(want, sizeof want, "\n%s", line_prefix);
    const char *p = strstr(r.body, want);
    double v = p ? atof(p + strlen(want)) : -1;
    free(r.body);
    return v;
}

/* A node's id in the mesh (what a signed peer request to it is bound to). */
static void node_id(const tu_node *n, char *out, size_t cap) {
    tu_resp r = tu_http(n->url, "GET", "/health", NULL, NULL);
    json_t *j = parse(&r);
    const char *id = json_string_value(json_object_get(j, "mesh_id"));
    if (!id) fail_msg("no mesh_id in /health: %s", r.body);
    snprintf(out, cap, "%s", id ? id : "");
    json_decref(j);
    free(r.body);
}

static char *write_secret(const char *dir, const char *name, const char *secret) {
    char *path = malloc(4300);
    snprintf(path, 4300, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(secret, f);
    fclose(f);
    chmod(path, 0600);
    return path;
}

/* A's states, fetched by B: same text, source "peer". */
static void test_peer_fetch(void **state) {
    const char *a_args[] = {"--gossip-ms", "100", NULL};
    tu_node a = start(a_args);
    char seed[64];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", a.port);
    const char *b_args[] = {"--gossip-ms", "100", "--peers", seed, NULL};
    tu_node b = start(b_args);
    char src[32];
    char *text_a = ask(&a, src, sizeof src);
    assert_string_equal(src, "none");
    assert_true(wait_peer_catalog(&b, 3) >= 3); /* 3 boundaries: 2 segments + the end */
    char *text_b = ask(&b, src, sizeof src);
    assert_string_equal(src, "peer");
    assert_string_equal(text_b, text_a);
    assert_true(metric(&b, "kvmesh_fetched_bytes_total{source=\"peer\"} ") > 1000);
    assert_int_equal(metric(&a, "kvmesh_peer_states_served_total "), 1);
    /* B now has measured its link and gossips it: A sees it (what A would
     * estimate a first fetch from B with) */
    double mbit = 0;
    for (int i = 0; i < 300 && mbit <= 0; i++) {
        tu_resp r = tu_http(a.url, "GET", "/health", NULL, NULL);
        json_t *j = parse(&r);
        mbit = json_real_value(json_object_get(json_array_get(json_object_get(j, "peers"), 0), "link_mbit"));
        json_decref(j);
        free(r.body);
        if (mbit <= 0) usleep(50000);
    }
    if (mbit <= 0) fail_msg("B's link estimate never reached A");
    /* the fetched state is B's own now */
    char *again = ask(&b, src, sizeof src);
    assert_string_equal(src, "local");
    assert_string_equal(again, text_a);
    free(text_a);
    free(text_b);
    free(again);
    assert_int_equal(tu_node_stop(&b), 0);
    assert_int_equal(tu_node_stop(&a), 0);
}

/* The comparison policies: an isolated node never uses a peer's state, a
 * fetch-only node always does. */
static void test_route_modes(void **state) {
    const char *a_args[] = {"--gossip-ms", "100", NULL};
    tu_node a = start(a_args);
    char seed[64];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", a.port);
    const char *iso_args[] = {"--gossip-ms", "100", "--route", "isolated", "--peers", seed, NULL};
    const char *fetch_args[] = {"--gossip-ms", "100", "--route", "fetch", "--peers", seed, NULL};
    /* forwards cross the node's emulated link like its other peer calls */
    const char *fwd_args[] = {"--gossip-ms", "100", "--route", "forward", "--link", "rtt=400ms", "--peers", seed, NULL};
    tu_node iso = start(iso_args), fetch = start(fetch_args), fwd = start(fwd_args);
    char src[32];
    char *text_a = ask(&a, src, sizeof src);
    assert_true(wait_peer_catalog(&iso, 3) >= 3);
    assert_true(wait_peer_catalog(&fetch, 3) >= 3);
    assert_true(wait_peer_catalog(&fwd, 3) >= 3);
    double t0 = km_now_ms();
    char *t_fwd = ask(&fwd, src, sizeof src);
    double fwd_ms = km_now_ms() - t0;
    assert_string_equal(src, "local"); /* run by A, from its own state */
    assert_string_equal(t_fwd, text_a);
    if (fwd_ms < 400) fail_msg("a forward over a 400 ms link took %.0f ms", fwd_ms);
    free(t_fwd);
    assert_int_equal(tu_node_stop(&fwd), 0);
    char *t_iso = ask(&iso, src, sizeof src);
    assert_string_equal(src, "none");
    char *t_fetch = ask(&fetch, src, sizeof src);
    assert_string_equal(src, "peer");
    assert_string_equal(t_iso, text_a);
    assert_string_equal(t_fetch, text_a);
    free(text_a);
    free(t_iso);
    free(t_fetch);
    assert_int_equal(tu_node_stop(&fetch), 0);
    assert_int_equal(tu_node_stop(&iso), 0);
    assert_int_equal(tu_node_stop(&a), 0);
}

/* With a mesh secret: members share; a node with another secret is shut
 * out (its gossip is refused, it learns no peer); unsigned, forged,
 * replayed and oversized peer requests are refused. */
static void test_secret_and_bad_messages(void **state) {
    char *dir = tu_tmpdir();
    char *good = write_secret(dir, "good", "correct horse battery staple\n");
    char *bad = write_secret(dir, "bad", "another secret of enough length\n");
    const char *a_args[] = {"--gossip-ms", "100", "--mesh-secret-file", good, NULL};
    tu_node a = start(a_args);
    char seed[64];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", a.port);
    const char *b_args[] = {"--gossip-ms", "100", "--mesh-secret-file", good, "--peers", seed, NULL};
    tu_node b = start(b_args);
    const char *c_args[] = {"--gossip-ms", "100", "--mesh-secret-file", bad, "--peers", seed, NULL};
    tu_node c = start(c_args);
    char src[32];
    char *text_a = ask(&a, src, sizeof src);
    assert_true(wait_peer_catalog(&b, 3) >= 3);
    char *text_b = ask(&b, src, sizeof src);
    assert_string_equal(src, "peer");
    assert_string_equal(text_b, text_a);
    /* the stranger: refused at A, knows nobody */
    assert_true(metric(&a, "kvmesh_peer_requests_denied_total ") >= 1);
    assert_int_equal(metric(&c, "kvmesh_peers{state=\"alive\"} "), 0);
    tu_resp r = tu_http(a.url, "GET", "/health", NULL, NULL);
    json_t *hj = parse(&r);
    assert_int_equal(json_array_size(json_object_get(hj, "peers")), 1); /* B only */
    json_decref(hj);
    free(r.body);

    /* unsigned */
    r = tu_http(a.url, "GET", "/peer/v1/catalog", NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "missing"));
    free(r.body);
    /* signed with the right secret: accepted once, then a replay */
    km_error err;
    km_peerauth *pa = km_peerauth_new((const uint8_t *)"correct horse battery staple", 28, 0, &err);
    assert_non_null(pa);
    char hv[KM_PEERAUTH_HEADER_MAX], hdr[KM_PEERAUTH_HEADER_MAX + 32], a_id[80];
    node_id(&a, a_id, sizeof a_id);
    km_peerauth_sign_request(pa, a_id, "GET", "/peer/v1/catalog", NULL, 0, hv, sizeof hv);
    snprintf(hdr, sizeof hdr, "%s: %s", KM_PEERAUTH_HEADER, hv);
    const char *h[] = {hdr, NULL};
    r = tu_http(a.url, "GET", "/peer/v1/catalog", NULL, h);
    assert_int_equal(r.status, 200);
    assert_true(r.len >= 44 && memcmp(r.body, "KVMC", 4) == 0);
    free(r.body);
    r = tu_http(a.url, "GET", "/peer/v1/catalog", NULL, h);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "replayed"));
    free(r.body);
    /* a signature for another path (forged use) */
    km_peerauth_sign_request(pa, a_id, "GET", "/peer/v1/state/00000000000000000000000000000000", NULL, 0, hv, sizeof hv);
    snprintf(hdr, sizeof hdr, "%s: %s", KM_PEERAUTH_HEADER, hv);
    r = tu_http(a.url, "GET", "/peer/v1/catalog", NULL, h);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "bad MAC"));
    free(r.body);
    /* authentic but malformed gossip: 400, table untouched, A still serves */
    const char *junk = "{\"v\":1,\"from\":\"x\",\"members\":[{\"id\":\"x\"}]}";
    km_peerauth_sign_request(pa, a_id, "POST", "/peer/v1/gossip", (const uint8_t *)junk, strlen(junk), hv, sizeof hv);
    snprintf(hdr, sizeof hdr, "%s: %s", KM_PEERAUTH_HEADER, hv);
    r = tu_http(a.url, "POST", "/peer/v1/gossip", junk, h);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "gossip"));
    free(r.body);
    /* oversized: over --max-body, refused before anything reads it */
    size_t big = (size_t)5 << 20;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[big] = 0;
    r = tu_http(a.url, "POST", "/peer/v1/gossip", huge, NULL);
    assert_int_equal(r.status, 413);
    free(r.body);
    free(huge);
    /* a request claiming to be forwarded must carry the mesh's signature */
    const char *hop[] = {"X-Kvmesh-Hops: 1", NULL};
    r = tu_http(a.url, "POST", "/v1/completions", Q, hop);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "forwarded request"));
    free(r.body);
    km_peerauth_free(pa);
    r = tu_http(a.url, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);

    free(text_a);
    free(text_b);
    assert_int_equal(tu_node_stop(&c), 0);
    assert_int_equal(tu_node_stop(&b), 0);
    assert_int_equal(tu_node_stop(&a), 0);
    free(good);
    free(bad);
    tu_rmtree(dir);
    free(dir);
}

/* A peer killed: B's fetch fails and B recomputes (same text); A restarted
 * with its disk cache: it rejoins, announces its catalog, and is used again. */
static void test_peer_dies_and_returns(void **state) {
    char *cache = tu_tmpdir();
    const char *a_args[] = {"--gossip-ms", "100", "--cache-dir", cache, NULL};
    tu_node a = start(a_args);
    char seed[64];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", a.port);
    const char *b_args[] = {"--gossip-ms", "100", "--peers", seed, NULL};
    tu_node b = start(b_args);
    char src[32];
    char *text_a = ask(&a, src, sizeof src);
    assert_true(wait_peer_catalog(&b, 3) >= 3);
    kill(a.pid, SIGKILL); /* gone without a word; B still holds its catalog */
    waitpid(a.pid, NULL, 0);
    a.pid = 0;
    char *text_b = ask(&b, src, sizeof src);
    assert_string_equal(src, "none"); /* the fetch failed: recomputed */
    assert_string_equal(text_b, text_a);
    free(text_b);
    tu_resp r = tu_http(b.url, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);

    /* B's own states now answer B; use a prompt B never saw for the return */
    char bseed[64];
    snprintf(bseed, sizeof bseed, "127.0.0.1:%d", b.port);
    const char *a2_args[] = {"--gossip-ms", "100", "--cache-dir", cache, "--peers", bseed, NULL};
    tu_node a2 = start(a2_args);
    const char *q2 = "{\"cache_segments\":[\"Only A knows this one. \",\"Really.\"],\"max_tokens\":3,\"temperature\":0}";
    tu_resp ra = tu_http(a2.url, "POST", "/v1/completions", q2, NULL);
    assert_int_equal(ra.status, 200);
    /* A's catalog now holds the old prompt's 3 keys (from disk) and the new 2 */
    assert_true(wait_peer_catalog(&b, 5) >= 5);
    tu_resp rb = tu_http(b.url, "POST", "/v1/completions", q2, NULL);
    json_t *ja = parse(&ra), *jb = parse(&rb);
    /* B never saw q2: whatever it reuses came from A -- fetched ("peer"), or
     * the planner forwarded the request to A, which reused its own ("local") */
    json_t *tb = json_object_get(jb, "timings");
    const char *source = json_string_value(json_object_get(tb, "cache_source"));
    if (strcmp(source, "peer") != 0) assert_string_equal(source, "local");
    assert_int_equal(json_integer_value(json_object_get(tb, "cached_n")),
                     json_integer_value(json_object_get(json_object_get(ja, "timings"), "prompt_n")) - 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(jb, "choices"), 0), "text")),
                        json_string_value(json_object_get(json_array_get(json_object_get(ja, "choices"), 0), "text")));
    json_decref(ja);
    json_decref(jb);
    free(ra.body);
    free(rb.body);
    free(text_a);
    assert_int_equal(tu_node_stop(&b), 0);
    assert_int_equal(tu_node_stop(&a2), 0);
    tu_node_stop(&a); /* only its temp dir is left */
    tu_rmtree(cache);
    free(cache);
}

/* A slow node (time dilation x30) forwards a prompt whose long prefix a fast
 * peer holds: the fast peer answers it (text as if asked directly), the
 * planner counted the forward. With the peer killed, the same choice falls
 * back to running here. A request claiming to be forwarded is only taken
 * with the mesh's signature when there is a mesh secret. */
static void test_forward_to_holder(void **state) {
    const char *a_args[] = {"--gossip-ms", "100", NULL};
    tu_node a = start(a_args);
    char seed[64];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", a.port);
    const char *b_args[] = {"--gossip-ms", "100", "--slowdown", "30", "--peers", seed, NULL};
    tu_node b = start(b_args);
    char words[2000] = "";
    for (int i = 0; i < 150; i++) snprintf(words + strlen(words), sizeof words - strlen(words), "w%d ", i);
    char q_rate[2400], q_long[2400], q_long2[2400];
    snprintf(q_rate, sizeof q_rate, "{\"cache_segments\":[\"Rate probe %s\",\"x\"],\"max_tokens\":1,\"temperature\":0}", words);
    snprintf(q_long, sizeof q_long, "{\"cache_segments\":[\"Shared %s\",\"Q1?\"],\"max_tokens\":3,\"temperature\":0}", words);
    snprintf(q_long2, sizeof q_long2, "{\"cache_segments\":[\"Shared %s\",\"Q2?\"],\"max_tokens\":3,\"temperature\":0}", words);
    /* both learn their prefill rates; A computes the shared prefix */
    tu_resp r = tu_http(b.url, "POST", "/v1/completions", q_rate, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    r = tu_http(a.url, "POST", "/v1/completions", q_rate, NULL);
    free(r.body);
    r = tu_http(a.url, "POST", "/v1/completions", q_long, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_true(wait_peer_catalog(&b, 3) >= 3); /* rate probe: 1 boundary; shared: 2 */
    for (int i = 0; i < 50 && metric(&b, "kvmesh_peers{state=\"alive\"} ") < 1; i++) usleep(100000);

    tu_resp viab = tu_http(b.url, "POST", "/v1/completions", q_long2, NULL);
    assert_int_equal(viab.status, 200);
    assert_int_equal(metric(&b, "kvmesh_forwards_total{result=\"ok\"} "), 1);
    assert_int_equal(metric(&b, "kvmesh_planner_decisions_total{path=\"forward\"} "), 1);
    tu_resp direct = tu_http(a.url, "POST", "/v1/completions", q_long2, NULL);
    json_t *jb = parse(&viab), *ja = parse(&direct);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(jb, "choices"), 0), "text")),
                        json_string_value(json_object_get(json_array_get(json_object_get(ja, "choices"), 0), "text")));
    /* A reused the shared prefix for the forwarded request */
    assert_true(json_integer_value(json_object_get(json_object_get(jb, "timings"), "cached_n")) > 150);
    json_decref(ja);
    json_decref(jb);
    free(viab.body);
    free(direct.body);

    /* the holder dies: the forward fails and B runs the request itself */
    kill(a.pid, SIGKILL);
    waitpid(a.pid, NULL, 0);
    a.pid = 0;
    char q_long3[2400];
    snprintf(q_long3, sizeof q_long3, "{\"cache_segments\":[\"Shared %s\",\"Q3?\"],\"max_tokens\":2,\"temperature\":0}", words);
    r = tu_http(b.url, "POST", "/v1/completions", q_long3, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(metric(&b, "kvmesh_forwards_total{result=\"failed\"} "), 1);
    free(r.body);
    /* a request that claims to be forwarded, without a mesh secret: taken
     * (loopback-only mesh) but never forwarded again */
    const char *hop[] = {"X-Kvmesh-Hops: 1", NULL};
    r = tu_http(b.url, "POST", "/v1/completions", q_long2, hop);
    assert_int_equal(r.status, 200);
    assert_int_equal(metric(&b, "kvmesh_forwards_total{result=\"failed\"} "), 1);
    free(r.body);

    assert_int_equal(tu_node_stop(&b), 0);
    tu_node_stop(&a);
}

/* ---- a peer that vanishes mid-transfer: a relay in front of node A that
 * cuts every state download after CUT_AFTER bytes of the answer ---- */

#define CUT_AFTER 3000

typedef struct relay {
    int listen_fd, port, target_port;
    volatile int cuts;
    pthread_t thread;
} relay;

typedef struct relay_conn {
    relay *r;
    int client;
} relay_conn;

static void *relay_conn_main(void *arg) {
    relay_conn *rc = arg;
    int up = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rc->r->target_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(up, (struct sockaddr *)&a, sizeof a) != 0) goto out;
    char buf[65536];
    ssize_t n = recv(rc->client, buf, sizeof buf, 0); /* the request (small: headers + gossip body) */
    if (n <= 0) goto out;
    bool state_get = n > 20 && memcmp(buf, "GET /peer/v1/state/", 19) == 0;
    if (send(up, buf, (size_t)n, 0) != n) goto out;
    /* a POST body may follow the headers in later segments: pass it on */
    size_t sent_back = 0;
    for (;;) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(rc->client, &fds);
        FD_SET(up, &fds);
        struct timeval tv = {5, 0};
        if (select((up > rc->client ? up : rc->client) + 1, &fds, NULL, NULL, &tv) <= 0) break;
        if (FD_ISSET(rc->client, &fds)) {
            n = recv(rc->client, buf, sizeof buf, 0);
            if (n <= 0 || send(up, buf, (size_t)n, 0) != n) break;
        }
        if (FD_ISSET(up, &fds)) {
            n = recv(up, buf, sizeof buf, 0);
            if (n <= 0) break;
            if (state_get && sent_back + (size_t)n > CUT_AFTER) { /* the peer "dies" here */
                send(rc->client, buf, CUT_AFTER - sent_back, 0);
                rc->r->cuts++;
                break;
            }
            if (send(rc->client, buf, (size_t)n, 0) != n) break;
            sent_back += (size_t)n;
        }
    }
out:
    close(up);
    close(rc->client);
    free(rc);
    return NULL;
}

static void *relay_main(void *arg) {
    relay *r = arg;
    for (;;) {
        int c = accept(r->listen_fd, NULL, NULL);
        if (c < 0) return NULL;
        relay_conn *rc = malloc(sizeof *rc);
        rc->r = r;
        rc->client = c;
        pthread_t t;
        pthread_create(&t, NULL, relay_conn_main, rc);
        pthread_detach(t);
    }
}

static void relay_start(relay *r, int target_port) {
    memset(r, 0, sizeof *r);
    r->target_port = target_port;
    r->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(r->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(r->listen_fd, 16), 0);
    socklen_t al = sizeof a;
    getsockname(r->listen_fd, (struct sockaddr *)&a, &al);
    r->port = ntohs(a.sin_port);
    pthread_create(&r->thread, NULL, relay_main, r);
}

/* A's every state download breaks off after 3000 bytes (its states are
 * bigger): B's fetch fails, B recomputes -- same text -- and keeps serving. */
static void test_peer_vanishes_mid_transfer(void **state) {
    relay r;
    /* A advertises the relay's address: every peer call to A goes through it */
    int a_port = tu_free_port();
    relay_start(&r, a_port);
    char listen_a[64], adv[64];
    snprintf(listen_a, sizeof listen_a, "127.0.0.1:%d", a_port);
    snprintf(adv, sizeof adv, "127.0.0.1:%d", r.port);
    const char *a_args[] = {"--gossip-ms", "100", "--listen", listen_a, "--advertise", adv, NULL};
    tu_node a = start(a_args);
    const char *b_args[] = {"--gossip-ms", "100", "--peers", adv, NULL};
    tu_node b = start(b_args);
    char src[32];
    char *text_a = ask(&a, src, sizeof src);
    assert_true(wait_peer_catalog(&b, 3) >= 3);
    char *text_b = ask(&b, src, sizeof src);
    assert_true(r.cuts >= 1);             /* a download was cut */
    assert_string_equal(src, "none");     /* ... so B computed it */
    assert_string_equal(text_b, text_a);
    tu_resp h = tu_http(b.url, "GET", "/health", NULL, NULL);
    assert_int_equal(h.status, 200);
    free(h.body);
    free(text_a);
    free(text_b);
    assert_int_equal(tu_node_stop(&b), 0);
    assert_int_equal(tu_node_stop(&a), 0);
    shutdown(r.listen_fd, SHUT_RDWR);
    close(r.listen_fd);
    pthread_join(r.thread, NULL);
}

int main(void) {
    if (access(tu_model("tiny-f16.gguf"), R_OK) != 0) {
        printf("SKIP: test models missing\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peer_fetch),
        cmocka_unit_test(test_route_modes),
        cmocka_unit_test(test_secret_and_bad_messages),
        cmocka_unit_test(test_peer_dies_and_returns),
        cmocka_unit_test(test_peer_vanishes_mid_transfer),
        cmocka_unit_test(test_forward_to_holder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
