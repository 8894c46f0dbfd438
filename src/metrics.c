/* metrics.c -- see metrics.h.
 *
 * Families and their series are append-only linked lists (registration order
 * is render order) under one mutex; nothing is removed before km_metrics_free.
 * Lookups scan linearly: a node has a few dozen series, and hot paths look
 * theirs up once. Values are C11 atomics: integer counts use fetch_add,
 * doubles are stored as their uint64 bit pattern and added with a CAS loop. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_COUNTER, T_GAUGE, T_HISTOGRAM } mtype;
static const char *const type_name[] = {"counter", "gauge", "histogram"};

/* A counter keeps integral additions (requests, bytes, tokens: nearly all of
 * them) in an integer, so the common update is one wait-free fetch_add that
 * stays exact; fractional additions go to a double beside it. */
struct km_counter {
    _Atomic uint64_t whole;
    _Atomic uint64_t frac; /* double bits */
};

struct km_gauge {
    _Atomic uint64_t bits;  /* double bits */
    double (*fn)(void *ud); /* fn and ud: guarded by the registry mutex */
    void *ud;
};

struct km_histogram {
    int n_bounds;
    const double *bounds;      /* the family's */
    _Atomic uint64_t *buckets; /* n_bounds + 1 per-bucket (not cumulative) counts; the last is +Inf */
    _Atomic uint64_t sum;      /* double bits */
};

typedef struct series {
    struct series *next;
    char *labels; /* "" for none */
    union {
        km_counter c;
        km_gauge g;
        km_histogram h;
    } u;
} series;

typedef struct family {
    struct family *next;
    char *name, *help;
    mtype type;
    double *bounds; /* histograms: every series of a family shares them */
    int n_bounds;
    series *first, *last;
} family;

struct km_metrics {
    pthread_mutex_t lock;
    family *first, *last;
};

const double km_metrics_latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                             1,     2.5,  5,     10,   30,  60,   120};
const int km_metrics_n_latency_buckets = sizeof km_metrics_latency_buckets / sizeof km_metrics_latency_buckets[0];

/* ---------------------------------------------------------------- atomics */

static uint64_t d2u(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}
static double u2d(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}
static double load_d(_Atomic uint64_t *a) { return u2d(atomic_load_explicit(a, memory_order_relaxed)); }

