/* mesh.c -- see mesh.h.
 *
 * Threads: one gossip thread (rounds, catalog fetches); request workers call
 * the km_remote callbacks (state fetches); HTTP connection threads call
 * km_mesh_handle. One mutex guards the peer table; a peer's catalog is
 * reference-counted so a request keeps using the copy it started with while
 * the gossip thread installs a newer one. */
#include "mesh.h"

#include <curl/curl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "catalog.h"
#include "netallow.h"
#include "peerauth.h"

#define MAX_PEERS 256
#define MAX_FORWARDS 64 /* forwards in flight per peer that we account for */
#define MAX_GOSSIP_BYTES ((size_t)1 << 20)

typedef struct catref {
    int refs; /* under the mesh mutex */
    km_catalog *cat;
} catref;

typedef struct peer {
    char id[KM_MEMBER_ID_MAX + 1];
    char addr[KM_MEMBER_ADDR_MAX + 1];
    uint64_t incarnation, cat_version; /* of the catalog held */
    catref *cat;                       /* NULL until fetched */
    km_linkfit link;
    /* our forwarded requests in flight to it, oldest first: when each began
     * and the work it brings (its gossiped backlog includes those that began
     * before its record was last heard) */
    struct {
        double t0, work_ms;
    } fwd[MAX_FORWARDS];
    int forwards;
} peer;

struct km_mesh {
    km_mesh_params p;
    char self_addr[KM_MEMBER_ADDR_MAX + 1];
    char id[KM_MEMBER_ID_MAX + 1];
    km_node *node;
    km_members *members;
    km_peerauth *auth;
    km_blob_key state_key; /* MACs the states we serve and verifies those we fetch (has_state_key) */
    bool has_state_key;
    pthread_mutex_t lock;
    peer peers[MAX_PEERS];
    int n_peers;
    uint64_t rng;
    pthread_t thread;
    bool started, stop;
    pthread_mutex_t wake_lock;
    pthread_cond_t wake;
    km_metrics *metrics;
    km_counter *rounds_ok, *rounds_failed, *catalogs, *denied, *served_states;
    km_counter *fwd_ok, *fwd_failed;
    km_counter *rejected_addr;         /* gossiped records outside the allow-list */
    _Atomic uint64_t rejected_addr_seen; /* of the table's count, already added to it */
    km_counter *route_reuse, *route_fetch, *route_recompute, *route_forward;
};

km_mesh_params km_mesh_default_params(void) {
    km_mesh_params p;
    memset(&p, 0, sizeof p);
    p.gossip_ms = 1000;
    p.timeout_ms = 2000;
    p.max_blob = (size_t)1 << 30;
    p.max_catalog = (size_t)16 << 20;
    p.members = km_members_default_params();
    return p;
}

static peer *find_peer(km_mesh *m, const char *id) {
    for (int i = 0; i < m->n_peers; i++)
        if (strcmp(m->peers[i].id, id) == 0) return &m->peers[i];
    return NULL;
}

const char *km_mesh_id(const km_mesh *m) { return m->id; }

int km_mesh_peers(km_mesh *m, km_peer_info *out, int max) {
    km_member *snap = malloc((size_t)m->p.members.max_members * sizeof *snap);
    if (!snap) return 0;
    int n = km_members_snapshot(m->members, snap, m->p.members.max_members), k = 0;
    if (n > m->p.members.max_members) n = m->p.members.max_members;
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < n; i++) {
        if (snap[i].self) continue;
        if (k < max) {
            km_peer_info *pi = &out[k];
            memset(pi, 0, sizeof *pi);
            snprintf(pi->id, sizeof pi->id, "%s", snap[i].id);
            snprintf(pi->addr, sizeof pi->addr, "%s", snap[i].addr);
            pi->state = snap[i].state;
            pi->same_model = snap[i].same_model;
            pi->backlog_ms = snap[i].load.backlog_ms;
            pi->link_rtt_ms = snap[i].link_rtt_ms;
            pi->link_mbit = snap[i].link_mbit;
            peer *p = find_peer(m, snap[i].id);
            if (p && p->cat) {
                pi->has_catalog = true;
                pi->catalog_keys = km_catalog_count(p->cat->cat);
            }
        }
        k++;
    }
    pthread_mutex_unlock(&m->lock);
    free(snap);
    return k;
}

static void catref_release(km_mesh *m, catref *c) {
    if (!c) return;
    pthread_mutex_lock(&m->lock);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&m->lock);
    if (last) {
        km_catalog_free(c->cat);
        free(c);
    }
}

/* ------------------------------------------------------------ HTTP client */

typedef struct sink {
    uint8_t *data;
    size_t len, cap, max;
    bool overflow;
    char resp_auth[KM_PEERAUTH_HEADER_MAX + 1];
} sink;

static size_t sink_write(char *p, size_t sz, size_t nm, void *ud) {
    sink *s = ud;
    size_t n = sz * nm;
    if (s->len + n > s->max) {
        s->overflow = true;
        return 0; /* aborts the transfer */
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 16384;
        while (cap < s->len + n + 1) cap *= 2;
        uint8_t *d = realloc(s->data, cap);
        if (!d) return 0;
        s->data = d;
        s->cap = cap;
    }
    memcpy(s->data + s->len, p, n);
    s->len += n;
    s->data[s->len] = 0;
    return n;
}

