/* nodeproc.c -- see nodeproc.h. */
#include "nodeproc.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ the registry */

/* Every started node has a slot with fixed-size paths, so that the signal
 * handler can kill it and remove its files without allocating or locking:
 * it only reads the paths and swaps the pid out atomically (whoever swaps a
 * pid out -- stop, the handler, the atexit hook -- does the cleanup). */
#define MAX_NODES 64
#define DIR_CAP 256
#define PATH_CAP (DIR_CAP + 16)

typedef struct slot {
    bool used;           /* under reg_lock */
    atomic_int pid;      /* > 0 while running and not yet stopped */
    bool own_log;        /* the log is our temp file: remove it too */
    char dir[DIR_CAP], port_file[PATH_CAP], log[PATH_CAP];
} slot;

static slot slots[MAX_NODES];
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;

struct km_nodeproc {
    slot *s;
    int port;
    char url[64], addr[48];
};

static void remove_files(const slot *s) {
    unlink(s->port_file);
    if (s->own_log) unlink(s->log);
    rmdir(s->dir);
}

void km_nodeproc_kill_all(void) {
    for (int i = 0; i < MAX_NODES; i++) {
        int pid = atomic_exchange(&slots[i].pid, 0);
        if (pid <= 0) continue;
        kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        remove_files(&slots[i]);
    }
}

static void on_signal(int sig) {
    int saved = errno;
    km_nodeproc_kill_all();
    errno = saved;
    /* SA_RESETHAND put the default action back: die of the same signal */
    raise(sig);
}

static void reg_init(void) {
    atexit(km_nodeproc_kill_all);
    /* Only where nobody else has a say: a caller with its own SIGINT handler
     * calls km_nodeproc_kill_all from it. */
    int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        struct sigaction old;
        if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESETHAND | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(sigs[i], &sa, NULL);
    }
}

static slot *slot_take(void) {
    pthread_mutex_lock(&reg_lock);
    slot *s = NULL;
    for (int i = 0; i < MAX_NODES && !s; i++)
        if (!slots[i].used) {
            s = &slots[i];
            s->used = true;
        }
    pthread_mutex_unlock(&reg_lock);
    return s;
}

static void slot_give(slot *s) {
    pthread_mutex_lock(&reg_lock);
    s->used = false;
    pthread_mutex_unlock(&reg_lock);
}

/* ------------------------------------------------------------ processes */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The last lines of a log, on one line, for an error message. */
static void log_tail(const char *path, char *out, size_t cap) {
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[320];
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0;
    ssize_t n = pread(fd, buf, sizeof buf - 1, from);
    close(fd);
    if (n <= 0) return;
    buf[n] = '\0';
    char *p = buf;
    if (from > 0 && strchr(p, '\n')) p = strchr(p, '\n') + 1; /* a whole first line */
    size_t l = strlen(p);
    while (l > 0 && (p[l - 1] == '\n' || p[l - 1] == ' ' || p[l - 1] == '\r')) p[--l] = '\0';
    for (char *q = p; *q; q++)
        if (*q == '\n') *q = '|';
    snprintf(out, cap, "%s", p);
}

