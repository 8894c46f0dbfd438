/* peerauth.h -- authentication of the HTTP messages between mesh peers with a
 * shared mesh secret (HMAC-SHA256, libsodium).
 *
 * Every peer request (state fetch, catalog, gossip, forwarded client
 * request) carries a header proving that its sender knows the secret and that
 * the target node, method, path and body are the ones it signed; every answer
 * carries a header binding it to that very request, so a man in the middle
 * can neither forge, alter, replay (at the same node or at another one) nor
 * swap answers. Bodies are not encrypted: this is integrity and authenticity,
 * not confidentiality. Every holder of the secret can speak for the whole
 * mesh (there is no per-peer identity in a shared secret).
 *
 * Request header  X-Kvmesh-Auth: v2 <unix ms> <nonce> <mac>
 *   unix ms   the signer's realtime clock, decimal, 1-15 digits, no leading 0
 *   nonce     16 random bytes (randombytes_buf) as 32 lowercase hex digits
 *   mac       HMAC-SHA256(secret, M) as 64 lowercase hex digits, where M is
 *             str("kvmesh-peer-request-v2") str(target) str(method)
 *             str(path incl. query) u64(unix ms) nonce(16) SHA-256(body)(32)
 *             with str(s) = u64 length + bytes, integers little-endian: every
 *             field has a fixed size or a length, so no two requests encode
 *             alike. target is the mesh id of the node the request is for
 *             (the receiver verifies with its own id, so a request captured
 *             on its way to one node is refused by every other); "" only for
 *             gossip to an address whose node's id is not known (a seed;
 *             a member restarted under a new id), which a receiver accepts
 *             on POST /peer/v1/gossip alone (untargeted_ok).
 *             The target is not in the header: the receiver knows its id.
 *             (An untargeted gossip captured in transit can be replayed once
 *             at each other node within the window: it merges the sender's
 *             table there, which gossip spreads anyway.)
 * Response header X-Kvmesh-Auth-Response: v2 <mac>, for an answer read whole:
 *   mac       HMAC-SHA256(secret, str("kvmesh-peer-response-v2")
 *             request nonce(16) request mac(32) u32(status) SHA-256(body)(32))
 *             The request's MAC covers its target, method, path, body and
 *             time, so an answer is valid for its own request only.
 * ... or, for an answer streamed as frames (a forwarded client request,
 * peerframe.h), the same header with
 *   mac       HMAC-SHA256(secret, str("kvmesh-peer-stream-v2") request nonce(16)
 *             request mac(32) u32(status) str(content type))
 *   and the body's frames are MAC'd with the key
 *             HMAC-SHA256(secret, str("kvmesh-peer-stream-key-v2") <the same>)
 *   so the head is checked before the first byte and each frame before its
 *   bytes are used; the domains keep the two kinds of answers apart.
 * Parsing is strict (single spaces, exact field count and lengths, lowercase
 * hex, canonical decimal): a header has exactly one spelling, and error
 * messages never echo its bytes (they name the field and the problem).
 *
 * Verification, in this order: parse; |now - unix ms| <= window (the realtime
 * clock: peers must be NTP-synchronised to within the window); MAC in
 * constant time; then the nonce must be new. Only requests with a valid MAC
 * reach the replay cache, so forgeries can neither fill it nor burn a nonce.
 *
 * Replay cache: a nonce is remembered until its timestamp leaves the window
 * (unix ms + window), after which the timestamp check alone rejects a replay.
 * Expired nonces are dropped every half window and whenever room is needed.
 * It holds at most 65536 nonces (km_peerauth_set_cache_limit); when that many
 * are still within the window, requests are refused ("replay cache full")
 * rather than an unexpired nonce forgotten: forgetting would silently let
 * replays through, whereas refusing is loud and temporary (it ends as the
 * held nonces leave the window), and with the default window it takes some
 * 2000 authenticated requests per second, sustained (65536 in 30 s). The
 * realtime clock is assumed not to step back by more than a window while the
 * node runs (a step back re-opens the nonces dropped just before it).
 *
 * Thread-safe: any number of threads may sign and verify with one km_peerauth
 * (a mutex guards the replay cache). Errors start with "peer auth: ". */
