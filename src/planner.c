/* planner.c -- see planner.h. */
#include "planner.h"

#include <string.h>

/* Weight of the newest observation in the EWMAs, and the decay of the link
 * fit's sums per observation: recent behaviour dominates (links and load
 * change), one outlier does not. */
#define EWMA_ALPHA 0.3
#define LINK_DECAY 0.85
/* Prefills shorter than this are mostly fixed overhead, not a rate. */
#define MIN_PREFILL_TOKENS 8

void km_linkfit_init(km_linkfit *l) {
    memset(l, 0, sizeof *l);
    l->wire_ratio = 1.0;
}

void km_planner_init(km_planner *p) {
    memset(p, 0, sizeof *p);
    km_linkfit_init(&p->link);
}

static double ewma(double old, double sample, int n_before) { return n_before == 0 ? sample : old + EWMA_ALPHA * (sample - old); }

void km_planner_observe_prefill(km_planner *p, int n_tokens, double ms) {
    if (n_tokens < MIN_PREFILL_TOKENS || ms <= 0) return;
    p->prefill_tok_per_ms = ewma(p->prefill_tok_per_ms, n_tokens / ms, p->n_prefill_obs);
    p->n_prefill_obs++;
}

void km_linkfit_observe_fetch(km_linkfit *l, size_t bytes, double ms) {
    if (ms < 0) return;
    double x = (double)bytes, y = ms;
    l->sw = l->sw * LINK_DECAY + 1;
    l->sx = l->sx * LINK_DECAY + x;
    l->sy = l->sy * LINK_DECAY + y;
    l->sxx = l->sxx * LINK_DECAY + x * x;
    l->sxy = l->sxy * LINK_DECAY + x * y;
    l->n_obs++;
}

void km_linkfit_observe_wire(km_linkfit *l, size_t wire_bytes, size_t state_bytes) {
    if (state_bytes == 0) return;
    l->wire_ratio = ewma(l->wire_ratio, (double)wire_bytes / (double)state_bytes, l->n_wire_obs);
    l->n_wire_obs++;
}

void km_planner_observe_fetch(km_planner *p, size_t bytes, double ms) { km_linkfit_observe_fetch(&p->link, bytes, ms); }

void km_planner_observe_wire(km_planner *p, size_t wire_bytes, size_t state_bytes) {
    km_linkfit_observe_wire(&p->link, wire_bytes, state_bytes);
}

void km_planner_observe_restore(km_planner *p, size_t state_bytes, double ms) {
    if (state_bytes == 0) return;
    p->restore_ms_per_byte = ewma(p->restore_ms_per_byte, ms / (double)state_bytes, p->n_restore_obs);
    p->n_restore_obs++;
}

void km_linkfit_params(const km_linkfit *p, double *rtt_ms, double *bytes_per_ms) {
    *rtt_ms = 0;
    *bytes_per_ms = 0;
    if (p->n_obs == 0 || p->sx <= 0) return;
    double mx = p->sx / p->sw, my = p->sy / p->sw;
    double var = p->sxx / p->sw - mx * mx;
    double slope = 0, icpt = 0;
    /* A line needs transfers of different sizes; with (nearly) one size, fall
     * back to a line through the origin: all time is per byte. */
    if (var > (0.05 * mx) * (0.05 * mx)) {
        slope = (p->sxy / p->sw - mx * my) / var;
        icpt = my - slope * mx;
    }
    if (slope <= 0 || icpt < 0) {
        slope = p->sy / p->sx;
        icpt = 0;
    }
    *rtt_ms = icpt;
    *bytes_per_ms = 1.0 / slope;
}

double km_linkfit_fetch_ms(const km_linkfit *l, size_t state_bytes) {
    double rtt, bpm;
    km_linkfit_params(l, &rtt, &bpm);
    return bpm > 0 ? rtt + (double)state_bytes * l->wire_ratio / bpm : -1;
}

void km_planner_link(const km_planner *p, double *rtt_ms, double *bytes_per_ms) {
    km_linkfit_params(&p->link, rtt_ms, bytes_per_ms);
}

double km_planner_prefill_ms(const km_planner *p, int n_tokens) {
    return p->prefill_tok_per_ms > 0 ? n_tokens / p->prefill_tok_per_ms : -1;
}

km_plan_estimate km_planner_estimate_via(const km_planner *p, const km_linkfit *link, size_t state_bytes, int n_tokens) {
    km_plan_estimate e = {0, 0, false};
    double move = km_linkfit_fetch_ms(link, state_bytes);
    if (move >= 0) e.fetch_ms = move + (double)state_bytes * p->restore_ms_per_byte;
    if (p->prefill_tok_per_ms > 0) e.recompute_ms = n_tokens / p->prefill_tok_per_ms;
    e.known = move >= 0 && p->prefill_tok_per_ms > 0;
    return e;
}

km_plan_estimate km_planner_estimate(const km_planner *p, size_t state_bytes, int n_tokens) {
    return km_planner_estimate_via(p, &p->link, state_bytes, n_tokens);
}

bool km_planner_should_fetch(const km_plan_estimate *e) { return !e->known || e->fetch_ms < e->recompute_ms; }

double km_planner_peer_wait_ms(double backlog_ms, double age_ms, int jobs, int parallel, double unseen_ms) {
    if (parallel < 1) parallel = 1;
    if (jobs < parallel) return 0;
    double left = backlog_ms - (age_ms > 0 ? age_ms : 0);
    if (left < 0) left = 0;
    return (left + unseen_ms) / parallel;
}

km_route_choice km_planner_route(const km_route_local *l, const km_route_peer *peers, int n_peers) {
    km_route_choice c = {KM_PATH_LOCAL, -1, 0, 0, 0};
    double rate = l->prefill_tok_ms;
    c.est_local_ms = l->wait_ms + (l->n_tokens - l->reuse) / rate + l->first_extra_ms;
    double best_fwd = -1, fwd_work = 0;
    int fwd_peer = -1;
    for (int k = 0; k < n_peers; k++) {
        const km_route_peer *p = &peers[k];
        if (p->hold > l->reuse && p->fetch_ms >= 0) {
            double fetch = l->wait_ms + p->fetch_ms + (l->n_tokens - p->hold) / rate + l->first_extra_ms;
            if (fetch < c.est_local_ms) {
                c.est_local_ms = fetch;
                c.path = KM_PATH_FETCH;
                c.peer = k;
            }
        }
        if (p->prefill_tok_ms <= 0 || p->full) continue;
        int has = p->pending > p->hold ? p->pending : p->hold; /* its wait includes computing the pending one */
        double work = (l->n_tokens - has) / p->prefill_tok_ms + l->first_extra_ms;
        double est = 2 * p->rtt_ms + p->wait_ms + work;
        if (best_fwd < 0 || est < best_fwd) {
            best_fwd = est;
            fwd_work = work;
            fwd_peer = k;
        }
    }
    c.est_ms = c.est_local_ms;
    if (best_fwd >= 0 && best_fwd < c.est_local_ms * KM_FORWARD_MARGIN &&
        best_fwd < c.est_local_ms - KM_FORWARD_MIN_GAIN_MS) {
        c.path = KM_PATH_FORWARD;
        c.peer = fwd_peer;
        c.est_ms = best_fwd;
        c.peer_work_ms = fwd_work;
    }
    return c;
}
