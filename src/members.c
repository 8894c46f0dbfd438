/* members.c -- see members.h.
 *
 * The table is a plain array, our own record at index 0, peers after it in
 * the order they joined. With at most a few hundred members, linear searches
 * by id cost less than keeping an index in step; a merge of a full message is
 * 256 x 256 short strcmp's.
 *
 * A merge decodes and validates the whole message (km_gossip_decode) before
 * it takes the lock, then applies records that can no longer fail: an invalid
 * message leaves the table exactly as it was, and the lock is never held while
 * parsing untrusted bytes. Encoding likewise copies the records under the lock
 * and builds the JSON outside it. */
#include "members.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netallow.h"

#define GOSSIP_VERSION 1
#define GOSSIP_MAX_DEPTH 16
/* Upper bound of one encoded record (longest id and addr, 19-digit integers,
 * 24-character real, model): a message of max_members records always fits
 * max_members * this many bytes. */
#define RECORD_MAX_BYTES 1024

struct km_members {
    pthread_mutex_t mu;
    km_members_params p;
    km_member *recs; /* recs[0] is ours; n <= p.max_members */
    int n;
    char (*seeds)[KM_MEMBER_ADDR_MAX + 1];
    int n_seeds;
    km_members_stats st; /* counters only; the counts are computed on demand */
    bool twin_logged;
    uint64_t twin_inc; /* the twin incarnation last logged (log once per incarnation) */
};

km_members_params km_members_default_params(void) {
    km_members_params p = {
        .suspect_ms = 3000,
        .dead_ms = 10000,
        .forget_ms = 60000,
        .max_members = 256,
        .max_message_bytes = 1u << 20,
    };
    return p;
}

const char *km_member_state_name(km_member_state s) {
    switch (s) {
    case KM_MEMBER_ALIVE: return "alive";
    case KM_MEMBER_SUSPECT: return "suspect";
    case KM_MEMBER_DEAD: return "dead";
    }
    return "?";
}

/* ---------------------------------------------------------- validators */

/* The checks write the problem without a prefix; callers add where it was. */

static bool id_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

int km_member_check_id(const char *id, km_error *err) {
    if (!id) return km_error_set(err, "missing id");
    size_t n = strnlen(id, KM_MEMBER_ID_MAX + 1);
    if (n == 0) return km_error_set(err, "empty id");
    if (n > KM_MEMBER_ID_MAX) return km_error_set(err, "id longer than %d characters", KM_MEMBER_ID_MAX);
    for (size_t i = 0; i < n; i++)
        if (!id_char(id[i]))
            return km_error_set(err, "id has a character outside [A-Za-z0-9_.-] at offset %zu", i);
    return 0;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Dotted quad, each part 0-255 without leading zeros (which some resolvers read as octal). */
static int check_ipv4(const char *h, size_t n, km_error *err) {
    int parts = 0;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && is_digit(h[j])) j++;
        size_t len = j - i;
        if (len == 0 || len > 3) return km_error_set(err, "bad IPv4 address");
        if (len > 1 && h[i] == '0') return km_error_set(err, "IPv4 part with a leading zero");
        int v = 0;
        for (size_t k = i; k < j; k++) v = v * 10 + (h[k] - '0');
        if (v > 255) return km_error_set(err, "IPv4 part %d out of range 0-255", v);
        parts++;
        if (j == n) break;
        if (h[j] != '.') return km_error_set(err, "bad IPv4 address");
        i = j + 1;
        if (i == n) return km_error_set(err, "bad IPv4 address");
    }
    if (parts != 4) return km_error_set(err, "IPv4 address with %d parts (4 expected)", parts);
    return 0;
}

/* RFC 1123 host names; '_' is allowed too (container and service names use it). */
static int check_hostname(const char *h, size_t n, km_error *err) {
    if (n > 253) return km_error_set(err, "host name longer than 253 characters");
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && h[j] != '.') {
            char c = h[j];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_'))
                return km_error_set(err, "host has a character outside [A-Za-z0-9._-] at offset %zu", j);
            j++;
        }
        size_t len = j - i;
        if (len == 0) return km_error_set(err, "host has an empty label");
        if (len > 63) return km_error_set(err, "host label longer than 63 characters");
        if (h[i] == '-' || h[j - 1] == '-') return km_error_set(err, "host label starts or ends with '-'");
        if (j == n) break;
        i = j + 1;
        if (i == n) return km_error_set(err, "host has an empty label");
    }
    return 0;
}

/* [IPv6] with an optional zone ("[fe80::1%eth0]"); h excludes the brackets. */
static int check_ipv6(const char *h, size_t n, km_error *err) {
    char buf[64];
    size_t alen = n;
    const char *pct = memchr(h, '%', n);
    if (pct) {
        alen = (size_t)(pct - h);
        size_t zlen = n - alen - 1;
        if (zlen == 0 || zlen > 15) return km_error_set(err, "bad IPv6 zone");
        for (size_t i = 0; i < zlen; i++)
            if (!id_char(pct[1 + i])) return km_error_set(err, "bad IPv6 zone");
    }
    if (alen == 0 || alen >= sizeof buf) return km_error_set(err, "bad IPv6 address");
    memcpy(buf, h, alen);
    buf[alen] = 0;
    unsigned char out[16];
    if (inet_pton(AF_INET6, buf, out) != 1) return km_error_set(err, "bad IPv6 address");
    return 0;
}

