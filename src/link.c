/* link.c -- see link.h. */
#include "link.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct km_link {
    km_link_params p;
    pthread_mutex_t lock;
    double up_free_ms, down_free_ms; /* when each direction's bucket is next empty */
};

static int parse_unit(const char *num_end, const char *const *units, const double *scale, int n, double *mul) {
    for (int i = 0; i < n; i++)
        if (!strcasecmp(num_end, units[i])) {
            *mul = scale[i];
            return 0;
        }
    return -1;
}

int km_link_parse(const char *spec, km_link_params *out, km_error *err) {
    out->bw_bps = 0;
    out->rtt_ms = 0;
    char *dup = strdup(spec), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(t, '=');
        if (!eq) {
            rc = km_error_set(err, "link spec '%s': expected key=value, got '%s'", spec, t);
            break;
        }
        *eq = 0;
        char *end;
        errno = 0;
        double v = strtod(eq + 1, &end);
        if (end == eq + 1 || errno || !isfinite(v) || v < 0) {
            rc = km_error_set(err, "link spec '%s': bad number in '%s'", spec, eq + 1);
            break;
        }
        double mul;
        if (!strcmp(t, "bw")) {
            static const char *const u[] = {"bit", "kbit", "mbit", "gbit", "bps", "kbps", "mbps", "gbps"};
            static const double s[] = {1, 1e3, 1e6, 1e9, 1, 1e3, 1e6, 1e9};
            if (parse_unit(end, u, s, 8, &mul) != 0) {
                rc = km_error_set(err, "link spec '%s': bandwidth unit must be bit, kbit, mbit or gbit", spec);
                break;
            }
            out->bw_bps = v * mul;
        } else if (!strcmp(t, "rtt")) {
            static const char *const u[] = {"us", "ms", "s"};
            static const double s[] = {1e-3, 1, 1e3};
            if (parse_unit(end, u, s, 3, &mul) != 0) {
                rc = km_error_set(err, "link spec '%s': rtt unit must be us, ms or s", spec);
                break;
            }
            out->rtt_ms = v * mul;
        } else {
            rc = km_error_set(err, "link spec '%s': unknown key '%s' (bw, rtt)", spec, t);
            break;
        }
    }
    free(dup);
    return rc;
}

void km_link_describe(const km_link_params *p, char *buf, size_t len) {
    if (p->bw_bps > 0) snprintf(buf, len, "%.1f Mbit/s, rtt %.1f ms", p->bw_bps / 1e6, p->rtt_ms);
    else snprintf(buf, len, "unlimited bandwidth, rtt %.1f ms", p->rtt_ms);
}

km_link *km_link_new(const km_link_params *p) {
    km_link *l = calloc(1, sizeof *l);
    l->p = *p;
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

void km_link_free(km_link *l) {
    if (!l) return;
    pthread_mutex_destroy(&l->lock);
    free(l);
}

double km_link_cost_ms(const km_link_params *p, size_t up_bytes, size_t down_bytes) {
    double t = p->rtt_ms;
    if (p->bw_bps > 0) t += ((double)up_bytes + (double)down_bytes) * 8.0 / p->bw_bps * 1e3;
    return t;
}

static void sleep_until(double t_ms) {
    double now = km_now_ms();
    if (t_ms <= now) return;
    double d = t_ms - now;
    struct timespec ts = {(time_t)(d / 1e3), (long)(fmod(d, 1e3) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void km_link_request(km_link *l, double t_start_ms, size_t up_bytes, size_t down_bytes) {
    if (!l) return;
    double done;
    pthread_mutex_lock(&l->lock);
    /* The request goes out (half the rtt), its bytes take their turn on the
     * uplink; the answer comes back (the other half) through the downlink. */
    double t = t_start_ms + l->p.rtt_ms / 2;
    if (l->p.bw_bps > 0 && up_bytes > 0) {
        double start = t > l->up_free_ms ? t : l->up_free_ms;
        t = start + (double)up_bytes * 8.0 / l->p.bw_bps * 1e3;
        l->up_free_ms = t;
    }
    t += l->p.rtt_ms / 2;
    if (l->p.bw_bps > 0 && down_bytes > 0) {
        double start = t > l->down_free_ms ? t : l->down_free_ms;
        t = start + (double)down_bytes * 8.0 / l->p.bw_bps * 1e3;
        l->down_free_ms = t;
    }
    done = t;
    pthread_mutex_unlock(&l->lock);
    sleep_until(done);
}
