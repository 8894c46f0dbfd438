/* redis_tier.c -- see redis_tier.h. */
#include "redis_tier.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CATALOG_MAX ((size_t)64 << 20) /* largest master catalog read */
#define EPOCH_LEN (2 * KM_KEY_LEN)      /* hex digits of a catalog epoch */
/* Redis's memory for an upload list of n keys (16-byte strings) is about
 * 18 bytes each plus ~150 (7.0, MEMORY USAGE): more than this is not keys. */
#define LIST_BYTES_MAX(n) (32 * (n) + 4096)

/* One connection with its own down/backoff state. The request path and the
 * writer thread each own one: hiredis contexts are not thread-safe, and an
 * upload in flight must never delay a GET. */
typedef struct conn {
    redisContext *ctx;
    double next_retry_ms;
    int backoff_ms;
    bool warned;
    const char *role;
} conn;

typedef struct job {
    km_key key;
    uint8_t *data;
    size_t len;     /* of data: as queued, then as compressed by the writer */
    size_t raw_len; /* as queued */
    bool retried;   /* sent once on a connection that broke */
    struct job *next;
} job;

struct km_redis {
    km_redis_params p;
    char *url;
    char host[256];
    int port, db;
    char *user, *password;
    char ns[48]; /* "kvmesh:v1:<fingerprint hex>:" (43 chars) */
    km_blob_key key; /* store key (has_key) */
    bool has_key;

    pthread_mutex_t req_lock; /* request path: req connection */
    conn req;

    pthread_mutex_t q_lock; /* upload queue, writer state, stats */
    pthread_cond_t q_cond;  /* work arrived or stop */
    pthread_cond_t q_idle;  /* queue drained */
    job *head, *tail;
    size_t q_bytes;
    int q_len, in_flight;
    bool stop;
    pthread_t writer;
    conn wr;
    uint64_t wr_failures; /* failed connection attempts of the writer (under q_lock) */
    bool down_warned;     /* one warning per outage for the whole tier (under q_lock) */

    /* catalog: local copy, synced by its own thread and connection */
    pthread_mutex_t cat_lock; /* catalog, cat_pos */
    km_catalog *catalog;
    uint64_t cat_pos;         /* entries of the added list the copy covers */
    double last_full_ms, last_rebuild_ms;
    pthread_mutex_t sync_lock; /* sync connection, epoch; one sync at a time */
    char epoch[EPOCH_LEN + 1]; /* the catalog epoch the copy belongs to */
    bool has_epoch;            /* false until the first sync read one */
    conn sync;
    pthread_t syncer;
    pthread_cond_t sync_cond; /* wakes the syncer early (stop); waits under q_lock */
    bool has_syncer;

    km_redis_stats st;
};

km_redis_params km_redis_default_params(void) {
    km_redis_params p = {.url = NULL, .connect_timeout_ms = 500, .io_timeout_ms = 2000, .ttl_s = 0,
                         .max_blob = (size_t)1 << 30, .queue_budget = (size_t)512 << 20,
                         .catalog = km_catalog_default_params(), .sync_period_ms = 500, .full_refresh_ms = 30000,
                         .rebuild_period_ms = 0, .compress_level = 1};
    return p;
}

int km_redis_parse_url(const char *url, char *host, size_t host_len, int *port, int *db, char **user, char **password,
                       km_error *err) {
    *port = 6379;
    *db = 0;
    *user = *password = NULL;
    if (strncmp(url, "redis://", 8) != 0) return km_error_set(err, "%s: a Redis URL starts with redis://", url);
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p) *user = strndup(p, (size_t)(colon - p));
            *password = strndup(colon + 1, (size_t)(at - colon - 1));
        } else {
            *password = strndup(p, (size_t)(at - p)); /* redis://password@host */
        }
        p = at + 1;
    }
    const char *end = p + strcspn(p, ":/");
    size_t hl = (size_t)(end - p);
    if (hl == 0 || hl >= host_len) goto bad;
    memcpy(host, p, hl);
    host[hl] = 0;
    p = end;
    if (*p == ':') {
        char *e;
        long v = strtol(p + 1, &e, 10);
        if (e == p + 1 || v < 1 || v > 65535) goto bad;
        *port = (int)v;
        p = e;
    }
    if (*p == '/') {
        if (p[1]) {
            char *e;
            long v = strtol(p + 1, &e, 10);
            if (e == p + 1 || *e || v < 0 || v > 1000000) goto bad;
            *db = (int)v;
        }
    } else if (*p) {
        goto bad;
    }
    return 0;
bad:
    free(*user);
    free(*password);
    *user = *password = NULL;
    return km_error_set(err, "%s: not a valid redis://[user:password@]host:port[/db] URL", url);
}

