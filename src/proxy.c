/* proxy.c -- see proxy.h. */
#include "proxy.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BUF_CAP ((size_t)256 << 10) /* the peer waits (TCP) when the client reads slowly */

struct km_proxy {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    pthread_t thread;
    CURL *c;
    struct curl_slist *headers;
    char *body;
    size_t body_len;
    char *buf; /* ring buffer of the answer's bytes */
    size_t head, used;
    bool got_headers, done, failed, abort;
    long status;
    char type[128];
    char error[256];
};

static size_t on_header(char *p, size_t sz, size_t nm, void *ud) {
    km_proxy *x = ud;
    size_t n = sz * nm;
    pthread_mutex_lock(&x->lock);
    if (n >= 13 && strncasecmp(p, "Content-Type:", 13) == 0) {
        const char *v = p + 13;
        while (*v == ' ') v++;
        size_t vl = (size_t)(p + n - v);
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n')) vl--;
        snprintf(x->type, sizeof x->type, "%.*s", (int)vl, v);
    }
    if (n == 2 && p[0] == '\r') { /* end of the headers */
        long st = 0;
        curl_easy_getinfo(x->c, CURLINFO_RESPONSE_CODE, &st);
        if (st >= 200) { /* not a 100 Continue */
            x->status = st;
            x->got_headers = true;
            pthread_cond_broadcast(&x->changed);
        }
    }
    pthread_mutex_unlock(&x->lock);
    return n;
}

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    km_proxy *x = ud;
    size_t n = sz * nm, off = 0;
    pthread_mutex_lock(&x->lock);
    while (off < n) {
        while (x->used == BUF_CAP && !x->abort) pthread_cond_wait(&x->changed, &x->lock);
        if (x->abort) {
            pthread_mutex_unlock(&x->lock);
            return 0; /* aborts the transfer */
        }
        size_t tail = (x->head + x->used) % BUF_CAP;
        size_t room = BUF_CAP - x->used, chunk = n - off;
        if (chunk > room) chunk = room;
        if (chunk > BUF_CAP - tail) chunk = BUF_CAP - tail;
        memcpy(x->buf + tail, p + off, chunk);
        x->used += chunk;
        off += chunk;
        pthread_cond_broadcast(&x->changed);
    }
    pthread_mutex_unlock(&x->lock);
    return n;
}

/* Stops a transfer that is waiting for the peer when the client went away. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
    km_proxy *x = ud;
    pthread_mutex_lock(&x->lock);
    int stop = x->abort;
    pthread_mutex_unlock(&x->lock);
    return stop;
}

static void *transfer_main(void *arg) {
    km_proxy *x = arg;
    CURLcode rc = curl_easy_perform(x->c);
    pthread_mutex_lock(&x->lock);
    x->done = true;
    if (rc != CURLE_OK) {
        x->failed = true;
        snprintf(x->error, sizeof x->error, "%s", curl_easy_strerror(rc));
    }
    pthread_cond_broadcast(&x->changed);
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

km_proxy *km_proxy_start(const char *addr, const char *path, const char *body, size_t len, const char *const *headers,
                         int connect_ms, long *status, char *content_type, size_t type_cap, km_error *err) {
    km_proxy *x = calloc(1, sizeof *x);
    if (!x) return km_error_set(err, "out of memory"), NULL;
    x->buf = malloc(BUF_CAP);
    x->body = malloc(len + 1);
    x->c = curl_easy_init();
    if (!x->buf || !x->body || !x->c) {
        free(x->buf);
        free(x->body);
        if (x->c) curl_easy_cleanup(x->c);
        free(x);
        return km_error_set(err, "out of memory"), NULL;
    }
    memcpy(x->body, body, len);
    x->body_len = len;
    pthread_mutex_init(&x->lock, NULL);
    pthread_cond_init(&x->changed, NULL);
    for (int i = 0; headers && headers[i]; i++) x->headers = curl_slist_append(x->headers, headers[i]);
    x->headers = curl_slist_append(x->headers, "Expect:");
    char url[512];
    snprintf(url, sizeof url, "http://%s%s", addr, path);
    curl_easy_setopt(x->c, CURLOPT_URL, url);
    curl_easy_setopt(x->c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->c, CURLOPT_POST, 1L);
    curl_easy_setopt(x->c, CURLOPT_POSTFIELDS, x->body);
    curl_easy_setopt(x->c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(x->c, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(x->c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(x->c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(x->c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(x->c, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->c, CURLOPT_CONNECTTIMEOUT_MS, (long)connect_ms);
    curl_easy_setopt(x->c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(x->c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(x->c, CURLOPT_XFERINFODATA, x);
    if (pthread_create(&x->thread, NULL, transfer_main, x) != 0) {
        curl_slist_free_all(x->headers);
        curl_easy_cleanup(x->c);
        free(x->buf);
        free(x->body);
        free(x);
        return km_error_set(err, "cannot start a thread"), NULL;
    }
    /* The peer answers with headers once it has the first token (or an
     * error): wait for that, however long its prefill takes -- but a
     * peer that fails to connect fails fast. */
    pthread_mutex_lock(&x->lock);
    while (!x->got_headers && !x->done) pthread_cond_wait(&x->changed, &x->lock);
    bool ok = x->got_headers;
    *status = x->status;
    snprintf(content_type, type_cap, "%s", x->type[0] ? x->type : "application/json");
    if (!ok) km_error_set(err, "peer %s: %s", addr, x->error[0] ? x->error : "no answer");
    pthread_mutex_unlock(&x->lock);
    if (!ok) {
        km_proxy_free(x);
        return NULL;
    }
    return x;
}

ssize_t km_proxy_read(km_proxy *x, char *out, size_t max) {
    pthread_mutex_lock(&x->lock);
    while (x->used == 0 && !x->done) pthread_cond_wait(&x->changed, &x->lock);
    ssize_t n;
    if (x->used > 0) {
        size_t chunk = x->used < max ? x->used : max;
        if (chunk > BUF_CAP - x->head) chunk = BUF_CAP - x->head;
        memcpy(out, x->buf + x->head, chunk);
        x->head = (x->head + chunk) % BUF_CAP;
        x->used -= chunk;
        n = (ssize_t)chunk;
        pthread_cond_broadcast(&x->changed);
    } else {
        n = x->failed ? -1 : 0;
    }
    pthread_mutex_unlock(&x->lock);
    return n;
}

void km_proxy_free(km_proxy *x) {
    if (!x) return;
    pthread_mutex_lock(&x->lock);
    x->abort = true;
    pthread_cond_broadcast(&x->changed);
    pthread_mutex_unlock(&x->lock);
    pthread_join(x->thread, NULL);
    curl_slist_free_all(x->headers);
    curl_easy_cleanup(x->c);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->changed);
    free(x->buf);
    free(x->body);
    free(x);
}
