/* test_api.c -- `kvmesh node`'s HTTP API, end to end: a real node process on
 * a loopback port, driven with libcurl. Greedy requests make exact checks
 * possible: the same prompt gives the same text cold, cached, streamed or
 * not; the second time its state comes from the cache (timings say so). */
#include "testutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ a node */

typedef tu_node node_proc;
typedef tu_resp resp;

/* Start a node on the tiny model with extra arguments (NULL-terminated). */
static node_proc node_start(const char *first, ...) {
    const char *args[32];
    int k = 0;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && k < 31; a = va_arg(ap, const char *)) args[k++] = a;
    va_end(ap);
    args[k] = NULL;
    return tu_node_start(tu_model("tiny-f16.gguf"), args);
}

static int node_stop(node_proc *n) { return tu_node_stop(n); }

static resp http(const node_proc *n, const char *method, const char *path, const char *body, const char *auth) {
    char ah[256];
    const char *h[2] = {NULL, NULL};
    if (auth) {
        snprintf(ah, sizeof ah, "Authorization: Bearer %s", auth);
        h[0] = ah;
    }
    return tu_http(n->url, method, path, body, h);
}

/* A raw connection to the node sending req (NULL: nothing); the socket, or -1. */
static int raw_connect(const node_proc *n, const char *req) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)n->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    if (req) send(fd, req, strlen(req), MSG_NOSIGNAL);
    return fd;
}

/* The first bytes of the node's answer on fd (0: closed without one). */
static ssize_t raw_answer(int fd, char *buf, size_t cap) {
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t r = recv(fd, buf, cap - 1, 0);
    buf[r > 0 ? r : 0] = '\0';
    return r;
}

static json_t *parse(const resp *r) {
    json_error_t e;
    json_t *j = json_loads(r->body, 0, &e);
    if (!j) fail_msg("response is not JSON (%s): %.200s", e.text, r->body);
    return j;
}

/* Whether v is the JSON string s. */
static bool is_text(const json_t *v, const char *s) { return json_is_string(v) && strcmp(json_string_value(v), s) == 0; }

/* The error object of an OpenAI-style error response. */
static void expect_error(const resp *r, long status, const char *type, const char *msg_part) {
    if (r->status != status) fail_msg("status %ld, expected %ld: %.300s", r->status, status, r->body);
    json_t *j = parse(r);
    json_t *e = json_object_get(j, "error");
    assert_non_null(e);
    assert_string_equal(json_string_value(json_object_get(e, "type")), type);
    const char *m = json_string_value(json_object_get(e, "message"));
    if (!m || !strstr(m, msg_part)) fail_msg("error message '%s' lacks '%s'", m ? m : "(none)", msg_part);
    json_decref(j);
}

/* Server-sent events: the concatenated text, the number of data events, and
 * the closing chunk (with finish_reason and timings). */
typedef struct sse {
    char text[8192];
    int n_events, n_usage;
    bool done;
    bool first_has_role;
    json_t *last; /* the chunk with finish_reason */
} sse;

static void parse_sse(const char *body, bool chat, sse *s) {
    memset(s, 0, sizeof *s);
    const char *p = body;
    while ((p = strstr(p, "data: "))) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        if (strncmp(p, "[DONE]", 6) == 0) {
            s->done = true;
            assert_string_equal(end + 2, ""); /* nothing after [DONE] */
            break;
        }
        json_error_t e;
        json_t *j = json_loadb(p, (size_t)(end - p), 0, &e);
        if (!j) fail_msg("bad SSE data: %.*s", (int)(end - p), p);
        json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
        if (!ch) { /* the usage event (stream_options.include_usage) has no choices */
            assert_non_null(json_object_get(j, "usage"));
            s->n_usage++;
            json_decref(j);
            p = end + 2;
            continue;
        }
        const char *t = chat ? json_string_value(json_object_get(json_object_get(ch, "delta"), "content"))
                             : json_string_value(json_object_get(ch, "text"));
        if (s->n_events == 0 && chat) s->first_has_role = json_object_get(json_object_get(ch, "delta"), "role") != NULL;
        if (t) strncat(s->text, t, sizeof s->text - strlen(s->text) - 1);
        s->n_events++;
        if (!json_is_null(json_object_get(ch, "finish_reason"))) {
            json_decref(s->last);
            s->last = j;
        } else {
            json_decref(j);
        }
        p = end + 2;
    }
}


static node_proc N; /* shared by the tests that need no special node */

static int group_setup(void **state) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    N = node_start("--ctx", "512", "--queue", "4", NULL);
    return 0;
}

static int group_teardown(void **state) {
    assert_int_equal(node_stop(&N), 0); /* SIGTERM: a clean exit */
    curl_global_cleanup();
    return 0;
}

/* ------------------------------------------------------------ tests */

static void test_models_and_health(void **state) {
    resp r = http(&N, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = parse(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "id")), "tiny-f16");
    json_decref(j);
    free(r.body);
    r = http(&N, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    j = parse(&r);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    free(r.body);
}

/* Cold, then cached: same text; the second reuses all but the last prompt
 * token and answers its first token from the cache. */