/* Wait status -> exit code, or 128 + signal. */
static int exit_code(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

static int read_port(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int port = -1;
    if (fscanf(f, "%d", &port) != 1) port = -1;
    fclose(f);
    return port > 0 && port < 65536 ? port : -1;
}

km_nodeproc *km_nodeproc_start(const char *const *node_args, const char *log_path, km_error *err) {
    pthread_once(&reg_once, reg_init);
    slot *s = slot_take();
    if (!s) {
        km_error_set(err, "kvmesh node: more than %d nodes at once", MAX_NODES);
        return NULL;
    }
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    if ((size_t)snprintf(s->dir, DIR_CAP, "%s/kvmesh-node-XXXXXX", tmp) >= DIR_CAP || !mkdtemp(s->dir)) {
        km_error_set(err, "kvmesh node: cannot make a temp directory under %s: %s", tmp, strerror(errno));
        slot_give(s);
        return NULL;
    }
    snprintf(s->port_file, PATH_CAP, "%s/port", s->dir);
    s->own_log = !log_path;
    if ((size_t)snprintf(s->log, PATH_CAP, "%s%s", log_path ? log_path : s->dir, log_path ? "" : "/node.log") >=
        PATH_CAP) {
        km_error_set(err, "kvmesh node: log path too long: %s", log_path);
        rmdir(s->dir);
        slot_give(s);
        return NULL;
    }

    /* Everything the child needs is prepared here: between fork and exec it
     * may only make async-signal-safe calls (we may have threads). */
    int n_args = 0;
    while (node_args && node_args[n_args]) n_args++;
    const char **argv = calloc((size_t)n_args + 8, sizeof *argv);
    int logfd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (!argv || logfd < 0 || nullfd < 0) {
        km_error_set(err, "kvmesh node: %s: %s", s->log, argv ? strerror(errno) : "out of memory");
        free(argv);
        if (logfd >= 0) close(logfd);
        if (nullfd >= 0) close(nullfd);
        remove_files(s);
        slot_give(s);
        return NULL;
    }
    int k = 0;
    argv[k++] = "kvmesh";
    argv[k++] = "node";
    for (int i = 0; i < n_args; i++) argv[k++] = node_args[i];
    argv[k++] = "--listen";
    argv[k++] = "127.0.0.1:0";
    argv[k++] = "--port-file";
    argv[k++] = s->port_file;
    argv[k] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* the parent died before prctl */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(SIGINT, &dfl, NULL); /* ignored signals would stay ignored across exec */
        sigaction(SIGTERM, &dfl, NULL);
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execv("/proc/self/exe", (char *const *)argv);
        static const char msg[] = "kvmesh: cannot exec /proc/self/exe\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    int fork_errno = errno;
    free(argv);
    close(logfd);
    close(nullfd);
    if (pid < 0) {
        km_error_set(err, "kvmesh node: fork: %s", strerror(fork_errno));
        remove_files(s);
        slot_give(s);
        return NULL;
    }
    atomic_store(&s->pid, pid);

    int port = -1, st = 0;
    bool exited = false;
    for (double t0 = km_now_ms(); km_now_ms() - t0 < KM_NODEPROC_START_TIMEOUT_MS;) {
        if ((port = read_port(s->port_file)) > 0) break;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            exited = true;
            break;
        }
        sleep_ms(20);
    }
    if (port <= 0) {
        char tail[360];
        if (atomic_exchange(&s->pid, 0) == pid && !exited) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        log_tail(s->log, tail, sizeof tail);
        if (exited)
            km_error_set(err, "kvmesh node exited (status %d) before listening: %s", exit_code(st), tail);
        else
            km_error_set(err, "kvmesh node did not listen within %d s (log %s): %s", KM_NODEPROC_START_TIMEOUT_MS / 1000,
                         s->log, tail);
        remove_files(s);
        slot_give(s);
        return NULL;
    }
    km_nodeproc *p = calloc(1, sizeof *p);
    if (!p) {
        if (atomic_exchange(&s->pid, 0) == pid) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        remove_files(s);
        slot_give(s);
        km_error_set(err, "out of memory");
        return NULL;
    }
    p->s = s;
    p->port = port;
    snprintf(p->addr, sizeof p->addr, "127.0.0.1:%d", port);
    snprintf(p->url, sizeof p->url, "http://127.0.0.1:%d", port);
    return p;
}

int km_nodeproc_port(const km_nodeproc *p) { return p->port; }
const char *km_nodeproc_url(const km_nodeproc *p) { return p->url; }
const char *km_nodeproc_addr(const km_nodeproc *p) { return p->addr; }
int km_nodeproc_pid(const km_nodeproc *p) { return atomic_load(&p->s->pid); }
const char *km_nodeproc_log(const km_nodeproc *p) { return p->s->log; }

