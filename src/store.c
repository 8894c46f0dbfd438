/* store.c -- see store.h.
 *
 * Both tiers use the same small structure, an "lru": a chained hash table keyed
 * by the 16-byte key plus a doubly linked recency list (head = most recently
 * used, tail = next victim). The RAM lru's nodes hold the bytes; the disk lru's
 * nodes only describe a file (its size), the bytes stay in the file.
 *
 * Blob bytes live in reference-counted, immutable buffers, so a put makes one
 * copy that the RAM tier and the write queue share: a 200 MB state costs 200 MB
 * while its disk write is pending, not 400 MB. Reference counts only change
 * under the store mutex; the bytes never change, so they can be read (copied
 * out, written to disk) without the mutex.
 *
 * Disk writes are jobs in a FIFO served by a single writer thread. There is at
 * most one queued job per key (a newer put swaps the bytes of a queued job),
 * plus the job being written right now. Only the writer thread creates files
 * and evicts for the disk budget, so two writes of one file never overlap. A
 * remove can happen while its key is being written: it marks the job cancelled
 * and the writer deletes the file it just made.
 *
 * The writer compresses a state blob (km_blob_compress) before writing it, so
 * that the file, its disk-budget share and its transfer later are the smaller
 * form; a put never waits for that. The RAM tier keeps the bytes as put.
 *
 * Locking: one mutex for everything. Blob copies, compression, file reads, file
 * writes and budget evictions (unlinking big files can be slow) run without it; the rare
 * unlink of km_store_remove runs under it, which keeps it ordered against the
 * writer's renames. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blob.h"

#define KVB_SUFFIX ".kvb"
#define HEX_LEN (2 * KM_KEY_LEN)
#define DIR_MAX 4096                  /* what km_mkdir_p accepts */
#define PATH_CAP (DIR_MAX + HEX_LEN + 16)

/* ------------------------------------------------------------------------- */
/* Shared blob buffers                                                       */
/* ------------------------------------------------------------------------- */

typedef struct blobbuf {
    size_t refs; /* protected by the store mutex */
    size_t len;
    bool trusted; /* this process's own bytes (see Origin in store.h) */
    uint8_t data[];
} blobbuf;

static blobbuf *buf_new(const uint8_t *data, size_t len, bool trusted) {
    if (len > SIZE_MAX - sizeof(blobbuf)) return NULL;
    blobbuf *b = malloc(sizeof *b + len);
    if (!b) return NULL;
    b->refs = 1;
    b->len = len;
    b->trusted = trusted;
    if (len) memcpy(b->data, data, len);
    return b;
}

static blobbuf *buf_ref(blobbuf *b) {
    b->refs++;
    return b;
}

static void buf_unref(blobbuf *b) {
    if (b && --b->refs == 0) free(b);
}

/* ------------------------------------------------------------------------- */
/* lru: hash table + recency list                                            */
/* ------------------------------------------------------------------------- */

typedef struct node {
    km_key key;
    struct node *hnext;       /* hash chain */
    struct node *prev, *next; /* recency list */
    uint64_t size;            /* bytes this entry counts against the budget */
    blobbuf *buf;             /* RAM tier: the bytes */
    uint64_t gen;             /* disk tier: which write made the file (see disk_read) */
    bool trusted;             /* disk tier: this process wrote the file from trusted bytes... */
    ino_t ino;                /* ... and it was this inode with this ctime right after */
    struct timespec ctime;
} node;

typedef struct lru {
    node **buckets;
    size_t nbuckets;
    uint64_t count, bytes;
    node *head, *tail;
} lru;

/* Keys are hashes already, but tests and callers may use structured keys, so
 * mix all 16 bytes rather than trusting any one of them. */
static uint64_t key_hash(km_key k) {
    uint64_t h = km_get_u64(k.b) ^ (km_get_u64(k.b + 8) * 0x9E3779B97F4A7C15ULL);
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 29;
    return h;
}

static int lru_init(lru *l) {
    memset(l, 0, sizeof *l);
    l->nbuckets = 64;
    l->buckets = calloc(l->nbuckets, sizeof *l->buckets);
    return l->buckets ? 0 : -1;
}