static size_t sink_header(char *p, size_t sz, size_t nm, void *ud) {
    sink *s = ud;
    size_t n = sz * nm, hl = strlen(KM_PEERAUTH_RESPONSE_HEADER);
    if (n > hl + 2 && strncasecmp(p, KM_PEERAUTH_RESPONSE_HEADER, hl) == 0 && p[hl] == ':') {
        const char *v = p + hl + 1;
        while (*v == ' ') v++;
        size_t vl = (size_t)(p + n - v);
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n')) vl--;
        if (vl <= KM_PEERAUTH_HEADER_MAX) {
            memcpy(s->resp_auth, v, vl);
            s->resp_auth[vl] = 0;
        }
    }
    return n;
}

/* One authenticated call to the peer with id `target` ("" for a seed not
 * known yet) at addr. Returns 0 with *status and the body (malloc'd) -- or 2
 * when the answer exceeded max_resp, -1 on any failure (unreachable,
 * timeout, bad answer MAC). */
static int peer_call(km_mesh *m, const char *target, const char *method, const char *addr, const char *path,
                     const uint8_t *body, size_t body_len, size_t max_resp, long *status, uint8_t **resp,
                     size_t *resp_len, km_error *err) {
    *resp = NULL;
    *resp_len = 0;
    char url[KM_MEMBER_ADDR_MAX + 128];
    snprintf(url, sizeof url, "http://%s%s", addr, path);
    CURL *c = curl_easy_init();
    if (!c) return km_error_set(err, "curl init failed");
    sink s = {.max = max_resp};
    struct curl_slist *h = NULL;
    char auth[KM_PEERAUTH_HEADER_MAX + 1] = "";
    if (m->auth) {
        km_peerauth_sign_request(m->auth, target, method, path, body, body_len, auth, sizeof auth);
        char line[KM_PEERAUTH_HEADER_MAX + 64];
        snprintf(line, sizeof line, "%s: %s", KM_PEERAUTH_HEADER, auth);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, (const char *)body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, sink_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &s);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)m->p.timeout_ms);
    /* a big state may take long on a slow link: bound the stall, not the size */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(m->p.timeout_ms + 999) / 1000);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 300000L);
    double t0 = km_now_ms();
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (m->p.link) km_link_request(m->p.link, t0, body_len + 200, s.len + 200);
    if (s.overflow) {
        free(s.data);
        return km_error_set(err, "peer %s%s: answer over %zu bytes", addr, path, max_resp), 2;
    }
    if (rc != CURLE_OK) {
        free(s.data);
        return km_error_set(err, "peer %s%s: %s", addr, path, curl_easy_strerror(rc));
    }
    if (m->auth && *status == 401 && !s.resp_auth[0]) { /* refused: say why rather than "no answer MAC" */
        km_error_set(err, "peer %s refused %s: %.300s", addr, path, s.data ? (const char *)s.data : "");
        free(s.data);
        return -1;
    }
    if (m->auth && km_peerauth_verify_response(m->auth, auth, (int)*status, s.data, s.len, s.resp_auth, err) != 0) {
        free(s.data);
        return -1;
    }
    *resp = s.data;
    *resp_len = s.len;
    return 0;
}

/* ------------------------------------------------------- peers as remotes */

typedef struct peer_remote {
    km_mesh *m;
    char id[KM_MEMBER_ID_MAX + 1];
    char addr[KM_MEMBER_ADDR_MAX + 1];
    char name[KM_MEMBER_ADDR_MAX + 16];
    catref *cat;
} peer_remote;

static bool remote_maybe_has(void *ud, km_key key) {
    peer_remote *r = ud;
    return km_catalog_check(r->cat->cat, key); /* the catalog never changes once installed */
}

static int remote_get(void *ud, km_key key, size_t max_len, uint8_t **blob, size_t *len, km_error *err) {
    peer_remote *r = ud;
    char path[64], hex[2 * KM_KEY_LEN + 1];
    km_key_hex(key, hex);
    snprintf(path, sizeof path, "/peer/v1/state/%s", hex);
    long status = 0;
    size_t max = max_len < r->m->p.max_blob ? max_len : r->m->p.max_blob;
    int rc = peer_call(r->m, r->id, "GET", r->addr, path, NULL, 0, max, &status, blob, len, err);
    if (rc != 0) return rc;
    if (status == 200) return 0;
    free(*blob);
    *blob = NULL;
    if (status == 404) return 1; /* evicted since its catalog was made: a false positive */
    return km_error_set(err, "peer %s: GET %s answered %ld", r->addr, path, status);
}

static void remote_reject(void *ud, km_key key, const char *why) {
    peer_remote *r = ud;
    km_warn("peer %s sent an unusable state (%s); it stays in use, its states are validated one by one", r->addr, why);
}

