/* pcache.c -- see pcache.h. */
#include "pcache.h"

#include <stdlib.h>
#include <string.h>

#include "blob.h"

km_pcache_opts km_pcache_default_opts(void) {
    km_pcache_opts o = {.salt = NULL, .lookup = true, .save = true, .max_blob = (size_t)1 << 30, .redis = NULL,
                        .remotes = NULL, .n_remotes = 0, .planner = NULL, .skip_catalog = false, .next_hint = false};
    return o;
}

int km_blob_from_state(km_ctx *c, const int32_t *tokens, int n_tokens, const uint8_t *state, size_t state_len,
                       uint8_t **out, size_t *len, km_error *err) {
    size_t total = km_blob_size((uint32_t)n_tokens, state_len);
    uint8_t *blob = malloc(total);
    if (!blob) return km_error_set(err, "out of memory for a %zu-byte snapshot", total);
    uint8_t *payload = km_blob_begin(blob, km_model_fingerprint(km_ctx_model(c)), km_ctx_type_k(c), km_ctx_type_v(c),
                                     tokens, (uint32_t)n_tokens, state_len);
    memcpy(payload, state, state_len);
    km_blob_seal(blob, total);
    *out = blob;
    *len = total;
    return 0;
}

int km_pcache_restore_blob(km_ctx *c, int seq, const uint8_t *blob, size_t len, size_t max_blob,
                           const int32_t *req_tokens, int n_req, int expect_tokens, km_blob_info *info, km_error *err) {
    km_blob_info local;
    if (!info) info = &local;
    if (km_blob_parse(blob, len, max_blob, info, err) != 0) return -1;
    if ((int)info->n_tokens != expect_tokens)
        return km_error_set(err, "blob holds %u tokens, its key names a %d-token prefix", info->n_tokens, expect_tokens);
    if (km_blob_check_request(info, km_model_fingerprint(km_ctx_model(c)), km_ctx_type_k(c), km_ctx_type_v(c),
                              req_tokens, n_req, err) != 0)
        return -1;
    uint8_t *owned = NULL;
    const uint8_t *raw;
    size_t raw_len;
    if (km_blob_payload_decode(info, max_blob, &owned, &raw, &raw_len, err) != 0) return -1;
    int rc = km_state_restore(c, seq, raw, raw_len, (int)info->n_tokens, err);
    free(owned);
    return rc;
}

int km_pcache_decode_last(km_ctx *c, int seq, const int32_t *tokens, int n_tokens, km_error *err) {
    int last = n_tokens - 1;
    return km_prefill(c, seq, tokens, n_tokens, last, &last, 1, NULL, NULL, err);
}

typedef struct snap_ctx {
    km_ctx *c;
    km_store *store;
    km_redis *redis;
    const int32_t *tokens;
    int n_tokens;
    const km_key *keys;
    km_prefill_report *rep;
    /* the end boundary's blob waits for the last token's logits (next-token hint) */
    uint8_t *pending;
    size_t pending_len;
    int pending_i;
} snap_ctx;

/* Store a sealed snapshot locally and queue it for the shared tier. */
static void keep_snapshot(snap_ctx *s, int i, int n_past, uint8_t *blob, size_t len) {
    km_error e;
    if (s->store) {
        if (km_store_put(s->store, s->keys[i], blob, len, &e) == 0) {
            s->rep->n_saved++;
            s->rep->bytes_saved += len;
        } else {
            km_warn("snapshot at %d tokens not stored: %s", n_past, e.msg);
        }
    }
    /* write-behind: queued here, sent by the tier's own thread */
    if (s->redis && km_redis_put_async(s->redis, s->keys[i], blob, len, &e) == 0) {
        s->rep->n_uploaded++;
        s->rep->bytes_uploaded += len;
    }
}

static int on_boundary(void *ud, int i, int n_past, const uint8_t *state, size_t state_len) {
    snap_ctx *s = ud;
    double t0 = km_now_ms();
    uint8_t *blob;
    size_t len;
    km_error e;
    if (km_blob_from_state(s->c, s->tokens, n_past, state, state_len, &blob, &len, &e) != 0) {
        km_warn("snapshot at %d tokens failed: %s", n_past, e.msg);
    } else if (n_past == s->n_tokens - 1) {
        s->pending = blob; /* finished by finish_end_snapshot */
        s->pending_len = len;
        s->pending_i = i;
    } else {
        keep_snapshot(s, i, n_past, blob, len);
        free(blob);
    }
    s->rep->t_save_ms += km_now_ms() - t0;
    return 0; /* a failed snapshot costs reuse later, never this request */
}