static node *lru_find(const lru *l, km_key k) {
    for (node *n = l->buckets[key_hash(k) & (l->nbuckets - 1)]; n; n = n->hnext)
        if (km_key_equal(n->key, k)) return n;
    return NULL;
}

static void list_unlink(lru *l, node *n) {
    if (n->prev) n->prev->next = n->next;
    else l->head = n->next;
    if (n->next) n->next->prev = n->prev;
    else l->tail = n->prev;
    n->prev = n->next = NULL;
}

static void list_push_head(lru *l, node *n) {
    n->prev = NULL;
    n->next = l->head;
    if (l->head) l->head->prev = n;
    l->head = n;
    if (!l->tail) l->tail = n;
}

static void lru_touch(lru *l, node *n) {
    if (l->head == n) return;
    list_unlink(l, n);
    list_push_head(l, n);
}

/* Double the table when it gets full. If that allocation fails the old table
 * stays: chains get longer, lookups stay correct. */
static void lru_grow(lru *l) {
    size_t nb = l->nbuckets * 2;
    node **b = calloc(nb, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < l->nbuckets; i++) {
        node *n = l->buckets[i];
        while (n) {
            node *next = n->hnext;
            size_t h = key_hash(n->key) & (nb - 1);
            n->hnext = b[h];
            b[h] = n;
            n = next;
        }
    }
    free(l->buckets);
    l->buckets = b;
    l->nbuckets = nb;
}

/* Insert n (key not present yet) as the most recently used entry. */
static void lru_insert(lru *l, node *n) {
    if (l->count >= l->nbuckets) lru_grow(l);
    size_t h = key_hash(n->key) & (l->nbuckets - 1);
    n->hnext = l->buckets[h];
    l->buckets[h] = n;
    list_push_head(l, n);
    l->count++;
    l->bytes += n->size;
}

/* Take n out of the table and list; the caller frees it. */
static void lru_remove(lru *l, node *n) {
    node **pp = &l->buckets[key_hash(n->key) & (l->nbuckets - 1)];
    while (*pp != n) pp = &(*pp)->hnext;
    *pp = n->hnext;
    list_unlink(l, n);
    l->count--;
    l->bytes -= n->size;
}

static void lru_set_size(lru *l, node *n, uint64_t size) {
    l->bytes = l->bytes - n->size + size;
    n->size = size;
}

static void node_free(node *n) {
    if (!n) return;
    buf_unref(n->buf);
    free(n);
}