void km_nodeproc_terminate(km_nodeproc *p) {
    int pid = p ? atomic_load(&p->s->pid) : 0;
    if (pid > 0) kill(pid, SIGTERM);
}

int km_nodeproc_stop(km_nodeproc *p, int timeout_ms) {
    if (!p) return -1;
    slot *s = p->s;
    int pid = atomic_exchange(&s->pid, 0);
    int code = 128 + SIGKILL; /* already killed (and reaped) by km_nodeproc_kill_all */
    if (pid > 0) {
        int st = 0;
        pid_t r = 0;
        kill(pid, SIGTERM);
        for (double t0 = km_now_ms(); (r = waitpid(pid, &st, WNOHANG)) == 0 && km_now_ms() - t0 < timeout_ms;)
            sleep_ms(10);
        if (r == 0) {
            kill(pid, SIGKILL);
            while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {}
        }
        code = r == pid ? exit_code(st) : -1;
        remove_files(s);
    }
    slot_give(s);
    free(p);
    return code;
}

/* ------------------------------------------------------------ HTTP */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

typedef struct http_call {
    char *body;
    size_t len, cap;
    km_http_info *info;
    double t0;
    bool stream;
    size_t scanned;   /* event-stream bytes looked at for the first text */
    bool seen_event, seen_text;
} http_call;

/* Does this event's JSON carry generated text? */
static bool event_has_text(const char *json, size_t len) {
    json_t *j = json_loadb(json, len, 0, NULL);
    if (!j) return false;
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    json_t *t = json_object_get(c, "text");
    if (!t) t = json_object_get(json_object_get(c, "delta"), "content");
    bool has = json_is_string(t) && json_string_length(t) > 0;
    json_decref(j);
    return has;
}

/* Look at the complete events received so far, until one carries text. */
static void scan_events(http_call *h) {
    while (!h->seen_text) {
        char *start = h->body + h->scanned;
        char *end = strstr(start, "\n\n");
        if (!end) return;
        h->scanned = (size_t)(end + 2 - h->body);
        if (strncmp(start, "data: ", 6) != 0 || strncmp(start + 6, "[DONE]", 6) == 0) continue;
        double now = km_now_ms() - h->t0;
        if (!h->seen_event) h->info->ttft_ms = now; /* fallback: no event carries text */
        h->seen_event = true;
        if (event_has_text(start + 6, (size_t)(end - start - 6))) {
            h->info->ttft_ms = now;
            h->seen_text = true;
        }
    }
}

static size_t on_body(char *data, size_t sz, size_t nm, void *ud) {
    http_call *h = ud;
    size_t n = sz * nm;
    if (h->len + n + 1 > h->cap) {
        size_t cap = h->cap ? h->cap : 4096;
        while (cap < h->len + n + 1) cap *= 2;
        char *b = realloc(h->body, cap);
        if (!b) return 0;
        h->body = b;
        h->cap = cap;
    }
    memcpy(h->body + h->len, data, n);
    h->len += n;
    h->body[h->len] = '\0';
    if (h->stream && h->info) scan_events(h);
    return n;
}

/* Copy the value of header `name` out of one header line, if it is that. */
static bool header_value(const char *line, size_t n, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    if (n <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':') return false;
    const char *v = line + nl + 1;
    size_t vl = n - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t')) v++, vl--;
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ')) vl--;
    snprintf(out, cap, "%.*s", (int)(vl < cap ? vl : cap - 1), v);
    return true;
}

static size_t on_header(char *line, size_t sz, size_t nm, void *ud) {
    http_call *h = ud;
    size_t n = sz * nm;
    char type[64];
    if (header_value(line, n, "Content-Type", type, sizeof type)) {
        h->stream = strncasecmp(type, "text/event-stream", 17) == 0;
        if (h->info) snprintf(h->info->content_type, sizeof h->info->content_type, "%s", type);
    } else if (h->info) {
        header_value(line, n, "X-Kvmesh-Forwarded-To", h->info->forwarded_to, sizeof h->info->forwarded_to);
    }
    return n;
}

