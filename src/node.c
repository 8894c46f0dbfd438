/* node.c -- see node.h.
 *
 * Threads: n_parallel workers, each owning one llama context and one planner
 * (a context's measured prefill rate is what its requests get); the callers
 * of km_node_submit (HTTP connections); and a housekeeping thread that keeps
 * the catalog of local states in step with the store.
 *
 * Locking: the node mutex guards the queue and the counters; each job has its
 * own mutex for the text it accumulates. A worker never holds the node mutex
 * while computing. */
#include "node.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "link.h"
#include "redis_tier.h"

#define MAX_STOP 4
#define MAX_STOP_LEN 64
#define CATALOG_CHECK_MS 200

struct km_job {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int refs; /* the submitter and, while queued or running, the node */
    /* the request (copied) */
    char **segs;
    int n_segs;
    bool special;
    km_sampling sampling;
    int n_predict;
    char *stop[MAX_STOP];
    int n_stop;
    /* the answer */
    char *text;
    size_t len, cap, safe; /* safe: bytes that are final */
    km_finish finish;
    bool cancel;
    bool stopped; /* a stop string matched */
    int n_prompt, n_generated;
    km_result result;
    bool bad_request, too_long;
    char error[512]; /* as km_error */
    double t_submit, queue_ms;
    km_model *model;
    km_node *node;
    struct km_job *next; /* queue link, under the node mutex */
    /* the plan at submit, for the backlog and for prefixes in flight (under
     * the node mutex once queued) */
    int n_bounds;
    km_key *keys;    /* key of each boundary of the prompt */
    int *bounds;
    double work_ms;  /* estimated compute: what it prefills, then its answer */
    double t_start;  /* when a worker took it (0 while queued) */
};

typedef struct worker {
    km_node *node;
    int id;
    km_ctx *ctx;
    km_planner planner;
    pthread_t thread;
    bool started;
    km_job *current; /* the job it computes (under the node mutex) */
} worker;

typedef struct node_metrics {
    km_counter *completed, *failed, *cancelled, *refused;
    km_counter *hit_local, *hit_redis, *hit_peer, *hit_none;
    km_counter *tok_reused, *tok_prefilled, *tok_generated;
    km_counter *bytes_redis, *bytes_peer, *false_pos, *rejected, *unauthenticated, *hint_mismatches, *planned_skips,
        *merged_bounds;
    km_histogram *ttft, *ttlt, *queue_wait;
} node_metrics;

struct km_node {
    km_node_params p;
    char model_name[128];
    km_model *model;
    km_store *store;
    km_link *link;
    km_redis *redis;
    worker *workers;
    km_metrics *metrics;
    node_metrics m;

    pthread_mutex_t lock;
    pthread_cond_t work; /* workers: a job was queued, or stop */
    km_job *qhead, *qtail;
    int queued, running;
    bool stopping, shut;
    double prefill_tok_per_ms; /* the workers' latest measured rate */
    double service_ms;         /* EWMA of how long a job holds a context */
    double first_extra_ms;     /* EWMA of the time to the first token beyond prefill (lookup, restore, a step) */
    double tail_ms;            /* EWMA of the time after the first token (the rest of the answer) */
    int n_served;              /* jobs behind these EWMAs */
    double retry_turn;         /* the latest time a refused request was told to come back */
    km_histogram *est_ratio_local, *est_ratio_forward;

    /* the mesh's peers, for requests (src_users: requests holding remotes) */
    km_peer_source peers;
    bool has_peers;
    int src_users;
    pthread_cond_t src_idle;

    /* the catalog of local states, rebuilt when the store changed */
    pthread_mutex_t cat_lock;
    km_catalog *catalog;
    uint64_t cat_changes;
    pthread_t housekeeper;
    bool housekeeper_started;
    pthread_cond_t hk_wake;
};

km_node_params km_node_default_params(void) {
    km_node_params p;
    memset(&p, 0, sizeof p);
    p.n_parallel = 1;
    p.queue_max = 16;
    p.max_wait_ms = 30000;
    p.ctx = km_ctx_default_params();
    p.store = km_store_default_params();
    p.block_size = 256;
    p.catalog = km_catalog_default_params();
    return p;
}

static const char *const route_names[] = {"planner", "fetch", "forward", "isolated"};

int km_route_mode_parse(const char *s, km_route_mode *out) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, route_names[i]) == 0) {
            *out = (km_route_mode)i;
            return 0;
        }
    return -1;
}

const char *km_route_mode_name(km_route_mode m) { return (unsigned)m < 4 ? route_names[m] : "?"; }

/* ------------------------------------------------------------------ jobs */

static void job_free(km_job *j) {
    for (int i = 0; i < j->n_segs; i++) free(j->segs[i]);
    free(j->segs);
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->text);
    free(j->keys);
    free(j->bounds);
    pthread_mutex_destroy(&j->lock);
    pthread_cond_destroy(&j->changed);
    free(j);
}

void km_job_release(km_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->lock);
    bool last = --j->refs == 0;
    if (!last) j->cancel = true; /* the submitter is gone: nobody reads the rest */
    pthread_mutex_unlock(&j->lock);
    if (last) job_free(j);
}

static void job_finish(km_job *j, km_finish f, const char *error, bool bad_request);