int km_member_check_addr(const char *addr, km_error *err) {
    if (!addr) return km_error_set(err, "missing address");
    size_t n = strnlen(addr, KM_MEMBER_ADDR_MAX + 1);
    if (n == 0) return km_error_set(err, "empty address");
    if (n > KM_MEMBER_ADDR_MAX) return km_error_set(err, "address longer than %d characters", KM_MEMBER_ADDR_MAX);
    const char *colon;
    if (addr[0] == '[') {
        const char *close = memchr(addr, ']', n);
        if (!close) return km_error_set(err, "'[' without ']'");
        if (check_ipv6(addr + 1, (size_t)(close - addr - 1), err) != 0) return -1;
        if (close[1] != ':') return km_error_set(err, "no ':port' after ']'");
        colon = close + 1;
    } else {
        colon = NULL;
        for (size_t i = n; i-- > 0;)
            if (addr[i] == ':') {
                colon = addr + i;
                break;
            }
        if (!colon) return km_error_set(err, "no ':port' (host:port expected)");
        size_t hlen = (size_t)(colon - addr);
        if (hlen == 0) return km_error_set(err, "empty host");
        if (memchr(addr, ':', hlen)) return km_error_set(err, "IPv6 addresses need brackets ([::1]:port)");
        bool numeric = true;
        for (size_t i = 0; i < hlen; i++)
            if (!is_digit(addr[i]) && addr[i] != '.') numeric = false;
        if ((numeric ? check_ipv4(addr, hlen, err) : check_hostname(addr, hlen, err)) != 0) return -1;
    }
    const char *port = colon + 1;
    size_t plen = n - (size_t)(port - addr);
    if (plen == 0) return km_error_set(err, "empty port");
    if (plen > 5) return km_error_set(err, "port out of range 1-65535");
    long v = 0;
    for (size_t i = 0; i < plen; i++) {
        if (!is_digit(port[i])) return km_error_set(err, "port is not a number");
        v = v * 10 + (port[i] - '0');
    }
    if (plen > 1 && port[0] == '0') return km_error_set(err, "port with a leading zero");
    if (v < 1 || v > 65535) return km_error_set(err, "port %ld out of range 1-65535", v);
    return 0;
}

static int check_params(const km_members_params *p, km_error *err) {
    if (!(p->suspect_ms > 0 && isfinite(p->suspect_ms)))
        return km_error_set(err, "members: suspect_ms must be positive");
    if (!(p->dead_ms > p->suspect_ms && isfinite(p->dead_ms)))
        return km_error_set(err, "members: dead_ms must be larger than suspect_ms");
    if (!(p->forget_ms >= 0 && isfinite(p->forget_ms)))
        return km_error_set(err, "members: forget_ms must be >= 0");
    if (p->max_members < 2 || p->max_members > 65536)
        return km_error_set(err, "members: max_members %d out of range 2-65536", p->max_members);
    if (p->max_message_bytes < (size_t)p->max_members * RECORD_MAX_BYTES || p->max_message_bytes > (1u << 30))
        return km_error_set(err, "members: max_message_bytes must be in %zu..%u for %d members",
                            (size_t)p->max_members * RECORD_MAX_BYTES, 1u << 30, p->max_members);
    return 0;
}

/* ---------------------------------------------------------- records */

static int cmp_version(uint64_t inc_a, uint64_t hb_a, uint64_t inc_b, uint64_t hb_b) {
    if (inc_a != inc_b) return inc_a < inc_b ? -1 : 1;
    if (hb_a != hb_b) return hb_a < hb_b ? -1 : 1;
    return 0;
}

static int clamp_load(int v) { return v < 0 ? 0 : v > KM_MEMBER_LOAD_MAX ? KM_MEMBER_LOAD_MAX : v; }
static int clamp_backlog(int v) { return v < 0 ? 0 : v > KM_MEMBER_BACKLOG_MAX ? KM_MEMBER_BACKLOG_MAX : v; }

static double clamp_link(double v) {
    if (!isfinite(v) || v <= 0) return 0.0;
    return v > KM_MEMBER_LINK_MAX ? KM_MEMBER_LINK_MAX : v;
}

static double clamp_rate(double r) {
    if (!isfinite(r) || r <= 0) return 0.0; /* also turns -0 into 0 */
    return r > KM_MEMBER_RATE_MAX ? KM_MEMBER_RATE_MAX : r;
}

/* Copy the gossiped fields of src into dst (local fields untouched). */
static void copy_gossiped(km_member *dst, const km_member *src) {
    memcpy(dst->id, src->id, sizeof dst->id);
    memcpy(dst->addr, src->addr, sizeof dst->addr);
    dst->incarnation = src->incarnation;
    dst->heartbeat = src->heartbeat;
    dst->catalog_version = src->catalog_version;
    dst->load = src->load;
    dst->prefill_tok_s = src->prefill_tok_s;
    dst->link_rtt_ms = src->link_rtt_ms;
    dst->link_mbit = src->link_mbit;
    dst->n_pending = src->n_pending;
    memcpy(dst->pending, src->pending, sizeof dst->pending);
    dst->has_model = src->has_model;
    memcpy(dst->model, src->model, sizeof dst->model);
}

static bool same_model(const km_member *self, const km_member *r) {
    return self->has_model && r->has_model && memcmp(self->model, r->model, KM_FINGERPRINT_LEN) == 0;
}