static int http_call_run(const char *base_url, const char *path, const char *post_body, int timeout_ms, long *status,
                         char **resp, size_t *len, km_http_info *info, km_error *err) {
    pthread_once(&curl_once, curl_init);
    *resp = NULL;
    if (len) *len = 0;
    *status = 0;
    if (info) {
        memset(info, 0, sizeof *info);
        info->ttft_ms = -1;
    }
    char url[1024];
    if ((size_t)snprintf(url, sizeof url, "%s%s", base_url, path) >= sizeof url)
        return km_error_set(err, "URL too long: %s%s", base_url, path);
    CURL *c = curl_easy_init();
    if (!c) return km_error_set(err, "%s: cannot create a curl handle", url);
    http_call h = {.info = info, .t0 = km_now_ms()};
    struct curl_slist *hdr = NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 5000 ? timeout_ms : 5000));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &h);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    if (post_body) {
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
        hdr = curl_slist_append(hdr, "Expect:"); /* no 100-continue round trip */
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post_body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(post_body));
    }
    CURLcode rc = curl_easy_perform(c);
    double total = km_now_ms() - h.t0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        free(h.body);
        return km_error_set(err, "%s %s: %s", post_body ? "POST" : "GET", url, curl_easy_strerror(rc));
    }
    if (!h.body && !(h.body = calloc(1, 1))) return km_error_set(err, "out of memory");
    if (info) {
        info->total_ms = total;
        if (!h.stream || info->ttft_ms < 0) info->ttft_ms = total;
    }
    *resp = h.body;
    if (len) *len = h.len;
    return 0;
}

int km_http_post_json(const char *base_url, const char *path, const char *body, int timeout_ms, long *status,
                      char **resp, size_t *len, km_http_info *info, km_error *err) {
    return http_call_run(base_url, path, body ? body : "", timeout_ms, status, resp, len, info, err);
}

int km_http_get(const char *base_url, const char *path, int timeout_ms, long *status, char **resp, size_t *len,
                km_error *err) {
    return http_call_run(base_url, path, NULL, timeout_ms, status, resp, len, NULL, err);
}

int km_sse_collect(const char *body, char **text, char **last, km_error *err) {
    size_t cap = 64, len = 0;
    char *t = malloc(cap);
    char *lj = NULL;
    if (!t) return km_error_set(err, "out of memory");
    t[0] = '\0';
    for (const char *p = body; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > 6 && strncmp(p, "data: ", 6) == 0 && !(ll >= 12 && strncmp(p + 6, "[DONE]", 6) == 0)) {
            json_error_t je;
            json_t *j = json_loadb(p + 6, ll - 6, 0, &je);
            if (!j || json_object_get(j, "error")) {
                json_t *msg = json_object_get(json_object_get(j, "error"), "message");
                km_error_set(err, "stream event: %s", j ? (json_is_string(msg) ? json_string_value(msg) : "error")
                                                        : je.text);
                json_decref(j);
                free(t);
                free(lj);
                return -1;
            }
            json_t *c = json_array_get(json_object_get(j, "choices"), 0);
            json_t *s = json_object_get(c, "text");
            if (!s) s = json_object_get(json_object_get(c, "delta"), "content");
            if (json_is_string(s)) {
                size_t sl = json_string_length(s);
                if (len + sl + 1 > cap) {
                    while (len + sl + 1 > cap) cap *= 2;
                    char *g = realloc(t, cap);
                    if (!g) {
                        json_decref(j);
                        free(t);
                        free(lj);
                        return km_error_set(err, "out of memory");
                    }
                    t = g;
                }
                memcpy(t + len, json_string_value(s), sl);
                len += sl;
                t[len] = '\0';
            }
            json_decref(j);
            free(lj);
            lj = strndup(p + 6, ll - 6);
        }
        p = eol ? eol + 1 : NULL;
    }
    *text = t;
    if (last) *last = lj;
    else free(lj);
    return 0;
}

double km_metrics_scrape(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        if (p) p++;
    }
    return NAN;
}
