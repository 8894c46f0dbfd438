/* fuzz_gossip.c -- libFuzzer target for the gossip message parser
 * (km_gossip_decode) and km_members_merge. Built and run by tests/fuzz/run.sh.
 *
 * Properties checked on every input:
 *   - a rejection says why ("gossip: ..."), and a merge that rejects leaves
 *     the table exactly as it was;
 *   - an accepted message obeys every rule of members.h (record count, valid
 *     and unique ids, "from" among them, valid addresses, ranges), re-encodes,
 *     decodes again to the same records bit for bit and encodes to the same
 *     bytes;
 *   - merging never touches our own record, never grows the table past
 *     max_members, and pick_target never returns ourselves or a DEAD member.
 *
 * Random bytes are rarely JSON with the right fields, so a third of the
 * inputs are used differently: they describe records, a valid message is
 * encoded from them, and the rest of the input edits that text (overwrite,
 * insert, cut) before it is parsed. That reaches the checks behind the
 * syntax. Small limits (8 members, 8 KiB) make the size checks reachable. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "members.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Accepted / rejected counts, printed at exit when KVMESH_FUZZ_STATS is set
 * (to see that the fuzzer gets past the parser, not only into it). */
static unsigned long n_accepted, n_rejected;
static void print_stats(void) { fprintf(stderr, "gossip: %lu accepted, %lu rejected\n", n_accepted, n_rejected); }

static km_members_params fuzz_params(void) {
    km_members_params p = km_members_default_params();
    p.max_members = 8;
    p.max_message_bytes = 8 * 1024;
    return p;
}

static void check_record(const km_member *r) {
    if (km_member_check_id(r->id, NULL) != 0) abort();
    if (km_member_check_addr(r->addr, NULL) != 0) abort();
    if (r->incarnation > KM_MEMBER_U64_MAX || r->heartbeat > KM_MEMBER_U64_MAX || r->catalog_version > KM_MEMBER_U64_MAX)
        abort();
    const int l[4] = {r->load.queued, r->load.running, r->load.parallel, r->load.queue_max};
    for (int k = 0; k < 4; k++)
        if (l[k] < 0 || l[k] > KM_MEMBER_LOAD_MAX) abort();
    if (r->load.backlog_ms < 0 || r->load.backlog_ms > KM_MEMBER_BACKLOG_MAX) abort();
    if (!isfinite(r->prefill_tok_s) || r->prefill_tok_s < 0 || r->prefill_tok_s > KM_MEMBER_RATE_MAX) abort();
    if (!isfinite(r->link_rtt_ms) || r->link_rtt_ms < 0 || r->link_rtt_ms > KM_MEMBER_LINK_MAX) abort();
    if (!isfinite(r->link_mbit) || r->link_mbit < 0 || r->link_mbit > KM_MEMBER_LINK_MAX) abort();
    if (r->n_pending < 0 || r->n_pending > KM_MEMBER_PENDING_MAX) abort();
    if (r->self || r->state != KM_MEMBER_ALIVE || r->last_heard_ms != 0 || r->same_model) abort();
}

static bool same_gossiped(const km_member *a, const km_member *b) {
    return strcmp(a->id, b->id) == 0 && strcmp(a->addr, b->addr) == 0 && a->incarnation == b->incarnation &&
           a->heartbeat == b->heartbeat && a->catalog_version == b->catalog_version &&
           memcmp(&a->load, &b->load, sizeof a->load) == 0 &&
           memcmp(&a->prefill_tok_s, &b->prefill_tok_s, sizeof(double)) == 0 &&
           memcmp(&a->link_rtt_ms, &b->link_rtt_ms, sizeof(double)) == 0 &&
           memcmp(&a->link_mbit, &b->link_mbit, sizeof(double)) == 0 && a->n_pending == b->n_pending &&
           memcmp(a->pending, b->pending, (size_t)a->n_pending * sizeof a->pending[0]) == 0 &&
           a->has_model == b->has_model &&
           (!a->has_model || memcmp(a->model, b->model, KM_FINGERPRINT_LEN) == 0);
}