km_members *km_members_new(const km_member *self, const km_members_params *p, km_error *err) {
    km_members_params def = km_members_default_params();
    if (!p) p = &def;
    if (check_params(p, err) != 0) return NULL;
    if (!self) {
        km_error_set(err, "members: no record for this node");
        return NULL;
    }
    km_error e;
    if (km_member_check_id(self->id, &e) != 0) {
        km_error_set(err, "members: our id: %s", e.msg);
        return NULL;
    }
    if (km_member_check_addr(self->addr, &e) != 0) {
        km_error_set(err, "members: our address '%.255s': %s", self->addr, e.msg);
        return NULL;
    }
    if (self->incarnation > KM_MEMBER_U64_MAX || self->heartbeat > KM_MEMBER_U64_MAX) {
        km_error_set(err, "members: our incarnation and heartbeat must be < 2^63");
        return NULL;
    }
    km_members *m = calloc(1, sizeof *m);
    if (m) m->recs = calloc((size_t)p->max_members, sizeof *m->recs);
    if (m) m->seeds = calloc(KM_MEMBERS_MAX_SEEDS, sizeof *m->seeds);
    if (!m || !m->recs || !m->seeds) {
        if (m) free(m->recs);
        free(m);
        km_error_set(err, "members: out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m->seeds);
        free(m->recs);
        free(m);
        km_error_set(err, "members: mutex init failed");
        return NULL;
    }
    m->p = *p;
    km_member *s = &m->recs[0];
    copy_gossiped(s, self);
    s->catalog_version = s->catalog_version > KM_MEMBER_U64_MAX ? KM_MEMBER_U64_MAX : s->catalog_version;
    s->load.queued = clamp_load(s->load.queued);
    s->load.running = clamp_load(s->load.running);
    s->load.parallel = clamp_load(s->load.parallel);
    s->load.queue_max = clamp_load(s->load.queue_max);
    s->load.backlog_ms = clamp_backlog(s->load.backlog_ms);
    s->prefill_tok_s = clamp_rate(s->prefill_tok_s);
    s->link_rtt_ms = clamp_link(s->link_rtt_ms);
    s->link_mbit = clamp_link(s->link_mbit);
    s->state = KM_MEMBER_ALIVE;
    s->self = true;
    s->same_model = s->has_model;
    m->n = 1;
    return m;
}

void km_members_free(km_members *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m->seeds);
    free(m->recs);
    free(m);
}

/* ---------------------------------------------------------- seeds, self */

int km_members_add_seed(km_members *m, const char *addr, km_error *err) {
    km_error e;
    if (km_member_check_addr(addr, &e) != 0) return km_error_set(err, "seed '%.255s': %s", addr ? addr : "", e.msg);
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    bool dup = strcmp(addr, m->recs[0].addr) == 0; /* our own address: the same --peers list everywhere */
    for (int i = 0; i < m->n_seeds && !dup; i++) dup = strcmp(m->seeds[i], addr) == 0;
    if (!dup) {
        if (m->n_seeds == KM_MEMBERS_MAX_SEEDS)
            rc = km_error_set(err, "seed '%s': more than %d seeds", addr, KM_MEMBERS_MAX_SEEDS);
        else
            snprintf(m->seeds[m->n_seeds++], KM_MEMBER_ADDR_MAX + 1, "%s", addr);
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int km_members_add_seed_list(km_members *m, const char *list, km_error *err) {
    if (!list) return 0;
    int k = 0;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && *a == ' ') a++;
        while (b > a && b[-1] == ' ') b--;
        k++;
        if (b > a) {
            char buf[KM_MEMBER_ADDR_MAX + 2];
            size_t n = (size_t)(b - a);
            if (n > KM_MEMBER_ADDR_MAX) return km_error_set(err, "peer list entry %d: address longer than %d characters", k, KM_MEMBER_ADDR_MAX);
            memcpy(buf, a, n);
            buf[n] = 0;
            km_error e;
            if (km_members_add_seed(m, buf, &e) != 0) return km_error_set(err, "peer list entry %d: %s", k, e.msg);
        }
        if (!*end) break;
        p = end + 1;
    }
    return 0;
}

void km_members_update_self(km_members *m, uint64_t catalog_version, const km_member_load *load,
                            double prefill_tok_s) {
    pthread_mutex_lock(&m->mu);
    km_member *s = &m->recs[0];
    /* km_catalog versions saturate at UINT64_MAX; the wire holds 2^63-1. */
    s->catalog_version = catalog_version > KM_MEMBER_U64_MAX ? KM_MEMBER_U64_MAX : catalog_version;
    if (load) {
        s->load.queued = clamp_load(load->queued);
        s->load.running = clamp_load(load->running);
        s->load.parallel = clamp_load(load->parallel);
        s->load.queue_max = clamp_load(load->queue_max);
        s->load.backlog_ms = clamp_backlog(load->backlog_ms);
    }
    s->prefill_tok_s = clamp_rate(prefill_tok_s);
    pthread_mutex_unlock(&m->mu);
}

void km_members_update_link(km_members *m, double rtt_ms, double mbit) {
    pthread_mutex_lock(&m->mu);
    m->recs[0].link_rtt_ms = clamp_link(rtt_ms);
    m->recs[0].link_mbit = clamp_link(mbit);
    pthread_mutex_unlock(&m->mu);
}

