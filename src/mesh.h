/* mesh.h -- a node's peers: gossip, their catalogs, and fetching their states.
 *
 * No central server: every node gossips with a random peer once per period
 * (push-pull of the membership table, members.h), learns each peer's load,
 * prefill rate and catalog version, fetches a peer's Bloom catalog when its
 * version changed, and offers each live peer that runs the same model to the
 * prompt cache as a remote holder (km_remote): a boundary whose key is in a
 * peer's catalog can be fetched from it instead of recomputed, when the
 * planner estimates that faster (per-peer link fit).
 *
 * Peer endpoints (served by api.c through km_mesh_handle):
 *
 *   POST /peer/v1/gossip          body: our gossip message; answer: theirs
 *   GET  /peer/v1/catalog         the node's catalog (catalog.h wire format)
 *   GET  /peer/v1/state/<key hex> a state blob, 404 if not held
 *
 * With a mesh secret, every peer request carries a MAC (peerauth.h) bound to
 * the node it is for, that the server checks before anything else, and every
 * answer is MAC'd back bound to the request; without one, peers are trusted
 * (the node then only listens on loopback, and has no API key: a node with
 * one runs without a mesh unless it has a mesh secret too). Addresses learned
 * from gossip are contacted only inside members.allow (netallow.h). Fetched blobs are validated like any other (pcache). Sizes and
 * times are bounded: catalog <= max_catalog, blob <= max_blob, each call
 * within timeout_ms (a state fetch also gets time for its bytes). */
#ifndef KVMESH_MESH_H
#define KVMESH_MESH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "link.h"
#include "members.h"
#include "node.h"
#include "peerauth.h"

typedef struct km_mesh km_mesh;

typedef struct km_mesh_params {
    const char *self_addr;   /* host:port where peers reach this node's API */
    const char *seeds;       /* comma-separated host:port list (NULL: none; others may join us) */
    const uint8_t *secret;   /* shared mesh secret (NULL: no authentication) */
    size_t secret_len;
    int gossip_ms;           /* gossip period (default 1000) */
    int timeout_ms;          /* per peer call (default 2000) */
    size_t max_blob;         /* largest state accepted from a peer (default 1 GiB) */
    size_t max_catalog;      /* largest catalog accepted (default 16 MiB) */
    km_link *link;           /* emulated link for every peer call (NULL: none; caller owns) */
    km_members_params members;
} km_mesh_params;

km_mesh_params km_mesh_default_params(void);

/* Join (seeds), start gossiping, and register as the node's peer source. */
km_mesh *km_mesh_start(const km_mesh_params *p, km_node *node, km_metrics *metrics, km_error *err);
/* Stop gossiping, detach from the node, free. */
void km_mesh_stop(km_mesh *m);

/* Serve a peer request (path starts with /peer/). auth: the request's
 * KM_PEERAUTH_HEADER (may be NULL). Fills *status, *body (malloc'd; may be
 * NULL), *type (static), and resp_auth (the answer's MAC header; "" if none).
 * Always answers (errors as short text bodies). */
void km_mesh_handle(km_mesh *m, const char *method, const char *path, const char *auth, const uint8_t *req,
                    size_t req_len, int *status, uint8_t **body, size_t *len, const char **type, char *resp_auth,
                    size_t resp_auth_cap);

/* What this node knows of a peer (for /health and tests). */
typedef struct km_peer_info {
    char id[KM_MEMBER_ID_MAX + 1];
    char addr[KM_MEMBER_ADDR_MAX + 1];
    km_member_state state;
    bool same_model;
    uint32_t catalog_keys; /* keys in the catalog of it we hold (0: none fetched) */
    bool has_catalog;
    int backlog_ms;        /* as gossiped */
    double link_rtt_ms, link_mbit; /* its own link estimate, as gossiped (0: none yet) */
} km_peer_info;

/* The peers of the membership table (ourselves excluded); returns the count
 * (copies at most max). */
int km_mesh_peers(km_mesh *m, km_peer_info *out, int max);

/* ---- planning: run here, or forward to the peer holding the prefix ---- */

typedef struct km_route {
    bool forward;            /* true: send the request to addr */
    char id[KM_MEMBER_ID_MAX + 1];
    char addr[KM_MEMBER_ADDR_MAX + 1];
    const char *path;        /* "reuse", "fetch", "recompute" or "forward" */
    double est_ms;           /* estimated time to the first token on the chosen path */
    double est_local_ms;     /* ... on the best local path (reuse / fetch / recompute) */
    int peer_prefix;         /* tokens the chosen peer may hold (forward / fetch) */
    double peer_work_ms;     /* forward: the estimated compute it brings the peer */
} km_route;

/* Estimate every path for a planned prompt -- reuse the local prefix, fetch
 * a peer's longer one, forward to a peer (the one holding a longer prefix,
 * or one less busy than this node), recompute -- from the measured rates
 * (this node's prefill rate and backlog, each peer's gossiped rate and
 * backlog, per-peer link fits) and pick the fastest. A peer whose queue is
 * full or whose backlog (with what we forwarded it) makes it slower loses
 * the request (no hotspot); forwarding must win by a margin. */
void km_mesh_route(km_mesh *m, const km_prompt_plan *plan, km_route *out);
/* A forward to id bringing it work_ms of compute started / ended (counts
 * against its backlog until gossip shows it). */
void km_mesh_forward_begin(km_mesh *m, const char *id, double work_ms);
void km_mesh_forward_end(km_mesh *m, const char *id, bool ok, double ms);

/* Sign a request to the peer with id target (header value into out,
 * KM_PEERAUTH_HEADER_MAX); "" without a mesh secret. */
void km_mesh_sign(km_mesh *m, const char *target, const char *method, const char *path, const uint8_t *body,
                  size_t len, char *out, size_t cap);
/* The mesh's authenticator (to check a forwarded answer, proxy.h); NULL
 * without a mesh secret. */
km_peerauth *km_mesh_auth(km_mesh *m);
/* Check a request claiming to come from a peer (forwarded requests) and
 * signed for this node: 0 if authentic (always 0 without a mesh secret). */
int km_mesh_verify(km_mesh *m, const char *method, const char *path, const uint8_t *body, size_t len,
                   const char *header, km_error *err);

/* This node's id in the mesh. */
const char *km_mesh_id(const km_mesh *m);

/* One gossip round now (tests; the thread does this every gossip_ms). */
void km_mesh_gossip_now(km_mesh *m);

#endif