/* A table "self" at "self.local:7000" that already knows a few members (one DEAD). */
static km_members *fixture(const km_members_params *p) {
    km_member self;
    memset(&self, 0, sizeof self);
    strcpy(self.id, "self");
    strcpy(self.addr, "self.local:7000");
    self.incarnation = 1000;
    self.heartbeat = 5;
    self.load.parallel = 1;
    km_members *m = km_members_new(&self, p, NULL);
    if (!m) abort();
    km_members_add_seed_list(m, "seed:1,self.local:7000,10.0.0.1:80", NULL);
    static const char known[] =
        "{\"v\":1,\"from\":\"a\",\"members\":["
        "{\"id\":\"a\",\"addr\":\"a:1\",\"incarnation\":5,\"heartbeat\":5,\"catalog_version\":1,\"queued\":0,"
        "\"running\":0,\"parallel\":1,\"queue_max\":4,\"backlog_ms\":0,\"prefill_tok_s\":1.5,\"link_rtt_ms\":0,\"link_mbit\":0,\"pending\":[]},"
        "{\"id\":\"b\",\"addr\":\"[::1]:2\",\"incarnation\":5,\"heartbeat\":5,\"catalog_version\":1,\"queued\":0,"
        "\"running\":0,\"parallel\":1,\"queue_max\":4,\"backlog_ms\":0,\"prefill_tok_s\":2,\"link_rtt_ms\":2,\"link_mbit\":20,\"pending\":[\"00112233445566778899aabbccddeeff\"]}]}";
    if (km_members_merge(m, known, sizeof known - 1, 0, NULL, 0, NULL) != 2) abort();
    static const char late[] =
        "{\"v\":1,\"from\":\"c\",\"members\":["
        "{\"id\":\"c\",\"addr\":\"seed:1\",\"incarnation\":9,\"heartbeat\":1,\"catalog_version\":3,\"queued\":1,"
        "\"running\":1,\"parallel\":2,\"queue_max\":4,\"backlog_ms\":0,\"prefill_tok_s\":0.25,\"link_rtt_ms\":0.5,\"link_mbit\":100,\"pending\":[]}]}";
    if (km_members_merge(m, late, sizeof late - 1, 8000, NULL, 0, NULL) != 1) abort();
    km_members_tick(m, 10000); /* a, b DEAD; c alive */
    return m;
}