void km_members_update_pending(km_members *m, const km_key *keys, int n) {
    if (n < 0) n = 0;
    if (n > KM_MEMBER_PENDING_MAX) n = KM_MEMBER_PENDING_MAX;
    pthread_mutex_lock(&m->mu);
    memcpy(m->recs[0].pending, keys, (size_t)n * sizeof *keys);
    m->recs[0].n_pending = n;
    pthread_mutex_unlock(&m->mu);
}

void km_members_beat(km_members *m) {
    pthread_mutex_lock(&m->mu);
    if (m->recs[0].heartbeat < KM_MEMBER_U64_MAX) m->recs[0].heartbeat++;
    pthread_mutex_unlock(&m->mu);
}

/* ---------------------------------------------------------- codec */

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* Deepest nesting of arrays and objects, scanning strings correctly; stops
 * early once past limit. Run before jansson so that it never recurses deep. */
static int nesting_depth(const char *s, size_t len, int limit) {
    int depth = 0, max = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max) max = depth;
            if (max > limit) return max;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return max;
}

/* A field of members[i] (i < 0: of the message itself) for error messages. */
typedef struct field_ctx {
    int i;
    const char *key;
} field_ctx;

static int field_error(km_error *err, field_ctx f, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int field_error(km_error *err, field_ctx f, const char *fmt, ...) {
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (f.i < 0) return km_error_set(err, "gossip: %s: %s", f.key, what);
    return km_error_set(err, "gossip: members[%d].%s: %s", f.i, f.key, what);
}

static int missing(km_error *err, int i, const char *key) {
    if (i < 0) return km_error_set(err, "gossip: missing \"%s\"", key);
    return km_error_set(err, "gossip: members[%d]: missing \"%s\"", i, key);
}

static int get_int(const json_t *obj, int i, const char *key, json_int_t max, json_int_t *out, km_error *err) {
    const json_t *v = json_object_get(obj, key);
    field_ctx f = {i, key};
    if (!v) return missing(err, i, key);
    if (!json_is_integer(v)) return field_error(err, f, "expected an integer, got %s", json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > max) return field_error(err, f, "%lld out of range 0..%lld", (long long)x, (long long)max);
    *out = x;
    return 0;
}

/* A number (integer or real) in 0..max; -0 becomes 0, so records compare
 * bitwise after a round trip. */
static int get_real(const json_t *obj, int i, const char *key, double max, double *out, km_error *err) {
    const json_t *v = json_object_get(obj, key);
    field_ctx f = {i, key};
    if (!v) return missing(err, i, key);
    if (!json_is_number(v)) return field_error(err, f, "expected a number, got %s", json_type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < 0 || x > max) return field_error(err, f, "%g out of range 0..%g", x, max);
    *out = x == 0 ? 0.0 : x;
    return 0;
}

static int get_string(const json_t *obj, int i, const char *key, const char **out, km_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v) return missing(err, i, key);
    if (!json_is_string(v)) return field_error(err, (field_ctx){i, key}, "expected a string, got %s", json_type_name(v));
    /* jansson rejects \u0000 by default, so the C string is the whole value. */
    *out = json_string_value(v);
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int decode_record(const json_t *o, int i, km_member *r, km_error *err) {
    km_error e;
    const char *s;
    json_int_t x;
    if (!json_is_object(o)) return km_error_set(err, "gossip: members[%d]: expected an object, got %s", i, json_type_name(o));
    memset(r, 0, sizeof *r);

    if (get_string(o, i, "id", &s, err) != 0) return -1;
    if (km_member_check_id(s, &e) != 0) return field_error(err, (field_ctx){i, "id"}, "%s", e.msg);
    strcpy(r->id, s);
    if (get_string(o, i, "addr", &s, err) != 0) return -1;
    if (km_member_check_addr(s, &e) != 0) return field_error(err, (field_ctx){i, "addr"}, "%s", e.msg);
    strcpy(r->addr, s);

    if (get_int(o, i, "incarnation", INT64_MAX, &x, err) != 0) return -1;
    r->incarnation = (uint64_t)x;
    if (get_int(o, i, "heartbeat", INT64_MAX, &x, err) != 0) return -1;
    r->heartbeat = (uint64_t)x;
    if (get_int(o, i, "catalog_version", INT64_MAX, &x, err) != 0) return -1;
    r->catalog_version = (uint64_t)x;
    if (get_int(o, i, "queued", KM_MEMBER_LOAD_MAX, &x, err) != 0) return -1;
    r->load.queued = (int)x;
    if (get_int(o, i, "running", KM_MEMBER_LOAD_MAX, &x, err) != 0) return -1;
    r->load.running = (int)x;
    if (get_int(o, i, "parallel", KM_MEMBER_LOAD_MAX, &x, err) != 0) return -1;
    r->load.parallel = (int)x;
    if (get_int(o, i, "queue_max", KM_MEMBER_LOAD_MAX, &x, err) != 0) return -1;
    r->load.queue_max = (int)x;
    if (get_int(o, i, "backlog_ms", KM_MEMBER_BACKLOG_MAX, &x, err) != 0) return -1;
    r->load.backlog_ms = (int)x;

    if (get_real(o, i, "prefill_tok_s", KM_MEMBER_RATE_MAX, &r->prefill_tok_s, err) != 0) return -1;
    if (get_real(o, i, "link_rtt_ms", KM_MEMBER_LINK_MAX, &r->link_rtt_ms, err) != 0) return -1;
    if (get_real(o, i, "link_mbit", KM_MEMBER_LINK_MAX, &r->link_mbit, err) != 0) return -1;

    const json_t *v = json_object_get(o, "pending");
    field_ctx fp = {i, "pending"};
    if (!v) return missing(err, i, "pending");
    if (!json_is_array(v)) return field_error(err, fp, "expected an array, got %s", json_type_name(v));
    if (json_array_size(v) > KM_MEMBER_PENDING_MAX)
        return field_error(err, fp, "%zu keys, at most %d", json_array_size(v), KM_MEMBER_PENDING_MAX);
    for (size_t k = 0; k < json_array_size(v); k++) {
        const json_t *key = json_array_get(v, k);
        if (!json_is_string(key) || json_string_length(key) != 2 * KM_KEY_LEN)
            return field_error(err, fp, "[%zu]: expected %d lowercase hex digits", k, 2 * KM_KEY_LEN);
        s = json_string_value(key);
        for (int b = 0; b < KM_KEY_LEN; b++) {
            int hi = hexval(s[2 * b]), lo = hexval(s[2 * b + 1]);
            if (hi < 0 || lo < 0) return field_error(err, fp, "[%zu]: expected %d lowercase hex digits", k, 2 * KM_KEY_LEN);
            r->pending[k].b[b] = (uint8_t)(hi << 4 | lo);
        }
    }
    r->n_pending = (int)json_array_size(v);

    v = json_object_get(o, "model");
    if (v) {
        field_ctx fm = {i, "model"};
        if (!json_is_string(v)) return field_error(err, fm, "expected a string, got %s", json_type_name(v));
        s = json_string_value(v);
        if (json_string_length(v) != 2 * KM_FINGERPRINT_LEN)
            return field_error(err, fm, "expected %d lowercase hex digits", 2 * KM_FINGERPRINT_LEN);
        for (int k = 0; k < KM_FINGERPRINT_LEN; k++) {
            int hi = hexval(s[2 * k]), lo = hexval(s[2 * k + 1]);
            if (hi < 0 || lo < 0) return field_error(err, fm, "expected %d lowercase hex digits", 2 * KM_FINGERPRINT_LEN);
            r->model[k] = (uint8_t)(hi << 4 | lo);
        }
        r->has_model = true;
    }
    return 0;
}

void km_gossip_msg_free(km_gossip_msg *msg) {
    if (!msg) return;
    free(msg->members);
    msg->members = NULL;
    msg->n = 0;
}

int km_gossip_decode(const char *json, size_t len, const km_members_params *p, km_gossip_msg *out,
                     km_error *err) {
    km_members_params def = km_members_default_params();
    if (!p) p = &def;
    memset(out, 0, sizeof *out);
    if (!json || len == 0) return km_error_set(err, "gossip: empty message");
    if (len > p->max_message_bytes)
        return km_error_set(err, "gossip: message of %zu bytes exceeds the limit of %zu", len, p->max_message_bytes);
    if (nesting_depth(json, len, GOSSIP_MAX_DEPTH) > GOSSIP_MAX_DEPTH)
        return km_error_set(err, "gossip: nested deeper than %d levels", GOSSIP_MAX_DEPTH);

    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return km_error_set(err, "gossip: invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    int rc = -1;
    km_member *recs = NULL;
    const char *from;
    km_error e;
    if (!json_is_object(root)) {
        km_error_set(err, "gossip: expected an object, got %s", json_type_name(root));
        goto done;
    }
    /* The version first: a v2 message may differ in anything else. */
    const json_t *v = json_object_get(root, "v");
    if (!v) {
        missing(err, -1, "v");
        goto done;
    }
    if (!json_is_integer(v)) {
        field_error(err, (field_ctx){-1, "v"}, "expected an integer, got %s", json_type_name(v));
        goto done;
    }
    if (json_integer_value(v) != GOSSIP_VERSION) {
        field_error(err, (field_ctx){-1, "v"}, "unsupported version %lld (this node speaks %d)",
                    (long long)json_integer_value(v), GOSSIP_VERSION);
        goto done;
    }
    if (get_string(root, -1, "from", &from, err) != 0) goto done;
    if (km_member_check_id(from, &e) != 0) {
        field_error(err, (field_ctx){-1, "from"}, "%s", e.msg);
        goto done;
    }
    const json_t *arr = json_object_get(root, "members");
    if (!arr) {
        missing(err, -1, "members");
        goto done;
    }
    if (!json_is_array(arr)) {
        field_error(err, (field_ctx){-1, "members"}, "expected an array, got %s", json_type_name(arr));
        goto done;
    }
    size_t n = json_array_size(arr);
    if (n > (size_t)p->max_members) {
        field_error(err, (field_ctx){-1, "members"}, "%zu records exceed the limit of %d", n, p->max_members);
        goto done;
    }
    recs = calloc(n ? n : 1, sizeof *recs);
    if (!recs) {
        km_error_set(err, "gossip: out of memory");
        goto done;
    }
    bool from_found = false;
    for (size_t i = 0; i < n; i++) {
        if (decode_record(json_array_get(arr, i), (int)i, &recs[i], err) != 0) goto done;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(recs[j].id, recs[i].id) == 0) {
                field_error(err, (field_ctx){(int)i, "id"}, "\"%s\" is also members[%zu]", recs[i].id, j);
                goto done;
            }
        }
        if (strcmp(recs[i].id, from) == 0) from_found = true;
    }
    if (!from_found) {
        field_error(err, (field_ctx){-1, "from"}, "no record for \"%s\" in members", from);
        goto done;
    }
    strcpy(out->from, from);
    out->members = recs;
    out->n = (int)n;
    recs = NULL;
    rc = 0;
done:
    free(recs);
    json_decref(root);
    return rc;
}