void km_job_cancel(km_job *j) {
    pthread_mutex_lock(&j->lock);
    j->cancel = true;
    pthread_mutex_unlock(&j->lock);
    /* a queued job leaves the queue at once: its place and its share of the
     * backlog (the wait estimates, admission) go to the others */
    km_node *n = j->node;
    km_job *prev = NULL, *q;
    pthread_mutex_lock(&n->lock);
    for (q = n->qhead; q && q != j; q = q->next) prev = q;
    if (q) {
        if (prev) prev->next = j->next;
        else n->qhead = j->next;
        if (n->qtail == j) n->qtail = prev;
        j->next = NULL;
        n->queued--;
    }
    pthread_mutex_unlock(&n->lock);
    if (!q) return; /* running (it stops at its next token), or done */
    job_finish(j, KM_FINISH_CANCELLED, "cancelled by the client", false);
    if (n->m.cancelled) km_counter_inc(n->m.cancelled);
    km_job_release(j); /* the queue's reference */
}

static void job_finish(km_job *j, km_finish f, const char *error, bool bad_request) {
    pthread_mutex_lock(&j->lock);
    if (j->finish == KM_FINISH_RUNNING) {
        j->finish = f;
        j->safe = j->len; /* nothing more can complete a stop string or a character */
        if (error) snprintf(j->error, sizeof j->error, "%s", error);
        j->bad_request = bad_request;
    }
    pthread_cond_broadcast(&j->changed);
    pthread_mutex_unlock(&j->lock);
}

int km_job_wait(km_job *j, size_t seen, int timeout_ms, char **chunk, size_t *chunk_len, km_job_status *st) {
    double deadline = km_now_ms() + timeout_ms;
    pthread_mutex_lock(&j->lock);
    while (j->safe <= seen && j->finish == KM_FINISH_RUNNING) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&j->changed, &j->lock);
        } else {
            double left = deadline - km_now_ms();
            if (left <= 0) break;
            km_cond_wait_ms(&j->changed, &j->lock, left);
        }
    }
    *chunk = NULL;
    *chunk_len = 0;
    if (j->safe > seen) {
        *chunk_len = j->safe - seen;
        *chunk = malloc(*chunk_len + 1);
        if (*chunk) {
            memcpy(*chunk, j->text + seen, *chunk_len);
            (*chunk)[*chunk_len] = '\0';
        } else {
            *chunk_len = 0;
        }
    }
    if (st) {
        memset(st, 0, sizeof *st);
        st->finish = j->finish;
        st->text_len = j->safe;
        st->n_prompt = j->n_prompt;
        st->n_generated = j->n_generated;
        st->queue_ms = j->queue_ms;
        st->result = j->result;
        st->bad_request = j->bad_request;
        st->too_long = j->too_long;
        snprintf(st->error, sizeof st->error, "%s", j->error);
    }
    int done = j->finish != KM_FINISH_RUNNING && seen + *chunk_len >= j->safe;
    pthread_mutex_unlock(&j->lock);
    return done;
}

/* Bytes at the end of text[0..len) that may still change meaning: an
 * unfinished UTF-8 character, or the start of a stop string. */
