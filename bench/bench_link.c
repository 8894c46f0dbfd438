/* bench_link.c -- `kvmesh bench link`: the link emulation against kernel shaping.
 *
 * src/link.c emulates a slow link inside the client (a token bucket per
 * direction plus one RTT per request) so that benchmarks need no privileges.
 * This bench validates it once against the kernel. The same client code path
 * (km_redis: a SET through the write-behind uploader, then a GET) moves one
 * value of each size in three configurations:
 *
 *   baseline   no shaping at all
 *   emulated   km_link bw=X rtt=0, no kernel shaping
 *   kernel     tc tbf rate X on the loopback, no emulation
 *
 * netem is not available on our machines, so the kernel side has no delay:
 * only the bandwidth part is compared (hence rtt=0 on the emulated side).
 *
 * Everything runs inside a private network namespace with its own
 * redis-server, so the qdisc shapes nothing but the bench's own traffic and
 * no packet leaves that namespace's loopback.
 *
 * Structure: the process forks. The parent stays in the host namespace and
 * owns the namespace's life: it creates it, waits, and always removes it (and
 * anything still running in it) -- on success, on error, and on
 * SIGINT/SIGTERM, which it forwards to the child. The child joins the
 * namespace with setns(2) and does all the work (redis-server, tc, measuring,
 * report). Why fork + setns rather than re-executing through `ip netns exec`:
 * nothing has to be passed back through argv (no hidden --inner option), and
 * the cleanup lives in a process that cannot be inside the namespace it
 * removes. Why a process rather than a thread calling setns: the network
 * namespace is per thread, and km_redis starts threads of its own; a whole
 * process inside the namespace leaves no doubt about where a socket lives. */
#define _GNU_SOURCE /* setns(2), CLONE_NEWNET */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "commands.h"
#include "link.h"
#include "redis_tier.h"
#include "util.h"

enum { CFG_BASE, CFG_EMU, CFG_KERN, N_CFG };
static const char *cfg_names[N_CFG] = {"baseline", "emulated", "kernel"};
enum { OP_GET, OP_SET, N_OPS };
static const char *op_names[N_OPS] = {"GET", "SET"};

#define MAX_SIZES 16
#define MAX_VALUE ((size_t)64 << 20)
/* The namespace is fresh and ours alone: any port is free in it. */
#define REDIS_PORT 6379
/* lo's default MTU (64 KiB) would force a tbf burst above 64 KiB: tbf drops
 * any packet larger than its bucket, and TCP then stalls on retransmissions.
 * A 1500-byte MTU is what a device's real link has and lets the burst stay
 * small next to the values we time. */
#define LO_MTU 1500
/* Criterion: emulated within +-15 % of kernel for values of at least 256 KiB
 * (below that the tbf burst, which goes through at once, dominates). */
#define PASS_MIN_SIZE ((size_t)256 << 10)
#define PASS_TOLERANCE 0.15

typedef struct link_opts {
    double bw_bps;
    const char *bw_text;
    size_t sizes[MAX_SIZES];
    int n_sizes, reps;
    double idle_ms; /* pause before each timed transfer */
    size_t burst, limit;
    const char *out;
    char ip[4096], tc[4096], redis[4096];
    char ns[64], ns_path[128];
} link_opts;

typedef struct size_row {
    size_t size;
    double *samples[N_CFG][N_OPS]; /* ms, one per rep */
    double median[N_CFG][N_OPS];
} size_row;

static volatile sig_atomic_t stop_sig;
static void on_stop(int sig) { stop_sig = sig; }

