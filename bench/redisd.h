/* redisd.h -- a private redis-server for a benchmark run.
 *
 * Benches must not depend on a server set up by hand, nor touch one that
 * holds someone's data: each run starts its own redis-server on a free
 * loopback port, without persistence, and stops it at the end -- also when
 * the run is interrupted (SIGINT/SIGTERM kill the server, then the bench). */
#ifndef KVMESH_BENCH_REDISD_H
#define KVMESH_BENCH_REDISD_H

#include <stddef.h>
#include <sys/types.h>

#include "util.h"

typedef struct bench_redisd {
    pid_t pid;
    int port;
    char url[64]; /* redis://127.0.0.1:<port> */
} bench_redisd;

/* Start `exe` (NULL: redis-server from PATH) with extra arguments (may be
 * NULL, split at spaces) and wait until it answers PING (at most 5 s). */
int bench_redisd_start(bench_redisd *d, const char *exe, const char *extra, km_error *err);
/* Stop it (SIGTERM, then SIGKILL after 2 s) and reap it. Idempotent. */
void bench_redisd_stop(bench_redisd *d);

#endif