static void test_completion_cached_equals_cold(void **state) {
    char body[1024];
    snprintf(body, sizeof body, "{\"model\":\"tiny-f16\",\"prompt\":\"%s\",\"max_tokens\":8,\"temperature\":0}", "Cold and cached runs agree. Count: one two three");
    resp a = http(&N, "POST", "/v1/completions", body, NULL);
    assert_int_equal(a.status, 200);
    json_t *ja = parse(&a);
    assert_string_equal(json_string_value(json_object_get(ja, "object")), "text_completion");
    json_t *ca = json_array_get(json_object_get(ja, "choices"), 0);
    const char *text_a = json_string_value(json_object_get(ca, "text"));
    json_t *ta = json_object_get(ja, "timings");
    int prompt_n = (int)json_integer_value(json_object_get(ta, "prompt_n"));
    assert_true(prompt_n > 5);
    assert_int_equal(json_integer_value(json_object_get(ta, "cached_n")), 0);
    assert_string_equal(json_string_value(json_object_get(ta, "cache_source")), "none");
    json_t *usage = json_object_get(ja, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "prompt_tokens")), prompt_n);
    int gen = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
    const char *fin = json_string_value(json_object_get(ca, "finish_reason"));
    assert_true((gen == 8 && strcmp(fin, "length") == 0) || (gen < 8 && strcmp(fin, "stop") == 0));

    resp b = http(&N, "POST", "/v1/completions", body, NULL);
    assert_int_equal(b.status, 200);
    json_t *jb = parse(&b);
    json_t *cb = json_array_get(json_object_get(jb, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(cb, "text")), text_a);
    json_t *tb = json_object_get(jb, "timings");
    assert_int_equal(json_integer_value(json_object_get(tb, "cached_n")), prompt_n - 1);
    assert_string_equal(json_string_value(json_object_get(tb, "cache_source")), "local");
    assert_true(json_is_true(json_object_get(tb, "first_token_cached")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(jb, "usage"), "completion_tokens")), gen);
    json_decref(ja);
    json_decref(jb);
    free(a.body);
    free(b.body);
}

/* max_tokens 0: the prompt is processed (and cached), nothing is generated --
 * the same answer on a miss and on a full hit (whose cached first token must
 * not slip out). */
static void test_max_tokens_zero(void **state) {
    const char *body = "{\"prompt\":\"Zero tokens wanted, twice over.\",\"max_tokens\":0,\"temperature\":0}";
    json_t *j[2];
    for (int i = 0; i < 2; i++) {
        resp r = http(&N, "POST", "/v1/completions", body, NULL);
        assert_int_equal(r.status, 200);
        j[i] = parse(&r);
        free(r.body);
        json_t *c = json_array_get(json_object_get(j[i], "choices"), 0);
        assert_string_equal(json_string_value(json_object_get(c, "text")), "");
        assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
        assert_int_equal(json_integer_value(json_object_get(json_object_get(j[i], "usage"), "completion_tokens")), 0);
        json_t *t = json_object_get(j[i], "timings");
        assert_int_equal(json_integer_value(json_object_get(t, "predicted_n")), 0);
        assert_false(json_is_true(json_object_get(t, "first_token_cached")));
    }
    json_t *t0 = json_object_get(j[0], "timings"), *t1 = json_object_get(j[1], "timings");
    assert_string_equal(json_string_value(json_object_get(t0, "cache_source")), "none");
    assert_string_equal(json_string_value(json_object_get(t1, "cache_source")), "local"); /* a full hit */
    assert_int_equal(json_integer_value(json_object_get(t1, "cached_n")),
                     json_integer_value(json_object_get(t0, "prompt_n")) - 1);
    assert_true(json_equal(json_object_get(j[0], "choices"), json_object_get(j[1], "choices")));
    json_decref(j[0]);
    json_decref(j[1]);
}

/* cache_segments: a prompt sharing the first two segments reuses exactly them. */
static void test_cache_segments_partial_hit(void **state) {
    const char *b1 = "{\"prompt\":\"Seg one is the instruction. Seg two is an example. Seg three asks A?\","
                     "\"cache_segments\":[\"Seg one is the instruction.\",\" Seg two is an example.\",\" Seg three asks A?\"],"
                     "\"max_tokens\":2,\"temperature\":0}";
    const char *b2 = "{\"cache_segments\":[\"Seg one is the instruction.\",\" Seg two is an example.\",\" Seg three asks something else?\"],"
                     "\"max_tokens\":2,\"temperature\":0}";
    const char *b0 = "{\"cache_segments\":[\"Seg one is the instruction.\",\" Seg two is an example.\"],\"max_tokens\":1,\"temperature\":0}";
    resp r = http(&N, "POST", "/v1/completions", b1, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
    r = http(&N, "POST", "/v1/completions", b2, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = parse(&r);
    json_t *t = json_object_get(j, "timings");
    int cached = (int)json_integer_value(json_object_get(t, "cached_n"));
    int prompt_n = (int)json_integer_value(json_object_get(t, "prompt_n"));
    assert_string_equal(json_string_value(json_object_get(t, "cache_source")), "local");
    json_decref(j);
    free(r.body);
    /* the two shared segments alone: prompt_n of that is cached + 1 (the end boundary is n - 1) */
    r = http(&N, "POST", "/v1/completions", b0, NULL);
    j = parse(&r);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "timings"), "prompt_n")), cached);
    assert_true(cached < prompt_n - 1);
    json_decref(j);
    free(r.body);
    /* prompt and segments that disagree */
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":\"ab\",\"cache_segments\":[\"a\",\"c\"]}", NULL);
    expect_error(&r, 400, "invalid_request_error", "concatenation");
    free(r.body);
}

/* Streaming gives the same text as a plain response, in events, ending
 * with finish_reason + timings and [DONE]. */
static void test_stream_equals_plain(void **state) {
    const char *plain = "{\"prompt\":\"Stream me: the quick brown fox\",\"max_tokens\":12,\"temperature\":0}";
    const char *streamed = "{\"prompt\":\"Stream me: the quick brown fox\",\"max_tokens\":12,\"temperature\":0,"
                           "\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    resp a = http(&N, "POST", "/v1/completions", plain, NULL);
    assert_int_equal(a.status, 200);
    json_t *ja = parse(&a);
    const char *text = json_string_value(json_object_get(json_array_get(json_object_get(ja, "choices"), 0), "text"));
    resp b = http(&N, "POST", "/v1/completions", streamed, NULL);
    assert_int_equal(b.status, 200);
    sse s;
    parse_sse(b.body, false, &s);
    assert_true(s.done);
    assert_string_equal(s.text, text);
    assert_non_null(s.last);
    assert_non_null(json_object_get(s.last, "timings"));
    assert_int_equal(s.n_usage, 1);
    json_decref(s.last);
    json_decref(ja);
    free(a.body);
    free(b.body);
}

