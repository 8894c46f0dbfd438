/* test_mesh.c -- kvmesh nodes sharing states as peers: real node processes
 * on loopback ports. A prompt computed on node A is answered by node B from
 * A's state (fetched over the peer protocol) with the very same text; the
 * mesh secret keeps strangers out; forged, replayed and oversized peer
 * messages are refused; a peer that dies costs a recompute, not an answer;
 * a restarted peer (disk cache kept) is used again. */
#include "testutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blob.h"
#include "members.h"
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

/* ---- a relay in front of node A (A advertises the relay's address, so
 * every peer call to A goes through it): it records what is sent to A, and
 * can play a peer that vanishes mid-transfer (state downloads cut after
 * CUT_AFTER bytes) or a man in the middle of forwarded requests ---- */

#define CUT_AFTER 3000
#define RELAY_MAX_CONNS 512
#define RELAY_RECORD_MAX 65536

/* What a relay may change in an answer to a POST /v1/ request: the byte
 * right after the first of these, once. */
#define TAMPER_HEAD "X-Kvmesh-Auth-Respons" /* the signature header: renamed, so missing */
#define TAMPER_TEXT "\"text\":\""          /* the first byte of the text */
#define TAMPER_FINISH "\"finish_reason\":\"" /* the last event of a stream: after the first frames */

typedef struct relay {
    int listen_fd, port, target_port;
    bool cut_states;   /* state downloads break off after CUT_AFTER bytes */
    const char *volatile tamper; /* TAMPER_*: change the next answer to a POST /v1/ request (NULL: none) */
    volatile int cuts, tampered;
    pthread_t thread;
    pthread_mutex_t lock; /* guards the rest */
    int active;           /* connections being relayed */
    char *sent[RELAY_MAX_CONNS]; /* per connection, what was sent to A (first RELAY_RECORD_MAX bytes) */
    size_t sent_len[RELAY_MAX_CONNS];
    int n_conns;
} relay;

typedef struct relay_conn {
    relay *r;
    int client, slot;
} relay_conn;

static void record(relay_conn *rc, const char *buf, size_t n) {
    relay *r = rc->r;
    pthread_mutex_lock(&r->lock);
    if (rc->slot >= 0 && r->sent_len[rc->slot] + n <= RELAY_RECORD_MAX) {
        memcpy(r->sent[rc->slot] + r->sent_len[rc->slot], buf, n);
        r->sent_len[rc->slot] += n;
    }
    pthread_mutex_unlock(&r->lock);
}

/* Change the answer in buf (n bytes) as r->tamper says, once. */
static void tamper(relay *r, char *buf, size_t n) {
    const char *needle = r->tamper;
    size_t nl = strlen(needle);
    for (size_t i = 0; i + nl < n; i++) {
        if (memcmp(buf + i, needle, nl) != 0) continue;
        buf[i + nl] = buf[i + nl] == '0' ? '1' : '0';
        r->tamper = NULL;
        r->tampered++;
        return;
    }
}

static void *relay_conn_main(void *arg) {
    relay_conn *rc = arg;
    int up = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rc->r->target_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(up, (struct sockaddr *)&a, sizeof a) != 0) goto out;
    char buf[65536];
    ssize_t n = recv(rc->client, buf, sizeof buf, 0); /* the request (small: headers + gossip body) */
    if (n <= 0) goto out;
    record(rc, buf, (size_t)n);
    bool state_get = rc->r->cut_states && n > 20 && memcmp(buf, "GET /peer/v1/state/", 19) == 0;
    bool v1_post = n > 9 && memcmp(buf, "POST /v1/", 9) == 0;
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
            record(rc, buf, (size_t)n);
        }
        if (FD_ISSET(up, &fds)) {
            n = recv(up, buf, sizeof buf, 0);
            if (n <= 0) break;
            if (state_get && sent_back + (size_t)n > CUT_AFTER) { /* the peer "dies" here */
                send(rc->client, buf, CUT_AFTER - sent_back, 0);
                rc->r->cuts++;
                break;
            }
            if (v1_post && rc->r->tamper) tamper(rc->r, buf, (size_t)n);
            if (send(rc->client, buf, (size_t)n, 0) != n) break;
            sent_back += (size_t)n;
        }
    }