static struct timeval ms_tv(int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Run a command whose reply must be a status OK (AUTH, SELECT). */
static int expect_ok(redisContext *c, km_error *err, const char *what, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    int rc = 0;
    if (!r) rc = km_error_set(err, "%s: %s", what, c->errstr);
    else if (r->type == REDIS_REPLY_ERROR) rc = km_error_set(err, "%s: %s", what, r->str);
    if (r) freeReplyObject(r);
    return rc;
}

static redisContext *connect_redis(km_redis *r, km_error *err) {
    redisContext *c = redisConnectWithTimeout(r->host, r->port, ms_tv(r->p.connect_timeout_ms));
    if (!c || c->err) {
        km_error_set(err, "%s", c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, ms_tv(r->p.io_timeout_ms));
    if (r->password) {
        int rc = r->user ? expect_ok(c, err, "AUTH", "AUTH %s %s", r->user, r->password)
                         : expect_ok(c, err, "AUTH", "AUTH %s", r->password);
        if (rc != 0) {
            redisFree(c);
            return NULL;
        }
    }
    if (r->db != 0 && expect_ok(c, err, "SELECT", "SELECT %d", r->db) != 0) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static void mark_down(km_redis *r, conn *cn, const char *why_in) {
    /* why_in is often the errstr of cn->ctx, which is freed just below */
    char why[256];
    snprintf(why, sizeof why, "%s", why_in && *why_in ? why_in : "connection lost");
    if (cn->ctx) {
        redisFree(cn->ctx);
        cn->ctx = NULL;
    }
    cn->backoff_ms = cn->backoff_ms ? cn->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (cn->backoff_ms > BACKOFF_MAX_MS) cn->backoff_ms = BACKOFF_MAX_MS;
    cn->next_retry_ms = km_now_ms() + cn->backoff_ms;
    if (!cn->warned) {
        cn->warned = true;
        pthread_mutex_lock(&r->q_lock);
        if (!r->down_warned)
            km_warn("Redis at %s:%d unavailable (%s: %s); going on without the shared tier, retrying in the background",
                    r->host, r->port, cn->role, why);
        r->down_warned = true;
        pthread_mutex_unlock(&r->q_lock);
    }
}

/* A live connection, or NULL while down (no attempt before the backoff ends). */
static redisContext *ensure(km_redis *r, conn *cn) {
    if (cn->ctx) return cn->ctx;
    if (km_now_ms() < cn->next_retry_ms) return NULL;
    km_error e;
    cn->ctx = connect_redis(r, &e);
    if (!cn->ctx) {
        mark_down(r, cn, e.msg);
        return NULL;
    }
    if (cn->warned) {
        pthread_mutex_lock(&r->q_lock);
        if (r->down_warned) km_info("Redis at %s:%d is back", r->host, r->port);
        r->down_warned = false;
        pthread_mutex_unlock(&r->q_lock);
    }
    cn->warned = false;
    cn->backoff_ms = 0;
    return cn->ctx;
}

/* One command on cn, connecting first if due. NULL when the tier is down or
 * the connection broke (then marked down), with err naming the command. */
static redisReply *command(km_redis *r, conn *cn, km_error *err, const char *what, const char *fmt, ...) {
    redisContext *c = ensure(r, cn);
    if (!c) {
        km_error_set(err, "Redis at %s:%d is down", r->host, r->port);
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!rep) {
        km_error_set(err, "Redis %s failed: %s", what, c->errstr);
        mark_down(r, cn, c->errstr);
    }
    return rep;
}

/* GETRANGE key 0 max: at most max + 1 bytes of a string value, so a larger
 * one shows by its extra byte and is never read whole (a GET buffers all of
 * it, up to Redis's 512 MB, before we can look). A missing key reads as "". */
static redisReply *get_upto(km_redis *r, conn *cn, km_error *err, const char *what, const char *key, size_t max) {
    return command(r, cn, err, what, "GETRANGE %s 0 %llu", key, (unsigned long long)max);
}

void km_redis_state_key(const km_redis *r, km_key key, char *out, size_t len) {
    char hex[2 * KM_KEY_LEN + 1];
    km_key_hex(key, hex);
    snprintf(out, len, "%ss:%s", r->ns, hex);
}

/* ------------------------------------------------------------------ writer */

/* Compress a job's state blob in place, on the writer thread right before its
 * SET: write-behind like the upload itself. A value that is not a blob (or
 * does not shrink, or is compressed already) is sent as queued. Returns the
 * time it took. */
static double compress_job(km_redis *r, job *j) {
    double t0 = km_now_ms();
    uint8_t *z;
    size_t zlen;
    km_error e;
    int rc = km_blob_compress(j->data, j->len, r->p.compress_level, &z, &zlen, &e);
    if (rc == 0) {
        free(j->data);
        j->data = z;
        j->len = zlen;
    } else if (rc < 0) {
        km_debug("Redis upload sent uncompressed: %s", e.msg);
    }
    return km_now_ms() - t0;
}

/* MAC a job's state blob with the store key, after compression (which would
 * drop it). A value that is not a blob goes as given: readers reject it. */
static void authenticate_job(km_redis *r, job *j) {
    km_error e;
    if (km_blob_authenticate(j->data, j->len, &r->key, &e) != 0) km_debug("Redis upload sent unauthenticated: %s", e.msg);
}

static void *writer_main(void *arg) {
    km_redis *r = arg;
    pthread_mutex_lock(&r->q_lock);
    for (;;) {
        while (!r->head && !r->stop) pthread_cond_wait(&r->q_cond, &r->q_lock);
        if (!r->head) break; /* stop and nothing left */
        if (r->stop && r->wr.ctx == NULL && km_now_ms() < r->wr.next_retry_ms) break;
        job *j = r->head;
        r->head = j->next;
        if (!r->head) r->tail = NULL;
        r->q_len--;
        r->q_bytes -= j->len;
        r->in_flight = 1;
        pthread_mutex_unlock(&r->q_lock);

        double t0 = km_now_ms();
        redisContext *c = ensure(r, &r->wr);
        /* only when connected: no CPU spent on jobs that wait for the tier */
        double ct = c && r->p.compress_level != 0 ? compress_job(r, j) : 0;
        if (c && r->has_key) authenticate_job(r, j);
        bool sent = false, broke = false;
        char key[128];
        km_redis_state_key(r, j->key, key, sizeof key);
        if (c) {
            /* SET and the catalog list entry in one round trip. */
            char list[128];
            snprintf(list, sizeof list, "%sadded", r->ns);
            if (r->p.ttl_s > 0) redisAppendCommand(c, "SET %s %b EX %d", key, j->data, j->len, r->p.ttl_s);
            else redisAppendCommand(c, "SET %s %b", key, j->data, j->len);
            redisAppendCommand(c, "RPUSH %s %b", list, j->key.b, (size_t)KM_KEY_LEN);
            redisReply *set = NULL, *push = NULL;
            if (redisGetReply(c, (void **)&set) != REDIS_OK || redisGetReply(c, (void **)&push) != REDIS_OK) {
                mark_down(r, &r->wr, c->errstr);
                broke = true;
            } else if (set->type == REDIS_REPLY_ERROR) {
                km_warn("Redis SET %s failed: %s", key, set->str);
            } else {
                sent = true;
                if (push->type == REDIS_REPLY_ERROR) km_warn("Redis RPUSH %s failed: %s (catalog misses it until a rebuild)", list, push->str);
            }
            if (set) freeReplyObject(set);
            if (push) freeReplyObject(push);
        }
        if (sent) km_link_request(r->p.link, t0 + ct, j->len + sizeof key + 64, 16);
        double dt = km_now_ms() - t0 - ct;

        pthread_mutex_lock(&r->q_lock);
        r->in_flight = 0;
        r->st.upload_ms += dt;
        r->st.compress_ms += ct;
        if (!c) r->wr_failures++;
        if (sent) {
            r->st.uploads_done++;
            r->st.bytes_up += j->len;
            r->st.bytes_up_raw += j->raw_len;
            free(j->data);
            free(j);
        } else if ((!c || (broke && !j->retried)) && !r->stop) {
            /* Down: put it back at the front and wait for the retry time (or
             * stop). A connection that broke under the job (e.g. Redis
             * restarted since the last upload) gets it once more. */
            j->retried |= broke;
            j->next = r->head;
            r->head = j;
            if (!r->tail) r->tail = j;
            r->q_len++;
            r->q_bytes += j->len;
            double wait = r->wr.next_retry_ms - km_now_ms();
            if (wait > 0) km_cond_wait_ms(&r->q_cond, &r->q_lock, wait);
        } else {
            r->st.uploads_failed++;
            free(j->data);
            free(j);
        }
        if (!r->head) pthread_cond_broadcast(&r->q_idle);
    }
    r->in_flight = 0;
    pthread_cond_broadcast(&r->q_idle);
    pthread_mutex_unlock(&r->q_lock);
    return NULL;
}

/* ------------------------------------------------------------------ catalog */

static void ns_key(const km_redis *r, const char *suffix, char *out, size_t len) { snprintf(out, len, "%s%s", r->ns, suffix); }

/* Replace the local copy with the master catalog, if there is one that
 * covers at most list_len entries (one covering more was made before the
 * upload list lost entries: its position means nothing now). */
static int load_master(km_redis *r, uint64_t list_len, km_error *err) {
    char k[128];
    ns_key(r, "catalog", k, sizeof k);
    double t0 = km_now_ms();
    redisReply *rep = get_upto(r, &r->sync, err, "catalog GET", k, CATALOG_MAX);
    if (!rep) return -1;
    int rc = 0;
    if (rep->type == REDIS_REPLY_STRING && rep->len > 0) {
        km_link_request(r->p.link, t0, 64, (size_t)rep->len);
        km_catalog *m = km_catalog_decode((const uint8_t *)rep->str, (size_t)rep->len, CATALOG_MAX, err);
        if (!m) {
            km_warn("master catalog in Redis is invalid (%s); keeping the local copy", err->msg);
            rc = -1;
        } else if (km_catalog_version(m) > list_len) {
            km_debug("master catalog covers %llu list entries, the list has %llu: ignored until a rebuild",
                     (unsigned long long)km_catalog_version(m), (unsigned long long)list_len);
            km_catalog_free(m);
        } else {
            pthread_mutex_lock(&r->cat_lock);
            km_catalog_free(r->catalog);
            r->catalog = m;
            r->cat_pos = km_catalog_version(m);
            pthread_mutex_unlock(&r->cat_lock);
            pthread_mutex_lock(&r->q_lock);
            r->st.catalog_full_loads++;
            r->st.catalog_bytes_down += (uint64_t)rep->len;
            pthread_mutex_unlock(&r->q_lock);
        }
    }
    freeReplyObject(rep);
    r->last_full_ms = km_now_ms();
    return rc;
}

/* Add the list entries past cat_pos, up to end (the length it was checked
 * at: entries pushed since are left to the next sync). */
static int load_delta(km_redis *r, uint64_t end, km_error *err) {
    char k[128];
    ns_key(r, "added", k, sizeof k);
    for (;;) {
        pthread_mutex_lock(&r->cat_lock);
        uint64_t pos = r->cat_pos;
        pthread_mutex_unlock(&r->cat_lock);
        if (pos >= end) return 0;
        uint64_t last = end - pos > 4096 ? pos + 4095 : end - 1;
        double t0 = km_now_ms();
        redisReply *rep = command(r, &r->sync, err, "catalog LRANGE", "LRANGE %s %llu %llu", k, (unsigned long long)pos,
                                  (unsigned long long)last);
        if (!rep) return -1;
        if (rep->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(rep);
            return km_error_set(err, "catalog list %s is not a list", k);
        }
        size_t n = rep->elements;
        uint64_t bytes = 0;
        km_link_request(r->p.link, t0, 64, n * (KM_KEY_LEN + 5) + 8);
        pthread_mutex_lock(&r->cat_lock);
        if (r->cat_pos == pos) { /* no full load replaced the copy meanwhile */
            for (size_t i = 0; i < n; i++) {
                redisReply *e = rep->element[i];
                if (e->type == REDIS_REPLY_STRING && e->len == KM_KEY_LEN) {
                    km_key key;
                    memcpy(key.b, e->str, KM_KEY_LEN);
                    km_catalog_add(r->catalog, key);
                }
                bytes += (uint64_t)e->len;
            }
            r->cat_pos = pos + n;
        }
        pthread_mutex_unlock(&r->cat_lock);
        freeReplyObject(rep);
        pthread_mutex_lock(&r->q_lock);
        r->st.catalog_delta_keys += n;
        r->st.catalog_bytes_down += bytes;
        pthread_mutex_unlock(&r->q_lock);
        if (n == 0) return 0; /* shorter than it was: the next sync resets */
    }
}

/* A fresh random catalog epoch. */
static void new_epoch(char out[EPOCH_LEN + 1]) {
    km_key k;
    if (getentropy(k.b, sizeof k.b) != 0) { /* unique is enough: time and pid */
        km_put_u64(k.b, (uint64_t)(km_now_ms() * 1000.0));
        km_put_u64(k.b + 8, (uint64_t)getpid());
    }
    km_key_hex(k, out);
}

/* Whether the upload list (of len entries) holds more than keys: LRANGE
 * reads its entries whole, and Redis allows 512 MB each. 1 yes, 0 no or
 * unknown (MEMORY not allowed or not there: then unchecked), -1 down. */
static int list_bloated(km_redis *r, const char *lk, uint64_t len, km_error *err) {
    redisReply *rep = command(r, &r->sync, err, "catalog MEMORY", "MEMORY USAGE %s SAMPLES 0", lk);
    if (!rep) return -1;
    int rc = rep->type == REDIS_REPLY_INTEGER && (uint64_t)rep->integer > LIST_BYTES_MAX(len);
    if (rc) km_error_set(err, "catalog list %s holds %lld bytes for %llu entries: more than keys "
                         "(`kvmesh catalog rebuild` repairs it)", lk, rep->integer, (unsigned long long)len);
    freeReplyObject(rep);
    return rc;
}

/* The catalog's epoch and the upload list's length. The epoch is a random
 * token that the first client to find none sets (SET NX): Redis restarting
 * empty loses it, and a rebuild that has to recreate the list replaces it.
 * Either way list positions of another epoch mean nothing any more. The
 * length catches a list that lost entries otherwise (an older snapshot
 * restored). */
static int read_epoch(km_redis *r, char epoch[EPOCH_LEN + 1], uint64_t *list_len, km_error *err) {
    char ek[128], lk[128];
    ns_key(r, "epoch", ek, sizeof ek);
    ns_key(r, "added", lk, sizeof lk);
    redisReply *rep = get_upto(r, &r->sync, err, "catalog GET", ek, EPOCH_LEN);
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 0) { /* none yet */
        freeReplyObject(rep);
        char fresh[EPOCH_LEN + 1];
        new_epoch(fresh);
        rep = command(r, &r->sync, err, "catalog SET", "SET %s %s NX", ek, fresh);
        if (rep) freeReplyObject(rep);
        rep = rep ? get_upto(r, &r->sync, err, "catalog GET", ek, EPOCH_LEN) : NULL;
    }
    if (!rep) return -1;
    /* any string is an epoch: garbage written there is just another one */
    size_t n = rep->type == REDIS_REPLY_STRING ? (size_t)rep->len : 0;
    if (n > EPOCH_LEN) n = EPOCH_LEN;
    memcpy(epoch, n ? rep->str : "", n);
    epoch[n] = 0;
    freeReplyObject(rep);
    rep = command(r, &r->sync, err, "catalog LLEN", "LLEN %s", lk);
    if (!rep) return -1;
    int rc = 0;
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer >= 0) *list_len = (uint64_t)rep->integer;
    else rc = km_error_set(err, "catalog list %s is not a list (`kvmesh catalog rebuild` repairs it)", lk);
    freeReplyObject(rep);
    return rc;
}

/* Forget the copy: it describes a tier that no longer exists. */
static void reset_copy(km_redis *r) {
    pthread_mutex_lock(&r->cat_lock);
    km_catalog_clear(r->catalog);
    r->cat_pos = 0;
    pthread_mutex_unlock(&r->cat_lock);
    pthread_mutex_lock(&r->q_lock);
    r->st.catalog_resets++;
    pthread_mutex_unlock(&r->q_lock);
}

int km_redis_catalog_sync(km_redis *r, bool force_full, km_error *err) {
    pthread_mutex_lock(&r->sync_lock);
    char epoch[EPOCH_LEN + 1];
    uint64_t list_len = 0;
    int rc = read_epoch(r, epoch, &list_len, err);
    if (rc == 0) {
        pthread_mutex_lock(&r->cat_lock);
        bool behind = list_len < r->cat_pos;
        pthread_mutex_unlock(&r->cat_lock);
        if ((r->has_epoch && strcmp(epoch, r->epoch) != 0) || behind) {
            km_info("Redis at %s:%d: the catalog's upload list was reset (server restarted empty, or rebuilt); "
                    "reloading the catalog", r->host, r->port);
            reset_copy(r);
            force_full = true;
        }
        memcpy(r->epoch, epoch, sizeof r->epoch);
        r->has_epoch = true;
        if (force_full || r->last_full_ms == 0 || km_now_ms() - r->last_full_ms >= r->p.full_refresh_ms)
            load_master(r, list_len, err); /* an invalid master is reported; the delta still runs */
        /* entries to read: checked for what is not a key first */
        char lk[128];
        ns_key(r, "added", lk, sizeof lk);
        pthread_mutex_lock(&r->cat_lock);
        bool delta = list_len > r->cat_pos;
        pthread_mutex_unlock(&r->cat_lock);
        rc = delta && list_bloated(r, lk, list_len, err) != 0 ? -1 : load_delta(r, list_len, err);
    }
    pthread_mutex_unlock(&r->sync_lock);
    pthread_mutex_lock(&r->q_lock);
    r->st.catalog_syncs++;
    pthread_mutex_unlock(&r->q_lock);
    return rc;
}

/* A reply of the expected type, or NULL with err set (and the reply freed). */
static redisReply *expect_type(redisReply *rep, int type, const char *what, km_error *err) {
    if (rep && (rep->type != type || (type == REDIS_REPLY_ARRAY && rep->elements != 2))) {
        km_error_set(err, "catalog rebuild: unexpected %s reply%s%s", what, rep->type == REDIS_REPLY_ERROR ? ": " : "",
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "");
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

int km_redis_catalog_rebuild(km_redis *r, uint32_t *n_keys, km_error *err) {
    *n_keys = 0;
    km_catalog *cat = km_catalog_new(&r->p.catalog, err);
    if (!cat) return -1;
    char list[128], pattern[160], master[128];
    ns_key(r, "added", list, sizeof list);
    ns_key(r, "s:*", pattern, sizeof pattern);
    ns_key(r, "catalog", master, sizeof master);
    size_t plen = strlen(pattern) - 1; /* prefix before the '*' */
    int rc = -1;
    bool recreated = false;
    pthread_mutex_lock(&r->sync_lock);
    /* The list length first: keys uploaded after this point are list entries
     * past it, which every client adds on top of the master anyway. */
    uint64_t pos = 0;
    redisReply *rep = command(r, &r->sync, err, "LLEN", "LLEN %s", list);
    bool wrong_type = rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "WRONGTYPE", 9) == 0;
    if (!wrong_type) {
        rep = expect_type(rep, REDIS_REPLY_INTEGER, "LLEN", err);
        if (!rep) goto out;
        pos = (uint64_t)rep->integer;
    }
    freeReplyObject(rep);
    int bloated = wrong_type || pos == 0 ? 0 : list_bloated(r, list, pos, err);
    if (bloated < 0) goto out;
    if (wrong_type || bloated) {
        /* Some other value where the list belongs (no upload could be
         * listed), or entries that are not keys (no client reads it): start
         * a new list, at position 0; the SCAN below finds every state. */
        km_warn("catalog list %s %s: deleting it, the catalog is rebuilt from the states present", list,
                wrong_type ? "is not a list" : "holds more than keys");
        rep = expect_type(command(r, &r->sync, err, "DEL", "DEL %s", list), REDIS_REPLY_INTEGER, "DEL", err);
        if (!rep) goto out;
        freeReplyObject(rep);
        pos = 0;
        recreated = true;
    }
    char cursor[32] = "0";
    do {
        rep = expect_type(command(r, &r->sync, err, "SCAN", "SCAN %s MATCH %s COUNT 1000", cursor, pattern),
                          REDIS_REPLY_ARRAY, "SCAN", err);
        if (!rep) goto out;
        snprintf(cursor, sizeof cursor, "%s", rep->element[0]->str);
        redisReply *keys = rep->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            km_key k;
            if ((size_t)keys->element[i]->len > plen && km_key_from_hex(keys->element[i]->str + plen, &k) == 0) {
                km_catalog_add(cat, k);
                (*n_keys)++;
            }
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);
    km_catalog_set_version(cat, pos);
    uint8_t *buf;
    size_t len;
    if (km_catalog_encode(cat, &buf, &len, err) != 0) goto out;
    rep = expect_type(command(r, &r->sync, err, "SET", "SET %s %b", master, buf, len), REDIS_REPLY_STATUS, "SET", err);
    free(buf);
    if (!rep) goto out;
    freeReplyObject(rep);
    if (recreated) {
        /* A new epoch, after the master: a client that sees it reloads, and
         * finds the master of the new list. */
        char ek[128];
        ns_key(r, "epoch", ek, sizeof ek);
        new_epoch(r->epoch);
        rep = expect_type(command(r, &r->sync, err, "SET", "SET %s %s", ek, r->epoch), REDIS_REPLY_STATUS, "SET", err);
        if (!rep) goto out;
        freeReplyObject(rep);
        r->has_epoch = true;
    }
    pthread_mutex_lock(&r->cat_lock);
    km_catalog_free(r->catalog);
    r->catalog = cat;
    cat = NULL;
    r->cat_pos = pos;
    pthread_mutex_unlock(&r->cat_lock);
    r->last_rebuild_ms = r->last_full_ms = km_now_ms(); /* the copy is the master now */
    pthread_mutex_lock(&r->q_lock);
    r->st.catalog_rebuilds++;
    pthread_mutex_unlock(&r->q_lock);
    rc = 0;
out:
    pthread_mutex_unlock(&r->sync_lock);
    km_catalog_free(cat);
    if (rc == 0) {
        km_error e; /* uploads since the list length was taken: a sync's delta (it may fail: the rebuild did not) */
        km_redis_catalog_sync(r, false, &e);
    }
    return rc;
}

bool km_redis_maybe_has(km_redis *r, km_key key) {
    pthread_mutex_lock(&r->cat_lock);
    bool m = km_catalog_check(r->catalog, key);
    pthread_mutex_unlock(&r->cat_lock);
    return m;
}

static void *syncer_main(void *arg) {
    km_redis *r = arg;
    bool warned = false;
    pthread_mutex_lock(&r->q_lock);
    while (!r->stop) {
        pthread_mutex_unlock(&r->q_lock);
        km_error e;
        if (r->p.rebuild_period_ms > 0 && km_now_ms() - r->last_rebuild_ms >= r->p.rebuild_period_ms) {
            uint32_t n;
            if (km_redis_catalog_rebuild(r, &n, &e) != 0) r->last_rebuild_ms = km_now_ms(); /* retry next period */
        }
        /* An outage is reported by the connection; what else keeps the copy
         * from syncing (a broken upload list) is reported once, until fixed. */
        bool failed = km_redis_catalog_sync(r, false, &e) != 0;
        pthread_mutex_lock(&r->sync_lock);
        failed = failed && r->sync.ctx != NULL;
        pthread_mutex_unlock(&r->sync_lock);
        if (failed && !warned) km_warn("Redis at %s:%d: catalog not synced: %s", r->host, r->port, e.msg);
        warned = failed;
        pthread_mutex_lock(&r->q_lock);
        if (r->stop) break;
        km_cond_wait_ms(&r->sync_cond, &r->q_lock, r->p.sync_period_ms);
    }
    pthread_mutex_unlock(&r->q_lock);
    return NULL;
}

/* ------------------------------------------------------------------ API */

km_redis *km_redis_open(const km_redis_params *p, const uint8_t fingerprint[KM_FINGERPRINT_LEN], km_error *err) {
    km_redis *r = calloc(1, sizeof *r);
    r->p = *p;
    if (!r->p.max_blob) r->p.max_blob = (size_t)1 << 30;
    if (!r->p.queue_budget) r->p.queue_budget = (size_t)512 << 20;
    if (r->p.connect_timeout_ms <= 0) r->p.connect_timeout_ms = 500;
    if (r->p.io_timeout_ms <= 0) r->p.io_timeout_ms = 2000;
    if (!p->url || km_redis_parse_url(p->url, r->host, sizeof r->host, &r->port, &r->db, &r->user, &r->password, err) != 0) {
        if (!p->url) km_error_set(err, "no Redis URL given");
        free(r);
        return NULL;
    }
    r->url = strdup(p->url);
    r->p.url = r->url;
    r->p.secret = NULL; /* the caller's copy: only the derived key is kept */
    if (p->secret) {
        if (km_blob_key_derive(&r->key, p->secret, p->secret_len, "store") != 0) {
            km_error_set(err, "libsodium failed to derive the store key");
            free(r->user);
            free(r->password);
            free(r->url);
            free(r);
            return NULL;
        }
        r->has_key = true;
    }
    km_key fk;
    memcpy(fk.b, fingerprint, KM_FINGERPRINT_LEN);
    char hex[2 * KM_KEY_LEN + 1];
    km_key_hex(fk, hex);
    snprintf(r->ns, sizeof r->ns, "kvmesh:v1:%s:", hex);
    r->req.role = "cache reads";
    r->wr.role = "uploads";
    r->sync.role = "catalog sync";
    r->catalog = km_catalog_new(&r->p.catalog, err);
    if (!r->catalog) {
        free(r->user);
        free(r->password);
        free(r->url);
        free(r);
        return NULL;
    }
    r->cat_pos = 0;
    pthread_mutex_init(&r->cat_lock, NULL);
    pthread_mutex_init(&r->sync_lock, NULL);
    pthread_mutex_init(&r->req_lock, NULL);
    pthread_mutex_init(&r->q_lock, NULL);
    pthread_cond_init(&r->q_cond, NULL);
    pthread_cond_init(&r->q_idle, NULL);
    pthread_cond_init(&r->sync_cond, NULL);
    /* Connect now so a misconfiguration shows at start, not at the first miss. */
    pthread_mutex_lock(&r->req_lock);
    ensure(r, &r->req);
    pthread_mutex_unlock(&r->req_lock);
    pthread_create(&r->writer, NULL, writer_main, r);
    if (r->p.sync_period_ms > 0) {
        /* the first sync (master + delta) runs in the background too: a
         * request before it completes just sees a catalog miss */
        pthread_create(&r->syncer, NULL, syncer_main, r);
        r->has_syncer = true;
    }
    return r;
}

int km_redis_flush(km_redis *r, int deadline_ms) {
    double until = km_now_ms() + deadline_ms;
    pthread_mutex_lock(&r->q_lock);
    /* Give up early when the server stays unreachable: two more failed
     * connection attempts (the backoff makes them ~0.3 s apart at first). */
    uint64_t f0 = r->wr_failures;
    while ((r->head || r->in_flight) && km_now_ms() < until && r->wr_failures < f0 + 2)
        km_cond_wait_ms(&r->q_idle, &r->q_lock, 20);
    int pending = r->q_len + r->in_flight;
    pthread_mutex_unlock(&r->q_lock);
    return pending;
}

void km_redis_close(km_redis *r, int flush_ms) {
    if (!r) return;
    int pending = km_redis_flush(r, flush_ms);
    pthread_mutex_lock(&r->q_lock);
    r->stop = true;
    pthread_cond_broadcast(&r->q_cond);
    pthread_cond_broadcast(&r->sync_cond);
    pthread_mutex_unlock(&r->q_lock);
    pthread_join(r->writer, NULL);
    if (r->has_syncer) pthread_join(r->syncer, NULL);
    int dropped = 0;
    for (job *j = r->head, *n; j; j = n) {
        n = j->next;
        free(j->data);
        free(j);
        dropped++;
    }
    if (pending > 0 || dropped > 0)
        km_warn("%d state upload(s) to Redis at %s:%d not sent before exit (server unavailable)", dropped ? dropped : pending,
                r->host, r->port);
    if (r->req.ctx) redisFree(r->req.ctx);
    if (r->wr.ctx) redisFree(r->wr.ctx);
    if (r->sync.ctx) redisFree(r->sync.ctx);
    km_catalog_free(r->catalog);
    pthread_mutex_destroy(&r->cat_lock);
    pthread_mutex_destroy(&r->sync_lock);
    pthread_mutex_destroy(&r->req_lock);
    pthread_mutex_destroy(&r->q_lock);
    pthread_cond_destroy(&r->q_cond);
    pthread_cond_destroy(&r->q_idle);
    pthread_cond_destroy(&r->sync_cond);
    free(r->user);
    free(r->password);
    free(r->url);
    free(r);
}

int km_redis_get(km_redis *r, km_key key, size_t max_len, uint8_t **blob, size_t *len, km_error *err) {
    *blob = NULL;
    *len = 0;
    char k[128];
    km_redis_state_key(r, key, k, sizeof k);
    size_t max = max_len && max_len < r->p.max_blob ? max_len : r->p.max_blob;
    double t0 = km_now_ms();
    int rc = -1;
    pthread_mutex_lock(&r->req_lock);
    redisReply *rep = get_upto(r, &r->req, err, "GET", k, max);
    if (rep) {
        if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "WRONGTYPE", 9) != 0) {
            rc = km_error_set(err, "Redis GET %s: %s", k, rep->str);
        } else if (rep->type != REDIS_REPLY_STRING) { /* incl. WRONGTYPE: some other kind of value */
            km_error_set(err, "Redis GET %s: the value is not a string", k);
            rc = 2;
        } else if (rep->len == 0) {
            rc = 1;
        } else if ((size_t)rep->len > max) {
            km_error_set(err, "Redis GET %s: the value is over %zu bytes, the most a state of this key can have", k, max);
            rc = 2;
        } else {
            *blob = malloc((size_t)rep->len ? (size_t)rep->len : 1);
            memcpy(*blob, rep->str, (size_t)rep->len);
            *len = (size_t)rep->len;
            rc = 0;
        }
        freeReplyObject(rep);
    }
    pthread_mutex_unlock(&r->req_lock);
    if (rc >= 0) km_link_request(r->p.link, t0, strlen(k) + 32, *len + 16);
    pthread_mutex_lock(&r->q_lock);
    r->st.gets++;
    r->st.get_ms += km_now_ms() - t0;
    if (rc == 0) {
        r->st.hits++;
        r->st.bytes_down += *len;
    } else if (rc == 1) {
        r->st.misses++;
    } else if (rc == 2) {
        r->st.bad_values++;
    } else {
        r->st.get_errors++;
    }
    pthread_mutex_unlock(&r->q_lock);
    return rc;
}