static void link_usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh bench link [options]\n"
            "\n"
            "Validates the client-side link emulation (--link) against kernel shaping: times a\n"
            "SET and a GET of one value of each size through the shared tier's client, with no\n"
            "shaping, with the emulated link (bw only, rtt=0), and with `tc tbf` on the loopback\n"
            "of a private network namespace (no emulation). netem is not used: only the\n"
            "bandwidth part is compared. Needs root and iproute2 (ip, tc); starts its own\n"
            "redis-server inside the namespace and removes everything at the end.\n"
            "Prints a table; writes bench-link.json and bench-link.csv.\n"
            "\n"
            "  --bw RATE             link bandwidth, e.g. 20mbit (default 20mbit)\n"
            "  --sizes LIST          value sizes (default 64k,256k,1m,4m; k/m = KiB/MiB)\n"
            "  --reps N              timed repetitions per size, after one warm-up; the median\n"
            "                        is reported (default 5)\n"
            "  --burst SIZE          tbf bucket size (default 32k)\n"
            "  --idle MS             pause before every transfer (default 0: back to back, the\n"
            "                        tbf bucket stays empty; 100 lets it refill, so each transfer\n"
            "                        starts with a free burst, as an isolated request would)\n"
            "  --out DIR             where the JSON and CSV go (default bench-out)\n"
            "  --redis-server PATH   the redis-server to start (default: from PATH)\n"
            "  -h, --help\n"
            "\n"
            "Exit status: 0 the criterion holds (emulated within +-15%% of kernel for sizes\n"
            ">= 256 KiB), 1 error or criterion not met, 2 usage or missing prerequisites.\n");
}

/* "64k", "1m", "4MiB", "32kb", "1500": bytes, binary units (as tc reads them). */
static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v <= 0) return -1;
    double mul;
    if (!*end || !strcasecmp(end, "b")) mul = 1;
    else if (!strcasecmp(end, "k") || !strcasecmp(end, "kb") || !strcasecmp(end, "kib")) mul = 1024;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb") || !strcasecmp(end, "mib")) mul = 1024 * 1024;
    else return -1;
    v *= mul;
    if (v < 1 || v > (double)MAX_VALUE || v != floor(v)) return -1;
    *out = (size_t)v;
    return 0;
}

static void size_name(size_t n, char *buf, size_t len) {
    if (n >= (1u << 20) && n % (1u << 20) == 0) snprintf(buf, len, "%zu MiB", n >> 20);
    else if (n >= 1024 && n % 1024 == 0) snprintf(buf, len, "%zu KiB", n >> 10);
    else snprintf(buf, len, "%zu B", n);
}

/* Full path of an executable: name itself when it has a slash, else the
 * first match in $PATH, then the sbin directories (a sudo'd PATH may lack
 * them, and ip/tc live there). */
static int find_exe(const char *name, char *out, size_t len) {
    if (strchr(name, '/')) {
        snprintf(out, len, "%s", name);
        return access(out, X_OK);
    }
    const char *env = getenv("PATH");
    char *path = NULL;
    if (asprintf(&path, "%s:/usr/sbin:/sbin:/usr/bin:/bin", env ? env : "") < 0) return -1;
    char *save = NULL;
    int rc = -1;
    for (char *d = strtok_r(path, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, len, "%s/%s", *d ? d : ".", name);
        if (access(out, X_OK) == 0) {
            rc = 0;
            break;
        }
    }
    free(path);
    return rc;
}

/* Run a tool (argv[0] a full path) without a shell. Its stdout and stderr go
 * to out (NUL-terminated, truncated, last newline removed), or nowhere when
 * out is NULL. Returns its exit status, or -1 when it could not run. */
static int run_tool(char *const argv[], char *out, size_t out_len) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    char buf[1024];
    for (;;) { /* drain the pipe even when discarding, or the tool blocks */
        ssize_t k = read(fds[0], buf, sizeof buf);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        for (ssize_t i = 0; out && i < k && n + 1 < out_len; i++) out[n++] = buf[i];
    }
    close(fds[0]);
    if (out && out_len) {
        while (n > 0 && out[n - 1] == '\n') n--;
        out[n] = 0;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ host side */

/* Kill whatever still runs in the namespace at ns_path (only what this bench
 * started can be there: redis-server, tc) so that removing the name frees the
 * namespace itself. Same test as `ip netns pids`: the inode of the process's
 * /proc/<pid>/ns/net against the namespace's bind mount. */
static int kill_ns_procs(const char *ns_path) {
    struct stat ns;
    if (stat(ns_path, &ns) != 0) return 0;
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    pid_t self = getpid();
    for (struct dirent *e; (e = readdir(d));) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self) continue;
        char p[64];
        struct stat st;
        snprintf(p, sizeof p, "/proc/%ld/ns/net", pid);
        if (stat(p, &st) == 0 && st.st_ino == ns.st_ino && st.st_dev == ns.st_dev && kill((pid_t)pid, SIGKILL) == 0) n++;
    }
    closedir(d);
    if (n) {
        struct timespec ts = {0, 200 * 1000 * 1000}; /* let them go before the name does */
        nanosleep(&ts, NULL);
    }
    return n;
}