out:
    close(up);
    close(rc->client);
    pthread_mutex_lock(&rc->r->lock);
    rc->r->active--;
    pthread_mutex_unlock(&rc->r->lock);
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
        pthread_mutex_lock(&r->lock);
        rc->slot = r->n_conns < RELAY_MAX_CONNS ? r->n_conns++ : -1;
        if (rc->slot >= 0) r->sent[rc->slot] = malloc(RELAY_RECORD_MAX);
        r->active++;
        pthread_mutex_unlock(&r->lock);
        pthread_t t;
        pthread_create(&t, NULL, relay_conn_main, rc);
        pthread_detach(t);
    }
}

static void relay_start(relay *r, int target_port) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
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

/* Stop accepting, wait (<= 10 s) for the connections to end, free. */
static void relay_stop(relay *r) {
    shutdown(r->listen_fd, SHUT_RDWR);
    close(r->listen_fd);
    pthread_join(r->thread, NULL);
    for (int i = 0; i < 100; i++) {
        pthread_mutex_lock(&r->lock);
        int active = r->active;
        pthread_mutex_unlock(&r->lock);
        if (!active) break;
        usleep(100000);
    }
    for (int i = 0; i < r->n_conns; i++) free(r->sent[i]);
    pthread_mutex_destroy(&r->lock);
}

/* The first request A received through the relay that starts with prefix
 * (copy, NUL-terminated, malloc'd; NULL if none). */