static void lru_free(lru *l) {
    if (!l->buckets) return;
    node *n = l->head;
    while (n) {
        node *next = n->next;
        node_free(n);
        n = next;
    }
    free(l->buckets);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------------------- */
/* The store                                                                 */
/* ------------------------------------------------------------------------- */

typedef struct job {
    km_key key;
    blobbuf *buf;
    bool cancelled; /* removed while being written: delete the file afterwards */
    struct job *next;
} job;

struct km_store {
    km_store_params p; /* p.disk_dir unused: see dir */
    char *dir;         /* NULL = no disk tier */
    pthread_mutex_t lock;
    pthread_cond_t work; /* writer: a job was queued, or stop */
    pthread_cond_t idle; /* flush: nothing queued and nothing being written */
    lru ram, disk;
    job *qhead, *qtail; /* queued writes, oldest first */
    job *writing;       /* the job the writer is on (not in the queue) */
    bool stop;
    bool writer_running;
    pthread_t writer;
    uint64_t disk_gen;
    bool warned; /* disk write errors are logged once, then only counted */
    uint64_t changes;  /* bumped by every put, remove and eviction (km_store_keys) */
    km_store_stats st; /* counters; sizes are read off the lrus */
};

km_store_params km_store_default_params(void) {
    km_store_params p;
    memset(&p, 0, sizeof p);
    p.ram_budget = (size_t)256 << 20;
    p.disk_dir = NULL;
    p.disk_budget = (uint64_t)4096 << 20;
    p.max_blob_size = (size_t)1 << 30;
    p.compress_level = 1;
    return p;
}

static void key_path(const km_store *s, km_key k, char path[PATH_CAP]) {
    char hex[HEX_LEN + 1];
    km_key_hex(k, hex);
    snprintf(path, PATH_CAP, "%s/%s" KVB_SUFFIX, s->dir, hex);
}

/* --- RAM tier (all under the lock) --------------------------------------- */

static void ram_drop(km_store *s, km_key k) {
    node *n = lru_find(&s->ram, k);
    if (!n) return;
    lru_remove(&s->ram, n);
    node_free(n);
}

static void ram_evict(km_store *s) {
    while (s->ram.bytes > s->p.ram_budget && s->ram.tail) {
        node *n = s->ram.tail;
        lru_remove(&s->ram, n);
        node_free(n);
        s->st.ram_evictions++;
        s->changes++;
    }
}

/* Cache b under k, replacing what was there. A blob bigger than the whole
 * budget would only flush everything else out, so it is not kept at all. */
static void ram_put(km_store *s, km_key k, blobbuf *b) {
    ram_drop(s, k);
    if (!b || s->p.ram_budget == 0 || b->len > s->p.ram_budget) return;
    node *n = calloc(1, sizeof *n);
    if (!n) return; /* a cache may forget */
    n->key = k;
    n->size = b->len;
    n->buf = buf_ref(b);
    lru_insert(&s->ram, n);
    ram_evict(s);
}

/* --- write queue (under the lock) ---------------------------------------- */

static job *queue_find(const km_store *s, km_key k) {
    for (job *j = s->qhead; j; j = j->next)
        if (km_key_equal(j->key, k)) return j;
    return NULL;
}

static void queue_drop(km_store *s, km_key k) {
    job **pp = &s->qhead, *prev = NULL;
    while (*pp) {
        job *j = *pp;
        if (km_key_equal(j->key, k)) {
            *pp = j->next;
            if (s->qtail == j) s->qtail = prev;
            buf_unref(j->buf);
            free(j);
            return; /* at most one queued job per key */
        }
        prev = j;
        pp = &j->next;
    }
}

/* The newest bytes for k that are not (yet) known to be on disk: a queued job,
 * else the job being written. */
static blobbuf *pending_buf(const km_store *s, km_key k) {
    job *j = queue_find(s, k);
    if (j) return j->buf;
    if (s->writing && !s->writing->cancelled && km_key_equal(s->writing->key, k)) return s->writing->buf;
    return NULL;
}

/* --- disk tier (under the lock) ------------------------------------------ */

/* Forget k on disk entirely: queued write, write in progress, file, index.
 * The unlink runs under the lock so that it is ordered against the writer:
 * the writer only renames a file into place without the lock, and then checks
 * the cancelled flag under it. */
static void disk_forget(km_store *s, km_key k) {
    queue_drop(s, k);
    if (s->writing && km_key_equal(s->writing->key, k)) s->writing->cancelled = true;
    node *n = lru_find(&s->disk, k);
    if (n) {
        lru_remove(&s->disk, n);
        node_free(n);
    }
    char path[PATH_CAP];
    key_path(s, k, path);
    unlink(path); /* also a file the index never had; ENOENT is fine */
}

/* Index a file the writer just put in place (or refresh the entry). own:
 * the file's identity right after this process wrote it from trusted bytes;
 * NULL for a file of unknown origin (found when the store opened). */
static int disk_index(km_store *s, km_key k, uint64_t size, const struct stat *own) {
    node *n = lru_find(&s->disk, k);
    if (n) {
        lru_set_size(&s->disk, n, size);
        lru_touch(&s->disk, n);
    } else {
        n = calloc(1, sizeof *n);
        if (!n) return -1;
        n->key = k;
        n->size = size;
        lru_insert(&s->disk, n);
    }
    n->gen = ++s->disk_gen;
    n->trusted = own != NULL;
    if (own) {
        n->ino = own->st_ino;
        n->ctime = own->st_ctim;
    }
    return 0;
}

/* Whether a file read under disk entry d is still the one this process wrote
 * (st: the file's status right after the read). */
static bool disk_same_file(const node *d, const struct stat *st, size_t n) {
    return d->trusted && st->st_ino == d->ino && st->st_ctim.tv_sec == d->ctime.tv_sec &&
           st->st_ctim.tv_nsec == d->ctime.tv_nsec && (uint64_t)st->st_size == n;
}

/* Make room for a new file of `incoming` bytes under key *keep (NULL: none):
 * take least recently used entries off the index until the budget holds, and
 * return their keys so that the caller unlinks the files without the lock.
 * If the key array cannot grow, the file is unlinked right here instead. */
static size_t disk_pick_victims(km_store *s, const km_key *keep, uint64_t incoming, km_key **out) {
    *out = NULL;
    if (s->p.disk_budget == 0) return 0;
    node *self = keep ? lru_find(&s->disk, *keep) : NULL;
    uint64_t replaced = self ? self->size : 0; /* the new file replaces this one */
    size_t n = 0, cap = 0;
    node *v = s->disk.tail;
    while (v && s->disk.bytes - replaced + incoming > s->p.disk_budget) {
        node *prev = v->prev;
        if (v != self) {
            lru_remove(&s->disk, v);
            s->st.disk_evictions++;
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                km_key *grown = realloc(*out, ncap * sizeof **out);
                if (grown) {
                    *out = grown;
                    cap = ncap;
                }
            }
            if (n < cap) {
                (*out)[n++] = v->key;
            } else {
                char path[PATH_CAP];
                key_path(s, v->key, path);
                unlink(path);
            }
            node_free(v);
        }
        v = prev;
    }
    return n;
}