static void remote_link(void *ud, km_linkfit *out) {
    peer_remote *r = ud;
    pthread_mutex_lock(&r->m->lock);
    peer *p = find_peer(r->m, r->id);
    if (p) *out = p->link;
    else km_linkfit_init(out);
    pthread_mutex_unlock(&r->m->lock);
}

static void remote_observe_fetch(void *ud, size_t wire_bytes, double ms) {
    peer_remote *r = ud;
    pthread_mutex_lock(&r->m->lock);
    peer *p = find_peer(r->m, r->id);
    if (p) km_linkfit_observe_fetch(&p->link, wire_bytes, ms);
    pthread_mutex_unlock(&r->m->lock);
}

static void remote_observe_wire(void *ud, size_t wire_bytes, size_t state_bytes) {
    peer_remote *r = ud;
    pthread_mutex_lock(&r->m->lock);
    peer *p = find_peer(r->m, r->id);
    if (p) km_linkfit_observe_wire(&p->link, wire_bytes, state_bytes);
    pthread_mutex_unlock(&r->m->lock);
}

/* km_peer_source: the peers whose catalog we hold, as remotes for one request. */
static int acquire_remotes(void *ud, km_remote **out) {
    km_mesh *m = ud;
    *out = NULL;
    pthread_mutex_lock(&m->lock);
    int n = 0;
    for (int i = 0; i < m->n_peers; i++) n += m->peers[i].cat != NULL;
    km_remote *rs = n ? calloc((size_t)n, sizeof *rs) : NULL;
    peer_remote *us = n ? calloc((size_t)n, sizeof *us) : NULL;
    if (!rs || !us) {
        pthread_mutex_unlock(&m->lock);
        free(rs);
        free(us);
        return 0;
    }
    int k = 0;
    for (int i = 0; i < m->n_peers; i++) {
        peer *p = &m->peers[i];
        if (!p->cat) continue;
        peer_remote *u = &us[k];
        u->m = m;
        snprintf(u->id, sizeof u->id, "%s", p->id);
        snprintf(u->addr, sizeof u->addr, "%s", p->addr);
        snprintf(u->name, sizeof u->name, "peer %s", p->addr);
        u->cat = p->cat;
        p->cat->refs++;
        rs[k] = (km_remote){KM_TIER_PEER, u->name, u, remote_maybe_has, remote_get, remote_reject,
                            remote_link, remote_observe_fetch, remote_observe_wire,
                            m->has_state_key ? &m->state_key : NULL};
        k++;
    }
    pthread_mutex_unlock(&m->lock);
    *out = rs;
    return k;
}

static void release_remotes(void *ud, km_remote *rs, int n) {
    km_mesh *m = ud;
    if (!rs) return;
    peer_remote *us = n > 0 ? rs[0].ud : NULL;
    for (int i = 0; i < n; i++) catref_release(m, us[i].cat);
    free(us);
    free(rs);
}

/* ------------------------------------------------------------- gossip */

/* Bring the peer table in line with the membership: live same-model members
 * get a slot, dead or gone ones lose it, and a catalog whose version moved
 * is fetched again. */
static void sync_peers(km_mesh *m) {
    km_member *snap = malloc((size_t)m->p.members.max_members * sizeof *snap);
    if (!snap) return;
    int n = km_members_snapshot(m->members, snap, m->p.members.max_members);
    if (n > m->p.members.max_members) n = m->p.members.max_members;
    /* drop slots of members that are dead, gone, or not ours to share with */
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->n_peers; i++) {
        bool keep = false;
        for (int k = 0; k < n && !keep; k++)
            keep = !snap[k].self && snap[k].state != KM_MEMBER_DEAD && snap[k].same_model &&
                   strcmp(snap[k].id, m->peers[i].id) == 0;
        if (keep) continue;
        catref *c = m->peers[i].cat;
        m->peers[i] = m->peers[--m->n_peers];
        i--;
        if (c && --c->refs == 0) {
            km_catalog_free(c->cat);
            free(c);
        }
    }
    pthread_mutex_unlock(&m->lock);

    for (int k = 0; k < n; k++) {
        km_member *mb = &snap[k];
        if (mb->self || mb->state == KM_MEMBER_DEAD || !mb->same_model) continue;
        pthread_mutex_lock(&m->lock);
        peer *p = find_peer(m, mb->id);
        if (!p && m->n_peers < MAX_PEERS) {
            p = &m->peers[m->n_peers++];
            memset(p, 0, sizeof *p);
            snprintf(p->id, sizeof p->id, "%s", mb->id);
            km_linkfit_init(&p->link);
        }
        bool stale = p && (!p->cat || p->incarnation != mb->incarnation || p->cat_version != mb->catalog_version);
        if (p) snprintf(p->addr, sizeof p->addr, "%s", mb->addr);
        pthread_mutex_unlock(&m->lock);
        if (!stale) continue;

        long status = 0;
        uint8_t *body;
        size_t len;
        km_error err;
        if (peer_call(m, mb->id, "GET", mb->addr, "/peer/v1/catalog", NULL, 0, m->p.max_catalog, &status, &body, &len, &err) != 0) {
            km_debug("mesh: catalog of %s: %s", mb->addr, err.msg);
            continue;
        }
        km_catalog *cat = status == 200 ? km_catalog_decode(body, len, m->p.max_catalog, &err) : NULL;
        free(body);
        if (!cat) {
            km_warn("mesh: catalog of %s rejected: %s", mb->addr, status == 200 ? err.msg : "bad status");
            continue;
        }
        catref *c = malloc(sizeof *c);
        if (!c) {
            km_catalog_free(cat);
            continue;
        }
        c->refs = 1;
        c->cat = cat;
        catref *old = NULL;
        pthread_mutex_lock(&m->lock);
        p = find_peer(m, mb->id);
        if (p) {
            old = p->cat;
            p->cat = c;
            p->incarnation = mb->incarnation;
            p->cat_version = mb->catalog_version;
            c = NULL;
        }
        pthread_mutex_unlock(&m->lock);
        if (c) { /* the peer went away meanwhile */
            km_catalog_free(c->cat);
            free(c);
        }
        catref_release(m, old);
        if (m->catalogs) km_counter_inc(m->catalogs);
        km_debug("mesh: catalog of %s (%s), version %llu, %u keys", mb->id, mb->addr,
                 (unsigned long long)mb->catalog_version, km_catalog_count(cat));
    }
    free(snap);
}