static char *relay_find(relay *r, const char *prefix) {
    char *found = NULL;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->n_conns && !found; i++) {
        if (r->sent_len[i] < strlen(prefix) || memcmp(r->sent[i], prefix, strlen(prefix)) != 0) continue;
        found = malloc(r->sent_len[i] + 1);
        memcpy(found, r->sent[i], r->sent_len[i]);
        found[r->sent_len[i]] = 0;
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

/* A's every state download breaks off after 3000 bytes (its states are
 * bigger): B's fetch fails, B recomputes -- same text -- and keeps serving. */
static void test_peer_vanishes_mid_transfer(void **state) {
    relay r;
    /* A advertises the relay's address: every peer call to A goes through it */
    int a_port = tu_free_port();
    relay_start(&r, a_port);
    r.cut_states = true;
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
    relay_stop(&r);
}

/* ---- trust boundaries: an API key is not bypassed through the mesh ---- */

/* POST body to n with a bearer key; the answer's text (malloc'd; SSE: the
 * events' texts joined). Fails the test unless 200. */
static char *ask_key(const tu_node *n, const char *body, const char *key) {
    char auth[128];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
    const char *h[] = {auth, NULL};
    tu_resp r = tu_http(n->url, "POST", "/v1/completions", body, h);
    if (r.status != 200) fail_msg("status %ld: %s", r.status, r.body);
    size_t cap = r.len + 1, o = 0;
    char *text = calloc(1, cap);
    if (strncmp(r.body, "data: ", 6) != 0) { /* one JSON answer */
        json_t *j = parse(&r);
        snprintf(text, cap, "%s",
                 json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
        json_decref(j);
    } else { /* events */
        for (char *line = strtok(r.body, "\n"); line; line = strtok(NULL, "\n")) {
            if (strncmp(line, "data: {", 7) != 0) continue;
            json_t *j = json_loads(line + 6, 0, NULL);
            if (!j) fail_msg("bad event: %s", line);
            if (json_object_get(j, "error")) fail_msg("error event: %s", line);
            const char *t = json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
            o += (size_t)snprintf(text + o, cap - o, "%s", t ? t : "");
            json_decref(j);
        }
    }
    free(r.body);
    return text;
}

/* The metric once it reaches want (a relayed answer is counted when the
 * server frees it, just after the client has read it all); at most 5 s. */
static double wait_metric(const tu_node *n, const char *line_prefix, double want) {
    double v = metric(n, line_prefix);
    for (int i = 0; i < 50 && v != want; i++) {
        usleep(100000);
        v = metric(n, line_prefix);
    }
    return v;
}

static size_t collect(char *p, size_t sz, size_t nm, void *ud) {
    tu_resp *r = ud;
    size_t n = sz * nm;
    r->body = realloc(r->body, r->len + n + 1);
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = 0;
    return n;
}

/* POST body to n with extra headers; whatever arrived, even if the transfer
 * broke off (*broke: it did). */
static tu_resp post_lenient(const tu_node *n, const char *body, const char *const *headers, bool *broke) {
    tu_resp r = {0};
    r.body = calloc(1, 1);
    char url[128];
    snprintf(url, sizeof url, "%s/v1/completions", n->url);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    for (int i = 0; headers && headers[i]; i++) h = curl_slist_append(h, headers[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    *broke = curl_easy_perform(c) != CURLE_OK;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return r;
}

/* Run a shell command; its exit code (-1: it did not exit), output in out. */
static int run_cmd(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Send raw request bytes to 127.0.0.1:port; the answer's status (-1: none). */
static int raw_status(int port, const char *req, size_t len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int status = -1;
    char buf[512];
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && send(fd, req, len, 0) == (ssize_t)len) {
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n > 12) {
            buf[n] = 0;
            sscanf(buf, "HTTP/1.%*d %d", &status);
        }
    }
    close(fd);
    return status;
}

static bool has_header(const char *req, const char *name) {
    size_t nl = strlen(name);
    for (const char *p = strstr(req, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, nl) == 0 && p[2 + nl] == ':') return true;
    return false;
}

/* Two nodes with an API key and a mesh secret; B forwards to A through a
 * relay that records what A receives and can tamper with A's answers.
 * - A forwarded request carries no client credential (before: B passed the
 *   client's Authorization header on to the peer); A takes it on the mesh
 *   signature alone, and the answer (whole or streamed) is A's, same text.
 * - A captured peer request (B's catalog fetch from A) replayed at B within
 *   the window is refused: it was signed for A (before: accepted once).
 * - An answer whose signature header is gone, or whose text was changed on
 *   the way, is refused before a byte reaches the client: B runs the request
 *   itself and answers the same text (before: the altered text was relayed). */
static void test_forward_authenticated(void **state) {
    char *dir = tu_tmpdir();
    char *secret = write_secret(dir, "secret", "correct horse battery staple\n");
    char *key = write_secret(dir, "key", "sekret-key-123\n");
    relay r;
    int a_port = tu_free_port();
    relay_start(&r, a_port);
    char listen_a[64], adv[64];
    snprintf(listen_a, sizeof listen_a, "127.0.0.1:%d", a_port);
    snprintf(adv, sizeof adv, "127.0.0.1:%d", r.port);
    const char *a_args[] = {"--gossip-ms", "100", "--listen", listen_a, "--advertise", adv, "--api-key-file", key,
                            "--mesh-secret-file", secret, NULL};
    tu_node a = start(a_args);
    const char *b_args[] = {"--gossip-ms", "100", "--peers", adv, "--route", "forward", "--api-key-file", key,
                            "--mesh-secret-file", secret, NULL};
    tu_node b = start(b_args);
    const char *qs[3] = {
        "{\"cache_segments\":[\"First instruction. \",\"Example one. \",\"Q?\"],\"max_tokens\":5,\"temperature\":0}",
        "{\"cache_segments\":[\"Second instruction. \",\"Example two. \",\"Q?\"],\"max_tokens\":5,\"temperature\":0}",
        "{\"cache_segments\":[\"Third instruction. \",\"Example three. \",\"Q?\"],\"max_tokens\":5,\"temperature\":0}"};
    char *want[3];
    for (int i = 0; i < 3; i++) want[i] = ask_key(&a, qs[i], "sekret-key-123");
    assert_true(wait_peer_catalog(&b, 9) >= 9);

    /* forwarded whole: A's answer, and nothing of the client's went to A */
    char *got = ask_key(&b, qs[0], "sekret-key-123");
    assert_string_equal(got, want[0]);
    free(got);
    assert_int_equal(wait_metric(&b, "kvmesh_forwards_total{result=\"ok\"} ", 1), 1);
    char *fwd = relay_find(&r, "POST /v1/completions ");
    assert_non_null(fwd);
    assert_false(has_header(fwd, "Authorization"));
    assert_true(has_header(fwd, "X-Kvmesh-Auth"));
    assert_true(has_header(fwd, "X-Kvmesh-Hops"));
    free(fwd);
    /* forwarded streamed: framed by A, checked frame by frame by B */
    char stream_q[512];
    snprintf(stream_q, sizeof stream_q, "%.*s,\"stream\":true}", (int)strlen(qs[0]) - 1, qs[0]);
    got = ask_key(&b, stream_q, "sekret-key-123");
    assert_string_equal(got, want[0]);
    free(got);
    assert_int_equal(wait_metric(&b, "kvmesh_forwards_total{result=\"ok\"} ", 2), 2);

    /* B's catalog fetch from A, signed for A, replayed at B */
    char *cat = relay_find(&r, "GET /peer/v1/catalog ");
    assert_non_null(cat);
    assert_int_equal(raw_status(b.port, cat, strlen(cat)), 401);
    free(cat);
    assert_true(metric(&b, "kvmesh_peer_requests_denied_total ") >= 1);

    /* A's answers altered on the way: refused, run at B, the same text */
    r.tamper = TAMPER_HEAD;
    got = ask_key(&b, qs[1], "sekret-key-123");
    assert_int_equal(r.tampered, 1);
    assert_string_equal(got, want[1]);
    free(got);
    assert_int_equal(wait_metric(&b, "kvmesh_forwards_total{result=\"failed\"} ", 1), 1);
    r.tamper = TAMPER_TEXT;
    got = ask_key(&b, qs[2], "sekret-key-123");
    assert_int_equal(r.tampered, 2);
    assert_string_equal(got, want[2]);
    free(got);
    assert_int_equal(wait_metric(&b, "kvmesh_forwards_total{result=\"failed\"} ", 2), 2);
    assert_int_equal(wait_metric(&b, "kvmesh_forwards_total{result=\"ok\"} ", 2), 2);
    /* ... altered in its last event, after the first frames passed: the
     * altered bytes never reach the client -- its stream breaks off (or, if
     * the bad frame was there before B answered, B runs it itself) */
    r.tamper = TAMPER_FINISH;
    bool broke;
    const char *bearer[] = {"Authorization: Bearer sekret-key-123", NULL};
    tu_resp late = post_lenient(&b, stream_q, bearer, &broke);
    assert_int_equal(r.tampered, 3);
    assert_null(strstr(late.body, TAMPER_FINISH "0"));
    assert_int_equal(wait_metric(&b, "kvmesh_forwards_total{result=\"failed\"} ", 3), 3);
    if (broke || !strstr(late.body, "[DONE]"))
        assert_non_null(strstr(late.body, "\"text\":")); /* the frames before the bad one */
    else
        assert_non_null(strstr(late.body, TAMPER_FINISH)); /* run here, whole */
    print_message("late tamper: %s\n", broke || !strstr(late.body, "[DONE]") ? "stream broken off" : "ran here");
    free(late.body);

    /* the key is still needed at B */
    tu_resp nokey = tu_http(b.url, "POST", "/v1/completions", qs[0], NULL);
    assert_int_equal(nokey.status, 401);
    free(nokey.body);
    for (int i = 0; i < 3; i++) free(want[i]);
    assert_int_equal(tu_node_stop(&b), 0);
    assert_int_equal(tu_node_stop(&a), 0);
    relay_stop(&r);
    free(secret);
    free(key);
    tu_rmtree(dir);
    free(dir);
}

/* An API key without a mesh secret: no mesh (before, /peer/ was open on such
 * a node: cached states, catalog and gossip for any local process). The
 * peer endpoints say why with 403, /health says so, a request claiming to
 * be forwarded still needs the key; asking for a mesh (--peers, --advertise)
 * without a secret is refused at start. */
static void test_api_key_without_secret(void **state) {
    char *dir = tu_tmpdir();
    char *key = write_secret(dir, "key", "sekret-key-123\n");
    const char *args[] = {"--api-key-file", key, NULL};
    tu_node n = start(args);
    const char *paths[][2] = {{"GET", "/peer/v1/catalog"},
                              {"GET", "/peer/v1/state/00000000000000000000000000000000"},
                              {"POST", "/peer/v1/gossip"}};
    for (int i = 0; i < 3; i++) {
        tu_resp r = tu_http(n.url, paths[i][0], paths[i][1], strcmp(paths[i][0], "POST") == 0 ? "{}" : NULL, NULL);
        assert_int_equal(r.status, 403);
        assert_non_null(strstr(r.body, "mesh disabled: an API key without a mesh secret"));
        assert_non_null(strstr(r.body, "--mesh-secret-file"));
        free(r.body);
    }
    tu_resp r = tu_http(n.url, "GET", "/health", NULL, NULL);
    json_t *j = parse(&r);
    assert_string_equal(json_string_value(json_object_get(j, "mesh")), "disabled");
    assert_null(json_object_get(j, "peers"));
    json_decref(j);
    free(r.body);
    const char *hop[] = {"X-Kvmesh-Hops: 1", NULL};
    r = tu_http(n.url, "POST", "/v1/completions", Q, hop);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "API key"));
    free(r.body);
    assert_int_equal(tu_node_stop(&n), 0);

    const char *asks[] = {"--peers 127.0.0.1:9", "--advertise 127.0.0.1:9"};
    for (int i = 0; i < 2; i++) {
        char cmd[8800];
        snprintf(cmd, sizeof cmd, "%s node --model %s --api-key-file %s %s 2>&1", tu_kvmesh_bin(),
                 tu_model("tiny-f16.gguf"), key, asks[i]);
        char out[1024];
        assert_int_equal(run_cmd(cmd, out, sizeof out), 2);
        assert_non_null(strstr(out, "--api-key-file with --peers/--advertise needs --mesh-secret-file"));
    }
    free(key);
    tu_rmtree(dir);
    free(dir);
}

/* --peer-allow: a signed gossip message (a mesh member may send one) naming
 * a member outside the list: that record is ignored and counted, the rest
 * merged (before, any address was taken and contacted). */
static void test_peer_allow(void **state) {
    char *dir = tu_tmpdir();
    char *secret = write_secret(dir, "secret", "correct horse battery staple\n");
    const char *args[] = {"--gossip-ms", "100", "--mesh-secret-file", secret, "--peer-allow", "127.0.0.1/32", NULL};
    tu_node a = start(args);
    km_member recs[2];
    memset(recs, 0, sizeof recs);
    snprintf(recs[0].id, sizeof recs[0].id, "ok1");
    snprintf(recs[0].addr, sizeof recs[0].addr, "127.0.0.1:9");
    snprintf(recs[1].id, sizeof recs[1].id, "inj");
    snprintf(recs[1].addr, sizeof recs[1].addr, "127.0.0.77:9");
    for (int i = 0; i < 2; i++) recs[i].incarnation = recs[i].heartbeat = 1;
    char *msg;
    size_t len;
    km_error err;
    assert_int_equal(km_gossip_encode("ok1", recs, 2, &msg, &len, &err), 0);
    km_peerauth *pa = km_peerauth_new((const uint8_t *)"correct horse battery staple", 28, 0, &err);
    char a_id[80], hv[KM_PEERAUTH_HEADER_MAX], hdr[KM_PEERAUTH_HEADER_MAX + 32];
    node_id(&a, a_id, sizeof a_id);
    km_peerauth_sign_request(pa, a_id, "POST", "/peer/v1/gossip", (const uint8_t *)msg, len, hv, sizeof hv);
    snprintf(hdr, sizeof hdr, "%s: %s", KM_PEERAUTH_HEADER, hv);
    const char *h[] = {hdr, NULL};
    tu_resp r = tu_http(a.url, "POST", "/peer/v1/gossip", msg, h);
    assert_int_equal(r.status, 200);
    free(r.body);
    assert_int_equal(metric(&a, "kvmesh_gossip_rejected_total{reason=\"peer_allow\"} "), 1);
    r = tu_http(a.url, "GET", "/health", NULL, NULL);
    json_t *j = parse(&r);
    json_t *peers = json_object_get(j, "peers");
    assert_int_equal(json_array_size(peers), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(peers, 0), "id")), "ok1");
    assert_null(strstr(r.body, "127.0.0.77"));
    json_decref(j);
    free(r.body);
    km_peerauth_free(pa);
    free(msg);
    assert_int_equal(tu_node_stop(&a), 0);

    /* a bad list is a usage error */
    char cmd[8800];
    snprintf(cmd, sizeof cmd, "%s node --model %s --peer-allow 127.0.0.1/24 2>&1", tu_kvmesh_bin(),
             tu_model("tiny-f16.gguf"));
    char out[1024];
    assert_int_equal(run_cmd(cmd, out, sizeof out), 2);
    assert_non_null(strstr(out, "--peer-allow: peer allow-list: '127.0.0.1/24' has host bits set"));
    free(secret);
    tu_rmtree(dir);
    free(dir);
}