static size_t held_back(const km_job *j) {
    size_t hold = 0;
    /* UTF-8: find the last lead byte within the last 3 bytes */
    for (size_t back = 1; back <= 3 && back <= j->len; back++) {
        unsigned char c = (unsigned char)j->text[j->len - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (need > back) hold = back;
        break;
    }
    for (int s = 0; s < j->n_stop; s++) {
        size_t sl = strlen(j->stop[s]);
        for (size_t k = sl - 1; k > hold; k--) /* longest proper prefix of the stop at the end */
            if (k <= j->len && memcmp(j->text + j->len - k, j->stop[s], k) == 0) {
                hold = k;
                break;
            }
    }
    return hold;
}

/* Append a token's text; returns nonzero to stop generating. */
static int job_on_token(void *ud, int32_t tok) {
    km_job *j = ud;
    char piece[256];
    int n = km_token_piece(j->model, tok, piece, sizeof piece);
    if (n < 0) n = 0;
    pthread_mutex_lock(&j->lock);
    j->n_generated++;
    if (j->len + (size_t)n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 1024;
        while (cap < j->len + (size_t)n + 1) cap *= 2;
        char *t = realloc(j->text, cap);
        if (!t) {
            j->cancel = true;
            pthread_mutex_unlock(&j->lock);
            return 1;
        }
        j->text = t;
        j->cap = cap;
    }
    size_t before = j->len;
    memcpy(j->text + j->len, piece, (size_t)n);
    j->len += (size_t)n;
    j->text[j->len] = '\0';
    for (int s = 0; s < j->n_stop; s++) { /* a stop string ends the text just before it */
        size_t sl = strlen(j->stop[s]);
        size_t from = before >= sl ? before - sl + 1 : 0;
        char *hit = strstr(j->text + from, j->stop[s]);
        if (hit && (size_t)(hit - j->text) < j->len) {
            j->len = (size_t)(hit - j->text);
            j->text[j->len] = '\0';
            j->stopped = true;
        }
    }
    if (!j->stopped) {
        size_t h = held_back(j);
        if (j->len - h > j->safe) j->safe = j->len - h;
    }
    pthread_cond_broadcast(&j->changed);
    int stop = j->stopped || j->cancel;
    pthread_mutex_unlock(&j->lock);
    return stop;
}

/* ------------------------------------------------------------- the backlog
 *
 * Where a request waits -- here or at a peer -- depends on how much work is
 * ahead of it, not on how many jobs: one 3,000-token prompt holds a small
 * device for a minute, ten short ones for seconds. So every job carries an
 * estimate of its compute (made at submit from its tokens, what this node
 * holds or is computing of its prefix, and the measured rates), and the node
 * sums what is left of them. */

/* Estimated compute of a job that prefills n_prefill tokens here: the
 * prefill at the measured rate, the time to the first token beyond it, and
 * the rest of the answer; the mean service time until a rate is known. */
static double work_estimate_locked(const km_node *n, int n_prefill) {
    if (n->prefill_tok_per_ms <= 0) return n->service_ms;
    return n_prefill / n->prefill_tok_per_ms + n->first_extra_ms + n->tail_ms;
}

/* Compute left in the running jobs (at least nothing: one that overran its
 * estimate is about to end) and the queued ones, all contexts together. */
static double backlog_locked(const km_node *n, double now) {
    double b = 0;
    for (int i = 0; i < n->p.n_parallel; i++) {
        const km_job *j = n->workers[i].current;
        if (j && j->work_ms > now - j->t_start) b += j->work_ms - (now - j->t_start);
    }
    for (const km_job *j = n->qhead; j; j = j->next) b += j->work_ms;
    return b;
}

static bool job_has_key(const km_job *j, km_key key) {
    for (int i = 0; i < j->n_bounds; i++)
        if (km_key_equal(j->keys[i], key)) return true;
    return false;
}

/* The longest boundary of keys[] past `from` that a running or queued job
 * computes (and stores: it will be held when a job queued now starts), -1
 * if none. Equal keys are equal prefixes (prefix.h). */
static int inflight_hit_locked(const km_node *n, const km_key *keys, int n_bounds, int from) {
    for (int i = n_bounds - 1; i > from; i--) {
        for (int w = 0; w < n->p.n_parallel; w++)
            if (n->workers[w].current && job_has_key(n->workers[w].current, keys[i])) return i;
        for (const km_job *j = n->qhead; j; j = j->next)
            if (job_has_key(j, keys[i])) return i;
    }
    return -1;
}

km_job *km_node_submit(km_node *n, const km_job_spec *spec, bool *busy, km_error *err) {
    *busy = false;
    if (spec->n_segs < 1) return km_error_set(err, "the prompt is empty"), NULL;
    if (spec->n_stop > MAX_STOP) return km_error_set(err, "at most %d stop strings", MAX_STOP), NULL;
    for (int i = 0; i < spec->n_stop; i++) {
        size_t sl = strlen(spec->stop[i]);
        if (sl == 0 || sl > MAX_STOP_LEN)
            return km_error_set(err, "stop strings must be 1 to %d bytes long", MAX_STOP_LEN), NULL;
    }
    km_prompt_plan own;
    const km_prompt_plan *plan = spec->plan;
    if (!plan) {
        if (km_node_plan(n, spec->segs, spec->n_segs, spec->special, &own, err) != 0) return NULL;
        plan = &own;
    }
    km_job *j = calloc(1, sizeof *j);
    if (!j) {
        if (plan == &own) km_prompt_plan_free(&own);
        return km_error_set(err, "out of memory"), NULL;
    }
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->changed, NULL);
    j->refs = 2;
    j->model = n->model;
    j->node = n;
    j->segs = calloc((size_t)spec->n_segs, sizeof *j->segs);
    bool oom = !j->segs;
    for (int i = 0; !oom && i < spec->n_segs; i++) oom = !(j->segs[i] = strdup(spec->segs[i]));
    j->n_segs = spec->n_segs;
    j->keys = malloc((size_t)(plan->n_bounds + 1) * sizeof *j->keys);
    j->bounds = malloc((size_t)(plan->n_bounds + 1) * sizeof *j->bounds);
    oom = oom || !j->keys || !j->bounds;
    if (!oom) {
        memcpy(j->keys, plan->keys, (size_t)plan->n_bounds * sizeof *j->keys);
        memcpy(j->bounds, plan->bounds, (size_t)plan->n_bounds * sizeof *j->bounds);
        j->n_bounds = plan->n_bounds;
    }
    int n_tokens = plan->n_tokens, stored_hit = -1;
    if (plan == &own) km_prompt_plan_free(&own);
    for (int i = j->n_bounds - 1; i >= 0 && stored_hit < 0; i--) /* now, not when the caller planned */
        if (km_store_contains(n->store, j->keys[i])) stored_hit = i;
    for (int i = 0; !oom && i < spec->n_stop; i++) {
        oom = !(j->stop[i] = strdup(spec->stop[i]));
        j->n_stop = i + 1;
    }
    if (oom) {
        job_free(j);
        return km_error_set(err, "out of memory"), NULL;
    }
    j->special = spec->special;
    j->sampling = spec->sampling;
    j->n_predict = spec->n_predict;
    j->t_submit = km_now_ms();

    pthread_mutex_lock(&n->lock);
    /* room: an idle context, or a place in the waiting line that is not
     * longer than max_wait_ms (by the work ahead, not the count) */
    bool idle = n->queued == 0 && n->running < n->p.n_parallel;
    double wait_ms = idle ? 0 : backlog_locked(n, km_now_ms()) / n->p.n_parallel;
    if (n->stopping || n->queued + n->running >= n->p.n_parallel + n->p.queue_max ||
        (n->p.max_wait_ms > 0 && wait_ms > n->p.max_wait_ms)) {
        bool stopping = n->stopping, full = n->queued + n->running >= n->p.n_parallel + n->p.queue_max;
        pthread_mutex_unlock(&n->lock);
        job_free(j);
        if (n->m.refused) km_counter_inc(n->m.refused);
        *busy = true;
        if (stopping) return km_error_set(err, "the node is shutting down"), NULL;
        if (full) return km_error_set(err, "the queue is full (%d waiting)", n->p.queue_max), NULL;
        return km_error_set(err, "the estimated wait for a context is %.1f s, over this node's limit of %.1f s",
                            wait_ms / 1000, n->p.max_wait_ms / 1000.0),
               NULL;
    }
    /* what it will reuse: a stored prefix, or a longer one a job ahead computes */
    int hit = inflight_hit_locked(n, j->keys, j->n_bounds, stored_hit);
    if (hit < 0) hit = stored_hit;
    j->work_ms = work_estimate_locked(n, n_tokens - (hit >= 0 ? j->bounds[hit] : 0));
    if (n->qtail) n->qtail->next = j;
    else n->qhead = j;
    n->qtail = j;
    n->queued++;
    pthread_cond_signal(&n->work);
    pthread_mutex_unlock(&n->lock);
    return j;
}

