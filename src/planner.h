/* planner.h -- measured rates, and the choice between fetching a state and recomputing it.
 *
 * Fetching a stored prefix is only worth it when moving its bytes is faster
 * than computing it again. On a weak device (5 tokens/s of prefill) any link
 * wins; on a fast one a slow link loses (the paper measured +7 % TTFT on its
 * fast device because it always fetched). So the prompt cache asks the
 * planner before each remote GET, using rates measured on this device:
 *
 *   prefill    tokens/ms of this context (EWMA over prefills of >= 8 tokens)
 *   link       per remote holder (km_linkfit): time = rtt + bytes / bandwidth,
 *              fitted by exponentially weighted least squares over recent
 *              GETs of different sizes; wire bytes / state bytes
 *   restore    ms per state byte (decompress + validate + import)
 *
 * Until a rate has been measured the planner assumes fetching pays (what the
 * paper always did); the first requests teach it. One planner per device
 * (context); not thread-safe: the request path owns it. */
#ifndef KVMESH_PLANNER_H
#define KVMESH_PLANNER_H

#include <stdbool.h>
#include <stddef.h>

/* A measured link to one remote holder of states (the Redis tier, a peer):
 * GET time = rtt + wire bytes / bandwidth, fitted by exponentially weighted
 * least squares over recent GETs of different sizes, and the wire bytes per
 * state byte of what it sends (compressed blobs). Plain data; whoever shares
 * one between threads locks around it. */
typedef struct km_linkfit {
    double sw, sx, sy, sxx, sxy; /* weighted sums over (wire bytes, ms) */
    int n_obs;
    double wire_ratio;           /* EWMA, starts at 1 */
    int n_wire_obs;
} km_linkfit;

void km_linkfit_init(km_linkfit *l);
/* Record a GET that moved `bytes` on the wire in ms (round trip included). */
void km_linkfit_observe_fetch(km_linkfit *l, size_t bytes, double ms);
/* Record a fetched blob's size on the wire against its state size. */
void km_linkfit_observe_wire(km_linkfit *l, size_t wire_bytes, size_t state_bytes);
/* The fitted model: round trip in ms and bytes per ms (0 if unknown). */
void km_linkfit_params(const km_linkfit *l, double *rtt_ms, double *bytes_per_ms);
/* Estimated time to move a state of state_bytes over this link; < 0 if unknown. */
double km_linkfit_fetch_ms(const km_linkfit *l, size_t state_bytes);

typedef struct km_planner {
    /* prefill */
    double prefill_tok_per_ms;  /* EWMA; 0 = not measured yet */
    int n_prefill_obs;
    /* the link to the Redis tier (peers' links are kept by the mesh) */
    km_linkfit link;
    /* restore ms per state byte (decompress + validate + import) */
    double restore_ms_per_byte;
    int n_restore_obs;
} km_planner;

typedef struct km_plan_estimate {
    double fetch_ms;     /* round trip + transfer + restore of the state */
    double recompute_ms; /* prefilling the same tokens here */
    bool known;          /* both rates measured (otherwise fetch is assumed to pay) */
} km_plan_estimate;

void km_planner_init(km_planner *p);

/* Record a prefill of n_tokens that took ms (dilated time included). */
void km_planner_observe_prefill(km_planner *p, int n_tokens, double ms);
/* Record a remote GET that moved `bytes` in ms (round trip included). */
void km_planner_observe_fetch(km_planner *p, size_t bytes, double ms);
/* Record a fetched blob's size on the wire against its state size (compression). */
void km_planner_observe_wire(km_planner *p, size_t wire_bytes, size_t state_bytes);
/* Record a restore (decode + validate + import) of state_bytes that took ms. */
void km_planner_observe_restore(km_planner *p, size_t state_bytes, double ms);

/* Link model currently fitted: round trip in ms and bytes per ms (0 if unknown). */
void km_planner_link(const km_planner *p, double *rtt_ms, double *bytes_per_ms);

/* Estimate fetching a state of state_bytes that holds n_tokens tokens vs
 * prefilling those tokens here, over the Redis tier's link. */
km_plan_estimate km_planner_estimate(const km_planner *p, size_t state_bytes, int n_tokens);
/* The same over another link (a peer's). */
km_plan_estimate km_planner_estimate_via(const km_planner *p, const km_linkfit *link, size_t state_bytes, int n_tokens);
/* Estimated ms to prefill n_tokens here; < 0 if the rate is not measured yet. */
double km_planner_prefill_ms(const km_planner *p, int n_tokens);

/* The decision: true if the fetch is estimated to be faster (or unknown). */
bool km_planner_should_fetch(const km_plan_estimate *e);

/* ---- routing: where a request runs (the mesh fills these in from gossip) ----
 *
 * Estimates of the time to the first token, in ms. The request waits for a
 * context here (wait_ms), or at a peer; then its prefill of what is not
 * reused, plus the node's time to the first token beyond prefill (lookup,
 * restore, one step). A forward also pays two link delays. Forwarding must
 * win by a margin (KM_FORWARD_MARGIN and KM_FORWARD_MIN_GAIN_MS): the
 * estimates are rough, and a forward that barely wins is not worth a hop. */

#define KM_FORWARD_MARGIN 0.85
#define KM_FORWARD_MIN_GAIN_MS 5.0

typedef struct km_route_local {
    int n_tokens;           /* of the prompt */
    int reuse;              /* tokens held here (or being computed here by a job ahead) */
    double prefill_tok_ms;  /* this node's rate (> 0: the caller routes only once it is known) */
    double wait_ms;         /* for a context here */
    double first_extra_ms;  /* time to the first token beyond the prefill */
} km_route_local;

typedef struct km_route_peer {
    int hold;               /* tokens of the longest prefix its catalog may hold (0: none) */
    int pending;            /* tokens of a longer prefix it is computing now (0: none; forward only) */
    double fetch_ms;        /* moving the state of that prefix here; < 0 unknown */
    double rtt_ms;          /* link round trip to it */
    double prefill_tok_ms;  /* its gossiped rate; 0 unknown: not a forward target */
    double wait_ms;         /* for a context there (km_planner_peer_wait_ms) */
    bool full;              /* its queue is full: not a forward target */
} km_route_peer;

typedef enum km_route_path { KM_PATH_LOCAL = 0, KM_PATH_FETCH, KM_PATH_FORWARD } km_route_path;

typedef struct km_route_choice {
    km_route_path path;
    int peer;               /* fetch / forward: index into the peers */
    double est_ms;          /* on the chosen path */
    double est_local_ms;    /* on the best path that runs here (local or fetch) */
    double peer_work_ms;    /* forward: the compute it brings the peer */
} km_route_choice;

/* The fastest path: run here reusing what is held, fetch a peer's longer
 * prefix and finish here, or forward to a peer -- one that holds a longer
 * prefix, or one that is just less busy (it recomputes what it lacks). */
km_route_choice km_planner_route(const km_route_local *l, const km_route_peer *peers, int n_peers);

/* A peer's wait for a context as far as we know it: its gossiped backlog
 * (compute left in its jobs, all contexts) less what it has done in the
 * age_ms since it was measured, plus unseen_ms of work we sent it since
 * (forwards its record does not show yet), spread over its contexts; 0 when
 * it has a free context (jobs, counting the unseen, below parallel). */
double km_planner_peer_wait_ms(double backlog_ms, double age_ms, int jobs, int parallel, double unseen_ms);

#endif