static void unlink_keys(const km_store *s, const km_key *keys, size_t n) {
    char path[PATH_CAP];
    for (size_t i = 0; i < n; i++) {
        key_path(s, keys[i], path);
        if (unlink(path) != 0 && errno != ENOENT) km_debug("store: cannot delete %s: %s", path, strerror(errno));
    }
}

/* Queue a disk write of b under k (a queued one for k just gets the new bytes). */
static void queue_put(km_store *s, km_key k, blobbuf *b) {
    job *j = queue_find(s, k);
    if (j) {
        buf_unref(j->buf);
        j->buf = buf_ref(b);
        return;
    }
    j = calloc(1, sizeof *j);
    if (!j) {
        /* Cannot queue: count it like a failed write, and drop the file, which
         * holds an older blob than the one just put. */
        s->st.disk_write_errors++;
        disk_forget(s, k);
        return;
    }
    j->key = k;
    j->buf = buf_ref(b);
    if (s->qtail) s->qtail->next = j;
    else s->qhead = j;
    s->qtail = j;
    pthread_cond_signal(&s->work);
}

/* --- writer thread ------------------------------------------------------- */

/* Record the outcome of writing job j to path, a file of size bytes (rc from
 * km_write_file_atomic; own: its status after the write if its bytes were trusted). */
static void write_done(km_store *s, job *j, const char *path, int rc, uint64_t size, const struct stat *own,
                       const km_error *err) {
    if (j->cancelled) {
        /* Removed while we wrote it; the remove's unlink may have come before
         * our rename, so delete again. */
        if (rc == 0) unlink(path);
        return;
    }
    if (rc == 0 && disk_index(s, j->key, size, own) == 0) return;
    s->st.disk_write_errors++;
    if (!s->warned) {
        km_warn("store: disk write failed, entry kept in RAM only (further errors are counted, not logged): %s",
                rc != 0 ? err->msg : "out of memory");
        s->warned = true;
    } else {
        km_debug("store: disk write failed: %s", rc != 0 ? err->msg : "out of memory");
    }
    /* Whatever file is still there holds an older blob than the last put. */
    node *n = lru_find(&s->disk, j->key);
    if (n) {
        lru_remove(&s->disk, n);
        node_free(n);
    }
    unlink(path);
}