/* The last token has been decoded: record it and the greedy choice after it
 * in the end boundary's blob, then store that. */
static void finish_end_snapshot(snap_ctx *s) {
    if (!s->pending) return;
    double t0 = km_now_ms();
    int32_t next = km_logits_argmax(s->c);
    if (next >= 0) {
        km_blob_set_next(s->pending, s->tokens[s->n_tokens - 1], next);
        km_blob_seal(s->pending, s->pending_len);
    }
    keep_snapshot(s, s->pending_i, s->n_tokens - 1, s->pending, s->pending_len);
    free(s->pending);
    s->pending = NULL;
    s->rep->t_save_ms += km_now_ms() - t0;
}

/* ---- remote holders ---- */

/* The Redis tier as a remote holder: its link is the planner's, a bad value
 * is deleted from the server. */
typedef struct redis_src {
    km_redis *redis;
    km_planner *planner;
    bool skip_catalog;
} redis_src;

static bool redis_maybe_has(void *ud, km_key key) {
    redis_src *r = ud;
    return r->skip_catalog || km_redis_maybe_has(r->redis, key);
}

static int redis_get(void *ud, km_key key, size_t max_len, uint8_t **blob, size_t *len, km_error *err) {
    return km_redis_get(((redis_src *)ud)->redis, key, max_len, blob, len, err);
}

static void redis_reject(void *ud, km_key key, const char *why) {
    km_error e;
    km_redis_del(((redis_src *)ud)->redis, key, &e);
}

static void redis_link(void *ud, km_linkfit *out) {
    redis_src *r = ud;
    if (r->planner) *out = r->planner->link;
    else km_linkfit_init(out);
}

static void redis_observe_fetch(void *ud, size_t wire_bytes, double ms) {
    redis_src *r = ud;
    if (r->planner) km_planner_observe_fetch(r->planner, wire_bytes, ms);
}

static void redis_observe_wire(void *ud, size_t wire_bytes, size_t state_bytes) {
    redis_src *r = ud;
    if (r->planner) km_planner_observe_wire(r->planner, wire_bytes, state_bytes);
}

/* Everything one prefill may restore from besides the local store. */
typedef struct sources {
    redis_src rs;
    km_remote *all; /* the Redis tier (if any) first, then the peers */
    int n;
    int first_peer; /* index of opts->remotes[0] in all */
} sources;

static int sources_init(sources *S, const km_pcache_opts *o) {
    memset(S, 0, sizeof *S);
    S->all = malloc((size_t)(o->n_remotes + 1) * sizeof *S->all);
    if (!S->all) return -1;
    if (o->redis) {
        S->rs = (redis_src){o->redis, o->planner, o->skip_catalog};
        S->all[S->n++] = (km_remote){KM_TIER_REDIS,      "Redis",         &S->rs,
                                     redis_maybe_has,    redis_get,       redis_reject,
                                     redis_link,         redis_observe_fetch, redis_observe_wire,
                                     km_redis_key(o->redis)};
    }
    S->first_peer = S->n;
    for (int i = 0; i < o->n_remotes; i++) S->all[S->n++] = o->remotes[i];
    return 0;
}

/* Where a stored prefix can come from, and what the planner expects it to cost. */
typedef struct candidate {
    int i;         /* boundary index */
    int src;       /* -1: the local store, else index into sources.all */
    double est_ms; /* estimated time to the end of prefill via this state */
} candidate;

static int by_estimate(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->est_ms != y->est_ms) return x->est_ms < y->est_ms ? -1 : 1;
    if (x->i != y->i) return y->i - x->i; /* ties: the longer prefix */
    return x->src - y->src;               /* then local, Redis, peers in order */
}

/* The largest blob a state of n_tokens tokens can be on this context: its
 * exact size uncompressed (compression only ever shrinks it), capped by
 * max_blob; max_blob when the state layout is unknown. */
static size_t blob_bound(km_ctx *c, int n_tokens, size_t max_blob) {
    size_t state = km_state_size_estimate(c, n_tokens);
    if (state == 0) return max_blob;
    size_t b = km_blob_size((uint32_t)n_tokens, state);
    return b < max_blob ? b : max_blob;
}