static void test_chat(void **state) {
    const char *body = "{\"model\":\"x\",\"messages\":[{\"role\":\"system\",\"content\":\"You answer briefly.\"},"
                       "{\"role\":\"user\",\"content\":\"Say hi.\"}],\"max_tokens\":6,\"temperature\":0}";
    resp a = http(&N, "POST", "/v1/chat/completions", body, NULL);
    assert_int_equal(a.status, 200);
    json_t *ja = parse(&a);
    assert_string_equal(json_string_value(json_object_get(ja, "object")), "chat.completion");
    json_t *msg = json_object_get(json_array_get(json_object_get(ja, "choices"), 0), "message");
    assert_string_equal(json_string_value(json_object_get(msg, "role")), "assistant");
    const char *text = json_string_value(json_object_get(msg, "content"));
    assert_non_null(text);

    /* streamed: first delta carries the role, the text is the same */
    char sb[1024];
    snprintf(sb, sizeof sb, "%.*s,\"stream\":true}", (int)strlen(body) - 1, body);
    resp b = http(&N, "POST", "/v1/chat/completions", sb, NULL);
    assert_int_equal(b.status, 200);
    sse s;
    parse_sse(b.body, true, &s);
    assert_true(s.done && s.first_has_role);
    assert_string_equal(s.text, text);
    /* the second time the whole conversation came from the cache */
    assert_string_equal(json_string_value(json_object_get(json_object_get(s.last, "timings"), "cache_source")), "local");
    json_decref(s.last);

    /* a follow-up turn reuses the conversation so far (message boundaries) */
    const char *follow = "{\"messages\":[{\"role\":\"system\",\"content\":\"You answer briefly.\"},"
                         "{\"role\":\"user\",\"content\":\"Say hi.\"},{\"role\":\"assistant\",\"content\":\"Hi.\"},"
                         "{\"role\":\"user\",\"content\":\"Again.\"}],\"max_tokens\":2,\"temperature\":0}";
    resp c = http(&N, "POST", "/v1/chat/completions", follow, NULL);
    assert_int_equal(c.status, 200);
    json_t *jc = parse(&c);
    assert_true(json_integer_value(json_object_get(json_object_get(jc, "timings"), "cached_n")) > 0);
    json_decref(jc);
    json_decref(ja);
    free(a.body);
    free(b.body);
    free(c.body);
}

static void test_bad_requests(void **state) {
    resp r = http(&N, "POST", "/v1/completions", "{\"prompt\": ", NULL);
    expect_error(&r, 400, "invalid_request_error", "not valid JSON");
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "[1,2]", NULL);
    expect_error(&r, 400, "invalid_request_error", "JSON object");
    free(r.body);
    /* nested past jansson's depth limit: a 400, not a connection thread out of stack */
    char deep[2 * 2100 + 1];
    memset(deep, '[', 2100);
    memset(deep + 2100, ']', 2100);
    deep[4200] = '\0';
    r = http(&N, "POST", "/v1/completions", deep, NULL);
    expect_error(&r, 400, "invalid_request_error", "maximum parsing depth");
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "{\"max_tokens\":3}", NULL);
    expect_error(&r, 400, "invalid_request_error", "'prompt' is required");
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":\"x\",\"temperature\":5}", NULL);
    expect_error(&r, 400, "invalid_request_error", "temperature");
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":\"x\",\"n\":2}", NULL);
    expect_error(&r, 400, "invalid_request_error", "n = 1");
    free(r.body);
    /* counts are whole numbers: 2.7 is an error, not 2 */
    static const char *const counts[] = {"max_tokens", "max_completion_tokens", "top_k", "seed"};
    for (int i = 0; i < 4; i++) {
        char b[128];
        snprintf(b, sizeof b, "{\"prompt\":\"x\",\"%s\":2.7}", counts[i]);
        r = http(&N, "POST", "/v1/completions", b, NULL);
        expect_error(&r, 400, "invalid_request_error", "must be an integer");
        json_t *j = parse(&r);
        assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "param")), counts[i]);
        json_decref(j);
        free(r.body);
    }
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":\"x\",\"n\":1.5}", NULL);
    expect_error(&r, 400, "invalid_request_error", "n = 1");
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":2.0,\"temperature\":0}", NULL);
    assert_int_equal(r.status, 200); /* 2.0 is 2 */
    json_t *j2 = parse(&r);
    assert_true(json_integer_value(json_object_get(json_object_get(j2, "usage"), "completion_tokens")) <= 2);
    json_decref(j2);
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":[\"a\",\"b\"]}", NULL);
    expect_error(&r, 400, "invalid_request_error", "exactly one");
    free(r.body);
    r = http(&N, "POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", NULL);
    expect_error(&r, 400, "invalid_request_error", "wizard");
    free(r.body);
    r = http(&N, "POST", "/v1/chat/completions", "{\"messages\":[]}", NULL);
    expect_error(&r, 400, "invalid_request_error", "non-empty");
    free(r.body);
    r = http(&N, "POST", "/v1/completions", "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", NULL);
    expect_error(&r, 400, "invalid_request_error", "stop");
    free(r.body);
    r = http(&N, "GET", "/v1/completions", NULL, NULL);
    expect_error(&r, 405, "invalid_request_error", "POST");
    free(r.body);
    r = http(&N, "GET", "/nope", NULL, NULL);
    expect_error(&r, 404, "invalid_request_error", "no route");
    free(r.body);
    /* a prompt longer than the context (512 tokens): a 400, streamed or not */
    size_t big = 6000;
    char *body = malloc(big + 100);
    strcpy(body, "{\"stream\":true,\"prompt\":\"");
    for (size_t i = 0; i < big / 4; i++) strcat(body, "abc ");
    strcat(body, "\"}");
    r = http(&N, "POST", "/v1/completions", body, NULL);
    expect_error(&r, 400, "invalid_request_error", "context");
    json_t *je = parse(&r);
    assert_true(is_text(json_object_get(json_object_get(je, "error"), "code"), "context_length_exceeded"));
    json_decref(je);
    free(r.body);
    free(body);
    /* the node still serves */
    r = http(&N, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    free(r.body);
}