static void *writer_main(void *arg) {
    km_store *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->qhead && !s->stop) pthread_cond_wait(&s->work, &s->lock);
        if (!s->qhead) break; /* stop, and nothing left to write */
        job *j = s->qhead;
        s->qhead = j->next;
        if (!s->qhead) s->qtail = NULL;
        j->next = NULL;
        s->writing = j;
        pthread_mutex_unlock(&s->lock);

        /* The bytes are immutable and a get meanwhile is served from j->buf
         * (pending_buf), so compression needs no lock. Not a blob, or no
         * gain: written as given. */
        const uint8_t *data = j->buf->data;
        size_t len = j->buf->len;
        uint8_t *z = NULL;
        size_t zlen;
        if (s->p.compress_level != 0 && km_blob_compress(data, len, s->p.compress_level, &z, &zlen, NULL) == 0) {
            data = z;
            len = zlen;
        }

        /* Evict before writing, so the directory never holds more than the
         * budget (it may be sized to the device). */
        pthread_mutex_lock(&s->lock);
        km_key *victims;
        size_t nv = disk_pick_victims(s, &j->key, len, &victims);
        if (nv) s->changes++;
        pthread_mutex_unlock(&s->lock);

        unlink_keys(s, victims, nv);
        free(victims);
        char path[PATH_CAP];
        key_path(s, j->key, path);
        km_error err;
        err.msg[0] = 0;
        int rc = km_write_file_atomic(path, data, len, &err);
        free(z);
        struct stat own;
        bool trusted = rc == 0 && j->buf->trusted && stat(path, &own) == 0;

        pthread_mutex_lock(&s->lock);
        write_done(s, j, path, rc, len, trusted ? &own : NULL, &err);
        s->writing = NULL;
        buf_unref(j->buf);
        free(j);
        if (!s->qhead) pthread_cond_broadcast(&s->idle);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* --- opening: scan the directory ----------------------------------------- */

static bool is_lower_hex(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return false;
    return true;
}

/* "<32 hex>.kvb" -> key. Only the exact lowercase form we write counts: any
 * other spelling would not be found again under the path key_path builds. */
static bool parse_entry_name(const char *name, km_key *k) {
    if (strlen(name) != HEX_LEN + strlen(KVB_SUFFIX) || strcmp(name + HEX_LEN, KVB_SUFFIX) != 0) return false;
    if (!is_lower_hex(name, HEX_LEN)) return false;
    char hex[HEX_LEN + 1];
    memcpy(hex, name, HEX_LEN);
    hex[HEX_LEN] = 0;
    return km_key_from_hex(hex, k) == 0;
}

/* "<32 hex>.kvb.<pid>.tmp": the temp file of km_write_file_atomic, written by
 * process pid. Other *.tmp files are not ours and stay. */
static bool parse_temp_name(const char *name, long *pid) {
    size_t n = strlen(name), pre = HEX_LEN + strlen(KVB_SUFFIX ".");
    if (n <= pre + strlen(".tmp") || n - pre - strlen(".tmp") > 9 || !is_lower_hex(name, HEX_LEN)) return false;
    if (strncmp(name + HEX_LEN, KVB_SUFFIX ".", strlen(KVB_SUFFIX ".")) != 0) return false;
    if (strcmp(name + n - 4, ".tmp") != 0) return false;
    *pid = 0;
    for (size_t i = pre; i < n - 4; i++) {
        if (name[i] < '0' || name[i] > '9') return false;
        *pid = *pid * 10 + (name[i] - '0');
    }
    return *pid > 0;
}

/* Whether a temp file is a leftover of a dead writer. Another process may be
 * writing it right now (two `kvmesh run` sharing the default directory), so
 * it goes only when its writer is gone, or when it was not written to for
 * TEMP_STALE_S (its pid then belongs to some other process by now). */
#define TEMP_STALE_S 3600
static bool temp_is_orphan(int dfd, const char *name, long pid) {
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return true;
    struct stat st;
    return fstatat(dfd, name, &st, 0) == 0 && time(NULL) - st.st_mtime > TEMP_STALE_S;
}

typedef struct scanned {
    km_key key;
    uint64_t size;
    struct timespec mtime;
} scanned;

static int cmp_mtime(const void *a, const void *b) {
    const struct timespec *x = &((const scanned *)a)->mtime, *y = &((const scanned *)b)->mtime;
    if (x->tv_sec != y->tv_sec) return x->tv_sec < y->tv_sec ? -1 : 1;
    return (x->tv_nsec > y->tv_nsec) - (x->tv_nsec < y->tv_nsec);
}

/* Build the disk index from the directory. The last-use order of a previous
 * run is not kept anywhere, so file modification time stands in for it. */