/* Fetch the blob of a candidate: 0 got it, 1 nothing usable. *trusted: its
 * origin is trusted (see Trust in pcache.h). A remote value larger than
 * max_len is rejected unread; a remote blob is authenticated here, before
 * anything else reads it. */
static int fetch_blob(km_store *store, const sources *S, km_key key, int src, size_t max_len, uint8_t **blob,
                      size_t *len, bool *trusted, km_prefill_report *rep) {
    km_error e;
    *trusted = false;
    if (src < 0) {
        int rc = km_store_get_origin(store, key, blob, len, trusted, &e);
        if (rc < 0) km_warn("cache read failed: %s", e.msg);
        return rc == 0 ? 0 : 1;
    }
    const km_remote *r = &S->all[src];
    double t0 = km_now_ms();
    int rc = r->get(r->ud, key, max_len, blob, len, &e);
    double dt = km_now_ms() - t0;
    rep->t_remote_ms += dt;
    rep->n_remote_gets++;
    if (rc == 0) {
        rep->bytes_remote += *len;
        if (r->observe_fetch) r->observe_fetch(r->ud, *len, dt);
        if (r->key && km_blob_verify(*blob, *len, r->key, &e) != 0) {
            char hex[2 * KM_KEY_LEN + 1];
            km_key_hex(key, hex);
            km_warn("cached state %s from %s rejected%s: %s", hex, r->name, r->tier == KM_TIER_PEER ? "" : " and removed",
                    e.msg);
            rep->n_unauthenticated++;
            if (r->reject) r->reject(r->ud, key, e.msg);
            free(*blob);
            *blob = NULL;
            return 1;
        }
        *trusted = r->key != NULL;
        return 0;
    }
    if (rc == 1) rep->n_false_positives++; /* the catalog was stale or wrong: a miss */
    if (rc == 2) {                         /* e.g. oversized: never a valid blob */
        km_warn("%s value rejected: %s", r->name, e.msg);
        rep->n_rejected++;
        if (r->reject) r->reject(r->ud, key, e.msg);
    }
    if (rc < 0) km_debug("%s: %s", r->name, e.msg);
    return 1;
}

/* Collect the candidates: every boundary the local store holds (exact) or a
 * remote holder's catalog may hold (no catalog hit, no round trip). With
 * measured rates, each gets the estimated time to finish the prefill through
 * it, candidates slower than recomputing everything are dropped, and the rest
 * are tried fastest first; without rates, longest first. Shorter candidates
 * stay in the list: a state that fails validation falls back to the next.
 * Returns the count. */
static int plan_candidates(km_ctx *c, km_store *store, const sources *S, km_planner *planner, int n_tokens,
                           const int *bounds, int n_bounds, const km_key *keys, candidate *out,
                           km_prefill_report *rep) {
    bool rates = planner && planner->prefill_tok_per_ms > 0;
    double full_ms = rates ? n_tokens / planner->prefill_tok_per_ms : 0;
    km_linkfit *links = malloc((size_t)(S->n + 1) * sizeof *links);
    if (!links) return 0;
    for (int r = 0; r < S->n; r++) {
        if (S->all[r].link) S->all[r].link(S->all[r].ud, &links[r]);
        else km_linkfit_init(&links[r]);
    }
    int n = 0;
    for (int i = n_bounds - 1; i >= 0; i--) {
        double rest_ms = rates ? (n_tokens - bounds[i]) / planner->prefill_tok_per_ms : 0;
        size_t est_bytes = km_state_size_estimate(c, bounds[i]);
        if (store && km_store_contains(store, keys[i])) {
            double restore = rates ? (double)est_bytes * planner->restore_ms_per_byte : 0;
            out[n++] = (candidate){i, -1, restore + rest_ms};
            continue; /* a local copy beats any remote one of the same prefix */
        }
        for (int r = 0; r < S->n; r++) {
            if (!S->all[r].maybe_has(S->all[r].ud, keys[i])) continue;
            km_plan_estimate e = planner ? km_planner_estimate_via(planner, &links[r], est_bytes, bounds[i])
                                         : (km_plan_estimate){0, 0, false};
            if (rep->est_fetch_ms == 0 && e.known) { /* the longest remote candidate's figures */
                rep->est_fetch_ms = e.fetch_ms;
                rep->est_recompute_ms = e.recompute_ms;
            }
            if (e.known && e.fetch_ms + rest_ms >= full_ms) {
                rep->n_planned_skips++;
                continue;
            }
            out[n++] = (candidate){i, r, (e.known ? e.fetch_ms : 0) + rest_ms};
        }
    }
    free(links);
    if (rates) qsort(out, (size_t)n, sizeof *out, by_estimate);
    return n;
}