static void test_stop_string(void **state) {
    /* find what greedy decoding says, then stop on a piece of it */
    resp a = http(&N, "POST", "/v1/completions", "{\"prompt\":\"Stops: a b c d\",\"max_tokens\":16,\"temperature\":0}", NULL);
    json_t *ja = parse(&a);
    const char *text = json_string_value(json_object_get(json_array_get(json_object_get(ja, "choices"), 0), "text"));
    size_t tl = strlen(text);
    if (tl < 6) {
        json_decref(ja);
        free(a.body);
        skip(); /* the random model said too little to cut */
    }
    char stop[8];
    memcpy(stop, text + tl / 2, 3); /* three bytes from the middle */
    stop[3] = '\0';
    const char *cut = strstr(text, stop);
    json_t *req = json_pack("{s:s,s:i,s:i,s:s}", "prompt", "Stops: a b c d", "max_tokens", 16, "temperature", 0, "stop", stop);
    char *body = json_dumps(req, JSON_COMPACT);
    resp b = http(&N, "POST", "/v1/completions", body, NULL);
    json_t *jb = parse(&b);
    json_t *cb = json_array_get(json_object_get(jb, "choices"), 0);
    const char *tb = json_string_value(json_object_get(cb, "text"));
    assert_int_equal(strlen(tb), (size_t)(cut - text));
    assert_memory_equal(tb, text, strlen(tb));
    assert_string_equal(json_string_value(json_object_get(cb, "finish_reason")), "stop");
    json_decref(req);
    free(body);
    json_decref(ja);
    json_decref(jb);
    free(a.body);
    free(b.body);
}

static void test_metrics(void **state) {
    resp r = http(&N, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "# TYPE kvmesh_requests_total counter"));
    assert_non_null(strstr(r.body, "kvmesh_cache_hits_total{tier=\"local\"}"));
    assert_non_null(strstr(r.body, "kvmesh_ttft_seconds_bucket"));
    assert_non_null(strstr(r.body, "kvmesh_queue_length 0"));
    assert_non_null(strstr(r.body, "kvmesh_http_requests_total{endpoint=\"completions\",code=\"400\"}"));
    free(r.body);
}

/* ------------------------------------------------- nodes of their own */

static void test_api_key(void **state) {
    char *dir = tu_tmpdir();
    char kf[4200];
    snprintf(kf, sizeof kf, "%s/key", dir);
    FILE *f = fopen(kf, "w");
    fputs("sekret-key-123\n", f);
    fclose(f);
    node_proc n = node_start("--api-key-file", kf, NULL);
    resp r = http(&n, "GET", "/v1/models", NULL, NULL);
    expect_error(&r, 401, "invalid_request_error", "API key");
    free(r.body);
    r = http(&n, "GET", "/v1/models", NULL, "wrong-key-123");
    assert_int_equal(r.status, 401);
    free(r.body);
    r = http(&n, "GET", "/v1/models", NULL, "sekret-key-123");
    assert_int_equal(r.status, 200);
    free(r.body);
    r = http(&n, "GET", "/health", NULL, NULL); /* health and metrics stay open */
    assert_int_equal(r.status, 200);
    free(r.body);
    /* without the key the body is not even read: 401 right after the head */
    int fd = raw_connect(&n, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: 3000000\r\n\r\n{\"prompt\":\"");
    char buf[512];
    assert_true(raw_answer(fd, buf, sizeof buf) > 0);
    assert_memory_equal(buf, "HTTP/1.1 401", 12);
    close(fd);
    assert_int_equal(node_stop(&n), 0);
    tu_rmtree(dir);
    free(dir);
}

/* Beyond loopback only with an API key and a mesh secret (or --insecure). */
static void test_refuses_open_listen_without_secrets(void **state) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "%s node --model %s --listen 0.0.0.0:0 2>&1", tu_kvmesh_bin(), tu_model("tiny-f16.gguf"));
    FILE *p = popen(cmd, "r");
    char out[1024] = "";
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_non_null(strstr(out, "refusing to listen on 0.0.0.0 without --api-key-file and --mesh-secret-file"));
}

static void test_body_limit(void **state) {
    node_proc n = node_start("--max-body", "2048", NULL);
    char *body = malloc(5000);
    memset(body, 'a', 4999);
    body[4999] = 0;
    memcpy(body, "{\"prompt\":\"", 11);
    resp r = http(&n, "POST", "/v1/completions", body, NULL);
    expect_error(&r, 413, "invalid_request_error", "2048");
    free(r.body);
    free(body);
    assert_int_equal(node_stop(&n), 0);
}

typedef struct bg_req {
    const node_proc *n;
    const char *body;
    resp r;
} bg_req;

static void *bg_post(void *arg) {
    bg_req *b = arg;
    b->r = http(b->n, "POST", "/v1/completions", b->body, NULL);
    return NULL;
}

/* One context, no waiting room: a second request while the first runs gets
 * 503 with Retry-After; the first still completes. Then SIGTERM during a
 * request: it completes, the node exits 0, its disk cache holds the states. */