static int netns_del(const link_opts *o, const char *name) {
    char path[128], msg[512];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    int killed = kill_ns_procs(path);
    if (killed) fprintf(stderr, "kvmesh bench link: killed %d process(es) left in namespace %s\n", killed, name);
    char *argv[] = {(char *)o->ip, "netns", "del", (char *)name, NULL};
    if (run_tool(argv, msg, sizeof msg) != 0) {
        fprintf(stderr, "kvmesh bench link: could not remove network namespace %s: %s\n", name, msg);
        return -1;
    }
    return 0;
}

/* A kvmesh-bench-<pid> namespace whose process is gone was left by a run
 * killed with SIGKILL (the one signal the parent cannot clean up after). */
static void remove_stale_namespaces(const link_opts *o) {
    DIR *d = opendir("/run/netns");
    if (!d) return;
    char names[16][64];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 16;) {
        char *end;
        if (strncmp(e->d_name, "kvmesh-bench-", 13) != 0) continue;
        long pid = strtol(e->d_name + 13, &end, 10);
        if (*end || pid <= 0 || strlen(e->d_name) >= sizeof names[0]) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++)
        if (netns_del(o, names[i]) == 0)
            fprintf(stderr, "kvmesh bench link: removed namespace %s, left by an earlier run that was killed\n", names[i]);
}

static int inner(link_opts *o);

