/* testutil.c -- see testutil.h. */
#include "testutil.h"

#include <curl/curl.h>
#include <strings.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tu_model(const char *file) {
    static char buf[4096];
    const char *dir = getenv("KVMESH_TEST_MODELS");
    snprintf(buf, sizeof buf, "%s/%s", dir ? dir : "test-models", file);
    return buf;
}

const char *tu_shared(const char *rel) {
    static char buf[4096];
    const char *dir = getenv("KVMESH_SHARED_DIR");
    snprintf(buf, sizeof buf, "%s/%s", dir ? dir : "../shared", rel);
    struct stat st;
    if (stat(buf, &st) != 0) return NULL;
    return buf;
}

const char *tu_tmp_base(void) {
    const char *t = getenv("TMPDIR");
    return t && *t ? t : P_tmpdir;
}

char *tu_tmpdir(void) {
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/kvmesh-test-XXXXXX", tu_tmp_base());
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void tu_rmtree(const char *dir) {
    /* only what tu_tmpdir made */
    const char *slash = dir ? strrchr(dir, '/') : NULL;
    if (!slash || strncmp(slash + 1, "kvmesh-test-", 12) != 0 || strchr(dir, '\'')) return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

const char *tu_kvmesh_bin(void) {
    const char *b = getenv("KVMESH_BIN");
    return b ? b : "kvmesh";
}

static int saved_stderr = -1;
static FILE *captured;

void tu_stderr_begin(void) {
    fflush(stderr);
    captured = tmpfile();
    assert_non_null(captured);
    saved_stderr = dup(2);
    dup2(fileno(captured), 2);
}

char *tu_stderr_end(void) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    saved_stderr = -1;
    int fd = fileno(captured);
    off_t n = lseek(fd, 0, SEEK_END); /* stderr wrote through a dup: the offset is shared */
    char *out = malloc((size_t)(n > 0 ? n : 0) + 1);
    ssize_t got = n > 0 ? pread(fd, out, (size_t)n, 0) : 0;
    out[got > 0 ? got : 0] = 0;
    fclose(captured);
    captured = NULL;
    return out;
}

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

int tu_free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
        close(s);
        return -1;
    }
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

static int port_accepts(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
    close(s);
    return ok;
}

/* Servers started and not yet stopped: a failed assertion jumps out of a test
 * before its tu_redis_stop, so whatever is left is killed at exit; and a
 * server dies with the test process if that crashes (PR_SET_PDEATHSIG). */
static int live_servers[64];
static int n_live;

static void kill_live_servers(void) {
    for (int i = 0; i < n_live; i++)
        if (live_servers[i] > 0) {
            kill(live_servers[i], SIGKILL);
            waitpid(live_servers[i], NULL, 0);
        }
    n_live = 0;
}

int tu_redis_start(int port, const char *extra) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "exec redis-server --bind 127.0.0.1 --port %d --save '' --appendonly no --daemonize no "
             "--loglevel warning --logfile '' %s >/dev/null 2>&1",
             port, extra ? extra : "");
    static int registered;
    if (!registered++) atexit(kill_live_servers);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 5 s */
        if (port_accepts(port)) {
            if (n_live < (int)(sizeof live_servers / sizeof *live_servers)) live_servers[n_live++] = pid;
            return pid;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return -1; /* exited: not installed, port taken */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    tu_redis_stop(pid, 1);
    return -1;
}

void tu_redis_stop(int pid, int kill_hard) {
    if (pid <= 0) return;
    kill(pid, kill_hard ? SIGKILL : SIGTERM);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < n_live; i++)
        if (live_servers[i] == pid) live_servers[i] = live_servers[--n_live];
}

/* ------------------------------------------------------------ node processes */

tu_node tu_node_start(const char *model, const char *const *args) {
    tu_node n;
    memset(&n, 0, sizeof n);
    n.dir = tu_tmpdir();
    char port_file[4200];
    snprintf(port_file, sizeof port_file, "%s/port", n.dir);
    const char *argv[64];
    int k = 0;
    argv[k++] = tu_kvmesh_bin();
    argv[k++] = "node";
    argv[k++] = "--model";
    argv[k++] = model;
    argv[k++] = "--listen";
    argv[k++] = "127.0.0.1:0";
    argv[k++] = "--port-file";
    argv[k++] = port_file;
    for (int i = 0; args && args[i] && k < 63; i++) argv[k++] = args[i];
    argv[k] = NULL;
    n.pid = fork();
    if (n.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) { /* up to 60 s (sanitizer builds load slowly) */
        FILE *f = fopen(port_file, "r");
        if (f) {
            int ok = fscanf(f, "%d", &n.port);
            fclose(f);
            if (ok == 1 && n.port > 0) break;
        }
        int st;
        if (waitpid(n.pid, &st, WNOHANG) == n.pid) fail_msg("kvmesh node exited early (status %d)", st);
        usleep(100000);
    }
    if (n.port <= 0) fail_msg("kvmesh node did not start");
    snprintf(n.url, sizeof n.url, "http://127.0.0.1:%d", n.port);
    return n;
}

int tu_node_stop(tu_node *n) {
    int st = -1;
    if (n->pid > 0) {
        kill(n->pid, SIGTERM);
        waitpid(n->pid, &st, 0);
        n->pid = 0;
    }
    tu_rmtree(n->dir);
    free(n->dir);
    n->dir = NULL;
    return st;
}

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
    tu_resp *r = ud;
    size_t n = sz * nm;
    char *b = realloc(r->body, r->len + n + 1);
    if (!b) return 0;
    r->body = b;
    memcpy(r->body + r->len, p, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud) {
    tu_resp *r = ud;
    size_t n = sz * nm;
    if (n > 15 && strncasecmp(p, "Retry-After: ", 13) == 0)
        snprintf(r->retry_after, sizeof r->retry_after, "%.*s", (int)(n - 15), p + 13);
    if (n > 18 && strncasecmp(p, "retry-after-ms: ", 16) == 0)
        snprintf(r->retry_after_ms, sizeof r->retry_after_ms, "%.*s", (int)(n - 18), p + 16);
    return n;
}

tu_resp tu_http(const char *base, const char *method, const char *path, const char *body, const char *const *headers) {
    tu_resp r;
    memset(&r, 0, sizeof r);
    r.body = calloc(1, 1);
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    for (int i = 0; headers && headers[i]; i++) h = curl_slist_append(h, headers[i]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK) fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return r;
}