/* With requests bound to their target, gossip to a member that restarted at
 * the same address under a new id is refused as meant for another node: the
 * gossiper then asks it as a seed is asked, and knows the new id at once
 * (not once the old one is dead, 10 s later). */
static void test_restart_new_id_same_addr(void **state) {
    char *dir = tu_tmpdir();
    char *secret = write_secret(dir, "secret", "correct horse battery staple\n");
    char listen_a[64];
    snprintf(listen_a, sizeof listen_a, "127.0.0.1:%d", tu_free_port());
    const char *a_args[] = {"--gossip-ms", "100", "--listen", listen_a, "--mesh-secret-file", secret, NULL};
    tu_node a = start(a_args);
    const char *b_args[] = {"--gossip-ms", "100", "--peers", listen_a, "--mesh-secret-file", secret, NULL};
    tu_node b = start(b_args);
    char a_id[80];
    node_id(&a, a_id, sizeof a_id);
    for (int i = 0; i < 100 && metric(&b, "kvmesh_peers{state=\"alive\"} ") < 1; i++) usleep(100000);
    assert_int_equal(metric(&b, "kvmesh_peers{state=\"alive\"} "), 1);
    kill(a.pid, SIGKILL);
    waitpid(a.pid, NULL, 0);
    a.pid = 0;
    tu_node_stop(&a);
    tu_node a2 = start(a_args); /* same address, new id, no seeds of its own */
    char a2_id[80];
    node_id(&a2, a2_id, sizeof a2_id);
    assert_string_not_equal(a2_id, a_id);
    double t0 = km_now_ms(), known_ms = -1;
    for (int i = 0; i < 150 && known_ms < 0; i++) {
        tu_resp r = tu_http(b.url, "GET", "/health", NULL, NULL);
        if (strstr(r.body, a2_id)) known_ms = km_now_ms() - t0;
        free(r.body);
        if (known_ms < 0) usleep(100000);
    }
    if (known_ms < 0 || known_ms > 5000) fail_msg("B learned the restarted node after %.0f ms", known_ms);
    assert_int_equal(tu_node_stop(&b), 0);
    assert_int_equal(tu_node_stop(&a2), 0);
    free(secret);
    tu_rmtree(dir);
    free(dir);
}