/* Restore the best stored prefix; returns its boundary index, or -1.
 * *check_hint gets a hint to compare with the computed token (see Trust). */
static int restore_best(km_ctx *c, km_store *store, const sources *S, int seq, const int32_t *tokens, int n_tokens,
                        const int *bounds, int n_bounds, const km_key *keys, const km_pcache_opts *o,
                        km_prefill_report *rep, int32_t *check_hint) {
    candidate *cand = malloc((size_t)n_bounds * (size_t)(S->n + 1) * sizeof *cand);
    if (!cand) return -1;
    int n_cand = plan_candidates(c, store, S, o->planner, n_tokens, bounds, n_bounds, keys, cand, rep);
    int hit = -1;
    for (int k = 0; k < n_cand && hit < 0; k++) {
        int i = cand[k].i, src = cand[k].src;
        const km_remote *r = src >= 0 ? &S->all[src] : NULL;
        uint8_t *blob = NULL;
        size_t len = 0;
        bool trusted;
        if (fetch_blob(store, S, keys[i], src, blob_bound(c, bounds[i], o->max_blob), &blob, &len, &trusted, rep) != 0)
            continue;
        km_error e;
        km_blob_info info;
        double t0 = km_now_ms();
        int rc = km_pcache_restore_blob(c, seq, blob, len, o->max_blob, tokens, n_tokens, bounds[i], &info, &e);
        double dt = km_now_ms() - t0;
        if (rc == 0) {
            rep->t_restore_ms += dt;
            rep->bytes_loaded += len;
            rep->hit_tier = r ? r->tier : KM_TIER_LOCAL;
            rep->hit_remote = r && src >= S->first_peer ? src - S->first_peer : -1;
            if (o->planner) km_planner_observe_restore(o->planner, (size_t)info.raw_len, dt);
            if (r && r->observe_wire) r->observe_wire(r->ud, len, (size_t)info.raw_len);
            if (bounds[i] == n_tokens - 1 && info.has_next && info.next_from == tokens[n_tokens - 1]) {
                if (trusted && o->next_hint) rep->next_hint = info.next_token;
                else *check_hint = info.next_token; /* decoded all the same: compared after the prefill */
            }
            /* keep a fetched state locally, as trusted as its source: the next
             * request finds it without the network */
            if (r && store) {
                if (trusted) km_store_put(store, keys[i], blob, len, &e);
                else km_store_put_untrusted(store, keys[i], blob, len, &e);
            }
            rep->hit_key = keys[i];
            rep->hit_trusted = trusted;
            hit = i;
        } else {
            char hex[2 * KM_KEY_LEN + 1];
            km_key_hex(keys[i], hex);
            km_warn("cached state %s from %s rejected%s: %s", hex, r ? r->name : "the local store",
                    r && r->tier == KM_TIER_PEER ? "" : " and removed", e.msg);
            rep->n_rejected++;
            if (r) {
                if (r->reject) r->reject(r->ud, keys[i], e.msg);
            } else {
                km_store_remove(store, keys[i]);
            }
        }
        free(blob);
    }
    free(cand);
    return hit;
}

/* A next-token hint disagreed with the token computed from its state: the
 * blob is wrong or forged. Count it, log it as the error it is, and remove
 * the blob from every tier it came from (the local copy; the Redis value; a
 * peer is told: its copy is its own to drop). */
static void drop_bad_hint(km_store *store, const km_pcache_opts *o, km_prefill_report *rep, int32_t hint,
                          int32_t computed) {
    char hex[2 * KM_KEY_LEN + 1];
    km_key_hex(rep->hit_key, hex);
    const km_remote *peer = rep->hit_tier == KM_TIER_PEER && rep->hit_remote >= 0 && rep->hit_remote < o->n_remotes
                                ? &o->remotes[rep->hit_remote]
                                : NULL;
    km_warn("error: cached state %s from %s hints first token %d, but its state computes %d: wrong or forged state "
            "removed", hex, rep->hit_tier == KM_TIER_REDIS ? "Redis" : peer ? peer->name : "the local store", hint, computed);
    rep->n_hint_mismatches++;
    if (store) km_store_remove(store, rep->hit_key);
    km_error e;
    if (rep->hit_tier == KM_TIER_REDIS && o->redis) km_redis_del(o->redis, rep->hit_key, &e);
    if (peer && peer->reject) peer->reject(peer->ud, rep->hit_key, "its next-token hint disagrees with its state");
}

