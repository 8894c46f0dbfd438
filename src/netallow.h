/* netallow.h -- the networks a node may contact at an address it learned
 * from gossip (--peer-allow CIDR,...).
 *
 * A member record names the address its node is reached at; without a limit,
 * whoever can gossip (any mesh member, or anyone on a node without a mesh
 * secret) could make every node connect to any address: a request forgery
 * from inside the network. Records whose address is outside the list are
 * ignored (members.h) and never contacted.
 *
 * Only numeric addresses pass: a host name would be resolved when it is
 * contacted, after the check, and could then name anything. Seeds (--peers)
 * are the operator's own choice and are contacted as given.
 *
 * The default (km_netallow_add_defaults): a loopback node allows 127.0.0.0/8
 * and ::1 only; any other node the networks of its listening address (the
 * netmask of the interface holding it; every interface's network for a
 * wildcard address; a /24 or /64 when no interface holds it) and of each
 * seed (the seed's /24 or /64) -- never loopback. */
#ifndef KVMESH_NETALLOW_H
#define KVMESH_NETALLOW_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define KM_NETALLOW_MAX 64 /* networks in a list */

typedef struct km_netallow km_netallow;

/* An empty list (allows nothing). NULL on out of memory. */
km_netallow *km_netallow_new(void);
void km_netallow_free(km_netallow *a);

/* Add one network: "10.0.0.0/24", "fd00::/64", or an address alone (/32,
 * /128). Host bits set are refused ("10.0.0.1/24": did you mean /32?). */
int km_netallow_add(km_netallow *a, const char *cidr, km_error *err);
/* Add a comma-separated list (spaces around entries allowed). */
int km_netallow_add_list(km_netallow *a, const char *list, km_error *err);
/* Add the default networks for a node listening on listen_host (as given to
 * --listen, brackets removed) with seeds (the --peers list, may be NULL). */
int km_netallow_add_defaults(km_netallow *a, const char *listen_host, const char *seeds, km_error *err);

/* Whether addr ("a.b.c.d:port" or "[v6]:port") is numeric and inside one of
 * the networks. Host names, malformed addresses: false. */
bool km_netallow_check(const km_netallow *a, const char *addr);
/* Whether addr is a numeric "a.b.c.d:port" or "[v6]:port" (what gossip
 * may carry to nodes with an allow-list). */
bool km_netallow_is_numeric(const char *addr);
/* The list as "127.0.0.0/8,::1/128" (for logs; cut to cap). */
void km_netallow_describe(const km_netallow *a, char *out, size_t cap);

#endif