/* Set obj[key] = value, taking the reference; false on allocation failure. */
static bool put(json_t *obj, const char *key, json_t *value) {
    return value && json_object_set_new(obj, key, value) == 0;
}

static json_t *encode_record(const km_member *r) {
    json_t *o = json_object();
    if (!o) return NULL;
    bool ok = put(o, "id", json_string(r->id)) && put(o, "addr", json_string(r->addr)) &&
              put(o, "incarnation", json_integer((json_int_t)r->incarnation)) &&
              put(o, "heartbeat", json_integer((json_int_t)r->heartbeat)) &&
              put(o, "catalog_version", json_integer((json_int_t)r->catalog_version)) &&
              put(o, "queued", json_integer(r->load.queued)) && put(o, "running", json_integer(r->load.running)) &&
              put(o, "parallel", json_integer(r->load.parallel)) &&
              put(o, "queue_max", json_integer(r->load.queue_max)) &&
              put(o, "backlog_ms", json_integer(r->load.backlog_ms)) &&
              put(o, "prefill_tok_s", json_real(r->prefill_tok_s)) &&
              put(o, "link_rtt_ms", json_real(r->link_rtt_ms)) && put(o, "link_mbit", json_real(r->link_mbit));
    json_t *pend = ok ? json_array() : NULL;
    for (int k = 0; pend && k < r->n_pending; k++) {
        char hex[2 * KM_KEY_LEN + 1];
        km_key_hex(r->pending[k], hex);
        if (json_array_append_new(pend, json_string(hex)) != 0) {
            json_decref(pend);
            pend = NULL;
        }
    }
    ok = ok && put(o, "pending", pend);
    if (ok && r->has_model) {
        char hex[2 * KM_FINGERPRINT_LEN + 1];
        for (int k = 0; k < KM_FINGERPRINT_LEN; k++) snprintf(hex + 2 * k, 3, "%02x", r->model[k]);
        ok = put(o, "model", json_string(hex));
    }
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* What the decoder would reject, so that we never send it (the problem, no prefix). */
static int check_record(const km_member *r, km_error *err) {
    km_error e;
    if (km_member_check_id(r->id, &e) != 0) return km_error_set(err, "id: %s", e.msg);
    if (km_member_check_addr(r->addr, &e) != 0) return km_error_set(err, "addr: %s", e.msg);
    if (r->incarnation > KM_MEMBER_U64_MAX || r->heartbeat > KM_MEMBER_U64_MAX || r->catalog_version > KM_MEMBER_U64_MAX)
        return km_error_set(err, "a version field exceeds 2^63-1");
    const int l[4] = {r->load.queued, r->load.running, r->load.parallel, r->load.queue_max};
    for (int k = 0; k < 4; k++)
        if (l[k] < 0 || l[k] > KM_MEMBER_LOAD_MAX) return km_error_set(err, "load %d out of range", l[k]);
    if (r->load.backlog_ms < 0 || r->load.backlog_ms > KM_MEMBER_BACKLOG_MAX)
        return km_error_set(err, "backlog_ms %d out of range", r->load.backlog_ms);
    if (!isfinite(r->prefill_tok_s) || r->prefill_tok_s < 0 || r->prefill_tok_s > KM_MEMBER_RATE_MAX)
        return km_error_set(err, "prefill_tok_s %g out of range", r->prefill_tok_s);
    const double lk[2] = {r->link_rtt_ms, r->link_mbit};
    for (int k = 0; k < 2; k++)
        if (!isfinite(lk[k]) || lk[k] < 0 || lk[k] > KM_MEMBER_LINK_MAX)
            return km_error_set(err, "link estimate %g out of range", lk[k]);
    if (r->n_pending < 0 || r->n_pending > KM_MEMBER_PENDING_MAX)
        return km_error_set(err, "%d pending keys, at most %d", r->n_pending, KM_MEMBER_PENDING_MAX);
    return 0;
}

int km_gossip_encode(const char *from, const km_member *members, int n, char **json, size_t *len,
                     km_error *err) {
    *json = NULL;
    *len = 0;
    km_error e;
    if (km_member_check_id(from, &e) != 0) return km_error_set(err, "gossip encode: from: %s", e.msg);
    bool from_found = false;
    for (int i = 0; i < n; i++) {
        if (check_record(&members[i], &e) != 0) return km_error_set(err, "gossip encode: members[%d].%s", i, e.msg);
        if (strcmp(members[i].id, from) == 0) from_found = true;
    }
    if (!from_found) return km_error_set(err, "gossip encode: no record for the sender \"%s\"", from);

    json_t *root = json_object(), *arr = json_array();
    bool ok = root && arr && put(root, "v", json_integer(GOSSIP_VERSION)) && put(root, "from", json_string(from));
    if (ok) {
        ok = json_object_set(root, "members", arr) == 0;
    }
    for (int i = 0; ok && i < n; i++) {
        json_t *o = encode_record(&members[i]);
        ok = o && json_array_append_new(arr, o) == 0;
    }
    /* Compact, fields in insertion order; reals with 17 digits, which read back exactly. */
    char *s = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(arr);
    json_decref(root);
    if (!s) return km_error_set(err, "gossip encode: out of memory");
    *json = s;
    *len = strlen(s);
    return 0;
}

int km_members_encode(km_members *m, char **json, size_t *len, km_error *err) {
    *json = NULL;
    *len = 0;
    pthread_mutex_lock(&m->mu);
    km_member *copy = malloc((size_t)m->n * sizeof *copy);
    int n = 0;
    char from[KM_MEMBER_ID_MAX + 1];
    memcpy(from, m->recs[0].id, sizeof from);
    if (copy) {
        for (int i = 0; i < m->n; i++)
            if (m->recs[i].self || m->recs[i].state != KM_MEMBER_DEAD) copy[n++] = m->recs[i];
    }
    pthread_mutex_unlock(&m->mu);
    if (!copy) return km_error_set(err, "gossip encode: out of memory");
    int rc = km_gossip_encode(from, copy, n, json, len, err);
    free(copy);
    if (rc == 0 && *len > m->p.max_message_bytes) { /* cannot happen: check_params bounds it */
        free(*json);
        *json = NULL;
        *len = 0;
        return km_error_set(err, "gossip encode: message larger than max_message_bytes");
    }
    return rc;
}

/* ---------------------------------------------------------- merge, tick */

static int find(const km_members *m, const char *id) {
    for (int i = 1; i < m->n; i++)
        if (strcmp(m->recs[i].id, id) == 0) return i;
    return -1;
}

/* A slot for a new member: a free one, else the DEAD member heard of least recently; -1 if none. */
static int free_slot(km_members *m) {
    if (m->n < m->p.max_members) return m->n++;
    int best = -1;
    for (int i = 1; i < m->n; i++)
        if (m->recs[i].state == KM_MEMBER_DEAD && (best < 0 || m->recs[i].last_heard_ms < m->recs[best].last_heard_ms))
            best = i;
    if (best >= 0) km_debug("mesh: member %s (dead) makes room for a new one", m->recs[best].id);
    return best;
}

static void note_twin(km_members *m, const km_member *r) {
    const km_member *s = &m->recs[0];
    if (cmp_version(r->incarnation, r->heartbeat, s->incarnation, s->heartbeat) <= 0) return; /* an old copy of us */
    m->st.twin_records++;
    if (m->twin_logged && m->twin_inc == r->incarnation) return;
    m->twin_logged = true;
    m->twin_inc = r->incarnation;
    km_warn("mesh: another node uses our id %s (at %s, incarnation %" PRIu64 ", heartbeat %" PRIu64
            "; ours: incarnation %" PRIu64 ", heartbeat %" PRIu64 "); ignoring its records",
            r->id, r->addr, r->incarnation, r->heartbeat, s->incarnation, s->heartbeat);
}

int km_members_merge(km_members *m, const char *json, size_t len, double now_ms,
                     km_member_change *changes, int max_changes, km_error *err) {
    km_gossip_msg msg;
    if (km_gossip_decode(json, len, &m->p, &msg, err) != 0) {
        pthread_mutex_lock(&m->mu);
        m->st.rejected++;
        pthread_mutex_unlock(&m->mu);
        return -1;
    }
    int n_changed = 0;
    pthread_mutex_lock(&m->mu);
    m->st.merged++;
    const km_member *self = &m->recs[0];
    for (int k = 0; k < msg.n; k++) {
        const km_member *r = &msg.members[k];
        if (strcmp(r->id, self->id) == 0) {
            note_twin(m, r);
            continue;
        }
        if (m->p.allow && !km_netallow_check(m->p.allow, r->addr)) {
            if (m->st.ignored_addr++ == 0) /* once loudly; then counted (a sender may repeat it every round) */
                km_warn("mesh: ignoring member %s: its address %s is outside the peer allow-list (--peer-allow); "
                        "counted in kvmesh_gossip_rejected_total",
                        r->id, r->addr);
            else
                km_debug("mesh: ignoring member %s at %s (outside the peer allow-list)", r->id, r->addr);
            continue;
        }
        int what = 0;
        int i = find(m, r->id);
        km_member *e;
        if (i < 0) {
            i = free_slot(m);
            if (i < 0) {
                m->st.ignored_full++;
                continue;
            }
            e = &m->recs[i];
            memset(e, 0, sizeof *e);
            what = KM_CHANGE_NEW | KM_CHANGE_CATALOG;
            km_info("mesh: member %s joined (%s)", r->id, r->addr);
        } else {
            e = &m->recs[i];
            if (cmp_version(r->incarnation, r->heartbeat, e->incarnation, e->heartbeat) <= 0) continue;
            if (r->incarnation != e->incarnation) what |= KM_CHANGE_RESTARTED | KM_CHANGE_CATALOG;
            if (r->catalog_version != e->catalog_version) what |= KM_CHANGE_CATALOG;
            if (e->state != KM_MEMBER_ALIVE) what |= KM_CHANGE_REVIVED;
            if (strcmp(r->addr, e->addr) != 0) what |= KM_CHANGE_ADDR;
            if (what & (KM_CHANGE_RESTARTED | KM_CHANGE_REVIVED | KM_CHANGE_ADDR))
                km_info("mesh: member %s %s (%s)", r->id,
                        (what & KM_CHANGE_RESTARTED) ? "restarted" : (what & KM_CHANGE_REVIVED) ? "is back" : "moved",
                        r->addr);
        }
        copy_gossiped(e, r);
        e->state = KM_MEMBER_ALIVE;
        e->last_heard_ms = now_ms;
        e->same_model = same_model(self, e);
        e->self = false;
        if (what) {
            if (changes && n_changed < max_changes) {
                km_member_change *c = &changes[n_changed];
                memcpy(c->id, e->id, sizeof c->id);
                memcpy(c->addr, e->addr, sizeof c->addr);
                c->incarnation = e->incarnation;
                c->catalog_version = e->catalog_version;
                c->what = what;
            }
            n_changed++;
        }
    }
    pthread_mutex_unlock(&m->mu);
    km_gossip_msg_free(&msg);
    return n_changed;
}

int km_members_tick(km_members *m, double now_ms) {
    pthread_mutex_lock(&m->mu);
    int changed = 0, w = 1;
    for (int i = 1; i < m->n; i++) {
        km_member *e = &m->recs[i];
        double age = now_ms - e->last_heard_ms;
        if (age >= m->p.dead_ms + m->p.forget_ms) {
            km_info("mesh: member %s (%s) forgotten", e->id, e->addr);
            changed++;
            continue; /* not copied: removed */
        }
        km_member_state s = e->state;
        /* Forward only: going back to ALIVE takes a new version (merge). */
        if (age >= m->p.dead_ms) s = KM_MEMBER_DEAD;
        else if (age >= m->p.suspect_ms && s == KM_MEMBER_ALIVE) s = KM_MEMBER_SUSPECT;
        if (s != e->state) {
            if (s == KM_MEMBER_DEAD) km_info("mesh: member %s (%s) is dead", e->id, e->addr);
            else km_debug("mesh: member %s (%s) is suspect", e->id, e->addr);
            e->state = s;
            changed++;
        }
        if (w != i) m->recs[w] = *e;
        w++;
    }
    m->n = w;
    pthread_mutex_unlock(&m->mu);
    return changed;
}

/* ---------------------------------------------------------- targets, reading */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool addr_known(const km_members *m, const char *addr) {
    for (int i = 1; i < m->n; i++)
        if (strcmp(m->recs[i].addr, addr) == 0) return true;
    return false;
}

/* A peer we may gossip with: not DEAD, and not at our own address (typically
 * our previous life under another id, still remembered by the others). */
static bool gossipable(const km_members *m, int i) {
    return m->recs[i].state != KM_MEMBER_DEAD && strcmp(m->recs[i].addr, m->recs[0].addr) != 0;
}

static int count_live(const km_members *m) {
    int live = 0;
    for (int i = 1; i < m->n; i++) live += gossipable(m, i);
    return live;
}

int km_members_pick_target(km_members *m, uint64_t *rng_state, km_gossip_target *out) {
    pthread_mutex_lock(&m->mu);
    int live = count_live(m);
    /* Candidates: live peers, then the seeds that qualify (all of them when nobody is live). */
    bool seed_ok[KM_MEMBERS_MAX_SEEDS];
    int n_seeds = 0;
    for (int i = 0; i < m->n_seeds; i++) {
        seed_ok[i] = live == 0 || !addr_known(m, m->seeds[i]);
        n_seeds += seed_ok[i];
    }
    int total = live + n_seeds, rc = 0;
    if (total > 0) {
        int k = (int)(splitmix64(rng_state) % (uint64_t)total); /* bias ~ total / 2^64 */
        memset(out, 0, sizeof *out);
        for (int i = 1; i < m->n && k >= 0; i++) {
            if (!gossipable(m, i)) continue;
            if (k-- == 0) {
                memcpy(out->addr, m->recs[i].addr, sizeof out->addr);
                memcpy(out->id, m->recs[i].id, sizeof out->id);
            }
        }
        for (int i = 0; i < m->n_seeds && k >= 0; i++) {
            if (!seed_ok[i]) continue;
            if (k-- == 0) memcpy(out->addr, m->seeds[i], sizeof out->addr);
        }
        rc = 1;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int km_members_snapshot(km_members *m, km_member *out, int max) {
    pthread_mutex_lock(&m->mu);
    int n = m->n;
    if (out && max > 0) memcpy(out, m->recs, (size_t)(n < max ? n : max) * sizeof *out);
    pthread_mutex_unlock(&m->mu);
    return n;
}

int km_members_get(km_members *m, const char *id, km_member *out) {
    pthread_mutex_lock(&m->mu);
    int i = id && strcmp(id, m->recs[0].id) == 0 ? 0 : id ? find(m, id) : -1;
    if (i >= 0 && out) *out = m->recs[i];
    pthread_mutex_unlock(&m->mu);
    return i >= 0;
}

int km_members_count(km_members *m, km_member_state state) {
    pthread_mutex_lock(&m->mu);
    int c = 0;
    for (int i = 1; i < m->n; i++) c += m->recs[i].state == state;
    pthread_mutex_unlock(&m->mu);
    return c;
}

km_members_stats km_members_get_stats(km_members *m) {
    pthread_mutex_lock(&m->mu);
    km_members_stats s = m->st;
    s.alive = s.suspect = s.dead = 0;
    for (int i = 1; i < m->n; i++) {
        switch (m->recs[i].state) {
        case KM_MEMBER_ALIVE: s.alive++; break;
        case KM_MEMBER_SUSPECT: s.suspect++; break;
        case KM_MEMBER_DEAD: s.dead++; break;
        }
    }
    s.seeds = m->n_seeds;
    s.seeds_pending = 0;
    for (int i = 0; i < m->n_seeds; i++) s.seeds_pending += !addr_known(m, m->seeds[i]);
    pthread_mutex_unlock(&m->mu);
    return s;
}
