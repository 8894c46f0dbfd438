/* link.h -- an emulated network link between a device and a remote tier.
 *
 * Benchmarks must compare a weak device on a slow link with recomputing, on
 * one machine whose loopback is effectively infinite. A link shapes every byte
 * the client sends to or receives from the tier: each request pays one round
 * trip (rtt), and the bytes pass a token bucket of the given bandwidth, one
 * per direction (transfers in the same direction queue behind each other, as
 * on a real link). It is applied in the client, around each call, so it
 * needs no privileges; bench validates it once against kernel shaping
 * (tc tbf inside a network namespace). */
#ifndef KVMESH_LINK_H
#define KVMESH_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct km_link km_link;

typedef struct km_link_params {
    double bw_bps; /* bits per second, per direction (0 = unlimited) */
    double rtt_ms; /* added once per request */
} km_link_params;

/* Parse "bw=20mbit,rtt=5ms" (units: bit/kbit/mbit/gbit for bw, us/ms/s for
 * rtt; either may be omitted). */
int km_link_parse(const char *spec, km_link_params *out, km_error *err);
/* "20.0 Mbit/s, rtt 5.0 ms" */
void km_link_describe(const km_link_params *p, char *buf, size_t len);

km_link *km_link_new(const km_link_params *p);
void km_link_free(km_link *l);

/* Block as the link would for one request that sends up_bytes and receives
 * down_bytes (call after the real transfer; real time already spent counts).
 * t_start_ms: when the request began (km_now_ms). Thread-safe. */
void km_link_request(km_link *l, double t_start_ms, size_t up_bytes, size_t down_bytes);

/* The time the link alone would take for such a request, in ms (for cost
 * estimates and the physical bound in reports). */
double km_link_cost_ms(const km_link_params *p, size_t up_bytes, size_t down_bytes);

#endif
