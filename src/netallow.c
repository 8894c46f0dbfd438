/* netallow.c -- see netallow.h. Addresses are kept as 16 bytes: IPv4 as
 * IPv4-mapped IPv6 (::ffff:a.b.c.d), so one prefix compare serves both and
 * an IPv4 network never matches a native IPv6 address. */
#include "netallow.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct net {
    uint8_t addr[16];
    int bits; /* prefix length over the 16 bytes (IPv4: 96 + its own) */
} net;

struct km_netallow {
    net nets[KM_NETALLOW_MAX];
    int n;
};

static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

km_netallow *km_netallow_new(void) { return calloc(1, sizeof(km_netallow)); }

void km_netallow_free(km_netallow *a) { free(a); }

/* A numeric address -> 16 bytes; *v4 says which family. false if not numeric. */
static bool parse_ip(const char *s, uint8_t out[16], bool *v4) {
    struct in_addr a4;
    if (inet_pton(AF_INET, s, &a4) == 1) {
        memcpy(out, V4_MAPPED, 12);
        memcpy(out + 12, &a4, 4);
        *v4 = true;
        return true;
    }
    *v4 = false;
    return inet_pton(AF_INET6, s, out) == 1;
}

static bool in_net(const net *n, const uint8_t addr[16]) {
    int full = n->bits / 8, rest = n->bits % 8;
    if (memcmp(n->addr, addr, (size_t)full) != 0) return false;
    if (rest == 0) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (n->addr[full] & mask) == (addr[full] & mask);
}

/* Add addr/bits (bits over 16 bytes), host bits cleared; duplicates skipped. */
static int add_net(km_netallow *a, const uint8_t addr[16], int bits, km_error *err) {
    net n = {.bits = bits};
    memcpy(n.addr, addr, 16);
    for (int i = bits / 8; i < 16; i++) {
        int keep = i == bits / 8 ? bits % 8 : 0;
        n.addr[i] &= (uint8_t)(keep ? 0xff << (8 - keep) : 0);
    }
    for (int i = 0; i < a->n; i++)
        if (a->nets[i].bits == n.bits && memcmp(a->nets[i].addr, n.addr, 16) == 0) return 0;
    if (a->n == KM_NETALLOW_MAX) return km_error_set(err, "peer allow-list: more than %d networks", KM_NETALLOW_MAX);
    a->nets[a->n++] = n;
    return 0;
}

int km_netallow_add(km_netallow *a, const char *cidr, km_error *err) {
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(cidr, '/');
    size_t hl = slash ? (size_t)(slash - cidr) : strlen(cidr);
    if (hl == 0 || hl >= sizeof host) return km_error_set(err, "peer allow-list: '%.80s' is not an address/prefix", cidr);
    memcpy(host, cidr, hl);
    host[hl] = 0;
    uint8_t addr[16];
    bool v4;
    if (!parse_ip(host, addr, &v4))
        return km_error_set(err, "peer allow-list: '%.80s' is not a numeric IPv4 or IPv6 address", host);
    int max = v4 ? 32 : 128, bits = max;
    if (slash) {
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end || v < 0 || v > max)
            return km_error_set(err, "peer allow-list: '%.80s': the prefix length must be 0-%d", cidr, max);
        bits = (int)v;
    }
    int total = bits + (v4 ? 96 : 0);
    for (int b = total; b < 128; b++)
        if (addr[b / 8] & (0x80 >> (b % 8)))
            return km_error_set(err, "peer allow-list: '%.80s' has host bits set (use the network's address, or /%d "
                                     "for this address alone)", cidr, max);
    return add_net(a, addr, total, err);
}

int km_netallow_add_list(km_netallow *a, const char *list, km_error *err) {
    const char *p = list;
    for (;;) {
        while (*p == ' ') p++;
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && p[n - 1] == ' ') n--;
        char item[128];
        if (n == 0 || n >= sizeof item)
            return km_error_set(err, "peer allow-list: empty or overlong entry in '%.80s'", list);
        memcpy(item, p, n);
        item[n] = 0;
        if (km_netallow_add(a, item, err) != 0) return -1;
        if (!e) return 0;
        p = e + 1;
    }
}

/* The network of one of our addresses: its interface's netmask; a /24 or
 * /64 when no interface holds it (wildcard: every non-loopback interface). */
static int add_local(km_netallow *a, const uint8_t addr[16], bool v4, km_error *err) {
    static const uint8_t zero[16];
    bool wildcard = v4 ? memcmp(addr + 12, zero, 4) == 0 : memcmp(addr, zero, 16) == 0;
    struct ifaddrs *ifs = NULL;
    int found = 0;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || !i->ifa_netmask) continue;
            int fam = i->ifa_addr->sa_family;
            if (fam != (v4 ? AF_INET : AF_INET6)) continue;
            uint8_t ia[16], mask[16];
            if (v4) {
                memcpy(ia, V4_MAPPED, 12);
                memcpy(ia + 12, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, 4);
                memset(mask, 0xff, 12);
                memcpy(mask + 12, &((struct sockaddr_in *)i->ifa_netmask)->sin_addr, 4);
            } else {
                memcpy(ia, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, 16);
                memcpy(mask, &((struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr, 16);
            }
            bool loop = v4 ? ia[12] == 127 : memcmp(ia, (uint8_t[16]){[15] = 1}, 16) == 0;
            if (wildcard ? loop : memcmp(ia, addr, 16) != 0) continue;
            int bits = 0;
            while (bits < 128 && (mask[bits / 8] & (0x80 >> (bits % 8)))) bits++;
            if (add_net(a, ia, bits, err) != 0) {
                freeifaddrs(ifs);
                return -1;
            }
            found++;
        }
        freeifaddrs(ifs);
    }
    if (found || wildcard) return 0;
    return add_net(a, addr, v4 ? 96 + 24 : 64, err);
}

