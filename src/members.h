/* members.h -- the mesh's membership table and its gossip messages.
 *
 * Every node keeps one record per member of the mesh (itself included) and
 * swaps its table with a random peer once per round: the node's HTTP layer
 * POSTs our message to the peer and merges the message that comes back in the
 * response (push-pull). This module is the pure logic behind that: records,
 * merge rules, failure detection and the message codec. No sockets, no clock:
 * time (ms on the monotonic clock) and the random state are passed in, so a
 * test drives a whole mesh with a fake clock.
 *
 * A record (gossiped): id (chosen by the node), addr (`host:port` of its API),
 * incarnation (set by the node at start, e.g. wall-clock ms), heartbeat (bumped
 * by the owner every round), catalog version (of the Bloom catalog of its
 * states), load (queued, running, parallel, queue_max), measured prefill rate,
 * optionally the model fingerprint. Local only: state ALIVE/SUSPECT/DEAD, when
 * the record last advanced, and whether the member runs our model.
 *
 * Rules (heartbeat anti-entropy, as in van Renesse et al.'s gossip-style
 * failure detection; only the owner ever advances its own record):
 *
 *   version   a record's version is (incarnation, heartbeat), compared
 *             lexicographically: a restarted node (new, larger incarnation)
 *             wins even with a heartbeat back at 0.
 *   merge     per received record: unknown id -> added (ALIVE); higher version
 *             than ours -> every field replaced, last_heard = now, ALIVE (this
 *             revives a SUSPECT or DEAD member); equal or lower -> ignored (so
 *             stale copies never resurrect anything). Records about our own id
 *             are never adopted; one with a higher version than ours means
 *             another process uses our id (a stale twin or a clone): it is
 *             logged and counted. With an allow-list (params.allow,
 *             netallow.h), a record whose address is outside it is ignored
 *             and counted (never merged, so never contacted). A message is validated completely before any
 *             of it is applied: a bad message changes nothing.
 *   failure   by age = now - last_heard, at each tick: age >= suspect_ms ->
 *             SUSPECT; age >= dead_ms -> DEAD (the planner must not use it);
 *             age >= dead_ms + forget_ms -> removed from the table. The state
 *             depends on the age only, not on how often tick runs.
 *   dead      DEAD members are not gossiped. A receiver cannot tell an old
 *             record from a live one for a member it does not know, so
 *             gossiping the dead would bring them back to life at newcomers
 *             and at nodes that already forgot them. Death needs no spreading:
 *             every node stops seeing the heartbeat advance and reaches DEAD
 *             on its own timer. The DEAD record is kept forget_ms longer as a
 *             tombstone: copies of the old version still in flight are ignored.
 *   full      the table holds at most max_members records, ours included. A
 *             new member beyond that replaces the DEAD member heard of least
 *             recently, or is ignored and counted when none is DEAD.
 *   catalogs  a catalog is identified by (incarnation, catalog version): a
 *             restarted node starts its versions again. Merge reports every
 *             member whose catalog must be fetched again (new member, new
 *             incarnation or new catalog version).
 *   self      km_members_update_self() changes our load, rate and catalog
 *             version; others adopt them with our next km_members_beat().
 *   targets   one per call, uniformly at random among the non-DEAD peers and
 *             the seeds no known member has the address of (a seed written
 *             differently from the member's own address stays a candidate).
 *             When no peer is alive, every seed is a candidate again, so a node
 *             cut off from the mesh keeps knocking until it rejoins. Never our
 *             own address: a member there is usually ourselves before a
 *             restart under a new id, remembered by the others until it dies.
 *
 * Message (JSON, UTF-8, at most max_message_bytes, nesting at most 16 deep):
 *   {"v":1,"from":"<id>","members":[<record>, ...]}
 *   record: {"id":"a1b2","addr":"10.0.0.5:8080","incarnation":1718000000000,
 *            "heartbeat":42,"catalog_version":7,"queued":0,"running":1,
 *            "parallel":2,"queue_max":16,"backlog_ms":5200,"prefill_tok_s":31.5,
 *            "link_rtt_ms":4.5,"link_mbit":18.2,"pending":["<32 lowercase hex>", ...],
 *            "model":"<32 lowercase hex>"}        ("model" is optional)
 * The sender's record comes first; then every known member that is not DEAD.
 * Integers are JSON integers in 0..2^63-1 (what jansson and most JSON readers
 * hold exactly); load fields in 0..KM_MEMBER_LOAD_MAX, backlog_ms in
 * 0..KM_MEMBER_BACKLOG_MAX; link_rtt_ms and link_mbit finite numbers in
 * 0..KM_MEMBER_LINK_MAX; pending at most KM_MEMBER_PENDING_MAX keys; prefill_tok_s a finite
 * number in 0..1e9. Unknown fields are ignored (forward compatibility); a
 * missing or mistyped field, a value out of range, a duplicate id or key, a
 * "from" without a record, v != 1, or more than max_members records reject the
 * whole message with an error that names the field ("gossip: members[3].addr:
 * port 0 out of range 1-65535"). Decoding what we encode gives the same
 * records, and encoding those gives the same bytes.
 *
 * Thread safety: every km_members_* call takes the table's one mutex (the
 * gossip thread merges while request threads take snapshots). */