static int run_outside(link_opts *o) {
    snprintf(o->ns, sizeof o->ns, "kvmesh-bench-%d", (int)getpid());
    snprintf(o->ns_path, sizeof o->ns_path, "/run/netns/%s", o->ns);
    /* No SA_RESTART: a signal must interrupt waitpid so it can be forwarded. */
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    remove_stale_namespaces(o);

    char msg[1024];
    char *add[] = {o->ip, "netns", "add", o->ns, NULL};
    if (run_tool(add, msg, sizeof msg) != 0) {
        fprintf(stderr, "kvmesh bench link: cannot create a network namespace (%s netns add %s): %s\n", o->ip, o->ns, msg);
        return 2;
    }
    int rc = 1;
    char mtu[16];
    snprintf(mtu, sizeof mtu, "%d", LO_MTU);
    char *lo_up[] = {o->ip, "-n", o->ns, "link", "set", "dev", "lo", "mtu", mtu, "up", NULL};
    if (run_tool(lo_up, msg, sizeof msg) != 0) {
        fprintf(stderr, "kvmesh bench link: cannot bring up lo in namespace %s: %s\n", o->ns, msg);
        goto cleanup;
    }
    if (stop_sig) goto cleanup;
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid(), child = fork();
    if (child < 0) {
        fprintf(stderr, "kvmesh bench link: fork: %s\n", strerror(errno));
        goto cleanup;
    }
    if (child == 0) {
        /* Stop at once if the parent dies: it is the one that cleans up. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1);
        exit(inner(o));
    }
    /* Wait for the child. On SIGINT/SIGTERM, forward SIGTERM (it finishes
     * the transfer under way and stops its server), then poll; SIGKILL it if
     * it has not gone 5 s later. */
    int st = 0, forwarded = 0, reaped = 0;
    double kill_at = 0;
    for (;;) {
        pid_t w = waitpid(child, &st, forwarded ? WNOHANG : 0);
        if (w == child) {
            reaped = 1;
            break;
        }
        if (w < 0 && errno != EINTR) {
            fprintf(stderr, "kvmesh bench link: waitpid: %s\n", strerror(errno));
            break;
        }
        if (stop_sig && !forwarded) {
            kill(child, SIGTERM);
            forwarded = 1;
            kill_at = km_now_ms() + 5000;
        }
        if (forwarded) {
            if (km_now_ms() >= kill_at) kill(child, SIGKILL);
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (reaped && WIFEXITED(st)) rc = WEXITSTATUS(st);
    else if (reaped && WIFSIGNALED(st))
        fprintf(stderr, "kvmesh bench link: measuring process died (signal %d)\n", WTERMSIG(st));

cleanup:
    if (netns_del(o, o->ns) == 0) fprintf(stderr, "kvmesh bench link: removed namespace %s\n", o->ns);
    else rc = 1;
    if (stop_sig) {
        fprintf(stderr, "kvmesh bench link: interrupted\n");
        return 128 + stop_sig;
    }
    return rc;
}

/* ------------------------------------------------------------ inside the namespace */

static int join_namespace(const link_opts *o) {
    int fd = open(o->ns_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
        fprintf(stderr, "kvmesh bench link: cannot enter namespace %s: %s\n", o->ns, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    /* Refuse to shape or send anything unless we are really in it. */
    struct stat want, have;
    if (stat(o->ns_path, &want) != 0 || stat("/proc/self/ns/net", &have) != 0 || want.st_ino != have.st_ino ||
        want.st_dev != have.st_dev) {
        fprintf(stderr, "kvmesh bench link: not inside namespace %s after setns; stopping\n", o->ns);
        return -1;
    }
    return 0;
}

static int port_accepts(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
    close(s);
    return ok;
}

static void redis_stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 200; i++) { /* 2 s, then SIGKILL */
        if (waitpid(pid, NULL, WNOHANG) == pid) return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static pid_t redis_start(const link_opts *o) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        /* Its own process group: a terminal's Ctrl-C reaches the bench, which
         * stops the server in order. And it dies with the bench, whatever
         * way the bench goes. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
        }
        char port[16];
        snprintf(port, sizeof port, "%d", REDIS_PORT);
        execl(o->redis, "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--daemonize", "no", "--loglevel", "warning", "--logfile", "", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 5 s */
        if (port_accepts(REDIS_PORT)) return pid;
        if (waitpid(pid, NULL, WNOHANG) == pid) return -1;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    redis_stop(pid);
    return -1;
}

/* tc on the namespace's lo. `tc -n` names the namespace explicitly, so even
 * a mistake elsewhere could not put the qdisc on the host's loopback. */
static int tbf_set(const link_opts *o, int on, char *msg, size_t len) {
    char rate[64], burst[32], limit[32];
    snprintf(rate, sizeof rate, "%.0fbit", o->bw_bps);
    snprintf(burst, sizeof burst, "%zu", o->burst);
    snprintf(limit, sizeof limit, "%zu", o->limit);
    char *add[] = {(char *)o->tc, "-n", (char *)o->ns, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate,
                   "burst", burst, "limit", limit, NULL};
    char *del[] = {(char *)o->tc, "-n", (char *)o->ns, "qdisc", "del", "dev", "lo", "root", NULL};
    return run_tool(on ? add : del, msg, len);
}

/* Packets the tbf dropped (from `tc -s qdisc show`); -1 if unknown. Drops
 * would mean TCP retransmissions inside the kernel times. */
static long tbf_drops(const link_opts *o) {
    char out[2048];
    char *show[] = {(char *)o->tc, "-s", "-n", (char *)o->ns, "qdisc", "show", "dev", "lo", NULL};
    if (run_tool(show, out, sizeof out) != 0) return -1;
    const char *p = strstr(out, "dropped ");
    return p ? strtol(p + 8, NULL, 10) : -1;
}

/* The value: random bytes, so nothing on the path can shrink it. The tier
 * stores any string value (GET does not validate; the caller does), and one
 * that is not a state blob is sent exactly as given, so the bytes timed are
 * the bytes on the wire. */
static void pause_ms(double ms) {
    if (ms <= 0) return;
    struct timespec ts = {(time_t)(ms / 1e3), (long)(fmod(ms, 1e3) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_sig) {
    }
}

static void fill_random(uint8_t *buf, size_t n, uint64_t seed) {
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)(x >> 24);
    }
}

/* One configuration: every size, one warm-up then --reps timed SET+GET.
 * Returns 0, -1 on error (message printed), -2 when interrupted. */
static int measure(const link_opts *o, int cfg, size_row *rows) {
    km_redis_params p = km_redis_default_params();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", REDIS_PORT);
    p.url = url;
    p.sync_period_ms = 0; /* no catalog traffic competing for the shaped link */
    p.connect_timeout_ms = 2000;
    /* The I/O timeout bounds each socket wait; a SET may sit in the send
     * buffer for the whole transfer before its reply, so allow a multiple of
     * the largest transfer at this rate. */
    size_t biggest = 0;
    for (int i = 0; i < o->n_sizes; i++)
        if (o->sizes[i] > biggest) biggest = o->sizes[i];
    double xfer_ms = (double)biggest * 8 / o->bw_bps * 1e3;
    p.io_timeout_ms = (int)fmin(4 * xfer_ms + 10000, 600000);
    km_link *link = NULL;
    if (cfg == CFG_EMU) {
        km_link_params lp = {.bw_bps = o->bw_bps, .rtt_ms = 0};
        link = km_link_new(&lp);
        p.link = link;
    }
    uint8_t fp[KM_FINGERPRINT_LEN];
    memcpy(fp, "kvmesh/benchlink", KM_FINGERPRINT_LEN);
    km_error err;
    km_redis *r = km_redis_open(&p, fp, &err);
    if (!r) {
        fprintf(stderr, "kvmesh bench link: %s\n", err.msg);
        km_link_free(link);
        return -1;
    }
    int rc = 0;
    if (!km_redis_get_stats(r).up) {
        fprintf(stderr, "kvmesh bench link: the redis-server inside the namespace does not answer\n");
        rc = -1;
    }
    for (int i = 0; rc == 0 && i < o->n_sizes; i++) {
        size_t size = o->sizes[i];
        uint8_t *value = malloc(size);
        fill_random(value, size, 0x9e3779b97f4a7c15ull ^ size);
        km_key key;
        memset(&key, 0, sizeof key);
        memcpy(key.b, "benchlink", 9);
        km_put_u32(key.b + 12, (uint32_t)size);
        for (int rep = -1; rep < o->reps; rep++) {
            if (stop_sig) {
                rc = -2;
                break;
            }
            pause_ms(o->idle_ms);
            km_redis_stats s0 = km_redis_get_stats(r);
            double t0 = km_now_ms();
            if (km_redis_put_async(r, key, value, size, &err) != 0) {
                fprintf(stderr, "kvmesh bench link: SET: %s\n", err.msg);
                rc = -1;
                break;
            }
            int pending = km_redis_flush(r, p.io_timeout_ms * 2);
            double t_set = km_now_ms() - t0;
            km_redis_stats s1 = km_redis_get_stats(r);
            if (pending || s1.uploads_done != s0.uploads_done + 1) {
                fprintf(stderr, "kvmesh bench link: SET of %zu bytes did not complete\n", size);
                rc = -1;
                break;
            }
            uint8_t *got = NULL;
            size_t len = 0;
            pause_ms(o->idle_ms);
            t0 = km_now_ms();
            int g = km_redis_get(r, key, 0, &got, &len, &err);
            double t_get = km_now_ms() - t0;
            int same = g == 0 && len == size && memcmp(got, value, size) == 0;
            free(got);
            if (!same) {
                fprintf(stderr, "kvmesh bench link: GET of %zu bytes: %s\n", size, g < 0 ? err.msg : "wrong value back");
                rc = -1;
                break;
            }
            if (rep >= 0) {
                rows[i].samples[cfg][OP_GET][rep] = t_get;
                rows[i].samples[cfg][OP_SET][rep] = t_set;
            }
        }
        free(value);
        if (rc != 0) break;
        for (int op = 0; op < N_OPS; op++) {
            /* km_stats_compute sorts; keep the samples in run order for the JSON */
            double *tmp = malloc((size_t)o->reps * sizeof *tmp);
            memcpy(tmp, rows[i].samples[cfg][op], (size_t)o->reps * sizeof *tmp);
            rows[i].median[cfg][op] = km_stats_compute(tmp, o->reps).p50;
            free(tmp);
        }
        char sn[32];
        size_name(size, sn, sizeof sn);
        fprintf(stderr, "  %-8s %8s: GET %9.2f ms, SET %9.2f ms (median of %d)\n", cfg_names[cfg], sn,
                rows[i].median[cfg][OP_GET], rows[i].median[cfg][OP_SET], o->reps);
    }
    km_redis_close(r, 1000);
    km_link_free(link);
    return rc;
}

static double mbps(size_t bytes, double ms) { return ms > 0 ? (double)bytes * 8 / (ms * 1e3) : 0; }

/* Table on stdout, JSON and CSV; returns whether the criterion holds (or
 * does not apply). */
static int report(const link_opts *o, const size_row *rows, long drops, FILE *json, FILE *csv) {
    char bw[64];
    km_link_params lp = {.bw_bps = o->bw_bps, .rtt_ms = 0};
    km_link_describe(&lp, bw, sizeof bw);
    char idle[64];
    if (o->idle_ms > 0) snprintf(idle, sizeof idle, "%.0f ms idle before each transfer", o->idle_ms);
    else snprintf(idle, sizeof idle, "transfers back to back");
    printf("kvmesh bench link -- emulated: km_link %s; kernel: tc tbf rate %.0fbit burst %zu limit %zu on lo (mtu %d);\n"
           "same client (km_redis SET via the uploader, GET), median of %d reps after 1 warm-up, %s\n\n",
           bw, o->bw_bps, o->burst, o->limit, LO_MTU, o->reps, idle);
    printf("%-8s %-3s %9s | %11s %11s %11s | %8s | %13s %13s %13s\n", "size", "op", "ideal ms", "baseline ms",
           "emulated ms", "kernel ms", "emu/kern", "base Mbit/s", "emu Mbit/s", "kernel Mbit/s");
    fprintf(csv, "size_bytes,op,ideal_ms,baseline_ms,emulated_ms,kernel_ms,emulated_over_kernel,baseline_mbit_s,"
                 "emulated_mbit_s,kernel_mbit_s,reps\n");
    fprintf(json,
            "{\n  \"bench\": \"link\",\n  \"bw_bit_s\": %.0f,\n  \"emulated\": \"bw=%.0fbit,rtt=0\",\n"
            "  \"kernel\": {\"qdisc\": \"tbf\", \"rate_bit_s\": %.0f, \"burst_bytes\": %zu, \"limit_bytes\": %zu, "
            "\"lo_mtu\": %d, \"dropped_packets\": %ld},\n"
            "  \"reps\": %d,\n  \"idle_ms\": %.1f,\n  \"statistic\": \"median\",\n  \"rows\": [\n",
            o->bw_bps, o->bw_bps, o->bw_bps, o->burst, o->limit, LO_MTU, drops, o->reps, o->idle_ms);
    int pass = 1, judged = 0;
    double lo_r = INFINITY, hi_r = -INFINITY;
    for (int i = 0; i < o->n_sizes; i++) {
        const size_row *row = &rows[i];
        char sn[32];
        size_name(row->size, sn, sizeof sn);
        double ideal = km_link_cost_ms(&lp, 0, row->size);
        for (int op = 0; op < N_OPS; op++) {
            double b = row->median[CFG_BASE][op], e = row->median[CFG_EMU][op], k = row->median[CFG_KERN][op];
            double ratio = k > 0 ? e / k : 0;
            const char *mark = "";
            if (row->size >= PASS_MIN_SIZE) {
                judged = 1;
                if (ratio < lo_r) lo_r = ratio;
                if (ratio > hi_r) hi_r = ratio;
                if (fabs(ratio - 1) > PASS_TOLERANCE) {
                    pass = 0;
                    mark = "  <- outside +-15%";
                }
            }
            printf("%-8s %-3s %9.1f | %11.2f %11.2f %11.2f | %8.3f | %13.1f %13.2f %13.2f%s\n", sn, op_names[op], ideal,
                   b, e, k, ratio, mbps(row->size, b), mbps(row->size, e), mbps(row->size, k), mark);
            fprintf(csv, "%zu,%s,%.3f,%.3f,%.3f,%.3f,%.4f,%.2f,%.3f,%.3f,%d\n", row->size, op_names[op], ideal, b, e, k,
                    ratio, mbps(row->size, b), mbps(row->size, e), mbps(row->size, k), o->reps);
            fprintf(json,
                    "%s    {\"size_bytes\": %zu, \"op\": \"%s\", \"ideal_ms\": %.3f, \"baseline_ms\": %.3f, "
                    "\"emulated_ms\": %.3f, \"kernel_ms\": %.3f, \"emulated_over_kernel\": %.4f, "
                    "\"mbit_s\": {\"baseline\": %.2f, \"emulated\": %.3f, \"kernel\": %.3f}, \"samples_ms\": {",
                    i || op ? ",\n" : "", row->size, op_names[op], ideal, b, e, k, ratio, mbps(row->size, b),
                    mbps(row->size, e), mbps(row->size, k));
            for (int c = 0; c < N_CFG; c++) {
                fprintf(json, "%s\"%s\": [", c ? ", " : "", cfg_names[c]);
                for (int j = 0; j < o->reps; j++) fprintf(json, "%s%.3f", j ? ", " : "", row->samples[c][op][j]);
                fprintf(json, "]");
            }
            fprintf(json, "}}");
        }
    }
    fprintf(json, "\n  ],\n  \"criterion\": {\"min_size_bytes\": %zu, \"tolerance\": %.2f, \"evaluated\": %s, \"pass\": %s",
            PASS_MIN_SIZE, PASS_TOLERANCE, judged ? "true" : "false", pass ? "true" : "false");
    if (judged) fprintf(json, ", \"ratio_min\": %.4f, \"ratio_max\": %.4f", lo_r, hi_r);
    fprintf(json, "}\n}\n");
    if (drops > 0)
        printf("\nwarning: the tbf dropped %ld packet(s); TCP retransmissions are inside the kernel times\n", drops);
    if (!judged)
        printf("\ncriterion not evaluated: no size >= 256 KiB\n");
    else
        printf("\n%s: emulated/kernel for sizes >= 256 KiB is %.3f .. %.3f (criterion: 1 +- %.2f)\n", pass ? "PASS" : "FAIL",
               lo_r, hi_r, PASS_TOLERANCE);
    return pass;
}

static int inner(link_opts *o) {
    /* Ctrl-C reaches us with the parent: finish the current transfer, stop
     * the server, exit. SA_RESTART: hiredis and nanosleep carry on meanwhile. */
    struct sigaction sa = {.sa_handler = on_stop, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a dying server must be an error, not our death */
    if (join_namespace(o) != 0) return 1;

    size_row *rows = calloc((size_t)o->n_sizes, sizeof *rows);
    for (int i = 0; i < o->n_sizes; i++) {
        rows[i].size = o->sizes[i];
        for (int c = 0; c < N_CFG; c++)
            for (int op = 0; op < N_OPS; op++) rows[i].samples[c][op] = calloc((size_t)o->reps, sizeof(double));
    }
    int rc = 1, tbf_on = 0;
    long drops = -1;
    char msg[1024];
    pid_t redis = redis_start(o);
    if (redis < 0) {
        fprintf(stderr, "kvmesh bench link: %s did not start inside namespace %s\n", o->redis, o->ns);
        goto done;
    }
    fprintf(stderr, "kvmesh bench link: namespace %s, lo mtu %d, %s on 127.0.0.1:%d inside it; %d size(s), %d reps\n",
            o->ns, LO_MTU, o->redis, REDIS_PORT, o->n_sizes, o->reps);
    int m = 0;
    for (int cfg = 0; cfg < N_CFG && m == 0; cfg++) {
        if (cfg == CFG_KERN) {
            if (tbf_set(o, 1, msg, sizeof msg) != 0) {
                fprintf(stderr, "kvmesh bench link: cannot add the tbf qdisc (is sch_tbf available?): %s\n", msg);
                rc = 2;
                goto done;
            }
            tbf_on = 1;
        }
        m = measure(o, cfg, rows);
    }
    if (tbf_on) {
        drops = tbf_drops(o);
        if (tbf_set(o, 0, msg, sizeof msg) != 0)
            fprintf(stderr, "kvmesh bench link: removing the qdisc: %s (it goes with the namespace anyway)\n", msg);
    }
    if (m != 0) goto done;

    km_error err;
    if (km_mkdir_p(o->out, &err) != 0) {
        fprintf(stderr, "kvmesh bench link: %s\n", err.msg);
        goto done;
    }
    char pj[4096], pc[4096];
    snprintf(pj, sizeof pj, "%s/bench-link.json", o->out);
    snprintf(pc, sizeof pc, "%s/bench-link.csv", o->out);
    FILE *json = fopen(pj, "w"), *csv = fopen(pc, "w");
    if (!json || !csv) {
        fprintf(stderr, "kvmesh bench link: cannot write %s / %s\n", pj, pc);
    } else {
        rc = report(o, rows, drops, json, csv) ? 0 : 1;
        printf("\nwrote %s and %s\n", pj, pc);
    }
    if (json) fclose(json);
    if (csv) fclose(csv);

done:
    redis_stop(redis);
    for (int i = 0; i < o->n_sizes; i++)
        for (int c = 0; c < N_CFG; c++)
            for (int op = 0; op < N_OPS; op++) free(rows[i].samples[c][op]);
    free(rows);
    return rc;
}

/* ------------------------------------------------------------ command */

int cmd_bench_link(int argc, char **argv) {
    link_opts o = {.bw_text = "20mbit", .reps = 5, .burst = 32 << 10, .out = "bench-out"};
    const char *sizes = "64k,256k,1m,4m", *redis = "redis-server";
    enum { O_BW = 1000, O_SIZES, O_REPS, O_BURST, O_IDLE, O_OUT, O_REDIS };
    static const struct option opts[] = {{"bw", required_argument, 0, O_BW},
                                         {"sizes", required_argument, 0, O_SIZES},
                                         {"reps", required_argument, 0, O_REPS},
                                         {"burst", required_argument, 0, O_BURST},
                                         {"idle", required_argument, 0, O_IDLE},
                                         {"out", required_argument, 0, O_OUT},
                                         {"redis-server", required_argument, 0, O_REDIS},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_BW: o.bw_text = optarg; break;
        case O_SIZES: sizes = optarg; break;
        case O_REPS: o.reps = atoi(optarg); break;
        case O_BURST:
            if (parse_size(optarg, &o.burst) != 0) {
                fprintf(stderr, "kvmesh bench link: bad --burst '%s' (e.g. 32k)\n", optarg);
                return 2;
            }
            break;
        case O_IDLE: o.idle_ms = atof(optarg); break;
        case O_OUT: o.out = optarg; break;
        case O_REDIS: redis = optarg; break;
        case 'h': link_usage(stdout); return 0;
        default: link_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kvmesh bench link: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    char spec[128];
    km_link_params lp;
    km_error err;
    snprintf(spec, sizeof spec, "bw=%s", o.bw_text);
    if (km_link_parse(spec, &lp, &err) != 0 || lp.bw_bps < 1000) {
        fprintf(stderr, "kvmesh bench link: bad --bw '%s' (e.g. 20mbit, at least 1kbit)\n", o.bw_text);
        return 2;
    }
    o.bw_bps = lp.bw_bps;
    char *dup = strdup(sizes), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o.n_sizes == MAX_SIZES || parse_size(t, &o.sizes[o.n_sizes]) != 0) {
            fprintf(stderr, "kvmesh bench link: bad --sizes '%s' (at most %d sizes, each up to 64m)\n", sizes, MAX_SIZES);
            free(dup);
            return 2;
        }
        o.n_sizes++;
    }
    free(dup);
    if (o.n_sizes == 0 || o.reps < 1 || o.reps > 1000 || !(o.idle_ms >= 0 && o.idle_ms <= 60000) || o.burst < 2 * LO_MTU) {
        fprintf(stderr, "kvmesh bench link: bad option value (--reps 1..1000, --idle 0..60000, "
                        "--burst at least %d bytes; see --help)\n", 2 * LO_MTU);
        return 2;
    }
    /* tbf queue limit: never the reason for a drop. A whole value can sit in
     * the queue (TCP's in-flight data on loopback is bounded by the socket
     * buffers, a few MiB), so leave room for twice the largest plus slack. */
    size_t biggest = 0;
    for (int i = 0; i < o.n_sizes; i++)
        if (o.sizes[i] > biggest) biggest = o.sizes[i];
    o.limit = 2 * biggest + ((size_t)8 << 20);

    /* Prerequisites, before anything is created. */
    if (geteuid() != 0) {
        fprintf(stderr, "kvmesh bench link: needs root: it creates a network namespace and a tc qdisc "
                        "(run it as root, e.g. with sudo)\n");
        return 2;
    }
    if (find_exe("ip", o.ip, sizeof o.ip) != 0 || find_exe("tc", o.tc, sizeof o.tc) != 0) {
        fprintf(stderr, "kvmesh bench link: needs 'ip' and 'tc' (Debian package iproute2; scripts/setup.sh installs it)\n");
        return 2;
    }
    if (find_exe(redis, o.redis, sizeof o.redis) != 0) {
        fprintf(stderr, "kvmesh bench link: redis-server not found ('%s'; give --redis-server PATH, or run "
                        "scripts/setup.sh)\n", redis);
        return 2;
    }
    return run_outside(&o);
}