/* Our own link estimate for gossip: the mean of our fits to the peers we
 * have fetched from (an edge device's bottleneck is mostly its own link). */
static void self_link(km_mesh *m, double *rtt_ms, double *mbit) {
    double rtt_sum = 0, bpm_sum = 0;
    int n = 0;
    pthread_mutex_lock(&m->lock);
    for (int k = 0; k < m->n_peers; k++) {
        double rtt, bpm;
        km_linkfit_params(&m->peers[k].link, &rtt, &bpm);
        if (bpm <= 0) continue;
        rtt_sum += rtt;
        bpm_sum += bpm;
        n++;
    }
    pthread_mutex_unlock(&m->lock);
    *rtt_ms = n ? rtt_sum / n : 0;
    *mbit = n ? bpm_sum / n * 8.0 / 1000.0 : 0; /* bytes/ms -> Mbit/s */
}

/* Merge a peer's gossip message; records ignored for their address are
 * added to the counter (the table's count goes up under concurrent merges:
 * add only what no other merge added). */
static int merge(km_mesh *m, const char *msg, size_t len, km_error *err) {
    int rc = km_members_merge(m->members, msg, len, km_now_ms(), NULL, 0, err);
    uint64_t now = km_members_get_stats(m->members).ignored_addr;
    uint64_t seen = atomic_load(&m->rejected_addr_seen);
    while (now > seen && !atomic_compare_exchange_weak(&m->rejected_addr_seen, &seen, now)) {
    }
    if (now > seen && m->rejected_addr) km_counter_add(m->rejected_addr, (double)(now - seen));
    return rc;
}

void km_mesh_gossip_now(km_mesh *m) {
    km_node_load l = km_node_get_load(m->node);
    km_member_load ml = {l.queued, l.running, l.parallel, l.queue_max, (int)(l.backlog_ms + 0.5)};
    km_members_update_self(m->members, km_node_catalog_version(m->node), &ml, l.prefill_tok_s);
    double rtt, mbit;
    self_link(m, &rtt, &mbit);
    km_members_update_link(m->members, rtt, mbit);
    km_key pending[KM_MEMBER_PENDING_MAX];
    km_members_update_pending(m->members, pending, km_node_pending(m->node, pending, KM_MEMBER_PENDING_MAX));
    km_members_beat(m->members);
    km_gossip_target t;
    if (km_members_pick_target(m->members, &m->rng, &t)) {
        char *msg;
        size_t len;
        km_error err;
        bool ok = false;
        if (km_members_encode(m->members, &msg, &len, &err) == 0) {
            long status = 0;
            uint8_t *resp;
            size_t rl;
            int rc = peer_call(m, t.id, "POST", t.addr, "/peer/v1/gossip", (const uint8_t *)msg, len,
                               MAX_GOSSIP_BYTES, &status, &resp, &rl, &err);
            /* Refused as meant for another node: a member restarted there
             * under a new id. Ask it as a seed is asked (gossip alone takes
             * that), so it is known again now, not once the old id is dead. */
            if (rc != 0 && status == 401 && m->auth && t.id[0])
                rc = peer_call(m, "", "POST", t.addr, "/peer/v1/gossip", (const uint8_t *)msg, len, MAX_GOSSIP_BYTES,
                               &status, &resp, &rl, &err);
            if (rc == 0) {
                if (status == 200 && merge(m, (const char *)resp, rl, &err) >= 0)
                    ok = true;
                else if (status != 200)
                    km_error_set(&err, "answered %ld: %.200s", status, resp ? (const char *)resp : "");
                free(resp);
            }
            free(msg);
        }
        if (!ok) km_debug("mesh: gossip with %s failed: %s", t.addr, err.msg);
        km_counter_inc(ok ? m->rounds_ok : m->rounds_failed);
    }
    km_members_tick(m->members, km_now_ms());
    sync_peers(m);
}