/* ---- the reproduction: a state in P's cache dir with a rewritten
 * next-token hint (checksum recomputed) must not change Q's answer ---- */

static const char *Q1 = "{\"cache_segments\":[\"Mesh instruction: answer briefly. \",\"Example: one. \",\"Question: two?\"],"
                        "\"max_tokens\":1,\"temperature\":0}";

static char *ask_one(const tu_node *n, const char *q, char *source, size_t cap, bool *first_cached) {
    tu_resp r = tu_http(n->url, "POST", "/v1/completions", q, NULL);
    if (r.status != 200) fail_msg("status %ld: %s", r.status, r.body);
    json_t *j = parse(&r);
    char *text = strdup(json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_t *t = json_object_get(j, "timings");
    snprintf(source, cap, "%s", json_string_value(json_object_get(t, "cache_source")));
    *first_cached = json_is_true(json_object_get(t, "first_token_cached"));
    json_decref(j);
    free(r.body);
    return text;
}

/* Rewrite the hint of the one blob in dir that has one (the end boundary's)
 * to another token, and recompute its checksum, as anyone can. */
static void patch_end_hint(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int patched = 0;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, ".kvb")) continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        uint8_t *b;
        size_t len;
        km_error err;
        assert_int_equal(km_read_file(path, (size_t)1 << 30, &b, &len, &err), 0);
        km_blob_info info;
        assert_int_equal(km_blob_parse(b, len, SIZE_MAX, &info, &err), 0);
        if (info.has_next) {
            km_put_u32(b + 68, (uint32_t)(info.next_token == 2000 ? 2001 : 2000));
            km_blob_seal(b, len);
            assert_int_equal(km_write_file_atomic(path, b, len, &err), 0);
            patched++;
        }
        free(b);
    }
    closedir(d);
    assert_int_equal(patched, 1);
}