int km_redis_put_async(km_redis *r, km_key key, const uint8_t *blob, size_t len, km_error *err) {
    if (len > r->p.max_blob) return km_error_set(err, "state of %zu bytes exceeds the Redis tier's limit of %zu", len, r->p.max_blob);
    job *j = malloc(sizeof *j);
    j->data = malloc(len ? len : 1);
    if (!j->data) {
        free(j);
        return km_error_set(err, "out of memory queueing a %zu-byte upload", len);
    }
    memcpy(j->data, blob, len);
    pthread_mutex_lock(&r->cat_lock);
    km_catalog_add(r->catalog, key); /* our own uploads: known at once */
    pthread_mutex_unlock(&r->cat_lock);
    j->key = key;
    j->len = j->raw_len = len;
    j->retried = false;
    j->next = NULL;
    pthread_mutex_lock(&r->q_lock);
    if (r->tail) r->tail->next = j;
    else r->head = j;
    r->tail = j;
    r->q_len++;
    r->q_bytes += len;
    /* Over budget (server slow or down): drop the oldest pending uploads. They
     * are counted and reported; the states stay in the local tiers. */
    while (r->q_bytes > r->p.queue_budget && r->head != j) {
        job *old = r->head;
        r->head = old->next;
        r->q_len--;
        r->q_bytes -= old->len;
        r->st.uploads_dropped++;
        free(old->data);
        free(old);
    }
    pthread_cond_signal(&r->q_cond);
    pthread_mutex_unlock(&r->q_lock);
    return 0;
}

