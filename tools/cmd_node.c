/* cmd_node.c -- `kvmesh node`: serve a model over the OpenAI-compatible API. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api.h"
#include "commands.h"
#include "mesh.h"
#include "metrics.h"
#include "netallow.h"
#include "node.h"
#include "peerauth.h"
#include "util.h"

static void node_usage(FILE *f) {
    fprintf(f,
            "usage: kvmesh node --model FILE [--listen HOST:PORT] [options]\n"
            "\n"
            "Serves the model over an OpenAI-compatible HTTP API (/v1/completions,\n"
            "/v1/chat/completions, /v1/models, /health, /metrics; see docs/api.md), reusing\n"
            "cached prompt states from its own store and the shared Redis tier.\n"
            "SIGINT/SIGTERM: stop taking requests, finish running ones, flush uploads, exit.\n"
            "\n"
            "  -m, --model FILE        GGUF model\n"
            "  -l, --listen HOST:PORT  address of the API (default 127.0.0.1:8080; port 0 = any)\n"
            "      --peers LIST        seed peers to join, host:port,... (their API addresses)\n"
            "      --advertise H:P     the address peers reach this node at (default: --listen's,\n"
            "                          with the port actually bound)\n"
            "      --mesh-secret-file F  shared secret of the mesh (>= 16 bytes, mode 600): peer calls\n"
            "                          are authenticated with it (HMAC, replay window), and so are\n"
            "                          the states peers send (without it they are trusted as is); with\n"
            "                          --api-key-file and no secret the node runs without a mesh\n"
            "      --peer-allow LIST   networks whose addresses learned by gossip may be contacted,\n"
            "                          CIDR,... (default: loopback for a loopback node, else the\n"
            "                          networks of --listen and of --peers; numeric addresses only)\n"
            "      --gossip-ms MS      gossip period (default 1000)\n"
            "      --route MODE        planner (default: fastest estimated path), fetch (always fetch\n"
            "                          a peer's prefix), forward (to the peer with the longest prefix),\n"
            "                          isolated (no sharing) -- the last three for comparisons\n"
            "      --api-key-file F    require 'Authorization: Bearer <key>' on /v1/ (key = the file's\n"
            "                          first line)\n"
            "      --insecure          listen beyond loopback without an API key and a mesh secret\n"
            "      --parallel N        requests computed at once, one context each (default 1)\n"
            "      --queue N           requests waiting for a context before 503 (default 16)\n"
            "      --max-wait S        503 when the estimated wait for a context is longer (default 30;\n"
            "                          0 = no limit); 503s say when to retry (Retry-After)\n"
            "  -t, --threads N         compute threads per context (default 1)\n"
            "      --ctx N             context size in tokens (default 4096)\n"
            "      --kv-type TYPE      f16 (default) or q8_0\n"
            "      --cache-dir DIR     disk tier of the state cache (default: none, RAM only)\n"
            "      --ram-budget MB     RAM tier size (default 256)\n"
            "      --disk-budget MB    disk tier size: least recently used states go first\n"
            "                          (default 4096; 0 = unlimited)\n"
            "      --store URL         shared tier: redis://[user:password@]host:port[/db]\n"
            "      --store-secret-file F  secret of the shared tier (same file rules as the mesh's):\n"
            "                          states uploaded are MAC'd with it, states fetched must be\n"
            "                          (without it the tier is trusted as is; see docs/security.md)\n"
            "      --link SPEC         emulate the link to remote tiers, e.g. bw=20mbit,rtt=5ms\n"
            "      --slowdown K        emulate a K times slower device (time dilation of compute)\n"
            "      --block N           cache every N tokens of prompts without segments (default 256)\n"
            "      --salt STR          separate key space (default none)\n"
            "      --max-body BYTES    largest request body (default 4194304)\n"
            "      --max-connections N open connections at once (default 1024)\n"
            "      --max-connections-per-ip N\n"
            "                          of those, from one client address (default 256; 0 = no limit)\n"
            "      --request-timeout S a request (head and body) must arrive within S seconds (default 10)\n"
            "      --port-file FILE    write the bound port there once listening (for scripts)\n"
            "  -v, --verbose           more logs\n"
            "  -h, --help              this help\n");
}

/* First line of a key file, at least 8 characters. */
static char *read_key_file(const char *path, km_error *err) {
    uint8_t *data;
    size_t len;
    if (km_read_file(path, 4096, &data, &len, err) != 0) return NULL;
    char *s = (char *)data;
    s[strcspn(s, "\r\n")] = '\0';
    if (strlen(s) < 8) {
        free(data);
        km_error_set(err, "%s: the key must be at least 8 characters", path);
        return NULL;
    }
    return s;
}