static void test_busy_and_graceful_stop(void **state) {
    char *cache = tu_tmpdir();
    node_proc n = node_start("--queue", "0", "--slowdown", "40", "--cache-dir", cache, NULL);
    const char *slow = "{\"prompt\":\"A slow request that takes a while\",\"max_tokens\":24,\"temperature\":0}";
    bg_req b = {&n, slow, {0}};
    pthread_t t;
    pthread_create(&t, NULL, bg_post, &b);
    resp r = {0};
    for (int i = 0; i < 100; i++) { /* until the first is running */
        usleep(50000);
        resp h = http(&n, "GET", "/health", NULL, NULL);
        json_t *j = parse(&h);
        int running = (int)json_integer_value(json_object_get(j, "running"));
        json_decref(j);
        free(h.body);
        if (running == 1) break;
    }
    r = http(&n, "POST", "/v1/completions", "{\"prompt\":\"second\",\"max_tokens\":1}", NULL);
    expect_error(&r, 503, "server_error", "queue is full");
    assert_string_equal(r.retry_after, "1");
    free(r.body);
    kill(n.pid, SIGTERM); /* while the first is still generating */
    pthread_join(t, NULL);
    assert_int_equal(b.r.status, 200);
    json_t *j = parse(&b.r);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) > 0, 1);
    json_decref(j);
    free(b.r.body);
    int st;
    waitpid(n.pid, &st, 0);
    n.pid = 0;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    tu_rmtree(n.dir);
    free(n.dir);
    /* the states of the finished request were written before exit */
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "ls %s/*.kvb 2>/dev/null | wc -l", cache);
    FILE *p = popen(cmd, "r");
    int files = 0;
    assert_int_equal(fscanf(p, "%d", &files), 1);
    pclose(p);
    assert_true(files >= 1);
    tu_rmtree(cache);
    free(cache);
}

/* /health's field of a node, after polling until cond_key reaches cond_value. */
static int health_when(const node_proc *n, const char *cond_key, int cond_value, const char *key) {
    for (int i = 0; i < 400; i++) {
        resp h = http(n, "GET", "/health", NULL, NULL);
        json_t *j = parse(&h);
        int v = (int)json_integer_value(json_object_get(j, cond_key));
        int out = (int)json_integer_value(json_object_get(j, key));
        json_decref(j);
        free(h.body);
        if (v == cond_value) return out;
        usleep(5000);
    }
    fail_msg("/health never showed %s = %d", cond_key, cond_value);
    return -1;
}

/* A long request of n words: its first segment (the shared part), then q. */
static char *long_request(const char *word, int n, const char *q) {
    size_t cap = (size_t)n * (strlen(word) + 1) + 256;
    char *b = malloc(cap);
    size_t k = (size_t)snprintf(b, cap, "{\"cache_segments\":[\"");
    for (int i = 0; i < n; i++) k += (size_t)snprintf(b + k, cap - k, "%s ", word);
    snprintf(b + k, cap - k, "\",\"%s\"],\"max_tokens\":1,\"temperature\":0}", q);
    return b;
}

/* The backlog (/health backlog_ms, gossiped to peers for their planners) is
 * work, not a job count: a queued request whose prefix the running one is
 * computing adds little; an unrelated one of the same length adds its whole
 * prefill. Nothing left once all are done. */
static void test_backlog_counts_work(void **state) {
    node_proc n = node_start("--slowdown", "40", "--queue", "4", NULL);
    for (int i = 0; i < 2; i++) { /* measure the rates (the first request is slower: weights paged in) */
        char *warm = long_request(i == 0 ? "kiwi" : "plum", 300, "warm-up");
        resp r = http(&n, "POST", "/v1/completions", warm, NULL);
        assert_int_equal(r.status, 200);
        free(r.body);
        free(warm);
    }
    assert_int_equal(health_when(&n, "running", 0, "backlog_ms"), 0);
    char *qa = long_request("apple", 600, "first"), *qb = long_request("apple", 600, "second"),
         *qc = long_request("pear", 600, "third");
    bg_req a = {&n, qa, {0}}, b = {&n, qb, {0}}, c = {&n, qc, {0}};
    pthread_t ta, tb, tc;
    pthread_create(&ta, NULL, bg_post, &a);
    int h1 = health_when(&n, "running", 1, "backlog_ms");
    pthread_create(&tb, NULL, bg_post, &b);
    int h2 = health_when(&n, "queued", 1, "backlog_ms");
    pthread_create(&tc, NULL, bg_post, &c);
    int h3 = health_when(&n, "queued", 2, "backlog_ms");
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_join(tc, NULL);
    json_t *ja = parse(&a.r);
    double a_ms = json_real_value(json_object_get(json_object_get(ja, "timings"), "ttlt_ms"));
    json_decref(ja);
    print_message("backlog: A running %d ms (took %.0f ms), + B (same prefix) %d ms, + C (other prefix) %d ms\n", h1,
                  a_ms, h2, h3);
    assert_true(h1 > 0.4 * a_ms && h1 < 2.5 * a_ms); /* A's estimate as it started (the machine may be busy) */
    assert_true(h3 - h2 > h1 / 2);      /* C: about as much again */
    assert_true(h3 - h2 > 4 * (h2 - h1)); /* B: its last segment only */
    resp *rs[3] = {&a.r, &b.r, &c.r};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rs[i]->status, 200);
        free(rs[i]->body);
    }
    assert_int_equal(health_when(&n, "queued", 0, "backlog_ms"), 0);
    free(qa);
    free(qb);
    free(qc);
    assert_int_equal(node_stop(&n), 0);
}

static size_t on_discard(char *p, size_t sz, size_t nm, void *ud) { return sz * nm; }

/* Two contexts compute two requests at once, with the same answers as one
 * at a time; a third, with no waiting room, gets 503. */
static void test_parallel_contexts(void **state) {
    node_proc n = node_start("--parallel", "2", "--queue", "0", "--slowdown", "40", NULL);
    const char *q1 = "{\"prompt\":\"First of two parallel requests\",\"max_tokens\":12,\"temperature\":0}";
    const char *q2 = "{\"prompt\":\"Second of two parallel requests\",\"max_tokens\":12,\"temperature\":0}";
    bg_req a = {&n, q1, {0}}, b = {&n, q2, {0}};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, bg_post, &a);
    pthread_create(&tb, NULL, bg_post, &b);
    int running = 0;
    for (int i = 0; i < 200 && running < 2; i++) {
        usleep(25000);
        resp h = http(&n, "GET", "/health", NULL, NULL);
        json_t *j = parse(&h);
        running = (int)json_integer_value(json_object_get(j, "running"));
        json_decref(j);
        free(h.body);
    }
    assert_int_equal(running, 2);
    resp r = http(&n, "POST", "/v1/completions", "{\"prompt\":\"third\",\"max_tokens\":1}", NULL);
    expect_error(&r, 503, "server_error", "queue is full");
    free(r.body);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.r.status, 200);
    assert_int_equal(b.r.status, 200);
    /* the same requests one at a time give the same texts */
    resp a2 = http(&n, "POST", "/v1/completions", q1, NULL), b2 = http(&n, "POST", "/v1/completions", q2, NULL);
    json_t *j1 = parse(&a.r), *j2 = parse(&b.r), *k1 = parse(&a2), *k2 = parse(&b2);
