/* testutil.c -- see testutil.h. */
#include "testutil.h"

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

char *tu_tmpdir(void) {
    char tmpl[] = "/tmp/kvmesh-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void tu_rmtree(const char *dir) {
    if (!dir || strncmp(dir, "/tmp/kvmesh-test-", 17) != 0) return;
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

const char *tu_kvmesh_bin(void) {
    const char *b = getenv("KVMESH_BIN");
    return b ? b : "kvmesh";
}