/* Each connection is a descriptor: raise the soft limit (often 1024) as far
 * as the hard one allows for max_connections and the node's own files. */
static void raise_fd_limit(int max_connections) {
    struct rlimit rl;
    rlim_t want = (rlim_t)max_connections + 256;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
        km_warn("kvmesh node: open files limited to %llu: fewer than --max-connections %d can be served",
                (unsigned long long)rl.rlim_cur, max_connections);
}

int cmd_node(int argc, char **argv) {
    km_node_params np = km_node_default_params();
    km_api_params ap = km_api_default_params();
    const char *key_file = NULL, *port_file = NULL, *secret_file = NULL, *advertise = NULL, *store_secret_file = NULL;
    const char *peer_allow = NULL;
    km_mesh_params mp = km_mesh_default_params();
    int insecure = 0;
    double ram_mb = 256, disk_mb = (double)(np.store.disk_budget >> 20), max_wait_s = np.max_wait_ms / 1000.0;
    enum { O_KEY = 1000, O_INSECURE, O_PAR, O_QUEUE, O_CTX, O_KV, O_CACHE, O_RAM, O_STORE, O_LINK, O_SLOW, O_BLOCK,
           O_SALT, O_MAXBODY, O_PORTFILE, O_PEERS, O_ADVERTISE, O_SECRET, O_GOSSIP, O_ROUTE, O_STORE_SECRET, O_DISK,
           O_PEER_ALLOW, O_MAXWAIT, O_MAXCONN, O_MAXCONN_IP, O_REQTIMEOUT };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},          {"listen", required_argument, 0, 'l'},
        {"api-key-file", required_argument, 0, O_KEY}, {"insecure", no_argument, 0, O_INSECURE},
        {"parallel", required_argument, 0, O_PAR},     {"queue", required_argument, 0, O_QUEUE},
        {"threads", required_argument, 0, 't'},        {"ctx", required_argument, 0, O_CTX},
        {"kv-type", required_argument, 0, O_KV},       {"cache-dir", required_argument, 0, O_CACHE},
        {"ram-budget", required_argument, 0, O_RAM},   {"store", required_argument, 0, O_STORE},
        {"disk-budget", required_argument, 0, O_DISK},
        {"link", required_argument, 0, O_LINK},        {"slowdown", required_argument, 0, O_SLOW},
        {"block", required_argument, 0, O_BLOCK},      {"salt", required_argument, 0, O_SALT},
        {"max-body", required_argument, 0, O_MAXBODY}, {"port-file", required_argument, 0, O_PORTFILE},
        {"peers", required_argument, 0, O_PEERS},      {"advertise", required_argument, 0, O_ADVERTISE},
        {"mesh-secret-file", required_argument, 0, O_SECRET}, {"gossip-ms", required_argument, 0, O_GOSSIP},
        {"route", required_argument, 0, O_ROUTE},      {"store-secret-file", required_argument, 0, O_STORE_SECRET},
        {"peer-allow", required_argument, 0, O_PEER_ALLOW},   {"max-wait", required_argument, 0, O_MAXWAIT},
        {"max-connections", required_argument, 0, O_MAXCONN},
        {"max-connections-per-ip", required_argument, 0, O_MAXCONN_IP},
        {"request-timeout", required_argument, 0, O_REQTIMEOUT},
        {"verbose", no_argument, 0, 'v'},              {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "m:l:t:vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': np.model_path = optarg; break;
        case 'l': ap.listen = optarg; break;
        case O_KEY: key_file = optarg; break;
        case O_INSECURE: insecure = 1; break;
        case O_PAR: np.n_parallel = cli_int(optarg); break;
        case O_QUEUE: np.queue_max = cli_int(optarg); break;
        case O_MAXWAIT: max_wait_s = cli_num(optarg); break;
        case O_MAXCONN: ap.max_connections = cli_int(optarg); break;
        case O_MAXCONN_IP: ap.max_connections_per_ip = cli_int(optarg); break;
        case O_REQTIMEOUT: ap.request_timeout_s = cli_int(optarg); break;
        case 't': np.ctx.n_threads = cli_int(optarg); break;
        case O_CTX: np.ctx.n_ctx = cli_int(optarg); break;
        case O_KV:
            if (km_kv_type_parse(optarg, &np.ctx.kv_type) != 0) {
                fprintf(stderr, "kvmesh node: --kv-type must be f16 or q8_0, not '%s'\n", optarg);
                return 2;
            }
            break;
        case O_CACHE: np.store.disk_dir = optarg; break;
        case O_RAM: ram_mb = cli_num(optarg); break;
        case O_DISK: disk_mb = cli_num(optarg); break;
        case O_STORE: np.store_url = optarg; break;
        case O_LINK: np.link_spec = optarg; break;
        case O_SLOW: np.ctx.slowdown = cli_num(optarg); break;
        case O_BLOCK: np.block_size = cli_int(optarg); break;
        case O_SALT: np.salt = optarg; break;
        case O_MAXBODY: ap.max_body = (size_t)cli_uint(optarg); break;
        case O_PORTFILE: port_file = optarg; break;
        case O_PEERS: mp.seeds = optarg; break;
        case O_ADVERTISE: advertise = optarg; break;
        case O_SECRET: secret_file = optarg; break;
        case O_STORE_SECRET: store_secret_file = optarg; break;
        case O_GOSSIP: mp.gossip_ms = cli_int(optarg); break;
        case O_PEER_ALLOW: peer_allow = optarg; break;
        case O_ROUTE:
            if (km_route_mode_parse(optarg, &np.route) != 0) {
                fprintf(stderr, "kvmesh node: --route must be planner, fetch, forward or isolated, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'v': km_log_level++; break;
        case 'h': node_usage(stdout); return 0;
        default: node_usage(stderr); return 2;
        }
    }
    if (cli_bad_number("kvmesh node")) return 2;
    if (optind < argc) {
        fprintf(stderr, "kvmesh node: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!np.model_path) {
        fprintf(stderr, "kvmesh node: --model is required (see --help)\n");
        return 2;
    }
    if (np.n_parallel < 1 || np.queue_max < 0 || np.ctx.n_threads < 1 || np.ctx.n_ctx < 16 || np.block_size < 0 ||
        !(ram_mb >= 0) || !(disk_mb >= 0) || !(np.ctx.slowdown >= 1.0) || ap.max_body < 1024 || mp.gossip_ms < 10 ||
        !(max_wait_s >= 0 && max_wait_s <= 86400) || ap.max_connections < 1 || ap.max_connections_per_ip < 0 ||
        ap.request_timeout_s < 1) {
        fprintf(stderr, "kvmesh node: a numeric option is out of range (see --help)\n");
        return 2;
    }
    if (store_secret_file && !np.store_url) {
        fprintf(stderr, "kvmesh node: --store-secret-file needs --store\n");
        return 2;
    }
    np.store.ram_budget = (size_t)(ram_mb * 1024 * 1024);
    np.store.disk_budget = (uint64_t)(disk_mb * 1024 * 1024);
    np.max_wait_ms = (int)(max_wait_s * 1000);
    raise_fd_limit(ap.max_connections);
    km_error err = {{0}};
    char host[256];
    int port;
    if (km_parse_hostport(ap.listen, host, sizeof host, &port, &err) != 0) {
        fprintf(stderr, "kvmesh node: --listen: %s\n", err.msg);
        return 2;
    }
    char *key = NULL;
    if (key_file && !(key = read_key_file(key_file, &err))) {
        fprintf(stderr, "kvmesh node: --api-key-file: %s\n", err.msg);
        return 2;
    }
    uint8_t *secret = NULL;
    size_t secret_len = 0;
    if (secret_file && km_peerauth_load_secret(secret_file, &secret, &secret_len, &err) != 0) {
        fprintf(stderr, "kvmesh node: --mesh-secret-file: %s\n", err.msg);
        free(key);
        return 2;
    }
    if ((!key || !secret) && !insecure && !km_host_is_loopback(host)) {
        fprintf(stderr, "kvmesh node: refusing to listen on %s without --api-key-file and --mesh-secret-file "
                        "(or pass --insecure)\n", host);
        free(key);
        km_peerauth_secret_free(secret, secret_len);
        return 2;
    }
    /* An API key without a mesh secret: the peer endpoints would let any
     * process that reaches the port around the key (cached states, gossip,
     * forwarded requests). No mesh then -- and no start if one was asked for. */
    if (key && !secret && (mp.seeds || advertise)) {
        fprintf(stderr, "kvmesh node: --api-key-file with --peers/--advertise needs --mesh-secret-file: without a "
                        "mesh secret the peer endpoints would bypass the API key\n");
        free(key);
        return 2;
    }
    if (key && !secret)
        ap.mesh_off = "an API key without a mesh secret (the peer endpoints would bypass the key); "
                      "start with --mesh-secret-file to join a mesh";
    km_netallow *allow = NULL;
    if (!ap.mesh_off) {
        allow = km_netallow_new();
        if (!allow || (peer_allow ? km_netallow_add_list(allow, peer_allow, &err)
                                  : km_netallow_add_defaults(allow, host, mp.seeds, &err)) != 0) {
            fprintf(stderr, "kvmesh node: --peer-allow: %s\n", allow ? err.msg : "out of memory");
            km_netallow_free(allow);
            free(key);
            km_peerauth_secret_free(secret, secret_len);
            return 2;
        }
        mp.members.allow = allow;
    }
    uint8_t *store_secret = NULL;
    size_t store_secret_len = 0;
    if (store_secret_file &&
        km_peerauth_load_secret(store_secret_file, &store_secret, &store_secret_len, &err) != 0) {
        fprintf(stderr, "kvmesh node: --store-secret-file: %s\n", err.msg);
        km_netallow_free(allow);
        free(key);
        km_peerauth_secret_free(secret, secret_len);
        return 2;
    }
    np.store_secret = store_secret;
    np.store_secret_len = store_secret_len;
    ap.api_key = key;
    mp.secret = secret;
    mp.secret_len = secret_len;
    mp.link = NULL;

    /* Signals are taken by this thread alone (sigwait), so every other thread
     * -- workers, HTTP connections -- is started with them blocked. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    km_engine_init();
    km_metrics *metrics = km_metrics_new();
    km_node *node = km_node_start(&np, metrics, &err);
    km_peerauth_secret_free(store_secret, store_secret_len); /* the Redis tier keeps its derived key */
    if (!node) {
        fprintf(stderr, "kvmesh node: %s\n", err.msg);
        km_metrics_free(metrics);
        km_netallow_free(allow);
        free(key);
        return 1;
    }
    km_api *api = km_api_start(&ap, node, metrics, &err);
    if (!api) {
        fprintf(stderr, "kvmesh node: %s\n", err.msg);
        km_node_free(node);
        km_metrics_free(metrics);
        km_netallow_free(allow);
        free(key);
        return 1;
    }
    char self_addr[300];
    const char *self_host = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host; /* peers take numeric addresses only */
    if (advertise) snprintf(self_addr, sizeof self_addr, "%s", advertise);
    else if (strchr(host, ':')) snprintf(self_addr, sizeof self_addr, "[%s]:%d", host, km_api_port(api));
    else snprintf(self_addr, sizeof self_addr, "%s:%d", self_host, km_api_port(api));
    mp.self_addr = self_addr;
    mp.link = km_node_link(node);
    if (!ap.mesh_off && !km_netallow_is_numeric(self_addr))
        km_warn("kvmesh node: peers only contact numeric addresses learned by gossip, and this node's is %s: "
                "give --advertise IP:PORT", self_addr);
    km_mesh *mesh = NULL;
    if (ap.mesh_off) {
        km_info("kvmesh node: mesh disabled: %s", ap.mesh_off);
    } else {
        mesh = km_mesh_start(&mp, node, metrics, &err);
        if (!mesh) {
            fprintf(stderr, "kvmesh node: mesh: %s\n", err.msg);
            km_peerauth_secret_free(secret, secret_len);
            km_api_stop(api);
            km_node_free(node);
            km_metrics_free(metrics);
            km_netallow_free(allow);
            free(key);
            return 1;
        }
        km_api_set_mesh(api, mesh);
    }
    km_peerauth_secret_free(secret, secret_len); /* the mesh keeps its own copy */
    char desc[256];
    km_model_describe(km_node_model(node), desc, sizeof desc);
    km_info("kvmesh node: serving %s (%s) on http://%s:%d (%d parallel, queue %d, route %s)", km_node_model_name(node),
            desc, host, km_api_port(api), np.n_parallel, np.queue_max, km_route_mode_name(np.route));
    if (port_file) {
        char buf[16];
        int l = snprintf(buf, sizeof buf, "%d\n", km_api_port(api));
        if (km_write_file_atomic(port_file, buf, (size_t)l, &err) != 0) km_warn("kvmesh node: --port-file: %s", err.msg);
    }

    int sig = 0;
    sigwait(&sigs, &sig);
    km_info("kvmesh node: %s: finishing running requests, then exiting", sig == SIGINT ? "SIGINT" : "SIGTERM");
    km_api_drain(api);
    km_node_shutdown(node); /* running jobs finish; queued ones are answered 503 */
    km_api_stop(api);       /* connections finish writing their answers */
    km_mesh_stop(mesh);     /* no peer call is being served any more */
    km_netallow_free(allow);
    km_node_free(node);     /* uploads flushed, disk cache kept */
    km_metrics_free(metrics);
    free(key);
    km_info("kvmesh node: stopped");
    return 0;
}
