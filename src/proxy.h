/* proxy.h -- relay one HTTP request to a peer and stream its answer back.
 *
 * A forwarded request must not wait for the peer's whole answer before the
 * client sees anything (streaming responses), so the transfer runs on a
 * thread of its own and the answer's body is handed over in pieces through a
 * bounded buffer: km_proxy_start returns once the peer's status line and
 * headers have arrived -- which is also when we know whether to fall back to
 * running the request here -- and km_proxy_read then blocks for the next
 * bytes. Freeing an unfinished proxy aborts the transfer (client gone).
 *
 * A checked answer (with a mesh secret): the peer signs the answer's head --
 * status and content type, bound to our signed request -- in
 * X-Kvmesh-Auth-Response, and frames its body (peerframe.h). The head is
 * checked before anything is handed over, every frame before its bytes are,
 * and the answer must end with the end frame. km_proxy_start also waits for
 * the first frame: an answer refused by then (unsigned, bad MAC) fails the
 * start, and the caller can still run the request itself; a frame refused
 * later fails km_proxy_read after the bytes of the frames before it. */
#ifndef KVMESH_PROXY_H
#define KVMESH_PROXY_H

#include <stddef.h>
#include <sys/types.h>

#include "peerauth.h"
#include "util.h"

typedef struct km_proxy km_proxy;

/* POST body to http://addr<path> with extra headers ("Name: value",
 * NULL-terminated). auth (NULL: the answer is taken as it comes): check the
 * answer (above) against request_auth, the X-Kvmesh-Auth value sent in
 * headers. Returns NULL (err set) if the peer could not be reached, gave no
 * status within connect_ms, or (auth) its answer was refused before its
 * first frame; else the proxy, with *status and content_type (buffer of
 * type_cap) filled in. */
km_proxy *km_proxy_start(const char *addr, const char *path, const char *body, size_t len, const char *const *headers,
                         km_peerauth *auth, const char *request_auth, int connect_ms, long *status,
                         char *content_type, size_t type_cap, km_error *err);
/* The next bytes of the answer (blocks): > 0 bytes, 0 at its end, -1 if the
 * transfer failed. */
ssize_t km_proxy_read(km_proxy *p, char *buf, size_t max);
/* Abort if unfinished, wait for the thread, free. */
void km_proxy_free(km_proxy *p);

#endif