/* Add the network of each address host names (numeric, or resolved once,
 * here): local -> add_local, else its /24 or /64. */
static int each_addr(km_netallow *a, const char *host, bool local, km_error *err) {
    uint8_t addr[16];
    bool v4;
    if (parse_ip(host, addr, &v4))
        return local ? add_local(a, addr, v4, err) : add_net(a, addr, v4 ? 96 + 24 : 64, err);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int gai = getaddrinfo(host, NULL, &hints, &ai);
    if (gai != 0)
        return km_error_set(err, "peer allow-list: cannot resolve '%.80s': %s (give --peer-allow)", host,
                            gai_strerror(gai));
    int rc = 0;
    for (struct addrinfo *i = ai; i && rc == 0; i = i->ai_next) {
        char s[INET6_ADDRSTRLEN];
        const void *src = i->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)i->ai_addr)->sin_addr
                                                  : (const void *)&((struct sockaddr_in6 *)i->ai_addr)->sin6_addr;
        if ((i->ai_family == AF_INET || i->ai_family == AF_INET6) && inet_ntop(i->ai_family, src, s, sizeof s))
            rc = each_addr(a, s, local, err);
    }
    freeaddrinfo(ai);
    return rc;
}

static bool is_loopback_host(const char *host) {
    uint8_t addr[16];
    bool v4;
    if (strcmp(host, "localhost") == 0) return true;
    if (!parse_ip(host, addr, &v4)) return false;
    return v4 ? addr[12] == 127 : memcmp(addr, (uint8_t[16]){[15] = 1}, 16) == 0;
}

/* "host:port" or "[v6]:port" -> host (brackets removed). */
static bool split_host(const char *addr, size_t n, char *host, size_t cap) {
    const char *h = addr, *end;
    if (n && addr[0] == '[') {
        h = addr + 1;
        end = memchr(addr, ']', n);
        if (!end || (size_t)(end - addr) + 1 >= n || end[1] != ':') return false;
    } else {
        end = NULL;
        for (size_t i = n; i > 0; i--)
            if (addr[i - 1] == ':') {
                end = addr + i - 1;
                break;
            }
        if (!end) return false;
    }
    size_t hl = (size_t)(end - h);
    if (hl == 0 || hl >= cap) return false;
    memcpy(host, h, hl);
    host[hl] = 0;
    return true;
}

int km_netallow_add_defaults(km_netallow *a, const char *listen_host, const char *seeds, km_error *err) {
    if (is_loopback_host(listen_host)) {
        if (km_netallow_add(a, "127.0.0.0/8", err) != 0 || km_netallow_add(a, "::1", err) != 0) return -1;
    } else if (each_addr(a, listen_host, true, err) != 0) {
        return -1;
    }
    for (const char *p = seeds; p && *p;) {
        while (*p == ' ') p++;
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && p[n - 1] == ' ') n--;
        char host[256];
        if (n && split_host(p, n, host, sizeof host) && each_addr(a, host, false, err) != 0) return -1;
        p = e ? e + 1 : p + n;
    }
    return 0;
}

/* The address of "a.b.c.d:port" / "[v6]:port"; false for names and
 * malformed ones (brackets for IPv6 alone). */
static bool numeric_addr(const char *addr, uint8_t ip[16]) {
    char host[INET6_ADDRSTRLEN + 1];
    bool v4;
    if (!addr || !split_host(addr, strlen(addr), host, sizeof host) || !parse_ip(host, ip, &v4)) return false;
    return v4 != (addr[0] == '[');
}

bool km_netallow_is_numeric(const char *addr) {
    uint8_t ip[16];
    return numeric_addr(addr, ip);
}

bool km_netallow_check(const km_netallow *a, const char *addr) {
    uint8_t ip[16];
    if (!numeric_addr(addr, ip)) return false;
    for (int i = 0; i < a->n; i++)
        if (in_net(&a->nets[i], ip)) return true;
    return false;
}

void km_netallow_describe(const km_netallow *a, char *out, size_t cap) {
    size_t o = 0;
    if (cap) out[0] = 0;
    for (int i = 0; i < a->n && o < cap; i++) {
        const net *n = &a->nets[i];
        bool v4 = n->bits >= 96 && memcmp(n->addr, V4_MAPPED, 12) == 0;
        char s[INET6_ADDRSTRLEN];
        inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? (const void *)(n->addr + 12) : (const void *)n->addr, s, sizeof s);
        int w = snprintf(out + o, cap - o, "%s%s/%d", i ? "," : "", s, v4 ? n->bits - 96 : n->bits);
        if (w < 0) break;
        o += (size_t)w;
    }
}