double km_node_retry_after_ms(km_node *n) {
    pthread_mutex_lock(&n->lock);
    double now = km_now_ms();
    double turn = (n->n_served > 0 ? n->service_ms : 1000) / n->p.n_parallel;
    double at = now + backlog_locked(n, now) / n->p.n_parallel;
    if (at < n->retry_turn + turn) at = n->retry_turn + turn;
    if (at < now + turn) at = now + turn;
    n->retry_turn = at;
    pthread_mutex_unlock(&n->lock);
    return at - now;
}

/* ---------------------------------------------------------------- workers */

static void record(km_node *n, const km_result *r, km_finish f) {
    node_metrics *m = &n->m;
    if (!n->metrics) return;
    km_counter_inc(f == KM_FINISH_ERROR ? m->failed : f == KM_FINISH_CANCELLED ? m->cancelled : m->completed);
    if (f == KM_FINISH_ERROR) return;
    const km_prefill_report *p = &r->prefill;
    km_counter_inc(p->hit_tier == KM_TIER_LOCAL ? m->hit_local
                   : p->hit_tier == KM_TIER_REDIS ? m->hit_redis
                   : p->hit_tier == KM_TIER_PEER  ? m->hit_peer
                                                  : m->hit_none);
    km_counter_add(m->tok_reused, p->n_reused);
    km_counter_add(m->tok_prefilled, p->n_prefilled);
    km_counter_add(m->tok_generated, r->n_generated);
    if (p->hit_tier == KM_TIER_PEER) km_counter_add(m->bytes_peer, (double)p->bytes_remote);
    else km_counter_add(m->bytes_redis, (double)p->bytes_remote);
    km_counter_add(m->false_pos, p->n_false_positives);
    km_counter_add(m->rejected, p->n_rejected);
    km_counter_add(m->unauthenticated, p->n_unauthenticated);
    km_counter_add(m->hint_mismatches, p->n_hint_mismatches);
    km_counter_add(m->planned_skips, p->n_planned_skips);
    km_counter_add(m->merged_bounds, p->n_bounds_merged);
    km_histogram_observe(m->ttft, r->ttft_ms / 1000.0);
    km_histogram_observe(m->ttlt, r->ttlt_ms / 1000.0);
}

