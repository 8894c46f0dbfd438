/* util.h -- small helpers every module uses: errors, clocks, logging, files.
 *
 * Errors: functions that can fail take a `km_error *` (may be NULL) and return
 * -1 (or NULL) after writing a one-line, human-readable message into it. The
 * message names the object (file, key, field) and the problem, so callers can
 * print it as is. */
#ifndef KVMESH_UTIL_H
#define KVMESH_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct km_error {
    char msg[512];
} km_error;

/* Write a formatted message into err (no-op when err is NULL). Always returns -1
 * so that `return km_error_set(err, ...);` reads naturally. */
int km_error_set(km_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Milliseconds on the monotonic clock (for TTFT/TTLT and every other duration). */
double km_now_ms(void);
/* pthread_cond_timedwait for at most ms milliseconds (ms may exceed a second);
 * returns its result (ETIMEDOUT when the time ran out). */
int km_cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *lock, double ms);
/* CPU time of the calling thread in ms (device emulation measures compute with it). */
double km_thread_cpu_ms(void);

/* Logging to stderr. Level 0 = errors/warnings only, 1 = info (default), 2 = debug. */
extern int km_log_level;
void km_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define km_warn(...)  km_log(0, __VA_ARGS__)
#define km_info(...)  km_log(1, __VA_ARGS__)
#define km_debug(...) km_log(2, __VA_ARGS__)

/* Read a whole file into a fresh malloc'd buffer (NUL-terminated for convenience;
 * *len excludes the NUL). Fails if the file is larger than max_len bytes. */
int km_read_file(const char *path, size_t max_len, uint8_t **out, size_t *len, km_error *err);

/* Crash-safe write: temp file in the same directory, write, fsync, rename over
 * path, fsync the directory. A reader never sees a half-written file. */
int km_write_file_atomic(const char *path, const void *data, size_t len, km_error *err);

/* mkdir -p. */
int km_mkdir_p(const char *path, km_error *err);

/* Little-endian encode/decode, used by every on-disk and on-wire format. */
static inline void km_put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void km_put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline void km_put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static inline uint16_t km_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t km_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t km_get_u64(const uint8_t *p) {
    return (uint64_t)km_get_u32(p) | ((uint64_t)km_get_u32(p + 4) << 32);
}

/* Summary statistics over n samples (the array is sorted in place). */
typedef struct km_stats {
    double mean, p50, p95, min, max;
    int n;
} km_stats;
km_stats km_stats_compute(double *samples, int n);

#endif