int km_pcache_prefill(km_ctx *c, km_store *store, int seq, const int32_t *tokens, int n_tokens, const int *bounds,
                      int n_bounds, const km_pcache_opts *opts, km_prefill_report *rep, km_error *err) {
    km_pcache_opts o = opts ? *opts : km_pcache_default_opts();
    memset(rep, 0, sizeof *rep);
    rep->n_prompt = n_tokens;
    rep->n_bounds = n_bounds;
    rep->hit_index = -1;
    rep->hit_remote = -1;
    rep->next_hint = -1;
    km_seq_clear(c, seq);

    km_key *keys = NULL;
    int n_past = 0;
    int32_t check_hint = -1;
    km_redis *redis = o.redis;
    if ((store || redis || o.n_remotes > 0) && n_bounds > 0) {
        double t0 = km_now_ms();
        keys = malloc((size_t)n_bounds * sizeof *keys);
        if (!keys) return km_error_set(err, "out of memory");
        km_keys_for_boundaries(km_ctx_root_key(c, o.salt), tokens, bounds, n_bounds, keys);
        /* a failed restore leaves the sequence empty (km_state_restore) */
        sources S;
        if (o.lookup && sources_init(&S, &o) == 0) {
            rep->hit_index =
                restore_best(c, store, &S, seq, tokens, n_tokens, bounds, n_bounds, keys, &o, rep, &check_hint);
            free(S.all);
        }
        rep->t_lookup_ms = km_now_ms() - t0 - rep->t_restore_ms;
        if (rep->hit_index >= 0) n_past = bounds[rep->hit_index];
    }
    rep->n_reused = n_past;
    rep->n_prefilled = n_tokens - n_past;
    if (rep->next_hint >= 0) { /* the answer's first token is known: nothing to compute now */
        rep->n_prefilled = 0;
        free(keys);
        return 0;
    }

    snap_ctx sc = {.c = c, .store = store, .redis = redis, .tokens = tokens, .n_tokens = n_tokens, .keys = keys, .rep = rep};
    double t0 = km_now_ms();
    km_boundary_fn fn = (store || redis) && o.save ? on_boundary : NULL;
    int rc = km_prefill(c, seq, tokens, n_tokens, n_past, bounds, n_bounds, fn, &sc, err);
    rep->t_prefill_ms = km_now_ms() - t0 - rep->t_save_ms; /* the snapshots' time is theirs */
    if (rc == 0) finish_end_snapshot(&sc);
    free(sc.pending);
    if (rc == 0 && check_hint >= 0) {
        int32_t computed = km_logits_argmax(c);
        if (computed != check_hint) drop_bad_hint(store, &o, rep, check_hint, computed);
    }
    if (rc == 0 && o.planner) km_planner_observe_prefill(o.planner, rep->n_prefilled, rep->t_prefill_ms);
    free(keys);
    return rc;
}

int km_tokenize_segments(const km_model *m, const char *const *segs, int n_segs, bool special, int32_t **tokens,
                         int *n_tokens, int **seg_ends, km_error *err) {
    int32_t *all = NULL;
    int n_all = 0;
    int *ends = malloc((size_t)(n_segs > 0 ? n_segs : 1) * sizeof *ends);
    for (int i = 0; i < n_segs; i++) {
        int32_t *t;
        int n;
        unsigned flags = (i == 0 ? KM_TOKENIZE_BOS : 0u) | (special ? KM_TOKENIZE_SPECIAL : 0u);
        if (km_tokenize(m, segs[i], strlen(segs[i]), flags, &t, &n, err) != 0) {
            free(all);
            free(ends);
            return -1;
        }
        int32_t *grown = realloc(all, (size_t)(n_all + n + 1) * sizeof *all);
        if (!grown) {
            free(t);
            free(all);
            free(ends);
            return km_error_set(err, "out of memory");
        }
        all = grown;
        memcpy(all + n_all, t, (size_t)n * sizeof *t);
        n_all += n;
        ends[i] = n_all;
        free(t);
    }
    *tokens = all;
    *n_tokens = n_all;
    *seg_ends = ends;
    return 0;
}