static int disk_scan(km_store *s, km_error *err) {
    DIR *d = opendir(s->dir);
    if (!d) return km_error_set(err, "%s: %s", s->dir, strerror(errno));
    scanned *f = NULL;
    size_t n = 0, cap = 0, temps = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        km_key k;
        struct stat st;
        long pid;
        if (parse_temp_name(e->d_name, &pid)) {
            if (temp_is_orphan(dirfd(d), e->d_name, pid) && unlinkat(dirfd(d), e->d_name, 0) == 0) temps++;
            continue;
        }
        if (!parse_entry_name(e->d_name, &k)) continue;
        if (fstatat(dirfd(d), e->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode)) continue;
        if ((uint64_t)st.st_size > s->p.max_blob_size) {
            km_debug("store: ignoring %s/%s: %lld bytes is over the blob size limit", s->dir, e->d_name,
                     (long long)st.st_size);
            continue;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            scanned *grown = realloc(f, ncap * sizeof *f);
            if (!grown) {
                free(f);
                closedir(d);
                return km_error_set(err, "%s: out of memory while scanning", s->dir);
            }
            f = grown;
            cap = ncap;
        }
        f[n].key = k;
        f[n].size = (uint64_t)st.st_size;
        f[n].mtime = st.st_mtim;
        n++;
    }
    closedir(d);
    if (temps) km_info("store: %s: removed %zu unfinished write(s) of writers that are gone", s->dir, temps);

    if (n) qsort(f, n, sizeof *f, cmp_mtime); /* oldest first, so the newest ends up at the head */
    for (size_t i = 0; i < n; i++) {
        if (disk_index(s, f[i].key, f[i].size, NULL) != 0) {
            free(f);
            return km_error_set(err, "%s: out of memory while scanning", s->dir);
        }
    }
    free(f);

    /* The budget may have shrunk since the files were written. */
    km_key *victims;
    size_t nv = disk_pick_victims(s, NULL, 0, &victims);
    unlink_keys(s, victims, nv);
    free(victims);
    return 0;
}

/* --- public API ---------------------------------------------------------- */

km_store *km_store_open(const km_store_params *p, km_error *err) {
    km_store *s = calloc(1, sizeof *s);
    if (!s) {
        km_error_set(err, "store: out of memory");
        return NULL;
    }
    s->p = p ? *p : km_store_default_params();
    if (s->p.max_blob_size == 0) s->p.max_blob_size = km_store_default_params().max_blob_size;
    s->p.disk_dir = NULL; /* the caller's string may not outlive us; s->dir is our copy */
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->idle, NULL);
    if (lru_init(&s->ram) != 0 || lru_init(&s->disk) != 0) {
        km_error_set(err, "store: out of memory");
        goto fail;
    }
    if (p && p->disk_dir) {
        if (strlen(p->disk_dir) >= DIR_MAX) {
            km_error_set(err, "%s: directory path too long", p->disk_dir);
            goto fail;
        }
        if (km_mkdir_p(p->disk_dir, err) != 0) goto fail;
        s->dir = strdup(p->disk_dir);
        if (!s->dir) {
            km_error_set(err, "store: out of memory");
            goto fail;
        }
        if (disk_scan(s, err) != 0) goto fail;
        int rc = pthread_create(&s->writer, NULL, writer_main, s);
        if (rc != 0) {
            km_error_set(err, "store: cannot start the disk writer thread: %s", strerror(rc));
            goto fail;
        }
        s->writer_running = true;
    }
    return s;
fail:
    km_store_close(s);
    return NULL;
}

void km_store_close(km_store *s) {
    if (!s) return;
    if (s->writer_running) {
        km_store_flush(s);
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->writer, NULL);
    }
    while (s->qhead) { /* only when the writer never started */
        job *j = s->qhead;
        s->qhead = j->next;
        buf_unref(j->buf);
        free(j);
    }
    lru_free(&s->ram);
    lru_free(&s->disk);
    pthread_cond_destroy(&s->idle);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    free(s->dir);
    free(s);
}

