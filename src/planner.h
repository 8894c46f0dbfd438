/* planner.h -- measured rates, and the choice between fetching a state and recomputing it.
 *
 * Fetching a stored prefix is only worth it when moving its bytes is faster
 * than computing it again. On a weak device (5 tokens/s of prefill) any link
 * wins; on a fast one a slow link loses (the paper measured +7 % TTFT on its
 * fast device because it always fetched). So the prompt cache asks the
 * planner before each remote GET, using rates measured on this device:
 *
 *   prefill    tokens/ms of this context (EWMA over prefills of >= 8 tokens)
 *   link       time = rtt + bytes / bandwidth, fitted by exponentially
 *              weighted least squares over recent GETs of different sizes
 *   wire ratio bytes on the wire / state bytes (compressed blobs)
 *   restore    ms per state byte (decompress + validate + import)
 *
 * Until a rate has been measured the planner assumes fetching pays (what the
 * paper always did); the first requests teach it. One planner per device
 * (context); not thread-safe: the request path owns it. */
#ifndef KVMESH_PLANNER_H
#define KVMESH_PLANNER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct km_planner {
    /* prefill */
    double prefill_tok_per_ms;  /* EWMA; 0 = not measured yet */
    int n_prefill_obs;
    /* link fit: weighted sums over (bytes, ms) observations */
    double sw, sx, sy, sxx, sxy;
    int n_link_obs;
    /* wire bytes per state byte (EWMA, starts at 1) and restore ms per state byte */
    double wire_ratio;
    int n_wire_obs;
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
 * prefilling those tokens here. */
km_plan_estimate km_planner_estimate(const km_planner *p, size_t state_bytes, int n_tokens);

/* The decision: true if the fetch is estimated to be faster (or unknown). */
bool km_planner_should_fetch(const km_plan_estimate *e);

#endif