/* P computes, stops; its end state's hint is rewritten on disk; P restarts
 * (the file is not its own now) and Q fetches from it (--route fetch): Q's
 * greedy one-token answer is the right one. P served it without the hint it
 * does not trust, and answering the prompt itself P decodes, finds the
 * disagreement and removes the state (error metric). With a mesh secret, a
 * state P computed itself travels MAC'd with its hint, and Q answers from it. */
static void test_forged_hint_in_peer_cache_dir(void **state) {
    char *cache = tu_tmpdir();
    const char *p_args[] = {"--gossip-ms", "100", "--cache-dir", cache, NULL};
    tu_node p = start(p_args);
    char src[32];
    bool cached;
    char *right = ask_one(&p, Q1, src, sizeof src, &cached);
    assert_string_equal(src, "none");
    assert_int_equal(tu_node_stop(&p), 0); /* disk writes flushed */
    patch_end_hint(cache);

    p = start(p_args);
    char seed[64];
    snprintf(seed, sizeof seed, "127.0.0.1:%d", p.port);
    const char *q_args[] = {"--gossip-ms", "100", "--route", "fetch", "--peers", seed, NULL};
    tu_node q = start(q_args);
    assert_true(wait_peer_catalog(&q, 3) >= 3);
    char *at_q = ask_one(&q, Q1, src, sizeof src, &cached);
    assert_string_equal(src, "peer");
    assert_false(cached);
    assert_string_equal(at_q, right);
    char *at_p = ask_one(&p, Q1, src, sizeof src, &cached);
    assert_string_equal(src, "local");
    assert_false(cached);
    assert_string_equal(at_p, right);
    assert_int_equal(metric(&p, "kvmesh_state_hint_mismatches_total "), 1);
    char *again = ask_one(&p, Q1, src, sizeof src, &cached); /* the bad state is gone: recomputed from boundary 2 */
    assert_string_equal(again, right);
    assert_int_equal(metric(&p, "kvmesh_state_hint_mismatches_total "), 1);
    free(at_q);
    free(at_p);
    free(again);
    assert_int_equal(tu_node_stop(&q), 0);
    assert_int_equal(tu_node_stop(&p), 0);

    /* with a mesh secret: P's own state, MAC'd, answers Q's first token */
    char *sdir = tu_tmpdir();
    char *secret = write_secret(sdir, "secret", "correct horse battery staple\n");
    const char *ps_args[] = {"--gossip-ms", "100", "--mesh-secret-file", secret, NULL};
    tu_node ps = start(ps_args);
    snprintf(seed, sizeof seed, "127.0.0.1:%d", ps.port);
    const char *qs_args[] = {"--gossip-ms", "100", "--route", "fetch", "--mesh-secret-file", secret, "--peers", seed, NULL};
    tu_node qs = start(qs_args);
    char *own = ask_one(&ps, Q1, src, sizeof src, &cached);
    assert_string_equal(own, right);
    assert_true(wait_peer_catalog(&qs, 3) >= 3);
    char *fetched = ask_one(&qs, Q1, src, sizeof src, &cached);
    assert_string_equal(src, "peer");
    assert_true(cached); /* authenticated: its hint is trusted */
    assert_string_equal(fetched, right);
    assert_int_equal(metric(&qs, "kvmesh_rejected_states_total{reason=\"unauthenticated\"} "), 0);
    free(own);
    free(fetched);
    assert_int_equal(tu_node_stop(&qs), 0);
    assert_int_equal(tu_node_stop(&ps), 0);
    free(secret);
    free(right);
    tu_rmtree(sdir);
    free(sdir);
    tu_rmtree(cache);
    free(cache);
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
        cmocka_unit_test(test_forward_authenticated),
        cmocka_unit_test(test_api_key_without_secret),
        cmocka_unit_test(test_peer_allow),
        cmocka_unit_test(test_restart_new_id_same_addr),
        cmocka_unit_test(test_forged_hint_in_peer_cache_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