static void parse_and_check(const char *buf, size_t len) {
    km_members_params p = fuzz_params();
    km_error err;
    err.msg[0] = 0;
    km_gossip_msg msg;
    int rc = km_gossip_decode(buf, len, &p, &msg, &err);

    /* The same bytes through merge: same verdict; on rejection, nothing changed. */
    km_members *m = fixture(&p);
    km_member before[8], after[8];
    int nb = km_members_snapshot(m, before, 8);
    km_member_change ch[8];
    km_error merr;
    merr.msg[0] = 0;
    int mrc = km_members_merge(m, buf, len, 20000, ch, 8, &merr);
    if ((mrc < 0) != (rc != 0)) abort();
    if (rc == 0) n_accepted++;
    else n_rejected++;

    if (rc != 0) {
        if (strncmp(err.msg, "gossip: ", 8) != 0 || strcmp(err.msg, merr.msg) != 0) abort();
        int na = km_members_snapshot(m, after, 8);
        if (na != nb || memcmp(before, after, (size_t)na * sizeof *before) != 0) abort();
        km_members_free(m);
        return;
    }

    /* Accepted: the rules hold, and the round trip is exact. */
    if (msg.n < 1 || msg.n > p.max_members || km_member_check_id(msg.from, NULL) != 0) abort();
    bool from_found = false;
    for (int i = 0; i < msg.n; i++) {
        check_record(&msg.members[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(msg.members[i].id, msg.members[j].id) == 0) abort();
        from_found |= strcmp(msg.members[i].id, msg.from) == 0;
    }
    if (!from_found) abort();
    char *json = NULL, *json2 = NULL;
    size_t jlen = 0, jlen2 = 0;
    if (km_gossip_encode(msg.from, msg.members, msg.n, &json, &jlen, &err) != 0) abort();
    km_gossip_msg msg2;
    if (km_gossip_decode(json, jlen, &p, &msg2, &err) != 0) abort();
    if (msg2.n != msg.n || strcmp(msg2.from, msg.from) != 0) abort();
    for (int i = 0; i < msg.n; i++)
        if (!same_gossiped(&msg.members[i], &msg2.members[i])) abort();
    if (km_gossip_encode(msg2.from, msg2.members, msg2.n, &json2, &jlen2, &err) != 0) abort();
    if (jlen2 != jlen || memcmp(json, json2, jlen) != 0) abort();
    free(json);
    free(json2);
    km_gossip_msg_free(&msg2);

    /* The merged table. */
    if (mrc > msg.n) abort();
    int na = km_members_snapshot(m, after, 8);
    if (na < 1 || na > p.max_members) abort();
    if (!after[0].self || memcmp(&after[0], &before[0], sizeof after[0]) != 0) abort();
    for (int i = 1; i < na; i++) {
        if (after[i].self || strcmp(after[i].id, "self") == 0) abort();
        for (int j = 1; j < i; j++)
            if (strcmp(after[i].id, after[j].id) == 0) abort();
    }
    km_members_tick(m, 25000);
    uint64_t rng = (uint64_t)len;
    for (int k = 0; k < 4; k++) {
        km_gossip_target t;
        if (!km_members_pick_target(m, &rng, &t)) continue;
        if (strcmp(t.addr, "self.local:7000") == 0 || strcmp(t.id, "self") == 0) abort();
        if (t.id[0]) {
            km_member r;
            if (!km_members_get(m, t.id, &r) || r.state == KM_MEMBER_DEAD) abort();
        }
    }
    char *out = NULL;
    size_t olen = 0;
    if (km_members_encode(m, &out, &olen, &err) != 0) abort();
    free(out);
    km_members_free(m);
    km_gossip_msg_free(&msg);
}

/* Input: [mode][n records][per record 24 bytes: id length and chars, addr
 * choice, versions, load, rate, model flag] then edits of the encoded text:
 * triples (op/offset u16, value). */
static void structured(const uint8_t *data, size_t size) {
    static const char *addrs[] = {"a:1", "[::1]:65535", "10.0.0.255:80", "x.example.org:8080", "seed:1",
                                  "[fe80::1%eth0]:9", "self.local:7000", "h_1:2"};
    static const char idchars[] = "abcxyzABC019_.-";
    if (size < 2) return;
    int n = 1 + data[1] % 9; /* up to one more than max_members */
    data += 2;
    size -= 2;
    km_member r[9];
    memset(r, 0, sizeof r);
    for (int i = 0; i < n; i++) {
        uint8_t b[24] = {0};
        size_t take = size < 24 ? size : 24;
        memcpy(b, data, take);
        data += take;
        size -= take;
        int idlen = 1 + b[0] % 6;
        for (int k = 0; k < idlen; k++) r[i].id[k] = idchars[b[1 + k] % (sizeof idchars - 1)];
        if (b[7] == 0xff) strcpy(r[i].id, "self"); /* records about the receiver */
        strcpy(r[i].addr, addrs[b[8] % 8]);
        r[i].incarnation = (uint64_t)b[9] << (b[10] % 56);
        r[i].heartbeat = (uint64_t)b[11] << (b[12] % 56);
        r[i].catalog_version = b[13];
        /* backlog <= 255 << 18 ms, within KM_MEMBER_BACKLOG_MAX */
        r[i].load = (km_member_load){b[14], b[15], b[16] % 4, b[17], (int)b[23] << (b[10] % 19)};
        r[i].prefill_tok_s = b[18] == 0 ? 0 : ldexp((double)b[18], b[19] % 40 - 20);
        r[i].link_rtt_ms = b[19] & 1 ? ldexp((double)b[22], b[19] % 16 - 8) : 0;
        r[i].link_mbit = b[20] & 2 ? ldexp((double)b[21], b[18] % 16 - 8) : 0;
        r[i].n_pending = b[17] % (KM_MEMBER_PENDING_MAX + 1);
        for (int k = 0; k < r[i].n_pending; k++) memset(r[i].pending[k].b, b[16] + k, KM_KEY_LEN);
        r[i].has_model = b[20] & 1;
        for (int k = 0; k < KM_FINGERPRINT_LEN; k++) r[i].model[k] = (uint8_t)(b[21] + k * b[22]);
    }
    /* Ids may collide; the encoder does not check that, the decoder must. */
    char *json = NULL;
    size_t len = 0;
    if (km_gossip_encode(r[0].id, r, n, &json, &len, NULL) != 0) abort();
    /* Edits: op 0-1 overwrite, 2 insert, 3 delete. */
    size_t cap = len + size + 1;
    char *t = malloc(cap);
    if (!t) abort();
    memcpy(t, json, len);
    size_t tl = len;
    for (size_t i = 0; i + 3 <= size; i += 3) {
        unsigned op = data[i] >> 6;
        size_t off = (size_t)((data[i] & 0x3f) << 8 | data[i + 1]);
        if (tl == 0) break;
        off %= tl;
        char v = (char)data[i + 2];
        if (op <= 1) {
            t[off] = v;
        } else if (op == 2) {
            memmove(t + off + 1, t + off, tl - off);
            t[off] = v;
            tl++;
        } else {
            memmove(t + off, t + off + 1, tl - off - 1);
            tl--;
        }
    }
    parse_and_check(t, tl);
    free(t);
    free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool started;
    if (!started) {
        started = true;
        km_log_level = -1; /* joins, deaths and twins are logged */
        if (getenv("KVMESH_FUZZ_STATS")) atexit(print_stats);
    }
    if (size > 0 && data[0] % 3 == 2) {
        structured(data, size);
        return 0;
    }
    parse_and_check((const char *)data, size);
    return 0;
}
