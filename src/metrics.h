/* metrics.h -- a small thread-safe Prometheus registry (what `GET /metrics` renders).
 *
 * A registry holds families (a name, a HELP text, a type) and each family holds
 * series told apart by a preformatted label string such as
 * `tier="local",dir="down"` (NULL or "" for none). Registering returns the
 * series; registering the same name and labels again returns the same series,
 * so call sites look their series up once at start and then only update them.
 *
 * Updates are lock-free (C11 atomics) and callable from any thread; a NULL
 * series is a no-op, so a refused registration (already warned about) cannot
 * crash a request path. Registration and rendering take the registry's mutex.
 *
 * Registration refuses (returns NULL after a km_warn; these are programming
 * errors) a metric name outside [a-zA-Z_:][a-zA-Z0-9_:]*, malformed labels (see
 * km_metrics_labels_valid), a name already registered with another type, and a
 * histogram whose bounds are not finite and strictly increasing or differ from
 * the ones its family was registered with, or whose labels use `le`. The first
 * HELP text of a family wins; a family without one (NULL or "") has no # HELP.
 *
 * Rendering follows the text exposition format 0.0.4: `# HELP` and `# TYPE`
 * once per family, families and series in registration order, histograms as
 * cumulative `_bucket{...,le="..."}` lines ending in `le="+Inf"`, then `_sum`
 * and `_count`. Numbers print as integers when integral (below 1e15), otherwise
 * in the shortest %g form that reads back exactly; +Inf, -Inf and NaN as such. */
#ifndef KVMESH_METRICS_H
#define KVMESH_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

typedef struct km_metrics km_metrics;
typedef struct km_counter km_counter;
typedef struct km_gauge km_gauge;
typedef struct km_histogram km_histogram;

/* NULL on out of memory. Freeing invalidates every series it handed out. */
km_metrics *km_metrics_new(void);
void km_metrics_free(km_metrics *m);

/* Find or register a series (NULL if refused, see above). */
km_counter *km_metrics_counter(km_metrics *m, const char *name, const char *help, const char *labels);
km_gauge *km_metrics_gauge(km_metrics *m, const char *name, const char *help, const char *labels);
/* A gauge whose value fn(ud) computes at render time (queue length, peers alive).
 * fn runs with the registry's mutex held: it must not call km_metrics_* itself
 * nor wait for a lock whose holder may register series.
 * Registering again replaces fn and ud; fn NULL detaches them (do so before ud
 * is freed), after which the series renders its stored value like a plain gauge
 * (km_metrics_gauge returns a callback series too; set/add change only that value). */
km_gauge *km_metrics_gauge_fn(km_metrics *m, const char *name, const char *help, const char *labels,
                              double (*fn)(void *ud), void *ud);
/* Upper bounds of the buckets, finite and strictly increasing (the +Inf bucket
 * is implicit; 0 <= n_bounds <= 4096). The bounds are copied. */
km_histogram *km_metrics_histogram(km_metrics *m, const char *name, const char *help, const char *labels,
                                   const double *bounds, int n_bounds);

/* Latency buckets in seconds for TTFT/TTLT and queue waits: 5 ms to 2 minutes,
 * wide enough for an emulated Pi Zero prefilling a few thousand tokens. */
extern const double km_metrics_latency_buckets[];
extern const int km_metrics_n_latency_buckets;

/* Counters only go up: adding a negative value or NaN is ignored. Integral
 * additions are exact up to 2^64 in total (rendered as a double). */
void km_counter_add(km_counter *c, double v);
void km_counter_inc(km_counter *c);
void km_gauge_set(km_gauge *g, double v);
void km_gauge_add(km_gauge *g, double v);
/* Count v in the first bucket whose bound is >= v (le means "less or equal").
 * NaN is ignored: it would turn _sum into NaN for good. */
void km_histogram_observe(km_histogram *h, double v);

/* The whole registry as exposition text (*out malloc'd and NUL-terminated, *len
 * excludes the NUL). Series updated meanwhile may be caught mid-way (a bucket
 * counted, _sum not yet added); each value itself is never torn. */
int km_metrics_render(km_metrics *m, char **out, size_t *len, km_error *err);

/* Escape a label value (backslash, double quote, newline) into out, for labels
 * built from data (peer names). Returns the escaped length, or -1 (out = "")
 * if it needs more than cap - 1 bytes. */
int km_metrics_label_escape(char *out, size_t cap, const char *value);
/* Whether labels is NULL, "" or `name="value"(,name="value")*` with label names
 * in [a-zA-Z_][a-zA-Z0-9_]* not starting with "__" (reserved by Prometheus)
 * and only \\, \" and \n escapes in values. Labels are compared as strings:
 * `a="1",b="2"` and `b="2",a="1"` are two series. */
bool km_metrics_labels_valid(const char *labels);

#endif