#define TEXT(j) json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"))
    assert_string_equal(TEXT(j1), TEXT(k1));
    assert_string_equal(TEXT(j2), TEXT(k2));
#undef TEXT
    json_decref(j1);
    json_decref(j2);
    json_decref(k1);
    json_decref(k2);
    free(a.r.body);
    free(b.r.body);
    free(a2.body);
    free(b2.body);
    assert_int_equal(node_stop(&n), 0);
}

/* A client that goes away mid-stream: the request is cancelled, the node serves on. */
static void test_client_disconnect(void **state) {
    node_proc n = node_start("--slowdown", "40", NULL);
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "%s/v1/completions", n.url);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{\"prompt\":\"Go on and on\",\"max_tokens\":200,\"stream\":true}");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1500L); /* hang up after 1.5 s */
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_discard);
    CURLcode rc = curl_easy_perform(c);
    assert_int_equal(rc, CURLE_OPERATION_TIMEDOUT);
    curl_easy_cleanup(c);
    bool cancelled = false;
    for (int i = 0; i < 300 && !cancelled; i++) { /* the next keep-alive or token write notices */
        usleep(100000);
        resp m = http(&n, "GET", "/metrics", NULL, NULL);
        cancelled = strstr(m.body, "kvmesh_requests_total{result=\"cancelled\"} 1") != NULL;
        free(m.body);
    }
    assert_true(cancelled);
    resp h = http(&n, "GET", "/health", NULL, NULL);
    assert_int_equal(h.status, 200);
    free(h.body);
    assert_int_equal(node_stop(&n), 0);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A counter or gauge of /metrics (series with its labels, e.g.
 * "kvmesh_requests_total{result=\"cancelled\"}"); 0 if absent. */
static double metric(const node_proc *n, const char *series) {
    resp m = http(n, "GET", "/metrics", NULL, NULL);
    char key[256];
    snprintf(key, sizeof key, "\n%s ", series);
    const char *p = strstr(m.body, key);
    double v = p ? atof(p + strlen(key)) : 0;
    free(m.body);
    return v;
}

/* Slowloris: connections that send their request a byte at a time. */
#define SLOW_CONNS 100
typedef struct slow_conns {
    int port;
    double t_open[SLOW_CONNS], t_closed[SLOW_CONNS]; /* ms; t_closed 0: never closed by the server */
    int n_open;
} slow_conns;

static void *slow_senders(void *arg) {
    slow_conns *s = arg;
    int fds[SLOW_CONNS];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < SLOW_CONNS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        s->t_open[i] = now_ms();
        s->t_closed[i] = 0;
        if (connect(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0 ||
            send(fds[i], "GET /health HTTP/1.1\r\nHo", 24, MSG_NOSIGNAL) != 24) {
            s->t_closed[i] = -1; /* refused at once */
            continue;
        }
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        s->n_open++;
    }
    /* a byte every 200 ms, for at most 6 s: each must be closed by then */
    int open = s->n_open;
    for (int round = 0; round < 30 && open > 0; round++) {
        usleep(200000);
        for (int i = 0; i < SLOW_CONNS; i++) {
            if (s->t_closed[i] != 0) continue;
            char b[64];
            ssize_t r = recv(fds[i], b, sizeof b, 0);
            bool closed = r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
            if (!closed && send(fds[i], "s", 1, MSG_NOSIGNAL) != 1) closed = errno != EAGAIN;
            if (closed) {
                s->t_closed[i] = now_ms();
                open--;
            }
        }
    }
    for (int i = 0; i < SLOW_CONNS; i++)
        if (s->t_closed[i] >= 0) close(fds[i]);
    return NULL;
}

/* 100 connections sending their heads a byte every 200 ms (each byte resets
 * libmicrohttpd's idle timeout) do not lock anyone out: /health and a
 * completion answer within 1 s meanwhile, and the node closes each slow one
 * once --request-timeout (2 s here) has passed since it connected. */
static void test_slowloris(void **state) {
    node_proc n = node_start("--request-timeout", "2", NULL);
    slow_conns s = {.port = n.port};
    pthread_t t;
    pthread_create(&t, NULL, slow_senders, &s);
    usleep(500000); /* all connected and trickling */
    double t0 = now_ms();
    resp h = http(&n, "GET", "/health", NULL, NULL);
    double t_health = now_ms() - t0;
    assert_int_equal(h.status, 200);
    free(h.body);
    t0 = now_ms();
    resp c = http(&n, "POST", "/v1/completions", "{\"prompt\":\"Still served\",\"max_tokens\":2,\"temperature\":0}", NULL);
    double t_completion = now_ms() - t0;
    assert_int_equal(c.status, 200);
    free(c.body);
    pthread_join(t, NULL);
    double first = 1e9, last = 0;
    int closed = 0;
    for (int i = 0; i < SLOW_CONNS; i++) {
        if (s.t_closed[i] <= 0) continue; /* refused, or never closed */
        double lived = s.t_closed[i] - s.t_open[i];
        if (lived < first) first = lived;
        if (lived > last) last = lived;
        closed++;
    }
    print_message("slowloris: /health %.0f ms, completion %.0f ms; %d of %d slow connections closed by the node "
                  "after %.0f-%.0f ms\n", t_health, t_completion, closed, s.n_open, first, last);
    assert_true(t_health < 1000 && t_completion < 1000);
    assert_int_equal(s.n_open, SLOW_CONNS);
    assert_int_equal(closed, SLOW_CONNS);
    assert_true(first >= 2000 && last < 4000); /* the deadline, not the 300 s idle timeout */
    assert_int_equal((int)metric(&n, "kvmesh_http_request_timeouts_total"), SLOW_CONNS);
    assert_int_equal(node_stop(&n), 0);
}