static void run_job(worker *w, km_job *j) {
    km_node *n = w->node;
    km_error err = {{0}};
    int32_t *toks = NULL;
    int *ends = NULL, n_tok = 0;
    /* validate first, so an impossible request is the client's error (400) */
    if (km_tokenize_segments(n->model, (const char *const *)j->segs, j->n_segs, j->special, &toks, &n_tok, &ends, &err) != 0) {
        job_finish(j, KM_FINISH_ERROR, err.msg, true);
        return;
    }
    free(toks);
    free(ends);
    int n_ctx = km_ctx_params_of(w->ctx)->n_ctx;
    if (n_tok == 0) {
        job_finish(j, KM_FINISH_ERROR, "the prompt is empty", true);
        return;
    }
    if (n_tok >= n_ctx) {
        snprintf(err.msg, sizeof err.msg, "the prompt is %d tokens; this node's context holds %d", n_tok, n_ctx);
        pthread_mutex_lock(&j->lock);
        j->too_long = true;
        pthread_mutex_unlock(&j->lock);
        job_finish(j, KM_FINISH_ERROR, err.msg, true);
        return;
    }
    int n_predict = j->n_predict;
    if (n_predict < 0 || n_predict > n_ctx - n_tok) n_predict = n_ctx - n_tok;
    pthread_mutex_lock(&j->lock);
    j->n_prompt = n_tok;
    pthread_mutex_unlock(&j->lock);

    km_peer_source src;
    pthread_mutex_lock(&n->lock);
    bool peers = n->has_peers && (n->p.route == KM_ROUTE_PLANNER || n->p.route == KM_ROUTE_FETCH);
    if (peers) {
        src = n->peers;
        n->src_users++;
    }
    pthread_mutex_unlock(&n->lock);
    km_remote *remotes = NULL;
    int n_remotes = peers ? src.acquire(src.ud, &remotes) : 0;

    km_pcache_opts o = km_pcache_default_opts();
    o.salt = n->p.salt;
    o.redis = n->redis;
    /* the paper's policy fetches whatever may be there: no planner to say no */
    o.planner = n->p.route == KM_ROUTE_FETCH ? NULL : &w->planner;
    o.remotes = remotes;
    o.n_remotes = n_remotes;
    km_request req = {.segs = (const char *const *)j->segs, .n_segs = j->n_segs, .segment_bounds = j->n_segs > 1,
                      .special = j->special, .block_size = n->p.block_size, .sampling = j->sampling,
                      .n_predict = n_predict, .on_token = job_on_token, .ud = j, .opts = &o};
    km_result res;
    int rc = km_pcache_run(w->ctx, n->store, 0, &req, &res, &err);
    if (peers) src.release(src.ud, remotes, n_remotes);
    pthread_mutex_lock(&n->lock);
    if (peers && --n->src_users == 0) pthread_cond_broadcast(&n->src_idle);
    if (w->planner.prefill_tok_per_ms > 0) n->prefill_tok_per_ms = w->planner.prefill_tok_per_ms;
    if (rc == 0) { /* EWMAs: recent jobs dominate, one outlier does not */
        bool first = n->n_served++ == 0;
        /* beyond the prefill, less remote fetches: those are estimated per path from the link fits */
        double extra = res.ttft_ms - res.prefill.t_prefill_ms - res.prefill.t_remote_ms, tail = res.ttlt_ms - res.ttft_ms;
        n->service_ms = first ? res.ttlt_ms : n->service_ms + 0.3 * (res.ttlt_ms - n->service_ms);
        n->first_extra_ms = first ? extra : n->first_extra_ms + 0.3 * (extra - n->first_extra_ms);
        n->tail_ms = first ? tail : n->tail_ms + 0.3 * (tail - n->tail_ms);
    }
    pthread_mutex_unlock(&n->lock);

    pthread_mutex_lock(&j->lock);
    j->result = res;
    bool cancelled = j->cancel && !j->stopped, stopped = j->stopped;
    pthread_mutex_unlock(&j->lock);
    km_finish f = rc != 0                   ? KM_FINISH_ERROR
                  : cancelled               ? KM_FINISH_CANCELLED
                  : stopped                 ? KM_FINISH_STOP
                  : res.n_generated >= n_predict ? KM_FINISH_LENGTH
                                            : KM_FINISH_STOP;
    record(n, &res, f);
    job_finish(j, f, rc != 0 ? err.msg : NULL, false);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    km_node *n = w->node;
    pthread_mutex_lock(&n->lock);
    for (;;) {
        while (!n->qhead && !n->stopping) pthread_cond_wait(&n->work, &n->lock);
        if (!n->qhead) break; /* stopping, and nothing left */
        km_job *j = n->qhead;
        n->qhead = j->next;
        if (!n->qhead) n->qtail = NULL;
        n->queued--;
        n->running++;
        j->t_start = km_now_ms();
        w->current = j;
        bool stopping = n->stopping;
        pthread_mutex_unlock(&n->lock);

        pthread_mutex_lock(&j->lock);
        j->queue_ms = km_now_ms() - j->t_submit;
        bool cancelled = j->cancel;
        pthread_mutex_unlock(&j->lock);
        if (n->m.queue_wait) km_histogram_observe(n->m.queue_wait, j->queue_ms / 1000.0);
        if (stopping) job_finish(j, KM_FINISH_CANCELLED, "the node is shutting down", false);
        else if (cancelled) { /* its client left while it waited */
            job_finish(j, KM_FINISH_CANCELLED, "cancelled by the client", false);
            if (n->m.cancelled) km_counter_inc(n->m.cancelled);
        } else run_job(w, j);

        pthread_mutex_lock(&n->lock);
        w->current = NULL; /* before the release: others read it under the mutex */
        n->running--;
        pthread_mutex_unlock(&n->lock);
        km_job_release(j);
        pthread_mutex_lock(&n->lock);
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

/* ------------------------------------------------------------ the catalog */

/* Rebuild the catalog of local states if the store changed since the last
 * build (Bloom filters can't delete: rebuilding drops evicted keys). */
static void catalog_refresh(km_node *n) {
    uint64_t changes = km_store_changes(n->store);
    pthread_mutex_lock(&n->cat_lock);
    bool stale = changes != n->cat_changes;
    pthread_mutex_unlock(&n->cat_lock);
    if (!stale) return;
    km_key *keys;
    size_t nk;
    if (km_store_keys(n->store, &keys, &nk, &changes) != 0) return;
    pthread_mutex_lock(&n->cat_lock);
    km_catalog_clear(n->catalog);
    for (size_t i = 0; i < nk; i++) km_catalog_add(n->catalog, keys[i]);
    n->cat_changes = changes;
    pthread_mutex_unlock(&n->cat_lock);
    free(keys);
}

static void *housekeeper_main(void *arg) {
    km_node *n = arg;
    pthread_mutex_lock(&n->lock);
    while (!n->stopping) {
        pthread_mutex_unlock(&n->lock);
        catalog_refresh(n);
        pthread_mutex_lock(&n->lock);
        if (!n->stopping) km_cond_wait_ms(&n->hk_wake, &n->lock, CATALOG_CHECK_MS);
    }
    pthread_mutex_unlock(&n->lock);
    return NULL;
}

int km_node_check_length(km_node *n, const char *const *segs, int n_segs, km_error *err) {
    int piece = km_model_max_piece_len(n->model), n_ctx = km_ctx_params_of(n->workers[0].ctx)->n_ctx;
    if (piece <= 0) return 0;
    size_t bytes = 0;
    for (int i = 0; i < n_segs; i++) bytes += strlen(segs[i]);
    size_t min_tokens = (bytes + (size_t)piece - 1) / (size_t)piece;
    if (min_tokens >= (size_t)n_ctx)
        return km_error_set(err,
                            "the prompt is %zu bytes, at least %zu tokens (a token is at most %d bytes); this node's "
                            "context holds %d",
                            bytes, min_tokens, piece, n_ctx);
    return 0;
}

int km_node_plan(km_node *n, const char *const *segs, int n_segs, bool special, km_prompt_plan *out, km_error *err) {
    memset(out, 0, sizeof *out);
    out->local_hit = -1;
    if (km_node_check_length(n, segs, n_segs, err) != 0) return -1;
    int32_t *toks;
    int *ends;
    if (km_tokenize_segments(n->model, segs, n_segs, special, &toks, &out->n_tokens, &ends, err) != 0) return -1;
    if (out->n_tokens == 0) {
        free(toks);
        free(ends);
        return km_error_set(err, "the prompt is empty");
    }
    out->bounds = malloc((size_t)out->n_tokens * sizeof *out->bounds);
    out->keys = malloc((size_t)out->n_tokens * sizeof *out->keys);
    if (!out->bounds || !out->keys) {
        free(toks);
        free(ends);
        km_prompt_plan_free(out);
        return km_error_set(err, "out of memory");
    }
    out->n_bounds = km_boundaries(ends, n_segs > 1 ? n_segs : 0, out->n_tokens, n->p.block_size, out->bounds, NULL);
    km_keys_for_boundaries(km_ctx_root_key(n->workers[0].ctx, n->p.salt), toks, out->bounds, out->n_bounds, out->keys);
    free(toks);
    free(ends);
    for (int i = out->n_bounds - 1; i >= 0 && out->local_hit < 0; i--)
        if (km_store_contains(n->store, out->keys[i])) out->local_hit = i;

    pthread_mutex_lock(&n->lock);
    int pending = inflight_hit_locked(n, out->keys, out->n_bounds, out->local_hit);
    if (pending >= 0) {
        out->local_hit = pending;
        out->local_pending = true;
    }
    double rate = n->prefill_tok_per_ms;
    /* a context is free now, or ours frees when the work ahead is done (spread over the contexts) */
    bool free_ctx = n->queued == 0 && n->running < n->p.n_parallel;
    out->wait_ms = free_ctx ? 0 : backlog_locked(n, km_now_ms()) / n->p.n_parallel;
    out->first_extra_ms = n->first_extra_ms;
    pthread_mutex_unlock(&n->lock);
    out->prefill_tok_ms = rate;
    int reused = out->local_hit >= 0 ? out->bounds[out->local_hit] : 0;
    out->local_ms = rate > 0 ? out->wait_ms + (out->n_tokens - reused) / rate + out->first_extra_ms : -1;
    return 0;
}

size_t km_node_state_size_estimate(km_node *n, int n_tokens) {
    return km_state_size_estimate(n->workers[0].ctx, n_tokens);
}

void km_prompt_plan_free(km_prompt_plan *p) {
    free(p->bounds);
    free(p->keys);
    p->bounds = NULL;
    p->keys = NULL;
}

void km_node_observe_estimate(km_node *n, const char *path, double est_ms, double actual_ms) {
    if (est_ms <= 0 || actual_ms <= 0) return;
    km_histogram *h = strcmp(path, "forward") == 0 ? n->est_ratio_forward : n->est_ratio_local;
    km_histogram_observe(h, actual_ms / est_ms);
    km_debug("planner: %s estimated %.1f ms, measured %.1f ms (x%.2f)", path, est_ms, actual_ms, actual_ms / est_ms);
}

uint64_t km_node_catalog_version(km_node *n) {
    catalog_refresh(n);
    pthread_mutex_lock(&n->cat_lock);
    uint64_t v = km_catalog_version(n->catalog);
    pthread_mutex_unlock(&n->cat_lock);
    return v;
}

void km_node_set_peer_source(km_node *n, const km_peer_source *src) {
    pthread_mutex_lock(&n->lock);
    n->has_peers = src != NULL;
    if (src) n->peers = *src;
    while (!src && n->src_users > 0) pthread_cond_wait(&n->src_idle, &n->lock);
    pthread_mutex_unlock(&n->lock);
}

int km_node_catalog(km_node *n, uint8_t **out, size_t *len, uint64_t *version, km_error *err) {
    catalog_refresh(n);
    pthread_mutex_lock(&n->cat_lock);
    int rc = km_catalog_encode(n->catalog, out, len, err);
    if (version) *version = km_catalog_version(n->catalog);
    pthread_mutex_unlock(&n->cat_lock);
    return rc;
}

/* ---------------------------------------------------------------- the node */

static double gauge_queued(void *ud) { return km_node_get_load(ud).queued; }
static double gauge_backlog(void *ud) { return km_node_get_load(ud).backlog_ms / 1000.0; }
static double gauge_running(void *ud) { return km_node_get_load(ud).running; }

static void metrics_register(km_node *n) {
    km_metrics *M = n->metrics;
    node_metrics *m = &n->m;
    const char *rq = "Requests by outcome";
    m->completed = km_metrics_counter(M, "kvmesh_requests_total", rq, "result=\"completed\"");
    m->failed = km_metrics_counter(M, "kvmesh_requests_total", rq, "result=\"failed\"");
    m->cancelled = km_metrics_counter(M, "kvmesh_requests_total", rq, "result=\"cancelled\"");
    m->refused = km_metrics_counter(M, "kvmesh_requests_total", rq, "result=\"refused\"");
    const char *hits = "Requests by where their longest reused prefix came from (none = recomputed)";
    m->hit_local = km_metrics_counter(M, "kvmesh_cache_hits_total", hits, "tier=\"local\"");
    m->hit_peer = km_metrics_counter(M, "kvmesh_cache_hits_total", hits, "tier=\"peer\"");
    m->hit_redis = km_metrics_counter(M, "kvmesh_cache_hits_total", hits, "tier=\"redis\"");
    m->hit_none = km_metrics_counter(M, "kvmesh_cache_hits_total", hits, "tier=\"none\"");
    const char *tok = "Prompt tokens reused from a state, prompt tokens computed, tokens generated";
    m->tok_reused = km_metrics_counter(M, "kvmesh_tokens_total", tok, "kind=\"reused\"");
    m->tok_prefilled = km_metrics_counter(M, "kvmesh_tokens_total", tok, "kind=\"prefilled\"");
    m->tok_generated = km_metrics_counter(M, "kvmesh_tokens_total", tok, "kind=\"generated\"");
    const char *bytes = "State bytes fetched on the request path, by source";
    m->bytes_redis = km_metrics_counter(M, "kvmesh_fetched_bytes_total", bytes, "source=\"redis\"");
    m->bytes_peer = km_metrics_counter(M, "kvmesh_fetched_bytes_total", bytes, "source=\"peer\"");
    m->false_pos = km_metrics_counter(M, "kvmesh_catalog_false_positives_total",
                                      "Catalog hits whose fetch found nothing", NULL);
    const char *rej = "Stored states not used, by reason: failed validation, or a MAC that did not verify "
                      "(recomputed instead)";
    m->rejected = km_metrics_counter(M, "kvmesh_rejected_states_total", rej, "reason=\"invalid\"");
    m->unauthenticated = km_metrics_counter(M, "kvmesh_rejected_states_total", rej, "reason=\"unauthenticated\"");
    m->hint_mismatches = km_metrics_counter(M, "kvmesh_state_hint_mismatches_total",
                                            "Cached first-token hints that disagreed with the computed token "
                                            "(the state was removed)", NULL);
    m->planned_skips = km_metrics_counter(M, "kvmesh_planner_skipped_fetches_total",
                                          "Remote states not fetched because recomputing was estimated faster", NULL);
    m->merged_bounds = km_metrics_counter(M, "kvmesh_merged_boundaries_total",
                                          "Segment ends not cached because the prompt had too many (prefix.h)", NULL);
    m->ttft = km_metrics_histogram(M, "kvmesh_ttft_seconds", "Time to first token (from a worker taking the request)",
                                   NULL, km_metrics_latency_buckets, km_metrics_n_latency_buckets);
    m->ttlt = km_metrics_histogram(M, "kvmesh_ttlt_seconds", "Time to last token (from a worker taking the request)",
                                   NULL, km_metrics_latency_buckets, km_metrics_n_latency_buckets);
    m->queue_wait = km_metrics_histogram(M, "kvmesh_queue_wait_seconds", "Time requests waited for a context", NULL,
                                         km_metrics_latency_buckets, km_metrics_n_latency_buckets);
    static const double ratio_buckets[] = {0.25, 0.5, 0.67, 0.8, 0.9, 1.1, 1.25, 1.5, 2, 4};
    const char *er = "Planner estimate error: measured / estimated time to first token, by path taken";
    n->est_ratio_local = km_metrics_histogram(M, "kvmesh_planner_estimate_ratio", er, "path=\"local\"", ratio_buckets, 10);
    n->est_ratio_forward =
        km_metrics_histogram(M, "kvmesh_planner_estimate_ratio", er, "path=\"forward\"", ratio_buckets, 10);
    km_metrics_gauge_fn(M, "kvmesh_queue_length", "Requests waiting for a context", NULL, gauge_queued, n);
    km_metrics_gauge_fn(M, "kvmesh_in_flight", "Requests being computed", NULL, gauge_running, n);
    km_metrics_gauge_fn(M, "kvmesh_backlog_seconds", "Estimated compute left in the running and queued requests",
                        NULL, gauge_backlog, n);
}

km_node *km_node_start(const km_node_params *p, km_metrics *metrics, km_error *err) {
    if (p->n_parallel < 1 || p->n_parallel > 64) return km_error_set(err, "--parallel must be 1 to 64"), NULL;
    if (p->queue_max < 0) return km_error_set(err, "the queue size must be >= 0"), NULL;
    km_node *n = calloc(1, sizeof *n);
    if (!n) return km_error_set(err, "out of memory"), NULL;
    n->p = *p;
    n->p.store_secret = NULL; /* the Redis tier keeps what it derives from it */
    n->metrics = metrics;
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->work, NULL);
    pthread_cond_init(&n->hk_wake, NULL);
    pthread_cond_init(&n->src_idle, NULL);
    pthread_mutex_init(&n->cat_lock, NULL);

    const char *base = strrchr(p->model_path, '/');
    snprintf(n->model_name, sizeof n->model_name, "%s", base ? base + 1 : p->model_path);
    size_t ml = strlen(n->model_name);
    if (ml > 5 && strcmp(n->model_name + ml - 5, ".gguf") == 0) n->model_name[ml - 5] = '\0';

    if (!(n->model = km_model_load(p->model_path, err))) goto fail;
    if (!(n->store = km_store_open(&p->store, err))) goto fail;
    if (!(n->catalog = km_catalog_new(&p->catalog, err))) goto fail;
    n->cat_changes = km_store_changes(n->store) - 1; /* build at once */
    if (p->link_spec) {
        km_link_params lp;
        if (km_link_parse(p->link_spec, &lp, err) != 0) goto fail;
        if (!(n->link = km_link_new(&lp))) {
            km_error_set(err, "out of memory");
            goto fail;
        }
    }
    if (p->store_url) {
        km_redis_params rp = km_redis_default_params();
        rp.url = p->store_url;
        rp.link = n->link;
        rp.secret = p->store_secret;
        rp.secret_len = p->store_secret_len;
        if (!(n->redis = km_redis_open(&rp, km_model_fingerprint(n->model), err))) goto fail;
        km_redis_log_trust(n->redis);
    }
    n->workers = calloc((size_t)p->n_parallel, sizeof *n->workers);
    if (!n->workers) {
        km_error_set(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < p->n_parallel; i++) {
        worker *w = &n->workers[i];
        w->node = n;
        w->id = i;
        km_planner_init(&w->planner);
        if (!(w->ctx = km_ctx_init(n->model, &p->ctx, err))) goto fail;
    }
    if (metrics) metrics_register(n);
    for (int i = 0; i < p->n_parallel; i++) {
        if (pthread_create(&n->workers[i].thread, NULL, worker_main, &n->workers[i]) != 0) {
            km_error_set(err, "cannot start worker threads");
            goto fail;
        }
        n->workers[i].started = true;
    }
    if (pthread_create(&n->housekeeper, NULL, housekeeper_main, n) != 0) {
        km_error_set(err, "cannot start the housekeeping thread");
        goto fail;
    }
    n->housekeeper_started = true;
    return n;
fail:
    km_node_free(n);
    return NULL;
}

void km_node_shutdown(km_node *n) {
    pthread_mutex_lock(&n->lock);
    if (n->shut) {
        pthread_mutex_unlock(&n->lock);
        return;
    }
    n->shut = true;
    n->stopping = true;
    /* queued jobs are not started: each is finished as cancelled, with a message */
    km_job *q = n->qhead;
    n->qhead = n->qtail = NULL;
    n->queued = 0;
    pthread_cond_broadcast(&n->work);
    pthread_cond_broadcast(&n->hk_wake);
    pthread_mutex_unlock(&n->lock);
    while (q) {
        km_job *next = q->next;
        job_finish(q, KM_FINISH_CANCELLED, "the node is shutting down", false);
        km_job_release(q);
        q = next;
    }
    for (int i = 0; n->workers && i < n->p.n_parallel; i++)
        if (n->workers[i].started) pthread_join(n->workers[i].thread, NULL);
    if (n->housekeeper_started) pthread_join(n->housekeeper, NULL);
}

void km_node_free(km_node *n) {
    if (!n) return;
    km_node_shutdown(n);
    if (n->metrics) { /* the registry may outlive the node: detach the gauges that read it */
        km_metrics_gauge_fn(n->metrics, "kvmesh_queue_length", NULL, NULL, NULL, NULL);
        km_metrics_gauge_fn(n->metrics, "kvmesh_in_flight", NULL, NULL, NULL, NULL);
        km_metrics_gauge_fn(n->metrics, "kvmesh_backlog_seconds", NULL, NULL, NULL, NULL);
    }
    for (int i = 0; n->workers && i < n->p.n_parallel; i++) km_ctx_free(n->workers[i].ctx);
    free(n->workers);
    if (n->redis) km_redis_close(n->redis, 10000); /* uploads still queued go out first */
    km_link_free(n->link);
    km_store_close(n->store); /* flushes the disk writes */
    km_catalog_free(n->catalog);
    km_model_free(n->model);
    pthread_mutex_destroy(&n->lock);
    pthread_cond_destroy(&n->work);
    pthread_cond_destroy(&n->hk_wake);
    pthread_cond_destroy(&n->src_idle);
    pthread_mutex_destroy(&n->cat_lock);
    free(n);
}

km_model *km_node_model(km_node *n) { return n->model; }
const char *km_node_model_name(const km_node *n) { return n->model_name; }
km_store *km_node_store(km_node *n) { return n->store; }
km_route_mode km_node_route_mode(const km_node *n) { return n->p.route; }
km_link *km_node_link(km_node *n) { return n->link; }

/* Up to two keys of a job: its longest boundaries but the last. */
static int job_pending_keys(const km_job *j, km_key *out, int room) {
    int k = 0;
    for (int i = j->n_bounds - 2; i >= 0 && k < 2 && k < room; i--) out[k++] = j->keys[i];
    return k;
}

int km_node_pending(km_node *n, km_key *out, int max) {
    int k = 0;
    pthread_mutex_lock(&n->lock);
    for (int w = 0; w < n->p.n_parallel && k < max; w++)
        if (n->workers[w].current) k += job_pending_keys(n->workers[w].current, out + k, max - k);
    for (const km_job *j = n->qhead; j && k < max; j = j->next) k += job_pending_keys(j, out + k, max - k);
    pthread_mutex_unlock(&n->lock);
    return k;
}

km_node_load km_node_get_load(km_node *n) {
    pthread_mutex_lock(&n->lock);
    km_node_load l = {n->queued, n->running, n->p.n_parallel, n->p.queue_max, n->prefill_tok_per_ms * 1000.0,
                      backlog_locked(n, km_now_ms())};
    pthread_mutex_unlock(&n->lock);
    return l;
}
