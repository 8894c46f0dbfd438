/* redisd.c -- see redisd.h. */
#include "redisd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The server to kill if the bench is interrupted (one per process). */
static volatile pid_t running_pid;

static void on_signal(int sig) {
    pid_t p = running_pid;
    if (p > 0) kill(p, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int free_loopback_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int answers_ping(int port) {
    struct timeval tv = {0, 200000};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    int ok = 0;
    if (rc && !rc->err) {
        redisReply *r = redisCommand(rc, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
    }
    if (rc) redisFree(rc);
    return ok;
}

int bench_redisd_start(bench_redisd *d, const char *exe, const char *extra, km_error *err) {
    memset(d, 0, sizeof *d);
    if (!exe) exe = "redis-server";
    d->port = free_loopback_port();
    if (d->port <= 0) return km_error_set(err, "no free loopback port: %s", strerror(errno));
    char port[16];
    snprintf(port, sizeof port, "%d", d->port);
    char *argv[48] = {(char *)exe, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
                      "--daemonize", "no", "--loglevel", "warning", "--logfile", ""};
    int argc = 15;
    char *dup = extra ? strdup(extra) : NULL, *save = NULL;
    for (char *t = dup ? strtok_r(dup, " ", &save) : NULL; t && argc < 46; t = strtok_r(NULL, " ", &save)) argv[argc++] = t;
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid < 0) {
        free(dup);
        return km_error_set(err, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the bench, even a killed one */
        /* the server's banner and warnings are not the bench's output */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execvp(exe, argv);
        fprintf(stderr, "kvmesh bench: cannot run %s: %s (run scripts/setup.sh)\n", exe, strerror(errno));
        _exit(127);
    }
    free(dup);
    d->pid = pid;
    running_pid = pid;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    for (int i = 0; i < 100; i++) {
        if (answers_ping(d->port)) {
            snprintf(d->url, sizeof d->url, "redis://127.0.0.1:%d", d->port);
            return 0;
        }
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            d->pid = 0;
            running_pid = 0;
            return km_error_set(err, "%s exited at start (status %d); is it installed? (scripts/setup.sh)", exe, status);
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    bench_redisd_stop(d);
    return km_error_set(err, "%s did not answer on port %d within 5 s", exe, d->port);
}

void bench_redisd_stop(bench_redisd *d) {
    if (d->pid <= 0) return;
    kill(d->pid, SIGTERM);
    for (int i = 0; i < 40; i++) {
        if (waitpid(d->pid, NULL, WNOHANG) == d->pid) goto done;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
done:
    d->pid = 0;
    running_pid = 0;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}