static void add_d(_Atomic uint64_t *a, double v) {
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, d2u(u2d(old) + v), memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

void km_counter_add(km_counter *c, double v) {
    if (!c || !(v >= 0)) return; /* also NaN */
    if (v < 18446744073709551616.0 && v == floor(v))
        atomic_fetch_add_explicit(&c->whole, (uint64_t)v, memory_order_relaxed);
    else
        add_d(&c->frac, v);
}

void km_counter_inc(km_counter *c) {
    if (c) atomic_fetch_add_explicit(&c->whole, 1, memory_order_relaxed);
}

void km_gauge_set(km_gauge *g, double v) {
    if (g) atomic_store_explicit(&g->bits, d2u(v), memory_order_relaxed);
}

void km_gauge_add(km_gauge *g, double v) {
    if (g) add_d(&g->bits, v);
}

void km_histogram_observe(km_histogram *h, double v) {
    if (!h || isnan(v)) return;
    int i = 0; /* linear: a dozen bounds, and small values (the common case) stop early */
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    add_d(&h->sum, v);
}

/* ---------------------------------------------------------------- validation */

static bool is_alpha_(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool name_valid(const char *s) {
    if (!s || !(is_alpha_(*s) || *s == ':')) return false;
    for (s++; *s; s++)
        if (!is_alpha_(*s) && !is_digit(*s) && *s != ':') return false;
    return true;
}

/* The grammar of km_metrics_labels_valid; histograms also forbid `le`, which
 * rendering adds to each bucket. */
static bool labels_ok(const char *s, bool forbid_le) {
    if (!s || !*s) return true;
    for (;;) {
        const char *name = s;
        if (!is_alpha_(*s) || (s[0] == '_' && s[1] == '_')) return false;
        while (is_alpha_(*s) || is_digit(*s)) s++;
        if (forbid_le && s - name == 2 && memcmp(name, "le", 2) == 0) return false;
        if (*s++ != '=' || *s++ != '"') return false;
        for (; *s != '"'; s++) {
            if (!*s || *s == '\n') return false;
            if (*s == '\\' && *++s != '\\' && *s != '"' && *s != 'n') return false;
        }
        if (!*++s) return true;
        if (*s++ != ',') return false;
    }
}

bool km_metrics_labels_valid(const char *labels) { return labels_ok(labels, false); }

int km_metrics_label_escape(char *out, size_t cap, const char *value) {
    if (!cap) return -1;
    size_t n = 0;
    for (const char *p = value; *p; p++) {
        char e = *p == '\\' ? '\\' : *p == '"' ? '"' : *p == '\n' ? 'n' : 0;
        if (n + (e ? 2 : 1) >= cap) {
            out[0] = 0;
            return -1;
        }
        if (e) out[n++] = '\\';
        out[n++] = e ? e : *p;
    }
    out[n] = 0;
    return (int)n;
}

/* ---------------------------------------------------------------- registry */

km_metrics *km_metrics_new(void) {
    km_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void series_free(series *s, mtype t) {
    if (!s) return;
    free(s->labels);
    if (t == T_HISTOGRAM) free(s->u.h.buckets);
    free(s);
}

static void family_free(family *f) {
    if (!f) return;
    free(f->name);
    free(f->help);
    free(f->bounds);
    free(f);
}

void km_metrics_free(km_metrics *m) {
    if (!m) return;
    for (family *f = m->first, *fn; f; f = fn) {
        fn = f->next;
        for (series *s = f->first, *sn; s; s = sn) {
            sn = s->next;
            series_free(s, f->type);
        }
        family_free(f);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* Find or create name{labels} of type t; the caller holds m->lock and has
 * validated name, labels and bounds. */
static series *get_series(km_metrics *m, const char *name, const char *help, const char *labels, mtype t,
                          const double *bounds, int n_bounds) {
    family *f = m->first;
    while (f && strcmp(f->name, name) != 0) f = f->next;
    if (f && f->type != t) {
        km_warn("metrics: %s is a %s, not a %s", name, type_name[f->type], type_name[t]);
        return NULL;
    }
    if (f && t == T_HISTOGRAM &&
        (f->n_bounds != n_bounds || (n_bounds && memcmp(f->bounds, bounds, (size_t)n_bounds * sizeof *bounds) != 0))) {
        km_warn("metrics: %s was registered with other bucket bounds", name);
        return NULL;
    }
    for (series *s = f ? f->first : NULL; s; s = s->next)
        if (strcmp(s->labels, labels) == 0) return s;

    family *nf = NULL;
    series *s = calloc(1, sizeof *s);
    if (!s || !(s->labels = strdup(labels))) goto oom;
    if (!f) {
        if (!(nf = calloc(1, sizeof *nf)) || !(nf->name = strdup(name)) || !(nf->help = strdup(help ? help : "")))
            goto oom;
        nf->type = t;
        if (t == T_HISTOGRAM && n_bounds) {
            if (!(nf->bounds = malloc((size_t)n_bounds * sizeof *bounds))) goto oom;
            memcpy(nf->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
        }
        nf->n_bounds = n_bounds;
        f = nf;
    }
    if (t == T_HISTOGRAM) {
        if (!(s->u.h.buckets = malloc((size_t)(n_bounds + 1) * sizeof *s->u.h.buckets))) goto oom;
        for (int i = 0; i <= n_bounds; i++) atomic_init(&s->u.h.buckets[i], 0);
        atomic_init(&s->u.h.sum, d2u(0));
        s->u.h.n_bounds = n_bounds;
        s->u.h.bounds = f->bounds;
    } else if (t == T_COUNTER) {
        atomic_init(&s->u.c.whole, 0);
        atomic_init(&s->u.c.frac, d2u(0));
    } else {
        atomic_init(&s->u.g.bits, d2u(0));
    }
    if (nf) {
        if (m->last) m->last->next = nf;
        else m->first = nf;
        m->last = nf;
    }
    if (f->last) f->last->next = s;
    else f->first = s;
    f->last = s;
    return s;
oom:
    km_warn("metrics: %s: out of memory", name);
    series_free(s, t);
    family_free(nf);
    return NULL;
}

/* Validate, then find or create under the lock; leaves the lock held on success
 * so that km_metrics_gauge_fn can set fn and ud atomically with the lookup. */
static series *reg_locked(km_metrics *m, const char *name, const char *help, const char *labels, mtype t,
                          const double *bounds, int n_bounds) {
    if (!m) return NULL;
    if (!name_valid(name)) {
        km_warn("metrics: invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    if (!labels_ok(labels, t == T_HISTOGRAM)) {
        km_warn("metrics: %s: invalid labels '%s'", name, labels);
        return NULL;
    }
    if (t == T_HISTOGRAM) {
        bool ok = n_bounds >= 0 && n_bounds <= 4096 && (n_bounds == 0 || bounds);
        for (int i = 0; ok && i < n_bounds; i++) ok = isfinite(bounds[i]) && (i == 0 || bounds[i] > bounds[i - 1]);
        if (!ok) {
            km_warn("metrics: %s: bucket bounds must be finite and strictly increasing", name);
            return NULL;
        }
    }
    pthread_mutex_lock(&m->lock);
    series *s = get_series(m, name, help, labels ? labels : "", t, bounds, n_bounds);
    if (!s) pthread_mutex_unlock(&m->lock);
    return s;
}

km_counter *km_metrics_counter(km_metrics *m, const char *name, const char *help, const char *labels) {
    series *s = reg_locked(m, name, help, labels, T_COUNTER, NULL, 0);
    if (!s) return NULL;
    pthread_mutex_unlock(&m->lock);
    return &s->u.c;
}

km_gauge *km_metrics_gauge(km_metrics *m, const char *name, const char *help, const char *labels) {
    series *s = reg_locked(m, name, help, labels, T_GAUGE, NULL, 0);
    if (!s) return NULL;
    pthread_mutex_unlock(&m->lock);
    return &s->u.g;
}

km_gauge *km_metrics_gauge_fn(km_metrics *m, const char *name, const char *help, const char *labels,
                              double (*fn)(void *ud), void *ud) {
    series *s = reg_locked(m, name, help, labels, T_GAUGE, NULL, 0);
    if (!s) return NULL;
    s->u.g.fn = fn;
    s->u.g.ud = fn ? ud : NULL;
    pthread_mutex_unlock(&m->lock);
    return &s->u.g;
}

km_histogram *km_metrics_histogram(km_metrics *m, const char *name, const char *help, const char *labels,
                                   const double *bounds, int n_bounds) {
    series *s = reg_locked(m, name, help, labels, T_HISTOGRAM, bounds, n_bounds);
    if (!s) return NULL;
    pthread_mutex_unlock(&m->lock);
    return &s->u.h;
}

/* ---------------------------------------------------------------- rendering */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* Integers without exponent or decimals (counts, bytes), everything else in
 * the shortest %g form that parses back to the same double (0.1, not
 * 0.10000000000000001). Prometheus parses both, and +Inf, -Inf and NaN. */
static const char *fmt_num(char buf[40], double v) {
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, 40, "%.0f", v == 0 ? 0.0 : v); /* no "-0" */
        return buf;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 40, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

static void render_help(sbuf *b, const family *f) {
    if (!f->help[0]) return;
    sb_printf(b, "# HELP %s ", f->name);
    for (const char *p = f->help; *p; p++) { /* HELP escapes backslash and newline only */
        if (*p == '\\') sb_printf(b, "\\\\");
        else if (*p == '\n') sb_printf(b, "\\n");
        else sb_printf(b, "%c", *p);
    }
    sb_printf(b, "\n");
}

static void render_series(sbuf *b, const family *f, series *s) {
    char n1[40], n2[40];
    const char *lb = s->labels[0] ? "{" : "", *le = s->labels[0] ? "}" : "";
    if (f->type == T_COUNTER) {
        double v = (double)atomic_load_explicit(&s->u.c.whole, memory_order_relaxed) + load_d(&s->u.c.frac);
        sb_printf(b, "%s%s%s%s %s\n", f->name, lb, s->labels, le, fmt_num(n1, v));
    } else if (f->type == T_GAUGE) {
        double v = s->u.g.fn ? s->u.g.fn(s->u.g.ud) : load_d(&s->u.g.bits);
        sb_printf(b, "%s%s%s%s %s\n", f->name, lb, s->labels, le, fmt_num(n1, v));
    } else {
        km_histogram *h = &s->u.h;
        const char *sep = s->labels[0] ? "," : "";
        uint64_t cum = 0;
        for (int i = 0; i <= h->n_bounds; i++) {
            cum += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
            sb_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name, s->labels, sep,
                      i < h->n_bounds ? fmt_num(n1, h->bounds[i]) : "+Inf", (unsigned long long)cum);
        }
        /* _count is the +Inf bucket read above, so the two always agree */
        sb_printf(b, "%s_sum%s%s%s %s\n%s_count%s%s%s %s\n", f->name, lb, s->labels, le, fmt_num(n1, load_d(&h->sum)),
                  f->name, lb, s->labels, le, fmt_num(n2, (double)cum));
    }
}

int km_metrics_render(km_metrics *m, char **out, size_t *len, km_error *err) {
    *out = NULL;
    *len = 0;
    if (!m) return km_error_set(err, "metrics: no registry");
    sbuf b = {0};
    if (!(b.p = malloc(b.cap = 4096))) return km_error_set(err, "metrics: out of memory");
    b.p[0] = 0;
    pthread_mutex_lock(&m->lock);
    for (family *f = m->first; f; f = f->next) {
        render_help(&b, f);
        sb_printf(&b, "# TYPE %s %s\n", f->name, type_name[f->type]);
        for (series *s = f->first; s; s = s->next) render_series(&b, f, s);
    }
    pthread_mutex_unlock(&m->lock);
    if (b.oom) {
        free(b.p);
        return km_error_set(err, "metrics: out of memory rendering %zu bytes", b.cap);
    }
    *out = b.p;
    *len = b.len;
    return 0;
}