static void *gossip_main(void *arg) {
    km_mesh *m = arg;
    pthread_mutex_lock(&m->wake_lock);
    while (!m->stop) {
        pthread_mutex_unlock(&m->wake_lock);
        km_mesh_gossip_now(m);
        pthread_mutex_lock(&m->wake_lock);
        if (!m->stop) km_cond_wait_ms(&m->wake, &m->wake_lock, m->p.gossip_ms);
    }
    pthread_mutex_unlock(&m->wake_lock);
    return NULL;
}

/* ------------------------------------------------------------- serving */

static void answer_text(int *status, uint8_t **body, size_t *len, const char **type, int code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void answer_text(int *status, uint8_t **body, size_t *len, const char **type, int code, const char *fmt, ...) {
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
    *status = code;
    *body = (uint8_t *)strndup(buf, (size_t)n);
    *len = *body ? (size_t)n : 0;
    *type = "text/plain";
}

/* A stored state as served to a peer: without its next-token hint unless
 * this node trusts it (a member vouches only for what it would answer with
 * itself), then MAC'd with the mesh key if there is one. 0, or -1 when the
 * stored bytes are not a valid blob. */
static int prepare_state(km_mesh *m, uint8_t *blob, size_t len, bool trusted, km_error *err) {
    km_blob_info b;
    if (km_blob_parse(blob, len, SIZE_MAX, &b, err) != 0) return -1;
    if (!trusted && b.has_next) km_blob_drop_hint(blob, len);
    return m->has_state_key ? km_blob_authenticate(blob, len, &m->state_key, err) : 0;
}

void km_mesh_handle(km_mesh *m, const char *method, const char *path, const char *auth, const uint8_t *req,
                    size_t req_len, int *status, uint8_t **body, size_t *len, const char **type, char *resp_auth,
                    size_t resp_auth_cap) {
    *body = NULL;
    *len = 0;
    resp_auth[0] = '\0';
    km_error err;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    bool gossip = post && strcmp(path, "/peer/v1/gossip") == 0;
    /* only gossip may come untargeted: a seed's first contact, before it knows our id */
    if (m->auth && km_peerauth_verify_request(m->auth, m->id, gossip, method, path, req, req_len, auth, &err) != 0) {
        if (m->denied) km_counter_inc(m->denied);
        answer_text(status, body, len, type, 401, "%s", err.msg);
        return; /* no answer MAC: the request was not authentic */
    }
    if (gossip) {
        if (merge(m, (const char *)req, req_len, &err) < 0) {
            answer_text(status, body, len, type, 400, "%s", err.msg);
        } else {
            char *msg;
            if (km_members_encode(m->members, &msg, len, &err) == 0) {
                *status = 200;
                *body = (uint8_t *)msg;
                *type = "application/json";
            } else {
                answer_text(status, body, len, type, 500, "%s", err.msg);
            }
        }
    } else if (get && strcmp(path, "/peer/v1/catalog") == 0) {
        uint64_t version;
        if (km_node_catalog(m->node, body, len, &version, &err) == 0) {
            *status = 200;
            *type = "application/octet-stream";
        } else {
            answer_text(status, body, len, type, 500, "%s", err.msg);
        }
    } else if (get && strncmp(path, "/peer/v1/state/", 15) == 0) {
        km_key key;
        if (strlen(path + 15) != 2 * KM_KEY_LEN || km_key_from_hex(path + 15, &key) != 0) {
            answer_text(status, body, len, type, 400, "bad key '%.40s'", path + 15);
        } else {
            bool trusted;
            int rc = km_store_get_origin(km_node_store(m->node), key, body, len, &trusted, &err);
            if (rc == 0 && prepare_state(m, *body, *len, trusted, &err) != 0) {
                km_warn("mesh: stored state %s not served: %s (removed)", path + 15, err.msg);
                km_store_remove(km_node_store(m->node), key);
                free(*body);
                *body = NULL;
                *len = 0;
                rc = 1;
            }
            if (rc == 0) {
                *status = 200;
                *type = "application/octet-stream";
                if (m->served_states) km_counter_inc(m->served_states);
            } else if (rc == 1) {
                answer_text(status, body, len, type, 404, "not held");
            } else {
                answer_text(status, body, len, type, 500, "%s", err.msg);
            }
        }
    } else {
        answer_text(status, body, len, type, 404, "no peer route %s %s", method, path);
    }
    if (m->auth) km_peerauth_sign_response(m->auth, auth, *status, *body, *len, resp_auth, resp_auth_cap);
}

/* ------------------------------------------------------------- routing */

/* The round trip assumed to a peer whose link has not been measured yet. */
#define DEFAULT_RTT_MS 2.0

/* The policy of arXiv 2606.17059, for comparison: forward to the peer whose
 * catalog may hold the longest prefix (longer than ours), whatever its load. */
static void route_longest_prefix(km_mesh *m, const km_prompt_plan *plan, km_route *out) {
    int best = plan->local_hit >= 0 ? plan->bounds[plan->local_hit] : 0;
    pthread_mutex_lock(&m->lock);
    for (int k = 0; k < m->n_peers; k++) {
        peer *p = &m->peers[k];
        if (!p->cat) continue;
        for (int i = plan->n_bounds - 1; i >= 0; i--) {
            if (plan->bounds[i] <= best) break;
            if (km_catalog_check(p->cat->cat, plan->keys[i])) {
                best = plan->bounds[i];
                out->forward = true;
                out->peer_prefix = best;
                snprintf(out->id, sizeof out->id, "%s", p->id);
                snprintf(out->addr, sizeof out->addr, "%s", p->addr);
                break;
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (out->forward) out->path = "forward";
}

/* The link to a peer: our fit of our fetches from it; before we have
 * fetched anything, what the peer measured of its own link and gossiped. */
static double peer_rtt_ms(const peer *p, const km_member *mb) {
    double rtt, bpm;
    km_linkfit_params(&p->link, &rtt, &bpm);
    if (bpm > 0) return rtt;
    return mb->link_mbit > 0 ? mb->link_rtt_ms : DEFAULT_RTT_MS;
}

static double peer_fetch_ms(const peer *p, const km_member *mb, size_t state_bytes) {
    double own = km_linkfit_fetch_ms(&p->link, state_bytes);
    if (own >= 0 || mb->link_mbit <= 0) return own;
    return mb->link_rtt_ms + (double)state_bytes * p->link.wire_ratio / (mb->link_mbit * 1000.0 / 8.0);
}

void km_mesh_route(km_mesh *m, const km_prompt_plan *plan, km_route *out) {
    memset(out, 0, sizeof *out);
    int local_reuse = plan->local_hit >= 0 ? plan->bounds[plan->local_hit] : 0;
    km_route_mode mode = km_node_route_mode(m->node);
    if (mode != KM_ROUTE_PLANNER) {
        out->path = local_reuse > 0 ? "reuse" : "recompute";
        out->est_local_ms = out->est_ms = plan->local_ms;
        if (mode == KM_ROUTE_FORWARD) route_longest_prefix(m, plan, out);
        km_counter_inc(out->forward ? m->route_forward : local_reuse > 0 ? m->route_reuse : m->route_recompute);
        return;
    }
    double rate = plan->prefill_tok_ms;
    out->path = local_reuse > 0 ? "reuse" : "recompute";
    out->est_local_ms = out->est_ms = plan->local_ms;
    km_member *snap = rate > 0 ? malloc((size_t)m->p.members.max_members * sizeof *snap) : NULL;
    if (!snap) { /* nothing measured yet: run here, which measures */
        km_counter_inc(local_reuse > 0 ? m->route_reuse : m->route_recompute);
        return;
    }
    int n = km_members_snapshot(m->members, snap, m->p.members.max_members);
    if (n > m->p.members.max_members) n = m->p.members.max_members;
    /* what we know of every live peer that runs our model */
    km_route_peer *views = malloc((size_t)(n > 0 ? n : 1) * sizeof *views);
    int *member_of = malloc((size_t)(n > 0 ? n : 1) * sizeof *member_of); /* view -> its record in snap */
    int nv = 0;
    double now = km_now_ms();
    pthread_mutex_lock(&m->lock);
    for (int k = 0; views && member_of && k < n; k++) {
        const km_member *mb = &snap[k];
        const peer *p = mb->self || mb->state == KM_MEMBER_DEAD ? NULL : find_peer(m, mb->id);
        if (!p) continue;
        km_route_peer *v = &views[nv];
        memset(v, 0, sizeof *v);
        for (int i = plan->n_bounds - 1; p->cat && i >= 0 && !v->hold; i--)
            if (km_catalog_check(p->cat->cat, plan->keys[i])) v->hold = plan->bounds[i];
        for (int i = plan->n_bounds - 1; i >= 0 && !v->pending && plan->bounds[i] > v->hold; i--)
            for (int q = 0; q < mb->n_pending; q++)
                if (km_key_equal(mb->pending[q], plan->keys[i])) v->pending = plan->bounds[i];
        v->fetch_ms = v->hold > local_reuse ? peer_fetch_ms(p, mb, km_node_state_size_estimate(m->node, v->hold)) : -1;
        v->rtt_ms = peer_rtt_ms(p, mb);
        v->prefill_tok_ms = mb->prefill_tok_s / 1000.0;
        v->full = mb->load.queued + p->forwards >= mb->load.queue_max + mb->load.parallel;
        /* its record shows the forwards that began before we last heard of it */
        double unseen = 0;
        int n_unseen = 0;
        for (int i = 0; i < p->forwards; i++)
            if (p->fwd[i].t0 >= mb->last_heard_ms) {
                unseen += p->fwd[i].work_ms;
                n_unseen++;
            }
        v->wait_ms = km_planner_peer_wait_ms(mb->load.backlog_ms, now - mb->last_heard_ms,
                                             mb->load.queued + mb->load.running + n_unseen, mb->load.parallel, unseen);
        member_of[nv] = k;
        nv++;
    }
    pthread_mutex_unlock(&m->lock);
    km_route_local l = {plan->n_tokens, local_reuse, rate, plan->wait_ms, plan->first_extra_ms};
    km_route_choice c = km_planner_route(&l, views, nv);
    out->est_local_ms = c.est_local_ms;
    out->est_ms = c.est_ms;
    if (c.path != KM_PATH_LOCAL) {
        out->peer_prefix = c.path == KM_PATH_FORWARD && views[c.peer].pending > views[c.peer].hold ? views[c.peer].pending
                                                                                                : views[c.peer].hold;
        snprintf(out->id, sizeof out->id, "%s", snap[member_of[c.peer]].id);
    }
    if (c.path == KM_PATH_FETCH) out->path = "fetch";
    if (c.path == KM_PATH_FORWARD) {
        out->forward = true;
        out->path = "forward";
        out->peer_work_ms = c.peer_work_ms;
        snprintf(out->addr, sizeof out->addr, "%s", snap[member_of[c.peer]].addr);
    }
    free(views);
    free(member_of);
    free(snap);
    km_counter_inc(out->forward                      ? m->route_forward
                   : strcmp(out->path, "fetch") == 0 ? m->route_fetch
                   : strcmp(out->path, "reuse") == 0 ? m->route_reuse
                                                     : m->route_recompute);
}

void km_mesh_forward_begin(km_mesh *m, const char *id, double work_ms) {
    pthread_mutex_lock(&m->lock);
    peer *p = find_peer(m, id);
    if (p) {
        if (p->forwards == MAX_FORWARDS) { /* keep the newest: the oldest are the likeliest in its gossip */
            memmove(&p->fwd[0], &p->fwd[1], (MAX_FORWARDS - 1) * sizeof p->fwd[0]);
            p->forwards--;
        }
        p->fwd[p->forwards].t0 = km_now_ms();
        p->fwd[p->forwards].work_ms = work_ms;
        p->forwards++;
    }
    pthread_mutex_unlock(&m->lock);
}

void km_mesh_forward_end(km_mesh *m, const char *id, bool ok, double ms) {
    (void)ms;
    pthread_mutex_lock(&m->lock);
    peer *p = find_peer(m, id);
    if (p && p->forwards > 0) { /* forwards to one peer end roughly in order: drop the oldest */
        memmove(&p->fwd[0], &p->fwd[1], (size_t)(p->forwards - 1) * sizeof p->fwd[0]);
        p->forwards--;
    }
    pthread_mutex_unlock(&m->lock);
    km_counter_inc(ok ? m->fwd_ok : m->fwd_failed);
}

void km_mesh_sign(km_mesh *m, const char *target, const char *method, const char *path, const uint8_t *body,
                  size_t len, char *out, size_t cap) {
    out[0] = '\0';
    if (m->auth) km_peerauth_sign_request(m->auth, target, method, path, body, len, out, cap);
}

km_peerauth *km_mesh_auth(km_mesh *m) { return m->auth; }

int km_mesh_verify(km_mesh *m, const char *method, const char *path, const uint8_t *body, size_t len,
                   const char *header, km_error *err) {
    if (!m->auth) return 0;
    if (km_peerauth_verify_request(m->auth, m->id, false, method, path, body, len, header, err) != 0) {
        km_counter_inc(m->denied);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ lifecycle */

static double gauge_alive(void *ud) { return km_members_count(((km_mesh *)ud)->members, KM_MEMBER_ALIVE); }
static double gauge_suspect(void *ud) { return km_members_count(((km_mesh *)ud)->members, KM_MEMBER_SUSPECT); }
static double gauge_dead(void *ud) { return km_members_count(((km_mesh *)ud)->members, KM_MEMBER_DEAD); }

km_mesh *km_mesh_start(const km_mesh_params *p, km_node *node, km_metrics *metrics, km_error *err) {
    if (!p->self_addr || km_member_check_addr(p->self_addr, err) != 0) {
        km_error_set(err, "the mesh needs this node's address as peers reach it (host:port)");
        return NULL;
    }
    if (sodium_init() < 0) return km_error_set(err, "libsodium failed to initialise"), NULL;
    km_mesh *m = calloc(1, sizeof *m);
    if (!m) return km_error_set(err, "out of memory"), NULL;
    m->p = *p;
    m->node = node;
    snprintf(m->self_addr, sizeof m->self_addr, "%s", p->self_addr);
    m->p.self_addr = m->self_addr;
    m->p.seeds = NULL;
    m->p.secret = NULL;
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->wake_lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    uint8_t rnd[8];
    randombytes_buf(rnd, sizeof rnd);
    m->rng = km_get_u64(rnd) | 1;
    for (int i = 0; i < 8; i++) snprintf(m->id + 2 * i, 3, "%02x", rnd[i]);

    km_member self;
    memset(&self, 0, sizeof self);
    snprintf(self.id, sizeof self.id, "%s", m->id);
    snprintf(self.addr, sizeof self.addr, "%s", m->self_addr);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    self.incarnation = (uint64_t)ts.tv_sec * 1000 + (uint64_t)(ts.tv_nsec / 1000000);
    self.has_model = true;
    memcpy(self.model, km_model_fingerprint(km_node_model(node)), KM_FINGERPRINT_LEN);
    if (!(m->members = km_members_new(&self, &p->members, err))) goto fail;
    if (p->seeds && km_members_add_seed_list(m->members, p->seeds, err) != 0) goto fail;
    if (p->secret && !(m->auth = km_peerauth_new(p->secret, p->secret_len, 0, err))) goto fail;
    if (p->secret) {
        if (km_blob_key_derive(&m->state_key, p->secret, p->secret_len, "mesh") != 0) {
            km_error_set(err, "libsodium failed to derive the mesh state key");
            goto fail;
        }
        m->has_state_key = true;
    }
    m->metrics = metrics;
    if (metrics) {
        const char *r = "Gossip rounds by outcome";
        m->rounds_ok = km_metrics_counter(metrics, "kvmesh_gossip_rounds_total", r, "result=\"ok\"");
        m->rounds_failed = km_metrics_counter(metrics, "kvmesh_gossip_rounds_total", r, "result=\"failed\"");
        m->catalogs = km_metrics_counter(metrics, "kvmesh_peer_catalog_fetches_total", "Peer catalogs fetched", NULL);
        m->denied = km_metrics_counter(metrics, "kvmesh_peer_requests_denied_total",
                                       "Peer requests refused by the mesh authentication", NULL);
        m->served_states = km_metrics_counter(metrics, "kvmesh_peer_states_served_total", "States sent to peers", NULL);
        const char *fw = "Requests forwarded to a peer, by outcome (failed ones ran here)";
        m->fwd_ok = km_metrics_counter(metrics, "kvmesh_forwards_total", fw, "result=\"ok\"");
        m->fwd_failed = km_metrics_counter(metrics, "kvmesh_forwards_total", fw, "result=\"failed\"");
        m->rejected_addr = km_metrics_counter(metrics, "kvmesh_gossip_rejected_total",
                                              "Gossiped member records ignored, by reason", "reason=\"peer_allow\"");
        const char *pd = "Planner decisions: the path estimated fastest for a request";
        m->route_reuse = km_metrics_counter(metrics, "kvmesh_planner_decisions_total", pd, "path=\"reuse\"");
        m->route_fetch = km_metrics_counter(metrics, "kvmesh_planner_decisions_total", pd, "path=\"fetch\"");
        m->route_recompute = km_metrics_counter(metrics, "kvmesh_planner_decisions_total", pd, "path=\"recompute\"");
        m->route_forward = km_metrics_counter(metrics, "kvmesh_planner_decisions_total", pd, "path=\"forward\"");
        const char *ph = "Peers by state";
        km_metrics_gauge_fn(metrics, "kvmesh_peers", ph, "state=\"alive\"", gauge_alive, m);
        km_metrics_gauge_fn(metrics, "kvmesh_peers", ph, "state=\"suspect\"", gauge_suspect, m);
        km_metrics_gauge_fn(metrics, "kvmesh_peers", ph, "state=\"dead\"", gauge_dead, m);
    }
    km_peer_source src = {acquire_remotes, release_remotes, m};
    km_node_set_peer_source(node, &src);
    if (pthread_create(&m->thread, NULL, gossip_main, m) != 0) {
        km_error_set(err, "cannot start the gossip thread");
        goto fail;
    }
    m->started = true;
    char allow[512] = "any";
    if (p->members.allow) km_netallow_describe(p->members.allow, allow, sizeof allow);
    km_info("mesh: node %s at %s%s%s, %s, peer allow-list %s", m->id, m->self_addr, p->seeds ? ", seeds " : "",
            p->seeds ? p->seeds : "",
            m->auth ? "authenticated" : "no mesh secret (loopback only; peers' states are trusted as is)", allow);
    return m;
fail:
    km_mesh_stop(m);
    return NULL;
}

void km_mesh_stop(km_mesh *m) {
    if (!m) return;
    km_node_set_peer_source(m->node, NULL); /* waits until no request holds our remotes */
    pthread_mutex_lock(&m->wake_lock);
    m->stop = true;
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->wake_lock);
    if (m->started) pthread_join(m->thread, NULL);
    if (m->metrics) { /* the registry outlives us: the gauges must not read freed memory */
        km_metrics_gauge_fn(m->metrics, "kvmesh_peers", NULL, "state=\"alive\"", NULL, NULL);
        km_metrics_gauge_fn(m->metrics, "kvmesh_peers", NULL, "state=\"suspect\"", NULL, NULL);
        km_metrics_gauge_fn(m->metrics, "kvmesh_peers", NULL, "state=\"dead\"", NULL, NULL);
    }
    for (int i = 0; i < m->n_peers; i++) {
        if (m->peers[i].cat) {
            km_catalog_free(m->peers[i].cat->cat);
            free(m->peers[i].cat);
        }
    }
    km_members_free(m->members);
    km_peerauth_free(m->auth);
    sodium_memzero(&m->state_key, sizeof m->state_key);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->wake);
    free(m);
}