/* One client address holds at most --max-connections-per-ip connections:
 * the next is closed unanswered, until one of its others goes. */
static void test_per_ip_limit(void **state) {
    node_proc n = node_start("--max-connections-per-ip", "4", NULL);
    const char *get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    int held[4];
    for (int i = 0; i < 4; i++) assert_true((held[i] = raw_connect(&n, NULL)) >= 0);
    usleep(200000);
    char buf[256];
    int fd = raw_connect(&n, get);
    assert_true(raw_answer(fd, buf, sizeof buf) <= 0); /* closed, no answer */
    close(fd);
    close(held[0]);
    usleep(200000);
    fd = raw_connect(&n, get);
    assert_true(raw_answer(fd, buf, sizeof buf) > 0);
    assert_memory_equal(buf, "HTTP/1.1 200", 12);
    close(fd);
    for (int i = 1; i < 4; i++) close(held[i]);
    assert_int_equal(node_stop(&n), 0);
}

/* A plain (not streamed) request whose client hangs up is cancelled at the
 * next token, as a streamed one: its context is free again at once. */
static void test_disconnect_cancels_plain_request(void **state) {
    node_proc n = node_start("--slowdown", "10", NULL); /* 4096-token context */
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof url, "%s/v1/chat/completions", n.url);
    curl_easy_setopt(c, CURLOPT_URL, url); /* no max_tokens: up to the whole context */
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{\"messages\":[{\"role\":\"user\",\"content\":\"Talk forever.\"}]}");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 300L); /* hang up after 0.3 s */
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_discard);
    assert_int_equal(curl_easy_perform(c), CURLE_OPERATION_TIMEDOUT);
    curl_easy_cleanup(c);
    double t0 = now_ms();
    while (metric(&n, "kvmesh_requests_total{result=\"cancelled\"}") < 1 && now_ms() - t0 < 5000) usleep(50000);
    double noticed = now_ms() - t0;
    resp r = http(&n, "POST", "/v1/completions", "{\"prompt\":\"Next\",\"max_tokens\":1,\"temperature\":0}", NULL);
    assert_int_equal(r.status, 200);
    json_t *j = parse(&r);
    double queue_ms = json_real_value(json_object_get(json_object_get(j, "timings"), "queue_ms"));
    json_decref(j);
    free(r.body);
    print_message("disconnect: cancelled %.0f ms after the hang-up; the next request queued %.1f ms\n", noticed, queue_ms);
    assert_int_equal((int)metric(&n, "kvmesh_requests_total{result=\"cancelled\"}"), 1);
    assert_int_equal((int)metric(&n, "kvmesh_requests_total{result=\"completed\"}"), 1);
    assert_true(noticed < 2000);
    assert_true(queue_ms < 100);

    /* one that leaves while queued behind another is out of the queue at once */
    bg_req a = {&n, "{\"prompt\":\"Running while another waits\",\"max_tokens\":12,\"temperature\":0}", {0}};
    pthread_t ta;
    pthread_create(&ta, NULL, bg_post, &a);
    assert_int_equal(health_when(&n, "running", 1, "queued"), 0);
    c = curl_easy_init();
    snprintf(url, sizeof url, "%s/v1/completions", n.url);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{\"prompt\":\"Queued, then gone\",\"max_tokens\":12}");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 300L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_discard);
    assert_int_equal(curl_easy_perform(c), CURLE_OPERATION_TIMEDOUT);
    curl_easy_cleanup(c);
    t0 = now_ms();
    while (metric(&n, "kvmesh_requests_total{result=\"cancelled\"}") < 2 && now_ms() - t0 < 5000) usleep(20000);
    resp h = http(&n, "GET", "/health", NULL, NULL);
    json_t *jh = parse(&h);
    int queued = (int)json_integer_value(json_object_get(jh, "queued")),
        running = (int)json_integer_value(json_object_get(jh, "running"));
    json_decref(jh);
    free(h.body);
    print_message("disconnect while queued: out of the queue %.0f ms after the hang-up (queued %d, running %d)\n",
                  now_ms() - t0, queued, running);
    assert_int_equal(queued, 0);
    assert_int_equal(running, 1); /* the other still computes */
    pthread_join(ta, NULL);
    assert_int_equal(a.r.status, 200);
    free(a.r.body);
    assert_int_equal((int)metric(&n, "kvmesh_requests_total{result=\"cancelled\"}"), 2);
    assert_int_equal(node_stop(&n), 0);
}

typedef struct timed_get {
    const node_proc *n;
    double worst_ms;
    int n_ok;
    volatile bool stop;
} timed_get;

static void *health_poller(void *arg) {
    timed_get *t = arg;
    while (!t->stop) {
        double t0 = now_ms();
        resp h = http(t->n, "GET", "/health", NULL, NULL);
        double ms = now_ms() - t0;
        if (ms > t->worst_ms) t->worst_ms = ms;
        t->n_ok += h.status == 200;
        free(h.body);
        usleep(20000);
    }
    return NULL;
}

/* A 3 MB prompt cannot fit 4096 tokens (a token stands for a few bytes at
 * most): 400 context_length_exceeded before tokenizing it (which took
 * seconds); /health answers meanwhile. */