typedef struct run_timer {
    const km_request *req;
    double t_first, t_last;
    int n;
} run_timer;

static int run_on_token(void *ud, int32_t tok) {
    run_timer *t = ud;
    double now = km_now_ms();
    if (t->n++ == 0) t->t_first = now;
    t->t_last = now;
    return t->req->on_token ? t->req->on_token(t->req->ud, tok) : 0;
}

/* km_generate after a next-token hint: the hint was reported already, so the
 * same token, sampled again from the now computed logits, is not repeated.
 * A different one means the trusted state was wrong after all (see Trust). */
typedef struct after_hint {
    run_timer *t;
    int32_t hint;
    bool seen;
    km_store *store;
    const km_pcache_opts *opts;
    km_prefill_report *rep;
} after_hint;

static int after_hint_on_token(void *ud, int32_t tok) {
    after_hint *h = ud;
    if (h->seen) return run_on_token(h->t, tok);
    h->seen = true;
    if (tok != h->hint) drop_bad_hint(h->store, h->opts, h->rep, h->hint, tok);
    return 0;
}

/* Generation when a full hit supplied the first token: report it at once;
 * decode the last prompt token only if more tokens are wanted. */
static int generate_from_hint(km_ctx *c, km_store *store, int seq, const int32_t *tokens, int n, km_sampler *s,
                              const km_request *req, const km_pcache_opts *o, km_result *res, run_timer *t,
                              km_error *err) {
    int32_t hint = res->prefill.next_hint;
    if (km_token_is_eog(km_ctx_model(c), hint)) return 0;
    if (run_on_token(t, hint) != 0 || req->n_predict <= 1) return 1;
    if (km_pcache_decode_last(c, seq, tokens, n, err) != 0) return -1;
    after_hint h = {t, hint, false, store, o, &res->prefill};
    return km_generate(c, seq, n, s, req->n_predict, after_hint_on_token, &h, err);
}

int km_pcache_run(km_ctx *c, km_store *store, int seq, const km_request *req, km_result *res, km_error *err) {
    memset(res, 0, sizeof *res);
    double t0 = km_now_ms();
    int32_t *tokens = NULL;
    int n = 0, *ends = NULL, rc = -1;
    if (km_tokenize_segments(km_ctx_model(c), req->segs, req->n_segs, req->special, &tokens, &n, &ends, err) != 0) return -1;
    if (n == 0) {
        free(tokens);
        free(ends);
        return km_error_set(err, "the prompt is empty");
    }
    int n_ctx = km_ctx_params_of(c)->n_ctx;
    if (n + req->n_predict > n_ctx) {
        free(tokens);
        free(ends);
        return km_error_set(err, "prompt (%d tokens) + %d to generate exceed the context size %d", n, req->n_predict, n_ctx);
    }
    int *bounds = malloc((size_t)n * sizeof *bounds);
    int merged;
    int nb = km_boundaries(ends, req->segment_bounds ? req->n_segs : 0, n, req->block_size, bounds, &merged);
    if (merged) km_debug("%d of the prompt's segment ends or blocks merged (at most %d boundaries)", merged, KM_MAX_BOUNDS);
    km_pcache_opts o = req->opts ? *req->opts : km_pcache_default_opts();
    /* the hint is what greedy decoding picks first: for greedy requests that want a token */
    o.next_hint = req->sampling.temp <= 0 && req->n_predict > 0;
    int prc = km_pcache_prefill(c, store, seq, tokens, n, bounds, nb, &o, &res->prefill, err);
    res->prefill.n_bounds_merged = merged;
    if (prc == 0) {
        km_sampler *s = km_sampler_init(&req->sampling);
        run_timer t = {req, 0, 0, 0};
        if (res->prefill.next_hint >= 0)
            res->n_generated = generate_from_hint(c, store, seq, tokens, n, s, req, &o, res, &t, err);
        else
            res->n_generated = km_generate(c, seq, n, s, req->n_predict, run_on_token, &t, err);
        km_sampler_free(s);
        double end = km_now_ms();
        res->ttft_ms = (t.n ? t.t_first : end) - t0;
        res->ttlt_ms = (t.n ? t.t_last : end) - t0;
        rc = res->n_generated < 0 ? -1 : 0;
    }
    free(bounds);
    free(tokens);
    free(ends);
    return rc;
}