#ifndef KVMESH_MEMBERS_H
#define KVMESH_MEMBERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prefix.h"
#include "util.h"

#define KM_MEMBER_ID_MAX 64          /* id: 1-64 of [A-Za-z0-9_.-] */
#define KM_MEMBER_ADDR_MAX 255       /* addr: host:port, at most 255 bytes */
#define KM_MEMBER_LOAD_MAX (1 << 20) /* bound of queued, running, parallel, queue_max */
#define KM_MEMBER_RATE_MAX 1e9       /* bound of prefill_tok_s */
#define KM_MEMBER_BACKLOG_MAX 86400000 /* bound of backlog_ms (a day) */
#define KM_MEMBER_LINK_MAX 1e6         /* bound of link_rtt_ms and link_mbit */
#define KM_MEMBER_PENDING_MAX 8        /* keys in pending */
#define KM_MEMBER_U64_MAX ((uint64_t)INT64_MAX) /* bound of incarnation, heartbeat, catalog version */
#define KM_MEMBERS_MAX_SEEDS 64

typedef enum km_member_state {
    KM_MEMBER_ALIVE = 0,
    KM_MEMBER_SUSPECT, /* not heard of for suspect_ms: still used, but may be gone */
    KM_MEMBER_DEAD,    /* not heard of for dead_ms: not used, not gossiped */
} km_member_state;

/* A node's load as gossiped (the fields of km_node_load). */
typedef struct km_member_load {
    int queued;    /* requests waiting for a context */
    int running;   /* requests being computed */
    int parallel;  /* contexts: requests computed at once */
    int queue_max; /* queue bound: queued == queue_max means new requests are refused */
    int backlog_ms; /* estimated compute left in its running and queued jobs (all contexts) */
} km_member_load;

typedef struct km_member {
    /* gossiped */
    char id[KM_MEMBER_ID_MAX + 1];
    char addr[KM_MEMBER_ADDR_MAX + 1];
    uint64_t incarnation;
    uint64_t heartbeat;
    uint64_t catalog_version;
    km_member_load load;
    double prefill_tok_s;    /* measured; 0 = not yet */
    /* its link to its peers as it measured it (state fetches): round trip
     * and bandwidth; 0 = not yet. What a node that never fetched from it
     * can estimate a fetch with. */
    double link_rtt_ms, link_mbit;
    /* prefixes it is computing now (boundary keys of its running and queued
     * requests): a request for one, forwarded there, reuses it once done */
    km_key pending[KM_MEMBER_PENDING_MAX];
    int n_pending;
    bool has_model;
    uint8_t model[KM_FINGERPRINT_LEN];
    /* local */
    km_member_state state;
    double last_heard_ms;    /* when (incarnation, heartbeat) last increased here */
    bool same_model;         /* both announce a fingerprint and they are equal: states can be shared */
    bool self;               /* this node's own record */
} km_member;

typedef struct km_members_params {
    double suspect_ms;        /* default 3000 */
    double dead_ms;           /* default 10000 (> suspect_ms) */
    double forget_ms;         /* DEAD this long -> removed (default 60000) */
    int max_members;          /* records in the table and in a message, ours included (default 256) */
    size_t max_message_bytes; /* default 1 MiB */
    const struct km_netallow *allow; /* addresses a gossiped record may have (NULL: any); must outlive the table */
} km_members_params;

km_members_params km_members_default_params(void);

typedef struct km_members km_members;

/* A table holding only `self` (its id, addr, incarnation, heartbeat, load,
 * rate, model; local fields ignored). p NULL = defaults. */
km_members *km_members_new(const km_member *self, const km_members_params *p, km_error *err);
void km_members_free(km_members *m);

/* ---- seeds and our own record ---- */

/* Add a seed address (host:port, deduplicated; our own address is ignored). */
int km_members_add_seed(km_members *m, const char *addr, km_error *err);
/* Add a comma-separated list of seeds (`--peers a:1,b:2`; spaces around entries allowed). */
int km_members_add_seed_list(km_members *m, const char *list, km_error *err);