static void test_long_prompt_refused_before_tokenizing(void **state) {
    node_proc n = node_start(NULL); /* 4096-token context */
    size_t words = 3 << 18, k = 0; /* 4 bytes each: 3 MiB */
    char *body = malloc(words * 4 + 64);
    k += (size_t)sprintf(body, "{\"prompt\":\"");
    for (size_t i = 0; i < words; i++, k += 4) memcpy(body + k, "abc ", 4);
    strcpy(body + k, "\",\"max_tokens\":1}");
    timed_get hp = {.n = &n};
    pthread_t t;
    pthread_create(&t, NULL, health_poller, &hp);
    double t0 = now_ms();
    resp r = http(&n, "POST", "/v1/completions", body, NULL);
    double ms = now_ms() - t0;
    usleep(100000);
    hp.stop = true;
    pthread_join(t, NULL);
    print_message("3 MiB prompt: %ld in %.0f ms; /health answered %d times, slowest %.0f ms\n", r.status, ms, hp.n_ok,
                  hp.worst_ms);
    expect_error(&r, 400, "invalid_request_error", "context holds 4096");
    json_t *j = parse(&r);
    json_t *e = json_object_get(j, "error");
    assert_true(is_text(json_object_get(e, "code"), "context_length_exceeded"));
    assert_true(is_text(json_object_get(e, "param"), "prompt"));
    json_decref(j);
    assert_true(ms < 1000);
    assert_true(hp.n_ok >= 1 && hp.worst_ms < 1000);
    free(r.body);
    free(body);
    assert_int_equal(node_stop(&n), 0);
}

/* A burst to a node that takes what it can serve within --max-wait: the
 * others get 503 with Retry-After (s) and retry-after-ms from the backlog,
 * spaced by the time one request takes, so that retrying when told (as
 * OpenAI's clients do, at most twice) gets every request answered. */
#define BURST 8
typedef struct burst_req {
    const node_proc *n;
    int id, tries;
    long status;
    double retry_ms[3];
    char retry_after[3][16];
    char refusal[200];
} burst_req;

static void *burst_post(void *arg) {
    burst_req *b = arg;
    char body[128];
    snprintf(body, sizeof body, "{\"prompt\":\"Burst request %d\",\"max_tokens\":2,\"temperature\":0}", b->id);
    for (b->tries = 0; b->tries < 3; b->tries++) {
        resp r = http(b->n, "POST", "/v1/completions", body, NULL);
        b->status = r.status;
        if (r.status == 503) {
            b->retry_ms[b->tries] = atof(r.retry_after_ms);
            snprintf(b->retry_after[b->tries], sizeof b->retry_after[0], "%s", r.retry_after);
            json_t *j = parse(&r);
            snprintf(b->refusal, sizeof b->refusal, "%s",
                     json_string_value(json_object_get(json_object_get(j, "error"), "message")));
            json_decref(j);
        }
        free(r.body);
        if (b->status != 503) break;
        usleep((useconds_t)(b->retry_ms[b->tries] * 1000));
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_burst_retry_after(void **state) {
    node_proc n = node_start("--slowdown", "10", "--queue", "16", "--max-wait", "1", NULL);
    for (int i = 0; i < 2; i++) { /* the node measures how long a request takes */
        resp w = http(&n, "POST", "/v1/completions", "{\"prompt\":\"Warm up\",\"max_tokens\":2,\"temperature\":0}", NULL);
        assert_int_equal(w.status, 200);
        free(w.body);
    }
    burst_req b[BURST];
    pthread_t t[BURST];
    for (int i = 0; i < BURST; i++) {
        b[i] = (burst_req){.n = &n, .id = i};
        pthread_create(&t[i], NULL, burst_post, &b[i]);
    }
    double first_retry[BURST];
    int refused = 0, retries = 0;
    for (int i = 0; i < BURST; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(b[i].status, 200); /* answered, after at most 2 retries */
        retries += b[i].tries;
        for (int k = 0; k < b[i].tries; k++) { /* each 503: Retry-After = ceil(retry-after-ms / 1000) >= 1 */
            char expect[16];
            snprintf(expect, sizeof expect, "%.0f", b[i].retry_ms[k] < 1000 ? 1 : ceil(b[i].retry_ms[k] / 1000));
            assert_true(b[i].retry_ms[k] > 0 && b[i].retry_ms[k] < 30000);
            assert_string_equal(b[i].retry_after[k], expect);
        }
        if (b[i].tries > 0) {
            first_retry[refused++] = b[i].retry_ms[0];
            assert_non_null(strstr(b[i].refusal, "estimated wait")); /* by the wait, not the queue's 16 places */
        }
    }
    qsort(first_retry, (size_t)refused, sizeof *first_retry, cmp_double);
    print_message("burst of %d: %d refused at first, %d retries in all; retry-after-ms %.0f .. %.0f\n", BURST, refused,
                  retries, refused ? first_retry[0] : 0, refused ? first_retry[refused - 1] : 0);
    assert_true(refused >= 3);
    for (int i = 1; i < refused; i++) /* one turn apart, not all at once */
        assert_true(first_retry[i] - first_retry[i - 1] > 50);
    assert_int_equal((int)metric(&n, "kvmesh_requests_total{result=\"completed\"}"), 2 + BURST);
    assert_int_equal(node_stop(&n), 0);
}

int main(void) {
    if (access(tu_model("tiny-f16.gguf"), R_OK) != 0) {
        printf("SKIP: test models missing\n");
        return 0;
    }
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_models_and_health),
        cmocka_unit_test(test_completion_cached_equals_cold),
        cmocka_unit_test(test_max_tokens_zero),
        cmocka_unit_test(test_cache_segments_partial_hit),
        cmocka_unit_test(test_stream_equals_plain),
        cmocka_unit_test(test_chat),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_stop_string),
        cmocka_unit_test(test_metrics),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_api_key),
        cmocka_unit_test(test_refuses_open_listen_without_secrets),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_busy_and_graceful_stop),
        cmocka_unit_test(test_parallel_contexts),
        cmocka_unit_test(test_backlog_counts_work),
        cmocka_unit_test(test_client_disconnect),
        cmocka_unit_test(test_slowloris),
        cmocka_unit_test(test_per_ip_limit),
        cmocka_unit_test(test_disconnect_cancels_plain_request),
        cmocka_unit_test(test_long_prompt_refused_before_tokenizing),
        cmocka_unit_test(test_burst_retry_after),
    };
    int failed = cmocka_run_group_tests_name("shared node", shared, group_setup, group_teardown);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    failed += cmocka_run_group_tests_name("own nodes", own, NULL, NULL);
    curl_global_cleanup();
    return failed;
}
