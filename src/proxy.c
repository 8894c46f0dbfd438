/* proxy.c -- see proxy.h. */
#include "proxy.h"

#include <curl/curl.h>
#include <sodium.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "peerframe.h"

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
    bool ready; /* km_proxy_start may return: headers in (and, checked, the first frame) or done */
    long status;
    char type[128];
    char error[512];
    /* a checked answer (auth set): its head, then every frame */
    km_peerauth *auth;
    char request_auth[KM_PEERAUTH_HEADER_MAX + 1];
    char response_auth[KM_PEERAUTH_HEADER_MAX + 1];
    km_peerframe_reader *frames; /* transfer thread only */
    bool ended;                  /* the end frame verified */
};

/* The value of header `name` in the header line p (n bytes), trimmed, into
 * out; false if the line is another header. */
static bool header_value(const char *p, size_t n, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    if (n <= nl || strncasecmp(p, name, nl) != 0 || p[nl] != ':') return false;
    const char *v = p + nl + 1;
    while (v < p + n && *v == ' ') v++;
    size_t vl = (size_t)(p + n - v);
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n')) vl--;
    snprintf(out, cap, "%.*s", (int)vl, v);
    return true;
}

/* Refuse the answer (lock held): the transfer stops, the reader sees -1. */
static void refuse(km_proxy *x, const char *why) {
    if (!x->failed) snprintf(x->error, sizeof x->error, "%.500s", why);
    x->failed = true;
    x->ready = true;
    pthread_cond_broadcast(&x->changed);
}

/* The head of a checked answer (lock held): status and type signed for our
 * request; then its frames are read with the key that comes with it. */
static bool check_head(km_proxy *x) {
    uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN];
    km_error err;
    if (km_peerauth_verify_stream(x->auth, x->request_auth, (int)x->status, x->type, x->response_auth, key, &err) != 0) {
        refuse(x, err.msg);
        return false;
    }
    x->frames = km_peerframe_reader_new(key);
    sodium_memzero(key, sizeof key);
    if (!x->frames) refuse(x, "out of memory");
    return x->frames != NULL;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud) {
    km_proxy *x = ud;
    size_t n = sz * nm;
    pthread_mutex_lock(&x->lock);
    header_value(p, n, "Content-Type", x->type, sizeof x->type);
    header_value(p, n, KM_PEERAUTH_RESPONSE_HEADER, x->response_auth, sizeof x->response_auth);
    bool ok = true;
    if (n == 2 && p[0] == '\r') { /* end of the headers */
        long st = 0;
        curl_easy_getinfo(x->c, CURLINFO_RESPONSE_CODE, &st);
        if (st >= 200) { /* not a 100 Continue */
            x->status = st;
            x->got_headers = true;
            if (x->auth) ok = check_head(x);
            else x->ready = true;
            pthread_cond_broadcast(&x->changed);
        }
    }
    pthread_mutex_unlock(&x->lock);
    return ok ? n : 0; /* 0 aborts the transfer */
}

/* Hand n bytes to the reader (lock held; waits while the buffer is full).
 * false when the proxy is being freed. */
static bool push(km_proxy *x, const char *p, size_t n) {
    size_t off = 0;
    while (off < n) {
        while (x->used == BUF_CAP && !x->abort) pthread_cond_wait(&x->changed, &x->lock);
        if (x->abort) return false;
        size_t tail = (x->head + x->used) % BUF_CAP;
        size_t room = BUF_CAP - x->used, chunk = n - off;
        if (chunk > room) chunk = room;
        if (chunk > BUF_CAP - tail) chunk = BUF_CAP - tail;
        memcpy(x->buf + tail, p + off, chunk);
        x->used += chunk;
        off += chunk;
        x->ready = true;
        pthread_cond_broadcast(&x->changed);
    }
    return true;
}

/* A checked answer's bytes: only what verified frames carry reaches the
 * reader; a bad frame or bytes after the end stop the transfer. */
static bool push_frames(km_proxy *x, const char *p, size_t n) {
    for (size_t off = 0;;) {
        size_t used;
        const uint8_t *payload;
        size_t plen;
        km_error err;
        int rc = km_peerframe_read(x->frames, (const uint8_t *)p + off, n - off, &used, &payload, &plen, &err);
        off += used;
        pthread_mutex_lock(&x->lock);
        bool ok = rc >= 0 && (rc != KM_PEERFRAME_DATA || push(x, (const char *)payload, plen));
        if (rc < 0) refuse(x, err.msg);
        if (rc == KM_PEERFRAME_END) {
            x->ended = true;
            x->ready = true;
            pthread_cond_broadcast(&x->changed);
        }
        pthread_mutex_unlock(&x->lock);
        if (!ok) return false;
        if (rc == KM_PEERFRAME_MORE || rc == KM_PEERFRAME_END) break;
    }
    return true;
}

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    km_proxy *x = ud;
    size_t n = sz * nm;
    if (x->frames) return push_frames(x, p, n) ? n : 0;
    pthread_mutex_lock(&x->lock);
    bool ok = push(x, p, n);
    pthread_mutex_unlock(&x->lock);
    return ok ? n : 0; /* 0 aborts the transfer */
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
    if (rc != CURLE_OK && !x->failed) {
        x->failed = true;
        snprintf(x->error, sizeof x->error, "%s", curl_easy_strerror(rc));
    }
    km_error err;
    if (rc == CURLE_OK && x->frames && km_peerframe_reader_finish(x->frames, &err) != 0) refuse(x, err.msg);
    pthread_cond_broadcast(&x->changed);
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

km_proxy *km_proxy_start(const char *addr, const char *path, const char *body, size_t len, const char *const *headers,
                         km_peerauth *auth, const char *request_auth, int connect_ms, long *status,
                         char *content_type, size_t type_cap, km_error *err) {
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
    x->auth = auth;
    snprintf(x->request_auth, sizeof x->request_auth, "%s", request_auth ? request_auth : "");
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
     * peer that fails to connect fails fast. A checked answer also waits
     * for its first frame, so that an answer refused before its first byte
     * can still be run here. */
    pthread_mutex_lock(&x->lock);
    while (!x->ready && !x->done) pthread_cond_wait(&x->changed, &x->lock);
    bool ok = x->got_headers && !(x->auth && x->failed);
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
    km_peerframe_reader_free(x->frames);
    pthread_mutex_destroy(&x->lock);
    pthread_cond_destroy(&x->changed);
    free(x->buf);
    free(x->body);
    free(x);
}