/* Our load, rate and catalog version (clamped into the gossiped ranges). */
void km_members_update_self(km_members *m, uint64_t catalog_version, const km_member_load *load,
                            double prefill_tok_s);
/* Our link estimate (clamped into the gossiped range; not finite -> 0). */
void km_members_update_link(km_members *m, double rtt_ms, double mbit);
/* The prefixes we are computing now (at most KM_MEMBER_PENDING_MAX kept). */
void km_members_update_pending(km_members *m, const km_key *keys, int n);
/* Advance our heartbeat; once per gossip round, before encoding. */
void km_members_beat(km_members *m);

/* ---- gossip ---- */

/* Our message: our record, then every member that is not DEAD (*json malloc'd, NUL-terminated). */
int km_members_encode(km_members *m, char **json, size_t *len, km_error *err);

/* What a merge changed about one member. */
enum {
    KM_CHANGE_NEW = 1,       /* was not in the table */
    KM_CHANGE_CATALOG = 2,   /* its catalog must be fetched (new member, incarnation or version) */
    KM_CHANGE_RESTARTED = 4, /* new incarnation */
    KM_CHANGE_REVIVED = 8,   /* was SUSPECT or DEAD, now ALIVE */
    KM_CHANGE_ADDR = 16,     /* its address changed */
};
typedef struct km_member_change {
    char id[KM_MEMBER_ID_MAX + 1];
    char addr[KM_MEMBER_ADDR_MAX + 1];
    uint64_t incarnation;
    uint64_t catalog_version;
    int what; /* KM_CHANGE_* bits */
} km_member_change;

/* Validate a peer's message, then merge it (rules above). The first
 * max_changes changes go to `changes` (may be NULL); sized max_members, none
 * is lost. Returns how many members changed, or -1 (table untouched). */
int km_members_merge(km_members *m, const char *json, size_t len, double now_ms,
                     km_member_change *changes, int max_changes, km_error *err);

/* Failure detection at now_ms (rules above). Returns how many members changed state or were removed. */
int km_members_tick(km_members *m, double now_ms);

/* Where to gossip next: a peer's address (id filled) or a seed's (id ""). */
typedef struct km_gossip_target {
    char addr[KM_MEMBER_ADDR_MAX + 1];
    char id[KM_MEMBER_ID_MAX + 1];
} km_gossip_target;

/* Pick a target (rules above) with the caller's random state (any seed value).
 * Returns 1, or 0 when there is nobody to gossip with. Never our address, never DEAD. */
int km_members_pick_target(km_members *m, uint64_t *rng_state, km_gossip_target *out);

/* ---- reading the table ---- */

/* Copy the records, ours first, into out[0..max). Returns the number of
 * records (copies min(that, max)). */
int km_members_snapshot(km_members *m, km_member *out, int max);
/* The record of one id: 1 (copied to *out, may be NULL) or 0 if unknown. */
int km_members_get(km_members *m, const char *id, km_member *out);
/* Peers (ourselves excluded) in a state. */
int km_members_count(km_members *m, km_member_state state);

typedef struct km_members_stats {
    int alive, suspect, dead;  /* peers, ourselves excluded */
    int seeds, seeds_pending;  /* seeds; those no known member has the address of */
    uint64_t merged;           /* messages merged */
    uint64_t rejected;         /* messages rejected as invalid */
    uint64_t ignored_full;     /* new members ignored because the table was full */
    uint64_t twin_records;     /* records claiming our id with a higher version */
    uint64_t ignored_addr;     /* records ignored for an address outside params.allow */
} km_members_stats;

km_members_stats km_members_get_stats(km_members *m);

/* ---- the codec and validators (also for the CLI, the node and the fuzzer) ---- */

typedef struct km_gossip_msg {
    char from[KM_MEMBER_ID_MAX + 1];
    int n;
    km_member *members; /* malloc'd; gossiped fields only (local ones zero) */
} km_gossip_msg;

/* Parse and validate a message (untrusted bytes) under p's limits (NULL = defaults). */
int km_gossip_decode(const char *json, size_t len, const km_members_params *p, km_gossip_msg *out,
                     km_error *err);
/* Encode records as a message from `from` (*json malloc'd, NUL-terminated). */
int km_gossip_encode(const char *from, const km_member *members, int n, char **json, size_t *len,
                     km_error *err);
void km_gossip_msg_free(km_gossip_msg *msg);

/* Validators; errors name the problem ("port 0 out of range 1-65535"). */
int km_member_check_id(const char *id, km_error *err);
int km_member_check_addr(const char *addr, km_error *err);

const char *km_member_state_name(km_member_state s); /* "alive", "suspect", "dead" */

#endif
