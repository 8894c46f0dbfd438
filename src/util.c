/* util.c -- see util.h. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int km_log_level = 1;

int km_error_set(km_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

double km_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double km_thread_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void km_log(int level, const char *fmt, ...) {
    if (level > km_log_level) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("kvmesh: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int km_read_file(const char *path, size_t max_len, uint8_t **out, size_t *len, km_error *err) {
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return km_error_set(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return km_error_set(err, "%s: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return km_error_set(err, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_len) {
        close(fd);
        return km_error_set(err, "%s: file is %lld bytes, limit is %zu", path, (long long)st.st_size, max_len);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return km_error_set(err, "%s: out of memory (%zu bytes)", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            close(fd);
            return km_error_set(err, "%s: read failed: %s", path, r == 0 ? "file shrank while reading" : strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int write_all(int fd, const void *data, size_t len) {
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int km_write_file_atomic(const char *path, const void *data, size_t len, km_error *err) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    char *dir = strdup(path);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return km_error_set(err, "%s: out of memory", path);
    }
    /* The temp name starts with the target's name so a directory scan can tell
     * temp files apart (they end in .tmp) and remove leftovers of a crash. */
    snprintf(tmp, plen + 32, "%s.%ld.tmp", path, (long)getpid());
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        km_error_set(err, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        km_error_set(err, "%s: write failed: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0) {
        km_error_set(err, "%s: close failed: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        km_error_set(err, "%s: rename failed: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    /* fsync the directory so the rename itself survives a power cut. */
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
out:
    free(tmp);
    free(dir);
    return rc;
}

int km_mkdir_p(const char *path, km_error *err) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return km_error_set(err, "%s: bad directory path", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return km_error_set(err, "%s: cannot create directory: %s", buf, strerror(errno));
            buf[i] = c;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return km_error_set(err, "%s: not a directory", path);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

km_stats km_stats_compute(double *samples, int n) {
    km_stats s = {0};
    s.n = n;
    if (n <= 0) return s;
    qsort(samples, (size_t)n, sizeof *samples, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += samples[i];
    s.mean = sum / n;
    s.min = samples[0];
    s.max = samples[n - 1];
    /* Nearest-rank percentiles: the value at rank ceil(p*n). */
    int r50 = (int)((n * 50 + 99) / 100), r95 = (int)((n * 95 + 99) / 100);
    s.p50 = samples[(r50 > 0 ? r50 : 1) - 1];
    s.p95 = samples[(r95 > 0 ? r95 : 1) - 1];
    return s;
}

int km_cond_wait_ms(pthread_cond_t *cond, pthread_mutex_t *lock, double ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* what pthread_cond_timedwait measures against */
    long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return pthread_cond_timedwait(cond, lock, &ts);
}
