/* testutil.h -- helpers shared by the test programs. */
#ifndef KVMESH_TESTUTIL_H
#define KVMESH_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of a generated test model (e.g. "tiny-f16.gguf") in a static buffer. */
const char *tu_model(const char *file);
/* Path under ../shared (e.g. "models/stories260K.gguf"), or NULL if absent. */
const char *tu_shared(const char *rel);
/* $TMPDIR, else the system's temporary directory. */
const char *tu_tmp_base(void);
/* A fresh empty temporary directory (removed by tu_rmtree). */
char *tu_tmpdir(void);
void tu_rmtree(const char *dir);
/* The kvmesh binary under test. */
const char *tu_kvmesh_bin(void);
/* Send this process's stderr (the km_log output) to a temporary file until
 * tu_stderr_end, which restores it and returns what was written (malloc'd,
 * NUL-terminated). Not nested. */
void tu_stderr_begin(void);
char *tu_stderr_end(void);


/* A free TCP port on 127.0.0.1 (bound and released; good enough for tests). */
int tu_free_port(void);
/* Start redis-server on 127.0.0.1:port with no persistence (extra: more
 * arguments, e.g. "--requirepass x", or NULL). Waits until it accepts
 * connections. Returns its pid, or -1 (redis-server missing or not starting). */
int tu_redis_start(int port, const char *extra);
/* SIGTERM and reap (SIGKILL if kill_hard). */
void tu_redis_stop(int pid, int kill_hard);

/* ---- kvmesh node processes and HTTP (tests of the node and the mesh) ---- */

typedef struct tu_node {
    int pid;
    int port;
    char *dir;     /* a temp dir of its own (port file) */
    char url[64];  /* http://127.0.0.1:<port> */
} tu_node;

/* Start `kvmesh node --model <model> --listen 127.0.0.1:0` plus args
 * (NULL-terminated list, may be NULL); waits until it listens. Fails the test
 * if it does not start. Killed when the test process dies. */
tu_node tu_node_start(const char *model, const char *const *args);
/* SIGTERM and wait; returns the wait status (0 = exited 0). */
int tu_node_stop(tu_node *n);

typedef struct tu_resp {
    long status;
    char *body; /* NUL-terminated, malloc'd */
    size_t len;
    char retry_after[16];
    char retry_after_ms[16];
} tu_resp;

/* One HTTP request to base + path (body NULL: none); extra headers as
 * "Name: value" (NULL-terminated, may be NULL). Fails the test on transport errors. */
tu_resp tu_http(const char *base, const char *method, const char *path, const char *body, const char *const *headers);

#endif