int km_redis_del(km_redis *r, km_key key, km_error *err) {
    char k[128];
    km_redis_state_key(r, key, k, sizeof k);
    pthread_mutex_lock(&r->req_lock);
    redisReply *rep = command(r, &r->req, err, "DEL", "DEL %s", k);
    pthread_mutex_unlock(&r->req_lock);
    int rc = rep ? 0 : -1;
    if (rep) freeReplyObject(rep);
    if (rc == 0) {
        pthread_mutex_lock(&r->q_lock);
        r->st.deletes++;
        pthread_mutex_unlock(&r->q_lock);
    }
    return rc;
}

const km_blob_key *km_redis_key(const km_redis *r) { return r->has_key ? &r->key : NULL; }

void km_redis_log_trust(const km_redis *r) {
    if (r->has_key) km_debug("shared tier redis://%s:%d: states authenticated with the store secret", r->host, r->port);
    else km_warn("shared tier redis://%s:%d is trusted as is: no --store-secret-file (anyone who can write to it "
                 "can change answers; see docs/security.md)", r->host, r->port);
}

km_redis_stats km_redis_get_stats(km_redis *r) {
    pthread_mutex_lock(&r->q_lock);
    km_redis_stats s = r->st;
    s.uploads_pending = (uint64_t)(r->q_len + r->in_flight);
    pthread_mutex_unlock(&r->q_lock);
    pthread_mutex_lock(&r->cat_lock);
    s.catalog_version = r->cat_pos;
    s.catalog_bytes = km_catalog_bytes(r->catalog);
    pthread_mutex_unlock(&r->cat_lock);
    pthread_mutex_lock(&r->req_lock);
    s.up = r->req.ctx != NULL;
    pthread_mutex_unlock(&r->req_lock);
    return s;
}