#ifndef KVMESH_PEERAUTH_H
#define KVMESH_PEERAUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define KM_PEERAUTH_HEADER "X-Kvmesh-Auth"
#define KM_PEERAUTH_RESPONSE_HEADER "X-Kvmesh-Auth-Response"
/* Buffer size (NUL included) that fits either header value. */
#define KM_PEERAUTH_HEADER_MAX 128
#define KM_PEERAUTH_SECRET_MIN 16
#define KM_PEERAUTH_SECRET_MAX 4096
#define KM_PEERAUTH_DEFAULT_WINDOW_MS 30000
#define KM_PEERAUTH_DEFAULT_CACHE_LIMIT 65536
#define KM_PEERAUTH_STREAM_KEY_LEN 32

typedef struct km_peerauth km_peerauth;

/* Read the mesh secret from a file (its raw bytes, one trailing "\n" or "\r\n"
 * removed; e.g. `head -c 32 /dev/urandom | base64 > F; chmod 600 F`). Refuses
 * secrets outside 16..4096 bytes and files group/others may access (like ssh
 * does). *secret is malloc'd: release it with km_peerauth_secret_free. */
int km_peerauth_load_secret(const char *path, uint8_t **secret, size_t *len, km_error *err);
/* Wipe and free a secret from km_peerauth_load_secret (NULL: no-op). */
void km_peerauth_secret_free(uint8_t *secret, size_t len);

/* A verifier/signer holding a copy of the secret (16..4096 bytes). window_ms
 * <= 0 means KM_PEERAUTH_DEFAULT_WINDOW_MS. */
km_peerauth *km_peerauth_new(const uint8_t *secret, size_t len, int window_ms, km_error *err);
/* Wipes the secret copy (NULL: no-op). */
void km_peerauth_free(km_peerauth *a);

/* Write the request header value for a request to node `target` (its mesh
 * id; "" only for gossip to a node whose id is unknown) into out (out_len >=
 * KM_PEERAUTH_HEADER_MAX is always enough). body may be NULL when body_len
 * is 0. -1 when out is too small, target/method/path is NULL or the clock is
 * outside 0..10^15 ms. */
int km_peerauth_sign_request(km_peerauth *a, const char *target, const char *method, const char *path,
                             const uint8_t *body, size_t body_len, char *out, size_t out_len);
/* Check a received request's header (NULL or "" = missing) against this
 * node's id, its method, path (as sent, query included) and body, and record
 * its nonce. untargeted_ok: also accept a request signed for target "".
 * 0 = authentic and fresh. */
int km_peerauth_verify_request(km_peerauth *a, const char *self_id, bool untargeted_ok, const char *method,
                               const char *path, const uint8_t *body, size_t body_len, const char *header,
                               km_error *err);

/* Write the response header value for an answer (status, body) to the request
 * that carried request_header. Sign every answer to an authenticated request,
 * errors included. -1 when request_header is malformed or out is too small. */
int km_peerauth_sign_response(km_peerauth *a, const char *request_header, int status, const uint8_t *body,
                              size_t body_len, char *out, size_t out_len);
/* Check an answer's response header (NULL or "" = missing) against the header
 * of the request we sent. 0 = the peer answered exactly this to that request. */
int km_peerauth_verify_response(km_peerauth *a, const char *request_header, int status, const uint8_t *body,
                                size_t body_len, const char *response_header, km_error *err);

/* The head of a framed answer (status, content type) to the request that
 * carried request_header: the header value into out, and the key its frames
 * are MAC'd with (peerframe.h) into key. -1 when request_header is malformed,
 * type NULL or out too small. */
int km_peerauth_sign_stream(km_peerauth *a, const char *request_header, int status, const char *type, char *out,
                            size_t out_len, uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN]);
/* Check the head of a framed answer against the header of the request we
 * sent; 0 = authentic, with the frames' key in key. */
int km_peerauth_verify_stream(km_peerauth *a, const char *request_header, int status, const char *type,
                              const char *response_header, uint8_t key[KM_PEERAUTH_STREAM_KEY_LEN], km_error *err);

/* Test hook: replace the realtime clock (unix ms) used to sign and verify;
 * NULL restores it. Set it before other threads use a. */
void km_peerauth_set_clock(km_peerauth *a, int64_t (*now_ms)(void *ud), void *ud);
/* Most nonces remembered at once (>= 1; default KM_PEERAUTH_DEFAULT_CACHE_LIMIT). */
void km_peerauth_set_cache_limit(km_peerauth *a, size_t limit);
/* Nonces currently held, expired ones not yet dropped included (tests, metrics). */
size_t km_peerauth_cache_count(km_peerauth *a);

#endif