static int store_put(km_store *s, km_key key, const uint8_t *blob, size_t len, bool trusted, km_error *err) {
    if (len > s->p.max_blob_size) {
        char hex[HEX_LEN + 1];
        km_key_hex(key, hex);
        return km_error_set(err, "store: blob %s is %zu bytes, limit is %zu", hex, len, s->p.max_blob_size);
    }
    bool to_ram = s->p.ram_budget > 0 && len <= s->p.ram_budget;
    bool to_disk = s->dir && (s->p.disk_budget == 0 || len <= s->p.disk_budget);
    blobbuf *b = NULL;
    if (to_ram || to_disk) {
        b = buf_new(blob, len, trusted); /* the copy is made without the lock */
        if (!b) {
            char hex[HEX_LEN + 1];
            km_key_hex(key, hex);
            return km_error_set(err, "store: blob %s: out of memory copying %zu bytes", hex, len);
        }
    }
    pthread_mutex_lock(&s->lock);
    ram_put(s, key, to_ram ? b : NULL);
    if (to_disk) queue_put(s, key, b);
    else if (s->dir) disk_forget(s, key); /* an older blob must not outlive this put */
    buf_unref(b);
    s->changes++;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int km_store_put(km_store *s, km_key key, const uint8_t *blob, size_t len, km_error *err) {
    return store_put(s, key, blob, len, true, err);
}

int km_store_put_untrusted(km_store *s, km_key key, const uint8_t *blob, size_t len, km_error *err) {
    return store_put(s, key, blob, len, false, err);
}

/* Mark k's file as just used. Its modification time is the disk tier's
 * recency when a store opens (disk_scan), and `kvmesh run` serves one request
 * per process: without this, use would never count across runs. A file gone
 * meanwhile (evicted) has nothing to mark. Setting the time changes the
 * file's ctime too: a file that was still this process's own just before is
 * recorded with its new ctime, so our own touch does not make it foreign. */
static void disk_touch(km_store *s, km_key k) {
    char path[PATH_CAP];
    key_path(s, k, path);
    struct stat before, after;
    if (stat(path, &before) != 0 || utimensat(AT_FDCWD, path, NULL, 0) != 0 || stat(path, &after) != 0) return;
    pthread_mutex_lock(&s->lock);
    node *d = lru_find(&s->disk, k);
    if (d && disk_same_file(d, &before, (size_t)before.st_size) && after.st_ino == before.st_ino &&
        after.st_size == before.st_size)
        d->ctime = after.st_ctim;
    pthread_mutex_unlock(&s->lock);
}

static int copy_out(const blobbuf *b, uint8_t **blob, size_t *len, km_error *err) {
    uint8_t *c = malloc(b->len ? b->len : 1);
    if (!c) return km_error_set(err, "store: out of memory copying %zu bytes", b->len);
    if (b->len) memcpy(c, b->data, b->len);
    *blob = c;
    *len = b->len;
    return 0;
}

/* The disk part of a get: read the file without the lock. gen identifies the
 * index entry we looked at, so that a concurrent rewrite or remove of the key is
 * not undone by what we conclude here. */
static int disk_read(km_store *s, km_key key, uint64_t gen, uint8_t **blob, size_t *len, bool *trusted, km_error *err) {
    char path[PATH_CAP];
    key_path(s, key, path);
    uint8_t *data;
    size_t n;
    km_error rerr;
    if (km_read_file(path, s->p.max_blob_size, &data, &n, &rerr) != 0) {
        struct stat st;
        bool vanished = stat(path, &st) != 0 && errno == ENOENT;
        pthread_mutex_lock(&s->lock);
        if (vanished) {
            /* Deleted behind our back (or just evicted): a miss. */
            node *d = lru_find(&s->disk, key);
            if (d && d->gen == gen) {
                lru_remove(&s->disk, d);
                node_free(d);
            }
            s->st.misses++;
            pthread_mutex_unlock(&s->lock);
            return 1;
        }
        pthread_mutex_unlock(&s->lock);
        return km_error_set(err, "store: %s", rerr.msg);
    }
    blobbuf *b = s->p.ram_budget > 0 && n <= s->p.ram_budget ? buf_new(data, n, false) : NULL;
    /* Checked after the read: a change before or during it shows in the status. */
    struct stat st;
    bool stat_ok = stat(path, &st) == 0;

    pthread_mutex_lock(&s->lock);
    s->st.disk_hits++;
    node *d = lru_find(&s->disk, key);
    *trusted = d && d->gen == gen && stat_ok && disk_same_file(d, &st, n);
    if (b) b->trusted = *trusted; /* not shared yet */
    if (d && d->gen == gen) {
        lru_set_size(&s->disk, d, n); /* in case the file was replaced externally */
        /* Promote, unless something newer arrived for the key meanwhile. */
        if (b && !lru_find(&s->ram, key) && !pending_buf(s, key)) ram_put(s, key, b);
    }
    buf_unref(b);
    pthread_mutex_unlock(&s->lock);
    disk_touch(s, key);
    *blob = data;
    *len = n;
    return 0;
}

int km_store_get(km_store *s, km_key key, uint8_t **blob, size_t *len, km_error *err) {
    bool trusted;
    return km_store_get_origin(s, key, blob, len, &trusted, err);
}

int km_store_get_origin(km_store *s, km_key key, uint8_t **blob, size_t *len, bool *trusted, km_error *err) {
    *blob = NULL;
    *len = 0;
    *trusted = false;
    pthread_mutex_lock(&s->lock);
    node *d = s->dir ? lru_find(&s->disk, key) : NULL;
    node *r = lru_find(&s->ram, key);
    blobbuf *b = r ? r->buf : pending_buf(s, key);
    if (b) {
        /* In memory: RAM, or a put whose disk write is still queued. */
        if (r) lru_touch(&s->ram, r);
        if (d) lru_touch(&s->disk, d); /* a use is a use, whichever tier served it */
        s->st.ram_hits++;
        *trusted = b->trusted;
        buf_ref(b);
        pthread_mutex_unlock(&s->lock);
        if (d) disk_touch(s, key);
        int rc = copy_out(b, blob, len, err);
        pthread_mutex_lock(&s->lock);
        buf_unref(b);
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    if (!d) {
        s->st.misses++;
        pthread_mutex_unlock(&s->lock);
        return 1;
    }
    lru_touch(&s->disk, d);
    uint64_t gen = d->gen;
    pthread_mutex_unlock(&s->lock);
    return disk_read(s, key, gen, blob, len, trusted, err);
}

bool km_store_contains(km_store *s, km_key key) {
    pthread_mutex_lock(&s->lock);
    bool found = lru_find(&s->ram, key) || pending_buf(s, key) || (s->dir && lru_find(&s->disk, key));
    pthread_mutex_unlock(&s->lock);
    return found;
}

void km_store_remove(km_store *s, km_key key) {
    pthread_mutex_lock(&s->lock);
    ram_drop(s, key);
    if (s->dir) disk_forget(s, key);
    s->changes++;
    pthread_mutex_unlock(&s->lock);
}

uint64_t km_store_changes(km_store *s) {
    pthread_mutex_lock(&s->lock);
    uint64_t c = s->changes;
    pthread_mutex_unlock(&s->lock);
    return c;
}

int km_store_keys(km_store *s, km_key **keys, size_t *n, uint64_t *changes) {
    pthread_mutex_lock(&s->lock);
    size_t cap = (size_t)s->ram.count + (size_t)s->disk.count + 1;
    for (const job *j = s->qhead; j; j = j->next) cap++;
    if (s->writing) cap++;
    km_key *out = malloc(cap * sizeof *out);
    size_t k = 0;
    if (out) {
        for (const node *e = s->ram.head; e; e = e->next) out[k++] = e->key;
        for (const job *j = s->qhead; j; j = j->next) out[k++] = j->key;
        if (s->writing && !s->writing->cancelled) out[k++] = s->writing->key;
        if (s->dir)
            for (const node *e = s->disk.head; e; e = e->next) out[k++] = e->key;
    }
    if (changes) *changes = s->changes;
    pthread_mutex_unlock(&s->lock);
    *keys = out;
    *n = k;
    return out ? 0 : -1;
}

void km_store_flush(km_store *s) {
    pthread_mutex_lock(&s->lock);
    while (s->qhead || s->writing) pthread_cond_wait(&s->idle, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

km_store_stats km_store_get_stats(km_store *s) {
    pthread_mutex_lock(&s->lock);
    km_store_stats st = s->st;
    st.ram_bytes = s->ram.bytes;
    st.ram_entries = s->ram.count;
    st.disk_bytes = s->disk.bytes;
    st.disk_entries = s->disk.count;
    pthread_mutex_unlock(&s->lock);
    return st;
}
