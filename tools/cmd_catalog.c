/* cmd_catalog.c -- `kvmesh catalog`: the shared tier's Bloom-filter catalog. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "engine.h"
#include "redis_tier.h"
#include "util.h"

static void catalog_usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh catalog (rebuild | show) --store URL --model FILE [--capacity N] [--error P]\n"
            "\n"
            "  rebuild   rebuild the master catalog of FILE's states from the keys present in the\n"
            "            store (after evictions or TTL expiry made it stale); clients pick it up\n"
            "            at their next full refresh\n"
            "  show      load the catalog as a client does and print its version, size and load\n"
            "\n"
            "  --store URL     redis://[user:password@]host:port[/db]\n"
            "  --model FILE    the model whose states (namespace) to use\n"
            "  --capacity N    keys the catalog is sized for (default 100000)\n"
            "  --error P       false-positive rate at capacity (default 0.01)\n");
}

int cmd_catalog(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        catalog_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "rebuild") && strcmp(verb, "show")) {
        fprintf(stderr, "kvmesh catalog: unknown action '%s' (rebuild, show)\n", verb);
        return 2;
    }
    const char *url = NULL, *model = NULL;
    km_redis_params rp = km_redis_default_params();
    enum { O_STORE = 1000, O_MODEL, O_CAP, O_ERR };
    static const struct option opts[] = {{"store", required_argument, 0, O_STORE}, {"model", required_argument, 0, O_MODEL},
                                         {"capacity", required_argument, 0, O_CAP}, {"error", required_argument, 0, O_ERR},
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc - 1, argv + 1, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_STORE: url = optarg; break;
        case O_MODEL: model = optarg; break;
        case O_CAP: rp.catalog.capacity = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_ERR: rp.catalog.error = atof(optarg); break;
        case 'h': catalog_usage(stdout); return 0;
        default: catalog_usage(stderr); return 2;
        }
    }
    if (!url || !model) {
        fprintf(stderr, "kvmesh catalog: need --store and --model (see --help)\n");
        return 2;
    }
    km_error err;
    uint8_t fp[KM_FINGERPRINT_LEN];
    if (km_file_fingerprint(model, fp, &err) != 0) {
        fprintf(stderr, "kvmesh catalog: %s\n", err.msg);
        return 1;
    }
    rp.url = url;
    rp.sync_period_ms = 0;
    km_redis *r = km_redis_open(&rp, fp, &err);
    if (!r) {
        fprintf(stderr, "kvmesh catalog: %s\n", err.msg);
        return 1;
    }
    int rc = 0;
    if (!strcmp(verb, "rebuild")) {
        uint32_t n;
        double t0 = km_now_ms();
        if (km_redis_catalog_rebuild(r, &n, &err) != 0) {
            fprintf(stderr, "kvmesh catalog rebuild: %s\n", err.msg);
            rc = 1;
        } else {
            km_redis_stats st = km_redis_get_stats(r);
            printf("rebuilt the catalog from %u state(s) in %.1f ms: version %llu, %zu bytes\n", n, km_now_ms() - t0,
                   (unsigned long long)st.catalog_version, st.catalog_bytes);
        }
    } else {
        if (km_redis_catalog_sync(r, true, &err) != 0) {
            fprintf(stderr, "kvmesh catalog show: %s\n", err.msg);
            rc = 1;
        } else {
            km_redis_stats st = km_redis_get_stats(r);
            printf("version %llu (upload list position), %zu filter bytes, master loaded: %s, %llu keys from the delta, "
                   "%llu bytes transferred\n",
                   (unsigned long long)st.catalog_version, st.catalog_bytes, st.catalog_full_loads ? "yes" : "no (none yet)",
                   (unsigned long long)st.catalog_delta_keys, (unsigned long long)st.catalog_bytes_down);
        }
    }
    km_redis_close(r, 0);
    return rc;
}
